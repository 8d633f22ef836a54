//go:build race

package main

// raceEnabled is true when the tests run with -race: the crash test then
// builds the binary with -race too, which reuses the packages the test
// build compiled and checks the real process for races.
const raceEnabled = true

//go:build !race

package main

// raceEnabled is true when the tests run with -race (see race_on_test.go).
const raceEnabled = false

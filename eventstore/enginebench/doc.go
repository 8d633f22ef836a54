// Package enginebench compares embedded storage engines for usersync's
// append pattern; see enginebench_test.go. It is a module of its own so
// that usersync does not depend on the engines it only measures.
package enginebench

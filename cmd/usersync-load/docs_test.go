package main

import (
	"context"
	"os"
	"regexp"
	"strings"
	"testing"
)

// TestBenchmarksDoc_NamesRealFlags keeps "The load tool" in
// docs/benchmarks.md true: every --flag it names is one of the tool's (or,
// in the lines that start usersync itself, one of usersync serve's).
func TestBenchmarksDoc_NamesRealFlags(t *testing.T) {
	doc, err := os.ReadFile("../../docs/benchmarks.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## The load tool")
	if !ok {
		t.Fatal(`docs/benchmarks.md has no section "The load tool"`)
	}
	// The section ends where the next one of its level starts.
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	known := map[string]bool{}
	flagLine := regexp.MustCompile(`(?m)^  -([a-z-]+)`)
	for _, args := range [][]string{{"--help"}, {"seed", "--help"}, {"trivial", "--help"}} {
		var help strings.Builder
		if code := run(context.Background(), args, &help, &help); code != 0 {
			t.Fatalf("%v: exit %d", args, code)
		}
		for _, m := range flagLine.FindAllStringSubmatch(help.String(), -1) {
			known[m[1]] = true
		}
	}
	// usersync serve's flags that the section names.
	for _, f := range []string{"addr", "data", "funnelkit-url", "concurrency", "demo", "access-key", "wait"} {
		known[f] = true
	}
	for _, m := range regexp.MustCompile(`--([a-z][a-z-]+)`).FindAllStringSubmatch(section, -1) {
		if !known[m[1]] {
			t.Errorf("docs/benchmarks.md names --%s, which usersync-load does not have", m[1])
		}
	}
}

package main

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestConfigurationDocListsEveryFlag keeps docs/configuration.md true.
func TestConfigurationDocListsEveryFlag(t *testing.T) {
	doc, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	fs, _ := serveFlags(io.Discard)
	fs.VisitAll(func(f *flag.Flag) {
		if !strings.Contains(string(doc), "| `--"+f.Name+"` |") {
			t.Errorf("docs/configuration.md has no row for --%s", f.Name)
		}
	})
}

// TestAPIDocListsEveryEndpoint keeps docs/api.md true.
func TestAPIDocListsEveryEndpoint(t *testing.T) {
	doc, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, ep := range []string{
		"GET /healthz", "GET /readyz", "GET /metrics",
		"GET /api/users/{contact_id}", "GET /api/users?", "GET /api/users/{contact_id}/history",
		"GET /api/tags", "GET /api/tags/{id}/users", "GET /api/password-returns", "GET /api/webhooks/{id}",
		"GET /api/parked", "POST /api/parked/replay", "POST /api/rebuild", "GET /api/rebuild",
	} {
		if !strings.Contains(string(doc), "`"+ep) {
			t.Errorf("docs/api.md does not document %s", ep)
		}
	}
}

// TestArchitectureDocNamesRealFiles keeps docs/architecture.md and the
// README's folder table true: every Go file and folder they name exists.
func TestArchitectureDocNamesRealFiles(t *testing.T) {
	named := regexp.MustCompile("`((?:domain|eventstore|projections|http|funnelkit|mail|cmd)(?:/[a-z_]+)*(?:/|\\.go)?)`")
	for _, doc := range []string{"../../docs/architecture.md", "../../README.md"} {
		b, err := os.ReadFile(doc)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, m := range named.FindAllStringSubmatch(string(b), -1) {
			n++
			if _, err := os.Stat(filepath.Join("../..", m[1])); err != nil {
				t.Errorf("%s names %s, which does not exist", doc, m[1])
			}
		}
		if n < 5 {
			t.Errorf("%s names %d paths; the pattern no longer finds them", doc, n)
		}
	}
}

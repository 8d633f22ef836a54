package main

import (
	"flag"
	"io"
	"os"
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

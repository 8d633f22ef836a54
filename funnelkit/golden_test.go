package funnelkit_test

import (
	"bytes"
	"encoding/json"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

// TestContact_Golden reads a realistic contact as FunnelKit returns it
// (testdata/contact.json) and compares the domain.CRMContact it maps to
// with testdata/contact.golden.json.
func TestContact_Golden(t *testing.T) {
	answer, err := os.ReadFile(filepath.Join("testdata", "contact.json"))
	if err != nil {
		t.Fatal(err)
	}
	url := startHandler(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json; charset=UTF-8")
		w.Write(answer)
	})
	got, err := newClient(t, url).Contact(ctx(t), 12)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(got); err != nil {
		t.Fatal(err)
	}
	gotJSON := buf.Bytes()
	golden := filepath.Join("testdata", "contact.golden.json")
	if *update {
		if err := os.WriteFile(golden, gotJSON, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run Golden -update to write it)", err)
	}
	if !bytes.Equal(gotJSON, want) {
		t.Errorf("contact mapped to\n%s\nwant (%s)\n%s", gotJSON, golden, want)
	}
}

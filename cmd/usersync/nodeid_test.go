package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLoadNodeID_MadeOnceThenKept(t *testing.T) {
	// Given an empty data directory
	dir := t.TempDir()

	// When the node id is loaded twice
	first, err := loadNodeID(dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := loadNodeID(dir)
	if err != nil {
		t.Fatal(err)
	}

	// Then it was made once and kept; another directory is another node
	if !strings.HasPrefix(first, "node-") || again != first {
		t.Fatalf("node ids %q then %q", first, again)
	}
	if other, err := loadNodeID(t.TempDir()); err != nil || other == first {
		t.Fatalf("another data directory: %q, %v", other, err)
	}
}

func TestLoadNodeID_ABadFileIsRefusedNamingIt(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, nodeIDFile), []byte("two words\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadNodeID(dir); err == nil || !strings.Contains(err.Error(), nodeIDFile) || !strings.Contains(err.Error(), "remove it") {
		t.Fatalf("loadNodeID: %v", err)
	}
}

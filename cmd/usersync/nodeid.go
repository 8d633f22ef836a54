package main

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// nodeIDFile is the file in the data directory that names this node in
// the claims it records (PasswordReturnClaimed, WelcomeEmailClaimed). It
// lives beside keys.db: a node is its data directory.
const nodeIDFile = "node-id"

// loadNodeID reads the node's id from the data directory, making one
// (node-<64 random bits in hex>) the first time. A restarted node knows
// its own claims by it and takes them over at once.
func loadNodeID(dir string) (string, error) {
	path := filepath.Join(dir, nodeIDFile)
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if id == "" || len(id) > 128 || strings.ContainsAny(id, " \t\r\n") {
			return "", fmt.Errorf("%s holds no valid node id (one word, at most 128 bytes): remove it and a new one is made", path)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read the node id: %w", err)
	}
	var r [8]byte
	_, _ = rand.Read(r[:]) // crypto/rand.Read never fails (Go 1.24+)
	id := "node-" + hex.EncodeToString(r[:])
	tmp, err := os.CreateTemp(dir, nodeIDFile+".*")
	if err != nil {
		return "", fmt.Errorf("write the node id: %w", err)
	}
	_, werr := tmp.WriteString(id + "\n")
	serr := tmp.Sync()
	cerr := tmp.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		_ = os.Remove(tmp.Name())
		return "", fmt.Errorf("write the node id: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		_ = os.Remove(tmp.Name())
		return "", fmt.Errorf("write the node id: %w", err)
	}
	return id, nil
}

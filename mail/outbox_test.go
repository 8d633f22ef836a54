package mail

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"testing"
)

var emlName = regexp.MustCompile(`^[0-9]+-[0-9a-f]{16}\.eml$`)

func TestOutboxSend(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data", "outbox")
	o, err := NewOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	if o.Transport() != "outbox" || o.Dir() != dir || o.String() != "outbox:"+dir {
		t.Errorf("Transport/Dir/String = %q %q %q", o.Transport(), o.Dir(), o)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("outbox dir: %v, %v; want mode 0700", fi.Mode(), err)
	}

	msg := testMessage(t)
	const n = 3
	for range n {
		if err := o.Send(context.Background(), testFrom, testRcpt, msg); err != nil {
			t.Fatal(err)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != n {
		t.Fatalf("%d files in the outbox, want %d (no temporary files left)", len(entries), n)
	}
	for _, e := range entries {
		if !emlName.MatchString(e.Name()) {
			t.Errorf("file name %q", e.Name())
		}
		fi, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 || !fi.Mode().IsRegular() {
			t.Errorf("%s: mode %v, want -rw-------", e.Name(), fi.Mode())
		}
		raw, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(raw, msg) {
			t.Errorf("%s differs from the message", e.Name())
		}
		checkCRLF(t, raw)
		p := parse(t, raw)
		if p.header.Get("To") != testRcpt || p.header.Get("Message-ID") != "<t1@shop.example.com>" {
			t.Errorf("headers: %v", p.header)
		}
		if passwordLine.MatchString(p.body) {
			t.Errorf("password line in %s", e.Name())
		}
	}
}

func TestOutboxSendErrors(t *testing.T) {
	dir := t.TempDir()
	o, err := NewOutbox(dir)
	if err != nil {
		t.Fatal(err)
	}
	err = o.Send(context.Background(), testFrom, "jane@example.org\r\nBcc: x@y", testMessage(t))
	var se *SendError
	if !errors.As(err, &se) || se.Temporary() || se.Op != "envelope" || se.Transport != "outbox" {
		t.Errorf("bad address: err = %#v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err = o.Send(ctx, testFrom, testRcpt, testMessage(t))
	if !errors.As(err, &se) || !se.Temporary() || !errors.Is(err, context.Canceled) {
		t.Errorf("canceled: err = %v", err)
	}

	// A directory that vanished: a temporary, visible failure.
	if err := os.Remove(dir); err != nil {
		t.Fatal(err)
	}
	err = o.Send(context.Background(), testFrom, testRcpt, testMessage(t))
	if !errors.As(err, &se) || !se.Temporary() || se.Op != "write" {
		t.Errorf("missing dir: err = %v", err)
	}

	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files written: %v", entries)
	}
}

func TestNewOutboxErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewOutbox(filepath.Join(file, "outbox")); err == nil {
		t.Error("NewOutbox under a regular file succeeded")
	}
	if _, err := NewOutbox(""); err == nil {
		t.Error("NewOutbox(\"\") succeeded")
	}
}

func TestNewOutbox_RemovesTemporaryFilesACrashLeft(t *testing.T) {
	dir := t.TempDir()
	left := filepath.Join(dir, ".tmp-123.eml")
	sent := filepath.Join(dir, "1-ab.eml")
	for _, f := range []string{left, sent} {
		if err := os.WriteFile(f, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewOutbox(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(left); !os.IsNotExist(err) {
		t.Errorf("temporary file still there: %v", err)
	}
	if _, err := os.Stat(sent); err != nil {
		t.Errorf("a sent mail was removed: %v", err)
	}
}

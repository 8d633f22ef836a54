package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

func TestRebuildCommand(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC)
	raw, err := domain.EncodeAll([]domain.Envelope{
		{Event: domain.UserCreated{UserID: "u1", ContactID: 12, Login: "ann@example.com", Email: "ann@example.com", Role: "subscriber"}, OccurredAt: at},
		{Event: domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "VIP"}}}, OccurredAt: at},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, domain.ContactID(12).Stream(), domain.NoStream(), raw...); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "contact-13", domain.NoStream(), domain.NewEvent{Type: "FromTheFuture", Data: []byte(`{}`), Metadata: []byte(`{"schema":1}`)}); err != nil {
		t.Fatal(err)
	}
	store.Close()

	var out, errb bytes.Buffer
	if code := run(ctx, []string{"rebuild", "--data", dir, "--progress", "on"}, &out, &errb); code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "from 3 events") || !strings.Contains(out.String(), "1 users, 1 tags") ||
		!strings.Contains(out.String(), "into a new views.db") ||
		!strings.Contains(out.String(), "parked") || !strings.Contains(errb.String(), "100.0%") {
		t.Fatalf("stdout %q\nstderr %q", out.String(), errb.String())
	}
	out.Reset()
	if code := run(ctx, []string{"parked", "--data", dir}, &out, &errb); code != 0 || !strings.Contains(out.String(), "FromTheFuture") {
		t.Fatalf("parked: exit %d, %q", code, out.String())
	}
}

func TestCommandErrors(t *testing.T) {
	file := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		args    []string
		code    int
		mention string
	}{
		{nil, 2, "Usage"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"rebuild", "--nope"}, 2, "flag provided but not defined"},
		{[]string{"rebuild", "--progress", "maybe"}, 2, "auto, on or off"},
		{[]string{"rebuild", "--data", file}, 1, "is a file, not a directory"},
		{[]string{"rebuild", "--data", ""}, 1, "--data is empty"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		code := run(context.Background(), tt.args, &out, &errb)
		if code != tt.code || !strings.Contains(errb.String(), tt.mention) {
			t.Errorf("%v: exit %d, stderr %q; want %d mentioning %q", tt.args, code, errb.String(), tt.code, tt.mention)
		}
	}
}

func TestServeFlags_FromTheEnvironment(t *testing.T) {
	t.Setenv("USERSYNC_WAIT", "3s")
	t.Setenv("USERSYNC_FUNNELKIT_URL", "https://shop.example.com")
	t.Setenv("USERSYNC_FUNNELKIT_USER", "automation")
	t.Setenv("USERSYNC_FUNNELKIT_PASSWORD", "abcd efgh")
	t.Setenv("USERSYNC_ROLES", "subscriber,customer,administrator")
	var errb bytes.Buffer
	cfg, err := parseServe([]string{"--wait", "4s"}, &errb)
	if err != nil {
		t.Fatal(err)
	}
	// The command line wins over the environment.
	if cfg.Wait != 4*time.Second || cfg.FunnelKitURL != "https://shop.example.com" {
		t.Fatalf("config %+v", cfg)
	}
	p, err := cfg.policy()
	if err != nil || len(p.AllowedRoles) != 2 {
		t.Fatalf("roles %v (administrator must be dropped), %v", p.AllowedRoles, err)
	}
	tests := []struct {
		env, value, mention string
	}{
		{"USERSYNC_WAIT", "soon", "USERSYNC_WAIT"},
		{"USERSYNC_WAIT", "60s", "--wait"},
		{"USERSYNC_ADDR", "8080", "--addr"},
		{"USERSYNC_FIELD_MAP", "first_name", "meta_key=funnelkit_field"},
		{"USERSYNC_DEFAULT_ROLE", "administrator", "administrator"},
		{"USERSYNC_RETRY_INITIAL", "5s", "within 1s"},
		{"USERSYNC_LOG_FORMAT", "xml", "--log-format"},
		{"USERSYNC_LOG_LEVEL", "loud", "--log-level"},
		{"USERSYNC_LOGIN_URL", "ftp://x", "--login-url"},
		{"USERSYNC_FUNNELKIT_URL", "", "--funnelkit-url is required"},
	}
	for _, tt := range tests {
		t.Run(tt.env+"="+tt.value, func(t *testing.T) {
			t.Setenv(tt.env, tt.value)
			_, err := parseServe(nil, &errb)
			if err == nil || !strings.Contains(err.Error(), tt.mention) {
				t.Fatalf("err %v, want it to mention %q", err, tt.mention)
			}
		})
	}
}

func TestDemo_RefusesADataDirectoryWithRealData(t *testing.T) {
	real := t.TempDir()
	if err := os.WriteFile(filepath.Join(real, "events.db"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := demoData(real); err == nil || !strings.Contains(err.Error(), "--demo refuses") {
		t.Fatalf("err %v", err)
	}
	fresh := filepath.Join(t.TempDir(), "demo")
	if err := demoData(fresh); err != nil {
		t.Fatal(err)
	}
	if err := demoData(fresh); err != nil {
		t.Fatalf("a second demo run on its own directory: %v", err)
	}
}

// Views that have seen more events than the store holds (events.db
// restored from an older backup) are refused with what to do, and a
// rebuild makes them right.
func TestServe_RefusesViewsAheadOfTheEventStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	appendN := func(n int) {
		t.Helper()
		store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		for i := range n {
			raw, err := domain.Encode(domain.Envelope{Event: domain.RoleChanged{Old: "a", New: "b"}, OccurredAt: time.Unix(int64(i), 0)})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := store.Append(ctx, "contact-1", domain.AnyVersion(), raw); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func() error {
		t.Helper()
		store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer store.Close()
		views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
		if err != nil {
			t.Fatal(err)
		}
		defer views.Close()
		return checkViewsNotAhead(ctx, store, views, dir)
	}
	var out, errb bytes.Buffer
	appendN(5)
	if code := run(ctx, []string{"rebuild", "--data", dir}, &out, &errb); code != 0 {
		t.Fatalf("rebuild: exit %d: %s", code, errb.String())
	}
	if err := check(); err != nil {
		t.Fatalf("views at the store's head: %v", err)
	}
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := views.SaveCheckpoint(ctx, command.PasswordReturnName, 5); err != nil {
		t.Fatal(err)
	}
	views.Close()
	// events.db "restored" with only 2 of the 5 events.
	for _, f := range []string{"events.db", "events.db-wal", "events.db-shm"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
	}
	appendN(2)
	err = check()
	if err == nil || !strings.Contains(err.Error(), "up to position 5, but the event store ends at 2") || !strings.Contains(err.Error(), "usersync rebuild --data") {
		t.Fatalf("views ahead of the store: %v", err)
	}
	out.Reset()
	if code := run(ctx, []string{"rebuild", "--data", dir}, &out, &errb); code != 0 {
		t.Fatalf("rebuild: exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "process password_return had handled events up to position 5") {
		t.Fatalf("rebuild said %q", out.String())
	}
	if err := check(); err != nil {
		t.Fatalf("after a rebuild: %v", err)
	}
}

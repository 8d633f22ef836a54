package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
	"github.com/usersync/usersync/projections"
)

// TestParseStore: what --store accepts, and what it says about the rest
// without repeating a credential.
func TestParseStore(t *testing.T) {
	for _, tt := range []struct {
		value    string
		kind     string   // the kind, when accepted
		mentions []string // in the error, when refused
	}{
		{value: "", kind: storeFile},
		{value: "file", kind: storeFile},
		{value: " FILE ", kind: storeFile},
		{value: "esdb://127.0.0.1:2113?tls=false", kind: storeESDB},
		{value: "esdb+discover://admin:changeit@node1:2113,node2:2113?nodePreference=leader", kind: storeESDB},
		{value: "ESDB://db.internal:2113", kind: storeESDB},
		{value: "./data", mentions: []string{"--data ./data", "leave --store empty", "esdb://"}},
		{value: "/var/lib/usersync/events.db", mentions: []string{"--data /var/lib/usersync", "not a kind of event store"}},
		{value: "file:///var/lib/usersync", mentions: []string{"--data /var/lib/usersync"}},
		{value: "postgres://app:hunter2@db/usersync", mentions: []string{`unknown scheme "postgres"`, "esdb://", "esdb+discover://", "file"}},
		{value: "kurrentdb://node1:2113", mentions: []string{`unknown scheme "kurrentdb"`}},
		{value: "esdb://", mentions: []string{"names no host"}},
		{value: "esdb://admin:hunter2@db1:2113,db2:99999?tls=false", mentions: []string{`port "99999" of db2:99999 is not a port number`, "***@"}},
		{value: "esdb://db1:http", mentions: []string{`port "http"`}},
		{value: "esdb://admin:hunter2@?tls=false", mentions: []string{"names no host", "***@"}},
	} {
		t.Run(tt.value, func(t *testing.T) {
			spec, err := parseStore(tt.value)
			if tt.kind != "" {
				if err != nil || spec.kind != tt.kind {
					t.Fatalf("parseStore(%q) = %+v, %v; want kind %s", tt.value, spec, err, tt.kind)
				}
				return
			}
			if err == nil {
				t.Fatalf("parseStore(%q) accepted it as %s", tt.value, spec.kind)
			}
			if !strings.Contains(err.Error(), "--store") {
				t.Errorf("the error does not name the flag: %v", err)
			}
			for _, m := range tt.mentions {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Errorf("error repeats the password: %v", err)
			}
		})
	}
}

// TestRedactStoreURL: the userinfo and secret query parameters are
// masked, the rest (hosts, options) kept to say which store it is.
func TestRedactStoreURL(t *testing.T) {
	for _, tt := range []struct{ in, want string }{
		{"esdb://127.0.0.1:2113?tls=false", "esdb://127.0.0.1:2113?tls=false"},
		{"esdb://admin:changeit@127.0.0.1:2113?tls=false", "esdb://***@127.0.0.1:2113?tls=false"},
		{"esdb+discover://admin:changeit@n1:2113,n2:2113,n3:2113?nodePreference=leader",
			"esdb+discover://***@n1:2113,n2:2113,n3:2113?nodePreference=leader"},
		{"esdb://admin:p@ss/w?rd@host:2113", "esdb://***@host:2113"},
		{"esdb://host:2113?tls=true&password=s3cret&userCertFile=/etc/c.pem", "esdb://host:2113?tls=true&password=***&userCertFile=/etc/c.pem"},
		{"esdb://host:2113?ClientSecret=abc&apiToken=def#frag", "esdb://host:2113?ClientSecret=***&apiToken=***#frag"},
		{"esdb://onlyuser@host", "esdb://***@host"},
		{"./data", "./data"},
		{"", ""},
	} {
		if got := redactStoreURL(tt.in); got != tt.want {
			t.Errorf("redactStoreURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

// TestRedactErr: an adapter's error that quotes its connection string or
// the password loses them; errors.Is still sees what it wraps.
func TestRedactErr(t *testing.T) {
	const raw = "esdb://admin:hunter2@127.0.0.1:1?tls=false&password=other"
	inner := errors.New("boom")
	for _, err := range []error{
		fmt.Errorf("connect to %s: %w", raw, inner),
		fmt.Errorf("auth as admin:hunter2 failed: %w", inner),
		fmt.Errorf("password=other refused: %w", inner),
	} {
		got := redactErr(err, raw)
		for _, secret := range []string{"hunter2", "other"} {
			if strings.Contains(got.Error(), secret) {
				t.Errorf("redactErr(%q) = %q: repeats %q", err, got, secret)
			}
		}
		if !errors.Is(got, inner) {
			t.Errorf("redactErr(%q) lost the wrapped error", err)
		}
	}
	plain := errors.New("nothing secret")
	if got := redactErr(plain, raw); got != plain {
		t.Errorf("an error without secrets was rewritten: %v", got)
	}
}

// TestServe_StoreFlag: --store and USERSYNC_STORE are checked at parse
// time; a value the environment set is named by its variable, not
// repeated.
func TestServe_StoreFlag(t *testing.T) {
	t.Run("flag", func(t *testing.T) {
		_, err := parseServe([]string{"--demo", "--store", "mysql://root:hunter2@db"}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--store") || !strings.Contains(err.Error(), "unknown scheme") || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("parseServe: %v", err)
		}
	})
	t.Run("env", func(t *testing.T) {
		t.Setenv("USERSYNC_STORE", "mysql://root:hunter2@db")
		_, err := parseServe([]string{"--demo"}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "--store was set by USERSYNC_STORE") || strings.Contains(err.Error(), "hunter2") {
			t.Fatalf("parseServe: %v", err)
		}
	})
	t.Run("esdb accepted", func(t *testing.T) {
		t.Setenv("USERSYNC_STORE", "esdb://127.0.0.1:2113?tls=false")
		c, err := parseServe([]string{"--demo"}, io.Discard)
		if err != nil || c.Store != "esdb://127.0.0.1:2113?tls=false" {
			t.Fatalf("parseServe = %+v, %v", c, err)
		}
	})
}

// TestServe_ESDBUnreachable: serve on an EventStoreDB that refuses
// connections, or that accepts them and never answers (the client's own
// discovery would wait ~51 s there, ignoring the context), fails its start
// within 15 s with an error naming the address, never the password.
func TestServe_ESDBUnreachable(t *testing.T) {
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { silent.Close() })
	var held []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			held = append(held, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range held {
			c.Close()
		}
	})
	for _, addr := range []string{"127.0.0.1:1", silent.Addr().String()} {
		t.Run(addr, func(t *testing.T) {
			t.Parallel()
			_, u := newSim(t)
			cfg := testConfig(t.TempDir(), u)
			cfg.Store = "esdb://admin:hunter2@" + addr + "?tls=false"
			done := make(chan error, 1)
			go func() {
				a, err := startApp(context.Background(), cfg, newLogger("json", "info", io.Discard), io.Discard)
				if err == nil {
					_ = a.shutdown()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil {
					t.Fatal("serve started on an unreachable store")
				}
				if msg := err.Error(); !strings.Contains(msg, addr) || strings.Contains(msg, "hunter2") {
					t.Fatalf("startApp: %v", err)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("serve did not give up on an unreachable store within 15 s")
			}
		})
	}
}

// TestRebuildAndParked_TakeStore: rebuild and parked take --store as
// serve does: a bad value is refused naming the flag; an EventStoreDB
// store needs no events.db under --data (parked reads only views.db), and
// rebuild on one that is unreachable names it.
func TestRebuildAndParked_TakeStore(t *testing.T) {
	dir := t.TempDir()
	views, err := projections.Open(context.Background(), filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	views.Close()
	for _, tt := range []struct {
		args     []string
		code     int
		mentions string
	}{
		{[]string{"rebuild", "--data", dir, "--store", "redis://:hunter2@h"}, 1, "unknown scheme"},
		{[]string{"parked", "--data", dir, "--store", "redis://:hunter2@h"}, 1, "unknown scheme"},
		{[]string{"parked", "--data", dir, "--store", "esdb://admin:hunter2@127.0.0.1:1"}, 0, "no parked events"},
		{[]string{"parked", "--data", t.TempDir(), "--store", "esdb://127.0.0.1:1"}, 1, "no views.db"},
		{[]string{"rebuild", "--data", dir, "--store", "esdb://admin:hunter2@127.0.0.1:1?tls=false"}, 1, "127.0.0.1:1"},
	} {
		t.Run(strings.Join(tt.args[:1], " ")+" "+tt.mentions, func(t *testing.T) {
			var out, errb bytes.Buffer
			code := run(context.Background(), tt.args, &out, &errb)
			all := out.String() + errb.String()
			if code != tt.code || !strings.Contains(all, tt.mentions) || strings.Contains(all, "hunter2") {
				t.Fatalf("%v: exit %d, output %q; want %d mentioning %q", tt.args, code, all, tt.code, tt.mentions)
			}
		})
	}
}

// TestReadyzAndMetrics_ReportTheStore: on the embedded store, /metrics
// says usersync_store_up{kind="file"} 1 and the views' lag in events and
// in log time; once the store stops answering, usersync_store_up is 0 and
// /readyz is 503 "event store unreachable".
func TestReadyzAndMetrics_ReportTheStore(t *testing.T) {
	h := newHarness(t)
	h.send("get", hook("add", "1"))
	// The password return appends to the log too (its claim, its result):
	// the head is taken once it is done, so that nothing moves it after.
	h.eventually("the password returned", func() bool { return count(h.history(1), domain.TypePasswordReturned) == 1 })
	head, _ := h.app.store.Head(t.Context())
	h.eventually("the views at the head and ready", func() bool {
		m, _ := scrape(t, h.app.addr)
		code, _ := readyz(t, h.base)
		return code == 200 && m["usersync_views_caught_up"].get(nil) == 1 && m["usersync_head_position"].get(nil) >= float64(head)
	})
	m, _ := scrape(t, h.app.addr)
	for _, c := range []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"usersync_store_up", map[string]string{"kind": "file"}, 1},
		{"usersync_views_behind_events", nil, 0},
		{"usersync_views_behind_seconds", nil, 0},
		{"usersync_views_done_ratio", nil, 1},
	} {
		if _, ok := m[c.metric]; !ok {
			t.Errorf("%s is not exported", c.metric)
		} else if got := m[c.metric].get(c.labels); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.metric, c.labels, got, c.want)
		}
	}
	// When the store stops answering (closed under the server).
	if err := h.app.store.Close(); err != nil {
		t.Fatal(err)
	}
	code, reason := readyz(t, h.base)
	if code != 503 || !strings.HasPrefix(reason, "event store unreachable: ") {
		t.Errorf("/readyz with the store closed: %d %q, want 503 \"event store unreachable: …\"", code, reason)
	}
	m, _ = scrape(t, h.app.addr)
	if got := m["usersync_store_up"].get(map[string]string{"kind": "file"}); got != 0 {
		t.Errorf("usersync_store_up with the store closed = %v, want 0", got)
	}
}

// TestProgressLine_DenseAndGapped: the rebuild's bar counts events out of
// the head on a dense log only; on a gapped one it counts the events
// applied and takes percent and ETA from the positions' fraction.
func TestProgressLine_DenseAndGapped(t *testing.T) {
	for _, tt := range []struct {
		name string
		p    projections.Progress
		want string
	}{
		{"dense", projections.Progress{Position: 250, Head: 1000, Events: 250, Elapsed: 10 * time.Second, Dense: true},
			"[=======                       ]  25.0%  250/1000 events  25 events/s  ETA 30s   "},
		{"gapped", projections.Progress{Position: 250_000_123, Head: 1_000_000_492, Events: 250, Elapsed: 10 * time.Second},
			"[=======                       ]  25.0%  250 events  25 events/s  ETA 30s   "},
		{"gapped, nothing yet", projections.Progress{Position: 0, Head: 1_000_000_492, Events: 0, Elapsed: 0},
			"[                              ]   0.0%  0 events  0 events/s  ETA --   "},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := progressLine(tt.p); got != tt.want {
				t.Errorf("progressLine =\n%q, want\n%q", got, tt.want)
			}
		})
	}
}

// TestOpenStore_ESDB_WhereMasksCredentialsAsDocumented: the name of an
// EventStoreDB store in the logs (store_at) and errors masks the
// credentials as configuration.md says: ***.
func TestOpenStore_ESDB_WhereMasksCredentialsAsDocumented(t *testing.T) {
	srv := esdbtest.New(t)
	conn := strings.Replace(srv.ConnString(), "esdb://", "esdb://admin:changeit@", 1)
	h, err := openStore(t.Context(), storeConfig{Store: conn}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if want := redactStoreURL(conn); h.where != want || strings.Contains(h.where, "changeit") {
		t.Fatalf("where = %q, want %q", h.where, want)
	}
}

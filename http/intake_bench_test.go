package http

import (
	"context"
	"fmt"
	"io"
	nethttp "net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"

	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/memory"
	"github.com/usersync/usersync/projections"
)

func stringsReader(s string) io.Reader { return strings.NewReader(s) }

// benchQuery is the query string of a FunnelKit update_tags webhook.
const benchQuery = "wpf_action=update_tags&async=true&contact_id=4711&access_key=access-key&email=ann%40example.com&first_name=Ann&last_name=Lee&tags=1%2C2"

// BenchmarkReadParams measures the parsing of a webhook's parameters: a
// GET with its query, a form body and a JSON body.
func BenchmarkReadParams(b *testing.B) {
	form := "wpf_action=update&contact_id=4711&access_key=access-key&email=ann%40example.com&first_name=Ann&last_name=Lee&tags=1%2C2"
	json := `{"wpf_action":"update","contact_id":4711,"access_key":"access-key","email":"ann@example.com","first_name":"Ann","last_name":"Lee","tags":["1","2"]}`
	for _, c := range []struct{ name, method, target, ctype, body string }{
		{"get", "GET", "/?" + benchQuery, "", ""},
		{"form", "POST", "/", "application/x-www-form-urlencoded", form},
		{"json", "POST", "/", "application/json", json},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				var body io.Reader
				if c.body != "" {
					body = stringsReader(c.body)
				}
				r := httptest.NewRequest(c.method, c.target, body)
				if c.ctype != "" {
					r.Header.Set("Content-Type", c.ctype)
				}
				if _, err := readParams(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWebhookIntake measures async webhooks end to end through a real
// loopback server into a real store in a temporary directory (fsynced
// before each 202), from parallel keep-alive clients, with the decorators
// usersync wraps the webhook in. Nothing processes them.
func BenchmarkWebhookIntake(b *testing.B) {
	for _, clients := range []int{1, 64} {
		b.Run("clients="+strconv.Itoa(clients), func(b *testing.B) {
			ctx := context.Background()
			dir := b.TempDir()
			var commitNanos atomic.Int64
			store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"), eventstore.WithCommitObserver(func(n int, d time.Duration) {
				commitNanos.Add(int64(d))
			}))
			if err != nil {
				b.Fatal(err)
			}
			defer store.Close()
			views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
			if err != nil {
				b.Fatal(err)
			}
			defer views.Close()
			srv, err := New(Config{
				AccessKey: NewSecret("access-key"), AdminToken: NewSecret("admin-token"),
				Store: store, Views: views, Queue: queue{}, Log: quietLog(),
				NewID:             func() string { return uuid.Must(uuid.NewV7()).String() },
				WebhookDecorators: []Decorator{ObserveWebhooks(func(string, string, time.Duration) {})},
			})
			if err != nil {
				b.Fatal(err)
			}
			ts := httptest.NewServer(srv)
			defer ts.Close()
			client := &nethttp.Client{Transport: &nethttp.Transport{MaxIdleConnsPerHost: clients, MaxConnsPerHost: clients}}
			defer client.CloseIdleConnections()
			var contact atomic.Int64
			st0 := store.WriteStats()
			b.SetParallelism((clients + 1) / 2)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					url := fmt.Sprintf("%s/?wpf_action=update_tags&async=true&contact_id=%d&access_key=access-key&tags=1%%2C2", ts.URL, 1+contact.Add(1)%10000)
					resp, err := client.Get(url)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != nethttp.StatusAccepted {
						b.Errorf("status %d, want 202", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "webhooks/s")
			st := store.WriteStats()
			if n := st.Syncs - st0.Syncs; n > 0 {
				b.ReportMetric(float64(st.Appends-st0.Appends)/float64(n), "webhooks/fsync")
				b.ReportMetric(float64(st.SyncTime-st0.SyncTime)/float64(n)/1e3, "µs/fsync")
			}
			if n := st.Syncs - st0.Syncs; n > 0 {
				// From the start of a group's first transaction to the
				// end of its fsync.
				b.ReportMetric(float64(commitNanos.Load())/float64(n)/1e3, "µs/group-commit")
			}
		})
	}
}

// BenchmarkWebhookHandler measures the CPU of the webhook handler alone,
// with its decorators: an async webhook served to a recorder, recorded in
// the in-memory store (no network, no fsync).
func BenchmarkWebhookHandler(b *testing.B) {
	ctx := context.Background()
	views, err := projections.Open(ctx, filepath.Join(b.TempDir(), "views.db"))
	if err != nil {
		b.Fatal(err)
	}
	defer views.Close()
	srv, err := New(Config{
		AccessKey: NewSecret("access-key"), AdminToken: NewSecret("admin-token"),
		Store: memory.New(), Views: views, Queue: queue{}, Log: quietLog(),
		NewID:             func() string { return uuid.Must(uuid.NewV7()).String() },
		WebhookDecorators: []Decorator{ObserveWebhooks(func(string, string, time.Duration) {})},
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		r := httptest.NewRequest("GET", "/?"+benchQuery, nil)
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, r)
		if w.Code != nethttp.StatusAccepted {
			b.Fatalf("status %d: %s", w.Code, w.Body)
		}
	}
}

package http

import (
	"context"
	"fmt"
	"io"
	nethttp "net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

// consoleEvents appends n events to contact 7, in pairs: a webhook with
// FunnelKit's usual dozen parameters, then the meta change it caused.
func consoleEvents(b *testing.B, s domain.EventStore, n int) {
	b.Helper()
	at := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var envs []domain.Envelope
	for i := 0; i < n; i += 2 {
		wid := fmt.Sprintf("0193a1b2-c3d4-7e5f-8a9b-%012d", i)
		params := map[string]string{"wpf_action": "update", "contact_id": "7", "email": "ann@example.com", "first_name": "Ann", "last_name": "Lee",
			"phone": "+15550100", "state": "CA", "country": "US", "membership": fmt.Sprint("level-", i), "joined": "2026-01-02", "source": "automation 12", "send_notification": "0"}
		envs = append(envs,
			domain.Envelope{Event: domain.WebhookReceived{WebhookID: wid, Action: "update", ContactID: "7", Method: "POST", Source: "10.0.0.1", Params: params, ReceivedAt: at}, OccurredAt: at, WebhookID: wid},
			domain.Envelope{Event: domain.MetaPulled{Changes: []domain.MetaChange{{Key: "membership", Old: fmt.Sprint("level-", i-2), New: fmt.Sprint("level-", i)}}}, OccurredAt: at.Add(time.Duration(i) * time.Second), WebhookID: wid})
	}
	raw, err := domain.EncodeAll(envs)
	if err != nil {
		b.Fatal(err)
	}
	for len(raw) > 0 {
		k := min(len(raw), 500)
		if _, err := s.Append(context.Background(), domain.ContactID(7).Stream(), domain.AnyVersion(), raw[:k]...); err != nil {
			b.Fatal(err)
		}
		raw = raw[k:]
	}
}

// BenchmarkConsoleUserPage serves one user's page (its view and a
// timeline page of 50 events, each with its webhook and meta diff) of a
// contact with 10,000 events, over HTTP on loopback, signed in.
func BenchmarkConsoleUserPage(b *testing.B) {
	cfg := testConfig(b, slogJSON(io.Discard))
	consoleEvents(b, cfg.Store, 10_000)
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	base := serve(b, s)
	br := newBrowser(b, base)
	br.signIn()
	for _, bc := range []struct{ name, path string }{
		{"newest", "/ui/users/7"},
		{"oldest", "/ui/users/7?before=51"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var size int
			for b.Loop() {
				resp, body := br.do("GET", bc.path, nil)
				if resp.StatusCode != nethttp.StatusOK {
					b.Fatalf("GET %s: %d", bc.path, resp.StatusCode)
				}
				size = len(body)
			}
			b.ReportMetric(float64(size), "bytes/page")
		})
	}
}

// BenchmarkConsoleUsersPage serves the console's users page (50 users and
// how many match) over HTTP on loopback, signed in, on
// USERSYNC_BENCH_USERS users (10,000 by default; 2 events each: created
// as a subscriber, tagged): all users, the next page, by tag, by role, by
// the start of an email, by contact id.
func BenchmarkConsoleUsersPage(b *testing.B) {
	n := 10_000
	if v := os.Getenv("USERSYNC_BENCH_USERS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 100 {
			b.Fatalf("USERSYNC_BENCH_USERS=%q: want a count of users, 100 or more", v)
		}
	}
	cfg := testConfig(b, slogJSON(io.Discard))
	ctx := context.Background()
	start := time.Now()
	work := make(chan int)
	var wg sync.WaitGroup
	var failed sync.Once
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				tags := []domain.Tag{{ID: uint64(c%50 + 1), Name: fmt.Sprintf("Tag %d", c%50+1)}, {ID: 100, Name: "Customer"}}
				raw, err := domain.EncodeAll([]domain.Envelope{
					{Event: domain.UserCreated{UserID: fmt.Sprintf("u-%d", c), ContactID: domain.ContactID(c), Login: fmt.Sprintf("c%d", c), Email: fmt.Sprintf("c%d@example.com", c), Role: "subscriber"}, OccurredAt: start},
					{Event: domain.TagsUpdated{Tags: tags, Added: tags}, OccurredAt: start},
				})
				if err == nil {
					_, err = cfg.Store.Append(ctx, domain.ContactID(c).Stream(), domain.NoStream(), raw...)
				}
				if err != nil {
					failed.Do(func() { b.Error(err) })
				}
			}
		}()
	}
	for c := 1; c <= n; c++ {
		work <- c
	}
	close(work)
	wg.Wait()
	if b.Failed() {
		b.FailNow()
	}
	if _, err := cfg.Views.Rebuild(ctx, cfg.Store, nil); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d users seeded and their views built in %s", n, time.Since(start).Round(time.Second))
	s, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	br := newBrowser(b, serve(b, s))
	br.signIn()
	for _, bc := range []struct{ name, path string }{
		{"all", "/ui/users"},
		{"next-page", fmt.Sprintf("/ui/users?after=%d", n/2)},
		{"tag", "/ui/users?tag=7"},
		{"role", "/ui/users?role=subscriber"},
		{"email-start", "/ui/users?q=c4242"},
		{"contact-id", fmt.Sprintf("/ui/users?q=%d", n/2)},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var size int
			for b.Loop() {
				resp, body := br.do("GET", bc.path, nil)
				if resp.StatusCode != nethttp.StatusOK || !strings.Contains(body, "match") {
					b.Fatalf("GET %s: %d", bc.path, resp.StatusCode)
				}
				size = len(body)
			}
			b.ReportMetric(float64(size), "bytes/page")
		})
	}
}

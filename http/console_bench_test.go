package http

import (
	"context"
	"fmt"
	"io"
	nethttp "net/http"
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

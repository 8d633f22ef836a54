package main

// A start over a store whose views are missing: the server listens and
// records webhooks at once, /readyz says the views are catching up, and
// it turns ready once they have.

import (
	"context"
	"encoding/json"
	"fmt"
	nethttp "net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/pipeline"
	"github.com/usersync/usersync/projections"
)

// heldViews holds the views' first batch until release is closed, so that
// the test sees the start before they have caught up.
type heldViews struct {
	pipeline.BatchConsumer
	release <-chan struct{}
}

func (h heldViews) HandleBatch(ctx context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	select {
	case <-h.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return h.BatchConsumer.HandleBatch(ctx, recs)
}

func readyz(t *testing.T, base string) (int, string) {
	t.Helper()
	resp, err := nethttp.Get(base + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string `json:"status"`
		Reason string `json:"reason"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, body.Reason
}

func TestServe_StartsOverAStoreWithoutViews_NotReadyUntilCaughtUp(t *testing.T) {
	tests := []struct {
		name string
		// minBehind is how far behind the views are built aside (0: the
		// default, far more than this store has).
		minBehind uint64
		aside     bool
	}{
		{name: "batch by batch"},
		{name: "built aside", minBehind: 1, aside: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { startOverMissingViews(t, tt.minBehind, tt.aside) })
	}
}

func startOverMissingViews(t *testing.T, minBehind uint64, aside bool) {
	// Given a store with a user and a few thousand events, and no views.
	sim, u := newSim(t)
	dir := t.TempDir()
	h := start(t, dir, sim, u)
	if a := h.send("get", hook("add", "1")); a.Code != 200 {
		t.Fatalf("add: %+v", a)
	}
	if err := h.app.shutdown(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	const events = 3000
	var envs []domain.Envelope
	at := time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC)
	for i := range events {
		tag := domain.Tag{ID: uint64(i%5 + 1), Name: fmt.Sprintf("tag %d", i%5+1)}
		envs = append(envs, domain.Envelope{Event: domain.TagsUpdated{Tags: []domain.Tag{tag}, Added: []domain.Tag{tag}},
			OccurredAt: at.Add(time.Duration(i) * time.Millisecond), WebhookID: fmt.Sprintf("wh-%d", i)})
	}
	raw, err := domain.EncodeAll(envs)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(raw); i += 500 {
		if _, err := store.Append(ctx, domain.ContactID(1).Stream(), domain.AnyVersion(), raw[i:min(i+500, len(raw))]...); err != nil {
			t.Fatal(err)
		}
	}
	head, _ := store.Head(ctx)
	if err := store.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"views.db", "views.db-wal", "views.db-shm"} {
		if err := os.Remove(filepath.Join(dir, f)); err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
	}

	// When usersync starts with its views held back.
	release := make(chan struct{})
	h = start(t, dir, sim, u, func(c *serveConfig) {
		c.wrapViews = func(b pipeline.BatchConsumer) pipeline.BatchConsumer { return heldViews{b, release} }
		c.catchUpMinBehind = minBehind
	})

	// Then it has started, answers not ready with how far behind, and
	// records webhooks meanwhile.
	code, reason := readyz(t, h.base)
	t.Logf("/readyz: %d %q", code, reason)
	if code != 503 || !strings.Contains(reason, "views catching up") || !strings.Contains(reason, fmt.Sprintf("%d events behind", head)) {
		t.Fatalf("/readyz while catching up: %d %q, want 503 \"views catching up: %d events behind\"", code, reason, head)
	}
	a := h.send("get", hook("update_tags", "1", "async", "1"))
	if a.Code != 202 || a.WebhookID == "" {
		t.Fatalf("a webhook while catching up: %+v, want 202 recorded", a)
	}
	if !strings.Contains(h.logs.String(), "views catching up with the event log") {
		t.Error("no catch-up progress in the log")
	}

	// And once the views may go on, it turns ready and processes the webhook.
	close(release)
	h.eventually("/readyz to turn ready", func() bool { code, _ := readyz(t, h.base); return code == 200 })
	h.eventually("the webhook recorded while catching up to be processed", func() bool {
		return h.receipt(a.WebhookID).Status == projections.WebhookProcessed
	})
	if aside {
		h.eventually("the views built aside", func() bool { return strings.Contains(h.logs.String(), "views built aside and swapped in") })
	} else if strings.Contains(h.logs.String(), "building them aside") {
		t.Error("built aside a store this small")
	}
}

// gate is the views as afterViews sees them: WaitAside blocks until open
// is closed.
type gate struct {
	open  chan struct{}
	asked chan struct{}
}

func (g gate) WaitAside(ctx context.Context) error {
	select {
	case g.asked <- struct{}{}:
	default:
	}
	select {
	case <-g.open:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// handled is a process manager that records the positions it handled.
type handled struct {
	pipeline.Consumer
	got chan uint64
}

func (h handled) Handle(_ context.Context, rec domain.RecordedEvent) error {
	h.got <- rec.Position
	return nil
}

func TestAfterViews_AProcessFarBehindWaitsWhileTheViewsAreBuiltAside(t *testing.T) {
	tests := []struct {
		name string
		// head is the log's head; first the position of the process's
		// first event.
		head, first uint64
		wantWait    bool
	}{
		{name: "far behind: waits for the views", head: 500_000, first: 1, wantWait: true},
		{name: "at the threshold: waits", head: 100_001, first: 1, wantWait: true},
		{name: "near the head: goes on at once", head: 500_000, first: 499_000, wantWait: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given views being built aside (the gate shut) and a process
			// manager tt.head-tt.first events behind.
			g := gate{open: make(chan struct{}), asked: make(chan struct{}, 1)}
			h := handled{got: make(chan uint64, 2)}
			a := &afterViews{Consumer: h, views: g, minBehind: 100_000,
				head: func(context.Context) (uint64, error) { return tt.head, nil }}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()

			// When it is handed its first event.
			errc := make(chan error, 1)
			go func() { errc <- a.Handle(ctx, domain.RecordedEvent{Position: tt.first}) }()

			// Then it waits for the views only if far behind.
			if tt.wantWait {
				select {
				case <-g.asked:
				case <-ctx.Done():
					t.Fatal("did not ask the views")
				}
				select {
				case pos := <-h.got:
					t.Fatalf("handled %d while the views were built aside", pos)
				default:
				}
				close(g.open)
			}
			select {
			case <-h.got:
			case <-ctx.Done():
				t.Fatal("not handled")
			}
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			// And it never waits again.
			if err := a.Handle(ctx, domain.RecordedEvent{Position: tt.first + 1}); err != nil {
				t.Fatal(err)
			}
			<-h.got
			if !tt.wantWait && len(g.asked) > 0 {
				t.Error("asked the views though near the head")
			}
		})
	}
}

func TestAfterViews_StoppedWhileWaiting_HandlesNothing(t *testing.T) {
	// Given a process far behind waiting for the views.
	g := gate{open: make(chan struct{}), asked: make(chan struct{}, 1)}
	h := handled{got: make(chan uint64, 1)}
	a := &afterViews{Consumer: h, views: g, minBehind: 10,
		head: func(context.Context) (uint64, error) { return 1000, nil }}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Handle(ctx, domain.RecordedEvent{Position: 1}) }()
	<-g.asked

	// When usersync stops.
	cancel()

	// Then the event is not handled (it is delivered again at the next
	// start, from the checkpoint).
	if err := <-errc; err == nil {
		t.Fatal("Handle returned no error when stopped while waiting")
	}
	if len(h.got) > 0 {
		t.Fatal("handled while stopping")
	}
}

package projections_test

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/memory"
	"github.com/usersync/usersync/projections"
)

// countingLog lets a timeline read only through bounded backward reads,
// and counts the events those return.
type countingLog struct {
	domain.EventStore
	back     eventstore.BackwardReader
	reads    int
	returned int
	most     int
	whole    int // unbounded reads (ReadStream, ReadStreamFrom)
}

func (c *countingLog) ReadStreamBackward(ctx context.Context, stream string, before uint64, limit int) ([]domain.RecordedEvent, error) {
	recs, err := c.back.ReadStreamBackward(ctx, stream, before, limit)
	c.reads++
	c.returned += len(recs)
	c.most = max(c.most, len(recs))
	return recs, err
}

func (c *countingLog) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	c.whole++
	return c.EventStore.ReadStream(ctx, stream)
}

func (c *countingLog) ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error) {
	c.whole++
	return c.EventStore.ReadStreamFrom(ctx, stream, after)
}

// forwardOnly is a store without ReadStreamBackward (the fallback).
type forwardOnly struct{ domain.EventStore }

// manyEvents appends n tag changes, one webhook each, to contact 7.
func manyEvents(t *testing.T, s domain.EventStore, n int) {
	t.Helper()
	at := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	var envs []domain.Envelope
	for i := 0; i < n; i += 2 {
		wid := fmt.Sprintf("wh-%d", i)
		envs = append(envs,
			domain.Envelope{Event: domain.WebhookReceived{WebhookID: wid, Action: "update_tags", ContactID: "7", Method: "POST", Source: "10.0.0.1",
				Params: map[string]string{"n": fmt.Sprint(i)}, ReceivedAt: at}, OccurredAt: at, WebhookID: wid},
			domain.Envelope{Event: domain.TagsUpdated{Added: []domain.Tag{{ID: uint64(i), Name: "T"}}}, OccurredAt: at.Add(time.Duration(i) * time.Second), WebhookID: wid})
	}
	raw, err := domain.EncodeAll(envs)
	if err != nil {
		t.Fatal(err)
	}
	for len(raw) > 0 {
		k := min(len(raw), 500)
		if _, err := s.Append(context.Background(), domain.ContactID(7).Stream(), domain.AnyVersion(), raw[:k]...); err != nil {
			t.Fatal(err)
		}
		raw = raw[k:]
	}
}

func TestTimeline_PagesOfAContactWith2000Events_AreBounded(t *testing.T) {
	ctx := context.Background()
	sqlite, err := eventstore.Open(ctx, filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer sqlite.Close()
	mem := memory.New()
	stores := []struct {
		name  string
		store interface {
			domain.EventStore
			eventstore.BackwardReader
		}
	}{{"sqlite", sqlite}, {"memory", mem}}
	const n, limit = 2000, 100
	for _, s := range stores {
		t.Run(s.name, func(t *testing.T) {
			manyEvents(t, s.store, n)
			log := &countingLog{EventStore: s.store, back: s.store}
			var versions []uint64
			var cursor uint64
			for pages := 0; ; pages++ {
				if pages > n/limit {
					t.Fatalf("more than %d pages", n/limit)
				}
				page, err := projections.Timeline(ctx, log, nil, 7, cursor, limit)
				if err != nil {
					t.Fatal(err)
				}
				for _, e := range page.Entries {
					versions = append(versions, e.Version)
					if e.Webhook == nil || e.Webhook.Method != "POST" || e.Webhook.Params["n"] == "" {
						t.Fatalf("entry %d has no webhook from its page: %+v", e.Version, e.Webhook)
					}
				}
				if cursor = page.Next; cursor == 0 {
					break
				}
			}
			want := make([]uint64, n)
			for i := range want {
				want[i] = uint64(n - i)
			}
			if !slices.Equal(versions, want) {
				t.Fatalf("pages hold %d versions from %v, want %d..1 newest first", len(versions), versions[:min(3, len(versions))], n)
			}
			if log.whole != 0 || log.most > limit || log.returned != n || log.reads != n/limit+1 && log.reads != n/limit {
				t.Fatalf("reads: %d bounded ones returning %d events (at most %d), %d unbounded", log.reads, log.returned, log.most, log.whole)
			}
		})
	}
}

func TestTimeline_ForwardOnlyStore_SamePages(t *testing.T) {
	ctx := context.Background()
	mem := memory.New()
	manyEvents(t, mem, 50)
	for _, before := range []uint64{0, 50, 31, 2, 1} {
		a, err := projections.Timeline(ctx, mem, nil, 7, before, 7)
		if err != nil {
			t.Fatal(err)
		}
		b, err := projections.Timeline(ctx, forwardOnly{mem}, nil, 7, before, 7)
		if err != nil {
			t.Fatal(err)
		}
		ja, _ := json.Marshal(a)
		jb, _ := json.Marshal(b)
		if len(a.Entries) == 0 && before != 1 || string(ja) != string(jb) {
			t.Fatalf("before %d: backward %+v\nforward %+v", before, a, b)
		}
	}
}

// receipts stands for the webhooks view: the webhook of version 1.
type receipts struct{}

func (receipts) Get(context.Context, string) (projections.Webhook, bool, error) {
	return projections.Webhook{Action: "update_tags", Status: projections.WebhookProcessed, Message: "Tags updated"}, true, nil
}

func (receipts) Locate(_ context.Context, id string) (string, uint64, bool, error) {
	return domain.ContactID(7).Stream(), 1, id == "wh-0", nil
}

func TestTimeline_WebhookOffThePage_FromReceiptsAndLog(t *testing.T) {
	ctx := context.Background()
	mem := memory.New()
	manyEvents(t, mem, 2) // v1 WebhookReceived wh-0, v2 TagsUpdated
	page, err := projections.Timeline(ctx, mem, receipts{}, 7, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	w := page.Entries[0].Webhook
	if len(page.Entries) != 1 || page.Next != 2 || w == nil || w.Method != "POST" || w.Source != "10.0.0.1" || w.Outcome != "processed" || w.Message != "Tags updated" {
		t.Fatalf("page %+v, webhook %+v", page, w)
	}
	if _, err := projections.Timeline(ctx, mem, nil, 7, 0, 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
}

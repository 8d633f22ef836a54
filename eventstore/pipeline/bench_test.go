package pipeline_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/pipeline"
	"github.com/usersync/usersync/projections"
)

// catchUpEvents is the size of the store BenchmarkCatchUp catches up on:
// 200,000 by default, USERSYNC_BENCH_EVENTS to change it.
func catchUpEvents(b *testing.B) int {
	n := 200_000
	if v := os.Getenv("USERSYNC_BENCH_EVENTS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("USERSYNC_BENCH_EVENTS=%q: want a count of events", v)
		}
	}
	return n
}

// benchStore opens a store of n events as webhooks make them (an add, then
// update_tags webhooks: 11 events a contact). It is built once in
// USERSYNC_BENCH_DIR (default the system's temporary directory) and kept
// there for the next runs.
func benchStore(b *testing.B, n int) *eventstore.SQLite {
	b.Helper()
	dir := os.Getenv("USERSYNC_BENCH_DIR")
	if dir == "" {
		dir = os.TempDir()
	}
	path := filepath.Join(dir, fmt.Sprintf("usersync-catchup-v1-%d.db", n))
	ctx := context.Background()
	if _, err := os.Stat(path); err != nil {
		tmp := path + ".building"
		os.Remove(tmp)
		s, err := eventstore.Open(ctx, tmp)
		if err != nil {
			b.Fatal(err)
		}
		for c := 1; (c-1)*11 < n; c++ {
			raw, err := domain.EncodeAll(contactLife(c, min(11, n-(c-1)*11)))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Append(ctx, domain.ContactID(c).Stream(), domain.NoStream(), raw...); err != nil {
				b.Fatal(err)
			}
		}
		if err := s.Close(); err != nil {
			b.Fatal(err)
		}
		for _, suffix := range []string{"", "-wal", "-shm"} {
			os.Rename(tmp+suffix, path+suffix)
		}
	}
	s, err := eventstore.Open(ctx, path)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// contactLife is the events of one contact: an add (receipt, user, tags,
// meta, outcome) and then update_tags webhooks.
func contactLife(c int, n int) []domain.Envelope {
	id := domain.ContactID(c)
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(c) * time.Second)
	wh := fmt.Sprintf("wh-%d-0", c)
	tags := []domain.Tag{{ID: uint64(c%50 + 1), Name: fmt.Sprintf("Tag %d", c%50+1)}, {ID: 100, Name: "Customer"}}
	out := []domain.Envelope{
		{Event: domain.WebhookReceived{WebhookID: wh, Action: "add", ContactID: id.String(), Params: map[string]string{"send_notification": "1"}, Method: "POST", Source: "127.0.0.1", ReceivedAt: at}},
		{Event: domain.UserCreated{UserID: fmt.Sprintf("u-%d", c), ContactID: id, Login: fmt.Sprintf("c%d@example.com", c), Email: fmt.Sprintf("c%d@example.com", c), Role: "subscriber", PasswordHash: "$2a$10$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ01"}},
		{Event: domain.TagsUpdated{Tags: tags, Added: tags}},
		{Event: domain.MetaPulled{Changes: []domain.MetaChange{{Key: "first_name", New: "Ann"}, {Key: "last_name", New: fmt.Sprint(c)}}}},
		{Event: domain.WebhookProcessed{WebhookID: wh, Action: "add", Message: "User created", UserID: fmt.Sprintf("u-%d", c), Changed: []string{"UserCreated", "TagsUpdated", "MetaPulled"}}},
	}
	for i := 1; len(out) < n; i++ {
		wh := fmt.Sprintf("wh-%d-%d", c, i)
		next := []domain.Tag{{ID: uint64((c+i)%50 + 1), Name: fmt.Sprintf("Tag %d", (c+i)%50+1)}, {ID: 100, Name: "Customer"}}
		out = append(out,
			domain.Envelope{Event: domain.WebhookReceived{WebhookID: wh, Action: "update_tags", ContactID: id.String(), Params: map[string]string{}, Method: "GET", Source: "127.0.0.1", ReceivedAt: at}},
			domain.Envelope{Event: domain.TagsUpdated{Tags: next, Added: next[:1], Removed: tags[:1]}},
			domain.Envelope{Event: domain.WebhookProcessed{WebhookID: wh, Action: "update_tags", Message: "User updated", UserID: fmt.Sprintf("u-%d", c), Changed: []string{"TagsUpdated"}}},
		)
		tags = next
	}
	for i := range out {
		out[i].OccurredAt = at
	}
	return out[:n]
}

// decoder is a batch consumer that decodes every event and does nothing
// else: the pipeline's cost without a view's.
type decoder struct {
	name string
	mu   sync.Mutex
	pos  uint64
}

func (d *decoder) Name() string { return d.name }
func (d *decoder) Position(context.Context) (uint64, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pos, nil
}

func (d *decoder) HandleBatch(_ context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	for _, rec := range recs {
		if _, err := domain.Decode(rec); err != nil {
			return nil, err
		}
	}
	d.mu.Lock()
	d.pos = recs[len(recs)-1].Position
	d.mu.Unlock()
	return nil, nil
}

func (d *decoder) at() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.pos
}

// process is a process manager like the welcome mailer: it acts on one
// event type (here: only moves its checkpoint) and skips the others.
type process struct {
	selective
}

// countingHandler counts the log lines that say a consumer fell behind.
type countingHandler struct{ n atomic.Int64 }

func (c *countingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (c *countingHandler) Handle(_ context.Context, r slog.Record) error {
	if strings.HasPrefix(r.Message, "consumer is behind the others") {
		c.n.Add(1)
	}
	return nil
}
func (c *countingHandler) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *countingHandler) WithGroup(string) slog.Handler      { return c }

// cpuTime is the CPU time the process has used, user and system.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkCatchUp measures the live catch-up of a start whose views are
// empty over a store of USERSYNC_BENCH_EVENTS events (default 200,000),
// with two process managers (acting on UserCreated and PasswordIssued)
// from position 0: "floor" is a plain loop reading and decoding the log
// without the pipeline, "decode1" feeds one batch consumer that only decodes
// each event (the shape of one views consumer), "decode" four of them (the
// four views), "views" the real views on disk through Views.Batch (batch
// by batch into the live file), "views-aside" the real views through
// Views.CatchUpBatch, as serve feeds them: built aside at rebuild speed,
// then swapped in. It reports events/s and the process's CPU time per
// event.
func BenchmarkCatchUp(b *testing.B) {
	n := catchUpEvents(b)
	s := benchStore(b, n)
	h, err := s.Head(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	b.Run("floor", func(b *testing.B) {
		// One loop that reads the log in batches and decodes each event:
		// what decode1 costs without the pipeline.
		var total, cpu time.Duration
		for range b.N {
			start, cpu0 := time.Now(), cpuTime()
			for pos := uint64(0); pos < h; {
				recs, err := s.ReadAll(context.Background(), pos, pipeline.DefaultBatchSize)
				if err != nil {
					b.Fatal(err)
				}
				for _, rec := range recs {
					if _, err := domain.Decode(rec); err != nil {
						b.Fatal(err)
					}
				}
				pos = recs[len(recs)-1].Position
			}
			total += time.Since(start)
			cpu += cpuTime() - cpu0
		}
		b.ReportMetric(float64(h)*float64(b.N)/total.Seconds(), "events/s")
		b.ReportMetric(float64(cpu.Nanoseconds())/float64(h)/float64(b.N), "cpu-ns/event")
	})
	for _, kind := range []string{"decode1", "decode", "views", "views-aside"} {
		b.Run(kind, func(b *testing.B) {
			behind := &countingHandler{}
			log := slog.New(behind)
			defer func() { b.ReportMetric(float64(behind.n.Load())/float64(b.N), "detached/op") }()
			var total, cpu time.Duration
			for range b.N {
				b.StopTimer()
				var batch []pipeline.BatchConsumer
				var done func() bool
				switch kind {
				case "decode", "decode1":
					names := []string{"users", "tags", "password_returns", "webhooks"}
					if kind == "decode1" {
						names = []string{"views"}
					}
					var ds []*decoder
					for _, name := range names {
						d := &decoder{name: name}
						ds = append(ds, d)
						batch = append(batch, d)
					}
					done = func() bool {
						for _, d := range ds {
							if d.at() < h {
								return false
							}
						}
						return true
					}
				case "views", "views-aside":
					views, err := projections.Open(context.Background(), filepath.Join(b.TempDir(), "views.db"))
					if err != nil {
						b.Fatal(err)
					}
					if kind == "views" {
						batch = append(batch, views.Batch())
					} else {
						batch = append(batch, views.CatchUpBatch(projections.CatchUp{Log: s, MinBehind: 1}))
					}
					done = func() bool { return views.WaitAll(context.Background(), h) == nil }
					defer views.Close()
				}
				welcome := &process{selective{flaky: flaky{name: "welcome_email"}, wants: domain.TypeUserCreated}}
				returns := &process{selective{flaky: flaky{name: "password_return"}, wants: domain.TypePasswordIssued}}
				cfg := pipeline.Config{Store: s, Parker: &parked{}, Log: log, Batch: batch, ProgressEvery: time.Hour}
				if v, err := strconv.Atoi(os.Getenv("USERSYNC_BENCH_BUFFER")); err == nil {
					cfg.Buffer = v
				}
				p, err := pipeline.New(cfg, welcome, returns)
				if err != nil {
					b.Fatal(err)
				}
				ctx, cancel := context.WithCancel(context.Background())
				errc := make(chan error, 1)
				b.StartTimer()
				start, cpu0 := time.Now(), cpuTime()
				go func() { errc <- p.Run(ctx) }()
				tick := time.NewTicker(time.Millisecond)
				for deadline := time.Now().Add(10 * time.Minute); !done() || welcome.pos.Load() < h || returns.pos.Load() < h; <-tick.C {
					if time.Now().After(deadline) {
						b.Fatal("no catch-up in 10 minutes")
					}
				}
				tick.Stop()
				total += time.Since(start)
				cpu += cpuTime() - cpu0
				b.StopTimer()
				cancel()
				if err := <-errc; err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(h)*float64(b.N)/total.Seconds(), "events/s")
			b.ReportMetric(float64(cpu.Nanoseconds())/float64(h)/float64(b.N), "cpu-ns/event")
		})
	}
}

package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/eventstoretest"
	"github.com/usersync/usersync/eventstore/pipeline"
)

// openStore opens a real SQLite event store in a temporary directory.
func openStore(t testing.TB) *eventstore.SQLite {
	t.Helper()
	s, err := eventstore.Open(context.Background(), filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// appendEvents appends n events of type typ, perAppend to an append, over
// a few streams.
func appendEvents(t testing.TB, s *eventstore.SQLite, typ string, n, perAppend int) {
	t.Helper()
	for i := 0; i < n; i += perAppend {
		k := min(perAppend, n-i)
		if _, err := s.Append(context.Background(), fmt.Sprintf("contact-%d", i%7), domain.AnyVersion(), eventstoretest.Events(typ, k)...); err != nil {
			t.Fatal(err)
		}
	}
}

func head(t testing.TB, s *eventstore.SQLite) uint64 {
	t.Helper()
	h, err := s.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// batchFake is a BatchConsumer that records what it is given. It keeps its
// checkpoint across pipelines (a restart), can be held (HandleBatch waits
// until released), fail its first calls, and reject (park) events of the
// type reject.
type batchFake struct {
	name   string
	reject string
	fails  atomic.Int64 // calls still to fail
	hold   chan struct{}

	mu    sync.Mutex
	pos   uint64
	seen  []uint64 // positions applied, in order
	calls int
	errs  []string // order violations
}

func (b *batchFake) Name() string { return b.name }
func (b *batchFake) Position(context.Context) (uint64, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pos, nil
}

func (b *batchFake) HandleBatch(ctx context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	if b.hold != nil {
		select {
		case <-b.hold:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if b.fails.Add(-1) >= 0 {
		return nil, domain.ErrStorageUnavailable
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls++
	var parked []domain.ParkedEvent
	for _, rec := range recs {
		if rec.Position <= b.pos {
			continue
		}
		if rec.Position != b.pos+1 {
			b.errs = append(b.errs, fmt.Sprintf("event %d after %d", rec.Position, b.pos))
		}
		b.pos = rec.Position
		if rec.Type == b.reject {
			parked = append(parked, domain.ParkedEvent{Handler: b.name, Position: rec.Position, Stream: rec.Stream,
				Version: rec.Version, Type: rec.Type, Error: "unknown event type"})
			continue
		}
		b.seen = append(b.seen, rec.Position)
	}
	return parked, nil
}

func (b *batchFake) at() uint64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pos
}

// check fails t if b was given an event twice or out of order, or missed one.
func (b *batchFake) check(t *testing.T) {
	t.Helper()
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.errs) > 0 {
		t.Errorf("%s: out of order: %s", b.name, strings.Join(b.errs, "; "))
	}
}

// sqliteConfig is a fast pipeline config over a real store.
func sqliteConfig(s *eventstore.SQLite, parker pipeline.Parker, batch ...pipeline.BatchConsumer) pipeline.Config {
	return pipeline.Config{Store: s, Parker: parker, Log: quietLog(), Batch: batch, BatchSize: 100,
		Retry: domain.Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond}, MaxRetries: 2}
}

// selective is a per-event consumer that wants only the type it acts on.
type selective struct {
	flaky
	wants string
}

func (s *selective) Wants(t string) bool { return t == s.wants }

// TestPipeline_OneReaderFeedsEveryConsumerInOrder: three views and two
// process managers get every event once, in order, while one reader reads
// the log: the reads are those of a single follower, not five.
func TestPipeline_OneReaderFeedsEveryConsumerInOrder(t *testing.T) {
	s := openStore(t)
	const before, live = 2000, 40
	appendEvents(t, s, "E", before, 50)
	views := []*batchFake{{name: "users"}, {name: "tags"}, {name: "webhooks"}}
	cfg := sqliteConfig(s, &parked{}, views[0], views[1], views[2])
	cfg.Buffer = 64 // no lane can fall behind here: this test counts the reads of one reader
	pm := &selective{flaky: flaky{name: "welcome_email"}, wants: "W"}
	other := &flaky{name: "password_return"}
	p := run(t, cfg, pm, other)
	for i := range live {
		typ := "E"
		if i%4 == 0 {
			typ = "W"
		}
		appendEvents(t, s, typ, 1, 1)
		// Wait for the event to be applied: each append is then a wake-up
		// of the reader.
		h := head(t, s)
		waitUntil(t, "every consumer at the head", func() bool {
			return views[0].at() == h && views[1].at() == h && views[2].at() == h && pm.pos.Load() == h && other.pos.Load() == h
		})
	}
	h := head(t, s)
	for _, v := range views {
		v.check(t)
		if len(v.seen) != int(h) {
			t.Errorf("%s applied %d events, want %d", v.name, len(v.seen), h)
		}
	}
	if pm.handled.Load() != int64(h) || other.handled.Load() != int64(h) {
		t.Errorf("process managers handled %d and %d events, want %d", pm.handled.Load(), other.handled.Load(), h)
	}
	// One reader: the history in batches of 100 plus, per live append, the
	// read that finds it and the one that finds nothing more. Five
	// consumers reading for themselves would need five times that.
	oneReader := int64(before/100 + 2*live + 4)
	t.Logf("%d reads of the log for %d events and five consumers", p.Reads(), h)
	if got := p.Reads(); got > oneReader {
		t.Errorf("%d reads of the log for %d events, want at most %d (one reader)", got, h, oneReader)
	}
}

// TestPipeline_SlowConsumerDoesNotHoldBackTheOthers: a view that is stuck
// holds at most Buffer batches; the others reach the head; once it is
// released it catches up by itself, in order.
func TestPipeline_SlowConsumerDoesNotHoldBackTheOthers(t *testing.T) {
	s := openStore(t)
	slow := &batchFake{name: "slow", hold: make(chan struct{})}
	fast := &batchFake{name: "fast"}
	cfg := sqliteConfig(s, &parked{}, slow, fast)
	cfg.Buffer = 2
	pm := &flaky{name: "welcome_email"}
	p := run(t, cfg, pm)
	appendEvents(t, s, "E", 3000, 100)
	h := head(t, s)
	waitUntil(t, "the fast consumers at the head", func() bool { return fast.at() == h && pm.pos.Load() == h })
	if q := p.Queued("slow"); q > cfg.Buffer {
		t.Errorf("the stuck consumer holds %d batches, want at most %d", q, cfg.Buffer)
	}
	if slow.at() != 0 {
		t.Fatalf("the held consumer applied up to %d", slow.at())
	}
	behind, err := p.Behind(h)
	if err != nil || behind != h {
		t.Errorf("Behind = %d, %v; want %d (the stuck view has applied nothing)", behind, err, h)
	}
	close(slow.hold)
	waitUntil(t, "the slow consumer at the head", func() bool { return slow.at() == h })
	slow.check(t)
	fast.check(t)
	if len(slow.seen) != int(h) {
		t.Errorf("slow applied %d events, want %d", len(slow.seen), h)
	}
	// It rejoined the reader: live events reach it.
	appendEvents(t, s, "E", 5, 1)
	h = head(t, s)
	waitUntil(t, "every consumer at the new head", func() bool { return slow.at() == h && fast.at() == h && pm.pos.Load() == h })
	if behind, _ := p.Behind(h); behind != 0 {
		t.Errorf("Behind = %d at the head", behind)
	}
}

// TestPipeline_ParksWhatABatchRejects: events a batch consumer cannot
// decode come back from HandleBatch and are parked and counted; the
// consumer goes on.
func TestPipeline_ParksWhatABatchRejects(t *testing.T) {
	s := openStore(t)
	parker := &parked{}
	var onPark atomic.Int64
	v := &batchFake{name: "users", reject: "Future"}
	cfg := sqliteConfig(s, parker, v)
	cfg.OnPark = func(domain.ParkedEvent) { onPark.Add(1) }
	run(t, cfg)
	appendEvents(t, s, "E", 10, 5)
	appendEvents(t, s, "Future", 2, 2)
	appendEvents(t, s, "E", 3, 3)
	h := head(t, s)
	waitUntil(t, "the view at the head", func() bool { return v.at() == h })
	waitUntil(t, "two parked events", func() bool { return len(parker.list("users")) == 2 })
	got := parker.list("users")
	for i, pe := range got {
		if pe.Position != uint64(11+i) || pe.Type != "Future" || pe.ParkedAt.IsZero() || pe.Error == "" {
			t.Errorf("parked %+v, want event %d of type Future with its time and error", pe, 11+i)
		}
	}
	if onPark.Load() != 2 {
		t.Errorf("OnPark called %d times, want 2", onPark.Load())
	}
	if len(v.seen) != 13 {
		t.Errorf("applied %d events, want 13", len(v.seen))
	}
}

// TestPipeline_FailedBatchIsRetriedNeverParked: HandleBatch failing (the
// views database busy) is tried again until it succeeds.
func TestPipeline_FailedBatchIsRetriedNeverParked(t *testing.T) {
	s := openStore(t)
	parker := &parked{}
	v := &batchFake{name: "users"}
	v.fails.Store(4)
	run(t, sqliteConfig(s, parker, v))
	appendEvents(t, s, "E", 20, 10)
	h := head(t, s)
	waitUntil(t, "the view at the head", func() bool { return v.at() == h })
	v.check(t)
	if n := len(parker.list("")); n != 0 {
		t.Errorf("%d events parked for a failing batch", n)
	}
	if len(v.seen) != 20 {
		t.Errorf("applied %d events, want 20", len(v.seen))
	}
}

// TestPipeline_RestartResumesFromEachCheckpoint: each consumer is given
// only the events after its own checkpoint, at the start and after a
// restart.
func TestPipeline_RestartResumesFromEachCheckpoint(t *testing.T) {
	s := openStore(t)
	appendEvents(t, s, "E", 500, 50)
	ahead := &batchFake{name: "ahead", pos: 400}
	behind := &batchFake{name: "behind", pos: 0}
	pm := &flaky{name: "welcome_email"}
	pm.pos.Store(250)
	start := func() func() {
		p, err := pipeline.New(sqliteConfig(s, &parked{}, ahead, behind), pm)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- p.Run(ctx) }()
		return func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("pipeline: %v", err)
			}
		}
	}
	stop := start()
	waitUntil(t, "every consumer at 500", func() bool { return ahead.at() == 500 && behind.at() == 500 && pm.pos.Load() == 500 })
	stop()
	if len(ahead.seen) != 100 || ahead.seen[0] != 401 || len(behind.seen) != 500 || pm.handled.Load() != 250 {
		t.Fatalf("first run: ahead got %d events from %v, behind %d, the process manager %d", len(ahead.seen), ahead.seen[:1], len(behind.seen), pm.handled.Load())
	}
	appendEvents(t, s, "E", 100, 10)
	stop = start()
	defer stop()
	waitUntil(t, "every consumer at 600", func() bool { return ahead.at() == 600 && behind.at() == 600 && pm.pos.Load() == 600 })
	ahead.check(t)
	behind.check(t)
	if len(ahead.seen) != 200 || len(behind.seen) != 600 || pm.handled.Load() != 350 {
		t.Errorf("after the restart: ahead %d, behind %d, the process manager %d events; an event was given twice or missed",
			len(ahead.seen), len(behind.seen), pm.handled.Load())
	}
}

func TestPipeline_BehindBeforeRun(t *testing.T) {
	s := openStore(t)
	p, err := pipeline.New(sqliteConfig(s, &parked{}, &batchFake{name: "users"}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Behind(10); err != pipeline.ErrNotStarted {
		t.Fatalf("Behind before Run = %v, want ErrNotStarted", err)
	}
}

// TestPipeline_ConsumersAtDifferentSpeedsEachGetEveryEventOnce: with lanes
// of one small batch, consumers of different speeds fall behind, read for
// themselves and rejoin many times while events keep coming; each still
// gets every event once, in order.
func TestPipeline_ConsumersAtDifferentSpeedsEachGetEveryEventOnce(t *testing.T) {
	s := openStore(t)
	var fakes []*batchFake
	var batch []pipeline.BatchConsumer
	for i, work := range []int{0, 5, 50, 500} {
		f := &batchFake{name: fmt.Sprintf("view-%d", i)}
		fakes = append(fakes, f)
		batch = append(batch, slowBatch{f, work})
	}
	cfg := sqliteConfig(s, &parked{}, batch...)
	cfg.BatchSize, cfg.Buffer, cfg.MaxBatch = 10, 1, 10
	pm := &flaky{name: "welcome_email"}
	run(t, cfg, pm)
	for i := range 150 {
		appendEvents(t, s, "E", 1+i%20, 1+i%20)
	}
	h := head(t, s)
	waitUntil(t, "every consumer at the head", func() bool {
		for _, f := range fakes {
			if f.at() != h {
				return false
			}
		}
		return pm.pos.Load() == h
	})
	for _, f := range fakes {
		f.check(t)
		if len(f.seen) != int(h) {
			t.Errorf("%s applied %d events, want %d", f.name, len(f.seen), h)
		}
	}
	if pm.handled.Load() != int64(h) {
		t.Errorf("the process manager handled %d events, want %d", pm.handled.Load(), h)
	}
}

// slowBatch yields work times per event before applying a batch.
type slowBatch struct {
	*batchFake
	work int
}

func (s slowBatch) HandleBatch(ctx context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	for range s.work * len(recs) {
		runtime.Gosched()
	}
	return s.batchFake.HandleBatch(ctx, recs)
}

// namedViews is one batch consumer for several views, parking under their names.
type namedViews struct{ *batchFake }

func (namedViews) Names() []string { return []string{"users", "tags"} }

func TestReplay_RefusesTheParkedEventsOfBatchConsumers(t *testing.T) {
	s := openStore(t)
	p, err := pipeline.New(sqliteConfig(s, &parked{}, namedViews{&batchFake{name: "views"}}), &flaky{name: "welcome_email"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		handler string
		rebuild bool
	}{
		{"views", true}, {"users", true}, {"tags", true}, {"nobody", false},
	}
	for _, tc := range tests {
		t.Run(tc.handler, func(t *testing.T) {
			err := p.Replay(context.Background(), s, domain.ParkedEvent{Handler: tc.handler, Position: 1})
			if got := errors.Is(err, pipeline.ErrRebuildToReplay); got != tc.rebuild || err == nil {
				t.Fatalf("Replay for %s = %v, want ErrRebuildToReplay: %v", tc.handler, err, tc.rebuild)
			}
		})
	}
}

// jumper is a batch consumer that, at its first batch, moves its checkpoint
// to jumpTo without being handed those events (as views rebuilt aside
// do), and counts the batches it is handed that hold nothing after its
// checkpoint.
type jumper struct {
	batchFake
	jumpTo uint64
	wasted atomic.Int64
}

func (j *jumper) HandleBatch(ctx context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	j.mu.Lock()
	if j.jumpTo > 0 {
		j.pos, j.jumpTo = j.jumpTo, 0
		j.mu.Unlock()
		return nil, nil
	}
	if recs[len(recs)-1].Position <= j.pos {
		j.wasted.Add(1)
	}
	j.mu.Unlock()
	return j.batchFake.HandleBatch(ctx, recs)
}

func TestPipeline_ABatchConsumerThatMovesPastItsBatch_GoesOnFromItsCheckpoint(t *testing.T) {
	// Given a log of 3,000 events and a batch consumer that moves past
	// them all at its first batch.
	s := openStore(t)
	appendEvents(t, s, "E", 3000, 100)
	h := head(t, s)
	j := &jumper{batchFake: batchFake{name: "views"}, jumpTo: h}
	pm := &flaky{name: "welcome_email"}

	// When the pipeline runs.
	p := run(t, sqliteConfig(s, &parked{}, j), pm)
	waitUntil(t, "every consumer at the head", func() bool { return j.at() == h && pm.pos.Load() == h })

	// Then it is not handed the events it moved past, it counts as caught
	// up, and it gets the new events.
	if n := j.wasted.Load(); n > 0 {
		t.Errorf("handed %d batches of events it had moved past", n)
	}
	if behind, err := p.Behind(h); err != nil || behind != 0 {
		t.Errorf("Behind = %d, %v at the head", behind, err)
	}
	appendEvents(t, s, "E", 5, 1)
	h2 := head(t, s)
	waitUntil(t, "the consumer at the new head", func() bool { return j.at() == h2 })
	j.check(t)
	if got := len(j.seen); got != int(h2-h) {
		t.Errorf("applied %d events after the jump, want %d", got, h2-h)
	}
}

package pipeline_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/eventstoretest"
	"github.com/usersync/usersync/eventstore/memory"
	"github.com/usersync/usersync/eventstore/pipeline"
)

// spacedLog is a test adapter over the memory store that simulates the
// positions of EventStoreDB's $all when gap is set: the event the memory
// store numbers i is at position i*1000 + jitter(i), increasing with large
// uneven gaps, as byte offsets are. Without gap positions stay 1, 2, 3, …
// (denseLog declares it, as the SQLite store does). Either way the event i
// was recorded at base + i seconds, so that log time is exact.
type spacedLog struct {
	mem *memory.Store
	gap bool
}

var logBase = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

func (s *spacedLog) pos(i uint64) uint64 {
	if !s.gap || i == 0 {
		return i
	}
	return i*1000 + (i*7919)%997
}

// index is how many events have a position at or before p.
func (s *spacedLog) index(p uint64) uint64 {
	if !s.gap {
		return p
	}
	i := p / 1000
	if s.pos(i) > p {
		i--
	}
	return i
}

func (s *spacedLog) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	recs, err := s.mem.ReadAll(ctx, s.index(after), limit)
	for i := range recs {
		recs[i].RecordedAt = logBase.Add(time.Duration(recs[i].Position) * time.Second)
		recs[i].Position = s.pos(recs[i].Position)
	}
	return recs, err
}

func (s *spacedLog) Changed() <-chan struct{} { return s.mem.Changed() }

func (s *spacedLog) Head(ctx context.Context) (uint64, error) {
	h, err := s.mem.Head(ctx)
	return s.pos(h), err
}

// denseLog is a spacedLog without gaps that says so.
type denseLog struct{ *spacedLog }

func (denseLog) DensePositions() bool { return true }

// gated is a batch consumer that applies a batch only once its last
// position is at most its limit, and waits otherwise: the test decides how
// far it gets.
type gated struct {
	mu      sync.Mutex
	pos     uint64
	limit   uint64
	changed chan struct{}
}

func newGated(pos uint64) *gated {
	return &gated{pos: pos, limit: pos, changed: make(chan struct{})}
}

func (g *gated) Name() string { return "views" }
func (g *gated) Position(context.Context) (uint64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pos, nil
}

func (g *gated) HandleBatch(ctx context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	last := recs[len(recs)-1].Position
	for {
		g.mu.Lock()
		if last <= g.limit {
			g.pos = last
			g.mu.Unlock()
			return nil, nil
		}
		ch := g.changed
		g.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (g *gated) allow(limit uint64) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.limit = limit
	close(g.changed)
	g.changed = make(chan struct{})
}

func (g *gated) at() uint64 {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pos
}

// testClock is a clock the test moves.
type testClock struct{ offset atomic.Int64 }

func (c *testClock) now() time.Time          { return logBase.Add(time.Duration(c.offset.Load())) }
func (c *testClock) advance(d time.Duration) { c.offset.Add(int64(d)) }

// lockedBuffer is a log sink safe for the pipeline's goroutines.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// logs are the two logs Lag is tested over: dense positions (the embedded
// store) and gapped ones (EventStoreDB).
var logs = []struct {
	name string
	gap  bool
}{{"dense", false}, {"gapped", true}}

func (s *spacedLog) source() pipeline.Source {
	if s.gap {
		return s
	}
	return denseLog{s}
}

func appendMem(t *testing.T, m *memory.Store, n int) {
	t.Helper()
	if _, err := m.Append(context.Background(), "contact-1", domain.AnyVersion(), eventstoretest.Events("E", n)...); err != nil {
		t.Fatal(err)
	}
}

// startLag runs a pipeline over log with one gated view at position from,
// a clock of the test's and the progress log into logs.
func startLag(t *testing.T, log *spacedLog, from uint64, clock *testClock, logs *lockedBuffer) (*pipeline.Pipeline, *gated) {
	t.Helper()
	view := newGated(from)
	cfg := pipeline.Config{Store: log.source(), Parker: &parked{}, Batch: []pipeline.BatchConsumer{view},
		Log: slog.New(slog.NewTextHandler(logs, nil)), Lag: 5, CaughtUpWindow: 10 * time.Second, ProgressEvery: time.Hour,
		Retry: domain.Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond}}
	p, err := pipeline.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	p.SetClock(clock.now)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pipeline: %v", err)
		}
	})
	waitUntil(t, "the pipeline running", func() bool { _, err := p.Lag(context.Background()); return err == nil })
	return p, view
}

func lagNow(t *testing.T, p *pipeline.Pipeline) pipeline.Lag {
	t.Helper()
	lg, err := p.Lag(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return lg
}

// TestLag_DenseAndGapped: given a view that has applied 10 of 30 events,
// when Lag is asked, then on a dense log it counts 20 events behind and on
// a gapped one it says only what holds there (no event count, the share of
// positions done, the log time left), and Behind in positions is what it
// is on each.
func TestLag_DenseAndGapped(t *testing.T) {
	for _, tc := range logs {
		t.Run(tc.name, func(t *testing.T) {
			mem := memory.New()
			log := &spacedLog{mem: mem, gap: tc.gap}
			appendMem(t, mem, 30)
			clock := &testClock{}
			p, _ := startLag(t, log, log.pos(10), clock, &lockedBuffer{})
			lg := lagNow(t, p)
			head := log.pos(30)
			if lg.Head != head || lg.Applied != log.pos(10) || lg.Dense == tc.gap {
				t.Fatalf("Lag = %+v, want head %d, applied %d, dense %v", lg, head, log.pos(10), !tc.gap)
			}
			if lg.Behind != 20*time.Second {
				t.Errorf("Behind = %s, want 20s (the log time between event 10 and event 30)", lg.Behind)
			}
			wantDone := float64(log.pos(10)) / float64(head)
			if lg.Done != wantDone {
				t.Errorf("Done = %v, want %v", lg.Done, wantDone)
			}
			if lg.CaughtUp {
				t.Error("CaughtUp while 20 events behind")
			}
			behind, err := p.Behind(head)
			if err != nil || behind != head-log.pos(10) {
				t.Errorf("Behind(head) = %d, %v; want the distance in positions %d", behind, err, head-log.pos(10))
			}
			if tc.gap {
				if lg.Events != 0 {
					t.Errorf("Events = %d on a gapped log, want 0 (positions count nothing there)", lg.Events)
				}
				if got, want := lg.String(), fmt.Sprintf("%d%% of the log, 20s behind", int(wantDone*100)); got != want {
					t.Errorf("String = %q, want %q", got, want)
				}
			} else {
				if lg.Events != 20 {
					t.Errorf("Events = %d, want 20", lg.Events)
				}
				if got, want := lg.String(), "20 events behind"; got != want {
					t.Errorf("String = %q, want %q", got, want)
				}
			}
		})
	}
}

// TestLag_CaughtUp: the readiness decision on each log. Dense: within
// Config.Lag events (5). Gapped: the view has reached the head observed
// CaughtUpWindow (10s) ago, or the first one observed before one is that old.
func TestLag_CaughtUp(t *testing.T) {
	for _, tc := range logs {
		t.Run(tc.name, func(t *testing.T) {
			mem := memory.New()
			log := &spacedLog{mem: mem, gap: tc.gap}
			appendMem(t, mem, 30)
			clock := &testClock{}
			p, view := startLag(t, log, log.pos(10), clock, &lockedBuffer{})
			if lagNow(t, p).CaughtUp {
				t.Fatal("caught up at event 10 of 30")
			}
			// Given the view at the head, then it is caught up.
			view.allow(log.pos(30))
			// (Lag reads the lane's position, set once HandleBatch has
			// returned, a moment after the view's own.)
			waitUntil(t, "the view at the head", func() bool { return lagNow(t, p).Applied == log.pos(30) })
			clock.advance(time.Second)
			if lg := lagNow(t, p); !lg.CaughtUp {
				t.Fatalf("not caught up at the head: %+v", lg)
			}
			// When 3 events arrive that it does not apply yet: dense, 3 is
			// within the lag of 5; gapped, no head was observed 10s ago yet,
			// so the first one observed (30, reached) counts and it is
			// caught up too: events appended since are not a moment of
			// "not ready".
			appendMem(t, mem, 3)
			clock.advance(time.Second)
			if got, want := lagNow(t, p).CaughtUp, true; got != want {
				t.Errorf("3 events behind, 2s after the head was reached: CaughtUp = %v, want %v", got, want)
			}
			// Then 9.5s later the view has still applied every event that
			// was in the log 10s ago (the head of 30 observed 10.5s ago; the
			// head of 33 was observed 9.5s ago): gapped, it counts as caught
			// up too.
			clock.advance(9500 * time.Millisecond)
			if lg := lagNow(t, p); !lg.CaughtUp {
				t.Errorf("3 events behind, the head observed 10s ago reached: not caught up: %+v", lg)
			}
			// When 10 more arrive and 12s pass with the view still at 30:
			// dense, 13 is over the lag; gapped, the head observed 10s ago
			// (33) is not reached.
			appendMem(t, mem, 10)
			p.Lag(context.Background()) // observes the head of 43
			clock.advance(12 * time.Second)
			if lg := lagNow(t, p); lg.CaughtUp {
				t.Errorf("13 events behind for 12s: caught up: %+v", lg)
			}
		})
	}
}

// TestProgress_LogsWhatHoldsOnEachLog: the catch-up line says events on a
// dense log and the share done with the log time left on a gapped one.
func TestProgress_LogsWhatHoldsOnEachLog(t *testing.T) {
	for _, tc := range logs {
		t.Run(tc.name, func(t *testing.T) {
			mem := memory.New()
			log := &spacedLog{mem: mem, gap: tc.gap}
			appendMem(t, mem, 30)
			out := &lockedBuffer{}
			startLag(t, log, log.pos(10), &testClock{}, out)
			waitUntil(t, "the catch-up line", func() bool { return strings.Contains(out.String(), "views catching up") })
			line := out.String()
			want := []string{"behind=20"}
			if tc.gap {
				done := float64(log.pos(10)) / float64(log.pos(30))
				want = []string{fmt.Sprintf("done=%d%%", int(done*100)), "behind_time=20s",
					fmt.Sprintf("applied=%d", log.pos(10)), fmt.Sprintf("head=%d", log.pos(30))}
			}
			for _, w := range want {
				if !strings.Contains(line, w) {
					t.Errorf("catch-up line %q lacks %q", line, w)
				}
			}
			if tc.gap && strings.Contains(line, "behind=") {
				t.Errorf("catch-up line on a gapped log counts events behind: %q", line)
			}
		})
	}
}

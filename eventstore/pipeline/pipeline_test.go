package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/eventstoretest"
	"github.com/usersync/usersync/eventstore/memory"
	"github.com/usersync/usersync/eventstore/pipeline"
)

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// parked is an in-memory pipeline.Parker.
type parked struct {
	mu     sync.Mutex
	events []domain.ParkedEvent
}

func (p *parked) Park(_ context.Context, pe domain.ParkedEvent) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = append(p.events, pe)
	return nil
}

func (p *parked) Unpark(_ context.Context, handler string, position uint64) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.events = slices.DeleteFunc(p.events, func(pe domain.ParkedEvent) bool {
		return pe.Handler == handler && pe.Position == position
	})
	return nil
}

func (p *parked) list(handler string) []domain.ParkedEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []domain.ParkedEvent
	for _, pe := range p.events {
		if handler == "" || pe.Handler == handler {
			out = append(out, pe)
		}
	}
	return out
}

// flaky fails on one event a set number of times, then succeeds.
type flaky struct {
	name      string
	failOn    uint64
	failures  atomic.Int64
	failTimes int64
	panics    bool
	inOrder   bool
	err       error // what it fails with (default: a plain error)
	pos       atomic.Uint64
	handled   atomic.Int64
}

func (f *flaky) Name() string                                  { return f.name }
func (f *flaky) Position(context.Context) (uint64, error)      { return f.pos.Load(), nil }
func (f *flaky) Skip(_ context.Context, position uint64) error { f.pos.Store(position); return nil }
func (f *flaky) InOrderOnly() bool                             { return f.inOrder }
func (f *flaky) Handle(_ context.Context, rec domain.RecordedEvent) error {
	if rec.Position == f.failOn && f.failures.Load() < f.failTimes {
		f.failures.Add(1)
		if f.panics {
			panic("handler bug")
		}
		if f.err != nil {
			return fmt.Errorf("failure %d: %w", f.failures.Load(), f.err)
		}
		return fmt.Errorf("transient failure %d", f.failures.Load())
	}
	f.handled.Add(1)
	f.pos.Store(rec.Position)
	return nil
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

// run starts a pipeline and stops it at the end of the test.
func run(t *testing.T, cfg pipeline.Config, consumers ...pipeline.Consumer) *pipeline.Pipeline {
	t.Helper()
	p, err := pipeline.New(cfg, consumers...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	select {
	case <-p.Running():
	case err := <-done:
		t.Fatalf("pipeline stopped at start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("pipeline did not start")
	}
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pipeline: %v", err)
		}
	})
	return p
}

func fastConfig(store *memory.Store, parker pipeline.Parker) pipeline.Config {
	return pipeline.Config{Store: store, Parker: parker, Log: quietLog(),
		Retry: domain.Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond}, MaxRetries: 2}
}

func TestPipeline_RetriesThenParksAFailingHandler(t *testing.T) {
	store := memory.New()
	defer store.Close()
	parker := &parked{}
	var onPark atomic.Int64
	cfg := fastConfig(store, parker)
	cfg.OnPark = func(domain.ParkedEvent) { onPark.Add(1) }

	recovers := &flaky{name: "recovers", failOn: 2, failTimes: 2}
	keepsFailing := &flaky{name: "keeps-failing", failOn: 2, failTimes: 1 << 30}
	panics := &flaky{name: "panics", failOn: 2, failTimes: 1 << 30, panics: true}
	p := run(t, cfg, recovers, keepsFailing, panics)
	for i := range 3 {
		if _, err := store.Append(context.Background(), fmt.Sprintf("s-%d", i), domain.AnyVersion(), eventstoretest.Event("E", i)); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []*flaky{recovers, keepsFailing, panics} {
		waitUntil(t, f.name+" to pass event 3", func() bool { return f.pos.Load() == 3 })
	}
	if recovers.handled.Load() != 3 || recovers.failures.Load() != 2 {
		t.Errorf("recovers: handled %d after %d failures", recovers.handled.Load(), recovers.failures.Load())
	}
	// MaxRetries 2: the first try and two retries, then parked.
	for _, f := range []*flaky{keepsFailing, panics} {
		if f.handled.Load() != 2 || f.failures.Load() != 3 {
			t.Errorf("%s: handled %d, failures %d", f.name, f.handled.Load(), f.failures.Load())
		}
	}
	all := parker.list("")
	if len(all) != 2 || all[0].Position != 2 || all[1].Position != 2 {
		t.Fatalf("parked: %+v", all)
	}
	for _, pe := range all {
		if pe.Stream != "s-1" || pe.Version != 1 || pe.Type != "E" || pe.Error == "" || pe.ParkedAt.IsZero() {
			t.Errorf("parked event %+v does not describe event 2", pe)
		}
	}
	if got := parker.list("panics"); len(got) != 1 || !strings.Contains(got[0].Error, "handler bug") {
		t.Errorf("the panic is parked with its message: %+v", got)
	}
	if onPark.Load() != 2 {
		t.Errorf("OnPark called %d times, want 2", onPark.Load())
	}
	// Once the cause is fixed, replay hands the event over again and unparks it.
	keepsFailing.failTimes = 0
	for _, pe := range parker.list("keeps-failing") {
		if err := p.Replay(context.Background(), store, pe); err != nil {
			t.Fatal(err)
		}
	}
	if left := parker.list("keeps-failing"); len(left) != 0 || keepsFailing.handled.Load() != 3 {
		t.Fatalf("after replay: parked %+v, handled %d", left, keepsFailing.handled.Load())
	}
	if left := parker.list("panics"); len(left) != 1 {
		t.Fatalf("replaying one handler's event unparked another's: %+v", left)
	}
}

// TestPipeline_NeverParksForATemporaryStorageError: a full disk or a busy
// file fails a handler for longer than its retries, and the event is still
// handled, not parked, once the storage is back.
func TestPipeline_NeverParksForATemporaryStorageError(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"marked", domain.ErrStorageUnavailable},
		{"ENOSPC", &os.PathError{Op: "write", Path: "views.db-wal", Err: syscall.ENOSPC}},
		{"EDQUOT", syscall.EDQUOT},
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := memory.New()
			defer store.Close()
			parker := &parked{}
			// MaxRetries 2 would park after 3 failures; it fails 8 times.
			f := &flaky{name: "full-disk", failOn: 1, failTimes: 8, err: tc.err}
			run(t, fastConfig(store, parker), f)
			for i := range 2 {
				if _, err := store.Append(context.Background(), fmt.Sprintf("s-%d", i), domain.AnyVersion(), eventstoretest.Event("E", i)); err != nil {
					t.Fatal(err)
				}
			}
			waitUntil(t, "the handler to pass event 2", func() bool { return f.pos.Load() == 2 })
			if got := parker.list(""); len(got) != 0 {
				t.Errorf("parked for a temporary storage error: %+v", got)
			}
			if f.handled.Load() != 2 || f.failures.Load() != 8 {
				t.Errorf("handled %d after %d failures, want 2 after 8", f.handled.Load(), f.failures.Load())
			}
		})
	}
}

func TestPipeline_ReplayRefusals(t *testing.T) {
	store := memory.New()
	defer store.Close()
	parker := &parked{}
	view := &flaky{name: "view", failOn: 1, failTimes: 1 << 30, inOrder: true}
	other := &flaky{name: "other"}
	p := run(t, fastConfig(store, parker), view, other)
	if _, err := store.Append(context.Background(), "s", domain.NoStream(), eventstoretest.Event("E", 1)); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the view to park event 1", func() bool { return len(parker.list("view")) == 1 })

	tests := []struct {
		name    string
		pe      domain.ParkedEvent
		wantErr func(error) bool
	}{
		{"in order only", parker.list("view")[0], func(err error) bool { return errors.Is(err, pipeline.ErrRebuildToReplay) }},
		{"unknown handler", domain.ParkedEvent{Handler: "nobody", Position: 1}, func(err error) bool { return err != nil && strings.Contains(err.Error(), "nobody") }},
		{"not in the store", domain.ParkedEvent{Handler: "other", Position: 99}, func(err error) bool { return err != nil && strings.Contains(err.Error(), "not in the store") }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if err := p.Replay(context.Background(), store, tc.pe); !tc.wantErr(err) {
				t.Fatalf("Replay(%+v) = %v", tc.pe, err)
			}
		})
	}
	if len(parker.list("view")) != 1 {
		t.Fatal("a refused replay unparked the event")
	}
}

func TestConfig_Validate(t *testing.T) {
	store, parker := memory.New(), &parked{}
	defer store.Close()
	tests := []struct {
		name string
		cfg  pipeline.Config
		want string // "" for a valid config
	}{
		{"defaults", pipeline.Config{Store: store, Parker: parker}, ""},
		{"explicit", fastConfig(store, parker), ""},
		{"no store", pipeline.Config{Parker: parker}, "no event store"},
		{"no parker", pipeline.Config{Store: store}, "no parker"},
		{"negative retries", pipeline.Config{Store: store, Parker: parker, MaxRetries: -1}, "max retries"},
		{"max below initial", pipeline.Config{Store: store, Parker: parker, Retry: domain.Backoff{Initial: time.Second, Max: time.Millisecond}}, "retry backoff"},
		{"negative initial", pipeline.Config{Store: store, Parker: parker, Retry: domain.Backoff{Initial: -time.Second}}, "retry backoff"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pipeline.New(tc.cfg)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Fatalf("New: err = %v, want one that mentions %q", err, tc.want)
			}
		})
	}
}

func TestPipeline_TwoConsumersWithOneName(t *testing.T) {
	store := memory.New()
	defer store.Close()
	if _, err := pipeline.New(fastConfig(store, &parked{}), &flaky{name: "a"}, &flaky{name: "a"}); err == nil {
		t.Fatal("New accepted two consumers named a")
	}
}

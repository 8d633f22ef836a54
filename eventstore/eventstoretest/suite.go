// Package eventstoretest is the conformance suite for eventstore.Store
// adapters: Run checks the behaviour every adapter must have, RunRestart
// what survives closing and reopening a store.
//
// Positions must be strictly increasing; the suite does not require them to
// be dense (an adapter may leave gaps).
package eventstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// timeout bounds every wait of the suite; nothing should come near it.
const timeout = 20 * time.Second

// Run runs the conformance suite. open must return a fresh, empty store
// for each call; the suite closes it (and open may register a cleanup that
// closes it again: Close must be idempotent).
func Run(t *testing.T, open func(t *testing.T) eventstore.Store) {
	tests := []struct {
		name string
		fn   func(t *testing.T, s eventstore.Store)
	}{
		{"AppendAndReadStream", testAppendAndReadStream},
		{"GlobalOrder", testGlobalOrder},
		{"ExpectedVersion", testExpectedVersion},
		{"EmptyAppendChecksVersion", testEmptyAppend},
		{"InvalidAppend", testInvalidAppend},
		{"MissingStream", testMissingStream},
		{"ReadAllPaging", testReadAllPaging},
		{"Head", testHead},
		{"ReadAfterWrite", testReadAfterWrite},
		{"ConcurrentSameExpectedVersion", testConcurrentSameVersion},
		{"ConcurrentStreams", testConcurrentStreams},
		{"SubscribeCatchUpThenLive", testSubscribeCatchUpLive},
		{"SubscribeFromEmpty", testSubscribeFromEmpty},
		{"SubscribeCancel", testSubscribeCancel},
		{"SubscribeEndsOnClose", testSubscribeEndsOnClose},
		{"AppendAfterClose", testAppendAfterClose},
		{"CancelledContext", testCancelledContext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := open(t)
			t.Cleanup(func() {
				if err := s.Close(); err != nil {
					t.Errorf("Close: %v", err)
				}
			})
			tc.fn(t, s)
		})
	}
}

// RunRestart checks that a store keeps its events across Close and a new
// open of the same dir: open(t, dir) opens the store kept in dir (creating
// it when dir is empty).
func RunRestart(t *testing.T, open func(t *testing.T, dir string) eventstore.Store) {
	t.Run("PositionsAndVersionsSurvive", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		ctx := testContext(t)
		s := open(t, dir)
		for i := range 30 {
			mustAppend(t, s, fmt.Sprintf("user-%d", i%4), domain.AnyVersion(), Event("UserRegistered", i))
		}
		// One append with several events, to cross a batch boundary.
		mustAppend(t, s, "user-0", domain.ExactVersion(8), Events("UserRenamed", 5)...)
		before := readAll(t, s, 0)
		head, err := s.Head(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}

		s = open(t, dir)
		defer s.Close()
		after := readAll(t, s, 0)
		assertSameEvents(t, before, after)
		head2, err := s.Head(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if head2 != head {
			t.Fatalf("Head after reopen = %d, want %d", head2, head)
		}
		// The stream versions are known again: stale expectations fail,
		// right ones succeed, and positions continue past the old head.
		if _, err := s.Append(ctx, "user-0", domain.NoStream(), Event("UserRegistered", 99)); !errors.Is(err, domain.ErrConcurrency) {
			t.Fatalf("NoStream on an existing stream after reopen: err = %v, want a concurrency error", err)
		}
		res, err := s.Append(ctx, "user-0", domain.ExactVersion(13), Event("UserRenamed", 100))
		if err != nil {
			t.Fatalf("append after reopen: %v", err)
		}
		if res.Version != 14 || res.Position <= head {
			t.Fatalf("append after reopen = %+v, want version 14 and a position after %d", res, head)
		}
		res2 := mustAppend(t, s, "user-new", domain.NoStream(), Event("UserRegistered", 101))
		if res2.Version != 1 || res2.Position <= res.Position {
			t.Fatalf("new stream after reopen = %+v, want version 1 after position %d", res2, res.Position)
		}
	})
	t.Run("EmptyStoreReopens", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		s := open(t, dir)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		s = open(t, dir)
		defer s.Close()
		if evs := readAll(t, s, 0); len(evs) != 0 {
			t.Fatalf("reopened empty store has %d events", len(evs))
		}
		res := mustAppend(t, s, "a", domain.NoStream(), Event("T", 1))
		if res.Version != 1 {
			t.Fatalf("first append = %+v", res)
		}
	})
}

// Event returns an event of type typ with a small JSON body numbered n.
func Event(typ string, n int) domain.NewEvent {
	return domain.NewEvent{
		Type:     typ,
		Data:     fmt.Appendf(nil, `{"n":%d}`, n),
		Metadata: fmt.Appendf(nil, `{"schema":1,"seq":%d}`, n),
	}
}

// Events returns n events of type typ.
func Events(typ string, n int) []domain.NewEvent {
	evs := make([]domain.NewEvent, n)
	for i := range evs {
		evs[i] = Event(typ, i)
	}
	return evs
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), timeout)
	t.Cleanup(cancel)
	return ctx
}

func mustAppend(t *testing.T, s eventstore.Store, stream string, ev domain.ExpectedVersion, events ...domain.NewEvent) domain.AppendResult {
	t.Helper()
	res, err := s.Append(testContext(t), stream, ev, events...)
	if err != nil {
		t.Fatalf("append %d events to %s (%s): %v", len(events), stream, ev, err)
	}
	return res
}

// readAll reads every event after after in pages of 7.
func readAll(t *testing.T, s eventstore.Store, after uint64) []domain.RecordedEvent {
	t.Helper()
	ctx := testContext(t)
	var out []domain.RecordedEvent
	for {
		page, err := s.ReadAll(ctx, after, 7)
		if err != nil {
			t.Fatalf("ReadAll(%d, 7): %v", after, err)
		}
		if len(page) > 7 {
			t.Fatalf("ReadAll(%d, 7) returned %d events", after, len(page))
		}
		if len(page) == 0 {
			return out
		}
		out = append(out, page...)
		after = page[len(page)-1].Position
	}
}

func assertSameEvents(t *testing.T, want, got []domain.RecordedEvent) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d events, want %d", len(got), len(want))
	}
	for i := range want {
		if !sameEvent(want[i], got[i]) {
			t.Fatalf("event %d: got %s, want %s", i, describe(got[i]), describe(want[i]))
		}
	}
}

func sameEvent(a, b domain.RecordedEvent) bool {
	return a.Position == b.Position && a.Stream == b.Stream && a.Version == b.Version &&
		a.Type == b.Type && bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Metadata, b.Metadata) &&
		a.RecordedAt.Equal(b.RecordedAt)
}

func describe(e domain.RecordedEvent) string {
	return fmt.Sprintf("{pos %d %s@%d %s data=%s meta=%s at %s}", e.Position, e.Stream, e.Version, e.Type, e.Data, e.Metadata, e.RecordedAt.Format(time.RFC3339Nano))
}

// assertOrdered checks that positions strictly increase and that each
// stream's versions go 1, 2, 3, ... in position order.
func assertOrdered(t *testing.T, evs []domain.RecordedEvent) {
	t.Helper()
	versions := map[string]uint64{}
	var last uint64
	for _, e := range evs {
		if e.Position <= last {
			t.Fatalf("position %d after %d", e.Position, last)
		}
		last = e.Position
		if e.Version != versions[e.Stream]+1 {
			t.Fatalf("stream %s: version %d after %d", e.Stream, e.Version, versions[e.Stream])
		}
		versions[e.Stream] = e.Version
	}
}

func testAppendAndReadStream(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	start := time.Now().Add(-time.Minute)
	res := mustAppend(t, s, "user-1", domain.NoStream(), Event("UserRegistered", 1), Event("UserRenamed", 2))
	if res.Version != 2 || res.Position == 0 {
		t.Fatalf("first append = %+v, want version 2", res)
	}
	res2 := mustAppend(t, s, "user-1", domain.ExactVersion(2), Event("UserDisabled", 3))
	if res2.Version != 3 || res2.Position <= res.Position {
		t.Fatalf("second append = %+v after %+v", res2, res)
	}
	evs, err := s.ReadStream(ctx, "user-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 3 {
		t.Fatalf("ReadStream returned %d events, want 3", len(evs))
	}
	for i, e := range evs {
		want := Event([]string{"UserRegistered", "UserRenamed", "UserDisabled"}[i], i+1)
		if e.Stream != "user-1" || e.Version != uint64(i+1) || e.Type != want.Type ||
			!bytes.Equal(e.Data, want.Data) || !bytes.Equal(e.Metadata, want.Metadata) {
			t.Fatalf("event %d = %s, want %s@%d %s %s", i, describe(e), "user-1", i+1, want.Type, want.Data)
		}
		if e.RecordedAt.Before(start) || e.RecordedAt.After(time.Now().Add(time.Minute)) {
			t.Fatalf("event %d RecordedAt = %v, not about now", i, e.RecordedAt)
		}
	}
	assertOrdered(t, evs)
	if evs[1].Position != res.Position || evs[2].Position != res2.Position {
		t.Fatalf("positions %d, %d do not match the append results %d, %d", evs[1].Position, evs[2].Position, res.Position, res2.Position)
	}
	// Events without data or metadata come back with none.
	mustAppend(t, s, "bare", domain.AnyVersion(), domain.NewEvent{Type: "Bare"})
	bare, err := s.ReadStream(ctx, "bare")
	if err != nil {
		t.Fatal(err)
	}
	if len(bare) != 1 || len(bare[0].Data) != 0 || len(bare[0].Metadata) != 0 {
		t.Fatalf("bare event read back as %+v", bare)
	}
}

func testGlobalOrder(t *testing.T, s eventstore.Store) {
	var results []domain.AppendResult
	for i := range 40 {
		stream := fmt.Sprintf("s-%d", i%5)
		results = append(results, mustAppend(t, s, stream, domain.AnyVersion(), Event("E", i)))
	}
	all := readAll(t, s, 0)
	if len(all) != 40 {
		t.Fatalf("ReadAll returned %d events, want 40", len(all))
	}
	assertOrdered(t, all)
	for i, e := range all {
		if e.Position != results[i].Position || e.Stream != fmt.Sprintf("s-%d", i%5) || !bytes.Equal(e.Data, Event("E", i).Data) {
			t.Fatalf("event %d = %s, append result %+v", i, describe(e), results[i])
		}
	}
	// Each stream read alone matches the global log's events of it.
	for k := range 5 {
		stream := fmt.Sprintf("s-%d", k)
		evs, err := s.ReadStream(testContext(t), stream)
		if err != nil {
			t.Fatal(err)
		}
		var want []domain.RecordedEvent
		for _, e := range all {
			if e.Stream == stream {
				want = append(want, e)
			}
		}
		assertSameEvents(t, want, evs)
	}
}

func wantConflict(t *testing.T, err error, stream string, actual uint64) {
	t.Helper()
	if !errors.Is(err, domain.ErrConcurrency) {
		t.Fatalf("err = %v, want errors.Is(err, domain.ErrConcurrency)", err)
	}
	var ce *domain.ConcurrencyError
	if !errors.As(err, &ce) {
		t.Fatalf("err = %v (%T), want a *domain.ConcurrencyError", err, err)
	}
	if ce.Stream != stream || ce.Actual != actual {
		t.Fatalf("ConcurrencyError = %+v, want stream %s actual %d", ce, stream, actual)
	}
}

func testExpectedVersion(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	// Exact 0 is NoStream.
	mustAppend(t, s, "a", domain.ExactVersion(0), Event("E", 1))
	_, err := s.Append(ctx, "a", domain.NoStream(), Event("E", 2))
	wantConflict(t, err, "a", 1)
	_, err = s.Append(ctx, "a", domain.ExactVersion(0), Event("E", 2))
	wantConflict(t, err, "a", 1)
	_, err = s.Append(ctx, "a", domain.ExactVersion(2), Event("E", 2))
	wantConflict(t, err, "a", 1)
	_, err = s.Append(ctx, "missing", domain.ExactVersion(1), Event("E", 2))
	wantConflict(t, err, "missing", 0)

	res := mustAppend(t, s, "a", domain.ExactVersion(1), Event("E", 2), Event("E", 3))
	if res.Version != 3 {
		t.Fatalf("append = %+v, want version 3", res)
	}
	res = mustAppend(t, s, "a", domain.AnyVersion(), Event("E", 4))
	if res.Version != 4 {
		t.Fatalf("append with any version = %+v, want version 4", res)
	}
	res = mustAppend(t, s, "b", domain.AnyVersion(), Event("E", 5))
	if res.Version != 1 {
		t.Fatalf("append with any version to a new stream = %+v, want version 1", res)
	}
	// Refused appends wrote nothing.
	evs, err := s.ReadStream(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 4 {
		t.Fatalf("stream a has %d events, want 4", len(evs))
	}
	if evs, _ := s.ReadStream(ctx, "missing"); len(evs) != 0 {
		t.Fatalf("refused append created stream missing: %v", evs)
	}
	if all := readAll(t, s, 0); len(all) != 5 {
		t.Fatalf("log has %d events, want 5", len(all))
	}
}

func testEmptyAppend(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	res, err := s.Append(ctx, "a", domain.NoStream())
	if err != nil {
		t.Fatalf("empty append to a missing stream with NoStream: %v", err)
	}
	if res.Version != 0 {
		t.Fatalf("empty append = %+v, want version 0", res)
	}
	_, err = s.Append(ctx, "a", domain.ExactVersion(1))
	wantConflict(t, err, "a", 0)

	w := mustAppend(t, s, "a", domain.NoStream(), Event("E", 1), Event("E", 2))
	res, err = s.Append(ctx, "a", domain.ExactVersion(2))
	if err != nil {
		t.Fatalf("empty append with the right version: %v", err)
	}
	if res.Version != 2 {
		t.Fatalf("empty append = %+v, want version 2", res)
	}
	if res.Position != 0 && res.Position != w.Position {
		t.Fatalf("empty append position = %d, want 0 or %d", res.Position, w.Position)
	}
	_, err = s.Append(ctx, "a", domain.NoStream())
	wantConflict(t, err, "a", 2)
	if all := readAll(t, s, 0); len(all) != 2 {
		t.Fatalf("log has %d events, want 2", len(all))
	}
}

func testInvalidAppend(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	if _, err := s.Append(ctx, "", domain.AnyVersion(), Event("E", 1)); err == nil || errors.Is(err, domain.ErrConcurrency) {
		t.Fatalf("append to an empty stream name: err = %v, want a validation error", err)
	}
	if _, err := s.Append(ctx, "a", domain.AnyVersion(), Event("E", 1), domain.NewEvent{Data: []byte(`{}`)}); err == nil || errors.Is(err, domain.ErrConcurrency) {
		t.Fatalf("append of an event without a type: err = %v, want a validation error", err)
	}
	if all := readAll(t, s, 0); len(all) != 0 {
		t.Fatalf("invalid appends wrote %d events", len(all))
	}
}

func testMissingStream(t *testing.T, s eventstore.Store) {
	mustAppend(t, s, "other", domain.AnyVersion(), Event("E", 1))
	evs, err := s.ReadStream(testContext(t), "nobody")
	if err != nil || len(evs) != 0 {
		t.Fatalf("ReadStream of a missing stream = %v, %v; want no events and no error", evs, err)
	}
}

func testReadAllPaging(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	if evs, err := s.ReadAll(ctx, 0, 10); err != nil || len(evs) != 0 {
		t.Fatalf("ReadAll on an empty store = %v, %v", evs, err)
	}
	mustAppend(t, s, "a", domain.AnyVersion(), Events("E", 25)...)
	all := readAll(t, s, 0)
	if len(all) != 25 {
		t.Fatalf("got %d events, want 25", len(all))
	}
	for _, limit := range []int{1, 2, 10, 24, 25, 100} {
		for _, from := range []int{0, 3, 12, 24} {
			after := uint64(0)
			if from > 0 {
				after = all[from-1].Position
			}
			page, err := s.ReadAll(ctx, after, limit)
			if err != nil {
				t.Fatal(err)
			}
			want := all[from:min(from+limit, len(all))]
			assertSameEvents(t, want, page)
		}
	}
	last := all[len(all)-1].Position
	if evs, err := s.ReadAll(ctx, last, 10); err != nil || len(evs) != 0 {
		t.Fatalf("ReadAll after the last position = %v, %v", evs, err)
	}
	if evs, err := s.ReadAll(ctx, last+1000, 10); err != nil || len(evs) != 0 {
		t.Fatalf("ReadAll past the end = %v, %v", evs, err)
	}
	// Large pages work too.
	big, err := s.ReadAll(ctx, 0, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	assertSameEvents(t, all, big)
}

func testHead(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	h, err := s.Head(ctx)
	if err != nil || h != 0 {
		t.Fatalf("Head of an empty store = %d, %v; want 0", h, err)
	}
	mustAppend(t, s, "a", domain.AnyVersion(), Events("E", 3)...)
	res := mustAppend(t, s, "b", domain.AnyVersion(), Event("E", 4))
	h, err = s.Head(ctx)
	if err != nil || h != res.Position {
		t.Fatalf("Head = %d, %v; want %d", h, err, res.Position)
	}
}

func testReadAfterWrite(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			stream := fmt.Sprintf("raw-%d", w)
			for i := range 12 {
				res, err := s.Append(ctx, stream, domain.ExactVersion(uint64(i)), Event("E", i))
				if err != nil {
					errs <- err
					return
				}
				evs, err := s.ReadStream(ctx, stream)
				if err != nil {
					errs <- err
					return
				}
				if len(evs) != i+1 || evs[i].Position != res.Position {
					errs <- fmt.Errorf("%s: after append %+v ReadStream has %d events", stream, res, len(evs))
					return
				}
				page, err := s.ReadAll(ctx, res.Position-1, 1)
				if err != nil {
					errs <- err
					return
				}
				if len(page) != 1 || page[0].Position != res.Position || page[0].Stream != stream {
					errs <- fmt.Errorf("%s: after append %+v ReadAll returned %v", stream, res, page)
					return
				}
				h, err := s.Head(ctx)
				if err != nil || h < res.Position {
					errs <- fmt.Errorf("Head = %d, %v after an append at %d", h, err, res.Position)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func testConcurrentSameVersion(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	const goroutines, rounds = 32, 20
	for round := range rounds {
		var wg sync.WaitGroup
		var mu sync.Mutex
		var wins []int
		start := make(chan struct{})
		for g := range goroutines {
			wg.Go(func() {
				<-start
				_, err := s.Append(ctx, "contended", domain.ExactVersion(uint64(round)), Event("E", round*goroutines+g))
				switch {
				case err == nil:
					mu.Lock()
					wins = append(wins, g)
					mu.Unlock()
				case errors.Is(err, domain.ErrConcurrency):
					var ce *domain.ConcurrencyError
					if !errors.As(err, &ce) || ce.Actual != uint64(round+1) {
						t.Errorf("round %d: conflict %v, want actual version %d", round, err, round+1)
					}
				default:
					t.Errorf("round %d: %v", round, err)
				}
			})
		}
		close(start)
		wg.Wait()
		if len(wins) != 1 {
			t.Fatalf("round %d: %d appends with the same expected version succeeded, want exactly 1", round, len(wins))
		}
	}
	evs, err := s.ReadStream(ctx, "contended")
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != rounds {
		t.Fatalf("stream has %d events, want %d", len(evs), rounds)
	}
	assertOrdered(t, evs)
}

func testConcurrentStreams(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	const writers, each = 16, 15
	var wg sync.WaitGroup
	positions := make(chan uint64, writers*each)
	for w := range writers {
		wg.Go(func() {
			stream := fmt.Sprintf("w-%d", w)
			for i := range each {
				res, err := s.Append(ctx, stream, domain.ExactVersion(uint64(i)), Event("E", i))
				if err != nil {
					t.Errorf("%s: %v", stream, err)
					return
				}
				if res.Version != uint64(i+1) {
					t.Errorf("%s: version %d, want %d", stream, res.Version, i+1)
				}
				positions <- res.Position
			}
		})
	}
	wg.Wait()
	close(positions)
	seen := map[uint64]bool{}
	for p := range positions {
		if seen[p] {
			t.Fatalf("position %d given twice", p)
		}
		seen[p] = true
	}
	all := readAll(t, s, 0)
	if len(all) != writers*each {
		t.Fatalf("log has %d events, want %d", len(all), writers*each)
	}
	assertOrdered(t, all)
	for _, e := range all {
		if !seen[e.Position] {
			t.Fatalf("event at %d was never acknowledged", e.Position)
		}
	}
}

// collect receives from sub until it has n events, failing on a timeout or
// an early end.
func collect(t *testing.T, sub *eventstore.Subscription, n int) []domain.RecordedEvent {
	t.Helper()
	guard := time.After(timeout)
	out := make([]domain.RecordedEvent, 0, n)
	for len(out) < n {
		select {
		case e, ok := <-sub.Events():
			if !ok {
				t.Fatalf("subscription ended after %d of %d events: %v", len(out), n, sub.Err())
			}
			out = append(out, e)
		case <-guard:
			t.Fatalf("timed out after %d of %d events", len(out), n)
		}
	}
	return out
}

func testSubscribeCatchUpLive(t *testing.T, s eventstore.Store) {
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	for i := range 200 {
		mustAppend(t, s, fmt.Sprintf("hist-%d", i%7), domain.AnyVersion(), Event("E", i))
	}
	history := readAll(t, s, 0)
	from := history[99].Position // start mid-history

	// Appends race with the catch-up.
	const writers, each = 4, 100
	var wg sync.WaitGroup
	sub := s.Subscribe(ctx, from)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				if _, err := s.Append(ctx, fmt.Sprintf("live-%d", w), domain.AnyVersion(), Event("E", i)); err != nil {
					t.Errorf("live append: %v", err)
					return
				}
			}
		})
	}
	got := collect(t, sub, 100+writers*each)
	wg.Wait()
	want := readAll(t, s, from)
	assertSameEvents(t, want, got)
	assertOrdered(t, append(history[:100:100], got...))

	// Nothing extra arrives; then it ends cleanly on cancel.
	mustAppend(t, s, "late", domain.AnyVersion(), Event("E", 0))
	late := collect(t, sub, 1)
	if late[0].Stream != "late" {
		t.Fatalf("after catching up got %s, want the late event", describe(late[0]))
	}
	cancel()
	waitEnd(t, sub, nil)
}

// waitEnd drains sub until its channel closes and checks Err.
func waitEnd(t *testing.T, sub *eventstore.Subscription, wantErr func(error) bool) {
	t.Helper()
	guard := time.After(timeout)
	for {
		select {
		case _, ok := <-sub.Events():
			if ok {
				continue
			}
			err := sub.Err()
			if wantErr == nil && err != nil {
				t.Fatalf("subscription ended with %v, want nil", err)
			}
			if wantErr != nil && !wantErr(err) {
				t.Fatalf("subscription ended with %v", err)
			}
			return
		case <-guard:
			t.Fatal("subscription did not end")
		}
	}
}

func testSubscribeFromEmpty(t *testing.T, s eventstore.Store) {
	ctx, cancel := context.WithCancel(testContext(t))
	defer cancel()
	sub := s.Subscribe(ctx, 0)
	for i := range 50 {
		mustAppend(t, s, "x", domain.ExactVersion(uint64(i)), Event("E", i))
	}
	got := collect(t, sub, 50)
	for i, e := range got {
		if e.Version != uint64(i+1) || e.Stream != "x" {
			t.Fatalf("event %d = %s", i, describe(e))
		}
	}
	assertOrdered(t, got)
}

func testSubscribeCancel(t *testing.T, s eventstore.Store) {
	mustAppend(t, s, "a", domain.AnyVersion(), Events("E", 3)...)
	ctx, cancel := context.WithCancel(testContext(t))
	sub := s.Subscribe(ctx, 0)
	collect(t, sub, 3)
	cancel() // while it waits for new events
	waitEnd(t, sub, nil)

	// Cancelled while the consumer is not reading: it still ends.
	ctx2, cancel2 := context.WithCancel(testContext(t))
	sub2 := s.Subscribe(ctx2, 0)
	cancel2()
	waitEnd(t, sub2, nil)
}

func testSubscribeEndsOnClose(t *testing.T, s eventstore.Store) {
	mustAppend(t, s, "a", domain.AnyVersion(), Event("E", 1))
	sub := s.Subscribe(testContext(t), 0)
	collect(t, sub, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	waitEnd(t, sub, func(err error) bool { return err != nil })
}

func testAppendAfterClose(t *testing.T, s eventstore.Store) {
	mustAppend(t, s, "a", domain.AnyVersion(), Event("E", 1))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ctx := testContext(t)
	if _, err := s.Append(ctx, "a", domain.AnyVersion(), Event("E", 2)); err == nil {
		t.Fatal("append on a closed store succeeded")
	}
	if _, err := s.ReadAll(ctx, 0, 10); err == nil {
		t.Fatal("ReadAll on a closed store succeeded")
	}
	if _, err := s.ReadStream(ctx, "a"); err == nil {
		t.Fatal("ReadStream on a closed store succeeded")
	}
}

func testCancelledContext(t *testing.T, s eventstore.Store) {
	ctx, cancel := context.WithCancel(testContext(t))
	cancel()
	if _, err := s.Append(ctx, "a", domain.AnyVersion(), Event("E", 1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("append with a cancelled context: %v, want context.Canceled", err)
	}
	if all := readAll(t, s, 0); len(all) != 0 {
		t.Fatalf("cancelled append wrote %d events", len(all))
	}
}

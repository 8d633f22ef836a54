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

func testReadAllPaging(t *testing.T, s eventstore.Store, f Features) {
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
	if f.DensePositions {
		// Only a dense store knows that last+1000 is past its end.
		if evs, err := s.ReadAll(ctx, last+1000, 10); err != nil || len(evs) != 0 {
			t.Fatalf("ReadAll past the end = %v, %v", evs, err)
		}
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

func testReadAfterWrite(t *testing.T, s eventstore.Store, f Features) {
	ctx := testContext(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			stream := fmt.Sprintf("raw-%d", w)
			var prev uint64 // this writer's previous position
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
				if f.DensePositions {
					page, err := s.ReadAll(ctx, res.Position-1, 1)
					if err != nil {
						errs <- err
						return
					}
					if len(page) != 1 || page[0].Position != res.Position || page[0].Stream != stream {
						errs <- fmt.Errorf("%s: after append %+v ReadAll returned %v", stream, res, page)
						return
					}
				}
				// Whatever the positions, the event is in the log after this
				// writer's previous one.
				page, err := s.ReadAll(ctx, prev, 1000)
				if err != nil {
					errs <- err
					return
				}
				if !containsAt(page, stream, res.Position) {
					errs <- fmt.Errorf("%s: after append %+v ReadAll(%d) does not hold it (%d events)", stream, res, prev, len(page))
					return
				}
				prev = res.Position
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

// containsAt reports whether evs holds an event of stream at position pos.
func containsAt(evs []domain.RecordedEvent, stream string, pos uint64) bool {
	for _, e := range evs {
		if e.Position == pos && e.Stream == stream {
			return true
		}
	}
	return false
}

// Package eventstoretest is the conformance suite for eventstore.Store
// adapters: Run checks the behaviour every adapter must have, RunRestart
// what survives closing and reopening a store.
//
// Positions must be strictly increasing; the suite does not require them to
// be dense (an adapter may leave gaps): unless Features.DensePositions says
// so, a position is only an ordered, opaque checkpoint that the suite gets
// from the store and hands back, never one it computes.
package eventstoretest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// timeout bounds every wait of the suite; nothing should come near it.
const timeout = 20 * time.Second

// Features says what differs between adapters, so that every check holds
// for each (Watermill's pubsub/tests style).
type Features struct {
	// DensePositions: positions are 1, 2, 3, … without gaps (the embedded
	// and the in-memory stores). When false the suite passes the store only
	// positions it returned (or 0), and checks order, not arithmetic.
	DensePositions bool
	// Restart, when set, is called by RunRestart between closing a store
	// and opening it again, for adapters over a server: it restarts the
	// server (keeping its data), so that what survives is checked across a
	// server restart too, not only a new client.
	Restart func(t *testing.T)
}

// Run runs the conformance suite. open must return a fresh, empty store
// for each call; the suite closes it (and open may register a cleanup that
// closes it again: Close must be idempotent).
func Run(t *testing.T, f Features, open func(t *testing.T) eventstore.Store) {
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
		{"ReadStreamFrom", testReadStreamFrom},
		{"ReadStreamFromAfterAppend", testReadStreamFromAfterAppend},
		{"ReadStreamFromClosedOrCancelled", testReadStreamFromClosedOrCancelled},
		{"ReadStreamBackward", testReadStreamBackward},
		{"ReadAllPaging", func(t *testing.T, s eventstore.Store) { testReadAllPaging(t, s, f) }},
		{"ReadAllJustBeforeAnEvent", testReadAllJustBefore},
		{"Head", testHead},
		{"ReadAfterWrite", func(t *testing.T, s eventstore.Store) { testReadAfterWrite(t, s, f) }},
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
func RunRestart(t *testing.T, f Features, open func(t *testing.T, dir string) eventstore.Store) {
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
		if f.Restart != nil {
			f.Restart(t)
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
		if f.Restart != nil {
			f.Restart(t)
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

package eventstoretest

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// testReadStreamFrom: ReadStreamFrom(after) is exactly the tail of
// ReadStream with Version > after, for every after, other streams'
// events interleaved.
func testReadStreamFrom(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	for i := range 12 {
		mustAppend(t, s, "contact-1", domain.AnyVersion(), Event("E", i))
		mustAppend(t, s, fmt.Sprintf("other-%d", i%3), domain.AnyVersion(), Event("O", i))
	}
	mustAppend(t, s, "contact-1", domain.ExactVersion(12), Events("F", 4)...)
	whole, err := s.ReadStream(ctx, "contact-1")
	if err != nil {
		t.Fatal(err)
	}
	if len(whole) != 16 {
		t.Fatalf("ReadStream returned %d events, want 16", len(whole))
	}
	for after := 0; after <= 18; after++ {
		got, err := s.ReadStreamFrom(ctx, "contact-1", uint64(after))
		if err != nil {
			t.Fatalf("ReadStreamFrom(%d): %v", after, err)
		}
		var want []domain.RecordedEvent
		if after < len(whole) {
			want = whole[after:]
		}
		assertSameEvents(t, want, got)
		if len(got) > 0 && got[0].Version != uint64(after+1) {
			t.Fatalf("ReadStreamFrom(%d) starts at version %d", after, got[0].Version)
		}
	}
	// A stream that does not exist: no events, no error.
	if got, err := s.ReadStreamFrom(ctx, "missing", 0); err != nil || len(got) != 0 {
		t.Fatalf("ReadStreamFrom(missing) = %d events, %v; want none, nil", len(got), err)
	}
	// What is read is a copy: changing it changes nothing stored.
	got, err := s.ReadStreamFrom(ctx, "contact-1", 15)
	if err != nil || len(got) != 1 {
		t.Fatalf("ReadStreamFrom(15) = %d events, %v", len(got), err)
	}
	if len(got[0].Data) > 0 {
		got[0].Data[0] ^= 0xff
	}
	again, err := s.ReadStreamFrom(ctx, "contact-1", 15)
	if err != nil {
		t.Fatal(err)
	}
	assertSameEvents(t, whole[15:], again)
}

// testReadStreamFromAfterAppend: an append is visible to ReadStreamFrom
// as soon as it returns, so a state folded up to a version and topped up
// from it sees every event.
func testReadStreamFromAfterAppend(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	var version uint64
	for i := range 20 {
		res := mustAppend(t, s, "c", domain.ExactVersion(version), Event("E", i))
		got, err := s.ReadStreamFrom(ctx, "c", version)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Version != res.Version || got[0].Position != res.Position {
			t.Fatalf("after append %+v, ReadStreamFrom(%d) = %v", res, version, got)
		}
		version = res.Version
	}
}

// testReadStreamFromClosedOrCancelled: a closed store and a cancelled
// context are errors, not empty answers.
func testReadStreamFromClosedOrCancelled(t *testing.T, s eventstore.Store) {
	mustAppend(t, s, "a", domain.AnyVersion(), Event("E", 1))
	ctx, cancel := context.WithCancel(testContext(t))
	cancel()
	if _, err := s.ReadStreamFrom(ctx, "a", 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadStreamFrom with a cancelled context: %v, want context.Canceled", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadStreamFrom(testContext(t), "a", 0); err == nil {
		t.Fatal("ReadStreamFrom on a closed store succeeded")
	}
}

// testReadAllJustBefore: ReadAll(p-1, n) starts with the event at p, gaps
// in the positions or not. It is how the pipeline (replay, lag) and
// migrate ask for the event at a position they know.
func testReadAllJustBefore(t *testing.T, s eventstore.Store) {
	ctx := testContext(t)
	var at []domain.AppendResult
	for i := range 4 {
		at = append(at, mustAppend(t, s, fmt.Sprintf("before-%d", i%2), domain.AnyVersion(), Event("E", i)))
	}
	for i, res := range at {
		recs, err := s.ReadAll(ctx, res.Position-1, 2)
		if err != nil {
			t.Fatalf("ReadAll(%d, 2): %v", res.Position-1, err)
		}
		want := min(2, len(at)-i)
		if len(recs) != want || recs[0].Position != res.Position {
			t.Fatalf("ReadAll(%d, 2) = %d events, first at %v; want %d from the event at %d", res.Position-1, len(recs), positions(recs), want, res.Position)
		}
		if want == 2 && recs[1].Position != at[i+1].Position {
			t.Fatalf("ReadAll(%d, 2) = %v, want %d then %d", res.Position-1, positions(recs), res.Position, at[i+1].Position)
		}
	}
}

func positions(evs []domain.RecordedEvent) []uint64 {
	out := make([]uint64, len(evs))
	for i, e := range evs {
		out[i] = e.Position
	}
	return out
}

package eventstoretest

import (
	"fmt"
	"slices"
	"testing"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// testReadStreamBackward: a store that is an eventstore.BackwardReader
// returns, for every before and limit, the newest limit events of
// ReadStream with Version < before, newest first, other streams' events
// interleaved; eventstore.ReadStreamBackward's fallback gives the same.
func testReadStreamBackward(t *testing.T, s eventstore.Store) {
	b, ok := s.(eventstore.BackwardReader)
	if !ok {
		t.Skip("the store reads no stream backwards (eventstore.ReadStreamBackward falls back to ReadStreamFrom)")
	}
	ctx := testContext(t)
	for i := range 10 {
		mustAppend(t, s, "contact-1", domain.AnyVersion(), Event("E", i))
		mustAppend(t, s, fmt.Sprintf("other-%d", i%3), domain.AnyVersion(), Event("O", i))
	}
	whole, err := s.ReadStream(ctx, "contact-1")
	if err != nil {
		t.Fatal(err)
	}
	for before := 0; before <= 12; before++ {
		for _, limit := range []int{1, 3, 10, 20} {
			end := len(whole)
			if before > 0 {
				end = min(before-1, len(whole))
			}
			want := slices.Clone(whole[max(end-limit, 0):end])
			slices.Reverse(want)
			got, err := b.ReadStreamBackward(ctx, "contact-1", uint64(before), limit)
			if err != nil {
				t.Fatalf("ReadStreamBackward(%d, %d): %v", before, limit, err)
			}
			assertSameEvents(t, want, got)
			fallback, err := eventstore.ReadStreamBackward(ctx, struct{ domain.EventStore }{s}, "contact-1", uint64(before), limit)
			if err != nil {
				t.Fatalf("fallback ReadStreamBackward(%d, %d): %v", before, limit, err)
			}
			if len(fallback) != len(want) {
				t.Fatalf("fallback ReadStreamBackward(%d, %d): %d events, want %d", before, limit, len(fallback), len(want))
			}
			assertSameEvents(t, want, fallback)
		}
	}
	if got, err := b.ReadStreamBackward(ctx, "missing", 0, 5); err != nil || len(got) != 0 {
		t.Fatalf("missing stream: %v, %v", got, err)
	}
	if _, err := b.ReadStreamBackward(ctx, "contact-1", 0, 0); err == nil {
		t.Fatal("limit 0 accepted")
	}
}

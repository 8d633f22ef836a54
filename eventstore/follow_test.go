package eventstore_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// fakeFeed is a Feed whose positions have gaps and whose reads return at
// most three events whatever the limit.
type fakeFeed struct {
	mu      sync.Mutex
	events  []domain.RecordedEvent
	changed chan struct{}
	fail    error
}

func newFakeFeed() *fakeFeed { return &fakeFeed{changed: make(chan struct{})} }

func (f *fakeFeed) add(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for range n {
		pos := uint64(2*len(f.events) + 2)
		f.events = append(f.events, domain.RecordedEvent{Position: pos, Stream: "s", Version: uint64(len(f.events) + 1), Type: "E"})
	}
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *fakeFeed) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return nil, f.fail
	}
	var out []domain.RecordedEvent
	for _, e := range f.events {
		if e.Position > after && len(out) < min(limit, 3) {
			out = append(out, e)
		}
	}
	return out, nil
}

func (f *fakeFeed) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changed
}

func TestFollowGapsAndShortReads(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	f := newFakeFeed()
	f.add(10)
	sub := eventstore.Follow(ctx, f, 6) // after the third event
	go func() {
		for range 20 {
			f.add(5)
		}
	}()
	want := uint64(8)
	for range 7 + 100 {
		select {
		case e, ok := <-sub.Events():
			if !ok {
				t.Fatalf("ended early: %v", sub.Err())
			}
			if e.Position != want {
				t.Fatalf("got position %d, want %d", e.Position, want)
			}
			want += 2
		case <-ctx.Done():
			t.Fatalf("timed out waiting for position %d", want)
		}
	}
	f.mu.Lock()
	f.fail = errors.New("boom")
	f.mu.Unlock()
	f.add(1)
	for range sub.Events() {
	}
	if err := sub.Err(); err == nil || !errors.Is(err, f.fail) {
		t.Fatalf("Err = %v, want the read error", err)
	}
}

package eventstoretest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

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

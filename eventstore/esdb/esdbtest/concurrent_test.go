package esdbtest_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

// Given concurrent writers at exact revisions, a catch-up subscriber and competing persistent
// consumers that sometimes nack, when everything is written, then the subscriber saw every
// event once in increasing positions, and the group delivered every event at least once and
// lost none.
func TestConcurrentWritersSubscribersAndConsumers(t *testing.T) {
	const writers, perWriter, consumers = 4, 25, 3
	const total = writers * perWriter
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	createAll(t, c, "work", func(s *esdb.PersistentSubscriptionSettings) { s.MaxRetryCount = 100 })
	sub, err := c.SubscribeToAll(ctxFor(t), esdb.SubscribeToAllOptions{From: esdb.Start{}, Filter: usersOnly})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()

	var mu sync.Mutex
	acked := map[uuid.UUID]int{}
	var wg sync.WaitGroup
	var subs []*esdb.PersistentSubscription
	for i := 0; i < consumers; i++ {
		subs = append(subs, connectAll(t, c, "work", 5))
	}
	var closeOnce sync.Once
	closeAll := func() { // ends every consumer's Recv once all is acked
		closeOnce.Do(func() {
			for _, s := range subs {
				_ = s.Close()
			}
		})
	}
	for _, ps := range subs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; n < 10*total; n++ {
				ev, ok := tryRecvPersistent(ps, waitFor)
				if !ok || ev.EventAppeared == nil {
					return
				}
				e := ev.EventAppeared.Event
				if n%5 == 4 && ev.EventAppeared.RetryCount == 0 {
					_ = ps.Nack("try again", esdb.NackActionRetry, e)
					continue
				}
				_ = ps.Ack(e)
				mu.Lock()
				acked[e.OriginalEvent().EventID]++
				done := len(acked) == total
				mu.Unlock()
				if done {
					closeAll()
					return
				}
			}
		}()
	}

	errs := make(chan error, writers)
	for w := 0; w < writers; w++ {
		go func() {
			stream := fmt.Sprintf("user-%d", w)
			var exp esdb.ExpectedRevision = esdb.NoStream{}
			for i := 0; i < perWriter; i++ {
				if _, err := c.AppendToStream(ctxFor(t), stream, esdb.AppendToStreamOptions{ExpectedRevision: exp}, event("W")); err != nil {
					errs <- fmt.Errorf("%s #%d: %w", stream, i, err)
					return
				}
				exp = esdb.Revision(uint64(i))
			}
			errs <- nil
		}()
	}
	for w := 0; w < writers; w++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}

	got := collect(t, sub, func(s *seen) bool { return len(s.events) == total })
	var prev uint64
	for _, e := range got.events {
		if p := e.Event.Position.Commit; p <= prev {
			t.Fatalf("subscription positions not increasing: %d after %d", p, prev)
		} else {
			prev = p
		}
	}

	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	select {
	case <-finished:
	case <-time.After(waitFor):
		t.Fatal("consumers did not finish")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(acked) != total {
		t.Fatalf("the group acked %d distinct events, want %d", len(acked), total)
	}
	if _, err := readStream(t, c, "$persistentsubscription-$all::work-parked", esdb.ReadStreamOptions{}, 10); errCode(err) != esdb.ErrorCodeResourceNotFound {
		t.Fatalf("something was parked: %v", err)
	}
}

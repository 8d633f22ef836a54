package esdb_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

// The work feed's tests run the real client against the stand-in, which
// plays EventStoreDB's persistent subscriptions (Pinned buckets, retries,
// a leaving consumer's items going to the others).

const workGroup = "usersync-work"

// webhookReceived is a work event for a contact stream.
func webhookReceived(n int) domain.NewEvent {
	return domain.NewEvent{Type: domain.TypeWebhookReceived, Data: fmt.Appendf(nil, `{"webhook_id":"wh-%d"}`, n)}
}

// workAt opens a feed on s, closed at cleanup.
func workAt(t *testing.T, s *esdb.Store, opts esdb.WorkOptions) *esdb.WorkFeed {
	t.Helper()
	f, err := s.Work(testContext(t), workGroup, opts)
	if err != nil {
		t.Fatalf("Work: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// waitUntil polls cond every few milliseconds until it holds or the
// deadline passes (then the test fails saying what).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// next takes the feed's next item within a deadline.
func next(t *testing.T, f *esdb.WorkFeed) esdb.WorkItem {
	t.Helper()
	select {
	case it, ok := <-f.Items():
		if !ok {
			t.Fatal("the work feed ended")
		}
		return it
	case <-time.After(15 * time.Second):
		t.Fatal("no work item within 15s")
	}
	return esdb.WorkItem{}
}

func mustAck(t *testing.T, it esdb.WorkItem) {
	t.Helper()
	if err := it.Ack(testContext(t)); err != nil {
		t.Fatalf("ack %s@%d: %v", it.Stream, it.Position, err)
	}
}

func TestWork_TwoFeedsShareTheWork_EachContactToOneFeed(t *testing.T) {
	t.Parallel()
	// Given two nodes (two store clients) in one work group over one server
	srv := esdbtest.New(t)
	nodes := []*esdb.Store{openStore(t, srv.ConnString(), esdb.Options{}), openStore(t, srv.ConnString(), esdb.Options{})}
	feeds := []*esdb.WorkFeed{workAt(t, nodes[0], esdb.WorkOptions{}), workAt(t, nodes[1], esdb.WorkOptions{})}
	waitUntil(t, "both feeds joined", func() bool { return srv.PersistentConsumers("$all", workGroup) == 2 })

	// When 20 contacts get 3 webhooks each, among events that are no work
	const contacts, each = 20, 3
	for c := 1; c <= contacts; c++ {
		stream := fmt.Sprintf("contact-%d", c)
		for i := range each {
			mustAppend(t, nodes[c%2], stream, domain.AnyVersion(), webhookReceived(c*10+i),
				domain.NewEvent{Type: domain.TypeWebhookProcessed, Data: []byte(`{}`)})
		}
	}
	mustAppend(t, nodes[0], "webhook-rejected", domain.NoStream(), webhookReceived(0))

	// Then every webhook is delivered once, each contact's to one feed,
	// and both feeds get some
	var mu sync.Mutex
	owner := map[string]int{}
	got := map[uint64]bool{}
	perFeed := [2]int{}
	var wg sync.WaitGroup
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for i, f := range feeds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case it := <-f.Items():
					mu.Lock()
					if o, ok := owner[it.Stream]; ok && o != i {
						t.Errorf("%s went to feed %d and feed %d", it.Stream, o, i)
					}
					owner[it.Stream] = i
					if got[it.Position] {
						t.Errorf("%s@%d delivered twice", it.Stream, it.Position)
					}
					got[it.Position] = true
					perFeed[i]++
					done := len(got) == contacts*each
					mu.Unlock()
					if it.Retry != 0 {
						t.Errorf("%s@%d: retry %d, want 0", it.Stream, it.Position, it.Retry)
					}
					if err := it.Ack(ctx); err != nil {
						t.Errorf("ack: %v", err)
					}
					if done {
						cancel()
					}
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	wg.Wait()
	if len(got) != contacts*each {
		t.Fatalf("%d webhooks delivered, want %d", len(got), contacts*each)
	}
	if _, ok := owner["webhook-rejected"]; ok {
		t.Fatal("a webhook-… stream was delivered as work")
	}
	if perFeed[0] == 0 || perFeed[1] == 0 {
		t.Fatalf("work per feed %v: one feed got nothing", perFeed)
	}
	waitUntil(t, "nothing outstanding", func() bool { return srv.PersistentOutstanding("$all", workGroup) == 0 })
}

func TestWork_FeedClosedWithUnackedItems_TheOtherGetsThem(t *testing.T) {
	t.Parallel()
	// Given a feed holding five items of one contact, unacked, and a
	// second feed in the group
	srv := esdbtest.New(t)
	a := openStore(t, srv.ConnString(), esdb.Options{})
	b := openStore(t, srv.ConnString(), esdb.Options{})
	fa := workAt(t, a, esdb.WorkOptions{})
	waitUntil(t, "feed A joined", func() bool { return srv.PersistentConsumers("$all", workGroup) == 1 })
	for i := range 5 {
		mustAppend(t, a, "contact-7", domain.AnyVersion(), webhookReceived(i))
	}
	held := map[uint64]bool{}
	for range 5 {
		held[next(t, fa).Position] = true
	}
	var redelivered atomic.Int32
	fb := workAt(t, b, esdb.WorkOptions{OnRedelivery: func(esdb.WorkItem) { redelivered.Add(1) }})
	waitUntil(t, "feed B joined", func() bool { return srv.PersistentConsumers("$all", workGroup) == 2 })

	// When feed A closes (a node leaving, or its connection lost)
	fa.Close()

	// Then feed B gets the five, as redeliveries
	for range 5 {
		it := next(t, fb)
		if !held[it.Position] || it.Stream != "contact-7" {
			t.Fatalf("feed B got %s@%d, not one A held", it.Stream, it.Position)
		}
		if it.Retry < 1 {
			t.Fatalf("%s@%d: retry %d, want at least 1", it.Stream, it.Position, it.Retry)
		}
		delete(held, it.Position)
		mustAck(t, it)
	}
	if redelivered.Load() != 5 {
		t.Fatalf("OnRedelivery called %d times, want 5", redelivered.Load())
	}
	waitUntil(t, "nothing outstanding", func() bool { return srv.PersistentOutstanding("$all", workGroup) == 0 })
}

func TestWork_DroppedSubscription_JoinsAgainAndLosesNothing(t *testing.T) {
	t.Parallel()
	// Given a feed that acked three items and holds two
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	var joins, drops atomic.Int32
	f := workAt(t, s, esdb.WorkOptions{
		OnSubscribed: func() { joins.Add(1) },
		OnDropped:    func(error) { drops.Add(1) },
	})
	waitUntil(t, "the feed joined", func() bool { return joins.Load() == 1 })
	for i := range 5 {
		mustAppend(t, s, fmt.Sprintf("contact-%d", i), domain.NoStream(), webhookReceived(i))
	}
	var held []esdb.WorkItem
	for i := range 5 {
		it := next(t, f)
		if i < 3 {
			mustAck(t, it)
		} else {
			held = append(held, it)
		}
	}
	waitUntil(t, "five in flight, then two", func() bool { return f.InFlight() == 2 })

	// When the server drops the subscription
	srv.DropSubscriptions()

	// Then the feed joins again, the two held items come again (their
	// old acks say they were lost), and new work flows
	waitUntil(t, "the feed joined again", func() bool { return joins.Load() >= 2 && drops.Load() >= 1 })
	for _, it := range held {
		if err := it.Ack(testContext(t)); !errors.Is(err, esdb.ErrWorkItemLost) {
			t.Fatalf("ack after the drop: %v, want ErrWorkItemLost", err)
		}
	}
	want := map[uint64]bool{held[0].Position: true, held[1].Position: true}
	mustAppend(t, s, "contact-9", domain.NoStream(), webhookReceived(9))
	newSeen := false
	for len(want) > 0 || !newSeen {
		it := next(t, f)
		switch {
		case it.Stream == "contact-9":
			newSeen = true
		case want[it.Position]:
			delete(want, it.Position)
			if it.Retry < 1 {
				t.Fatalf("%s@%d came again with retry %d, want at least 1", it.Stream, it.Position, it.Retry)
			}
		}
		// Anything else is an item acked just before the drop that the
		// server had not taken yet: at least once.
		mustAck(t, it)
	}
	waitUntil(t, "nothing outstanding", func() bool { return srv.PersistentOutstanding("$all", workGroup) == 0 })
}

func TestWork_Nack_RedeliveredWithRetryPlusOne(t *testing.T) {
	t.Parallel()
	// Given a feed with one item
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	var mu sync.Mutex
	var inFlight []int
	var redelivered atomic.Int32
	f := workAt(t, s, esdb.WorkOptions{
		OnInFlight:   func(n int) { mu.Lock(); inFlight = append(inFlight, n); mu.Unlock() },
		OnRedelivery: func(esdb.WorkItem) { redelivered.Add(1) },
	})
	mustAppend(t, s, "contact-3", domain.NoStream(), webhookReceived(3))
	it := next(t, f)
	if it.Stream != "contact-3" || it.Retry != 0 {
		t.Fatalf("first delivery %s retry %d, want contact-3 retry 0", it.Stream, it.Retry)
	}

	// When it is nacked twice, then acked
	for want := 1; want <= 2; want++ {
		if err := it.Nack(testContext(t), "not now"); err != nil {
			t.Fatalf("nack: %v", err)
		}
		if err := it.Ack(testContext(t)); err == nil {
			t.Fatal("an ack after the nack of the same delivery was accepted")
		}
		again := next(t, f)
		// Then each time it comes again with one more retry
		if again.Position != it.Position || again.Retry != want {
			t.Fatalf("after nack %d: %s@%d retry %d, want @%d retry %d", want, again.Stream, again.Position, again.Retry, it.Position, want)
		}
		it = again
	}
	mustAck(t, it)
	waitUntil(t, "nothing outstanding", func() bool { return srv.PersistentOutstanding("$all", workGroup) == 0 })
	if redelivered.Load() != 2 {
		t.Fatalf("OnRedelivery called %d times, want 2", redelivered.Load())
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []int{1, 0, 1, 0, 1, 0}; fmt.Sprint(inFlight) != fmt.Sprint(want) {
		t.Fatalf("in flight went %v, want %v", inFlight, want)
	}
}

func TestWork_BadOptions_RefusedSayingWhat(t *testing.T) {
	t.Parallel()
	srv := esdbtest.New(t)
	s := openStore(t, srv.ConnString(), esdb.Options{})
	tests := []struct {
		name  string
		group string
		opts  esdb.WorkOptions
		want  string
	}{
		{"no group", " ", esdb.WorkOptions{}, "no group name"},
		{"negative buffer", workGroup, esdb.WorkOptions{Buffer: -1}, "buffer -1"},
		{"negative timeout", workGroup, esdb.WorkOptions{MessageTimeout: -time.Second}, "message timeout"},
		{"negative retries", workGroup, esdb.WorkOptions{MaxRetryCount: -3}, "max retry count -3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := s.Work(testContext(t), tt.group, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Work = %v, want an error saying %q", err, tt.want)
			}
		})
	}
	if n := srv.PersistentConsumers("$all", workGroup); n != 0 {
		t.Fatalf("%d consumers joined with bad options", n)
	}
}

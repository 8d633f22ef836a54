package esdbtest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

// settings are the client's defaults with changes applied.
func settings(change func(*esdb.PersistentSubscriptionSettings)) *esdb.PersistentSubscriptionSettings {
	s := esdb.SubscriptionSettingsDefault()
	if change != nil {
		change(&s)
	}
	return &s
}

var usersOnly = &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: []string{"user-"}}

func createAll(t *testing.T, c *esdb.Client, group string, change func(*esdb.PersistentSubscriptionSettings)) {
	t.Helper()
	err := c.CreatePersistentSubscriptionToAll(ctxFor(t), group, esdb.PersistentAllSubscriptionOptions{
		StartFrom: esdb.Start{}, Filter: usersOnly, Settings: settings(change),
	})
	if err != nil {
		t.Fatalf("create group %s: %v", group, err)
	}
}

func connectAll(t *testing.T, c *esdb.Client, group string, buffer int) *esdb.PersistentSubscription {
	t.Helper()
	sub, err := c.SubscribeToPersistentSubscriptionToAll(context.Background(), group, esdb.SubscribeToPersistentSubscriptionOptions{BufferSize: uint32(buffer)})
	if err != nil {
		t.Fatalf("connect to group %s: %v", group, err)
	}
	t.Cleanup(func() { _ = sub.Close() })
	return sub
}

// next is the next event a persistent consumer gets (failing on a drop).
func next(t *testing.T, sub *esdb.PersistentSubscription) *esdb.EventAppeared {
	t.Helper()
	ev := recvPersistent(t, sub)
	if ev.SubscriptionDropped != nil {
		t.Fatalf("persistent subscription dropped: %v", ev.SubscriptionDropped.Error)
	}
	return ev.EventAppeared
}

func name(e *esdb.EventAppeared) string {
	return fmt.Sprintf("%s/%d#%d", e.Event.OriginalEvent().StreamID, e.Event.OriginalEvent().EventNumber, e.RetryCount)
}

func TestPersistent_CreateTwice_AlreadyExists_UnknownGroup_NotFound(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	createAll(t, c, "g", nil)
	err := c.CreatePersistentSubscriptionToAll(ctxFor(t), "g", esdb.PersistentAllSubscriptionOptions{StartFrom: esdb.Start{}})
	if errCode(err) != esdb.ErrorCodeResourceAlreadyExists {
		t.Fatalf("second create: %v (code %d), want resource already exists", err, errCode(err))
	}
	if err := c.CreatePersistentSubscription(ctxFor(t), "s", "g", esdb.PersistentStreamSubscriptionOptions{}); err != nil {
		t.Fatalf("same group name on a stream: %v", err)
	}
	_, err = c.SubscribeToPersistentSubscriptionToAll(ctxFor(t), "missing", esdb.SubscribeToPersistentSubscriptionOptions{})
	if errCode(err) != esdb.ErrorCodeResourceNotFound {
		t.Fatalf("connect to a missing group: %v (code %d), want resource not found", err, errCode(err))
	}
}

func TestPersistent_AllWithFilter_DeliversAckedCheckpoints(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "user-1", esdb.NoStream{}, events("A", 2)...)
	mustAppend(t, c, "other-1", esdb.NoStream{}, event("B"))
	createAll(t, c, "cp", func(s *esdb.PersistentSubscriptionSettings) {
		s.CheckpointLowerBound, s.CheckpointAfter = 1, 1
	})
	sub := connectAll(t, c, "cp", 10)
	lastPos := mustAppend(t, c, "user-2", esdb.NoStream{}, event("A")).CommitPosition
	var got []string
	for len(got) < 3 {
		e := next(t, sub)
		got = append(got, name(e))
		if err := sub.Ack(e.Event); err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(got) != "[user-1/0#0 user-1/1#0 user-2/0#0]" {
		t.Fatalf("delivered %v", got)
	}
	// the checkpoint stream ends at (or, past hidden system events, after) the last acked event
	var last string
	eventually(t, "checkpoint written", func() bool {
		evs, err := readStream(t, c, "$persistentsubscription-$all::cp-checkpoint", esdb.ReadStreamOptions{Direction: esdb.Backwards, From: esdb.End{}}, 1)
		if err != nil || len(evs) != 1 {
			last = fmt.Sprint(err)
			return false
		}
		last = evs[0].Event.EventType + " " + string(evs[0].Event.Data)
		var commit, prepare uint64
		if _, err := fmt.Sscanf(string(evs[0].Event.Data), `"C:%d/P:%d"`, &commit, &prepare); err != nil {
			return false
		}
		return evs[0].Event.EventType == "$SubscriptionCheckpoint" && commit == prepare && commit >= lastPos
	}, func() string { return fmt.Sprintf("%s, want at least %d", last, lastPos) })
}

func TestPersistent_NackActions(t *testing.T) {
	tests := []struct {
		name       string
		action     esdb.NackAction
		maxRetry   int32
		nacks      int // how many times the event is nacked before the test looks further
		wantAgain  []string
		wantParked bool
	}{
		{"retry redelivers with a retry count", esdb.NackActionRetry, 5, 2, []string{"user-a/0#0", "user-a/0#1", "user-a/0#2"}, false},
		{"unknown is a retry", esdb.NackActionUnknown, 5, 1, []string{"user-a/0#0", "user-a/0#1"}, false},
		{"retry past MaxRetryCount parks", esdb.NackActionRetry, 2, 3, []string{"user-a/0#0", "user-a/0#1", "user-a/0#2"}, true},
		{"park parks at once", esdb.NackActionPark, 5, 1, []string{"user-a/0#0"}, true},
		{"skip drops it", esdb.NackActionSkip, 5, 1, []string{"user-a/0#0"}, false},
		{"stop behaves as skip", esdb.NackActionStop, 5, 1, []string{"user-a/0#0"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := esdbtest.New(t)
			c := newClient(t, srv)
			createAll(t, c, "g", func(s *esdb.PersistentSubscriptionSettings) { s.MaxRetryCount = tt.maxRetry })
			sub := connectAll(t, c, "g", 10)
			mustAppend(t, c, "user-a", esdb.NoStream{}, event("A"))
			var got []string
			for i := 0; i < tt.nacks; i++ {
				e := next(t, sub)
				got = append(got, name(e))
				if err := sub.Nack("test", tt.action, e.Event); err != nil {
					t.Fatal(err)
				}
			}
			if extra := len(tt.wantAgain) - len(got); extra > 0 {
				for i := 0; i < extra; i++ {
					got = append(got, name(next(t, sub)))
				}
			}
			// a new event shows what comes next: a retry would come before it
			mustAppend(t, c, "user-b", esdb.NoStream{}, event("B"))
			after := name(next(t, sub))
			if fmt.Sprint(got) != fmt.Sprint(tt.wantAgain) || (after != "user-b/0#0" && !strings.HasPrefix(after, "user-a/0#")) {
				t.Fatalf("delivered %v then %s, want %v", got, after, tt.wantAgain)
			}
			if !tt.wantParked && tt.action != esdb.NackActionRetry && tt.action != esdb.NackActionUnknown && after != "user-b/0#0" {
				t.Fatalf("after %v came %s, want the new event (no redelivery)", got, after)
			}
			parked, err := readStream(t, c, "$persistentsubscription-$all::g-parked", esdb.ReadStreamOptions{ResolveLinkTos: true}, 10)
			if !tt.wantParked {
				if err == nil && len(parked) > 0 {
					t.Fatalf("parked %d events, want none", len(parked))
				}
				return
			}
			// the nack travels on the subscription's stream, the append on another call: wait
			eventually(t, "parked", func() bool {
				parked, err = readStream(t, c, "$persistentsubscription-$all::g-parked", esdb.ReadStreamOptions{ResolveLinkTos: true}, 10)
				return err == nil && len(parked) == 1
			}, func() string { return fmt.Sprintf("%v, %d events", err, len(parked)) })
			if p := parked[0]; p.Link == nil || p.Event.StreamID != "user-a" || p.Link.EventType != "$>" {
				t.Fatalf("parked %+v, want a link to user-a/0", p)
			}
			if after != "user-b/0#0" {
				t.Fatalf("after parking came %s, want the new event", after)
			}
		})
	}
}

func TestPersistent_MessageTimeout_Retries(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	createAll(t, c, "to", func(s *esdb.PersistentSubscriptionSettings) { s.MessageTimeout = 50 })
	sub := connectAll(t, c, "to", 10)
	mustAppend(t, c, "user-t", esdb.NoStream{}, event("T"))
	first := next(t, sub) // not acked
	again := next(t, sub)
	if name(first) != "user-t/0#0" || name(again) != "user-t/0#1" {
		t.Fatalf("delivered %s then %s, want the event again after its timeout with retry count 1", name(first), name(again))
	}
	if err := sub.Ack(again.Event); err != nil {
		t.Fatal(err)
	}
}

func TestPersistent_Strategies(t *testing.T) {
	tests := []struct {
		strategy esdb.ConsumerStrategy
		buffer   int
		check    func(t *testing.T, byConsumer [2][]string)
	}{
		{esdb.ConsumerStrategyRoundRobin, 10, func(t *testing.T, got [2][]string) {
			if len(got[0]) != 3 || len(got[1]) != 3 {
				t.Fatalf("round robin split %v, want 3 and 3", got)
			}
		}},
		{esdb.ConsumerStrategyDispatchToSingle, 4, func(t *testing.T, got [2][]string) {
			if len(got[0]) != 4 || len(got[1]) != 2 {
				t.Fatalf("dispatch to single split %v, want the first buffer (4) filled first", got)
			}
		}},
		{esdb.ConsumerStrategyPinned, 10, func(t *testing.T, got [2][]string) {
			owner := map[string]int{}
			for i, evs := range got {
				for _, e := range evs {
					stream := strings.Split(e, "/")[0]
					if o, ok := owner[stream]; ok && o != i {
						t.Fatalf("pinned: stream %s went to both consumers: %v", stream, got)
					}
					owner[stream] = i
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(string(tt.strategy), func(t *testing.T) {
			srv := esdbtest.New(t)
			c := newClient(t, srv)
			createAll(t, c, "s", func(s *esdb.PersistentSubscriptionSettings) { s.ConsumerStrategyName = tt.strategy })
			subs := [2]*esdb.PersistentSubscription{connectAll(t, c, "s", tt.buffer), connectAll(t, c, "s", tt.buffer)}
			for round := 0; round < 2; round++ {
				for _, s := range []string{"user-x", "user-y", "user-z"} {
					mustAppend(t, c, s, esdb.Any{}, event("E"))
				}
			}
			// nothing is acked: each consumer holds what it got; read until all 6 are out
			var got [2][]string
			total := 0
			results := make(chan struct {
				i int
				e *esdb.PersistentSubscriptionEvent
			}, 16)
			for i, sub := range subs {
				go func() {
					for k := 0; k < 6; k++ {
						ev, ok := tryRecvPersistent(sub, waitFor)
						if !ok || ev.EventAppeared == nil {
							return
						}
						results <- struct {
							i int
							e *esdb.PersistentSubscriptionEvent
						}{i, ev}
					}
				}()
			}
			deadline := time.After(waitFor)
			for total < 6 {
				select {
				case r := <-results:
					got[r.i] = append(got[r.i], name(r.e.EventAppeared))
					total++
				case <-deadline:
					t.Fatalf("only %d of 6 events delivered: %v", total, got)
				}
			}
			tt.check(t, got)
		})
	}
}

func TestPersistent_ConsumerLeaves_UnackedGoToAnother(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	createAll(t, c, "d", nil)
	first := connectAll(t, c, "d", 10)
	mustAppend(t, c, "user-d", esdb.NoStream{}, events("D", 2)...)
	a, b := next(t, first), next(t, first)
	if name(a) != "user-d/0#0" || name(b) != "user-d/1#0" {
		t.Fatalf("first consumer got %s %s", name(a), name(b))
	}
	second := connectAll(t, c, "d", 10)
	if srv.PersistentConsumers("$all", "d") != 2 || srv.PersistentOutstanding("$all", "d") != 2 {
		t.Fatalf("consumers %d, outstanding %d; want 2 and 2", srv.PersistentConsumers("$all", "d"), srv.PersistentOutstanding("$all", "d"))
	}
	_ = first.Close() // nothing acked
	got := []string{name(next(t, second)), name(next(t, second))}
	if fmt.Sprint(got) != "[user-d/0#1 user-d/1#1]" {
		t.Fatalf("second consumer got %v, want both events again, in order, with retry count 1", got)
	}
	if err := second.Ack(a.Event, b.Event); err != nil {
		t.Fatal(err)
	}
	eventually(t, "acks processed", func() bool { return srv.PersistentOutstanding("$all", "d") == 0 })
	if n := srv.PersistentConsumers("$all", "d"); n != 1 {
		t.Fatalf("%d consumers after one left, want 1", n)
	}
	if srv.PersistentConsumers("$all", "missing") != 0 || srv.PersistentOutstanding("$all", "missing") != 0 {
		t.Fatalf("a missing group reports consumers or outstanding events")
	}
}

func TestPersistent_Restart_ResumesFromCheckpoint_AtLeastOnce(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	// checkpoints only after 1000 events: the acks below are never checkpointed
	createAll(t, c, "r", func(s *esdb.PersistentSubscriptionSettings) { s.CheckpointLowerBound = 1000 })
	sub := connectAll(t, c, "r", 10)
	mustAppend(t, c, "user-r", esdb.NoStream{}, events("R", 2)...)
	for i := 0; i < 2; i++ {
		if err := sub.Ack(next(t, sub).Event); err != nil {
			t.Fatal(err)
		}
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	ev := recvPersistent(t, sub)
	if ev.SubscriptionDropped == nil {
		t.Fatalf("got %+v after a restart, want SubscriptionDropped", ev)
	}
	c2 := newClient(t, srv)
	again := connectAll(t, c2, "r", 10)
	if got := name(next(t, again)); got != "user-r/0#0" {
		t.Fatalf("after restart got %s, want user-r/0 again (acked but not checkpointed)", got)
	}
}

func TestPersistent_StreamGroup_FromStart(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "orders", esdb.NoStream{}, events("O", 2)...)
	if err := c.CreatePersistentSubscription(ctxFor(t), "orders", "billing", esdb.PersistentStreamSubscriptionOptions{StartFrom: esdb.Start{}}); err != nil {
		t.Fatal(err)
	}
	sub, err := c.SubscribeToPersistentSubscription(ctxFor(t), "orders", "billing", esdb.SubscribeToPersistentSubscriptionOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	mustAppend(t, c, "other", esdb.Any{}, event("X"))
	mustAppend(t, c, "orders", esdb.Revision(1), event("O"))
	var got []string
	for len(got) < 3 {
		e := next(t, sub)
		got = append(got, name(e))
		_ = sub.Ack(e.Event)
	}
	if fmt.Sprint(got) != "[orders/0#0 orders/1#0 orders/2#0]" {
		t.Fatalf("delivered %v", got)
	}
}

func TestPersistent_DropSubscriptions_ClientSeesDropped(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	createAll(t, c, "x", nil)
	sub := connectAll(t, c, "x", 10)
	srv.DropSubscriptions()
	if ev := recvPersistent(t, sub); ev.SubscriptionDropped == nil {
		t.Fatalf("got %+v, want SubscriptionDropped", ev)
	}
}

// The real server (PersistentSubscriptions.Read, then
// PersistentSubscription.RemoveClientByCorrelationId) retries every message
// it pushed to a member whose call ends, at once, each with its retry count
// one higher, and parks none of them there, even past MaxRetryCount: parking
// happens only on a Nack or a timeout.
func TestPersistent_MemberConnectionDies_ItsMessagesGoToTheOthersAtOnceNoneParked(t *testing.T) {
	// Given a member holding an event that has had MaxRetryCount retries,
	// a message timeout far longer than the test, and a second member.
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	createAll(t, c, "dies", func(s *esdb.PersistentSubscriptionSettings) {
		s.MaxRetryCount = 1
		s.MessageTimeout = 600_000
		s.ConsumerStrategyName = esdb.ConsumerStrategyPinned
	})
	dying := newClient(t, srv)
	first := connectAll(t, dying, "dies", 10)
	mustAppend(t, c, "user-x", esdb.NoStream{}, event("X"))
	e := next(t, first)
	if err := first.Nack("again", esdb.NackActionRetry, e.Event); err != nil {
		t.Fatal(err)
	}
	if got := name(next(t, first)); got != "user-x/0#1" {
		t.Fatalf("after a Nack the member got %s, want user-x/0#1", got)
	}
	second := connectAll(t, c, "dies", 10)
	eventually(t, "two members", func() bool { return srv.PersistentConsumers("$all", "dies") == 2 })

	// When the first member's connection goes away without an ack.
	if err := dying.Close(); err != nil {
		t.Fatal(err)
	}

	// Then the other member gets the event, retry count 2, long before
	// the timeout, and nothing is parked.
	if got := name(next(t, second)); got != "user-x/0#2" {
		t.Fatalf("the remaining member got %s, want user-x/0#2", got)
	}
	if parked, err := readStream(t, c, "$persistentsubscription-$all::dies-parked", esdb.ReadStreamOptions{}, 10); err == nil && len(parked) > 0 {
		t.Fatalf("parked %d events when a member went away, want none", len(parked))
	}
}

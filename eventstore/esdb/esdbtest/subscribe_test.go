package esdbtest_test

import (
	"fmt"
	"testing"

	"github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

// seen is what a subscription delivered, in order: "E:stream/rev", "C" (checkpoint), "U" (caught up).
type seen struct {
	items       []string
	events      []*esdb.ResolvedEvent
	checkpoints []esdb.Position
}

// collect reads from sub until stop says so (checked after each item).
func collect(t *testing.T, sub *esdb.Subscription, stop func(s *seen) bool) *seen {
	t.Helper()
	s := &seen{}
	for i := 0; i < 10_000 && !stop(s); i++ {
		ev := recv(t, sub)
		switch {
		case ev.EventAppeared != nil:
			e := ev.EventAppeared.Event
			s.items = append(s.items, fmt.Sprintf("E:%s/%d", e.StreamID, e.EventNumber))
			s.events = append(s.events, ev.EventAppeared)
		case ev.CheckPointReached != nil:
			s.items = append(s.items, "C")
			s.checkpoints = append(s.checkpoints, *ev.CheckPointReached)
		case ev.CaughtUp != nil:
			s.items = append(s.items, "U")
		case ev.SubscriptionDropped != nil:
			t.Fatalf("subscription dropped: %v (after %v)", ev.SubscriptionDropped.Error, s.items)
		}
	}
	return s
}

func caughtUp(s *seen) bool { return len(s.items) > 0 && s.items[len(s.items)-1] == "U" }

func TestSubscribeToAll_CatchUpThenLive(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "user-1", esdb.NoStream{}, events("Created", 3)...)
	first := readAll(t, c, esdb.ReadAllOptions{From: esdb.Start{}}, 100)

	tests := []struct {
		name      string
		from      esdb.AllPosition
		wantCatch func(all int) int // events before caught_up, of all in $all
	}{
		{"from start: every event, system ones too", esdb.Start{}, func(all int) int { return all }},
		{"from a position: strictly after it", first[1].Event.Position, func(all int) int { return all - 2 }},
		{"from end: nothing before going live", esdb.End{}, func(int) int { return 0 }},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wantCatch := tt.wantCatch(len(readAll(t, c, esdb.ReadAllOptions{From: esdb.Start{}}, 100)))
			sub, err := c.SubscribeToAll(ctxFor(t), esdb.SubscribeToAllOptions{From: tt.from})
			if err != nil {
				t.Fatalf("subscribe: %v", err)
			}
			defer sub.Close()
			got := collect(t, sub, caughtUp)
			if len(got.events) != wantCatch || len(got.checkpoints) != 0 {
				t.Fatalf("catch-up delivered %v, want %d events and no checkpoint (unfiltered)", got.items, wantCatch)
			}
			stream := fmt.Sprintf("live-%d", i)
			mustAppend(t, c, stream, esdb.NoStream{}, event("Live"))
			live := collect(t, sub, func(s *seen) bool { return len(s.events) == 1 })
			if live.items[0] != "E:"+stream+"/0" {
				t.Fatalf("live delivered %v, want %s/0", live.items, stream)
			}
		})
	}
}

func TestSubscribeToAll_FilterCheckpointsAndHiddenStreams(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	for i := 0; i < 5; i++ {
		mustAppend(t, c, fmt.Sprintf("user-%d", i), esdb.NoStream{}, event("UserCreated"))
		mustAppend(t, c, fmt.Sprintf("other-%d", i), esdb.NoStream{}, event("Other"))
	}
	mustAppend(t, c, "$persistentsubscription-x::g-parked", esdb.Any{}, event("UserCreated"))
	total := len(readAll(t, c, esdb.ReadAllOptions{From: esdb.Start{}}, 1000))

	tests := []struct {
		name   string
		filter *esdb.SubscriptionFilter
		want   int
	}{
		{"stream prefix", &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Prefixes: []string{"user-"}}, 5},
		{"stream regex", &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Regex: "^other-[0-2]$"}, 3},
		{"event type prefix", &esdb.SubscriptionFilter{Type: esdb.EventFilterType, Prefixes: []string{"User"}}, 5},
		{"exclude system events hides $epoch-information and parked streams", esdb.ExcludeSystemEventsFilter(), 10},
		{"match-everything regex still hides them", &esdb.SubscriptionFilter{Type: esdb.StreamFilterType, Regex: ".*"}, 10},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub, err := c.SubscribeToAll(ctxFor(t), esdb.SubscribeToAllOptions{
				From: esdb.Start{}, Filter: tt.filter, MaxSearchWindow: 2, CheckpointInterval: 2,
			})
			if err != nil {
				t.Fatalf("subscribe: %v", err)
			}
			defer sub.Close()
			got := collect(t, sub, caughtUp)
			if len(got.events) != tt.want {
				t.Fatalf("delivered %v, want %d events", got.items, tt.want)
			}
			// a checkpoint every 2 × 2 = 4 events considered, and one at the end of catch-up
			wantCheckpoints := total / 4
			if total%4 != 0 {
				wantCheckpoints++
			}
			if len(got.checkpoints) != wantCheckpoints {
				t.Fatalf("%d checkpoints over %d events considered (%v), want %d", len(got.checkpoints), total, got.items, wantCheckpoints)
			}
			if got.items[len(got.items)-2] != "C" || got.checkpoints[len(got.checkpoints)-1].Commit != srv.Head() {
				t.Fatalf("catch-up did not end with a checkpoint at the head: %v", got.items)
			}
		})
	}
}

func TestSubscribeToStream_FromRevisionThenLive(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	mustAppend(t, c, "s", esdb.NoStream{}, events("A", 3)...)
	tests := []struct {
		name string
		from esdb.StreamPosition
		want []string
	}{
		{"start", esdb.Start{}, []string{"E:s/0", "E:s/1", "E:s/2", "U"}},
		{"after revision 0", esdb.Revision(0), []string{"E:s/1", "E:s/2", "U"}},
		{"end", esdb.End{}, []string{"U"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sub, err := c.SubscribeToStream(ctxFor(t), "s", esdb.SubscribeToStreamOptions{From: tt.from})
			if err != nil {
				t.Fatalf("subscribe: %v", err)
			}
			defer sub.Close()
			got := collect(t, sub, caughtUp)
			if fmt.Sprint(got.items) != fmt.Sprint(tt.want) {
				t.Fatalf("delivered %v, want %v", got.items, tt.want)
			}
		})
	}
	sub, err := c.SubscribeToStream(ctxFor(t), "s", esdb.SubscribeToStreamOptions{From: esdb.End{}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	collect(t, sub, caughtUp)
	mustAppend(t, c, "elsewhere", esdb.Any{}, event("X"))
	mustAppend(t, c, "s", esdb.Revision(2), event("B"))
	live := collect(t, sub, func(s *seen) bool { return len(s.events) == 1 })
	if live.items[0] != "E:s/3" {
		t.Fatalf("live delivered %v, want s/3 only", live.items)
	}
}

func TestDropSubscriptions_ClientSeesSubscriptionDropped(t *testing.T) {
	srv := esdbtest.New(t)
	c := newClient(t, srv)
	sub, err := c.SubscribeToAll(ctxFor(t), esdb.SubscribeToAllOptions{From: esdb.Start{}})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	collect(t, sub, caughtUp)
	srv.DropSubscriptions()
	ev := recv(t, sub)
	if ev.SubscriptionDropped == nil {
		t.Fatalf("got %+v, want SubscriptionDropped", ev)
	}
	// the server still works: a new subscription starts
	again, err := c.SubscribeToAll(ctxFor(t), esdb.SubscribeToAllOptions{From: esdb.End{}})
	if err != nil {
		t.Fatalf("resubscribe: %v", err)
	}
	_ = again.Close()
}

package main

// An EventStoreDB leader change under load, on two usersync serve processes
// (the real binary) over one stand-in: the stand-in stops (every call and
// subscription dropped, as when the leader goes away), comes back with its
// persistent subscription groups resumed from their last checkpoints (what
// the new leader does: acked-but-not-checkpointed items come again), and
// answers the next calls "not leader" so that the clients move, as they do
// to a new leader. It delays the webhooks; it loses none.

import (
	"context"
	"fmt"
	nethttp "net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

func TestTwoNodes_LeaderChangeUnderLoad_DelaysLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binary twice")
	}
	if raceEnabled {
		t.Skip("two -race binaries and the stand-in are too slow for the 2-core machine; the feed's parts have their own -race tests")
	}
	const (
		nodes      = 2
		contacts   = 6
		firstID    = 301
		perContact = 12 // webhooks per contact: an add, then updates and update_tags
		changeAt   = 24 // acknowledged webhooks before the leader change
		maxSends   = 200
	)
	began := time.Now()
	bin := buildUsersync(t)
	standin := esdbtest.New(t)
	sim := newContactsSim(firstID, contacts, "l")
	c := startCluster(t, bin, standin, sim, nodes)

	client := &nethttp.Client{Timeout: 30 * time.Second}
	var (
		mu       sync.Mutex
		acked    = map[string]string{}
		refused  [nodes]int // 503 while the store was away: not acknowledged, sent again
		failed   [nodes]int // the transport failed: not acknowledged, sent again
		sends    atomic.Int64
		ackCount atomic.Int64
	)
	deadline := time.Now().Add(90 * time.Second)
	// deliver sends a webhook until a node acknowledges it (2xx), turning
	// between the nodes; a 503 (the store away) or a transport failure is
	// no acknowledgement, so it is sent again, bounded in count and time.
	deliver := func(k int, params map[string]string) error {
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for try := 0; ; try++ {
			if sends.Add(1) > maxSends*4 || time.Now().After(deadline) {
				return fmt.Errorf("not acknowledged after %d tries", try)
			}
			n := (k + try) % nodes
			code, a, err := sendHook(client, c.base(n), "form", params)
			switch {
			case err != nil:
				mu.Lock()
				failed[n]++
				mu.Unlock()
			case code == nethttp.StatusServiceUnavailable:
				mu.Lock()
				refused[n]++
				mu.Unlock()
			case code >= 200 && code <= 299 && a.WebhookID != "":
				mu.Lock()
				acked[a.WebhookID] = fmt.Sprintf("node %d, %s %s", n, params["wpf_action"], params["contact_id"])
				mu.Unlock()
				ackCount.Add(1)
				return nil
			default:
				var lines []string
				for _, l := range strings.Split(c.srvs[n].logs.String(), "\n") {
					if a.WebhookID != "" && strings.Contains(l, a.WebhookID) {
						lines = append(lines, l)
					}
				}
				return fmt.Errorf("node %d answered %d %+v; its log of the webhook:\n%s", n, code, a, strings.Join(lines, "\n"))
			}
			<-tick.C
		}
	}

	// Each contact's webhooks in order (an add, then updates and
	// update_tags, some async), the contacts at once.
	errs := make(chan error, contacts)
	var wg sync.WaitGroup
	for i := range contacts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := strconv.FormatUint(uint64(firstID+i), 10)
			for k := range perContact {
				action := []string{"add", "update", "update_tags"}[min(k, 1+k%2)]
				params := map[string]string{"wpf_action": action, "contact_id": id, "access_key": testKey}
				if k%3 == 2 {
					params["async"] = "1"
				}
				if err := deliver(i+k, params); err != nil {
					errs <- fmt.Errorf("contact %s, webhook %d: %w", id, k, err)
					return
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	// The leader change, once changeAt webhooks were acknowledged.
	tick := time.NewTicker(time.Millisecond)
	for ackCount.Load() < changeAt {
		select {
		case <-done:
			t.Fatalf("the load finished before the leader change (%d acknowledged)", ackCount.Load())
		case <-tick.C:
		}
		if time.Now().After(deadline) {
			t.Fatal("the load did not reach the leader change")
		}
	}
	tick.Stop()
	ackedBefore := ackCount.Load()
	changedAt := time.Now()
	if err := standin.Stop(); err != nil {
		t.Fatal(err)
	}
	// The leader is away until a node has refused a webhook with 503 (it
	// cannot record it, so it does not acknowledge it), bounded. Senders
	// whose sync webhooks were recorded before wait for their outcome.
	poll := time.NewTicker(2 * time.Millisecond)
	for {
		mu.Lock()
		some := refused[0]+refused[1] > 0
		mu.Unlock()
		if some {
			break
		}
		if time.Since(changedAt) > 20*time.Second {
			t.Fatalf("no node refused a webhook while the store was away (refused %v, failed %v)", refused, failed)
		}
		select {
		case <-done:
			t.Fatal("the load finished while the store was away")
		case <-poll.C:
		}
	}
	poll.Stop()
	away := time.Since(changedAt)
	if err := standin.Restart(); err != nil {
		t.Fatal(err)
	}
	standin.NotLeader(4)
	backAt := time.Now()
	// The first webhook acknowledged after the new leader is up.
	tick = time.NewTicker(time.Millisecond)
	for n := ackCount.Load(); ackCount.Load() == n; {
		if time.Since(backAt) > 30*time.Second {
			t.Fatal("no webhook acknowledged within 30 s of the new leader")
		}
		<-tick.C
	}
	tick.Stop()
	firstAfter := time.Since(backAt)

	select {
	case <-done:
	case <-time.After(time.Until(deadline)):
		t.Fatal("the senders did not finish")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		t.FailNow()
	}
	c.drain(t, time.Now().Add(30*time.Second))
	// The work feed took the change: each node subscribed again.
	for n := range nodes {
		fams, _ := scrape(t, strings.TrimPrefix(c.base(n), "http://"))
		if up := fams["usersync_work_subscription_up"].get(nil); up != 1 {
			t.Errorf("node %d: usersync_work_subscription_up %v after the leader change, want 1", n, up)
		}
	}
	drained := time.Since(backAt)
	c.stopAll(t)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	store, err := esdb.Open(ctx, standin.ConnString(), esdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	ids := contactIDs(firstID, contacts)
	log := checkOnceInOrder(ctx, t, store, acked, ids)
	if len(acked) != contacts*perContact {
		t.Errorf("%d webhooks acknowledged, want %d", len(acked), contacts*perContact)
	}
	t.Logf("%d nodes, %d webhooks acknowledged (%d sends; refused 503 while the store was away %v, transport failures %v), %d events; "+
		"leader change after %d acknowledged: store away %s, first webhook acknowledged %s after the new leader was up, all drained %s after it; total %s",
		nodes, len(acked), sends.Load(), refused, failed, log.events, ackedBefore, away.Round(time.Millisecond),
		firstAfter.Round(time.Millisecond), drained.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
}

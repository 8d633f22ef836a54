package main

// A node alive but stuck (SIGSTOP: its connections stay open, so the work
// feed's Pinned strategy keeps giving it its contacts' items, retries
// after the message timeout included): the other node takes those
// contacts up once their oldest open webhook has waited past
// --takeover-after (the stale sweep, cmd/usersync/workfeed.go), and the
// stuck node, once it goes on (SIGCONT), loses its races and finds
// nothing open. Two usersync serve processes (the real binary) on one
// stand-in.

import (
	"context"
	"fmt"
	nethttp "net/http"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

func TestTwoNodes_StuckNode_TheOtherTakesItsContactsUp(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binary twice")
	}
	if raceEnabled {
		t.Skip("two -race binaries and the stand-in are too slow for the 2-core machine; the sweep's decision has its own test")
	}
	const (
		nodes    = 2
		contacts = 8
		firstID  = 401
		stuck    = 1
		takeover = 2 * time.Second
	)
	began := time.Now()
	bin := buildUsersync(t)
	standin := esdbtest.New(t)
	sim := newContactsSim(firstID, contacts, "s")
	c := startCluster(t, bin, standin, sim, nodes, "--takeover-after", takeover.String())
	client := &nethttp.Client{Timeout: 30 * time.Second}
	acked := map[string]string{}
	send := func(n int, id domain.ContactID, action string, async bool) answer {
		t.Helper()
		params := map[string]string{"wpf_action": action, "contact_id": strconv.FormatUint(uint64(id), 10), "access_key": testKey}
		if async {
			params["async"] = "1"
		}
		code, a, err := sendHook(client, c.base(n), "form", params)
		if err != nil || code < 200 || code > 299 || a.WebhookID == "" {
			t.Fatalf("node %d, %s %d: %d %+v, err %v", n, action, id, code, a, err)
		}
		acked[a.WebhookID] = fmt.Sprintf("node %d, %s %d", n, action, id)
		return a
	}
	// The adds: each contact's items go to one node (Pinned), which reads it.
	for i := range contacts {
		send(i%nodes, domain.ContactID(firstID+i), "add", false)
	}
	c.drain(t, time.Now().Add(30*time.Second))
	var pinned []domain.ContactID // the contacts whose items the stuck node gets
	for i := range contacts {
		if id := domain.ContactID(firstID + i); c.reads[stuck].of(id) > 0 {
			pinned = append(pinned, id)
		}
	}
	if len(pinned) == 0 {
		t.Fatalf("node %d read no contact: nothing to hold when it is stuck (reads %v, %v)", stuck, c.reads[0].reads, c.reads[1].reads)
	}

	// The node is stuck; webhooks for every contact reach the other one.
	c.srvs[stuck].signal(syscall.SIGSTOP)
	stuckAt := time.Now()
	readsBefore := c.reads[0].of(pinned[0])
	for i := range contacts {
		send(0, domain.ContactID(firstID+i), []string{"update", "update_tags"}[i%2], true)
	}
	// Every webhook gets its outcome, those of the stuck node's contacts
	// from the other node once they have waited past --takeover-after.
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	store, err := esdb.Open(ctx, standin.ConnString(), esdb.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	tick := time.NewTicker(20 * time.Millisecond)
	var takenUp time.Duration
	for {
		log := scanLog(t, store)
		var left []string
		for id := range acked {
			if log.outcomes[id] == 0 {
				left = append(left, acked[id])
			}
		}
		if len(left) == 0 {
			takenUp = time.Since(stuckAt)
			break
		}
		if time.Since(stuckAt) > 30*time.Second {
			t.Fatalf("not done 30 s after node %d got stuck (--takeover-after %s): %s", stuck, takeover, strings.Join(left, ", "))
		}
		<-tick.C
	}
	tick.Stop()
	if takenUp < takeover {
		t.Errorf("the stuck node's contacts were done %s after it got stuck, before --takeover-after %s: the other node did not wait", takenUp, takeover)
	}
	if c.reads[0].of(pinned[0]) == readsBefore {
		t.Errorf("node 0 never read contact %d, the stuck node's: who processed it?", pinned[0])
	}
	fams, _ := scrape(t, strings.TrimPrefix(c.base(0), "http://"))
	taken := fams["usersync_work_stale_taken_total"].get(nil)
	if taken < float64(len(pinned)) {
		t.Errorf("usersync_work_stale_taken_total %v on node 0, want at least %d (the stuck node's contacts)", taken, len(pinned))
	}

	// The stuck node goes on: it finds its contacts done, and both drain.
	c.srvs[stuck].signal(syscall.SIGCONT)
	c.drain(t, time.Now().Add(30*time.Second))
	c.stopAll(t)
	ids := contactIDs(firstID, contacts)
	log := checkOnceInOrder(ctx, t, store, acked, ids)
	t.Logf("%d nodes, node %d stuck (SIGSTOP) holding %d of %d contacts; %d webhooks, %d events; all done %s after it got stuck (--takeover-after %s); contacts taken up by node 0: %v; total %s",
		nodes, stuck, len(pinned), contacts, len(acked), log.events, takenUp.Round(time.Millisecond), takeover, taken, time.Since(began).Round(time.Millisecond))
}

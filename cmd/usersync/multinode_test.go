package main

// Two usersync serve processes (the real binary) on one EventStoreDB
// stand-in: the work feed shares the webhooks out, each contact processed
// once and in order whichever node took its webhooks, and a synchronous
// answer waits on the answering node's own views.

import (
	"context"
	"fmt"
	"io"
	nethttp "net/http"
	"net/http/httptest"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
	"github.com/usersync/usersync/funnelkit/simulator"
)

// crmReads counts, per contact, the FunnelKit requests one node made; while
// holdWrites is set, that node's field writes (password returns) hang until
// it gives up on them (or released is closed), never reaching FunnelKit.
type crmReads struct {
	mu         sync.Mutex
	reads      map[domain.ContactID]int
	holdWrites atomic.Bool
	released   chan struct{}
}

var contactPath = regexp.MustCompile(`contacts/(\d+)`)

func (c *crmReads) wrap(h nethttp.Handler) nethttp.Handler {
	return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if c.holdWrites.Load() && r.Method == nethttp.MethodPost && strings.HasSuffix(r.URL.Path, "/fields") {
			// Read the body first: only then does the server notice a
			// client that goes away and cancel the request's context.
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-c.released:
			}
			nethttp.Error(w, "held by the test", nethttp.StatusServiceUnavailable)
			return
		}
		if m := contactPath.FindStringSubmatch(r.URL.Path); m != nil {
			id, _ := strconv.ParseUint(m[1], 10, 64)
			c.mu.Lock()
			c.reads[domain.ContactID(id)]++
			c.mu.Unlock()
		}
		h.ServeHTTP(w, r)
	})
}

func (c *crmReads) of(id domain.ContactID) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reads[id]
}

func TestTwoNodes_OneStandIn_EachContactOnceSyncAnswersFromEitherNode(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the real binary twice")
	}
	if raceEnabled {
		t.Skip("two -race binaries and the stand-in are too slow for the 2-core machine; the feed's parts have their own -race tests")
	}
	const (
		nodes    = 2
		contacts = 6
		firstID  = 201
		perPhase = 8 // webhooks per contact after its add
	)
	began := time.Now()
	bin := buildUsersync(t)
	standin := esdbtest.New(t)

	sim := newContactsSim(firstID, contacts, "m")
	c := startCluster(t, bin, standin, sim, nodes)
	reads, base := c.reads, c.base

	type sent struct {
		node    int
		contact domain.ContactID
		async   bool
		code    int
		a       answer
		err     error
	}
	client := &nethttp.Client{Timeout: 30 * time.Second}
	send := func(node int, contact domain.ContactID, action string, async bool) sent {
		params := map[string]string{"wpf_action": action, "contact_id": strconv.FormatUint(uint64(contact), 10), "access_key": testKey}
		if async {
			params["async"] = "1"
		}
		code, a, err := sendHook(client, base(node), "form", params)
		return sent{node: node, contact: contact, async: async, code: code, a: a, err: err}
	}
	var (
		mu      sync.Mutex
		answers []sent
		wg      sync.WaitGroup
	)
	// The adds, synchronous, alternating between the nodes; then for each
	// contact updates and update_tags to both nodes at once, sync and async.
	for i := range contacts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := domain.ContactID(firstID + i)
			s := send(i%nodes, id, "add", false)
			mu.Lock()
			answers = append(answers, s)
			mu.Unlock()
			var inner sync.WaitGroup
			for k := range perPhase {
				inner.Add(1)
				go func() {
					defer inner.Done()
					action := []string{"update", "update_tags"}[k%2]
					s := send((i+k)%nodes, id, action, k%3 == 2)
					mu.Lock()
					answers = append(answers, s)
					mu.Unlock()
				}()
			}
			inner.Wait()
		}()
	}
	wg.Wait()

	// Every answer 2xx; every sync one processed with its user.
	crossNode := 0
	acked := map[string]string{}
	for _, s := range answers {
		if s.err != nil || s.code < 200 || s.code > 299 {
			t.Fatalf("node %d, contact %d: answer %d %+v, err %v", s.node, s.contact, s.code, s.a, s.err)
		}
		acked[s.a.WebhookID] = fmt.Sprintf("node %d, contact %d", s.node, s.contact)
		if s.async {
			continue
		}
		if s.code != 200 || s.a.Status != "processed" || s.a.User == nil {
			t.Errorf("node %d, contact %d: sync answer %d %+v, want 200 processed with the user", s.node, s.contact, s.code, s.a)
			continue
		}
		if reads[s.node].of(s.contact) == 0 {
			crossNode++ // decided on the other node: this one never read the contact
		}
	}
	if crossNode == 0 {
		t.Errorf("no sync answer came from a node that did not process its webhook (reads per node: %v, %v)", reads[0].reads, reads[1].reads)
	}

	// Both nodes drain: nothing open, views at the head.
	c.drain(t, time.Now().Add(30*time.Second))
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
	processedBy := make([]int, nodes)
	for n := range nodes {
		processedBy[n] = len(reads[n].reads)
	}
	t.Logf("%d nodes, %d webhooks (%d contacts; contacts read per node %v), %d sync answers from the node that did not process them, %d events; %s",
		nodes, len(answers), contacts, processedBy, crossNode, log.events, time.Since(began).Round(time.Millisecond))
}

// cluster is usersync serve processes (the real binary) on one stand-in,
// each reaching the FunnelKit simulator through its own loopback server, so
// that reads[n] says which contacts node n read.
type cluster struct {
	srvs  []*crashServer
	reads []*crmReads
	dirs  []string
}

// startCluster starts nodes serve processes on standin, each with its own
// data directory and the flags extra after the shared ones.
func startCluster(t *testing.T, bin string, standin *esdbtest.Server, sim *simulator.Simulator, nodes int, extra ...string) *cluster {
	t.Helper()
	c := &cluster{}
	for range nodes {
		reads := &crmReads{reads: map[domain.ContactID]int{}, released: make(chan struct{})}
		fk := httptest.NewServer(reads.wrap(sim.Handler()))
		t.Cleanup(fk.Close)
		t.Cleanup(func() { close(reads.released) }) // before fk.Close
		dir := t.TempDir()
		srv := newCrashServer(t, bin, append([]string{"serve", "--addr", "127.0.0.1:0", "--data", dir,
			"--store", standin.ConnString(),
			"--funnelkit-url", fk.URL, "--funnelkit-user", "automation", "--funnelkit-password", testFKPass,
			"--funnelkit-timeout", "2s", "--access-key", testKey, "--admin-token", testToken,
			"--log-format", "json", "--log-level", "info", "--password-hash-cost", "4",
			"--wait", "20s", "--retry-initial", "5ms", "--retry-max", "50ms"}, extra...))
		srv.start()
		c.srvs, c.reads, c.dirs = append(c.srvs, srv), append(c.reads, reads), append(c.dirs, dir)
	}
	return c
}

// stopAll stops every node that is up with SIGTERM and fails the test if
// one does not exit cleanly.
func (c *cluster) stopAll(t *testing.T) {
	t.Helper()
	for n, srv := range c.srvs {
		if c.base(n) == "" {
			continue
		}
		if err := srv.stop(syscall.SIGTERM); err != nil {
			t.Fatalf("node %d exited with %v after SIGTERM:\n%s", n, err, srv.logs.String())
		}
	}
}

// contactIDs is first, first+1, …: n contacts.
func contactIDs(first domain.ContactID, n int) []domain.ContactID {
	ids := make([]domain.ContactID, n)
	for i := range ids {
		ids[i] = first + domain.ContactID(i)
	}
	return ids
}

// base is node n's URL, "" while it is down.
func (c *cluster) base(n int) string {
	b, _, _ := c.srvs[n].current()
	return b
}

// settled says whether a node's metrics show nothing open and every view
// and process manager at the head of the log, and what is left if not.
func settled(fams map[string]*familyValues) (bool, string) {
	positions := fams["usersync_projection_position"]
	if fams["usersync_webhooks_open"] == nil || fams["usersync_head_position"] == nil || positions == nil || len(positions.samples) == 0 {
		return false, "the metrics lack usersync_webhooks_open, usersync_head_position or usersync_projection_position"
	}
	open := fams["usersync_webhooks_open"].get(nil)
	head := fams["usersync_head_position"].get(nil)
	var behind []string
	for _, s := range positions.samples {
		if s.value < head {
			behind = append(behind, fmt.Sprintf("%s at %.0f", s.labels["projection"], s.value))
		}
	}
	return open == 0 && len(behind) == 0, fmt.Sprintf("open %v, head %.0f, behind %v", open, head, behind)
}

// waitFor polls every up node's metrics until ok holds on each, or fails
// the test at the deadline with what is left.
func (c *cluster) waitFor(t *testing.T, what string, deadline time.Time, ok func(map[string]*familyValues) (bool, string)) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for n := range c.srvs {
		b := c.base(n)
		if b == "" {
			continue
		}
		for {
			fams, _ := scrape(t, strings.TrimPrefix(b, "http://"))
			done, left := ok(fams)
			if done {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("node %d: not %s: %s\n%s", n, what, left, c.srvs[n].logs.String())
			}
			<-tick.C
		}
	}
}

// drain waits until every up node has nothing open and its views and
// process managers at the head.
func (c *cluster) drain(t *testing.T, deadline time.Time) {
	t.Helper()
	c.waitFor(t, "drained", deadline, settled)
}

// closing is a webhook's outcome in a contact stream: which webhook, and
// when the store recorded it.
type closing struct {
	webhook string
	at      time.Time
}

// streamOrder reads a contact stream: the webhooks in the order it
// received them, and their outcomes in the order they closed them.
func streamOrder(ctx context.Context, t *testing.T, store *esdb.Store, id domain.ContactID) (received []string, closed []closing) {
	t.Helper()
	recs, err := store.ReadStream(ctx, id.Stream())
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range recs {
		env, err := domain.Decode(rec)
		if err != nil {
			t.Fatal(err)
		}
		switch e := env.Event.(type) {
		case domain.WebhookReceived:
			received = append(received, e.WebhookID)
		case domain.WebhookProcessed:
			closed = append(closed, closing{e.WebhookID, rec.RecordedAt})
		case domain.WebhookIgnored:
			closed = append(closed, closing{e.WebhookID, rec.RecordedAt})
		case domain.WebhookFailed:
			closed = append(closed, closing{e.WebhookID, rec.RecordedAt})
		}
	}
	return received, closed
}

// checkOnceInOrder reads the log after a multi-node run and checks that
// every acknowledged webhook (id → what sent it) is in it, each recorded
// webhook has exactly one outcome and none failed, each contact has one
// user and each address one, and each contact's outcomes close its
// webhooks in the order its stream received them, whichever node decided
// each.
func checkOnceInOrder(ctx context.Context, t *testing.T, store *esdb.Store, acked map[string]string, contacts []domain.ContactID) crashLog {
	t.Helper()
	log := scanLog(t, store)
	for id, what := range acked {
		if _, ok := log.received[id]; !ok {
			t.Errorf("webhook %s (%s) was acknowledged and is not in the log", id, what)
		}
	}
	for id := range log.received {
		if n := log.outcomes[id]; n != 1 {
			t.Errorf("webhook %s has %d outcomes, want 1", id, n)
		}
	}
	for _, reason := range log.failed {
		t.Errorf("a webhook failed: %s", reason)
	}
	for email, n := range log.emails {
		if n != 1 {
			t.Errorf("%s: %d users, want 1", email, n)
		}
	}
	for _, id := range contacts {
		if log.created[id] != 1 {
			t.Errorf("contact %d: %d users created, want 1", id, log.created[id])
		}
		received, closed := streamOrder(ctx, t, store, id)
		order := make([]string, len(closed))
		for i, c := range closed {
			order[i] = c.webhook
		}
		if fmt.Sprint(order) != fmt.Sprint(received) {
			t.Errorf("contact %d: outcomes in the order %v, received %v", id, order, received)
		}
	}
	return log
}

// newContactsSim is the FunnelKit simulator with its sample data and n
// contacts first, first+1, …, each with its own address (prefix + id +
// "@example.com") and one of the tags 1–3.
func newContactsSim(first domain.ContactID, n int, prefix string) *simulator.Simulator {
	sim := simulator.New("automation", testFKPass)
	sim.SampleData()
	for i := range n {
		id := first + domain.ContactID(i)
		sim.PutContact(simulator.Contact{ID: id, Email: fmt.Sprintf("%s%d@example.com", prefix, id), FirstName: fmt.Sprintf("%s%d", strings.ToUpper(prefix), id),
			Fields: map[string]string{"7": "gold"}, TagIDs: []uint64{uint64(1 + i%3)}})
	}
	return sim
}

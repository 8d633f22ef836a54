package command

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

// Lost races between two nodes (races.go): two esdb.Store clients on one
// stand-in, each with its own use case, dispatcher and FunnelKit client
// (a countingCRM over one fakeCRM), so that the test knows which node read
// the contact, how often, and can hold a read while the other node wins.

// countingCRM counts one node's contact reads. Its answer is what the CRM
// held when the read began; onRead, if set, runs before it is returned
// (the read is in flight meanwhile).
type countingCRM struct {
	crm    *fakeCRM
	reads  atomic.Int32
	mu     sync.Mutex
	onRead func(n int)
}

func (c *countingCRM) Contact(ctx context.Context, id domain.ContactID) (domain.CRMContact, error) {
	n := int(c.reads.Add(1))
	got, err := c.crm.Contact(ctx, id)
	c.mu.Lock()
	hook := c.onRead
	c.mu.Unlock()
	if hook != nil {
		hook(n)
	}
	return got, err
}

func (c *countingCRM) Tags(ctx context.Context) ([]domain.Tag, error) { return c.crm.Tags(ctx) }

func (c *countingCRM) setOnRead(f func(n int)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onRead = f
}

// racer is one node with its hooks counted.
type racer struct {
	store    *esdb.Store
	crm      *countingCRM
	proc     *ProcessWebhook
	dispatch *Dispatcher
	mu       sync.Mutex
	lost     map[string]int
	wasted   map[string]int
	errs     []error
	// decided counts the appends that recorded an outcome: the decisions
	// that used a FunnelKit read (every webhook here needs one).
	decided atomic.Int32
}

// decisionCounter counts a node's appends that record an outcome.
type decisionCounter struct {
	domain.EventStore
	r *racer
}

func (c decisionCounter) Append(ctx context.Context, stream string, expected domain.ExpectedVersion, events ...domain.NewEvent) (domain.AppendResult, error) {
	res, err := c.EventStore.Append(ctx, stream, expected, events...)
	if err == nil {
		for _, e := range events {
			if e.Type == domain.TypeWebhookProcessed {
				c.r.decided.Add(1)
				break
			}
		}
	}
	return res, err
}

func (r *racer) counts() (lost, wasted map[string]int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	lost, wasted = map[string]int{}, map[string]int{}
	for k, v := range r.lost {
		lost[k] = v
	}
	for k, v := range r.wasted {
		wasted[k] = v
	}
	return lost, wasted
}

func (r *racer) gaveUp() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, err := range r.errs {
		if errors.Is(err, ErrRacesLost) {
			return true
		}
	}
	return false
}

func racingNodes(t *testing.T, shared *fakeCRM) []*racer {
	t.Helper()
	srv := esdbtest.New(t)
	var ids atomic.Int32
	var out []*racer
	for i := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		store, err := esdb.Open(ctx, srv.ConnString(), esdb.Options{})
		cancel()
		if err != nil {
			t.Fatalf("node %d: open the store: %v", i, err)
		}
		r := &racer{store: store, crm: &countingCRM{crm: shared}, lost: map[string]int{}, wasted: map[string]int{}}
		r.proc, err = NewProcessWebhook(ProcessWebhookConfig{
			Policy: testPolicy(), Store: decisionCounter{EventStore: store, r: r}, CRM: r.crm, Secrets: &fakeSecrets{keys: map[string]string{}},
			NewID: func() string { return "n" + strconv.Itoa(i) + "-" + strconv.Itoa(int(ids.Add(1))) },
			Retry: domain.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond},
			OnRaceLost: func(u string) {
				r.mu.Lock()
				r.lost[u]++
				r.mu.Unlock()
			},
			OnCRMReadWasted: func(reason string) {
				r.mu.Lock()
				r.wasted[reason]++
				r.mu.Unlock()
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		r.dispatch, err = NewDispatcher(r.proc, DispatcherConfig{Concurrency: 4, ErrorPause: 10 * time.Millisecond,
			OnError: func(_ domain.ContactID, err error) {
				r.mu.Lock()
				r.errs = append(r.errs, err)
				r.mu.Unlock()
			}})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = r.dispatch.Close(ctx)
			_ = store.Close()
		})
		out = append(out, r)
	}
	return out
}

// record appends a webhook to contact 7's stream.
func record(t *testing.T, s domain.EventStore, n int, action string) string {
	t.Helper()
	wh := "wh-" + strconv.Itoa(n)
	raw, err := domain.Encode(domain.Envelope{Event: domain.WebhookReceived{WebhookID: wh, Action: action, ContactID: "7", Params: map[string]string{}, Method: "POST", ReceivedAt: t0}, OccurredAt: t0, WebhookID: wh})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(context.Background(), domain.ContactID(7).Stream(), domain.AnyVersion(), raw); err != nil {
		t.Fatal(err)
	}
	return wh
}

// outcomes counts each webhook's outcome events in contact 7's stream.
func outcomes(t *testing.T, s domain.EventStore) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, env := range decoded(t, s, domain.ContactID(7).Stream()) {
		switch env.Event.(type) {
		case domain.WebhookProcessed, domain.WebhookIgnored, domain.WebhookFailed:
			out[env.WebhookID]++
		}
	}
	return out
}

// within waits for ch, failing the test after 20 s.
func within(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("no %s within 20s", what)
	}
}

func TestTwoNodes_LostRace_CRMReadsReusedBoundedAndCounted(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// webhooks recorded before node A starts (update_tags each)
		before int
		// whileAReads is what happens while node A's read is in flight:
		// node B (and the CRM) moves on.
		whileAReads func(t *testing.T, b *racer, crm *fakeCRM)
		// what node A must have done
		wantReadsA  int
		wantLost    map[string]int
		wantWasted  map[string]int
		wantTags    []domain.Tag
		wantOutcome map[string]int
	}{
		{
			// Given one open webhook, when node B decides it while node A
			// reads for it, then A's append loses, A finds nothing open
			// and moves on without reading FunnelKit again.
			name: "closed by the other node", before: 1,
			whileAReads: func(t *testing.T, b *racer, _ *fakeCRM) {
				if _, err := b.proc.NextBatch(context.Background(), 7, 0); err != nil {
					t.Error(err)
				}
			},
			wantReadsA: 1, wantLost: map[string]int{"webhook": 1}, wantWasted: map[string]int{"unused": 1},
			wantTags: []domain.Tag{vip}, wantOutcome: map[string]int{"wh-1": 1, "wh-2": 1},
		},
		{
			// Given two open webhooks, when node B decides only the first
			// while node A reads, then A decides the second on the read
			// it has (it covers it): one read, none wasted.
			name: "the next webhook reuses the read", before: 2,
			whileAReads: func(t *testing.T, b *racer, _ *fakeCRM) {
				if _, err := b.proc.NextBatch(context.Background(), 7, 1); err != nil {
					t.Error(err)
				}
			},
			wantReadsA: 1, wantLost: map[string]int{"webhook": 1}, wantWasted: map[string]int{},
			wantTags: []domain.Tag{vip}, wantOutcome: map[string]int{"wh-1": 1, "wh-2": 1, "wh-3": 1},
		},
		{
			// Given one open webhook, when the contact's tags change in
			// FunnelKit and a new webhook is recorded while node A reads,
			// and node B decides the first, then A reads again for the new
			// one (its first read is older) and the last state wins.
			name: "a webhook newer than the read is read for", before: 1,
			whileAReads: func(t *testing.T, b *racer, crm *fakeCRM) {
				crm.set(contact(7, "ada@example.com", trial))
				record(t, b.store, 3, domain.ActionUpdateTags)
				if _, err := b.proc.NextBatch(context.Background(), 7, 1); err != nil {
					t.Error(err)
				}
			},
			wantReadsA: 2, wantLost: map[string]int{"webhook": 1}, wantWasted: map[string]int{"read_again": 1},
			wantTags: []domain.Tag{trial}, wantOutcome: map[string]int{"wh-1": 1, "wh-2": 1, "wh-3": 1},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			crm := &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}, tags: []domain.Tag{vip, trial}}
			crm.set(contact(7, "ada@example.com", vip))
			nodes := racingNodes(t, crm)
			a, b := nodes[0], nodes[1]
			// The contact has a user (node B made it).
			record(t, b.store, 1, domain.ActionAdd)
			if outs, err := b.proc.NextBatch(context.Background(), 7, 0); err != nil || len(outs) != 1 || outs[0].Status != StatusProcessed {
				t.Fatalf("add: %+v %v", outs, err)
			}
			for i := range tc.before {
				record(t, b.store, 2+i, domain.ActionUpdateTags)
			}
			readsB := b.crm.reads.Load()
			reading, release := make(chan struct{}), make(chan struct{})
			a.crm.setOnRead(func(n int) {
				if n == 1 {
					close(reading)
					<-release
				}
			})

			// When node A's dispatcher takes the contact, and node B moves
			// on while A's read is in flight
			done := make(chan struct{})
			if err := a.dispatch.SubmitDone(7, func() { close(done) }); err != nil {
				t.Fatal(err)
			}
			within(t, reading, "read by node A")
			tc.whileAReads(t, b, crm)
			close(release)
			within(t, done, "end of node A's run")

			// Then
			if got := int(a.crm.reads.Load()); got != tc.wantReadsA {
				t.Errorf("node A read the contact %d times, want %d", got, tc.wantReadsA)
			}
			lost, wasted := a.counts()
			if !equalCounts(lost, tc.wantLost) || !equalCounts(wasted, tc.wantWasted) {
				t.Errorf("node A: races lost %v, CRM reads wasted %v; want %v, %v", lost, wasted, tc.wantLost, tc.wantWasted)
			}
			if got := outcomes(t, a.store); !equalCounts(got, tc.wantOutcome) {
				t.Errorf("outcomes %v, want %v", got, tc.wantOutcome)
			}
			s, err := a.proc.contacts.Load(context.Background(), 7)
			if err != nil {
				t.Fatal(err)
			}
			if s.User == nil || len(s.User.Tags) != len(tc.wantTags) || s.User.Tags[0] != tc.wantTags[0] {
				t.Errorf("user %+v, want tags %v", s.User, tc.wantTags)
			}
			t.Logf("reads: node A %d, node B %d", a.crm.reads.Load(), b.crm.reads.Load()-readsB)
		})
	}
}

// TestTwoNodes_AlwaysLosing_GivesUpAfterMaxRedecisions: given a contact
// whose every read by node A is overtaken (node B closes what is open and
// a newer webhook arrives), node A decides 1 + MaxRedecisions times, reads
// FunnelKit that often and no more, gives up with ErrRacesLost leaving its
// item unacked (done not called), every read counted as wasted; once the
// other writers stop, A's next run finishes the contact.
func TestTwoNodes_AlwaysLosing_GivesUpAfterMaxRedecisions(t *testing.T) {
	t.Parallel()
	crm := &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}, tags: []domain.Tag{vip, trial}}
	crm.set(contact(7, "ada@example.com", vip))
	nodes := racingNodes(t, crm)
	a, b := nodes[0], nodes[1]
	record(t, b.store, 1, domain.ActionAdd)
	if _, err := b.proc.NextBatch(context.Background(), 7, 0); err != nil {
		t.Fatal(err)
	}
	record(t, b.store, 2, domain.ActionUpdateTags)
	var next atomic.Int32
	next.Store(3)
	a.crm.setOnRead(func(n int) {
		if n > 1+MaxRedecisions {
			return // the others have stopped
		}
		if _, err := b.proc.NextBatch(context.Background(), 7, 0); err != nil {
			t.Error(err)
		}
		record(t, b.store, int(next.Add(1)-1), domain.ActionUpdateTags)
	})

	done := make(chan struct{})
	if err := a.dispatch.SubmitDone(7, func() { close(done) }); err != nil {
		t.Fatal(err)
	}
	within(t, done, "end of node A's work on the contact")

	if !a.gaveUp() {
		t.Fatal("node A never gave up with ErrRacesLost")
	}
	// 1 + MaxRedecisions reads in the run that gave up, then one in the
	// run after it that found the last webhook open and decided it.
	if got, want := int(a.crm.reads.Load()), 1+MaxRedecisions+1; got != want {
		t.Errorf("node A read the contact %d times, want %d", got, want)
	}
	lost, wasted := a.counts()
	if want := map[string]int{"webhook": 1 + MaxRedecisions}; !equalCounts(lost, want) {
		t.Errorf("races lost %v, want %v", lost, want)
	}
	if want := map[string]int{"read_again": MaxRedecisions, "gave_up": 1}; !equalCounts(wasted, want) {
		t.Errorf("CRM reads wasted %v, want %v", wasted, want)
	}
	for wh, n := range outcomes(t, a.store) {
		if n != 1 {
			t.Errorf("%s has %d outcomes", wh, n)
		}
	}
	if got, want := len(outcomes(t, a.store)), int(next.Load())-1; got != want {
		t.Errorf("%d webhooks closed, want all %d", got, want)
	}
}

func equalCounts(a, b map[string]int) bool {
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	for k, v := range b {
		if a[k] != v {
			return false
		}
	}
	return true
}

// TestTwoNodes_BothDispatchersOnOneContact_EveryReadUsedOrCounted: given
// two nodes whose dispatchers are both told of every webhook of one
// contact (as a work item delivered to both would), while the contact's
// tags change in FunnelKit before each webhook, then every webhook has one
// outcome, the contact ends with FunnelKit's last tags, and every FunnelKit
// read of either node either informed a recorded decision or was counted
// as wasted (reads = decisions recorded + wasted).
func TestTwoNodes_BothDispatchersOnOneContact_EveryReadUsedOrCounted(t *testing.T) {
	t.Parallel()
	const webhooks = 40
	crm := &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}, tags: []domain.Tag{vip, trial}}
	crm.set(contact(7, "ada@example.com", vip))
	nodes := racingNodes(t, crm)
	recorder := nodes[0].store
	record(t, recorder, 1, domain.ActionAdd)
	for _, n := range nodes {
		if err := n.dispatch.Submit(7); err != nil {
			t.Fatal(err)
		}
	}
	last := vip
	for i := 2; i <= webhooks; i++ {
		last = []domain.Tag{vip, trial}[i%2]
		crm.set(contact(7, "ada@example.com", last))
		record(t, recorder, i, domain.ActionUpdateTags)
		for _, n := range nodes {
			if err := n.dispatch.Submit(7); err != nil {
				t.Fatal(err)
			}
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := nodes[0].proc.contacts.Load(context.Background(), 7)
		if err != nil {
			t.Fatal(err)
		}
		if len(s.Pending) == 0 {
			if len(s.User.Tags) != 1 || s.User.Tags[0] != last {
				t.Errorf("tags %v, want FunnelKit's last %v", s.User.Tags, last)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d webhooks still open after 30s", len(s.Pending))
		}
		// (A node that gave up tries again after its error pause.)
		time.Sleep(2 * time.Millisecond) // poll the condition, bounded by the deadline
	}
	got := outcomes(t, recorder)
	if len(got) != webhooks {
		t.Errorf("%d webhooks have an outcome, want %d", len(got), webhooks)
	}
	for wh, n := range got {
		if n != 1 {
			t.Errorf("%s has %d outcomes", wh, n)
		}
	}
	// Every run has ended once nothing is open and no run is under way:
	// wait for the counts to add up, or fail with them.
	check := func() (string, bool) {
		var reads, used, wasted int
		var story []string
		for i, n := range nodes {
			lost, w := n.counts()
			nw := 0
			for _, v := range w {
				nw += v
			}
			r, d := int(n.crm.reads.Load()), int(n.decided.Load())
			reads, used, wasted = reads+r, used+d, wasted+nw
			story = append(story, fmt.Sprintf("node %d: %d reads, %d decisions recorded, wasted %v, races lost %v, gave up %v", i, r, d, w, lost, n.gaveUp()))
		}
		return strings.Join(story, "; "), reads == used+wasted
	}
	for end := time.Now().Add(10 * time.Second); ; {
		story, ok := check()
		if ok {
			t.Log(story)
			break
		}
		if time.Now().After(end) {
			t.Fatalf("reads are not decisions + wasted: %s", story)
		}
		time.Sleep(2 * time.Millisecond) // poll, bounded by end
	}
}

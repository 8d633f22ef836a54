package command

import (
	"context"
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

// Claims across nodes (issue 12): one user per email and per login must
// hold when several usersync processes share one EventStoreDB, each with
// its own dispatcher, contact cache and claim locks. The guarantee is the
// expected versions of the email-… and login-… reservation streams; the
// per-process claim locks (claims.go) only spare a process its own lost
// races. Here the esdbtest stand-in plays EventStoreDB, spoken to through
// the real client by two esdb.Store clients: two nodes.

// node is one usersync process's processing stack: its own store client,
// use case (cache, claim locks) and dispatcher.
type node struct {
	store    *esdb.Store
	proc     *ProcessWebhook
	dispatch *Dispatcher
	errors   atomic.Int32
}

// twoNodes starts two nodes on one stand-in, sharing the CRM, with ids
// unique across them. Each node seals with its own key store.
func twoNodes(t *testing.T, crm *fakeCRM, policy domain.Policy) (*esdbtest.Server, []*node) {
	t.Helper()
	srv := esdbtest.New(t)
	var mu sync.Mutex
	ids := 0
	var nodes []*node
	for i := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		store, err := esdb.Open(ctx, srv.ConnString(), esdb.Options{})
		cancel()
		if err != nil {
			t.Fatalf("node %d: open the store: %v", i, err)
		}
		n := &node{store: store}
		n.proc, err = NewProcessWebhook(ProcessWebhookConfig{
			Policy: policy, Store: store, CRM: crm, Secrets: &fakeSecrets{keys: map[string]string{}},
			NewID: func() string {
				mu.Lock()
				defer mu.Unlock()
				ids++
				return "n" + strconv.Itoa(i) + "-" + strconv.Itoa(ids)
			},
			Retry: domain.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond},
		})
		if err != nil {
			t.Fatal(err)
		}
		n.dispatch, err = NewDispatcher(n.proc, DispatcherConfig{
			Concurrency: 8, ErrorPause: 10 * time.Millisecond,
			OnError: func(domain.ContactID, error) { n.errors.Add(1) },
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = n.dispatch.Close(ctx)
			_ = store.Close()
		})
		nodes = append(nodes, n)
	}
	return srv, nodes
}

// decoded is a stream's events.
func decoded(t *testing.T, s domain.EventStore, stream string) []domain.Envelope {
	t.Helper()
	recs, err := s.ReadStream(context.Background(), stream)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]domain.Envelope, 0, len(recs))
	for _, r := range recs {
		env, err := domain.Decode(r)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, env)
	}
	return out
}

func TestTwoNodes_ConcurrentAddsOfOneEmail_OneUserTheOthersLinked(t *testing.T) {
	t.Parallel()
	// Given two nodes on one EventStoreDB, and contacts that share an
	// address (written in different cases) or a login, each with one add
	const (
		sameEmail = 8  // contacts 1…8: ada…@example.com
		sameLogin = 3  // contacts 51…53: their own addresses, login "bob"
		rounds    = 4  // the whole scenario again, other addresses
		loginBase = 50 // first login-clash contact is loginBase+1
	)
	policy := testPolicy()
	policy.FieldMap = map[string]string{domain.MetaLogin: "login_field"}
	for k, v := range domain.DefaultFieldMap() {
		if _, ok := policy.FieldMap[k]; !ok {
			policy.FieldMap[k] = v
		}
	}
	crm := &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}}
	_, nodes := twoNodes(t, crm, policy)
	recorder := nodes[0].store

	for round := range rounds {
		base := domain.ContactID(100 * (round + 1))
		email := fmt.Sprintf("ada%d@example.com", round)
		login := fmt.Sprintf("bob%d", round)
		var ids []domain.ContactID
		webhooks := map[domain.ContactID]string{}
		record := func(id domain.ContactID, c domain.CRMContact) {
			crm.set(c)
			wh := fmt.Sprintf("wh-%d", id)
			raw, err := domain.Encode(domain.Envelope{Event: domain.WebhookReceived{WebhookID: wh, Action: domain.ActionAdd, ContactID: id.String(), Params: map[string]string{}, Method: "POST", ReceivedAt: t0}, OccurredAt: t0, WebhookID: wh})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := recorder.Append(context.Background(), id.Stream(), domain.NoStream(), raw); err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
			webhooks[id] = wh
		}
		for i := 1; i <= sameEmail; i++ {
			addr := email
			if i%2 == 0 {
				addr = strings.ToUpper(email[:1]) + email[1:]
			}
			record(base+domain.ContactID(i), contact(base+domain.ContactID(i), addr))
		}
		for i := 1; i <= sameLogin; i++ {
			id := base + loginBase + domain.ContactID(i)
			c := contact(id, fmt.Sprintf("other%d-%d@example.com", round, i))
			c.Fields["login_field"] = login
			record(id, c)
		}

		// When both nodes process every contact at once (as a redelivered
		// work item can make them do)
		for _, id := range ids {
			for _, n := range nodes {
				if err := n.dispatch.Submit(id); err != nil {
					t.Fatal(err)
				}
			}
		}
		deadline := time.Now().Add(30 * time.Second)
		for _, id := range ids {
			for {
				s, err := nodes[1].proc.contacts.Load(context.Background(), id)
				if err != nil {
					t.Fatal(err)
				}
				if len(s.Pending) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("round %d: contact %d still has open webhooks after 30s", round, id)
				}
				// A contact whose processing gave up after many lost races
				// is tried again after its error pause; nudge both nodes.
				for _, n := range nodes {
					n.dispatch.Notify(id)
				}
				time.Sleep(5 * time.Millisecond)
			}
		}

		// Then one user holds the address, created once, and every other
		// contact's add linked it (the user moves to the contact that
		// linked it last); every webhook has exactly one outcome
		created := map[string]domain.ContactID{}
		var holders []domain.ContactID
		for _, id := range ids {
			outcomes := 0
			for _, env := range decoded(t, recorder, id.Stream()) {
				switch e := env.Event.(type) {
				case domain.UserCreated:
					if prev, ok := created[e.UserID]; ok {
						t.Errorf("round %d: user %s created twice (contacts %d and %d)", round, e.UserID, prev, id)
					}
					created[e.UserID] = id
				case domain.WebhookProcessed:
					outcomes++
					if e.WebhookID != webhooks[id] {
						t.Errorf("round %d: contact %d: outcome of %s", round, id, e.WebhookID)
					}
				case domain.WebhookIgnored, domain.WebhookFailed:
					outcomes++
					t.Errorf("round %d: contact %d: outcome %s %+v, want processed", round, id, e.EventType(), e)
				}
			}
			if outcomes != 1 {
				t.Errorf("round %d: contact %d has %d outcomes, want 1", round, id, outcomes)
			}
			s, err := nodes[0].proc.contacts.Load(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if id-base <= sameEmail && s.User != nil {
				holders = append(holders, id)
			}
		}
		emailUsers := 0
		for _, c := range created {
			if c-base <= sameEmail {
				emailUsers++
			}
		}
		if emailUsers != 1 {
			t.Errorf("round %d: %d users created for %s, want 1 (%v)", round, emailUsers, email, created)
		}
		if len(holders) != 1 || emailUsers != 1 {
			streams := []string{domain.EmailStream(email)}
			for _, id := range ids[:sameEmail] {
				streams = append(streams, id.Stream())
			}
			dump(t, recorder, streams...)
		}
		if len(holders) != 1 {
			t.Fatalf("round %d: contacts %v hold a user with %s, want exactly one", round, holders, email)
		}
		holder := holders[0]
		for _, stream := range []string{domain.EmailStream(email)} {
			r, err := nodes[0].proc.readReservation(context.Background(), stream)
			if err != nil {
				t.Fatal(err)
			}
			if r.contact != holder {
				t.Errorf("round %d: %s reserved for contact %d, the user is on contact %d", round, stream, r.contact, holder)
			}
		}
		hs, err := nodes[0].proc.contacts.Load(context.Background(), holder)
		if err != nil {
			t.Fatal(err)
		}
		if r, err := nodes[0].proc.readReservation(context.Background(), domain.LoginStream(hs.User.Login)); err != nil || r.contact != holder || r.userID != hs.User.UserID {
			t.Errorf("round %d: login %s reserved for contact %d (%v), the user is on contact %d", round, hs.User.Login, r.contact, err, holder)
		}

		// and the contacts that share a login have one each, numbered (a
		// number claimed by a lost race may be skipped)
		logins := map[string]domain.ContactID{}
		for i := 1; i <= sameLogin; i++ {
			id := base + loginBase + domain.ContactID(i)
			s, err := nodes[0].proc.contacts.Load(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if s.User == nil {
				t.Fatalf("round %d: contact %d has no user", round, id)
			}
			if prev, ok := logins[s.User.Login]; ok {
				t.Errorf("round %d: login %s given to contacts %d and %d", round, s.User.Login, prev, id)
			}
			logins[s.User.Login] = id
			r, err := nodes[0].proc.readReservation(context.Background(), domain.LoginStream(s.User.Login))
			if err != nil || r.contact != id {
				t.Errorf("round %d: login %s reserved for contact %d (%v), given to %d", round, s.User.Login, r.contact, err, id)
			}
		}
		for l, id := range logins {
			if !strings.HasPrefix(l, login) {
				t.Errorf("round %d: contact %d has login %s, want %s or %s numbered", round, id, l, login, login)
			}
		}
	}
	t.Logf("store errors (lost races given up, retried): node 0 %d, node 1 %d", nodes[0].errors.Load(), nodes[1].errors.Load())
}

// dump logs streams' events, for a failure's story.
func dump(t *testing.T, s domain.EventStore, streams ...string) {
	t.Helper()
	for _, stream := range streams {
		for _, env := range decoded(t, s, stream) {
			t.Logf("%s [%s] %s %+v", stream, env.WebhookID, env.Event.EventType(), env.Event)
		}
	}
}

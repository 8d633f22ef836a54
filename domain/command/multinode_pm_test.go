package command

import (
	"context"
	"fmt"
	"net/mail"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
	"github.com/usersync/usersync/eventstore/keystore"
	usermail "github.com/usersync/usersync/mail"
	"github.com/usersync/usersync/mail/smtptest"
)

// Password returns and welcome mails across nodes (issue 12): every node
// runs both process managers over its own subscription to the shared log,
// with its own key store. Claims at the contact stream's version make each
// effect one node's; a password whose key only a silent node holds is
// replaced by another node. The esdbtest stand-in plays EventStoreDB,
// spoken to by two esdb.Store clients; FunnelKit is a recording
// FieldWriter, the mail relay the in-process SMTP server.

// fieldWrite is one password written to FunnelKit: by which node, to
// which contact, what.
type fieldWrite struct {
	node     int
	contact  domain.ContactID
	password string
}

// recordingCRM is FunnelKit's field endpoint, shared by the nodes; each
// node writes through its own view of it (nodeWriter), so the test knows
// who wrote.
type recordingCRM struct {
	mu     sync.Mutex
	writes []fieldWrite
	wrote  chan struct{}
}

func (r *recordingCRM) all() []fieldWrite {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]fieldWrite(nil), r.writes...)
}

type nodeWriter struct {
	crm  *recordingCRM
	node int
}

func (w nodeWriter) SetFields(_ context.Context, id domain.ContactID, fields map[string]string) error {
	w.crm.mu.Lock()
	defer w.crm.mu.Unlock()
	w.crm.writes = append(w.crm.writes, fieldWrite{node: w.node, contact: id, password: fields["7"]})
	select {
	case w.crm.wrote <- struct{}{}:
	default:
	}
	return nil
}

// pmNode is one usersync process: its store client, key store, webhook
// processing, and the process managers it runs (started by run).
type pmNode struct {
	i        int
	store    *esdb.Store
	keys     *keystore.Keys
	dispatch *Dispatcher
	cfg      ProcessManagerConfig
	writer   nodeWriter
	mailer   *usermail.Mailer
	races    atomic.Int32

	returner *PasswordReturner
	welcomer *Welcomer
	stop     func()
}

// pmCheckpoints is a process manager's checkpoint in memory.
type memCheckpoints struct {
	mu  sync.Mutex
	pos map[string]uint64
}

func (c *memCheckpoints) Checkpoint(_ context.Context, name string) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pos[name], nil
}

func (c *memCheckpoints) SaveCheckpoint(_ context.Context, name string, pos uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pos[name] = pos
	return nil
}

// twoPMNodes starts two nodes on one stand-in; their process managers are
// not running yet (run starts them).
func twoPMNodes(t *testing.T, crm *fakeCRM, fk *recordingCRM, smtpAddr string, takeover time.Duration) []*pmNode {
	t.Helper()
	srv := esdbtest.New(t)
	var mu sync.Mutex
	ids := 0
	var nodes []*pmNode
	for i := range 2 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		store, err := esdb.Open(ctx, srv.ConnString(), esdb.Options{})
		if err != nil {
			cancel()
			t.Fatalf("node %d: open the store: %v", i, err)
		}
		keys, err := keystore.Open(ctx, filepath.Join(t.TempDir(), "keys.db"))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		hasher, err := keystore.NewHasher(keystore.MinHashCost, 2)
		if err != nil {
			t.Fatal(err)
		}
		secrets := keystore.Secrets{Keys: keys, Hasher: hasher}
		n := &pmNode{i: i, store: store, keys: keys, writer: nodeWriter{crm: fk, node: i}}
		proc, err := NewProcessWebhook(ProcessWebhookConfig{
			Policy: testPolicy(), Store: store, CRM: crm, Secrets: secrets,
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
		if n.dispatch, err = NewDispatcher(proc, DispatcherConfig{Concurrency: 8, ErrorPause: 10 * time.Millisecond}); err != nil {
			t.Fatal(err)
		}
		if n.mailer, err = usermail.NewMailer(usermail.Config{From: "shop@example.com", SMTPURL: "smtp://" + smtpAddr, Timeout: 5 * time.Second}); err != nil {
			t.Fatal(err)
		}
		n.cfg = ProcessManagerConfig{Store: store, Retry: domain.Backoff{Initial: time.Millisecond, Max: 10 * time.Millisecond},
			Node: "node-" + strconv.Itoa(i), TakeoverAfter: takeover, Secrets: secrets, OnRaceLost: func() { n.races.Add(1) },
			NewKeyID: func() string {
				mu.Lock()
				defer mu.Unlock()
				ids++
				return "r" + strconv.Itoa(i) + "-" + strconv.Itoa(ids)
			}}
		t.Cleanup(func() {
			n.halt()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_ = n.dispatch.Close(ctx)
			_ = store.Close()
			_ = keys.Close()
		})
		nodes = append(nodes, n)
	}
	return nodes
}

// run starts the node's process managers, each over its own subscription
// from the start of the log (a node coming back with no checkpoint).
func (n *pmNode) run(t *testing.T) {
	t.Helper()
	cfg := n.cfg
	cfg.Checkpoints = &memCheckpoints{pos: map[string]uint64{}}
	var err error
	if n.returner, err = NewPasswordReturner(cfg, n.writer, n.keys); err != nil {
		t.Fatal(err)
	}
	if n.welcomer, err = NewWelcomer(cfg, n.mailer); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, pm := range []interface {
		Handle(context.Context, domain.RecordedEvent) error
	}{n.returner, n.welcomer} {
		sub := n.store.Subscribe(ctx, 0)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rec := range sub.Events() {
				// A failed Handle is tried again, as the pipeline does,
				// boundedly.
				for try := 0; try < 100 && ctx.Err() == nil; try++ {
					if err := pm.Handle(ctx, rec); err == nil {
						break
					}
				}
			}
		}()
	}
	n.stop = func() {
		cancel()
		wg.Wait()
		n.returner.Stop()
		n.welcomer.Stop()
	}
}

// halt stops the node's process managers, if running (the node dies).
func (n *pmNode) halt() {
	if n.stop != nil {
		n.stop()
		n.stop = nil
	}
}

// addWithMail records an add with send_notification for contact id.
func addWithMail(t *testing.T, s domain.EventStore, id domain.ContactID) {
	t.Helper()
	wh := fmt.Sprintf("wh-%d", id)
	raw, err := domain.Encode(domain.Envelope{Event: domain.WebhookReceived{WebhookID: wh, Action: domain.ActionAdd, ContactID: id.String(),
		Params: map[string]string{"send_notification": "1"}, Method: "POST", ReceivedAt: t0}, OccurredAt: t0, WebhookID: wh})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(context.Background(), id.Stream(), domain.NoStream(), raw); err != nil {
		t.Fatal(err)
	}
}

// settled waits (up to 30 s) until every contact's stream shows the
// password returned and the welcome mail sent.
func settled(t *testing.T, s domain.EventStore, fk *recordingCRM, ids []domain.ContactID) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	poll := time.NewTicker(20 * time.Millisecond)
	defer poll.Stop()
	for {
		left := 0
		for _, id := range ids {
			st := loadState(t, s, id)
			if st.Password == nil || !st.Password.Done || st.Welcome == nil || !st.Welcome.Done {
				left++
			}
		}
		if left == 0 {
			return
		}
		select {
		case <-fk.wrote:
		case <-poll.C:
		case <-deadline.C:
			for _, id := range ids {
				dump(t, s, id.Stream())
			}
			t.Fatalf("%d of %d contacts without their password returned and welcome mail sent after 30s", left, len(ids))
		}
	}
}

func loadState(t *testing.T, s domain.EventStore, id domain.ContactID) *domain.ContactState {
	t.Helper()
	recs, err := s.ReadStream(context.Background(), id.Stream())
	if err != nil {
		t.Fatal(err)
	}
	st, err := domain.LoadContact(id, recs)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// countTypes counts a stream's events by type.
func countTypes(t *testing.T, s domain.EventStore, id domain.ContactID) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, env := range decoded(t, s, id.Stream()) {
		out[env.Event.EventType()]++
	}
	return out
}

// startSMTP starts the in-process relay.
func startSMTP(t *testing.T) *smtptest.Server {
	t.Helper()
	srv, err := smtptest.Start(smtptest.WithoutAuth())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	return srv
}

// messageIDs counts the relay's messages by Message-ID.
func messageIDs(t *testing.T, srv *smtptest.Server) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, m := range srv.Messages() {
		msg, err := mail.ReadMessage(strings.NewReader(string(m.Data)))
		if err != nil {
			t.Fatal(err)
		}
		out[msg.Header.Get("Message-ID")]++
	}
	return out
}

func TestTwoNodes_BothRunning_EachPasswordReturnedAndEachMailSentOnce(t *testing.T) {
	t.Parallel()
	// Given two nodes on one EventStoreDB, both running their process
	// managers, and new contacts whose adds ask for the welcome mail
	const contacts = 8
	crm := &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}}
	fk := &recordingCRM{wrote: make(chan struct{}, 1)}
	relay := startSMTP(t)
	nodes := twoPMNodes(t, crm, fk, relay.Addr(), time.Minute)
	for _, n := range nodes {
		n.run(t)
	}

	// When each add is processed by one node or the other
	var ids []domain.ContactID
	for i := 1; i <= contacts; i++ {
		id := domain.ContactID(700 + i)
		crm.set(contact(id, fmt.Sprintf("user%d@example.com", i)))
		addWithMail(t, nodes[0].store, id)
		if err := nodes[i%2].dispatch.Submit(id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	settled(t, nodes[0].store, fk, ids)
	eventually(t, "every key shredded on its node", func() bool {
		for _, w := range fk.all() {
			st := loadState(t, nodes[0].store, w.contact)
			if has, err := nodes[w.node].keys.Has(context.Background(), st.Password.KeyID); err != nil || has {
				return false
			}
		}
		return true
	})
	for _, n := range nodes {
		n.halt()
	}

	// Then each password reached FunnelKit once, from the node that issued
	// it, and is the user's password; its key is gone there; each welcome
	// mail went out once; nothing failed or was replaced
	writes := fk.all()
	if len(writes) != contacts {
		t.Errorf("%d passwords written to FunnelKit, want %d: %+v", len(writes), contacts, writes)
	}
	for _, id := range ids {
		st := loadState(t, nodes[0].store, id)
		var mine []fieldWrite
		for _, w := range writes {
			if w.contact == id {
				mine = append(mine, w)
			}
		}
		if len(mine) != 1 {
			t.Errorf("contact %d: %d writes, want 1", id, len(mine))
			continue
		}
		if err := bcrypt.CompareHashAndPassword([]byte(st.User.PasswordHash), []byte(mine[0].password)); err != nil {
			t.Errorf("contact %d: the password written is not the user's: %v", id, err)
		}
		issuer := nodes[mine[0].node]
		if has, err := issuer.keys.Has(context.Background(), st.Password.KeyID); err != nil || has {
			t.Errorf("contact %d: the key is still on node %d (%v)", id, issuer.i, err)
		}
		c := countTypes(t, nodes[0].store, id)
		if c[domain.TypePasswordReturned] != 1 || c[domain.TypePasswordReturnClaimed] != 1 || c[domain.TypePasswordReturnFailed] != 0 || c[domain.TypePasswordReplaced] != 0 {
			t.Errorf("contact %d: password events %v, want one claim and one return", id, c)
		}
		if c[domain.TypeWelcomeEmailSent] != 1 || c[domain.TypeWelcomeEmailClaimed] != 1 || c[domain.TypeWelcomeEmailFailed] != 0 {
			t.Errorf("contact %d: mail events %v, want one claim and one sent", id, c)
		}
		if id := st.Welcome.MessageID; messageIDs(t, relay)[id] != 1 {
			t.Errorf("contact %d: the relay got %d messages with the claim's Message-ID %s", st.ContactID, messageIDs(t, relay)[id], id)
		}
	}
	if got := len(relay.Messages()); got != contacts {
		t.Errorf("the relay got %d messages, want %d", got, contacts)
	}
	t.Logf("races lost: node 0 %d, node 1 %d", nodes[0].races.Load(), nodes[1].races.Load())
}

func TestTwoNodes_IssuerDies_TheOtherReplacesThePasswordAndTheIssuerShredsItsKeyOnReturn(t *testing.T) {
	t.Parallel()
	// Given two nodes on one EventStoreDB, the first of which issues a
	// password and dies before returning it (its process managers never
	// run), the second running with a short take-over delay
	crm := &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}}
	fk := &recordingCRM{wrote: make(chan struct{}, 1)}
	relay := startSMTP(t)
	nodes := twoPMNodes(t, crm, fk, relay.Addr(), 200*time.Millisecond)
	issuer, other := nodes[0], nodes[1]
	const id = domain.ContactID(801)
	crm.set(contact(id, "ada@example.com"))
	addWithMail(t, issuer.store, id)
	if err := issuer.dispatch.Submit(id); err != nil {
		t.Fatal(err)
	}
	var issued domain.PasswordIssued
	eventually(t, "the password issued", func() bool {
		for _, env := range decoded(t, issuer.store, id.Stream()) {
			if e, ok := env.Event.(domain.PasswordIssued); ok {
				issued = e
				return true
			}
		}
		return false
	})

	// When the other node runs its process managers
	other.run(t)
	settled(t, other.store, fk, []domain.ContactID{id})

	// Then it replaced the password after the take-over delay and returned
	// the replacement, which is the user's password now; the old password
	// was never written
	st := loadState(t, other.store, id)
	var replaced domain.PasswordReplaced
	for _, env := range decoded(t, other.store, id.Stream()) {
		if e, ok := env.Event.(domain.PasswordReplaced); ok {
			replaced = e
		}
	}
	if replaced.OldKeyID != issued.KeyID || replaced.KeyID == "" || st.Password.KeyID != replaced.KeyID || st.Password.Superseded[0] != issued.KeyID {
		t.Fatalf("replaced %+v after issued key %s; state %+v", replaced, issued.KeyID, st.Password)
	}
	writes := fk.all()
	if len(writes) != 1 || writes[0].node != other.i {
		t.Fatalf("FunnelKit writes %+v, want one from node %d", writes, other.i)
	}
	if st.User.PasswordHash != replaced.PasswordHash {
		t.Errorf("the user's hash is not the replacement's")
	}
	if err := bcrypt.CompareHashAndPassword([]byte(st.User.PasswordHash), []byte(writes[0].password)); err != nil {
		t.Errorf("the password written is not the user's: %v", err)
	}
	eventually(t, "the replacement's key shredded on the node that returned it", func() bool {
		has, err := other.keys.Has(context.Background(), replaced.KeyID)
		return err == nil && !has
	})
	if has, _ := issuer.keys.Has(context.Background(), issued.KeyID); !has {
		t.Fatal("the issuer's key is gone before the issuer came back")
	}
	if c := countTypes(t, other.store, id); c[domain.TypeWelcomeEmailSent] != 1 || len(relay.Messages()) != 1 {
		t.Errorf("mail events %v, relay messages %d; want the mail sent once", c, len(relay.Messages()))
	}

	// and when the issuer comes back, it shreds its superseded key and
	// writes nothing
	issuer.run(t)
	eventually(t, "the superseded key shredded", func() bool {
		has, err := issuer.keys.Has(context.Background(), issued.KeyID)
		return err == nil && !has
	})
	issuer.halt()
	other.halt()
	if writes := fk.all(); len(writes) != 1 {
		t.Errorf("FunnelKit writes after the issuer came back: %+v", writes)
	}
	if len(relay.Messages()) != 1 {
		t.Errorf("the relay got %d messages, want 1", len(relay.Messages()))
	}
}

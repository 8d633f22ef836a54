package command

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	usermail "github.com/usersync/usersync/mail"
	"github.com/usersync/usersync/projections"
)

// runWelcomer starts the node's welcomer alone, over its own subscription
// from cps's checkpoint (a node restarting keeps its checkpoints), sending
// with mailer (nil: the node's).
func (n *pmNode) runWelcomer(t *testing.T, cps Checkpoints, mailer domain.Mailer) {
	t.Helper()
	cfg := n.cfg
	cfg.Checkpoints = cps
	if mailer == nil {
		mailer = n.mailer
	}
	var err error
	if n.welcomer, err = NewWelcomer(cfg, mailer); err != nil {
		t.Fatal(err)
	}
	from, err := n.welcomer.Position(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	sub := n.store.Subscribe(ctx, from)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for rec := range sub.Events() {
			for try := 0; try < 100 && ctx.Err() == nil; try++ {
				if err := n.welcomer.Handle(ctx, rec); err == nil {
					break
				}
			}
		}
	}()
	n.stop = func() {
		cancel()
		wg.Wait()
		n.welcomer.Stop()
	}
}

// pendingMails is what the welcome-mail view built from the whole log
// lists as pending (what serve resumes at its start).
func pendingMails(t *testing.T, s interface {
	ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error)
}) []PendingWelcome {
	t.Helper()
	ctx := context.Background()
	views, err := projections.Open(ctx, filepath.Join(t.TempDir(), "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer views.Close()
	var after uint64
	for range 1000 {
		recs, err := s.ReadAll(ctx, after, 256)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			break
		}
		if _, err := views.HandleBatch(ctx, recs); err != nil {
			t.Fatal(err)
		}
		after = recs[len(recs)-1].Position
	}
	rows, err := views.Welcome.List(ctx, projections.WelcomePending)
	if err != nil {
		t.Fatal(err)
	}
	var out []PendingWelcome
	for _, r := range rows {
		out = append(out, PendingWelcome{ContactID: r.ContactID, UserID: r.UserID})
	}
	return out
}

func TestTwoNodes_WatcherRestartsClaimerNeverReturns_TheWatcherSendsTheMailOnceAfterTheLease(t *testing.T) {
	t.Parallel()
	// Given two nodes on one EventStoreDB; the first creates a user whose
	// add asks for the welcome mail, claims its first attempt and dies
	// before sending (its claim holds a few seconds more)
	crm := &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}}
	fk := &recordingCRM{wrote: make(chan struct{}, 1)}
	relay := startSMTP(t)
	nodes := twoPMNodes(t, crm, fk, relay.Addr(), time.Hour)
	claimer, watcher := nodes[0], nodes[1]
	const id = domain.ContactID(901)
	crm.set(contact(id, "eve@example.com"))
	addWithMail(t, claimer.store, id)
	if err := claimer.dispatch.Submit(id); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the user created", func() bool {
		st := loadState(t, claimer.store, id)
		return st.Welcome != nil
	})
	st := loadState(t, claimer.store, id)
	const lease = 4 * time.Second
	claim := domain.WelcomeEmailClaimed{To: st.Welcome.To, Attempt: 1, MessageID: claimer.mailer.MessageID(st.Welcome.UserID),
		Until: time.Now().Add(lease).UTC(), Node: claimer.cfg.Node}
	raw, err := domain.Encode(domain.Envelope{Event: claim, OccurredAt: time.Now().UTC(), WebhookID: "wh-901"})
	if err != nil {
		t.Fatal(err)
	}
	res, err := claimer.store.Append(context.Background(), id.Stream(), domain.ExactVersion(st.Version), raw)
	if err != nil {
		t.Fatal(err)
	}

	// and the second node's welcomer sees the live claim, watches it and
	// moves its checkpoint past the user's creation
	cps := &memCheckpoints{pos: map[string]uint64{}}
	watcher.runWelcomer(t, cps, nil)
	eventually(t, "the watcher's checkpoint past the claim", func() bool {
		pos, _ := cps.Checkpoint(context.Background(), WelcomeEmailName)
		return pos >= res.Position
	})

	// When the watcher restarts before the claim's end (its watch ends
	// with it) and, as serve does at its start, resumes the mails the
	// views list as pending
	watcher.halt()
	if n := len(relay.Messages()); n != 0 {
		t.Fatalf("%d messages sent before the restart; the claim's lease was too short for this test", n)
	}
	pending := pendingMails(t, watcher.store)
	if len(pending) != 1 || pending[0].ContactID != id {
		t.Fatalf("pending mails %+v, want contact %d's", pending, id)
	}
	watcher.runWelcomer(t, cps, nil)
	if err := watcher.welcomer.Resume(context.Background(), pending); err != nil {
		t.Fatal(err)
	}

	// Then the watcher sends the mail once, after the claim's end, with
	// the claim's Message-ID, and records it
	deadline := time.Now().Add(30 * time.Second)
	for !loadState(t, watcher.store, id).Welcome.Done {
		if time.Now().After(deadline) {
			dump(t, watcher.store, id.Stream())
			t.Fatal("the welcome mail is not sent 30s after the watcher's restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	watcher.halt()
	var claims []domain.WelcomeEmailClaimed
	var claimedAt time.Time
	sent := 0
	for _, env := range decoded(t, watcher.store, id.Stream()) {
		switch e := env.Event.(type) {
		case domain.WelcomeEmailClaimed:
			claims, claimedAt = append(claims, e), env.OccurredAt
		case domain.WelcomeEmailSent:
			sent++
		}
	}
	if len(claims) != 2 || claims[1].Node != watcher.cfg.Node || claims[1].Attempt != 2 || sent != 1 {
		t.Fatalf("claims %+v, %d sent; want the watcher's claim of attempt 2 and one sent", claims, sent)
	}
	if claimedAt.Before(claim.Until) {
		t.Errorf("the watcher claimed at %s, before the first claim's end %s", claimedAt, claim.Until)
	}
	if got := messageIDs(t, relay); len(relay.Messages()) != 1 || got[claim.MessageID] != 1 {
		t.Errorf("relay messages by Message-ID %v, want one with %s", got, claim.MessageID)
	}
}

// hangingMailer is a relay that never answers: each send waits for its
// context to end.
type hangingMailer struct {
	*usermail.Mailer
	entered chan struct{}
}

func (m hangingMailer) SendWelcome(ctx context.Context, _, _, _ string) (string, error) {
	select {
	case m.entered <- struct{}{}:
	default:
	}
	<-ctx.Done()
	return "", ctx.Err()
}

func TestTwoNodes_ClaimerStopsCleanlyMidSend_TheWatcherSendsWithoutWaitingOutTheLease(t *testing.T) {
	t.Parallel()
	// Given two nodes on one EventStoreDB, the first in the middle of
	// sending a welcome mail (its relay hangs; its claim holds for the
	// default lease, 2 × 30 s + 5 s), the second watching that claim
	crm := &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}}
	fk := &recordingCRM{wrote: make(chan struct{}, 1)}
	relay := startSMTP(t)
	nodes := twoPMNodes(t, crm, fk, relay.Addr(), time.Hour)
	claimer, watcher := nodes[0], nodes[1]
	const id = domain.ContactID(902)
	crm.set(contact(id, "fay@example.com"))
	addWithMail(t, claimer.store, id)
	if err := claimer.dispatch.Submit(id); err != nil {
		t.Fatal(err)
	}
	hang := hangingMailer{Mailer: claimer.mailer, entered: make(chan struct{}, 1)}
	claimer.runWelcomer(t, &memCheckpoints{pos: map[string]uint64{}}, hang)
	select {
	case <-hang.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the first node did not start sending")
	}
	st := loadState(t, claimer.store, id)
	first := *st.Welcome.Claim
	cps := &memCheckpoints{pos: map[string]uint64{}}
	watcher.runWelcomer(t, cps, nil)
	head, err := watcher.store.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "the watcher's checkpoint past the claim", func() bool {
		pos, _ := cps.Checkpoint(context.Background(), WelcomeEmailName)
		return pos >= head
	})

	// When the first node stops cleanly (a shutdown)
	claimer.halt()

	// Then its attempt is recorded as interrupted, and the watcher sends
	// the mail at once, long before the claim's end, once, with the
	// claim's Message-ID
	deadline := time.Now().Add(30 * time.Second)
	for !loadState(t, watcher.store, id).Welcome.Done {
		if time.Now().After(deadline) {
			dump(t, watcher.store, id.Stream())
			t.Fatalf("the welcome mail is not sent 30s after the first node's stop (its claim ends at %s)", first.Until)
		}
		time.Sleep(20 * time.Millisecond)
	}
	watcher.halt()
	var second *domain.Envelope
	interrupted := 0
	for _, env := range decoded(t, watcher.store, id.Stream()) {
		switch e := env.Event.(type) {
		case domain.WelcomeEmailClaimed:
			if e.Attempt == 2 {
				second = &env
			}
		case domain.WelcomeEmailFailed:
			if e.Error == InterruptedAttempt && e.Attempt == 1 {
				interrupted++
			}
		}
	}
	if interrupted != 1 || second == nil || second.Event.(domain.WelcomeEmailClaimed).Node != watcher.cfg.Node {
		t.Fatalf("%d interrupted attempts, second claim %+v; want the first attempt released and the watcher's claim of attempt 2", interrupted, second)
	}
	if !second.OccurredAt.Before(first.Until) {
		t.Errorf("the watcher claimed at %s, not before the first claim's end %s", second.OccurredAt, first.Until)
	}
	if got := messageIDs(t, relay); len(relay.Messages()) != 1 || got[st.Welcome.MessageID] != 1 {
		t.Errorf("relay messages by Message-ID %v, want one with %s", got, st.Welcome.MessageID)
	}
}

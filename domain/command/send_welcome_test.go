package command_test

import (
	"context"
	"errors"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
)

// pmSend is one call of SendWelcome.
type pmSend struct{ Key, To, Login string }

// pmMailer answers each SendWelcome with the next of errs (nil, sent by
// smtp, once they run out). With cancel set, it first calls it, as a stop
// in the middle of a send would.
type pmMailer struct {
	errs   []error
	cancel context.CancelFunc

	mu    sync.Mutex
	calls []pmSend
}

func (m *pmMailer) SendWelcome(ctx context.Context, key, to, login string) (string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.calls)
	m.calls = append(m.calls, pmSend{Key: key, To: to, Login: login})
	if m.cancel != nil {
		m.cancel()
	}
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if n < len(m.errs) {
		return "", m.errs[n]
	}
	return "smtp", nil
}

func (m *pmMailer) sent() []pmSend {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.calls)
}

// pmCreated is the UserCreated of pmContact, asking for the welcome email
// or not.
func pmCreated(welcome bool) domain.UserCreated {
	return domain.UserCreated{UserID: "u-1", ContactID: pmContact, Login: "ann", Email: "ann@example.com",
		Role: domain.Role("subscriber"), PasswordHash: "$2a$10$hash", WelcomeEmail: welcome}
}

func TestWelcomer_Handle(t *testing.T) {
	busy := pmTempError{msg: "smtp: 451 try again later", temp: true}
	refused := pmTempError{msg: "smtp: 550 no such mailbox", temp: false}
	at := func(d time.Duration) time.Time { return pmNow().Add(d) }
	const to = "ann@example.com"
	tests := []struct {
		name string
		// given: the contact's stream (the first event is handled), the
		// mailer's answers and the attempt limit
		given       []domain.Event
		mail        []error
		maxAttempts int
		// then
		wantSends    int
		want         []domain.Event
		wantOutcomes []string
	}{
		{
			name:  "sent at once",
			given: []domain.Event{pmCreated(true)}, wantSends: 1,
			want:         []domain.Event{domain.WelcomeEmailSent{To: to, Transport: "smtp", Attempt: 1}},
			wantOutcomes: []string{"sent"},
		},
		{
			name:  "temporary failures are retried with backoff",
			given: []domain.Event{pmCreated(true)}, mail: []error{busy, busy}, wantSends: 3,
			want: []domain.Event{
				domain.WelcomeEmailFailed{To: to, Attempt: 1, Error: busy.msg, NextAttemptAt: at(time.Second)},
				domain.WelcomeEmailFailed{To: to, Attempt: 2, Error: busy.msg, NextAttemptAt: at(2 * time.Second)},
				domain.WelcomeEmailSent{To: to, Transport: "smtp", Attempt: 3},
			},
			wantOutcomes: []string{"failed", "failed", "sent"},
		},
		{
			name:  "a permanent refusal gives up at once",
			given: []domain.Event{pmCreated(true)}, mail: []error{refused}, wantSends: 1,
			want:         []domain.Event{domain.WelcomeEmailFailed{To: to, Attempt: 1, Error: refused.msg, GaveUp: true}},
			wantOutcomes: []string{"gave_up"},
		},
		{
			name:  "the last allowed attempt fails: given up",
			given: []domain.Event{pmCreated(true)}, mail: []error{busy, busy}, maxAttempts: 2, wantSends: 2,
			want: []domain.Event{
				domain.WelcomeEmailFailed{To: to, Attempt: 1, Error: busy.msg, NextAttemptAt: at(time.Second)},
				domain.WelcomeEmailFailed{To: to, Attempt: 2, Error: busy.msg, GaveUp: true},
			},
			wantOutcomes: []string{"failed", "gave_up"},
		},
		{
			name: "the stream, not memory, counts the attempts made",
			given: []domain.Event{pmCreated(true),
				domain.WelcomeEmailFailed{To: to, Attempt: 1, Error: busy.msg, NextAttemptAt: at(time.Second)}},
			wantSends:    1,
			want:         []domain.Event{domain.WelcomeEmailSent{To: to, Transport: "smtp", Attempt: 2}},
			wantOutcomes: []string{"sent"},
		},
		{
			name:  "already sent: not sent again",
			given: []domain.Event{pmCreated(true), domain.WelcomeEmailSent{To: to, Transport: "outbox", Attempt: 1}},
		},
		{
			name:  "already given up: not sent again",
			given: []domain.Event{pmCreated(true), domain.WelcomeEmailFailed{To: to, Attempt: 1, Error: refused.msg, GaveUp: true}},
		},
		{
			name:  "no welcome email asked for",
			given: []domain.Event{pmCreated(false)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			// Given these events in the contact's stream, and this mailer.
			store := pmNewStore(t)
			given := pmGiven(t, store, pmContact, tt.given...)
			mail := &pmMailer{errs: tt.mail}
			cps := &pmCheckpoints{}
			outcomes := &pmOutcomes{}
			cfg := pmConfig(store, cps)
			cfg.MaxAttempts, cfg.OnResult = tt.maxAttempts, outcomes.add
			w, err := command.NewWelcomer(cfg, mail)
			if err != nil {
				t.Fatal(err)
			}

			// When the first of them is handled.
			if err := w.Handle(ctx, given[0]); err != nil {
				t.Fatalf("Handle: %v", err)
			}

			// Then these emails were sent, these events appended, and the
			// checkpoint saved if the welcomer acted.
			sends := mail.sent()
			if len(sends) != tt.wantSends {
				t.Fatalf("SendWelcome called %d times, want %d", len(sends), tt.wantSends)
			}
			for _, s := range sends {
				if want := (pmSend{Key: "u-1", To: to, Login: "ann"}); s != want {
					t.Errorf("SendWelcome%+v, want %+v", s, want)
				}
			}
			appended := pmAppended(t, store, pmContact, len(given))
			if got := pmResults(t, appended); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("appended\n%#v\nwant\n%#v", got, tt.want)
			}
			pmCheckCause(t, appended)
			if got := outcomes.list(); !slices.Equal(got, tt.wantOutcomes) {
				t.Errorf("outcomes %v, want %v", got, tt.wantOutcomes)
			}
			if w.Current() != given[0].Position {
				t.Errorf("Current() = %d, want %d", w.Current(), given[0].Position)
			}
			wantSaved := uint64(0)
			if pmCreatedWelcome(tt.given[0]) {
				wantSaved = given[0].Position
			}
			if pos, _ := cps.saved(command.WelcomeEmailName); pos != wantSaved {
				t.Errorf("checkpoint saved at %d, want %d", pos, wantSaved)
			}
		})
	}
}

// pmCreatedWelcome reports whether e asks for the welcome email.
func pmCreatedWelcome(e domain.Event) bool {
	c, ok := e.(domain.UserCreated)
	return ok && c.WelcomeEmail
}

func TestWelcomer_HandleFailures(t *testing.T) {
	tests := []struct {
		name string
		// given
		failReads int
		cancel    bool
		rec       func(given domain.RecordedEvent) domain.RecordedEvent
		// then
		wantErr   error
		wantMsg   string
		wantFail  bool
		wantSends int
		// wantRelease: the attempt is closed as interrupted, so that no
		// node waits out its claim
		wantRelease bool
	}{
		{name: "the stream cannot be read", failReads: 1, wantMsg: "read contact-7: " + pmStoreDown},
		{name: "stopped while sending: the attempt is released", cancel: true, wantErr: context.Canceled, wantSends: 1, wantRelease: true},
		{name: "undecodable", rec: func(r domain.RecordedEvent) domain.RecordedEvent { r.Data = []byte("{"); return r }, wantFail: true},
		{name: "not a contact's stream: only the checkpoint moves",
			rec: func(r domain.RecordedEvent) domain.RecordedEvent { r.Stream = "tags"; return r }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given a user created with the welcome email, and a store or
			// context that fails.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			store := &pmFlakyStore{EventStore: pmNewStore(t)}
			given := pmGiven(t, store, pmContact, pmCreated(true))
			store.failReads = tt.failReads
			rec := given[0]
			if tt.rec != nil {
				rec = tt.rec(rec)
			}
			mail := &pmMailer{}
			if tt.cancel {
				mail.cancel = cancel
			}
			cps := &pmCheckpoints{}
			w, err := command.NewWelcomer(pmConfig(store, cps), mail)
			if err != nil {
				t.Fatal(err)
			}

			// When it is handled.
			err = w.Handle(ctx, rec)

			// Then the error says why (the pipeline retries it), no result
			// is recorded (an interrupted attempt is released), and the
			// checkpoint is not saved.
			switch {
			case tt.wantMsg != "":
				if err == nil || err.Error() != tt.wantMsg {
					t.Errorf("Handle: %v, want %s", err, tt.wantMsg)
				}
			case tt.wantErr != nil:
				if !errors.Is(err, tt.wantErr) {
					t.Errorf("Handle: %v, want %v", err, tt.wantErr)
				}
			case tt.wantFail != (err != nil):
				t.Errorf("Handle: %v, want an error: %v", err, tt.wantFail)
			}
			if n := len(mail.sent()); n != tt.wantSends {
				t.Errorf("SendWelcome called %d times, want %d", n, tt.wantSends)
			}
			var want []domain.Event
			if tt.wantRelease {
				want = []domain.Event{domain.WelcomeEmailFailed{To: "ann@example.com", Attempt: 1, Error: command.InterruptedAttempt, NextAttemptAt: pmNow()}}
			}
			if got := pmResults(t, pmAppended(t, store, pmContact, len(given))); !reflect.DeepEqual(got, want) {
				t.Errorf("appended %#v, want %#v (claims aside)", got, want)
			}
			if _, saves := cps.saved(command.WelcomeEmailName); saves != 0 {
				t.Errorf("checkpoint saved %d times, want 0", saves)
			}
		})
	}
}

func TestWelcomer_Resume(t *testing.T) {
	const to = "ann@example.com"
	tests := []struct {
		name string
		// given: the contact's stream and the mails the views list as
		// pending
		given   []domain.Event
		pending []command.PendingWelcome
		// then
		wantSends int
		want      []domain.Event
	}{
		{
			name:    "a pending mail whose claim a crash cut off is sent",
			given:   []domain.Event{pmCreated(true), domain.WelcomeEmailClaimed{To: to, Attempt: 1, MessageID: "<m@x>", Until: pmNow().Add(time.Minute), Node: "other"}},
			pending: []command.PendingWelcome{{ContactID: pmContact, UserID: "u-1"}}, wantSends: 1,
			want: []domain.Event{domain.WelcomeEmailSent{To: to, Transport: "smtp", Attempt: 2}},
		},
		{
			name:    "a mail sent meanwhile is not sent again",
			given:   []domain.Event{pmCreated(true), domain.WelcomeEmailSent{To: to, Transport: "smtp", Attempt: 1}},
			pending: []command.PendingWelcome{{ContactID: pmContact, UserID: "u-1"}},
		},
		{
			name:    "a user the views did not list is left alone",
			given:   []domain.Event{pmCreated(true)},
			pending: []command.PendingWelcome{{ContactID: pmContact, UserID: "u-other"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given these events, and a welcomer whose checkpoint is past
			// them
			store := pmNewStore(t)
			given := pmGiven(t, store, pmContact, tt.given...)
			mail := &pmMailer{}
			w, err := command.NewWelcomer(pmConfig(store, &pmCheckpoints{}), mail)
			if err != nil {
				t.Fatal(err)
			}

			// When it resumes the pending mails (twice: a recovery tried
			// again), and stops once they are settled
			for range 2 {
				if err := w.Resume(context.Background(), tt.pending); err != nil {
					t.Fatal(err)
				}
			}
			deadline := time.Now().Add(pmWait)
			for len(pmResults(t, pmAppended(t, store, pmContact, len(given)))) < len(tt.want) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			w.Stop()

			// Then these mails were sent and these results recorded
			if n := len(mail.sent()); n != tt.wantSends {
				t.Errorf("SendWelcome called %d times, want %d", n, tt.wantSends)
			}
			if got := pmResults(t, pmAppended(t, store, pmContact, len(given))); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("appended\n%#v\nwant\n%#v", got, tt.want)
			}
		})
	}
}

func TestWelcomer_ClaimHoldsTwiceTheEffectPlusTheClockSkew(t *testing.T) {
	tests := []struct {
		name          string
		effect, skew  time.Duration
		wantHeldUntil time.Time
	}{
		{"an effect of 2 s, the default skew", 2 * time.Second, 0, pmNow().Add(9 * time.Second)},
		{"an effect of 30 s, a skew of 1 s", 30 * time.Second, time.Second, pmNow().Add(61 * time.Second)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given a welcomer whose sends time out after effect, on
			// nodes whose clocks differ by up to skew, and no Lease set
			store := pmNewStore(t)
			given := pmGiven(t, store, pmContact, pmCreated(true))
			cfg := pmConfig(store, &pmCheckpoints{})
			cfg.EffectTimeout, cfg.ClockSkew = tt.effect, tt.skew
			w, err := command.NewWelcomer(cfg, &pmMailer{})
			if err != nil {
				t.Fatal(err)
			}
			defer w.Stop()

			// When it sends the mail
			if err := w.Handle(context.Background(), given[0]); err != nil {
				t.Fatal(err)
			}

			// Then its claim held for 2 × effect + skew
			envs := pmAppended(t, store, pmContact, len(given))
			c, ok := envs[0].Event.(domain.WelcomeEmailClaimed)
			if !ok || !c.Until.Equal(tt.wantHeldUntil) {
				t.Fatalf("first appended %#v, want a claim until %s", envs[0].Event, tt.wantHeldUntil)
			}
		})
	}
}

func TestWelcomer_Resume_AMailWaitingForItsRetryHoldsBackNoOther(t *testing.T) {
	// Given two pending mails, the first failed with its retry an hour
	// ahead, the second never tried, and a clock on which that hour does
	// not pass
	store := pmNewStore(t)
	pmGiven(t, store, pmContact, pmCreated(true),
		domain.WelcomeEmailFailed{To: "ann@example.com", Attempt: 1, Error: "451 later", NextAttemptAt: pmNow().Add(time.Hour)})
	bob := domain.UserCreated{UserID: "u-2", ContactID: pmContact + 1, Login: "bob", Email: "bob@example.com", Role: "subscriber", WelcomeEmail: true}
	pmGiven(t, store, pmContact+1, bob)
	cfg := pmConfig(store, &pmCheckpoints{})
	waiting := make(chan time.Time, 4)
	cfg.Wait = func(ctx context.Context, until time.Time) bool {
		if !until.After(pmNow()) {
			return ctx.Err() == nil
		}
		waiting <- until
		<-ctx.Done()
		return false
	}
	mail := &pmMailer{}
	w, err := command.NewWelcomer(cfg, mail)
	if err != nil {
		t.Fatal(err)
	}

	// When both are resumed, the first first
	err = w.Resume(context.Background(), []command.PendingWelcome{{ContactID: pmContact, UserID: "u-1"}, {ContactID: pmContact + 1, UserID: "u-2"}})
	if err != nil {
		t.Fatal(err)
	}

	// Then the second is sent while the first waits for its retry in the
	// background
	deadline := time.Now().Add(pmWait)
	for len(mail.sent()) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	select {
	case until := <-waiting:
		if !until.Equal(pmNow().Add(time.Hour)) {
			t.Errorf("waits until %s, want the retry's %s", until, pmNow().Add(time.Hour))
		}
	case <-time.After(pmWait):
		t.Fatal("the first mail does not wait for its retry")
	}
	w.Stop()
	if sent := mail.sent(); len(sent) != 1 || sent[0].To != "bob@example.com" {
		t.Fatalf("sent %+v, want bob's mail only", sent)
	}
}

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
	}{
		{name: "the stream cannot be read", failReads: 1, wantMsg: "read contact-7: " + pmStoreDown},
		{name: "stopped while sending", cancel: true, wantErr: context.Canceled, wantSends: 1},
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

			// Then the error says why (the pipeline retries it), nothing is
			// recorded, and the checkpoint is not saved.
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
			if got := pmResults(t, pmAppended(t, store, pmContact, len(given))); len(got) != 0 {
				t.Errorf("appended %#v, want no result (claims only)", got)
			}
			if _, saves := cps.saved(command.WelcomeEmailName); saves != 0 {
				t.Errorf("checkpoint saved %d times, want 0", saves)
			}
		})
	}
}

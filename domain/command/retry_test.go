package command_test

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
)

// pmNever is a wait in which no time passes: only a wake ends it. It
// tells waiting when it starts.
func pmNever(waiting chan<- struct{}) func(ctx context.Context, _ time.Time) bool {
	return func(ctx context.Context, _ time.Time) bool {
		select {
		case waiting <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return false
	}
}

// pmAwait waits until a round is waiting.
func pmAwait(t *testing.T, waiting <-chan struct{}) {
	t.Helper()
	select {
	case <-waiting:
	case <-time.After(pmWait):
		t.Fatalf("no round waited within %s", pmWait)
	}
}

func TestPasswordReturner_Retry(t *testing.T) {
	failed := domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 1, Error: "503", NextAttemptAt: pmNow().Add(time.Hour)}
	gaveUp := domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 5, Error: "400", GaveUp: true}
	tests := []struct {
		name string
		// given
		given   []domain.Event
		waiting bool // a round of this returner waits for the next attempt
		// then
		wantErr   error
		wantCalls int
	}{
		{name: "a return waiting on its next attempt is made at once", given: []domain.Event{pmIssued("k1"), failed}, waiting: true, wantCalls: 1},
		{name: "a pending return no round has is started and made", given: []domain.Event{pmIssued("k1"), failed}, wantCalls: 1},
		{name: "a given-up return cannot be retried", given: []domain.Event{pmIssued("k1"), gaveUp}, wantErr: command.ErrKeyDestroyed},
		{name: "a returned password has nothing to retry", given: []domain.Event{pmIssued("k1"), domain.PasswordReturned{KeyID: "k1", Field: "pw", Attempt: 1}}, wantErr: command.ErrNothingToRetry},
		{name: "a contact without a return has nothing to retry", wantErr: command.ErrNothingToRetry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given a contact's stream and a returner whose waits last
			// until woken.
			ctx := context.Background()
			store := pmNewStore(t)
			pmGiven(t, store, pmContact, tt.given...)
			keys := &pmKeys{shredded: make(chan string, 4)}
			crm := &pmFieldWriter{}
			cfg := pmConfig(store, &pmCheckpoints{})
			waiting := make(chan struct{}, 1)
			cfg.Wait = pmNever(waiting)
			r, err := command.NewPasswordReturner(cfg, crm, keys)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Stop()
			if tt.waiting {
				if err := r.Resume(ctx, []command.PendingReturn{{ContactID: pmContact, KeyID: "k1"}}); err != nil {
					t.Fatal(err)
				}
				pmAwait(t, waiting)
			}
			before := len(pmRecords(t, store))

			// When an operator retries it.
			err = r.Retry(ctx, pmContact, domain.OperatorActed{Source: "127.0.0.1", Credential: "admin token"})

			// Then it is made at once, or refused with nothing recorded.
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Retry: %v, want %v", err, tt.wantErr)
			}
			recs := pmRecords(t, store)
			if tt.wantErr != nil {
				if len(recs) != before {
					t.Errorf("a refused retry recorded %d events", len(recs)-before)
				}
				return
			}
			pmWaitShred(t, keys, "k1")
			if calls, _ := crm.snapshot(); len(calls) != tt.wantCalls {
				t.Errorf("SetFields called %d times, want %d", len(calls), tt.wantCalls)
			}
			if recs[before].Type != domain.TypeOperatorActed {
				t.Errorf("the first event after the retry is %s, want OperatorActed in the contact's stream", recs[before].Type)
			}
		})
	}
}

func TestWelcomer_Retry(t *testing.T) {
	const to = "ann@example.com"
	retried := domain.OperatorActed{Action: domain.ActionRetryWelcomeEmail, Source: "127.0.0.1", Credential: "admin token"}
	tests := []struct {
		name string
		// given
		given   []domain.Event
		waiting bool // a round of this welcomer waits for the next attempt
		// then
		wantErr error
		want    []domain.Event // the retry and the results after it
	}{
		{name: "a given-up mail gets one attempt more", given: []domain.Event{pmCreated(true), domain.WelcomeEmailFailed{To: to, Attempt: 5, Error: "550", GaveUp: true}},
			want: []domain.Event{retried, domain.WelcomeEmailSent{To: to, Transport: "smtp", Attempt: 6}}},
		{name: "a mail waiting on its next attempt is sent at once", given: []domain.Event{pmCreated(true), domain.WelcomeEmailFailed{To: to, Attempt: 1, Error: "421", NextAttemptAt: pmNow().Add(time.Hour)}},
			waiting: true, want: []domain.Event{retried, domain.WelcomeEmailSent{To: to, Transport: "smtp", Attempt: 2}}},
		{name: "a sent mail has nothing to retry", given: []domain.Event{pmCreated(true), domain.WelcomeEmailSent{To: to, Transport: "smtp", Attempt: 1}}, wantErr: command.ErrNothingToRetry},
		{name: "a user without the mail has nothing to retry", given: []domain.Event{pmCreated(false)}, wantErr: command.ErrNothingToRetry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given the contact's stream and a welcomer whose waits last
			// until woken.
			ctx := context.Background()
			store := pmNewStore(t)
			given := pmGiven(t, store, pmContact, tt.given...)
			mail := &pmMailer{}
			cfg := pmConfig(store, &pmCheckpoints{})
			waiting := make(chan struct{}, 1)
			cfg.Wait = pmNever(waiting)
			w, err := command.NewWelcomer(cfg, mail)
			if err != nil {
				t.Fatal(err)
			}
			if tt.waiting {
				if err := w.Resume(ctx, []command.PendingWelcome{{ContactID: pmContact, UserID: "u-1"}}); err != nil {
					t.Fatal(err)
				}
				pmAwait(t, waiting)
			}

			// When an operator retries it.
			err = w.Retry(ctx, pmContact, domain.OperatorActed{Source: "127.0.0.1", Credential: "admin token"})

			// Then the mail is sent at once, or the retry refused with
			// nothing recorded.
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Retry: %v, want %v", err, tt.wantErr)
			}
			deadline := time.Now().Add(pmWait)
			for len(pmResults(t, pmAppended(t, store, pmContact, len(given)))) < len(tt.want) && time.Now().Before(deadline) {
				time.Sleep(time.Millisecond)
			}
			w.Stop()
			if got := pmResults(t, pmAppended(t, store, pmContact, len(given))); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("results\n%#v\nwant\n%#v", got, tt.want)
			}
			if tt.wantErr != nil && len(pmAppended(t, store, pmContact, len(given))) != 0 {
				t.Error("a refused retry recorded an event")
			}
		})
	}
}

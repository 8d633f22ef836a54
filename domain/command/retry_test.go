package command_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
)

// pmNever is a wait in which no time passes: only a wake ends it.
func pmNever(ctx context.Context, _ time.Time) bool {
	<-ctx.Done()
	return false
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
			cfg.Wait = pmNever
			r, err := command.NewPasswordReturner(cfg, crm, keys)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Stop()
			if tt.waiting {
				if err := r.Resume(ctx, []command.PendingReturn{{ContactID: pmContact, KeyID: "k1"}}); err != nil {
					t.Fatal(err)
				}
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

package command_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
)

// pmSetFields is one call of SetFields.
type pmSetFields struct {
	ID     domain.ContactID
	Fields map[string]string
}

// pmFieldWriter is the CRM's field writer: it answers each call with the
// next of errs (nil once they run out). With release set, each call first
// waits for it (or its ctx) after telling entered.
type pmFieldWriter struct {
	errs    []error
	entered chan struct{}
	release chan struct{}

	mu       sync.Mutex
	calls    []pmSetFields
	inFlight int
	maxIn    int
}

func (f *pmFieldWriter) SetFields(ctx context.Context, id domain.ContactID, fields map[string]string) error {
	f.mu.Lock()
	n := len(f.calls)
	f.calls = append(f.calls, pmSetFields{ID: id, Fields: maps.Clone(fields)})
	f.inFlight++
	f.maxIn = max(f.maxIn, f.inFlight)
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.inFlight--
		f.mu.Unlock()
	}()
	if f.entered != nil {
		f.entered <- struct{}{}
	}
	if f.release != nil {
		select {
		case <-f.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if n < len(f.errs) {
		return f.errs[n]
	}
	return nil
}

func (f *pmFieldWriter) snapshot() (calls []pmSetFields, maxInFlight int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls), f.maxIn
}

// pmKeys is the key store: a key's password is "secret-" and its id.
// Shred tells shredded.
type pmKeys struct {
	unsealErr error
	shredded  chan string
}

func pmPassword(keyID string) string { return "secret-" + keyID }

func (k *pmKeys) Unseal(_ context.Context, keyID string, sealed []byte) ([]byte, error) {
	if k.unsealErr != nil {
		return nil, k.unsealErr
	}
	if string(sealed) != "sealed-"+keyID {
		return nil, fmt.Errorf("sealed %q is not under key %s", sealed, keyID)
	}
	return []byte(pmPassword(keyID)), nil
}

func (k *pmKeys) Shred(_ context.Context, keyID string) error {
	if k.shredded != nil {
		k.shredded <- keyID
	}
	return nil
}

// pmIssued is a PasswordIssued for key keyID, to field "pw".
func pmIssued(keyID string) domain.PasswordIssued {
	return domain.PasswordIssued{KeyID: keyID, Sealed: []byte("sealed-" + keyID), Field: "pw"}
}

// pmWaitShred waits until keyID is shredded: the end of its return.
func pmWaitShred(t *testing.T, keys *pmKeys, keyID string) {
	t.Helper()
	deadline := time.After(pmWait)
	for {
		select {
		case got := <-keys.shredded:
			if got == keyID {
				return
			}
		case <-deadline:
			t.Fatalf("key %s was not shredded within %s", keyID, pmWait)
		}
	}
}

// pmWaitShreds waits until n keys are shredded.
func pmWaitShreds(t *testing.T, keys *pmKeys, n int) {
	t.Helper()
	deadline := time.After(pmWait)
	for i := range n {
		select {
		case <-keys.shredded:
		case <-deadline:
			t.Fatalf("%d of %d keys shredded within %s", i, n, pmWait)
		}
	}
}

// pmStoreDown is what pmFlakyStore's failing reads answer.
const pmStoreDown = "database is locked"

// pmFlakyStore fails its first failReads ReadStream calls with pmStoreDown.
// With read set, it tells it after each read.
type pmFlakyStore struct {
	domain.EventStore
	read      chan struct{}
	mu        sync.Mutex
	failReads int
}

func (s *pmFlakyStore) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	s.mu.Lock()
	fail := s.failReads > 0
	s.failReads--
	s.mu.Unlock()
	if fail {
		return nil, errors.New(pmStoreDown)
	}
	if s.read != nil {
		defer func() { s.read <- struct{}{} }()
	}
	return s.EventStore.ReadStream(ctx, stream)
}

func TestPasswordReturner_Handle(t *testing.T) {
	refused := pmTempError{msg: "funnelkit: 503 Service Unavailable", temp: true}
	badAuth := pmTempError{msg: "funnelkit: 401 Unauthorized", temp: false}
	at := func(d time.Duration) time.Time { return pmNow().Add(d) }
	tests := []struct {
		name string
		// given: the contact's stream (the first event is handled), the
		// CRM's answers, the key store and the attempt limit
		given       []domain.Event
		crm         []error
		unsealErr   error
		maxAttempts int
		// jitter is what the returner draws for each retry's jitter.
		jitter float64
		// then
		wantCalls    int
		want         []domain.Event
		wantOutcomes []string
	}{
		{
			name:  "the CRM accepts the password at once",
			given: []domain.Event{pmIssued("k1")}, wantCalls: 1,
			want:         []domain.Event{domain.PasswordReturned{KeyID: "k1", Field: "pw", Attempt: 1}},
			wantOutcomes: []string{"returned"},
		},
		{
			name:  "failures are retried with backoff, permanent-looking ones too",
			given: []domain.Event{pmIssued("k1")}, crm: []error{refused, badAuth}, wantCalls: 3,
			want: []domain.Event{
				domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 1, Error: refused.msg, NextAttemptAt: at(time.Second)},
				domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 2, Error: badAuth.msg, NextAttemptAt: at(2 * time.Second)},
				domain.PasswordReturned{KeyID: "k1", Field: "pw", Attempt: 3},
			},
			wantOutcomes: []string{"failed", "failed", "returned"},
		},
		{
			name:  "retries are jittered: between half the backoff and the backoff",
			given: []domain.Event{pmIssued("k1")}, crm: []error{refused, refused}, jitter: 0.5, wantCalls: 3,
			want: []domain.Event{
				domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 1, Error: refused.msg, NextAttemptAt: at(750 * time.Millisecond)},
				domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 2, Error: refused.msg, NextAttemptAt: at(1500 * time.Millisecond)},
				domain.PasswordReturned{KeyID: "k1", Field: "pw", Attempt: 3},
			},
			wantOutcomes: []string{"failed", "failed", "returned"},
		},
		{
			name:  "the last allowed attempt fails: given up",
			given: []domain.Event{pmIssued("k1")}, crm: []error{refused, refused}, maxAttempts: 2, wantCalls: 2,
			want: []domain.Event{
				domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 1, Error: refused.msg, NextAttemptAt: at(time.Second)},
				domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 2, Error: refused.msg, GaveUp: true},
			},
			wantOutcomes: []string{"failed", "gave_up"},
		},
		{
			name: "the stream, not memory, counts the attempts made",
			given: []domain.Event{pmIssued("k1"),
				domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 1, Error: refused.msg, NextAttemptAt: at(time.Second)}},
			crm: []error{refused}, maxAttempts: 2, wantCalls: 1,
			want:         []domain.Event{domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 2, Error: refused.msg, GaveUp: true}},
			wantOutcomes: []string{"gave_up"},
		},
		{
			name:      "already returned: nothing sent again, the key is shredded",
			given:     []domain.Event{pmIssued("k1"), domain.PasswordReturned{KeyID: "k1", Field: "pw", Attempt: 1}},
			wantCalls: 0,
		},
		{
			name: "already given up: nothing sent again",
			given: []domain.Event{pmIssued("k1"),
				domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 1, Error: refused.msg, GaveUp: true}},
			wantCalls: 0,
		},
		{
			name:      "a newer password replaced it: nothing sent",
			given:     []domain.Event{pmIssued("k1"), pmIssued("k2")},
			wantCalls: 0,
		},
		{
			name:  "the key cannot be opened",
			given: []domain.Event{pmIssued("k1")}, unsealErr: errors.New("key k1 shredded"), maxAttempts: 1, wantCalls: 0,
			want: []domain.Event{domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 1,
				Error: "unseal password: key k1 shredded", GaveUp: true}},
			wantOutcomes: []string{"gave_up"},
		},
		{
			name:  "the CRM echoes the password in its error: recorded without it",
			given: []domain.Event{pmIssued("k1")}, maxAttempts: 1, wantCalls: 1,
			crm: []error{fmt.Errorf("funnelkit: 400 Bad Request: {\"pw\":%q}", pmPassword("k1"))},
			want: []domain.Event{domain.PasswordReturnFailed{KeyID: "k1", Field: "pw", Attempt: 1,
				Error: `funnelkit: 400 Bad Request: {"pw":"[redacted]"}`, GaveUp: true}},
			wantOutcomes: []string{"gave_up"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			// Given these events in the contact's stream, and this CRM.
			store := pmNewStore(t)
			given := pmGiven(t, store, pmContact, tt.given...)
			crm := &pmFieldWriter{errs: tt.crm}
			keys := &pmKeys{unsealErr: tt.unsealErr, shredded: make(chan string, 16)}
			cps := &pmCheckpoints{}
			outcomes := &pmOutcomes{}
			log := &pmLog{}
			cfg := pmConfig(store, cps)
			cfg.MaxAttempts, cfg.OnResult, cfg.Log = tt.maxAttempts, outcomes.add, log.logger()
			cfg.Rand = func() float64 { return tt.jitter }
			r, err := command.NewPasswordReturner(cfg, crm, keys)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Stop()

			// When the first of them is handled.
			if err := r.Handle(ctx, given[0]); err != nil {
				t.Fatalf("Handle: %v", err)
			}
			pmWaitShred(t, keys, "k1")

			// Then the CRM got the password, these events were appended,
			// and the checkpoint is saved.
			calls, _ := crm.snapshot()
			if len(calls) != tt.wantCalls {
				t.Fatalf("SetFields called %d times, want %d: %+v", len(calls), tt.wantCalls, calls)
			}
			for _, c := range calls {
				if want := map[string]string{"pw": pmPassword("k1")}; c.ID != pmContact || !maps.Equal(c.Fields, want) {
					t.Errorf("SetFields(%d, %v), want SetFields(%d, %v)", c.ID, c.Fields, pmContact, want)
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
			if pos, _ := cps.saved(command.PasswordReturnName); pos != given[0].Position {
				t.Errorf("checkpoint saved at %d, want %d", pos, given[0].Position)
			}
			if strings.Contains(log.String(), pmPassword("k1")) {
				t.Errorf("the log holds the password:\n%s", log)
			}
		})
	}
}

func TestPasswordReturner_HandleOtherEvents(t *testing.T) {
	tests := []struct {
		name string
		// when
		rec domain.RecordedEvent
		// then
		wantErr bool
	}{
		{name: "another type", rec: domain.RecordedEvent{Position: 4, Stream: pmContact.Stream(), Type: domain.TypeUserCreated}},
		{name: "not a contact's stream", rec: domain.RecordedEvent{Position: 4, Stream: "tags", Type: domain.TypePasswordIssued}},
		{name: "undecodable", rec: domain.RecordedEvent{Position: 4, Stream: pmContact.Stream(), Type: domain.TypePasswordIssued,
			Data: []byte("{"), Metadata: []byte("{}")}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given a password returner.
			crm := &pmFieldWriter{}
			r, err := command.NewPasswordReturner(pmConfig(pmNewStore(t), &pmCheckpoints{}), crm, &pmKeys{})
			if err != nil {
				t.Fatal(err)
			}

			// When it handles an event that is not a contact's
			// PasswordIssued.
			err = r.Handle(context.Background(), tt.rec)
			r.Stop()

			// Then it calls nobody; only the checkpoint moves.
			if (err != nil) != tt.wantErr {
				t.Fatalf("Handle: %v, want error %v", err, tt.wantErr)
			}
			if calls, _ := crm.snapshot(); len(calls) != 0 {
				t.Errorf("SetFields called: %+v", calls)
			}
			if want := uint64(4); !tt.wantErr && r.Current() != want {
				t.Errorf("Current() = %d, want %d", r.Current(), want)
			}
		})
	}
}

func TestPasswordReturner_StoreFailureIsRetried(t *testing.T) {
	// Given a store whose first two reads fail.
	ctx := context.Background()
	store := &pmFlakyStore{EventStore: pmNewStore(t)}
	given := pmGiven(t, store, pmContact, pmIssued("k1"))
	store.failReads = 2
	keys := &pmKeys{shredded: make(chan string, 4)}
	log := &pmLog{}
	cfg := pmConfig(store, &pmCheckpoints{})
	cfg.Log = log.logger()
	r, err := command.NewPasswordReturner(cfg, &pmFieldWriter{}, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()

	// When the PasswordIssued is handled.
	if err := r.Handle(ctx, given[0]); err != nil {
		t.Fatal(err)
	}
	pmWaitShred(t, keys, "k1")

	// Then the return is tried again, and succeeds.
	want := []domain.Event{domain.PasswordReturned{KeyID: "k1", Field: "pw", Attempt: 1}}
	if got := pmResults(t, pmAppended(t, store, pmContact, len(given))); !reflect.DeepEqual(got, want) {
		t.Errorf("appended %#v, want %#v", got, want)
	}
	if n := strings.Count(log.String(), "password return interrupted; trying again"); n != 2 {
		t.Errorf("logged %d interruptions, want 2:\n%s", n, log)
	}
}

func TestPasswordReturner_StopThenResume(t *testing.T) {
	ctx := context.Background()
	// Given a return that fails and waits an hour before its next attempt.
	store := pmNewStore(t)
	given := pmGiven(t, store, pmContact, pmIssued("k1"))
	cps := &pmCheckpoints{}
	crm := &pmFieldWriter{errs: []error{errors.New("funnelkit: 502 Bad Gateway")}, entered: make(chan struct{}, 4)}
	cfg := pmConfig(store, cps)
	cfg.Retry, cfg.Now, cfg.Wait = domain.Backoff{Initial: time.Hour, Max: time.Hour}, time.Now, nil
	first, err := command.NewPasswordReturner(cfg, crm, &pmKeys{})
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Handle(ctx, given[0]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-crm.entered:
	case <-time.After(pmWait):
		t.Fatal("no attempt was made")
	}

	// When it is stopped.
	stopped := make(chan struct{})
	go func() { first.Stop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(pmWait):
		t.Fatal("Stop did not return: it waited for the retry")
	}

	// Then it takes no more events, and a new returner resumes the
	// pending return from the next attempt on.
	if err := first.Handle(ctx, given[0]); !errors.Is(err, context.Canceled) {
		t.Errorf("Handle after Stop: %v, want context.Canceled", err)
	}
	keys := &pmKeys{shredded: make(chan string, 4)}
	crm2 := &pmFieldWriter{}
	cfg.Retry, cfg.Now, cfg.Wait = domain.Backoff{}, pmNow, pmInstant
	second, err := command.NewPasswordReturner(cfg, crm2, keys)
	if err != nil {
		t.Fatal(err)
	}
	defer second.Stop()
	if err := second.Resume(ctx, []command.PendingReturn{{ContactID: pmContact, KeyID: "k1"}}); err != nil {
		t.Fatal(err)
	}
	pmWaitShred(t, keys, "k1")
	appended := pmAppended(t, store, pmContact, len(given))
	got := pmResults(t, appended)
	if len(got) == 0 {
		t.Fatal("nothing appended")
	}
	// Every attempt was claimed, the first returner's too (its failure
	// recorded before the stop, or not): the last attempt is the return.
	claims := 0
	for _, e := range appended {
		if _, ok := e.Event.(domain.PasswordReturnClaimed); ok {
			claims++
		}
	}
	want := domain.PasswordReturned{KeyID: "k1", Field: "pw", Attempt: claims}
	if last := got[len(got)-1]; !reflect.DeepEqual(last, want) {
		t.Errorf("last appended %#v, want %#v (all: %#v)", last, want, got)
	}
}

func TestPasswordReturner_Resume(t *testing.T) {
	tests := []struct {
		name string
		// given
		given []domain.Event
		// when
		pending []command.PendingReturn
		// then
		wantCalls int
	}{
		{name: "a pending return is made", given: []domain.Event{pmIssued("k1")},
			pending: []command.PendingReturn{{ContactID: pmContact, KeyID: "k1"}}, wantCalls: 1},
		{name: "a key the stream does not hold is ignored", given: []domain.Event{pmIssued("k1")},
			pending: []command.PendingReturn{{ContactID: pmContact, KeyID: "k9"}}},
		{name: "a contact without events is ignored",
			pending: []command.PendingReturn{{ContactID: pmContact + 1, KeyID: "k1"}}},
		{name: "nothing pending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given a contact's stream.
			ctx := context.Background()
			store := pmNewStore(t)
			pmGiven(t, store, pmContact, tt.given...)
			keys := &pmKeys{shredded: make(chan string, 4)}
			crm := &pmFieldWriter{}
			r, err := command.NewPasswordReturner(pmConfig(store, &pmCheckpoints{}), crm, keys)
			if err != nil {
				t.Fatal(err)
			}

			// When the returner resumes these returns.
			if err := r.Resume(ctx, tt.pending); err != nil {
				t.Fatal(err)
			}
			if tt.wantCalls > 0 {
				pmWaitShred(t, keys, "k1")
			}
			r.Stop()

			// Then it made exactly these calls.
			if calls, _ := crm.snapshot(); len(calls) != tt.wantCalls {
				t.Errorf("SetFields called %d times, want %d", len(calls), tt.wantCalls)
			}
		})
	}
}

func TestPasswordReturner_ResumeNamesTheContactOnAStoreError(t *testing.T) {
	// Given a store that cannot be read.
	store := &pmFlakyStore{EventStore: pmNewStore(t), failReads: 1}
	r, err := command.NewPasswordReturner(pmConfig(store, &pmCheckpoints{}), &pmFieldWriter{}, &pmKeys{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Stop()

	// When a return is resumed.
	err = r.Resume(context.Background(), []command.PendingReturn{{ContactID: pmContact, KeyID: "k1"}})

	// Then the error names the contact.
	if err == nil || !strings.Contains(err.Error(), "resume password return of contact 7: database is locked") {
		t.Errorf("Resume: %v, want the contact named", err)
	}
}

func TestPasswordReturner_Concurrency(t *testing.T) {
	tests := []struct {
		name string
		// given
		concurrency int
		// then
		wantInFlight int
	}{
		{name: "unset takes the default", concurrency: 0, wantInFlight: 4},
		{name: "one at a time", concurrency: 1, wantInFlight: 1},
		{name: "a set value below the default is honoured", concurrency: 2, wantInFlight: 2},
		{name: "a set value above the default is honoured", concurrency: 5, wantInFlight: 5},
	}
	const contacts = 6
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			// Given passwords issued to six contacts, and a CRM that holds
			// each call until released.
			store := &pmFlakyStore{EventStore: pmNewStore(t)}
			var recs []domain.RecordedEvent
			for i := range contacts {
				recs = append(recs, pmGiven(t, store, domain.ContactID(i+1), pmIssued(fmt.Sprintf("k%d", i+1)))...)
			}
			store.read = make(chan struct{}, contacts)
			crm := &pmFieldWriter{entered: make(chan struct{}, contacts), release: make(chan struct{})}
			keys := &pmKeys{shredded: make(chan string, contacts)}
			cfg := pmConfig(store, &pmCheckpoints{})
			cfg.Concurrency = tt.concurrency
			r, err := command.NewPasswordReturner(cfg, crm, keys)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Stop()

			// When they are all handled.
			for _, rec := range recs {
				if err := r.Handle(ctx, rec); err != nil {
					t.Fatal(err)
				}
			}

			// Then exactly the configured number of calls run at once: once
			// every return has read its stream (and waits for its turn),
			// that many are in the CRM.
			for range contacts {
				select {
				case <-store.read:
				case <-time.After(pmWait):
					t.Fatal("not every return read its stream")
				}
			}
			for range tt.wantInFlight {
				select {
				case <-crm.entered:
				case <-time.After(pmWait):
					t.Fatalf("fewer than %d calls in flight", tt.wantInFlight)
				}
			}
			close(crm.release)
			pmWaitShreds(t, keys, contacts)
			if calls, maxIn := crm.snapshot(); len(calls) != contacts || maxIn != tt.wantInFlight {
				t.Errorf("%d calls, at most %d at once; want %d, at most %d", len(calls), maxIn, contacts, tt.wantInFlight)
			}
		})
	}
}

func TestPasswordReturner_OwnClaimFromBeforeARestart_TakenOverAtOnce(t *testing.T) {
	for _, tt := range []struct {
		name      string
		claimedBy string
		wantCalls int
	}{
		{"this node's claim: taken over", "node-a", 1},
		{"another node's claim: waited out", "node-b", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			// Given a password whose attempt 1 is claimed for an hour, by
			// this node before a restart or by another node
			store := pmNewStore(t)
			pmGiven(t, store, pmContact, pmIssued("k1"),
				domain.PasswordReturnClaimed{KeyID: "k1", Field: "pw", Attempt: 1, Until: pmNow().Add(time.Hour), Node: tt.claimedBy})
			crm := &pmFieldWriter{}
			keys := &pmKeys{shredded: make(chan string, 4)}
			cfg := pmConfig(store, &pmCheckpoints{})
			cfg.Node = "node-a"
			waits := make(chan time.Time, 4)
			cfg.Wait = func(ctx context.Context, until time.Time) bool {
				waits <- until
				<-ctx.Done() // the claim holds: wait until stopped
				return false
			}
			r, err := command.NewPasswordReturner(cfg, crm, keys)
			if err != nil {
				t.Fatal(err)
			}

			// When the node resumes the return
			if err := r.Resume(context.Background(), []command.PendingReturn{{ContactID: pmContact, KeyID: "k1"}}); err != nil {
				t.Fatal(err)
			}

			// Then it makes attempt 2 at once, or waits for the claim's end
			if tt.wantCalls == 1 {
				pmWaitShred(t, keys, "k1")
				got := pmResults(t, pmAppended(t, store, pmContact, 2))
				if want := []domain.Event{domain.PasswordReturned{KeyID: "k1", Field: "pw", Attempt: 2}}; !reflect.DeepEqual(got, want) {
					t.Errorf("appended %#v, want %#v", got, want)
				}
			} else {
				select {
				case until := <-waits:
					if !until.Equal(pmNow().Add(time.Hour)) {
						t.Errorf("waits until %s, want the claim's end", until)
					}
				case <-time.After(pmWait):
					t.Fatal("no wait")
				}
			}
			r.Stop()
			if calls, _ := crm.snapshot(); len(calls) != tt.wantCalls {
				t.Errorf("SetFields called %d times, want %d", len(calls), tt.wantCalls)
			}
		})
	}
}

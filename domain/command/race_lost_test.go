package command

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/memory"
)

// racingStore lets another writer win the first append at an exact
// version to a stream: before it, it appends winner there itself.
type racingStore struct {
	domain.EventStore
	mu     sync.Mutex
	winner domain.Event
}

func (s *racingStore) Append(ctx context.Context, stream string, expected domain.ExpectedVersion, events ...domain.NewEvent) (domain.AppendResult, error) {
	s.mu.Lock()
	w := s.winner
	if expected == domain.AnyVersion() {
		w = nil
	} else {
		s.winner = nil
	}
	s.mu.Unlock()
	if w != nil {
		raw, err := domain.Encode(domain.Envelope{Event: w, OccurredAt: t0})
		if err != nil {
			return domain.AppendResult{}, err
		}
		if _, err := s.EventStore.Append(ctx, stream, domain.AnyVersion(), raw); err != nil {
			return domain.AppendResult{}, fmt.Errorf("the other writer: %w", err)
		}
	}
	return s.EventStore.Append(ctx, stream, expected, events...)
}

// raceKeys is a node's key store over fakeSecrets: it holds the keys
// sealed there.
type raceKeys struct{ s *fakeSecrets }

func (k raceKeys) Unseal(_ context.Context, keyID string, _ []byte) ([]byte, error) {
	k.s.mu.Lock()
	defer k.s.mu.Unlock()
	return []byte(k.s.keys[keyID]), nil
}

func (k raceKeys) Shred(ctx context.Context, keyID string) error { return k.s.Shred(ctx, keyID) }

func (k raceKeys) Has(_ context.Context, keyID string) (bool, error) {
	k.s.mu.Lock()
	defer k.s.mu.Unlock()
	_, ok := k.s.keys[keyID]
	return ok, nil
}

type nopFieldWriter struct{}

func (nopFieldWriter) SetFields(context.Context, domain.ContactID, map[string]string) error {
	return nil
}

type nopMailer struct{}

func (nopMailer) SendWelcome(context.Context, string, string, string) (string, error) {
	return "outbox", nil
}

func TestOnRaceLost_CountsTheAppendsLostToAnotherNodesClaimOrReplacement(t *testing.T) {
	const id = domain.ContactID(7)
	created := domain.UserCreated{UserID: "u-7", ContactID: id, Login: "ann", Email: "ann@example.com", Role: "subscriber", WelcomeEmail: true}
	issued := domain.PasswordIssued{KeyID: "k1", Sealed: []byte("sealed:k1"), Field: "pw"}
	expiredClaim := domain.PasswordReturnClaimed{KeyID: "k1", Field: "pw", Attempt: 1, Until: t0.Add(time.Minute), Node: "node-a"}
	unrelated := domain.WebhookReceived{WebhookID: "wh-other", Action: domain.ActionUpdate, ContactID: id.String(), Params: map[string]string{}, Method: "POST", ReceivedAt: t0}
	tests := []struct {
		name string
		// given: the stream, whether this node holds the password's key
		// (the welcomer's cases have no password), and the event another
		// writer appends just before this node's first append at a version
		given   []domain.Event
		haveKey bool
		winner  domain.Event
		// then
		wantRaces int32
	}{
		{"a mail's claim lost to another node's claim", []domain.Event{created}, false,
			domain.WelcomeEmailClaimed{To: "ann@example.com", Attempt: 1, MessageID: "<m@x>", Until: t0.Add(time.Minute), Node: "node-a"}, 1},
		{"a mail's claim lost to a webhook", []domain.Event{created}, false, unrelated, 0},
		{"a return's claim lost to another node's claim", []domain.Event{issued}, true,
			domain.PasswordReturnClaimed{KeyID: "k1", Field: "pw", Attempt: 1, Until: t0.Add(time.Minute), Node: "node-a"}, 1},
		{"a return's claim lost to a webhook", []domain.Event{issued}, true, unrelated, 0},
		{"a replacement lost to another node's replacement", []domain.Event{issued}, false,
			domain.PasswordReplaced{OldKeyID: "k1", KeyID: "pw-7-other", Sealed: []byte("x"), Field: "pw", PasswordHash: "h"}, 1},
		{"a replacement past an expired claim lost to a webhook", []domain.Event{issued, expiredClaim}, false, unrelated, 0},
		{"a replacement past an expired claim lost to the issuer's next claim", []domain.Event{issued, expiredClaim}, false,
			domain.PasswordReturnClaimed{KeyID: "k1", Field: "pw", Attempt: 2, Until: t0.Add(time.Hour), Node: "node-a"}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			mem := memory.New()
			defer mem.Close()
			for _, e := range tt.given {
				raw, err := domain.Encode(domain.Envelope{Event: e, OccurredAt: t0, WebhookID: "wh-1"})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := mem.Append(ctx, id.Stream(), domain.AnyVersion(), raw); err != nil {
					t.Fatal(err)
				}
			}
			recs, err := mem.ReadStream(ctx, id.Stream())
			if err != nil {
				t.Fatal(err)
			}
			store := &racingStore{EventStore: mem, winner: tt.winner}
			secrets := &fakeSecrets{keys: map[string]string{}}
			if tt.haveKey {
				secrets.keys["k1"] = "pw1"
			}
			var races atomic.Int32
			now := t0.Add(10 * time.Minute)
			cfg := ProcessManagerConfig{Store: store, Checkpoints: &memCheckpoints{pos: map[string]uint64{}}, Node: "node-b",
				Now: func() time.Time { return now }, Wait: func(ctx context.Context, _ time.Time) bool { return ctx.Err() == nil },
				Secrets: secrets, TakeoverAfter: time.Second, OnRaceLost: func() { races.Add(1) }}

			// When this node's process manager acts on the first event and
			// settles it
			settled := func() bool { return true }
			var stop func()
			if _, ok := tt.given[0].(domain.UserCreated); ok {
				w, err := NewWelcomer(cfg, nopMailer{})
				if err != nil {
					t.Fatal(err)
				}
				if err := w.Handle(ctx, recs[0]); err != nil {
					t.Fatal(err)
				}
				settled = func() bool { w.flight.Lock(); defer w.flight.Unlock(); return len(w.watching) == 0 }
				stop = w.Stop
			} else {
				r, err := NewPasswordReturner(cfg, nopFieldWriter{}, raceKeys{s: secrets})
				if err != nil {
					t.Fatal(err)
				}
				if err := r.Handle(ctx, recs[0]); err != nil {
					t.Fatal(err)
				}
				settled = func() bool { r.flight.Lock(); defer r.flight.Unlock(); return len(r.inflight) == 0 }
				stop = r.Stop
			}
			eventually(t, "the work settled", settled)
			stop()

			// Then OnRaceLost was told of each append lost to another
			// node's claim or replacement, and of no other
			if got := races.Load(); got != tt.wantRaces {
				dump(t, mem, id.Stream())
				t.Fatalf("OnRaceLost called %d times, want %d", got, tt.wantRaces)
			}
		})
	}
}

package command

import (
	"context"
	"errors"
	"path/filepath"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// countingStore counts the events each kind of read returns.
type countingStore struct {
	domain.EventStore
	mu         sync.Mutex
	whole      int // events returned by ReadStream of contact streams
	from       int // events returned by ReadStreamFrom
	wholeReads int
}

func (s *countingStore) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	recs, err := s.EventStore.ReadStream(ctx, stream)
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(stream) > 8 && stream[:8] == "contact-" {
		s.whole += len(recs)
		s.wholeReads++
	}
	return recs, err
}

func (s *countingStore) ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error) {
	recs, err := s.EventStore.ReadStreamFrom(ctx, stream, after)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.from += len(recs)
	return recs, err
}

func (s *countingStore) counts() (whole, wholeReads, from int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.whole, s.wholeReads, s.from
}

// sqliteWorld is a world on the real embedded store in a temporary
// directory, its reads counted.
func sqliteWorld(t *testing.T, cacheSize int) (*world, *countingStore) {
	t.Helper()
	w := newWorld(t, testPolicy())
	store, err := eventstore.Open(context.Background(), filepath.Join(t.TempDir(), "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close() })
	counting := &countingStore{EventStore: store}
	w.log = store
	w.proc.store, w.proc.contacts = counting, NewContacts(counting, cacheSize)
	return w, counting
}

// fullFold is the contact's state folded from its whole stream, with the
// closed webhooks left out of Webhooks as the cache keeps it.
func fullFold(t *testing.T, store domain.EventStore, id domain.ContactID) *domain.ContactState {
	t.Helper()
	recs, err := store.ReadStream(context.Background(), id.Stream())
	if err != nil {
		t.Fatal(err)
	}
	s, err := domain.LoadContact(id, recs)
	if err != nil {
		t.Fatal(err)
	}
	for k, closed := range s.Webhooks {
		if closed {
			delete(s.Webhooks, k)
		}
	}
	return s
}

func TestContacts_SecondWebhook_ReadsOnlyTheEventsAfterTheCachedState(t *testing.T) {
	// Given a contact with a user and a long history, on the real store
	w, counting := sqliteWorld(t, 0)
	w.user(7, "u7", "ada@example.com")
	for i := range 200 {
		w.given(domain.ContactID(7).Stream(), domain.WebhookReceived{WebhookID: "old" + strconv.Itoa(i), Action: "update_tags", ContactID: "7"},
			domain.WebhookIgnored{WebhookID: "old" + strconv.Itoa(i), Action: "update_tags", Reason: "earlier"})
	}
	w.crm.set(contact(7, "ada@example.com", domain.Tag{ID: 1, Name: "VIP"}))
	// When two webhooks are processed one after the other
	w.webhook(7, domain.ActionUpdateTags, nil)
	if _, ok, err := w.proc.Next(context.Background(), 7); err != nil || !ok {
		t.Fatalf("first webhook: %v %v", ok, err)
	}
	whole1, reads1, _ := counting.counts()
	w.crm.set(contact(7, "ada@example.com"))
	w.webhook(7, domain.ActionUpdateTags, nil)
	out, ok, err := w.proc.Next(context.Background(), 7)
	if err != nil || !ok || out.Status != StatusProcessed {
		t.Fatalf("second webhook: %+v %v %v", out, ok, err)
	}
	// Then the stream was read whole once; the second webhook read only
	// what came after the first one's outcome.
	whole2, reads2, from := counting.counts()
	if reads1 != 1 || reads2 != reads1 || whole2 != whole1 {
		t.Errorf("whole reads: %d (%d events) after the first, %d (%d events) after the second; want one", reads1, whole1, reads2, whole2)
	}
	if from == 0 || from > 10 {
		t.Errorf("the second webhook read %d events after the cached state; want its own few", from)
	}
	if got, want := w.state(7), fullFold(t, w.log, 7); !reflect.DeepEqual(got, want) {
		t.Errorf("cached state\n%+v\nwant the full fold\n%+v", got, want)
	}
}

func TestContacts_DecisionThatIsNotAppended_LeavesTheCacheAsItWas(t *testing.T) {
	// Given a cached contact with a user and an open webhook
	w, _ := sqliteWorld(t, 0)
	w.user(7, "u7", "ada@example.com", domain.Tag{ID: 1, Name: "VIP"})
	wh := w.webhook(7, domain.ActionUpdate, nil)
	before := w.state(7)
	// When a decision changes everything it was given and then fails
	_, err := w.proc.contacts.Update(context.Background(), 7, func(s *domain.ContactState) ([]domain.Envelope, error) {
		s.User.Meta["first_name"] = "Mallory"
		s.User.Email = "mallory@example.com"
		s.Pending[0].Attempts = 99
		s.Webhooks[wh] = true
		s.Password = &domain.PasswordReturn{KeyID: "k"}
		s.Version++
		return nil, errBoom
	})
	if !errors.Is(err, errBoom) {
		t.Fatalf("Update = %v, want errBoom", err)
	}
	// Then the next load sees the contact as stored
	if got := w.state(7); !reflect.DeepEqual(got, before) {
		t.Errorf("after a failed decision the state is\n%+v\nwant\n%+v", got, before)
	}
}

func TestContacts_ConflictingAppend_ReloadsFromTheCacheAndTheEventsAfter(t *testing.T) {
	// Given a cached contact, and another writer that appends first
	w, counting := sqliteWorld(t, 0)
	w.user(7, "u7", "ada@example.com")
	w.crm.set(contact(7, "ada@example.com", domain.Tag{ID: 1, Name: "VIP"}))
	w.webhook(7, domain.ActionUpdateTags, nil)
	w.state(7)
	racing := &conflictingStore{EventStore: counting, stream: domain.ContactID(7).Stream(), n: 1}
	w.proc.store, w.proc.contacts.store = racing, racing
	// When the webhook is processed
	out, ok, err := w.proc.Next(context.Background(), 7)
	if err != nil || !ok || out.Status != StatusProcessed {
		t.Fatalf("Next = %+v %v %v", out, ok, err)
	}
	// Then it was decided again on the state with the other writer's
	// event, without reading the stream whole again
	if _, reads, _ := counting.counts(); reads != 1 {
		t.Errorf("the stream was read whole %d times, want once", reads)
	}
	if got, want := w.state(7), fullFold(t, w.log, 7); !reflect.DeepEqual(got, want) {
		t.Errorf("state\n%+v\nwant\n%+v", got, want)
	}
}

func TestContacts_BoundedCache_EvictsTheLeastRecentlyUsed(t *testing.T) {
	// Given a cache of two contacts
	w, counting := sqliteWorld(t, 2)
	for id := domain.ContactID(1); id <= 3; id++ {
		w.user(id, "u"+id.String(), "c"+id.String()+"@example.com")
	}
	// When three contacts are loaded, then the first again
	for _, id := range []domain.ContactID{1, 2, 3, 1} {
		if got, want := w.state(id), fullFold(t, w.log, id); !reflect.DeepEqual(got, want) {
			t.Errorf("contact %d: %+v, want %+v", id, got, want)
		}
	}
	// Then two are kept, and the first was read whole again
	if n := w.proc.contacts.cache.len(); n != 2 {
		t.Errorf("cache holds %d contacts, want 2", n)
	}
	if _, reads, _ := counting.counts(); reads != 4 {
		t.Errorf("%d whole reads, want 4 (the evicted contact again)", reads)
	}
}

func TestContacts_MixedWebhooks_CachedStateEqualsTheFullFold(t *testing.T) {
	// Given contacts with webhooks of every kind, retries and failures
	w, _ := sqliteWorld(t, 0)
	vip, trial := domain.Tag{ID: 1, Name: "VIP"}, domain.Tag{ID: 2, Name: "Trial"}
	w.crm.tags = []domain.Tag{vip, trial}
	ctx := context.Background()
	for id := domain.ContactID(1); id <= 3; id++ {
		w.crm.set(contact(id, "c"+id.String()+"@example.com", vip))
		steps := []func(){
			func() { w.webhook(id, domain.ActionUpdateTags, nil) }, // no user yet: ignored
			func() { w.webhook(id, domain.ActionAdd, nil) },
			func() { w.crm.set(contact(id, "c"+id.String()+"@example.com", trial)) },
			func() { w.webhook(id, domain.ActionUpdate, map[string]string{"role": "editor"}) },
			func() { w.webhook(id, domain.ActionUpdateTags, map[string]string{"tags": "nope"}) }, // fails
			func() { w.crm.contactErr = errCRMDown },
			func() { w.webhook(id, domain.ActionUpdate, nil) }, // retrying
			func() { w.crm.contactErr = nil; w.setNow(w.clock().Add(time.Hour)) },
			func() { w.webhook(id, domain.ActionUpdateTags, map[string]string{"tags": "1,2"}) },
		}
		for _, step := range steps {
			step()
			for range 5 {
				out, ok, err := w.proc.Next(ctx, id)
				if err != nil {
					t.Fatal(err)
				}
				if !ok || out.Status == StatusRetrying {
					break
				}
			}
			if got, want := w.state(id), fullFold(t, w.log, id); !reflect.DeepEqual(got, want) {
				t.Fatalf("contact %d: cached state\n%+v\nwant the full fold\n%+v", id, got, want)
			}
		}
		if s := w.state(id); len(s.Pending) != 0 || s.User == nil || s.User.Role != "editor" {
			t.Errorf("contact %d ends as %+v, want a user with role editor and nothing open", id, s)
		}
	}
}

func TestContacts_SettledUser_LaterWebhooksReadNoReservation(t *testing.T) {
	// Given a contact whose user's reservations were checked once
	w, _ := sqliteWorld(t, 0)
	reads := &streamReads{EventStore: w.proc.store}
	w.proc.store, w.proc.contacts.store = reads, reads
	w.user(7, "u7", "ada@example.com")
	w.crm.set(contact(7, "ada@example.com", vip))
	w.webhook(7, domain.ActionUpdateTags, nil)
	if _, _, err := w.proc.Next(context.Background(), 7); err != nil {
		t.Fatal(err)
	}
	before := reads.of(domain.EmailStream("ada@example.com"))
	// When more webhooks come
	for range 3 {
		w.webhook(7, domain.ActionUpdate, nil)
		if out, _, err := w.proc.Next(context.Background(), 7); err != nil || out.Status != StatusProcessed {
			t.Fatalf("%+v %v", out, err)
		}
	}
	// Then none reads the reservations again
	if n := reads.of(domain.EmailStream("ada@example.com")) - before; n != 0 {
		t.Errorf("the email reservation was read %d more times", n)
	}
}

func TestContacts_UserMovedAwayAndBack_IsSettledAgain(t *testing.T) {
	// Given contact 7's user, checked settled, then moved to contact 8
	w := newWorld(t, testPolicy())
	ctx := context.Background()
	w.user(7, "u7", "ada@example.com")
	w.crm.set(contact(7, "ada@example.com", vip))
	w.webhook(7, domain.ActionUpdateTags, nil)
	if out, _, err := w.proc.Next(ctx, 7); err != nil || out.Status != StatusProcessed {
		t.Fatalf("%+v %v", out, err)
	}
	w.crm.set(contact(8, "ada@example.com", vip))
	w.webhook(8, domain.ActionAdd, nil)
	if out, _, err := w.proc.Next(ctx, 8); err != nil || out.Status != StatusProcessed || w.state(7).User != nil {
		t.Fatalf("link to 8: %+v %v, 7 has %+v", out, err, w.state(7).User)
	}
	// When contact 7 takes it back by email
	w.webhook(7, domain.ActionUpdate, map[string]string{"email": "ada@example.com"})
	out, _, err := w.proc.Next(ctx, 7)
	if err != nil || out.Status != StatusProcessed {
		t.Fatalf("link back: %+v %v", out, err)
	}
	// Then its reservations follow it back, and 8 has no user
	for _, stream := range []string{domain.EmailStream("ada@example.com"), domain.LoginStream("ada@example.com")} {
		r, err := w.proc.readReservation(ctx, stream)
		if err != nil || r.contact != 7 || r.userID != "u7" {
			t.Errorf("%s held by %+v (%v), want contact 7's u7", stream, r, err)
		}
	}
	if u := w.state(8).User; u != nil {
		t.Errorf("contact 8 still has %+v", u)
	}
}

// streamReads counts the reads of each stream.
type streamReads struct {
	domain.EventStore
	mu sync.Mutex
	n  map[string]int
}

func (s *streamReads) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	s.mu.Lock()
	if s.n == nil {
		s.n = map[string]int{}
	}
	s.n[stream]++
	s.mu.Unlock()
	return s.EventStore.ReadStream(ctx, stream)
}

func (s *streamReads) of(stream string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n[stream]
}

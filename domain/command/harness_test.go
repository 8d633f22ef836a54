package command

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/memory"
)

// The use cases are tested against the real in-memory event store
// (eventstore/memory passes the same conformance suite as the embedded
// store) and fakes of the outside world: the CRM and the key store.

// crmError is a CRM failure as the FunnelKit adapter reports one.
type crmError struct {
	msg       string
	temporary bool
}

func (e *crmError) Error() string   { return e.msg }
func (e *crmError) Temporary() bool { return e.temporary }

var (
	errCRMDown     = &crmError{msg: "FunnelKit did not answer within 10s", temporary: true}
	errCRMNotFound = &crmError{msg: "FunnelKit answered 404: no such contact"}
)

// fakeCRM answers from its contacts and tags, or with the error set.
type fakeCRM struct {
	mu         sync.Mutex
	contacts   map[domain.ContactID]domain.CRMContact
	tags       []domain.Tag
	contactErr error
	tagsErr    error
	reads      int
}

func (f *fakeCRM) Contact(_ context.Context, id domain.ContactID) (domain.CRMContact, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if f.contactErr != nil {
		return domain.CRMContact{}, f.contactErr
	}
	c, ok := f.contacts[id]
	if !ok {
		return domain.CRMContact{}, errCRMNotFound
	}
	return c, nil
}

func (f *fakeCRM) Tags(context.Context) ([]domain.Tag, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tags, f.tagsErr
}

func (f *fakeCRM) set(c domain.CRMContact) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.contacts[c.ID] = c
}

// fakeSecrets makes predictable passwords and remembers its keys.
type fakeSecrets struct {
	mu       sync.Mutex
	n        int
	keys     map[string]string
	shredded []string
	sealErr  error
}

func (f *fakeSecrets) NewPassword() (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	return "generated-" + strconv.Itoa(f.n), nil
}

func (f *fakeSecrets) Hash(p string) (string, error) { return "hash(" + p + ")", nil }

func (f *fakeSecrets) Seal(_ context.Context, keyID, password string) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.sealErr != nil {
		return nil, f.sealErr
	}
	f.keys[keyID] = password
	return []byte("sealed:" + keyID), nil
}

func (f *fakeSecrets) Shred(_ context.Context, keyID string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.keys, keyID)
	f.shredded = append(f.shredded, keyID)
	return nil
}

// world is one test's store, CRM, secrets and use case.
type world struct {
	t     *testing.T
	store *memory.Store
	// log is where given, length and events read and write: store,
	// unless a test puts the world on another one.
	log     domain.EventStore
	crm     *fakeCRM
	secrets *fakeSecrets
	proc    *ProcessWebhook
	mu      sync.Mutex // guards now, ids and jitter
	now     time.Time
	ids     int
	// jitter is what the use case draws for a retry's jitter (0: none).
	jitter float64
	hooks  int
}

// setNow moves the use case's clock.
func (w *world) setNow(t time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.now = t
}

func (w *world) clock() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.now
}

var t0 = time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)

func testPolicy() domain.Policy {
	return domain.Policy{
		DefaultRole: "subscriber", AllowedRoles: []domain.Role{"subscriber", "customer", "editor"},
		FieldMap: domain.DefaultFieldMap(), PasswordField: "7",
	}
}

func newWorld(t *testing.T, policy domain.Policy) *world {
	t.Helper()
	mem := memory.New()
	w := &world{t: t, store: mem, log: mem, now: t0,
		crm:     &fakeCRM{contacts: map[domain.ContactID]domain.CRMContact{}},
		secrets: &fakeSecrets{keys: map[string]string{}}}
	t.Cleanup(func() { _ = w.store.Close() })
	proc, err := NewProcessWebhook(ProcessWebhookConfig{
		Policy: policy, Store: w.store, CRM: w.crm, Secrets: w.secrets,
		NewID: func() string {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.ids++
			return "id" + strconv.Itoa(w.ids)
		},
		Now:   w.clock,
		Retry: domain.Backoff{Initial: time.Second, Max: time.Minute},
		Rand: func() float64 {
			w.mu.Lock()
			defer w.mu.Unlock()
			return w.jitter
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	w.proc = proc
	return w
}

// given appends events to a stream as if earlier webhooks had.
func (w *world) given(stream string, events ...domain.Event) {
	w.t.Helper()
	envs := make([]domain.Envelope, 0, len(events))
	for _, e := range events {
		envs = append(envs, domain.Envelope{Event: e, OccurredAt: w.clock(), WebhookID: "earlier"})
	}
	raw, err := domain.EncodeAll(envs)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := w.log.Append(context.Background(), stream, domain.AnyVersion(), raw...); err != nil {
		w.t.Fatal(err)
	}
}

// webhook records a webhook for contact id as the http port does and
// returns its id.
func (w *world) webhook(id domain.ContactID, action string, params map[string]string) string {
	w.t.Helper()
	w.hooks++
	wh := "wh" + strconv.Itoa(w.hooks)
	w.given(id.Stream(), domain.WebhookReceived{WebhookID: wh, Action: action, ContactID: id.String(), Params: params, Method: "POST", ReceivedAt: w.clock()})
	return wh
}

// user gives contact id a user with email and login, its reservations
// included, as an earlier add would have.
func (w *world) user(id domain.ContactID, userID, email string, tags ...domain.Tag) {
	w.t.Helper()
	w.given(id.Stream(), domain.UserCreated{UserID: userID, ContactID: id, Login: email, Email: email, Role: "subscriber", PasswordHash: "hash(old)"})
	if tags != nil {
		w.given(id.Stream(), domain.TagsUpdated{Tags: tags, Added: tags})
	}
	w.given(domain.EmailStream(email), domain.EmailReserved{Email: email, ContactID: id, UserID: userID})
	w.given(domain.LoginStream(email), domain.LoginReserved{Login: email, ContactID: id, UserID: userID})
}

// length is how many events stream has.
func (w *world) length(stream string) int {
	w.t.Helper()
	recs, err := w.log.ReadStream(context.Background(), stream)
	if err != nil {
		w.t.Fatal(err)
	}
	return len(recs)
}

// events decodes stream from event number from+1 on.
func (w *world) events(stream string, from int) []domain.Event {
	w.t.Helper()
	recs, err := w.log.ReadStream(context.Background(), stream)
	if err != nil {
		w.t.Fatal(err)
	}
	var out []domain.Event
	for _, r := range recs[min(from, len(recs)):] {
		env, err := domain.Decode(r)
		if err != nil {
			w.t.Fatal(err)
		}
		out = append(out, env.Event)
	}
	return out
}

func (w *world) state(id domain.ContactID) *domain.ContactState {
	w.t.Helper()
	s, err := w.proc.contacts.Load(context.Background(), id)
	if err != nil {
		w.t.Fatal(err)
	}
	return s
}

func types(events []domain.Event) []string {
	out := make([]string, 0, len(events))
	for _, e := range events {
		out = append(out, e.EventType())
	}
	return out
}

func find[E domain.Event](t *testing.T, events []domain.Event) E {
	t.Helper()
	for _, e := range events {
		if v, ok := e.(E); ok {
			return v
		}
	}
	var zero E
	t.Fatalf("no %T among %v", zero, types(events))
	return zero
}

func contact(id domain.ContactID, email string, tags ...domain.Tag) domain.CRMContact {
	return domain.CRMContact{ID: id, Email: email, Fields: map[string]string{"f_name": "Ada", "contact_no": "555-1"}, Tags: tags}
}

// conflictingStore lets another writer win the next n appends to a stream:
// before each, it appends a harmless event there itself.
type conflictingStore struct {
	domain.EventStore
	mu     sync.Mutex
	stream string
	n      int
}

func (s *conflictingStore) Append(ctx context.Context, stream string, expected domain.ExpectedVersion, events ...domain.NewEvent) (domain.AppendResult, error) {
	s.mu.Lock()
	race := stream == s.stream && s.n > 0 && len(events) > 0
	if race {
		s.n--
	}
	s.mu.Unlock()
	if race {
		raw, err := domain.Encode(domain.Envelope{Event: domain.WelcomeEmailSent{}, OccurredAt: t0})
		if err != nil {
			return domain.AppendResult{}, err
		}
		if _, err := s.EventStore.Append(ctx, stream, domain.AnyVersion(), raw); err != nil {
			return domain.AppendResult{}, fmt.Errorf("the other writer: %w", err)
		}
	}
	return s.EventStore.Append(ctx, stream, expected, events...)
}

var errBoom = errors.New("disk on fire")

// failingStore fails every read of one stream.
type failingStore struct {
	domain.EventStore
	stream string
}

func (s failingStore) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	if stream == s.stream {
		return nil, errBoom
	}
	return s.EventStore.ReadStream(ctx, stream)
}

func (s failingStore) ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error) {
	if stream == s.stream {
		return nil, errBoom
	}
	return s.EventStore.ReadStreamFrom(ctx, stream, after)
}

package command

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

// waitFor is how long a test waits for the dispatcher; nothing should come
// near it.
const waitFor = 10 * time.Second

func newDispatcher(t *testing.T, w *world, cfg DispatcherConfig) *Dispatcher {
	t.Helper()
	d, err := NewDispatcher(w.proc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close(context.Background()) })
	return d
}

// eventually waits for cond, checking every millisecond, up to waitFor.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func await(t *testing.T, ch <-chan Outcome) Outcome {
	t.Helper()
	select {
	case out := <-ch:
		return out
	case <-time.After(waitFor):
		t.Fatal("no outcome")
		return Outcome{}
	}
}

func TestDispatcher_ProcessesEachContactsWebhooksInOrder(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.setNow(time.Now())
	d := newDispatcher(t, w, DispatcherConfig{Concurrency: 2})
	const contacts, each = 4, 3
	var chans []<-chan Outcome
	var order []string
	for c := domain.ContactID(1); c <= contacts; c++ {
		w.crm.set(contact(c, "user"+c.String()+"@example.com", vip))
		for range each {
			action := domain.ActionUpdateTags
			if len(order)%each == 0 {
				action = domain.ActionAdd
			}
			wh := w.webhook(c, action, nil)
			order = append(order, wh)
			chans = append(chans, d.Await(wh))
		}
		if err := d.Submit(c); err != nil {
			t.Fatal(err)
		}
	}
	for i, ch := range chans {
		out := await(t, ch)
		if out.WebhookID != order[i] || out.Status != StatusProcessed {
			t.Errorf("outcome %+v, want %s processed", out, order[i])
		}
	}
	for c := domain.ContactID(1); c <= contacts; c++ {
		var closed []string
		for _, e := range w.events(c.Stream(), 0) {
			if p, ok := e.(domain.WebhookProcessed); ok {
				closed = append(closed, p.WebhookID)
			}
		}
		want := order[(c-1)*each : c*each]
		if strings.Join(closed, ",") != strings.Join(want, ",") {
			t.Errorf("contact %d closed %v, want %v in order", c, closed, want)
		}
	}
}

func TestDispatcher_RetryingWebhook_HoldsBackTheContactUntilItsNextAttempt(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.setNow(time.Now())
	w.proc.retry = domain.Backoff{Initial: time.Millisecond, Max: time.Millisecond}
	w.crm.contactErr = errCRMDown
	d := newDispatcher(t, w, DispatcherConfig{})
	first := w.webhook(7, domain.ActionAdd, nil)
	second := w.webhook(7, domain.ActionUpdateTags, nil)
	ch1, ch2 := d.Await(first), d.Await(second)
	if err := d.Submit(7); err != nil {
		t.Fatal(err)
	}
	if out := await(t, ch1); out.Status != StatusRetrying {
		t.Fatalf("first outcome %+v, want retrying", out)
	}
	// The CRM comes back: the retry timer processes both, in order.
	w.crm.mu.Lock()
	w.crm.contactErr = nil
	w.crm.mu.Unlock()
	w.crm.set(contact(7, "ada@example.com"))
	w.setNow(time.Now().Add(time.Hour))
	if out := await(t, ch2); out.Status != StatusProcessed || out.WebhookID != second {
		t.Fatalf("second outcome %+v, want processed", out)
	}
	if s := w.state(7); len(s.Pending) != 0 || s.User == nil {
		t.Errorf("contact state %+v: both webhooks should be done", s)
	}
}

// blockingCRM holds every contact read until released.
type blockingCRM struct {
	*fakeCRM
	entered chan struct{}
	release chan struct{}
	once    sync.Once
}

func (b *blockingCRM) Contact(ctx context.Context, id domain.ContactID) (domain.CRMContact, error) {
	b.once.Do(func() { close(b.entered) })
	select {
	case <-b.release:
	case <-ctx.Done():
		return domain.CRMContact{}, ctx.Err()
	}
	return b.fakeCRM.Contact(ctx, id)
}

func TestDispatcher_Close_FinishesTheWebhookInProgressAndRefusesNewWork(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.crm.set(contact(7, "ada@example.com"))
	crm := &blockingCRM{fakeCRM: w.crm, entered: make(chan struct{}), release: make(chan struct{})}
	w.proc.crm = crm
	// One webhook at a time: with batches the queued update would be
	// decided with the add (TestCoalescing_*).
	d := newDispatcher(t, w, DispatcherConfig{Batch: 1})
	wh := w.webhook(7, domain.ActionAdd, nil)
	queued := w.webhook(7, domain.ActionUpdate, nil)
	ch := d.Await(wh)
	if err := d.Submit(7); err != nil {
		t.Fatal(err)
	}
	<-crm.entered
	closed := make(chan error, 1)
	go func() { closed <- d.Close(context.Background()) }()
	eventually(t, "Close to stop taking work", d.closed.Load)
	// Close waits for the webhook in progress.
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v while a webhook was in progress", err)
	default:
	}
	close(crm.release)
	if out := await(t, ch); out.Status != StatusProcessed {
		t.Fatalf("outcome %+v, want processed", out)
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(waitFor):
		t.Fatal("Close did not return")
	}
	if err := d.Submit(7); !errors.Is(err, ErrClosed) {
		t.Errorf("Submit after Close = %v, want ErrClosed", err)
	}
	if !w.state(7).Open(queued) {
		t.Error("the queued webhook was processed or lost; it should wait for the next start")
	}
}

func TestDispatcher_Close_CancelsWhatOutlastsItsContext(t *testing.T) {
	w := newWorld(t, testPolicy())
	crm := &blockingCRM{fakeCRM: w.crm, entered: make(chan struct{}), release: make(chan struct{})}
	w.proc.crm = crm
	d := newDispatcher(t, w, DispatcherConfig{})
	w.webhook(7, domain.ActionAdd, nil)
	d.Notify(7)
	<-crm.entered
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Close(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Close = %v, want the context's error", err)
	}
	if !w.state(7).Open("wh1") {
		t.Error("the cancelled webhook was closed")
	}
}

func TestDispatcher_StoreError_IsReportedAndTriedAgain(t *testing.T) {
	w := newWorld(t, testPolicy())
	w.crm.set(contact(7, "ada@example.com"))
	store := &flakyStore{EventStore: w.store, fails: 1}
	w.proc.store, w.proc.contacts = store, NewContacts(store, 0)
	errs := make(chan error, 10)
	d := newDispatcher(t, w, DispatcherConfig{ErrorPause: time.Millisecond, OnError: func(id domain.ContactID, err error) { errs <- err }})
	wh := w.webhook(7, domain.ActionAdd, nil)
	ch := d.Await(wh)
	if err := d.Submit(7); err != nil {
		t.Fatal(err)
	}
	if out := await(t, ch); out.Status != StatusProcessed {
		t.Fatalf("outcome %+v", out)
	}
	if err := <-errs; !errors.Is(err, errBoom) {
		t.Errorf("reported %v, want the store's error", err)
	}
}

func TestDispatcher_Forget_DropsTheWaiter(t *testing.T) {
	w := newWorld(t, testPolicy())
	d := newDispatcher(t, w, DispatcherConfig{})
	a, b := d.Await("wh"), d.Await("wh")
	d.Forget("wh", a)
	sh := d.waitShard("wh")
	sh.mu.Lock()
	n := len(sh.waiters["wh"])
	sh.mu.Unlock()
	if n != 1 {
		t.Fatalf("%d waiters left, want 1", n)
	}
	d.Forget("wh", b)
	sh.mu.Lock()
	_, left := sh.waiters["wh"]
	sh.mu.Unlock()
	if left {
		t.Error("the webhook's waiters were not dropped")
	}
}

func TestNewDispatcher_RefusesABadConfig(t *testing.T) {
	w := newWorld(t, testPolicy())
	for _, cfg := range []DispatcherConfig{{Concurrency: -1}, {ErrorPause: -time.Second}, {Batch: -1}, {Batch: MaxBatch + 1}} {
		if _, err := NewDispatcher(w.proc, cfg); err == nil {
			t.Errorf("NewDispatcher(%+v) accepted it", cfg)
		}
	}
	if _, err := NewDispatcher(nil, DispatcherConfig{}); err == nil {
		t.Error("NewDispatcher(nil) accepted it")
	}
}

// flakyStore fails the first reads.
type flakyStore struct {
	domain.EventStore
	mu    sync.Mutex
	fails int
}

func (s *flakyStore) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	if s.fail() {
		return nil, errBoom
	}
	return s.EventStore.ReadStream(ctx, stream)
}

func (s *flakyStore) ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error) {
	if s.fail() {
		return nil, errBoom
	}
	return s.EventStore.ReadStreamFrom(ctx, stream, after)
}

func (s *flakyStore) fail() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fails--
	return s.fails >= 0
}

func TestDispatcher_ConcurrentSubmits_KeepEachContactsOrderAndDeliverEachOutcomeOnce(t *testing.T) {
	// Given 16 handlers, each recording and submitting webhooks of its own
	// contacts, the contacts shared between pairs of handlers
	w := newWorld(t, testPolicy())
	w.crm.tags = []domain.Tag{vip, trial}
	const contacts, handlers, perHandler = 8, 16, 20
	for id := domain.ContactID(1); id <= contacts; id++ {
		w.crm.set(contact(id, "c"+id.String()+"@example.com", vip))
		w.user(id, "u"+id.String(), "c"+id.String()+"@example.com")
	}
	d := newDispatcher(t, w, DispatcherConfig{Concurrency: 4})
	type sent struct {
		wh string
		ch <-chan Outcome
	}
	var mu sync.Mutex
	var all []sent
	var wg sync.WaitGroup
	for h := range handlers {
		wg.Go(func() {
			for i := range perHandler {
				id := domain.ContactID(h%contacts + 1)
				wh := "h" + domain.ContactID(h).String() + "-" + domain.ContactID(i).String()
				ch := d.Await(wh)
				tags := "1"
				if i%2 == 0 {
					tags = "1,2"
				}
				// Recorded as the http port does: the event, then Submit.
				raw, err := domain.Encode(domain.Envelope{Event: domain.WebhookReceived{WebhookID: wh, Action: domain.ActionUpdateTags, ContactID: id.String(), Params: map[string]string{"tags": tags}}, OccurredAt: t0, WebhookID: wh})
				if err != nil {
					t.Error(err)
					return
				}
				if _, err := w.store.Append(context.Background(), id.Stream(), domain.AnyVersion(), raw); err != nil {
					t.Error(err)
					return
				}
				if err := d.Submit(id); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				all = append(all, sent{wh, ch})
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	// Then every waiter gets its webhook's outcome, once
	for _, s := range all {
		out := await(t, s.ch)
		if out.WebhookID != s.wh || out.Status != StatusProcessed {
			t.Fatalf("waiter of %s got %+v", s.wh, out)
		}
	}
	for _, s := range all {
		select {
		case out := <-s.ch:
			t.Fatalf("waiter of %s got a second outcome %+v", s.wh, out)
		default:
		}
	}
	// and each contact's webhooks were closed in the order recorded
	for id := domain.ContactID(1); id <= contacts; id++ {
		var received, closed []string
		for _, e := range w.events(id.Stream(), 0) {
			switch e := e.(type) {
			case domain.WebhookReceived:
				received = append(received, e.WebhookID)
			case domain.WebhookProcessed:
				closed = append(closed, e.WebhookID)
			}
		}
		if strings.Join(received, ",") != strings.Join(closed, ",") {
			t.Errorf("contact %d: received %v, closed %v", id, received, closed)
		}
	}
}

func TestDispatcher_SubmitDone_CalledOnceTheContactHasNothingOpen_EvenThroughARetry(t *testing.T) {
	// Given a contact whose first webhook must be retried (the CRM is down)
	w := newWorld(t, testPolicy())
	w.setNow(time.Now())
	w.proc.retry = domain.Backoff{Initial: time.Millisecond, Max: time.Millisecond}
	w.crm.contactErr = errCRMDown
	d := newDispatcher(t, w, DispatcherConfig{})
	first := w.webhook(7, domain.ActionAdd, nil)
	ch1 := d.Await(first)
	done := make(chan struct{}, 2)
	// When it is submitted with a done callback
	if err := d.SubmitDone(7, func() { done <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	if out := await(t, ch1); out.Status != StatusRetrying {
		t.Fatalf("first outcome %+v, want retrying", out)
	}
	// Then done waits while the webhook is open
	select {
	case <-done:
		t.Fatal("done called while the webhook waits for its retry")
	default:
	}
	// And is called once the retry has closed it
	second := w.webhook(7, domain.ActionUpdateTags, nil)
	ch2 := d.Await(second)
	if err := d.SubmitDone(7, func() { done <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	w.crm.mu.Lock()
	w.crm.contactErr = nil
	w.crm.mu.Unlock()
	w.crm.set(contact(7, "ada@example.com"))
	w.setNow(time.Now().Add(time.Hour))
	if out := await(t, ch2); out.Status != StatusProcessed {
		t.Fatalf("second outcome %+v, want processed", out)
	}
	for i := range 2 {
		select {
		case <-done:
		case <-time.After(waitFor):
			t.Fatalf("done %d of 2 never called", i+1)
		}
	}
	if s := w.state(7); len(s.Pending) != 0 {
		t.Errorf("contact state %+v: done was called with webhooks open", s)
	}
}

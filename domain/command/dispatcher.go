package command

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
)

// Dispatcher runs ProcessWebhook: webhooks of one contact in the order
// received, different contacts concurrently (up to a limit). A webhook that
// must be retried holds its contact's later webhooks back until its next
// attempt, so per-contact order holds through failures.
type Dispatcher struct {
	proc *ProcessWebhook
	// onError is told about store errors; the contact is tried again
	// after a pause.
	onError  func(id domain.ContactID, err error)
	errPause time.Duration
	sem      chan struct{}

	mu      sync.Mutex
	ctx     context.Context
	cancel  context.CancelFunc
	closed  bool
	active  map[domain.ContactID]*run
	timers  map[domain.ContactID]*time.Timer
	waiters map[string][]chan Outcome
	wg      sync.WaitGroup
}

type run struct{ again bool }

// DispatcherConfig configures NewDispatcher.
type DispatcherConfig struct {
	// Concurrency is how many contacts are processed at once (default 8).
	Concurrency int
	// ErrorPause is the wait before a contact whose processing hit a store
	// error is tried again (default 1s).
	ErrorPause time.Duration
	// OnError, if set, is told about store errors.
	OnError func(id domain.ContactID, err error)
}

func (c *DispatcherConfig) setDefaults() {
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.ErrorPause == 0 {
		c.ErrorPause = time.Second
	}
}

// Validate says what is wrong.
func (c DispatcherConfig) Validate() error {
	if c.Concurrency < 1 {
		return fmt.Errorf("dispatcher: concurrency %d must be at least 1", c.Concurrency)
	}
	if c.ErrorPause < 0 {
		return fmt.Errorf("dispatcher: error pause %s must not be negative", c.ErrorPause)
	}
	return nil
}

// NewDispatcher starts a dispatcher around proc.
func NewDispatcher(proc *ProcessWebhook, cfg DispatcherConfig) (*Dispatcher, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if proc == nil {
		return nil, errors.New("dispatcher: no webhook processor")
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Dispatcher{
		proc: proc, onError: cfg.OnError, errPause: cfg.ErrorPause,
		sem: make(chan struct{}, cfg.Concurrency), ctx: ctx, cancel: cancel,
		active: map[domain.ContactID]*run{}, timers: map[domain.ContactID]*time.Timer{}, waiters: map[string][]chan Outcome{},
	}, nil
}

// ErrClosed is returned by Submit after Close.
var ErrClosed = errors.New("dispatcher is shutting down")

// Await returns a channel that receives webhookID's outcome (retrying
// included) once. Call it before the webhook is recorded, so that an
// outcome delivered right after the record is not missed.
func (d *Dispatcher) Await(webhookID string) <-chan Outcome {
	ch := make(chan Outcome, 1)
	d.mu.Lock()
	defer d.mu.Unlock()
	d.waiters[webhookID] = append(d.waiters[webhookID], ch)
	return ch
}

// Submit asks for the contact's open webhooks to be processed.
func (d *Dispatcher) Submit(id domain.ContactID) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return ErrClosed
	}
	d.notifyLocked(id)
	return nil
}

// Notify asks for the contact's open webhooks to be processed.
func (d *Dispatcher) Notify(id domain.ContactID) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.closed {
		d.notifyLocked(id)
	}
}

// Forget drops the waiters of a webhook whose answer is no longer awaited.
func (d *Dispatcher) Forget(webhookID string, ch <-chan Outcome) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ws := d.waiters[webhookID]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(d.waiters, webhookID)
	} else {
		d.waiters[webhookID] = ws
	}
}

func (d *Dispatcher) notifyLocked(id domain.ContactID) {
	if r, ok := d.active[id]; ok {
		r.again = true
		return
	}
	if _, scheduled := d.timers[id]; scheduled {
		// A retry is scheduled: the contact waits for it, in order.
		return
	}
	d.active[id] = &run{}
	d.wg.Add(1)
	go d.work(id)
}

func (d *Dispatcher) work(id domain.ContactID) {
	defer d.wg.Done()
	select {
	case d.sem <- struct{}{}:
	case <-d.ctx.Done():
		d.finish(id, 0)
		return
	}
	defer func() { <-d.sem }()
	for {
		d.mu.Lock()
		closed := d.closed
		d.mu.Unlock()
		if closed {
			// Shutting down: what is left stays recorded for the next start.
			d.finish(id, 0)
			return
		}
		out, ok, err := d.proc.Next(d.ctx, id)
		if err != nil {
			if d.ctx.Err() == nil && d.onError != nil {
				d.onError(id, err)
			}
			d.finish(id, d.errPause)
			return
		}
		if ok {
			d.deliver(out)
			if out.Status == StatusRetrying {
				d.finish(id, max(time.Until(out.RetryAt), time.Millisecond))
				return
			}
			continue
		}
		d.mu.Lock()
		r := d.active[id]
		if r.again && d.ctx.Err() == nil {
			r.again = false
			d.mu.Unlock()
			continue
		}
		delete(d.active, id)
		d.mu.Unlock()
		return
	}
}

// finish ends a contact's run; after > 0 schedules the next one.
func (d *Dispatcher) finish(id domain.ContactID, after time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.active, id)
	if after <= 0 || d.closed {
		return
	}
	d.timers[id] = time.AfterFunc(after, func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		delete(d.timers, id)
		if !d.closed {
			d.notifyLocked(id)
		}
	})
}

func (d *Dispatcher) deliver(out Outcome) {
	d.mu.Lock()
	ws := d.waiters[out.WebhookID]
	delete(d.waiters, out.WebhookID)
	d.mu.Unlock()
	for _, w := range ws {
		w <- out
	}
}

// Close stops taking work, lets the webhooks being processed finish (until
// ctx is done, then cancels them), and stops the retry timers. Open
// webhooks stay recorded and are processed at the next start.
func (d *Dispatcher) Close(ctx context.Context) error {
	d.mu.Lock()
	d.closed = true
	for id, t := range d.timers {
		t.Stop()
		delete(d.timers, id)
	}
	d.mu.Unlock()
	done := make(chan struct{})
	go func() {
		// Runs stop after their current webhook: no new ones start.
		d.mu.Lock()
		for _, r := range d.active {
			r.again = false
		}
		d.mu.Unlock()
		d.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		d.cancel()
		return nil
	case <-ctx.Done():
		d.cancel()
		<-done
		return ctx.Err()
	}
}

package command

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"sync"
	"sync/atomic"
	"time"

	"github.com/usersync/usersync/domain"
)

// Dispatcher runs ProcessWebhook: webhooks of one contact in the order
// received (its queued ones decided together where that gives the same
// result, NextBatch), different contacts concurrently (up to a limit). A
// webhook that must be retried holds its contact's later webhooks back
// until its next attempt, so per-contact order holds through failures.
//
// No lock is held across a Submit, Notify or Await of more than one
// contact or webhook: contacts are spread over shards, each with its own
// lock, as are the waiters, so handlers of different contacts do not wait
// on each other.
type Dispatcher struct {
	proc *ProcessWebhook
	// onError is told about store errors; the contact is tried again
	// after a pause.
	onError  func(id domain.ContactID, err error)
	errPause time.Duration
	batch    int
	sem      chan struct{}

	ctx    context.Context
	cancel context.CancelFunc
	closed atomic.Bool
	runs   [shards]runShard
	seed   maphash.Seed
	waits  [shards]waitShard
	wg     sync.WaitGroup
}

// shards is how many locks the contacts and the waiters are spread over.
const shards = 64

// runShard holds the runs and retry timers of the contacts id%shards.
type runShard struct {
	mu     sync.Mutex
	active map[domain.ContactID]*run
	timers map[domain.ContactID]*time.Timer
	// held are the SubmitDone callbacks of contacts waiting for a retry
	// or an error pause: their next run takes them over.
	held map[domain.ContactID][]func()
	_    [64]byte // keeps shards' locks off one cache line
}

// waitShard holds the waiters of some webhook ids.
type waitShard struct {
	mu      sync.Mutex
	waiters map[string][]chan Outcome
	_       [64]byte
}

// run is a contact's run. next are the SubmitDone callbacks given since
// the run's current read of the stream began; cur those given before it,
// called once a read that began after them finds nothing open.
type run struct {
	again     bool
	next, cur []func()
}

// DispatcherConfig configures NewDispatcher.
type DispatcherConfig struct {
	// Concurrency is how many contacts are processed at once (default 8).
	Concurrency int
	// Batch is the most webhooks of one contact decided together
	// (default MaxBatch; 1 turns coalescing off).
	Batch int
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
	if c.Batch == 0 {
		c.Batch = MaxBatch
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
	if c.Batch < 1 || c.Batch > MaxBatch {
		return fmt.Errorf("dispatcher: batch %d must be from 1 to %d", c.Batch, MaxBatch)
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
	d := &Dispatcher{
		proc: proc, onError: cfg.OnError, errPause: cfg.ErrorPause, batch: cfg.Batch,
		sem: make(chan struct{}, cfg.Concurrency), ctx: ctx, cancel: cancel, seed: maphash.MakeSeed(),
	}
	for i := range d.runs {
		d.runs[i].active = map[domain.ContactID]*run{}
		d.runs[i].timers = map[domain.ContactID]*time.Timer{}
		d.runs[i].held = map[domain.ContactID][]func(){}
		d.waits[i].waiters = map[string][]chan Outcome{}
	}
	return d, nil
}

// ErrClosed is returned by Submit after Close.
var ErrClosed = errors.New("dispatcher is shutting down")

func (d *Dispatcher) runShard(id domain.ContactID) *runShard { return &d.runs[uint64(id)%shards] }

func (d *Dispatcher) waitShard(webhookID string) *waitShard {
	return &d.waits[maphash.String(d.seed, webhookID)%shards]
}

// Await returns a channel that receives webhookID's outcome (retrying
// included) once. Call it before the webhook is recorded, so that an
// outcome delivered right after the record is not missed.
func (d *Dispatcher) Await(webhookID string) <-chan Outcome {
	ch := make(chan Outcome, 1)
	sh := d.waitShard(webhookID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	sh.waiters[webhookID] = append(sh.waiters[webhookID], ch)
	return ch
}

// Submit asks for the contact's open webhooks to be processed.
func (d *Dispatcher) Submit(id domain.ContactID) error {
	sh := d.runShard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	// Read under the shard's lock: Close takes every shard's lock after
	// setting closed, so a Submit that saw it open has started its run
	// (wg.Add) before Close waits for the runs.
	if d.closed.Load() {
		return ErrClosed
	}
	d.notifyLocked(sh, id, nil)
	return nil
}

// SubmitDone is Submit, and calls done once a read of the contact's stream
// that began after this call found no open webhook left (done runs on the
// dispatcher's goroutine: it must not block or call back into it). done is
// not called when the contact is left with open webhooks at Close: what
// signalled the work must then be given back by its owner (the work
// feed's items are Nacked or time out).
func (d *Dispatcher) SubmitDone(id domain.ContactID, done func()) error {
	sh := d.runShard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if d.closed.Load() {
		return ErrClosed
	}
	d.notifyLocked(sh, id, done)
	return nil
}

// Notify asks for the contact's open webhooks to be processed.
func (d *Dispatcher) Notify(id domain.ContactID) {
	_ = d.Submit(id)
}

// Forget drops the waiters of a webhook whose answer is no longer awaited.
func (d *Dispatcher) Forget(webhookID string, ch <-chan Outcome) {
	sh := d.waitShard(webhookID)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	ws := sh.waiters[webhookID]
	for i, w := range ws {
		if w == ch {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(sh.waiters, webhookID)
	} else {
		sh.waiters[webhookID] = ws
	}
}

func (d *Dispatcher) notifyLocked(sh *runShard, id domain.ContactID, done func()) {
	if r, ok := sh.active[id]; ok {
		r.again = true
		if done != nil {
			r.next = append(r.next, done)
		}
		return
	}
	if _, scheduled := sh.timers[id]; scheduled {
		// A retry is scheduled: the contact waits for it, in order.
		if done != nil {
			sh.held[id] = append(sh.held[id], done)
		}
		return
	}
	r := &run{next: sh.held[id]}
	delete(sh.held, id)
	if done != nil {
		r.next = append(r.next, done)
	}
	sh.active[id] = r
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
	sh := d.runShard(id)
	for {
		if d.closed.Load() {
			// Shutting down: what is left stays recorded for the next start.
			d.finish(id, 0)
			return
		}
		sh.mu.Lock()
		if r := sh.active[id]; len(r.next) > 0 {
			r.cur, r.next = append(r.cur, r.next...), nil
		}
		sh.mu.Unlock()
		outs, err := d.proc.NextBatch(d.ctx, id, d.batch)
		if err != nil {
			if d.ctx.Err() == nil && d.onError != nil {
				d.onError(id, err)
			}
			d.finish(id, d.errPause)
			return
		}
		if len(outs) > 0 {
			for _, out := range outs {
				d.deliver(out)
			}
			if last := outs[len(outs)-1]; last.Status == StatusRetrying {
				d.finish(id, max(time.Until(last.RetryAt), time.Millisecond))
				return
			}
			continue
		}
		sh.mu.Lock()
		r := sh.active[id]
		if r.again && d.ctx.Err() == nil && !d.closed.Load() {
			r.again = false
			sh.mu.Unlock()
			continue
		}
		delete(sh.active, id)
		done := append(r.cur, r.next...)
		sh.mu.Unlock()
		for _, f := range done {
			f()
		}
		return
	}
}

// finish ends a contact's run; after > 0 schedules the next one.
func (d *Dispatcher) finish(id domain.ContactID, after time.Duration) {
	sh := d.runShard(id)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if r := sh.active[id]; r != nil && (len(r.cur) > 0 || len(r.next) > 0) {
		sh.held[id] = append(append(sh.held[id], r.cur...), r.next...)
	}
	delete(sh.active, id)
	if after <= 0 || d.closed.Load() {
		return
	}
	sh.timers[id] = time.AfterFunc(after, func() {
		sh.mu.Lock()
		defer sh.mu.Unlock()
		delete(sh.timers, id)
		if !d.closed.Load() {
			d.notifyLocked(sh, id, nil)
		}
	})
}

// deliver hands out to its waiters, each once.
func (d *Dispatcher) deliver(out Outcome) {
	sh := d.waitShard(out.WebhookID)
	sh.mu.Lock()
	ws := sh.waiters[out.WebhookID]
	delete(sh.waiters, out.WebhookID)
	sh.mu.Unlock()
	for _, w := range ws {
		w <- out
	}
}

// Close stops taking work, lets the webhooks being processed finish (until
// ctx is done, then cancels them), and stops the retry timers. Open
// webhooks stay recorded and are processed at the next start.
func (d *Dispatcher) Close(ctx context.Context) error {
	d.closed.Store(true)
	for i := range d.runs {
		sh := &d.runs[i]
		sh.mu.Lock()
		for id, t := range sh.timers {
			t.Stop()
			delete(sh.timers, id)
		}
		// Runs stop after their current batch: no new ones start.
		for _, r := range sh.active {
			r.again = false
		}
		sh.mu.Unlock()
	}
	done := make(chan struct{})
	go func() {
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

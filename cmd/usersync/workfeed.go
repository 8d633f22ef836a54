package main

// Several nodes on one EventStoreDB (docs/scaling.md, "Several nodes"): the
// webhooks are processed where the work feed's Pinned persistent
// subscription hands their contact out, and a synchronous answer waits on
// this node's own views, whichever node decided the webhook.

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/http/metrics"
	"github.com/usersync/usersync/projections"
)

// workGroup is the persistent subscription group the nodes share.
const workGroup = "usersync-webhooks"

// contactWork is what the feed needs of the dispatcher.
type contactWork interface {
	SubmitDone(id domain.ContactID, done func()) error
}

// feedWorker turns the work feed's "contact C has work" items into
// dispatcher runs, and acks an item once a run that began after it found no
// open webhook left for C. An item whose contact is left with open
// webhooks at the stop is Nacked (or, if the node dies, given to another
// node by the server).
type feedWorker struct {
	feed *esdb.WorkFeed
	disp contactWork
	log  *slog.Logger
	obs  *metrics.WorkFeedMetrics // nil: not counted

	stop context.CancelFunc
	done chan struct{}
	// swept is closed once the stale sweep has ended (at once without one).
	swept chan struct{}
	acks  sync.WaitGroup
}

// startFeedWorker joins the group on s and starts handing items to disp,
// and sweeps for stale work as sweep says (no sweep when sweep.Open is
// nil); obs (nil: none) counts the feed's items and subscription state.
func startFeedWorker(ctx context.Context, s *esdb.Store, disp contactWork, sweep staleSweep, log *slog.Logger, obs *metrics.WorkFeedMetrics) (*feedWorker, error) {
	// The feed lives until close, not until ctx (the start's) is done.
	feed, err := s.Work(context.WithoutCancel(ctx), workGroup, esdb.WorkOptions{
		OnRedelivery: func(esdb.WorkItem) { obs.Redelivered() },
		OnInFlight:   obs.InFlight,
		OnSubscribed: obs.Subscribed,
		OnDropped: func(err error) {
			obs.Dropped()
			log.Warn("work feed dropped; joining again", "group", workGroup, "err", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("join the work feed %s: %w", workGroup, err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	w := &feedWorker{feed: feed, disp: disp, log: log, obs: obs, stop: stop, done: make(chan struct{}), swept: make(chan struct{})}
	go w.run(runCtx)
	if sweep.Open != nil {
		go w.sweep(runCtx, sweep)
	} else {
		close(w.swept)
	}
	return w, nil
}

func (w *feedWorker) run(ctx context.Context) {
	defer close(w.done)
	for {
		select {
		case <-ctx.Done():
			return
		case it, ok := <-w.feed.Items():
			if !ok {
				return
			}
			w.handle(it)
		}
	}
}

func (w *feedWorker) handle(it esdb.WorkItem) {
	id, ok := domain.ContactIDFromStream(it.Stream)
	if !ok {
		// A webhook refused at intake, in its own stream, closed with it.
		w.settle(it, "")
		return
	}
	if err := w.disp.SubmitDone(id, func() { w.settle(it, "") }); err != nil {
		w.settle(it, "usersync is stopping")
	}
}

// settle acks the item (nack non-empty: Nacks it) without blocking the
// caller, the dispatcher's goroutine.
func (w *feedWorker) settle(it esdb.WorkItem, nack string) {
	w.acks.Add(1)
	go func() {
		defer w.acks.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var err error
		result := "acked"
		if nack != "" {
			err, result = it.Nack(ctx, nack), "nacked"
		} else {
			err = it.Ack(ctx)
		}
		if err != nil {
			result = "lost"
		}
		w.obs.Settled(result)
		if err != nil {
			// Not fatal: the server gives the item out again, and its
			// contact's stream says there is nothing left to do.
			w.log.Debug("settling a work item failed; it will be delivered again", "stream", it.Stream, "err", err)
		}
	}()
}

// stopTaking stops handing new items to the dispatcher (before it closes).
func (w *feedWorker) stopTaking() {
	w.stop()
	<-w.done
	<-w.swept
}

// openWebhooks lists the receipts of the webhooks still open (queued or
// retrying), oldest first: projections.Webhooks.Open.
type openWebhooks func(ctx context.Context) ([]projections.Webhook, error)

// staleSweep says when a node takes up work the feed did not bring it:
// Pinned gives a bucket's items, retries after the message timeout
// included, to the bucket's owner for as long as the owner stays
// connected, so a node alive but stuck (paused, swapping, deadlocked)
// would hold its contacts' webhooks for ever. Every node therefore looks,
// every Every, for contacts whose oldest open webhook has waited past
// After (queued: since it was received; retrying: since its last attempt,
// plus RetryMax for the wait before the next one) and runs them on its
// own dispatcher. That is safe whoever else runs them: outcomes are
// appended at the contact stream's revision, so the stuck node, once it
// goes on, loses its races and finds nothing open.
type staleSweep struct {
	Open     openWebhooks
	After    time.Duration // --takeover-after
	RetryMax time.Duration // --retry-max
	Every    time.Duration // 0: After/4, between 250 ms and 15 s
	Now      func() time.Time
}

// stale lists the contacts of open whose oldest open webhook is stale at
// now (each contact once).
func (c staleSweep) stale(open []projections.Webhook, now time.Time) []domain.ContactID {
	seen := map[domain.ContactID]bool{}
	var out []domain.ContactID
	for _, w := range open {
		if w.ContactID == 0 || seen[w.ContactID] {
			continue
		}
		seen[w.ContactID] = true // only its oldest open webhook counts
		since, wait := w.ReceivedAt, c.After
		if w.Status == projections.WebhookRetrying {
			since, wait = w.UpdatedAt, c.After+c.RetryMax
		}
		if now.Sub(since) > wait {
			out = append(out, w.ContactID)
		}
	}
	return out
}

// sweep runs c until ctx is done: each stale contact goes to disp.
func (w *feedWorker) sweep(ctx context.Context, c staleSweep) {
	defer close(w.swept)
	every := c.Every
	if every <= 0 {
		every = min(max(c.After/4, 250*time.Millisecond), 15*time.Second)
	}
	now := c.Now
	if now == nil {
		now = time.Now
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		open, err := c.Open(ctx)
		if err != nil {
			if ctx.Err() == nil {
				w.log.Warn("looking for stale work failed; trying again", "err", err)
			}
			continue
		}
		for _, id := range c.stale(open, now()) {
			if err := w.disp.SubmitDone(id, func() {}); err != nil {
				return // the dispatcher is closing
			}
			w.obs.StaleTaken()
			w.log.Info("taking up a contact whose oldest open webhook waited past --takeover-after (its work item held elsewhere)", "contact_id", id)
		}
	}
}

// close waits for the acks under way, then leaves the group: the server
// gives what is not acked to the other members.
func (w *feedWorker) close() error {
	w.stopTaking()
	w.acks.Wait()
	return w.feed.Close()
}

// feedQueue is the http.Queue of a node driven by the work feed: the
// webhook is recorded, and the feed, not the answering node, brings it to
// a dispatcher. Answers wait on viewOutcomes, so Await is never called.
type feedQueue struct{}

func (feedQueue) Await(string) <-chan command.Outcome   { return nil }
func (feedQueue) Submit(domain.ContactID) error         { return nil }
func (feedQueue) Forget(string, <-chan command.Outcome) {}

// streamReader is what viewOutcomes reads a failed webhook's recorded
// status from.
type streamReader interface {
	ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error)
}

// viewOutcomes waits for a webhook's outcome in this node's views: the
// receipt leaves "queued" when the views apply the outcome event, whichever
// node appended it.
type viewOutcomes struct {
	views *projections.Views
	store streamReader
}

// WaitOutcome is http.Outcomes' method. A failed read of the view (views
// being swapped after a rebuild) is tried again once the view moves, until
// ctx is done.
func (o viewOutcomes) WaitOutcome(ctx context.Context, webhookID string) (command.Outcome, error) {
	var readErr error
	for {
		// The position first: an outcome applied after it moves the view.
		pos, err := o.views.Position("webhooks")
		if err != nil {
			return command.Outcome{}, err
		}
		w, ok, err := o.views.Webhooks.Get(ctx, webhookID)
		switch {
		case err != nil && ctx.Err() == nil:
			readErr = err
		case err != nil:
			return command.Outcome{}, err
		case ok && w.Status != projections.WebhookQueued:
			return o.outcome(ctx, w, pos), nil
		}
		if err := o.views.WaitFor(ctx, "webhooks", pos+1); err != nil {
			if readErr != nil {
				return command.Outcome{}, fmt.Errorf("read receipt %s: %w (then: %v)", webhookID, readErr, err)
			}
			return command.Outcome{}, err
		}
	}
}

// outcome is the receipt w as an Outcome; pos is a position the views have
// applied (all views move together), for the answer's user. The answer is
// the webhook's first outcome, as on one node (Dispatcher.Await): a
// webhook retried and then processed before the views applied either (one
// batch) is answered as retrying (202), as its first decision was.
func (o viewOutcomes) outcome(ctx context.Context, w projections.Webhook, pos uint64) command.Outcome {
	out := command.Outcome{WebhookID: w.ID, ContactID: w.ContactID, Status: w.Status, Message: w.Message, Position: pos}
	if w.Status == projections.WebhookFailed || (w.Attempts > 0 && w.Status != projections.WebhookRetrying) {
		if first, ok := o.firstOutcome(ctx, w); ok {
			out.Status, out.Message = first.Status, first.Message
			out.Err = first.Err
		}
	}
	switch {
	case out.Status == projections.WebhookRetrying && out.Err == nil:
		out.Err = domain.Fail(domain.ErrCRMUnavailable, out.Message)
	case out.Status == projections.WebhookFailed && out.Err == nil:
		out.Err = domain.Fail(domain.ErrImportFailed, out.Message)
	}
	return out
}

// firstOutcome reads w's first outcome event from its contact stream (the
// receipt keeps only the latest): its status, message and, for a failure,
// the kind its recorded HTTP status stands for. ok is false when the stream
// cannot be read or holds none.
func (o viewOutcomes) firstOutcome(ctx context.Context, w projections.Webhook) (command.Outcome, bool) {
	stream, version, ok, err := o.views.Webhooks.Locate(ctx, w.ID)
	if err != nil || !ok {
		return command.Outcome{}, false
	}
	evs, err := o.store.ReadStreamFrom(ctx, stream, version)
	if err != nil {
		return command.Outcome{}, false
	}
	for _, rec := range evs {
		env, err := domain.Decode(rec)
		if err != nil {
			continue
		}
		var out command.Outcome
		var id string
		switch e := env.Event.(type) {
		case domain.WebhookRetrying:
			id, out = e.WebhookID, command.Outcome{Status: command.StatusRetrying, Message: e.Error, Err: domain.Fail(domain.ErrCRMUnavailable, e.Error)}
		case domain.WebhookProcessed:
			id, out = e.WebhookID, command.Outcome{Status: command.StatusProcessed, Message: e.Message}
		case domain.WebhookIgnored:
			id, out = e.WebhookID, command.Outcome{Status: command.StatusIgnored, Message: e.Reason}
		case domain.WebhookFailed:
			kind := domain.ErrImportFailed
			switch e.Status {
			case 400:
				kind = domain.ErrInvalidRequest
			case 502:
				kind = domain.ErrCRMRefused
			}
			id, out = e.WebhookID, command.Outcome{Status: command.StatusFailed, Message: e.Reason, Err: domain.Fail(kind, e.Reason)}
		}
		if id != "" && id == w.ID {
			return out, true
		}
	}
	return command.Outcome{}, false
}

package esdb

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	kdb "github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/usersync/usersync/domain"
)

// The work feed is the building block of several usersync nodes sharing
// one EventStoreDB (issue 12): a competing-consumers feed over a persistent
// subscription to $all, Pinned by source stream, filtered on the server to
// the events that mean "contact C has work". Today that is WebhookReceived
// in a contact stream; later the events that make other work due would
// join it (WebhookRetrying for a retry timer, PasswordIssued for a
// password to return, UserCreated with a welcome mail to send).
//
// A work item is a signal, not an instruction: delivery is at least once
// and persistent subscriptions keep no per-stream order (Pinned is best
// effort: retries, timeouts and consumers joining or leaving reorder, and
// a group resumed after a leader change delivers again what was acked
// after its last checkpoint). So whoever consumes it takes its order from
// the contact stream itself: it reads the stream, takes the oldest webhook
// without an outcome, and appends that outcome at the expected revision it
// read; an item for a contact with nothing open is simply acked. Never
// order work by delivery.

// Defaults of WorkOptions.
const (
	// DefaultWorkBuffer is the most items the server hands one feed before
	// they are acked (the consumer's buffer_size). With Pinned a full
	// owner makes the group wait, so it should be at least the number of
	// contacts a node processes at once.
	DefaultWorkBuffer = 32
	// DefaultWorkMessageTimeout is how long an item may stay unacked before
	// the server gives it to a consumer again: the bound on work held by a
	// node that is alive but stuck (a node that dies loses its connection
	// and its items go to the others at once).
	DefaultWorkMessageTimeout = 30 * time.Second
	// DefaultWorkMaxRetryCount is how many times an item is delivered
	// again before the server parks it. It is high on purpose: a retry is
	// counted per timeout, Nack and lost consumer, none of which makes the
	// work go away, and a parked item is a signal lost (the webhook stays
	// open in its stream). At the default timeout it is more than 3 days.
	DefaultWorkMaxRetryCount = 10_000
	// DefaultWorkCheckpointAfter is how soon after progress the group's
	// position is checkpointed: after a leader change or restart at most
	// about that much acked work comes again.
	DefaultWorkCheckpointAfter = time.Second
)

// workEventType is the event the feed's server-side filter lets through.
const workEventType = domain.TypeWebhookReceived

// WorkOptions tunes a work feed. The zero value is usable: every zero
// field takes its default. The group settings (MessageTimeout,
// MaxRetryCount, CheckpointAfter, FromEnd) apply when the group is
// created; a group that exists already keeps its own.
type WorkOptions struct {
	// Buffer is the most items handed to this feed and not yet acked or
	// nacked. Default DefaultWorkBuffer.
	Buffer int
	// MessageTimeout: an item unacked for that long goes out again (to
	// any consumer). Default DefaultWorkMessageTimeout.
	MessageTimeout time.Duration
	// MaxRetryCount: deliveries again before the server parks an item.
	// Default DefaultWorkMaxRetryCount.
	MaxRetryCount int
	// CheckpointAfter is the group's checkpoint interval. Default
	// DefaultWorkCheckpointAfter (checkpoints are written after at least
	// one item and at once after 500).
	CheckpointAfter time.Duration
	// FromEnd makes a new group start at the end of $all instead of its
	// start (the default, so that no webhook recorded before the group
	// existed is missed; past ones are found closed and acked).
	FromEnd bool

	// OnRedelivery, if set, is told of every item delivered again
	// (Retry > 0), before it is handed out: a metrics hook.
	OnRedelivery func(WorkItem)
	// OnInFlight, if set, is told the number of items this feed has handed
	// out and not yet acked or nacked, whenever it changes (items of a
	// subscription that dropped are no longer in flight here: the server
	// delivers them again). A metrics hook.
	OnInFlight func(n int)
	// OnSubscribed, if set, is called each time the feed has (re)joined
	// the group; OnDropped with the reason each time it lost it. Hooks
	// for the subscription's state.
	OnSubscribed func()
	OnDropped    func(err error)
}

func (o WorkOptions) withDefaults() WorkOptions {
	if o.Buffer == 0 {
		o.Buffer = DefaultWorkBuffer
	}
	if o.MessageTimeout == 0 {
		o.MessageTimeout = DefaultWorkMessageTimeout
	}
	if o.MaxRetryCount == 0 {
		o.MaxRetryCount = DefaultWorkMaxRetryCount
	}
	if o.CheckpointAfter == 0 {
		o.CheckpointAfter = DefaultWorkCheckpointAfter
	}
	return o
}

// Validate says what is wrong with the options.
func (o WorkOptions) Validate() error {
	var errs []error
	if o.Buffer < 1 || o.Buffer > 10_000 {
		errs = append(errs, fmt.Errorf("buffer %d must be from 1 to 10000 items", o.Buffer))
	}
	if o.MessageTimeout < time.Millisecond || o.MessageTimeout > 24*time.Hour {
		errs = append(errs, fmt.Errorf("message timeout %s must be from 1ms to 24h", o.MessageTimeout))
	}
	if o.MaxRetryCount < 1 || o.MaxRetryCount > 1<<30 {
		errs = append(errs, fmt.Errorf("max retry count %d must be at least 1", o.MaxRetryCount))
	}
	if o.CheckpointAfter < time.Millisecond || o.CheckpointAfter > time.Hour {
		errs = append(errs, fmt.Errorf("checkpoint interval %s must be from 1ms to 1h", o.CheckpointAfter))
	}
	return errors.Join(errs...)
}

// WorkItem says that the contact stream Stream has work. Ack it once the
// work it signals is done (or found done); Nack it to have it delivered
// again (to any consumer) with Retry one more.
type WorkItem struct {
	// Stream is the contact stream (domain name, without the namespace).
	Stream string
	// Position is the signalling event's $all position.
	Position uint64
	// Retry is how many times the server delivered it before.
	Retry int
	// Ack tells the server the item is done. Nack gives it back with a
	// reason. Each returns ErrWorkItemLost when the subscription that
	// delivered the item is gone (the server delivers it again); only
	// the first of them counts (a later one is an error).
	Ack  func(ctx context.Context) error
	Nack func(ctx context.Context, reason string) error
}

// ErrWorkItemLost is returned by WorkItem.Ack and Nack when the
// subscription that delivered the item dropped or the feed closed: the
// server has taken it back and delivers it again.
var ErrWorkItemLost = errors.New("esdb: work item lost with its subscription; it is delivered again")

// errWorkItemSettled is the answer to a second Ack or Nack of one item.
var errWorkItemSettled = errors.New("esdb: work item already acked or nacked")

// WorkFeed is a running member of a work group: Items delivers what the
// server hands it until Close (or the store closes, or the context given
// to Work ends), resubscribing with backoff after every drop.
type WorkFeed struct {
	s     *Store
	group string
	opts  WorkOptions
	items chan WorkItem
	stop  context.CancelFunc
	done  chan struct{}

	mu       sync.Mutex
	inFlight int
}

// Work joins the competing consumers of group: it creates the group on
// $all if it is missing (Pinned, filtered to WebhookReceived events; an
// existing group is fine) and starts receiving. Each member of a group
// gets a share of the work, one contact's items going to one member while
// the members stay the same (best effort). ctx bounds the creation and
// the feed's life; Close ends it sooner.
func (s *Store) Work(ctx context.Context, group string, opts WorkOptions) (*WorkFeed, error) {
	opts = opts.withDefaults()
	if strings.TrimSpace(group) == "" {
		return nil, errors.New("esdb: work feed: no group name: give the name the nodes of one installation share")
	}
	if err := opts.Validate(); err != nil {
		return nil, fmt.Errorf("esdb: work feed %s: %w", group, err)
	}
	if err := s.createWorkGroup(ctx, group, opts); err != nil {
		return nil, err
	}
	life, stop := context.WithCancel(ctx)
	unhook := context.AfterFunc(s.life, stop)
	f := &WorkFeed{s: s, group: group, opts: opts, items: make(chan WorkItem), stop: stop, done: make(chan struct{})}
	go func() {
		defer close(f.done)
		defer close(f.items)
		defer unhook()
		f.run(life)
	}()
	return f, nil
}

// Items delivers the work items; it is closed once the feed has ended.
func (f *WorkFeed) Items() <-chan WorkItem { return f.items }

// Close leaves the group: items not yet acked go to the other members.
// It waits for the feed's goroutine to end and is idempotent.
func (f *WorkFeed) Close() error {
	f.stop()
	<-f.done
	return nil
}

// InFlight is how many items this feed handed out that are not yet acked
// or nacked.
func (f *WorkFeed) InFlight() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.inFlight
}

func (f *WorkFeed) addInFlight(d int) {
	if d == 0 {
		return
	}
	f.mu.Lock()
	f.inFlight += d
	n := f.inFlight
	f.mu.Unlock()
	if f.opts.OnInFlight != nil {
		f.opts.OnInFlight(n)
	}
}

// serverGroup is the group's name on the server (namespaced).
func (s *Store) serverGroup(group string) string { return s.opts.Namespace + group }

// workSettings are the group settings the feed creates groups with.
func workSettings(o WorkOptions) *kdb.PersistentSubscriptionSettings {
	st := kdb.SubscriptionSettingsDefault()
	st.ConsumerStrategyName = kdb.ConsumerStrategyPinned
	st.MessageTimeout = int32(o.MessageTimeout.Milliseconds())
	st.MaxRetryCount = int32(o.MaxRetryCount)
	st.CheckpointAfter = int32(o.CheckpointAfter.Milliseconds())
	st.CheckpointLowerBound = 1
	st.CheckpointUpperBound = 500
	return &st
}

// workStart is where a new group starts in $all.
func workStart(o WorkOptions) kdb.AllPosition {
	if o.FromEnd {
		return kdb.End{}
	}
	return kdb.Start{}
}

// createWorkGroup makes the group unless it exists, retrying transport
// errors like every call.
func (s *Store) createWorkGroup(ctx context.Context, group string, o WorkOptions) error {
	settings := workSettings(o)
	err := s.retry(ctx, func(ctx context.Context) error {
		_, err := call(ctx, s, func(ctx context.Context, c *kdb.Client) (struct{}, error) {
			return struct{}{}, c.CreatePersistentSubscriptionToAll(ctx, s.serverGroup(group), kdb.PersistentAllSubscriptionOptions{
				Settings:  settings,
				StartFrom: workStart(o),
				Filter:    &kdb.SubscriptionFilter{Type: kdb.EventFilterType, Regex: "^" + workEventType + "$"},
			})
		})
		if code, ok := codeOf(err); ok && code == kdb.ErrorCodeResourceAlreadyExists {
			return nil
		}
		return err
	})
	if err != nil {
		return fmt.Errorf("esdb: create work group %s on %s: %w", group, s.addrs, err)
	}
	return nil
}

// run joins the group and hands out items until ctx ends, joining again
// (with backoff) after every drop; a group deleted meanwhile is made
// again.
func (f *WorkFeed) run(ctx context.Context) {
	s := f.s
	for failures := 0; ctx.Err() == nil && !s.isClosed(); {
		if failures > 0 && !pause(ctx, backoff(failures-1)) {
			return
		}
		sub, release, err := f.subscribe(ctx)
		if err != nil {
			failures++
			if code, ok := codeOf(err); ok && code == kdb.ErrorCodeResourceNotFound {
				if cerr := s.createWorkGroup(ctx, f.group, f.opts); cerr != nil {
					s.log.Debug("esdb: work group missing and not made again", "group", f.group, "err", cerr)
				}
			}
			s.log.Debug("esdb: joining the work group failed; trying again", "addr", s.addrs, "group", f.group, "attempt", failures, "err", err)
			if f.opts.OnDropped != nil {
				f.opts.OnDropped(err)
			}
			continue
		}
		if f.opts.OnSubscribed != nil {
			f.opts.OnSubscribed()
		}
		got, err := f.receive(ctx, sub)
		sub.end()
		release()
		if got {
			failures = 0
		}
		failures++
		if ctx.Err() != nil || s.isClosed() {
			return
		}
		s.log.Info("esdb: work subscription dropped; joining again", "addr", s.addrs, "group", f.group, "err", err)
		if f.opts.OnDropped != nil {
			f.opts.OnDropped(err)
		}
	}
}

// subscribe connects to the group, bounded by ConnectTimeout (the client
// may ignore ctx while it discovers). release must be called once the
// subscription is ended.
func (f *WorkFeed) subscribe(ctx context.Context) (*workSub, func(), error) {
	s := f.s
	sub, release, err := openSubscription(ctx, s, fmt.Sprintf("join work group %s on %s", f.group, s.addrs),
		func(ctx context.Context, c *kdb.Client) (*kdb.PersistentSubscription, error) {
			return c.SubscribeToPersistentSubscriptionToAll(ctx, s.serverGroup(f.group),
				kdb.SubscribeToPersistentSubscriptionOptions{BufferSize: uint32(f.opts.Buffer)})
		})
	if err != nil {
		return nil, nil, err
	}
	return &workSub{feed: f, sub: sub}, release, nil
}

// receive hands out the subscription's items until it drops (err the
// reason) or ctx ends; got tells whether anything came.
func (f *WorkFeed) receive(ctx context.Context, ws *workSub) (got bool, err error) {
	// Recv blocks; closing the subscription when ctx ends unblocks it.
	unhook := context.AfterFunc(ctx, ws.close)
	defer unhook()
	for {
		ev := ws.sub.Recv()
		switch {
		case ev.SubscriptionDropped != nil:
			return got, ev.SubscriptionDropped.Error
		case ev.EventAppeared == nil:
			continue
		}
		got = true
		re := ev.EventAppeared.Event
		e := re.OriginalEvent()
		if e == nil {
			continue
		}
		if !strings.HasPrefix(e.StreamID, f.s.opts.Namespace+"contact-") || !f.s.ours(e.StreamID) {
			// Another installation's, or a webhook rejected before it
			// reached a contact: no work here.
			_ = ws.ack(re)
			continue
		}
		item := ws.item(re, e, ev.EventAppeared.RetryCount)
		if item.Retry > 0 && f.opts.OnRedelivery != nil {
			f.opts.OnRedelivery(item)
		}
		select {
		case f.items <- item:
		case <-ctx.Done():
			return got, ctx.Err()
		}
	}
}

// workSub is one subscription of a feed and the items it handed out. The
// client's Ack and Nack send on the gRPC stream, which is not safe for
// concurrent use: they go one at a time, under mu.
type workSub struct {
	feed *WorkFeed
	sub  *kdb.PersistentSubscription

	mu    sync.Mutex
	ended bool
	open  int // items handed out, not acked or nacked
}

// item makes the WorkItem of a delivered event, counted in flight.
func (ws *workSub) item(re *kdb.ResolvedEvent, e *kdb.RecordedEvent, retry int) WorkItem {
	ws.mu.Lock()
	ws.open++
	ws.mu.Unlock()
	ws.feed.addInFlight(1)
	var settled bool // under ws.mu
	settle := func(ctx context.Context, send func() error) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		ws.mu.Lock()
		switch {
		case settled:
			ws.mu.Unlock()
			return errWorkItemSettled
		case ws.ended:
			ws.mu.Unlock()
			return ErrWorkItemLost // counted out when the subscription ended
		}
		settled = true
		ws.open--
		err := send()
		ws.mu.Unlock()
		ws.feed.addInFlight(-1) // the hook runs outside the lock
		if err != nil {
			return fmt.Errorf("%w: %w", ErrWorkItemLost, err)
		}
		return nil
	}
	return WorkItem{
		Stream:   strings.TrimPrefix(e.StreamID, ws.feed.s.opts.Namespace),
		Position: e.Position.Commit,
		Retry:    retry,
		Ack: func(ctx context.Context) error {
			return settle(ctx, func() error { return ws.sub.Ack(re) })
		},
		Nack: func(ctx context.Context, reason string) error {
			return settle(ctx, func() error { return ws.sub.Nack(reason, kdb.NackActionRetry, re) })
		},
	}
}

// ack acknowledges an event that is no work item.
func (ws *workSub) ack(re *kdb.ResolvedEvent) error {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	if ws.ended {
		return ErrWorkItemLost
	}
	return ws.sub.Ack(re)
}

// close closes the subscription, not while an Ack or Nack is being sent
// (the client's Close must not run concurrently with a send).
func (ws *workSub) close() {
	ws.mu.Lock()
	defer ws.mu.Unlock()
	ws.sub.Close()
}

// end closes the subscription; its open items are no longer in flight
// here (the server gives them out again).
func (ws *workSub) end() {
	ws.mu.Lock()
	ws.sub.Close()
	ws.ended = true
	n := ws.open
	ws.open = 0
	ws.mu.Unlock()
	ws.feed.addInFlight(-n)
}

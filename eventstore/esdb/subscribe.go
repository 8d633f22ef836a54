package esdb

import (
	"context"
	"fmt"
	"sync"
	"time"

	kdb "github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// subscribeBuffer bounds the events a subscription holds that its reader
// has not taken yet; beyond it the subscription stops receiving (and gRPC
// flow control holds the server back).
const subscribeBuffer = 512

// Subscribe delivers every usersync event with Position > after, first the
// history then live events, in position order with no gaps and no
// duplicates, until ctx is done or the store is closed. Underneath it is a
// catch-up subscription on $all filtered on the server by stream prefix;
// when it drops (or its client is closed) it resubscribes, with backoff,
// from the position of the last event it delivered and skips what comes
// again.
func (s *Store) Subscribe(ctx context.Context, after uint64) *eventstore.Subscription {
	f := &subFeed{notify: make(chan struct{}), space: make(chan struct{})}
	go func() {
		err := s.follow(ctx, &after, func(e domain.RecordedEvent) bool { return f.push(ctx, e) }, nil)
		f.end(err)
	}()
	return eventstore.Follow(ctx, f, after)
}

// Changed returns a channel that is closed once usersync events committed
// after the call become readable, or once the store is closed (see
// eventstore.Feed). A background live subscription feeds it; it also closes
// the channel whenever it (re)subscribes, so that nothing committed while it
// was away is missed (readers read again and find nothing new at worst).
func (s *Store) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.feeding && !s.closed {
		s.feeding = true
		s.feeder.Add(1)
		go func() {
			defer s.feeder.Done()
			s.follow(s.life, nil, func(domain.RecordedEvent) bool { s.wake(); return true }, s.wake)
		}()
	}
	return s.changed
}

// wake closes the Changed channel and makes a new one.
func (s *Store) wake() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	close(s.changed)
	s.changed = make(chan struct{})
}

// follow runs a filtered catch-up subscription on $all from *after (nil:
// from the end), calling deliver for each usersync event in order, and
// onSubscribed after each successful (re)subscription. It resubscribes
// after every drop from the last delivered position, skipping what it has
// delivered, until ctx is done (nil), deliver returns false (nil) or the
// store is closed (ErrClosed).
func (s *Store) follow(ctx context.Context, after *uint64, deliver func(domain.RecordedEvent) bool, onSubscribed func()) error {
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	unhook := context.AfterFunc(s.life, stop)
	defer unhook()
	var last uint64
	started := after != nil
	if started {
		last = *after
	}
	for failures := 0; ; {
		if s.isClosed() {
			return eventstore.ErrClosed
		}
		if ctx.Err() != nil {
			return nil
		}
		if failures > 0 && !pause(ctx, backoff(failures-1)) {
			continue
		}
		var from kdb.AllPosition = kdb.End{}
		if started {
			from = kdb.Start{}
			if last > 0 {
				from = kdb.Position{Commit: last, Prepare: last}
			}
		}
		sub, release, err := s.subscribe(ctx, from)
		if err != nil {
			failures++
			s.log.Debug("esdb: subscribing failed; trying again", "addr", s.addrs, "after", last, "attempt", failures, "err", err)
			continue
		}
		if onSubscribed != nil {
			onSubscribed()
		}
		got, ok, err := s.receive(sub, &last, &started, deliver)
		sub.Close()
		release()
		if !ok {
			return nil
		}
		if got {
			failures = 0
		}
		failures++
		if ctx.Err() == nil && !s.isClosed() {
			s.log.Info("esdb: subscription dropped; resubscribing", "addr", s.addrs, "after", last, "err", err)
		}
	}
}

// receive hands the subscription's events to deliver until it drops
// (ok true, err the reason) or deliver refuses one (ok false). got tells
// whether an event came.
func (s *Store) receive(sub *kdb.Subscription, last *uint64, started *bool, deliver func(domain.RecordedEvent) bool) (got, ok bool, err error) {
	for {
		ev := sub.Recv()
		switch {
		case ev.SubscriptionDropped != nil:
			return got, true, ev.SubscriptionDropped.Error
		case ev.EventAppeared != nil:
			e := ev.EventAppeared.OriginalEvent()
			if e == nil {
				continue
			}
			got = true
			rec := s.toRecorded(e)
			if (*started && rec.Position <= *last) || !s.ours(rec.Stream) {
				continue // redelivered after a resubscription, or not ours
			}
			if !deliver(rec) {
				return got, false, nil
			}
			*last, *started = rec.Position, true
		}
		// Checkpoints and caught-up say nothing about what was delivered:
		// the position to resume from is the last event's.
	}
}

// subscribe opens a filtered subscription on $all from from. release must
// be called once the subscription is closed.
func (s *Store) subscribe(ctx context.Context, from kdb.AllPosition) (*kdb.Subscription, func(), error) {
	return openSubscription(ctx, s, "subscribe to "+s.addrs,
		func(ctx context.Context, c *kdb.Client) (*kdb.Subscription, error) {
			return c.SubscribeToAll(ctx, kdb.SubscribeToAllOptions{
				From:   from,
				Filter: &kdb.SubscriptionFilter{Type: kdb.StreamFilterType, Prefixes: s.filterPrefixes()},
			})
		})
}

// closer is a subscription of the client (catch-up or persistent).
type closer interface{ Close() error }

// openSubscription opens a subscription with open on a client of s,
// bounded by ctx and by Options.ConnectTimeout (the client may ignore ctx
// while it discovers), and gives it up if the client is retired meanwhile.
// A subscription that comes after the caller gave up is closed. release
// must be called once the subscription is closed; what names the call in
// the timeout's error.
func openSubscription[T closer](ctx context.Context, s *Store, what string, open func(context.Context, *kdb.Client) (T, error)) (T, func(), error) {
	var zero T
	cl, err := s.acquire()
	if err != nil {
		return zero, nil, err
	}
	type result struct {
		sub T
		err error
	}
	timeout := time.NewTimer(s.opts.ConnectTimeout)
	defer timeout.Stop()
	done := make(chan result) // unbuffered: a result nobody takes is cleaned up
	quit := make(chan struct{})
	go func() {
		sub, err := open(ctx, cl.c)
		select {
		case done <- result{sub, err}:
		case <-quit:
			if err == nil {
				sub.Close()
			}
			s.release(cl)
		}
	}()
	select {
	case r := <-done:
		if r.err != nil {
			s.release(cl)
			if code, ok := codeOf(r.err); ok && code == kdb.ErrorCodeConnectionClosed {
				s.replace(cl)
			}
			return zero, nil, r.err
		}
		return r.sub, func() { s.release(cl) }, nil
	case <-ctx.Done():
		close(quit)
		return zero, nil, ctx.Err()
	case <-cl.gone:
		close(quit)
		return zero, nil, errRetired
	case <-timeout.C:
		close(quit)
		return zero, nil, fmt.Errorf("%s: no confirmation within %s", what, s.opts.ConnectTimeout)
	}
}

// subFeed is the eventstore.Feed a Subscribe hands to eventstore.Follow:
// the subscription pushes events in, Follow reads them out.
type subFeed struct {
	mu     sync.Mutex
	buf    []domain.RecordedEvent
	notify chan struct{} // closed when events arrive or the feed ends
	space  chan struct{} // closed when the reader takes events
	ended  bool
	err    error
}

// push adds e, waiting while the buffer is full; false when ctx ended.
func (f *subFeed) push(ctx context.Context, e domain.RecordedEvent) bool {
	f.mu.Lock()
	for len(f.buf) >= subscribeBuffer {
		space := f.space
		f.mu.Unlock()
		select {
		case <-space:
		case <-ctx.Done():
			return false
		}
		f.mu.Lock()
	}
	f.buf = append(f.buf, e)
	close(f.notify)
	f.notify = make(chan struct{})
	f.mu.Unlock()
	return true
}

// end marks the feed ended with err (nil: the context ended).
func (f *subFeed) end(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ended, f.err = true, err
	close(f.notify)
	f.notify = make(chan struct{})
}

// ReadAll takes up to limit buffered events (all are after the reader's
// position). Once the feed has ended and is drained it returns why.
func (f *subFeed) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.buf) == 0 {
		if f.ended && f.err != nil {
			return nil, f.err
		}
		if f.ended {
			return nil, ctx.Err()
		}
		return nil, nil
	}
	n := min(limit, len(f.buf))
	out := append([]domain.RecordedEvent(nil), f.buf[:n]...)
	f.buf = append(f.buf[:0], f.buf[n:]...)
	close(f.space)
	f.space = make(chan struct{})
	return out, nil
}

// Changed is closed when events arrive or the feed ends.
func (f *subFeed) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.notify
}

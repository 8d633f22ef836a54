package eventstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/usersync/usersync/domain"
)

// Store is an event store with a global log: domain.EventStore plus reads
// of all events in position order, subscriptions and lifecycle.
type Store interface {
	domain.EventStore
	// ReadAll returns at most limit events with Position > after, in
	// ascending position order. limit must be positive. after is 0, a
	// position the store returned, or one less than such a position:
	// ReadAll(p-1, n) starts with the event at p, gaps or not.
	ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error)
	// Subscribe delivers every event with Position > after, first the
	// history then live events as they are committed, in position order,
	// with no gaps and no duplicates, until ctx is done or an error occurs.
	Subscribe(ctx context.Context, after uint64) *Subscription
	// Head returns the position of the last event, 0 when the store is
	// empty.
	Head(ctx context.Context) (uint64, error)
	// Close releases the store. Appends and reads after Close fail with
	// ErrClosed; Close is idempotent.
	Close() error
}

var (
	// ErrClosed is returned (wrapped) by operations on a closed store.
	ErrClosed = errors.New("event store is closed")
	// ErrInvalid is returned (wrapped) for an append that can never
	// succeed: an empty stream name or an event without a type.
	ErrInvalid = errors.New("invalid append")
	// ErrInUse is returned (wrapped) by Open when another process (or
	// another Open in this process) holds the store.
	ErrInUse = errors.New("already in use by another process")
	// ErrCorrupt is returned (wrapped) when the store file is damaged,
	// truncated, or not a usersync event store.
	ErrCorrupt = errors.New("event store file is corrupt or not an event store")
)

// ValidateAppend checks the arguments of an append that no adapter can
// accept. Adapters call it before touching storage.
func ValidateAppend(stream string, events []domain.NewEvent) error {
	if stream == "" {
		return fmt.Errorf("append: %w: empty stream name", ErrInvalid)
	}
	for i, e := range events {
		if e.Type == "" {
			return fmt.Errorf("append to %s: event %d: %w: empty event type", stream, i, ErrInvalid)
		}
	}
	return nil
}

// Feed is the small contract Follow needs from a store.
type Feed interface {
	// ReadAll is as Store.ReadAll.
	ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error)
	// Changed returns a channel that is closed once events committed after
	// the call become readable, or once the store is closed. Callers take
	// the channel before reading, so that no commit is missed.
	Changed() <-chan struct{}
}

// followBatch is how many events a subscription reads at a time, and the
// capacity of its channel.
const followBatch = 512

// Subscription is a running subscription; see Follow.
type Subscription struct {
	events chan domain.RecordedEvent
	err    error
}

// Events returns the channel the events arrive on. It is closed when the
// subscription ends.
func (s *Subscription) Events() <-chan domain.RecordedEvent { return s.events }

// Err tells why the subscription ended. It is valid once the Events channel
// is closed, and nil when the subscription ended because its context was
// done.
func (s *Subscription) Err() error { return s.err }

// Follow starts a subscription on feed: it reads the events after position
// after in batches, delivers them on the subscription's channel in order,
// and when it has caught up waits for feed.Changed before reading again. It
// ends when ctx is done (Err is then nil) or when a read fails. The caller
// must keep receiving from Events or cancel ctx.
func Follow(ctx context.Context, feed Feed, after uint64) *Subscription {
	sub := &Subscription{events: make(chan domain.RecordedEvent, followBatch)}
	go sub.run(ctx, feed, after)
	return sub
}

func (s *Subscription) run(ctx context.Context, feed Feed, pos uint64) {
	defer close(s.events)
	for ctx.Err() == nil {
		wake := feed.Changed()
		batch, err := feed.ReadAll(ctx, pos, followBatch)
		if err != nil {
			if ctx.Err() == nil {
				s.err = fmt.Errorf("subscription after position %d: %w", pos, err)
			}
			return
		}
		for _, e := range batch {
			if e.Position <= pos {
				s.err = fmt.Errorf("subscription: store returned position %d after %d", e.Position, pos)
				return
			}
			select {
			case s.events <- e:
				pos = e.Position
			case <-ctx.Done():
				return
			}
		}
		if len(batch) > 0 {
			// Read again before waiting: a short batch does not prove we
			// are caught up for every adapter.
			continue
		}
		select {
		case <-wake:
		case <-ctx.Done():
		}
	}
}

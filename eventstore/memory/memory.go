// Package memory holds an in-memory eventstore.Store, for unit tests and
// tools that need an event log without a file. It keeps everything in
// process memory: nothing survives Close.
package memory

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// Store is an in-memory event store. Positions are dense (1, 2, 3, ...),
// appends are atomic and visible to readers as soon as Append returns, and
// the bytes of events are copied on the way in and on the way out, so
// callers cannot change what is stored. The zero value is not usable; call
// New. A Store is safe for concurrent use.
type Store struct {
	mu      sync.RWMutex
	closed  bool
	log     []domain.RecordedEvent // log[i] has Position i+1
	streams map[string][]int       // stream name -> indexes into log, oldest first
	changed chan struct{}          // closed at the next append or at Close
}

var _ eventstore.Store = (*Store)(nil)

// New returns an empty, open store.
func New() *Store {
	return &Store{
		streams: make(map[string][]int),
		changed: make(chan struct{}),
	}
}

// Append writes events to stream if its version matches expected. A
// mismatch is a *domain.ConcurrencyError. Appending no events only checks
// the version and returns the stream's current version and the position of
// its last event.
func (s *Store) Append(ctx context.Context, stream string, expected domain.ExpectedVersion, events ...domain.NewEvent) (domain.AppendResult, error) {
	if err := eventstore.ValidateAppend(stream, events); err != nil {
		return domain.AppendResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return domain.AppendResult{}, fmt.Errorf("append to %s: %w", stream, err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return domain.AppendResult{}, fmt.Errorf("append to %s: %w", stream, eventstore.ErrClosed)
	}
	idx := s.streams[stream]
	current := uint64(len(idx))
	if !expected.Matches(current) {
		return domain.AppendResult{}, &domain.ConcurrencyError{Stream: stream, Expected: expected, Actual: current}
	}
	if len(events) == 0 {
		res := domain.AppendResult{Version: current}
		if current > 0 {
			res.Position = s.log[idx[len(idx)-1]].Position
		}
		return res, nil
	}
	now := time.Now().UTC().Round(0)
	for i, e := range events {
		s.log = append(s.log, domain.RecordedEvent{
			Position:   uint64(len(s.log) + 1),
			Stream:     stream,
			Version:    current + uint64(i) + 1,
			Type:       e.Type,
			Data:       clone(e.Data),
			Metadata:   clone(e.Metadata),
			RecordedAt: now,
		})
		idx = append(idx, len(s.log)-1)
	}
	s.streams[stream] = idx
	close(s.changed)
	s.changed = make(chan struct{})
	return domain.AppendResult{Version: uint64(len(idx)), Position: uint64(len(s.log))}, nil
}

// ReadStream returns the events of stream, oldest first; a stream with no
// events yields none and no error.
func (s *Store) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read stream %s: %w", stream, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("read stream %s: %w", stream, eventstore.ErrClosed)
	}
	idx := s.streams[stream]
	if len(idx) == 0 {
		return nil, nil
	}
	out := make([]domain.RecordedEvent, len(idx))
	for i, j := range idx {
		out[i] = copyEvent(s.log[j])
	}
	return out, nil
}

// ReadStreamFrom returns the events of stream with Version > after,
// oldest first.
func (s *Store) ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read stream %s after version %d: %w", stream, after, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("read stream %s after version %d: %w", stream, after, eventstore.ErrClosed)
	}
	idx := s.streams[stream]
	if after >= uint64(len(idx)) {
		return nil, nil
	}
	// Versions are dense: idx[v-1] is version v.
	idx = idx[after:]
	out := make([]domain.RecordedEvent, len(idx))
	for i, j := range idx {
		out[i] = copyEvent(s.log[j])
	}
	return out, nil
}

// ReadAll returns at most limit events with Position > after, oldest
// first. limit must be positive.
func (s *Store) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("read all after %d: limit %d must be positive", after, limit)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read all after %d: %w", after, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("read all after %d: %w", after, eventstore.ErrClosed)
	}
	head := uint64(len(s.log))
	if after >= head {
		return nil, nil
	}
	page := s.log[after:min(head, after+uint64(limit))]
	out := make([]domain.RecordedEvent, len(page))
	for i, e := range page {
		out[i] = copyEvent(e)
	}
	return out, nil
}

// Subscribe follows the store from position after; see eventstore.Follow.
// The subscription ends with an error when the store is closed.
func (s *Store) Subscribe(ctx context.Context, after uint64) *eventstore.Subscription {
	return eventstore.Follow(ctx, s, after)
}

// Changed returns a channel that is closed at the next append of events
// or when the store is closed. See eventstore.Feed.
func (s *Store) Changed() <-chan struct{} {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.changed
}

// DensePositions reports that positions are 1, 2, 3, … without gaps.
func (s *Store) DensePositions() bool { return true }

// Head returns the position of the last event, 0 when the store is empty.
func (s *Store) Head(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("head: %w", err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, fmt.Errorf("head: %w", eventstore.ErrClosed)
	}
	return uint64(len(s.log)), nil
}

// Close drops the events and ends the subscriptions. Operations after
// Close fail with eventstore.ErrClosed; Close is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.log = nil
	s.streams = nil
	close(s.changed)
	return nil
}

func copyEvent(e domain.RecordedEvent) domain.RecordedEvent {
	e.Data = clone(e.Data)
	e.Metadata = clone(e.Metadata)
	return e
}

// clone copies b, returning nil for an empty b as the SQLite store does.
func clone(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return append([]byte(nil), b...)
}

// ReadStreamBackward returns at most limit events of stream with Version <
// before (before 0: from its last event), newest first
// (eventstore.BackwardReader).
func (s *Store) ReadStreamBackward(ctx context.Context, stream string, before uint64, limit int) ([]domain.RecordedEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("read stream %s backwards: limit %d must be positive", stream, limit)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read stream %s backwards: %w", stream, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, fmt.Errorf("read stream %s backwards: %w", stream, eventstore.ErrClosed)
	}
	idx := s.streams[stream]
	end := uint64(len(idx)) // versions 1..end; idx[v-1] is version v
	if before > 0 && before-1 < end {
		end = before - 1
	}
	var out []domain.RecordedEvent
	for v := end; v >= 1 && len(out) < limit; v-- {
		out = append(out, copyEvent(s.log[idx[v-1]]))
	}
	return out, nil
}

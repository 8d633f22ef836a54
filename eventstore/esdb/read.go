package esdb

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"

	kdb "github.com/EventStore/EventStore-Client-Go/v4/esdb"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// allPage is how many $all events one read asks for.
const allPage = 1024

// toRecorded converts a recorded event: version = revision + 1, position =
// commit position, RecordedAt = the server's created time.
func (s *Store) toRecorded(e *kdb.RecordedEvent) domain.RecordedEvent {
	r := domain.RecordedEvent{
		Position:   e.Position.Commit,
		Stream:     strings.TrimPrefix(e.StreamID, s.opts.Namespace),
		Version:    versionOf(e.EventNumber),
		Type:       e.EventType,
		RecordedAt: e.CreatedDate,
	}
	if len(e.Data) > 0 {
		r.Data = e.Data
	}
	if len(e.UserMetadata) > 0 {
		r.Metadata = e.UserMetadata
	}
	return r
}

// readEvents runs one read and collects its events; a missing stream
// yields none.
func (s *Store) readEvents(ctx context.Context, open func(ctx context.Context, c *kdb.Client) (*kdb.ReadStream, error)) ([]*kdb.RecordedEvent, error) {
	var out []*kdb.RecordedEvent
	err := s.retry(ctx, func(ctx context.Context) error {
		var err error
		out, err = call(ctx, s, func(ctx context.Context, c *kdb.Client) ([]*kdb.RecordedEvent, error) {
			rs, err := open(ctx, c)
			if err != nil {
				return nil, err
			}
			defer rs.Close()
			var evs []*kdb.RecordedEvent
			for {
				ev, err := rs.Recv()
				if isEOF(err) {
					return evs, nil
				}
				if err != nil {
					return nil, err
				}
				if e := ev.OriginalEvent(); e != nil {
					evs = append(evs, e)
				}
			}
		})
		return err
	})
	if classOf(err) == classNotFound {
		return nil, nil
	}
	if err != nil && s.isClosed() && !errors.Is(err, context.Canceled) {
		return nil, eventstore.ErrClosed
	}
	return out, err
}

func (s *Store) readStream(ctx context.Context, stream string, from kdb.StreamPosition, dir kdb.Direction, count uint64) ([]domain.RecordedEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if s.isClosed() {
		return nil, eventstore.ErrClosed
	}
	evs, err := s.readEvents(ctx, func(ctx context.Context, c *kdb.Client) (*kdb.ReadStream, error) {
		return c.ReadStream(ctx, s.serverName(stream), kdb.ReadStreamOptions{Direction: dir, From: from}, count)
	})
	if err != nil {
		return nil, err
	}
	out := make([]domain.RecordedEvent, len(evs))
	for i, e := range evs {
		out[i] = s.toRecorded(e)
	}
	if len(out) > 0 && dir == kdb.Forwards {
		s.rememberVersion(stream, out[len(out)-1].Version)
	}
	return out, nil
}

// ReadStream returns the stream's events oldest first; a stream that does
// not exist yields no events and no error.
func (s *Store) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	out, err := s.readStream(ctx, stream, kdb.Start{}, kdb.Forwards, math.MaxInt64)
	if err != nil {
		return nil, fmt.Errorf("read stream %s: %w", stream, err)
	}
	return out, nil
}

// ReadStreamFrom returns the stream's events with Version > after, oldest
// first (from revision after on).
func (s *Store) ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error) {
	out, err := s.readStream(ctx, stream, kdb.Revision(after), kdb.Forwards, math.MaxInt64)
	if err != nil {
		return nil, fmt.Errorf("read stream %s after version %d: %w", stream, after, err)
	}
	return out, nil
}

// lastVersion returns the version and position of the stream's last event
// (0, 0 for a stream without events).
func (s *Store) lastVersion(ctx context.Context, stream string) (uint64, uint64, error) {
	evs, err := s.readStream(ctx, stream, kdb.End{}, kdb.Backwards, 1)
	if err != nil {
		return 0, 0, fmt.Errorf("read the last event of %s: %w", stream, err)
	}
	if len(evs) == 0 {
		return 0, 0, nil
	}
	s.rememberVersion(stream, evs[0].Version)
	return evs[0].Version, evs[0].Position, nil
}

// readAllPage reads up to count events of $all from from in direction dir.
func (s *Store) readAllPage(ctx context.Context, from kdb.AllPosition, dir kdb.Direction, count uint64) ([]*kdb.RecordedEvent, error) {
	return s.readEvents(ctx, func(ctx context.Context, c *kdb.Client) (*kdb.ReadStream, error) {
		return c.ReadAll(ctx, kdb.ReadAllOptions{Direction: dir, From: from}, count)
	})
}

// ReadAll returns at most limit events of usersync's streams with Position
// > after, in position order. It reads $all forwards from after (a forward
// read includes its start, which is skipped) and leaves out the server's
// and other applications' streams, reading on until it has limit events or
// reaches the end of $all. The server refuses to read from a position
// inside a record, so after must be 0 or an event's position, or one less
// than an event's (ReadAll(p-1, n) starts with the event at p).
func (s *Store) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("read all after %d: limit %d must be positive", after, limit)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("read all after %d: %w", after, err)
	}
	if s.isClosed() {
		return nil, fmt.Errorf("read all after %d: %w", after, eventstore.ErrClosed)
	}
	var out []domain.RecordedEvent
	cursor := after
	for len(out) < limit {
		var from kdb.AllPosition = kdb.Start{}
		count := uint64(min(limit-len(out), allPage))
		if cursor > 0 {
			from = kdb.Position{Commit: cursor, Prepare: cursor}
			count++ // the start itself comes back
		}
		page, err := s.readAllPage(ctx, from, kdb.Forwards, count)
		if err != nil && cursor == after && cursor > 0 && invalidPosition(err) {
			// ReadAll(p-1, n) is how callers ask for the event at p, gaps
			// or not. The server reads the record that starts at a
			// position and refuses one inside a record, as p-1 is: read
			// from p, which the read includes.
			from = kdb.Position{Commit: after + 1, Prepare: after + 1}
			count--
			page, err = s.readAllPage(ctx, from, kdb.Forwards, count)
		}
		if err != nil {
			return nil, fmt.Errorf("read all after %d: %w", after, err)
		}
		for _, e := range page {
			if (cursor > 0 && e.Position.Commit <= cursor) || !s.ours(e.StreamID) || len(out) == limit {
				continue
			}
			out = append(out, s.toRecorded(e))
		}
		if uint64(len(page)) < count {
			break // the end of $all
		}
		last := page[len(page)-1].Position.Commit
		if last <= cursor {
			return nil, fmt.Errorf("read all after %d: the server went back from position %d to %d", after, cursor, last)
		}
		cursor = last
	}
	return out, nil
}

// Head returns the position of the last event of usersync's streams, 0
// when there is none: it reads $all backwards from the end, skipping the
// server's and other applications' events, down to the start if need be.
func (s *Store) Head(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("head: %w", err)
	}
	if s.isClosed() {
		return 0, fmt.Errorf("head: %w", eventstore.ErrClosed)
	}
	var from kdb.AllPosition = kdb.End{}
	var cursor uint64 = math.MaxUint64
	for {
		page, err := s.readAllPage(ctx, from, kdb.Backwards, allPage)
		if err != nil {
			return 0, fmt.Errorf("head: %w", err)
		}
		for _, e := range page {
			if e.Position.Commit < cursor && s.ours(e.StreamID) {
				return e.Position.Commit, nil
			}
		}
		if len(page) < allPage {
			return 0, nil
		}
		last := page[len(page)-1].Position.Commit
		if last >= cursor {
			return 0, fmt.Errorf("head: the server went forward from position %d to %d reading backwards", cursor, last)
		}
		cursor = last
		from = kdb.Position{Commit: last, Prepare: last}
	}
}

// ReadStreamBackward returns at most limit events of stream with Version <
// before (before 0: from its last event), newest first
// (eventstore.BackwardReader): one backward read of limit events.
func (s *Store) ReadStreamBackward(ctx context.Context, stream string, before uint64, limit int) ([]domain.RecordedEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("read stream %s backwards: limit %d must be positive", stream, limit)
	}
	if before == 1 {
		return nil, nil
	}
	var from kdb.StreamPosition = kdb.End{}
	if before > 0 {
		from = kdb.Revision(before - 2) // version before-1 is revision before-2
	}
	out, err := s.readStream(ctx, stream, from, kdb.Backwards, uint64(limit))
	if err != nil {
		return nil, fmt.Errorf("read stream %s before version %d: %w", stream, before, err)
	}
	return out, nil
}

package esdb

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"

	kdb "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// idNamespace is the UUID v5 namespace of EventID.
const idNamespace = "3c1d7f0a-52b4-5b8e-9a4e-7d2f1e6c9b30"

// maxAnyConflicts bounds how often an AnyVersion append moves on to a
// newer revision because other writers got there first.
const maxAnyConflicts = 32

// revisionOf is the EventStoreDB revision of a domain version (v ≥ 1).
func revisionOf(v uint64) uint64 { return v - 1 }

// versionOf is the domain version of an EventStoreDB revision.
func versionOf(rev uint64) uint64 { return rev + 1 }

// expectedRevision is the client's form of an exact expectation: NoStream
// for version 0, else the revision of version v.
func expectedRevision(v uint64) kdb.ExpectedRevision {
	if v == 0 {
		return kdb.NoStream{}
	}
	return kdb.Revision(revisionOf(v))
}

// EventID is the id the store gives e when it is appended to stream as
// version version: a UUID v5 (SHA-1) over the stream, the version and the
// event's type, data and metadata, each length-prefixed. The same append at
// the same expected version always sends the same ids, which is what lets
// the server recognise a retried append; the version makes equal events at
// different places in a stream distinct.
func EventID(stream string, version uint64, e domain.NewEvent) uuid.UUID {
	return eventID(uuid.MustParse(idNamespace), stream, version, e)
}

func eventID(ns uuid.UUID, stream string, version uint64, e domain.NewEvent) uuid.UUID {
	n := 4*binary.MaxVarintLen64 + len(stream) + len(e.Type) + len(e.Data) + len(e.Metadata)
	b := make([]byte, 0, n+binary.MaxVarintLen64)
	b = binary.AppendUvarint(b, version)
	for _, part := range [][]byte{[]byte(stream), []byte(e.Type), e.Data, e.Metadata} {
		b = binary.AppendUvarint(b, uint64(len(part)))
		b = append(b, part...)
	}
	return uuid.NewSHA1(ns, b)
}

// appendSize is what the server counts against its append size limit.
func appendSize(events []domain.NewEvent) int {
	n := 0
	for _, e := range events {
		n += len(e.Data) + len(e.Metadata) + 2*len(e.Type)
	}
	return n
}

// checkSize refuses an append the server would refuse for its size.
func checkSize(stream string, events []domain.NewEvent, limit int) error {
	if n := appendSize(events); n > limit {
		return fmt.Errorf("append to %s: %w: %w: %d events of %d bytes (data + metadata + 2 × type) exceed the limit of %d bytes; split the append or raise the server's MaxAppendSize",
			stream, eventstore.ErrInvalid, ErrTooLarge, len(events), n, limit)
	}
	return nil
}

// contentType is JSON when the data is JSON, else binary.
func contentType(data []byte) kdb.ContentType {
	if len(data) > 0 && json.Valid(data) {
		return kdb.ContentTypeJson
	}
	return kdb.ContentTypeBinary
}

// toEventData builds the client's events for an append after version base.
func (s *Store) toEventData(stream string, base uint64, events []domain.NewEvent) []kdb.EventData {
	out := make([]kdb.EventData, len(events))
	for i, e := range events {
		out[i] = kdb.EventData{
			EventID:     eventID(s.ns, stream, base+uint64(i)+1, e),
			EventType:   e.Type,
			ContentType: contentType(e.Data),
			Data:        e.Data,
			Metadata:    e.Metadata,
		}
	}
	return out
}

// Append writes events to stream if its version matches expected; see
// domain.EventStore. A mismatch is a *domain.ConcurrencyError. Appending no
// events only checks the version (by reading the stream's last event). The
// append is retried on transport errors with the same ids and expected
// revision; an AnyVersion append is sent at the stream's last known
// revision and moved on to the actual one when that is stale.
func (s *Store) Append(ctx context.Context, stream string, expected domain.ExpectedVersion, events ...domain.NewEvent) (domain.AppendResult, error) {
	if err := eventstore.ValidateAppend(stream, events); err != nil {
		return domain.AppendResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return domain.AppendResult{}, fmt.Errorf("append to %s: %w", stream, err)
	}
	if s.isClosed() {
		return domain.AppendResult{}, fmt.Errorf("append to %s: %w", stream, eventstore.ErrClosed)
	}
	if len(events) == 0 {
		return s.checkVersion(ctx, stream, expected)
	}
	if err := checkSize(stream, events, s.opts.MaxAppendSize); err != nil {
		return domain.AppendResult{}, err
	}
	if v, exact := expected.Version(); exact {
		res, err := s.appendAt(ctx, stream, v, events)
		var ce *domain.ConcurrencyError
		if errors.As(err, &ce) {
			ce.Expected = expected
		}
		return res, err
	}
	v := s.knownVersion(stream)
	for range maxAnyConflicts {
		res, err := s.appendAt(ctx, stream, v, events)
		var ce *domain.ConcurrencyError
		if !errors.As(err, &ce) {
			return res, err
		}
		v = ce.Actual
	}
	return domain.AppendResult{}, fmt.Errorf("append to %s (any version): %w: other writers moved the stream on %d times in a row", stream, ErrUnavailable, maxAnyConflicts)
}

// appendAt appends events at exact version v (0: no stream), retrying
// transport errors with the same request.
func (s *Store) appendAt(ctx context.Context, stream string, v uint64, events []domain.NewEvent) (domain.AppendResult, error) {
	data := s.toEventData(stream, v, events)
	opts := kdb.AppendToStreamOptions{ExpectedRevision: expectedRevision(v)}
	var wr *kdb.WriteResult
	err := s.retry(ctx, func(ctx context.Context) error {
		var err error
		wr, err = call(ctx, s, func(ctx context.Context, c *kdb.Client) (*kdb.WriteResult, error) {
			return c.AppendToStream(ctx, s.serverName(stream), opts, data...)
		})
		return err
	})
	if err != nil {
		if ce, ok := conflict(stream, domain.ExactVersion(v), err); ok {
			s.noteVersion(stream, ce.Actual, true)
			return domain.AppendResult{}, ce
		}
		if classOf(err) == classConflict {
			// The actual version was not in the answer: read it.
			actual, _, rerr := s.lastVersion(ctx, stream)
			if rerr != nil {
				return domain.AppendResult{}, fmt.Errorf("append to %s at version %d: %w (and reading its version: %w)", stream, v, err, rerr)
			}
			return domain.AppendResult{}, &domain.ConcurrencyError{Stream: stream, Expected: domain.ExactVersion(v), Actual: actual}
		}
		if errors.Is(err, eventstore.ErrClosed) || (s.isClosed() && !errors.Is(err, context.Canceled)) {
			return domain.AppendResult{}, fmt.Errorf("append to %s: %w", stream, eventstore.ErrClosed)
		}
		return domain.AppendResult{}, fmt.Errorf("append %d events to %s at version %d: %w", len(events), stream, v, err)
	}
	res := domain.AppendResult{Version: versionOf(wr.NextExpectedVersion), Position: wr.CommitPosition}
	s.rememberVersion(stream, res.Version)
	if res.Position == 0 {
		// The answer had no position (a server may leave it out): read it
		// from the last event appended.
		evs, err := s.readStream(ctx, stream, kdb.Revision(revisionOf(res.Version)), kdb.Forwards, 1)
		if err != nil {
			return res, fmt.Errorf("append to %s: appended as version %d, but reading its position failed: %w", stream, res.Version, err)
		}
		if len(evs) != 1 {
			return res, fmt.Errorf("append to %s: appended as version %d, but that version cannot be read back", stream, res.Version)
		}
		res.Position = evs[0].Position
	}
	return res, nil
}

// checkVersion is an empty append: it compares expected with the stream's
// current version.
func (s *Store) checkVersion(ctx context.Context, stream string, expected domain.ExpectedVersion) (domain.AppendResult, error) {
	v, pos, err := s.lastVersion(ctx, stream)
	if err != nil {
		return domain.AppendResult{}, fmt.Errorf("append to %s: %w", stream, err)
	}
	if !expected.Matches(v) {
		return domain.AppendResult{}, &domain.ConcurrencyError{Stream: stream, Expected: expected, Actual: v}
	}
	return domain.AppendResult{Version: v, Position: pos}, nil
}

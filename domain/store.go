package domain

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// NewEvent is an event ready to be appended: its type name, its JSON data and
// its JSON metadata (schema version, time, causation). The store treats Data
// and Metadata as opaque bytes.
type NewEvent struct {
	Type     string
	Data     []byte
	Metadata []byte
}

// RecordedEvent is an event as the store returns it.
type RecordedEvent struct {
	// Position is the event's place in the global log: strictly increasing
	// across all streams, starting at 1. Adapters may leave gaps.
	Position uint64
	// Stream is the name of the stream the event belongs to.
	Stream string
	// Version is the event's number in its stream, starting at 1.
	Version    uint64
	Type       string
	Data       []byte
	Metadata   []byte
	RecordedAt time.Time
}

// ParkedEvent is an event a handler gave up on: the event's place in the
// log, the handler, and the error it last failed with. It is recorded so
// that it is visible and can be replayed; its JSON is part of the API.
type ParkedEvent struct {
	Handler  string    `json:"handler"`
	Position uint64    `json:"position"`
	Stream   string    `json:"stream"`
	Version  uint64    `json:"version"`
	Type     string    `json:"type"`
	Error    string    `json:"error"`
	ParkedAt time.Time `json:"parked_at"`
}

type expectKind uint8

const (
	expectAny expectKind = iota
	expectNoStream
	expectExact
)

// ExpectedVersion is the optimistic-concurrency condition of an append.
// The zero value is AnyVersion.
type ExpectedVersion struct {
	kind    expectKind
	version uint64
}

// AnyVersion appends whatever the stream's current version is.
func AnyVersion() ExpectedVersion { return ExpectedVersion{kind: expectAny} }

// NoStream appends only if the stream has no events yet.
func NoStream() ExpectedVersion { return ExpectedVersion{kind: expectNoStream} }

// ExactVersion appends only if the stream's last event has version v.
// ExactVersion(0) is the same as NoStream.
func ExactVersion(v uint64) ExpectedVersion {
	if v == 0 {
		return NoStream()
	}
	return ExpectedVersion{kind: expectExact, version: v}
}

// Matches reports whether a stream whose last event has version current
// (0 for a stream with no events) satisfies e.
func (e ExpectedVersion) Matches(current uint64) bool {
	switch e.kind {
	case expectNoStream:
		return current == 0
	case expectExact:
		return current == e.version
	default:
		return true
	}
}

// IsAny reports whether e accepts any current version.
func (e ExpectedVersion) IsAny() bool { return e.kind == expectAny }

// Version returns the exact version e expects (0 for NoStream) and whether e
// expects one at all.
func (e ExpectedVersion) Version() (uint64, bool) {
	switch e.kind {
	case expectNoStream:
		return 0, true
	case expectExact:
		return e.version, true
	default:
		return 0, false
	}
}

func (e ExpectedVersion) String() string {
	switch e.kind {
	case expectNoStream:
		return "no stream"
	case expectExact:
		return fmt.Sprintf("version %d", e.version)
	default:
		return "any version"
	}
}

// ErrConcurrency is matched (errors.Is) by every ConcurrencyError.
var ErrConcurrency = errors.New("wrong expected version")

// ConcurrencyError says an append was refused because the stream was not at
// the expected version: someone else appended first. Callers reload and decide again.
type ConcurrencyError struct {
	Stream   string
	Expected ExpectedVersion
	Actual   uint64
}

func (e *ConcurrencyError) Error() string {
	return fmt.Sprintf("append to %s: expected %s, stream is at version %d", e.Stream, e.Expected, e.Actual)
}

// Is makes errors.Is(err, ErrConcurrency) true.
func (e *ConcurrencyError) Is(target error) bool { return target == ErrConcurrency }

// AppendResult tells where an append landed.
type AppendResult struct {
	// Version is the stream version of the last appended event.
	Version uint64
	// Position is the global position of the last appended event.
	Position uint64
}

// EventStore is the port the domain needs from an event store: append to a
// stream under an expected version, read a stream back in order, whole or
// from a version on.
type EventStore interface {
	// Append writes events to stream atomically if expected matches, and
	// returns once they are durable. A mismatch is a *ConcurrencyError.
	// Appending no events only checks the expected version.
	Append(ctx context.Context, stream string, expected ExpectedVersion, events ...NewEvent) (AppendResult, error)
	// ReadStream returns the stream's events oldest first; a stream that
	// does not exist yields no events and no error.
	ReadStream(ctx context.Context, stream string) ([]RecordedEvent, error)
	// ReadStreamFrom returns the stream's events with Version > after,
	// oldest first: what was appended since a state folded up to version
	// after. After the stream's last version (or a stream that does not
	// exist) it yields no events and no error. Its cost depends on the
	// events returned, not on the stream's length.
	ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]RecordedEvent, error)
}

package eventstore

import (
	"context"
	"fmt"

	"github.com/usersync/usersync/domain"
)

// BackwardReader is implemented by stores that read a stream newest first
// in bounded pages (the embedded store, EventStoreDB, the memory store):
// what a timeline of a contact with many events needs.
type BackwardReader interface {
	// ReadStreamBackward returns at most limit events of stream with
	// Version < before (before 0: from the stream's last event), newest
	// first. Its cost depends on the events returned, not on the stream's
	// length. limit must be positive.
	ReadStreamBackward(ctx context.Context, stream string, before uint64, limit int) ([]domain.RecordedEvent, error)
}

// ReadStreamBackward reads a page of stream newest first through the
// store's BackwardReader; a store without one is read forwards from the
// start of the page (a bounded read when before is given, the whole stream
// when it is not).
func ReadStreamBackward(ctx context.Context, s domain.EventStore, stream string, before uint64, limit int) ([]domain.RecordedEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("read stream %s backwards: limit %d must be positive", stream, limit)
	}
	if b, ok := s.(BackwardReader); ok {
		return b.ReadStreamBackward(ctx, stream, before, limit)
	}
	if before == 1 {
		return nil, nil
	}
	var after uint64
	if before > 0 && before-1 > uint64(limit) {
		after = before - 1 - uint64(limit)
	}
	recs, err := s.ReadStreamFrom(ctx, stream, after)
	if err != nil {
		return nil, err
	}
	if after > 0 && len(recs) < limit {
		// before lies beyond the stream's end, which is shorter than
		// after: read what there is.
		if recs, err = s.ReadStreamFrom(ctx, stream, 0); err != nil {
			return nil, err
		}
	}
	out := make([]domain.RecordedEvent, 0, min(len(recs), limit))
	for i := len(recs) - 1; i >= 0 && len(out) < limit; i-- {
		if before == 0 || recs[i].Version < before {
			out = append(out, recs[i])
		}
	}
	return out, nil
}

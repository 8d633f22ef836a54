package esdbtest

import (
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
)

// The stand-in's log: every event ever written, in log order, plus an index per stream.
// A record's position is its byte offset in an imagined transaction file, so positions grow with
// gaps (the size of the records in between) like the real server's, and commit == prepare.

const (
	// recordOverhead is the fixed part of a record's size in the imagined log (header, ids,
	// timestamps); the real server's prepare records carry a similar header.
	recordOverhead = 92
	// firstPosition is where the first event lands: the real log starts with a system (epoch)
	// record, so no event is at position 0.
	firstPosition = 128

	epochStream       = "$epoch-information"
	epochEventType    = "$epoch-information"
	streamDeletedType = "$streamDeleted"
	metadataEventType = "$metadata"
	linkEventType     = "$>"

	// deletedRevision is the revision of a tombstone event (EventNumber.DeletedStream, long.MaxValue).
	deletedRevision = uint64(1<<63 - 1)
)

// record is one event in the log.
type record struct {
	stream      string
	revision    uint64
	id          uuid.UUID
	eventType   string
	contentType string
	created     int64 // .NET ticks: 100 ns since the Unix epoch
	data        []byte
	meta        []byte
	pos         uint64
}

// streamState is one stream's index into the log.
type streamState struct {
	events []*record
	// truncateBefore is the first readable revision after a soft delete (the real server's $tb).
	truncateBefore uint64
	softDeleted    bool
	tombstoned     bool
}

// lastRevision is the revision of the stream's last event, or -1 if it has none.
func (s *streamState) lastRevision() int64 {
	if s == nil || len(s.events) == 0 {
		return -1
	}
	return int64(s.events[len(s.events)-1].revision)
}

// readable is the events a read sees: none after a tombstone, those at or after $tb otherwise.
func (s *streamState) readable() []*record {
	if s == nil {
		return nil
	}
	out := s.events
	for len(out) > 0 && out[0].revision < s.truncateBefore {
		out = out[1:]
	}
	return out
}

// idCache is the bounded in-memory cache of recently written event ids that the real server
// consults for Any / stream_exists appends (S: IndexWriter's committed-events cache). When
// full, the oldest ids are forgotten.
type idCache struct {
	max   int
	order []uuid.UUID
	ids   map[uuid.UUID]*record
}

func newIDCache(max int) *idCache {
	return &idCache{max: max, ids: make(map[uuid.UUID]*record)}
}

func (c *idCache) add(r *record) {
	if c.max <= 0 {
		return
	}
	if _, ok := c.ids[r.id]; !ok {
		c.order = append(c.order, r.id)
	}
	c.ids[r.id] = r
	for len(c.order) > c.max {
		delete(c.ids, c.order[0])
		c.order = c.order[1:]
	}
}

func (c *idCache) get(id uuid.UUID) (*record, bool) {
	r, ok := c.ids[id]
	return r, ok
}

func (c *idCache) reset() {
	c.order = nil
	c.ids = make(map[uuid.UUID]*record)
}

// eventLog is the whole store, guarded by mu. changed is closed and replaced on every write,
// so subscriptions wait on it.
type eventLog struct {
	mu      sync.Mutex
	all     []*record
	streams map[string]*streamState
	next    uint64
	cache   *idCache
	changed chan struct{}
	now     func() time.Time
}

func newEventLog(cacheSize int) *eventLog {
	l := &eventLog{
		streams: make(map[string]*streamState),
		next:    firstPosition,
		cache:   newIDCache(cacheSize),
		changed: make(chan struct{}),
		now:     time.Now,
	}
	l.mu.Lock()
	l.writeLocked(epochStream, []proposed{{
		id:          uuid.New(),
		eventType:   epochEventType,
		contentType: "application/json",
		data:        []byte(`{"epochNumber":0}`),
	}})
	l.mu.Unlock()
	return l
}

// proposed is an event sent by a client, not yet written.
type proposed struct {
	id          uuid.UUID
	eventType   string
	contentType string
	data        []byte
	meta        []byte
}

// size is what the real server counts against its append limit: data, custom metadata and
// twice the event type's length.
func (p proposed) size() int {
	return len(p.data) + len(p.meta) + 2*len(p.eventType)
}

// writeLocked appends events to a stream at the next revisions and wakes the subscribers.
// Callers hold mu and have checked the expected version.
func (l *eventLog) writeLocked(stream string, events []proposed) []*record {
	st := l.streams[stream]
	if st == nil {
		st = &streamState{}
		l.streams[stream] = st
	}
	rev := uint64(st.lastRevision() + 1)
	ticks := l.now().UnixNano() / 100
	out := make([]*record, 0, len(events))
	for _, e := range events {
		r := &record{
			stream:      stream,
			revision:    rev,
			id:          e.id,
			eventType:   e.eventType,
			contentType: e.contentType,
			created:     ticks,
			data:        e.data,
			meta:        e.meta,
			pos:         l.next,
		}
		rev++
		l.next += uint64(recordOverhead + len(stream) + len(e.eventType) + len(e.data) + len(e.meta))
		l.all = append(l.all, r)
		st.events = append(st.events, r)
		l.cache.add(r)
		out = append(out, r)
	}
	if len(out) > 0 {
		close(l.changed)
		l.changed = make(chan struct{})
	}
	return out
}

// writeTombstoneLocked writes the $streamDeleted event at revision long.MaxValue.
func (l *eventLog) writeTombstoneLocked(stream string) *record {
	st := l.streams[stream]
	if st == nil {
		st = &streamState{}
		l.streams[stream] = st
	}
	r := &record{
		stream:      stream,
		revision:    deletedRevision,
		id:          uuid.New(),
		eventType:   streamDeletedType,
		contentType: "application/octet-stream",
		created:     l.now().UnixNano() / 100,
		pos:         l.next,
	}
	l.next += uint64(recordOverhead + len(stream) + len(streamDeletedType))
	l.all = append(l.all, r)
	st.tombstoned = true
	close(l.changed)
	l.changed = make(chan struct{})
	return r
}

// indexAfter is the index in all of the first record with position > pos (or >= when inclusive).
func (l *eventLog) indexAfter(pos uint64, inclusive bool) int {
	lo, hi := 0, len(l.all)
	for lo < hi {
		mid := (lo + hi) / 2
		p := l.all[mid].pos
		if p > pos || (inclusive && p == pos) {
			hi = mid
		} else {
			lo = mid + 1
		}
	}
	return lo
}

// isSystemStream reports the streams the real server hides from filtered $all subscriptions
// whatever the filter: the epoch stream and the persistent subscriptions' own streams.
func isHiddenFromFilters(stream string) bool {
	return stream == epochStream || strings.HasPrefix(stream, "$persistentsubscription-")
}

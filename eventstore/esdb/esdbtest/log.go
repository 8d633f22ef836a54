package esdbtest

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
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
// so subscriptions wait on it. Every record goes through apply, which also derives the
// streams' deleted state from the records themselves, so a log reloaded from a file is the
// same log.
type eventLog struct {
	mu      sync.Mutex
	all     []*record
	streams map[string]*streamState
	next    uint64
	cache   *idCache
	changed chan struct{}
	now     func() time.Time
	file    *os.File // nil: memory only
	fileErr error    // the first error writing file
	enc     *json.Encoder
}

// softDeleteMeta is the stream metadata a soft delete writes ($tb = long.MaxValue).
var softDeleteMeta = fmt.Sprintf(`{"$tb":%d}`, deletedRevision)

func newEventLog(cacheSize int) *eventLog {
	return &eventLog{
		streams: make(map[string]*streamState),
		next:    firstPosition,
		cache:   newIDCache(cacheSize),
		changed: make(chan struct{}),
		now:     time.Now,
	}
}

// writeEpochLocked records a new epoch, as a real node does when it starts.
func (l *eventLog) writeEpochLocked() {
	n := 0
	if st := l.streams[epochStream]; st != nil {
		n = len(st.events)
	}
	l.writeLocked(epochStream, []proposed{{
		id:          uuid.New(),
		eventType:   epochEventType,
		contentType: "application/json",
		data:        fmt.Appendf(nil, `{"epochNumber":%d}`, n),
	}})
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

// logSize is the room a record takes in the imagined log: the next record's position is
// this much further.
func (r *record) logSize() uint64 {
	return uint64(recordOverhead + len(r.stream) + len(r.eventType) + len(r.data) + len(r.meta))
}

// writeLocked appends events to a stream at the next revisions and wakes the subscribers.
// Callers hold mu and have checked the expected version.
func (l *eventLog) writeLocked(stream string, events []proposed) []*record {
	rev := uint64(0)
	if st := l.streams[stream]; st != nil {
		rev = uint64(st.lastRevision() + 1)
	}
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
		l.applyLocked(r)
		l.persistLocked(r)
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
	r := &record{
		stream:      stream,
		revision:    deletedRevision,
		id:          uuid.New(),
		eventType:   streamDeletedType,
		contentType: "application/octet-stream",
		created:     l.now().UnixNano() / 100,
		pos:         l.next,
	}
	l.applyLocked(r)
	l.persistLocked(r)
	close(l.changed)
	l.changed = make(chan struct{})
	return r
}

// applyLocked adds a record to the log and its stream, and updates the stream's state: a
// tombstone deletes it for good, a soft delete's metadata hides it, the next event after a
// soft delete recreates it from that revision on.
func (l *eventLog) applyLocked(r *record) {
	st := l.streams[r.stream]
	if st == nil {
		st = &streamState{}
		l.streams[r.stream] = st
	}
	l.all = append(l.all, r)
	l.next = r.pos + r.logSize()
	if r.revision == deletedRevision && r.eventType == streamDeletedType {
		st.tombstoned = true
		return
	}
	if st.softDeleted {
		st.softDeleted = false
		st.truncateBefore = r.revision
	}
	st.events = append(st.events, r)
	l.cache.add(r)
	if target, ok := strings.CutPrefix(r.stream, "$$"); ok && r.eventType == metadataEventType && string(r.data) == softDeleteMeta {
		ts := l.streams[target]
		if ts == nil {
			ts = &streamState{}
			l.streams[target] = ts
		}
		ts.softDeleted = true
		ts.truncateBefore = uint64(ts.lastRevision() + 1)
	}
}

// diskRecord is a record in the data file (one JSON object a line).
type diskRecord struct {
	Stream      string    `json:"stream"`
	Revision    uint64    `json:"revision"`
	ID          uuid.UUID `json:"id"`
	Type        string    `json:"type"`
	ContentType string    `json:"contentType"`
	Created     int64     `json:"created"`
	Data        []byte    `json:"data,omitempty"`
	Meta        []byte    `json:"meta,omitempty"`
	Pos         uint64    `json:"pos"`
}

// maxLine bounds one line of the data file (a 1 MiB event is about 1.4 MB in base64).
const maxLine = 64 << 20

// openFile loads the records in path (creating it if missing) and keeps appending to it. A
// last line cut short by a crash is dropped.
func (l *eventLog) openFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("esdbtest: open data file: %w", err)
	}
	var good int64
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	line := 0
	for sc.Scan() {
		line++
		var d diskRecord
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			// Only the last line may be damaged (a write cut short); anything else is not ours.
			if !sc.Scan() {
				break
			}
			_ = f.Close()
			return fmt.Errorf("esdbtest: data file %s line %d: %v; it is not a stand-in data file, or it is damaged", path, line, err)
		}
		if d.Pos < l.next {
			_ = f.Close()
			return fmt.Errorf("esdbtest: data file %s line %d: position %d is not after %d; the file is damaged", path, line, d.Pos, l.next)
		}
		l.applyLocked(&record{stream: d.Stream, revision: d.Revision, id: d.ID, eventType: d.Type, contentType: d.ContentType,
			created: d.Created, data: d.Data, meta: d.Meta, pos: d.Pos})
		good += int64(len(sc.Bytes())) + 1
	}
	if err := sc.Err(); err != nil {
		_ = f.Close()
		return fmt.Errorf("esdbtest: read data file %s: %w", path, err)
	}
	if err := f.Truncate(good); err != nil {
		_ = f.Close()
		return fmt.Errorf("esdbtest: data file %s: drop a damaged last line: %w", path, err)
	}
	if _, err := f.Seek(good, io.SeekStart); err != nil {
		_ = f.Close()
		return fmt.Errorf("esdbtest: data file %s: %w", path, err)
	}
	l.file = f
	l.enc = json.NewEncoder(f)
	return nil
}

func (l *eventLog) persistLocked(r *record) {
	if l.enc == nil || l.fileErr != nil {
		return
	}
	l.fileErr = l.enc.Encode(diskRecord{Stream: r.stream, Revision: r.revision, ID: r.id, Type: r.eventType,
		ContentType: r.contentType, Created: r.created, Data: r.data, Meta: r.meta, Pos: r.pos})
}

// closeFile syncs and closes the data file and reports any error since it was opened.
func (l *eventLog) closeFile() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return nil
	}
	err := errors.Join(l.fileErr, l.file.Sync(), l.file.Close())
	l.file, l.enc = nil, nil
	if err != nil {
		return fmt.Errorf("esdbtest: data file: %w", err)
	}
	return nil
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

// validPosition reports whether a $all read or subscription may start at pos. The real server
// reads the log record that starts at pos, so a position inside a record (neither 0, nor an
// event's, nor the end of the log or beyond) fails as an invalid position.
func (l *eventLog) validPosition(pos uint64) bool {
	if pos == 0 || pos >= l.next {
		return true
	}
	i := l.indexAfter(pos, true)
	return i < len(l.all) && l.all[i].pos == pos
}

// errInvalidPosition is the real server's answer to a $all read or subscription from a
// position inside a record.
var errInvalidPosition = status.Error(codes.InvalidArgument, "Trying to read from an invalid position.")

// isSystemStream reports the streams the real server hides from filtered $all subscriptions
// whatever the filter: the epoch stream and the persistent subscriptions' own streams.
func isHiddenFromFilters(stream string) bool {
	return stream == epochStream || stream == configStream || strings.HasPrefix(stream, "$persistentsubscription-")
}

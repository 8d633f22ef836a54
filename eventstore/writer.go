package eventstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/usersync/usersync/domain"
)

// wideBatch is how many appends the writer gathers before it commits while
// the syncer is still busy with earlier commits, and maxGather the longest
// it waits after an fsync for the appends that fsync answered to come back
// (see writer.loop).
const (
	wideBatch = 256
	maxGather = time.Millisecond
)

// insertChunks returns the row counts of the prepared multi-row INSERTs
// the writer uses, largest first; the last is 1.
func insertChunks() [4]int { return [4]int{256, 32, 8, 1} }

// appendReq is one Append waiting for the writer.
type appendReq struct {
	ctx      context.Context
	stream   string
	expected domain.ExpectedVersion
	events   []domain.NewEvent

	// Set by the writer.
	dropped      bool   // its ctx was done before the writer took it
	write        bool   // passed its check and has events to insert
	firstPos     uint64 // position of events[0]
	firstVersion uint64 // version of events[0]
	res          domain.AppendResult
	err          error
	done         chan struct{} // closed once res/err are set
}

// Append writes events to stream if its version matches expected, and
// returns once they are durable. Concurrent appends are committed together
// (group commit); each is checked on its own, so a conflict fails only its
// own append, with a *domain.ConcurrencyError. Appending no events only
// checks the version and returns the stream's current version and the
// position of its last event.
//
// Once an append has been queued it is answered even if ctx ends: a
// request whose ctx is done before the writer takes it is dropped with
// ctx's error, otherwise its outcome is reported.
func (s *SQLite) Append(ctx context.Context, stream string, expected domain.ExpectedVersion, events ...domain.NewEvent) (domain.AppendResult, error) {
	if err := ValidateAppend(stream, events); err != nil {
		return domain.AppendResult{}, err
	}
	if err := ctx.Err(); err != nil {
		return domain.AppendResult{}, fmt.Errorf("append to %s: %w", stream, err)
	}
	req := &appendReq{ctx: ctx, stream: stream, expected: expected, events: events, done: make(chan struct{})}
	if err := s.enqueue(ctx, req); err != nil {
		return domain.AppendResult{}, fmt.Errorf("append to %s: %w", stream, err)
	}
	<-req.done
	return req.res, req.err
}

func (s *SQLite) enqueue(ctx context.Context, req *appendReq) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return ErrClosed
	}
	if err := s.failure(); err != nil {
		return err
	}
	select {
	case s.reqs <- req:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// failure returns the error that made the store unusable for appends.
func (s *SQLite) failure() error {
	if p := s.failed.Load(); p != nil {
		return *p
	}
	return nil
}

func (s *SQLite) fail(err error) {
	err = fmt.Errorf("event store %s is unusable, reopen it: %w", s.path, err)
	s.failed.CompareAndSwap(nil, &err)
}

// syncItem is a processed batch on its way to the syncer.
type syncItem struct {
	batch   []*appendReq
	head    uint64    // the last position the batch committed
	wrote   bool      // the batch committed events
	appends int       // how many appends it committed
	start   time.Time // when its transaction began
}

// streamPos is where a stream stands: its last version and the position of
// that last event (both 0 for a stream with no events).
type streamPos struct{ version, position uint64 }

// writer owns the write connection; only the writer goroutine uses it.
type writer struct {
	s  *SQLite
	dc driver.Conn

	begin, commit, rollback driver.Stmt
	streamHead, storeHead   driver.Stmt
	inserts                 [4]driver.Stmt // one per insertChunks()

	cache   map[string]streamPos // committed stream versions
	pending map[string]streamPos // versions within the batch being built
	args    []driver.NamedValue  // rows waiting to be inserted
	dest    [2]driver.Value
	head    uint64 // last committed position
	bytes   int    // size of the rows of the last commit
	pages   int    // about how many pages were committed since the checkpointer last woke
}

func (s *SQLite) runWriter(conn *sql.Conn, head uint64, started chan<- error) {
	defer close(s.writerDone)
	syncerDone := make(chan struct{})
	sent := false
	err := conn.Raw(func(dc any) error {
		c, ok := dc.(driver.Conn)
		if !ok {
			return fmt.Errorf("unexpected driver connection %T", dc)
		}
		w, err := newWriter(s, c, head)
		if err != nil {
			return err
		}
		defer w.close()
		sent = true
		started <- nil
		go s.runSyncer(syncerDone)
		w.loop()
		close(s.syncq)
		<-syncerDone
		return nil
	})
	if !sent {
		started <- err
	}
	_ = conn.Close()
}

// runSyncer makes committed batches durable and answers their appends,
// in commit order. While it waits for the disk the writer commits the
// next batch, and one sync covers every batch committed meanwhile.
func (s *SQLite) runSyncer(done chan<- struct{}) {
	defer close(done)
	var group []syncItem
	for it := range s.syncq {
		group = append(group[:0], it)
	drain:
		for {
			select {
			case it, ok := <-s.syncq:
				if !ok {
					break drain
				}
				group = append(group, it)
			default:
				break drain
			}
		}
		var head uint64
		for _, it := range group {
			if it.wrote {
				head = it.head
			}
		}
		var err error
		var syncTime time.Duration
		if head != 0 {
			err = s.failure()
			if err == nil && !s.cfg.sqliteSync {
				t := time.Now()
				err = syncData(s.wal)
				syncTime = time.Since(t)
				s.syncs.Add(1)
				s.syncNanos.Add(uint64(syncTime))
				if err != nil {
					s.fail(fmt.Errorf("sync write-ahead log: %w", err))
					err = s.failure()
				}
			}
			if err == nil {
				s.head.Store(head)
				s.notify()
				if obs := s.cfg.observer; obs != nil {
					// One group commit: the commits this fsync made
					// durable, from the start of the first.
					appends, start := 0, time.Time{}
					for _, it := range group {
						if it.wrote {
							appends += it.appends
							if start.IsZero() {
								start = it.start
							}
						}
					}
					obs(appends, time.Since(start))
				}
			}
		}
		for _, it := range group {
			for _, r := range it.batch {
				if err != nil && !r.dropped {
					r.res, r.err = domain.AppendResult{}, fmt.Errorf("append to %s: %w", r.stream, err)
				}
				close(r.done)
			}
		}
		answered := 0
		for _, it := range group {
			answered += len(it.batch)
		}
		s.answered.Store(int64(answered))
		s.lastSync.Store(int64(syncTime))
		s.syncEnd.Store(time.Now().UnixNano())
		s.inflight.Add(-int64(len(group)))
		select {
		case s.synced <- struct{}{}:
		default:
		}
		clear(group)
	}
}

func newWriter(s *SQLite, dc driver.Conn, head uint64) (_ *writer, err error) {
	w := &writer{
		s:       s,
		dc:      dc,
		cache:   make(map[string]streamPos),
		pending: make(map[string]streamPos),
		args:    make([]driver.NamedValue, 0, insertChunks()[0]*columnsPerRow),
		head:    head,
	}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	ctx := context.Background()
	for _, p := range []struct {
		st    *driver.Stmt
		query string
	}{
		{&w.begin, `BEGIN IMMEDIATE`},
		{&w.commit, `COMMIT`},
		{&w.rollback, `ROLLBACK`},
		{&w.streamHead, streamHeadSQL},
		{&w.storeHead, storeHeadSQL},
	} {
		if *p.st, err = prepare(ctx, dc, p.query); err != nil {
			return nil, fmt.Errorf("prepare %q: %w", p.query, err)
		}
	}
	for i, n := range insertChunks() {
		q := insertPrefix + strings.Repeat(insertRowSQL+",", n-1) + insertRowSQL
		if w.inserts[i], err = prepare(ctx, dc, q); err != nil {
			return nil, fmt.Errorf("prepare insert of %d rows: %w", n, err)
		}
	}
	return w, nil
}

func (w *writer) close() {
	for _, st := range append([]driver.Stmt{w.begin, w.commit, w.rollback, w.streamHead, w.storeHead}, w.inserts[:]...) {
		if st != nil {
			_ = st.Close()
		}
	}
}

func execStmt(st driver.Stmt, args []driver.NamedValue) error {
	e, ok := st.(driver.StmtExecContext)
	if !ok {
		return errors.New("driver statement cannot execute with a context")
	}
	// No cancellable context: the driver would start a goroutine per call.
	_, err := e.ExecContext(context.Background(), args)
	return err
}

// loop takes whatever appends are queued, up to the batch bounds, and
// commits them together, until the queue is closed.
//
// The batch is made as wide as the load allows, since an fsync costs about
// the same for one append as for a hundred:
//   - while the syncer is busy making earlier commits durable, the writer
//     does not commit a small batch at once but gathers what arrives, until
//     the syncer is done or wideBatch appends are queued;
//   - once an fsync has answered some appends, their callers are likely to
//     send the next ones at once (a sender with a few connections, each
//     waiting for its answer): the writer then waits until as many appends
//     as that fsync answered, plus those that queued during it, are
//     queued, or at most half an fsync's time (maxGather at most) from the
//     end of that fsync. Otherwise the callers split into two groups that
//     take turns, each with half the appends per fsync.
//
// A lone caller is never kept waiting: when the last fsync answered only
// its append, its next one is committed at once.
func (w *writer) loop() {
	if gate := w.s.cfg.writerGate; gate != nil {
		<-gate
	}
	maxBatch, maxEvents := w.s.cfg.maxBatch, w.s.cfg.maxEvents
	wide := min(maxBatch, wideBatch)
	batch := make([]*appendReq, 0, 64)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var accounted int64 // the end of the last fsync the writer has waited on
	for {
		req, ok := <-w.s.reqs
		if !ok {
			return
		}
		batch = append(batch[:0], req)
		events := len(req.events)
		open := true
		during := 0 // appends queued before the last fsync ended
		target := 0
		var deadline time.Time
		take := func(req *appendReq, ok bool) bool {
			if !ok {
				open = false
				return false
			}
			batch = append(batch, req)
			events += len(req.events)
			return true
		}
	fill:
		for len(batch) < maxBatch && events < maxEvents {
			select {
			case req, ok := <-w.s.reqs:
				if !take(req, ok) {
					break fill
				}
				continue
			default:
			}
			if len(batch) >= wide {
				break
			}
			if w.s.inflight.Load() > 0 {
				// The syncer is busy: gather what arrives until it is done.
				select {
				case req, ok := <-w.s.reqs:
					if !take(req, ok) {
						break fill
					}
				case <-w.s.synced:
					during = len(batch)
				}
				continue
			}
			if end := w.s.syncEnd.Load(); end != accounted {
				// A fsync ended since the writer last looked: wait for
				// the appends it answered to come back.
				accounted = end
				target = during + int(w.s.answered.Load())
				deadline = time.Unix(0, end).Add(min(time.Duration(w.s.lastSync.Load())/2, maxGather))
			}
			wait := time.Until(deadline)
			if len(batch) >= target || wait <= 0 {
				break
			}
			timer.Reset(wait)
			select {
			case req, ok := <-w.s.reqs:
				timer.Stop()
				if !take(req, ok) {
					break fill
				}
			case <-timer.C:
			}
		}
		w.s.inflight.Add(1)
		w.s.syncq <- w.process(batch)
		batch = make([]*appendReq, 0, max(64, len(batch)))
		if !open {
			return
		}
	}
}

// process checks every append of batch and commits those that pass in one
// transaction; the syncer answers them once the commit is durable.
func (w *writer) process(batch []*appendReq) syncItem {
	if err := w.s.failure(); err != nil {
		for _, r := range batch {
			r.err = fmt.Errorf("append to %s: %w", r.stream, err)
		}
		return syncItem{batch: batch}
	}
	clear(w.pending)
	head := w.head
	writes := 0
	for _, r := range batch {
		if err := r.ctx.Err(); err != nil {
			r.dropped = true
			r.err = fmt.Errorf("append to %s: %w", r.stream, err)
			continue
		}
		cur, err := w.streamPos(r.stream)
		if err != nil {
			r.err = w.s.fileErr(fmt.Sprintf("append to %s: read stream version from", r.stream), err)
			continue
		}
		if !r.expected.Matches(cur.version) {
			r.err = &domain.ConcurrencyError{Stream: r.stream, Expected: r.expected, Actual: cur.version}
			continue
		}
		n := uint64(len(r.events))
		if n > 0 {
			r.write = true
			r.firstPos, r.firstVersion = head+1, cur.version+1
			head += n
			cur = streamPos{version: cur.version + n, position: head}
			w.pending[r.stream] = cur
			writes++
		}
		r.res = domain.AppendResult{Version: cur.version, Position: cur.position}
	}
	if writes == 0 {
		return syncItem{batch: batch}
	}
	start := time.Now()
	if err := w.write(batch); err != nil {
		// The whole transaction is gone, and every check in the batch
		// may have counted on it: fail them all.
		err = w.s.fileErr("commit to", err)
		w.s.lastErr.Store(&err)
		for _, r := range batch {
			if !r.dropped {
				r.res, r.err = domain.AppendResult{}, fmt.Errorf("append to %s: %w", r.stream, err)
			}
		}
		w.reset()
		return syncItem{batch: batch}
	}
	w.head = head
	w.s.lastErr.Store(nil)
	if len(w.cache)+len(w.pending) > w.s.cfg.streamCache {
		clear(w.cache)
	}
	for k, v := range w.pending {
		w.cache[k] = v
	}
	w.s.commits.Add(1)
	w.s.committed.Add(uint64(writes))
	// A commit rewrites about one index page per stream, the table pages
	// its rows fill and a few more.
	w.pages += len(w.pending) + w.bytes/3000 + 3
	if w.pages >= w.s.cfg.checkpointPages {
		w.pages = 0
		select {
		case w.s.ckpt <- struct{}{}:
		default:
		}
	}
	return syncItem{batch: batch, head: head, wrote: true, appends: writes, start: start}
}

// streamPos returns where stream stands, counting the batch being built.
func (w *writer) streamPos(stream string) (streamPos, error) {
	if p, ok := w.pending[stream]; ok {
		return p, nil
	}
	if p, ok := w.cache[stream]; ok {
		return p, nil
	}
	rows, err := query(context.Background(), w.streamHead, []driver.NamedValue{{Ordinal: 1, Value: stream}})
	if err != nil {
		return streamPos{}, err
	}
	defer rows.Close()
	var p streamPos
	switch err := rows.Next(w.dest[:]); {
	case err == io.EOF:
	case err != nil:
		return streamPos{}, err
	default:
		v, ok1 := w.dest[0].(int64)
		pos, ok2 := w.dest[1].(int64)
		if !ok1 || !ok2 || v <= 0 || pos <= 0 {
			return streamPos{}, fmt.Errorf("%w: malformed head of stream %s", ErrCorrupt, stream)
		}
		p = streamPos{version: uint64(v), position: uint64(pos)}
	}
	if len(w.cache) >= w.s.cfg.streamCache {
		clear(w.cache)
	}
	w.cache[stream] = p
	return p, nil
}

// write inserts the rows of the batch's passing appends and commits.
func (w *writer) write(batch []*appendReq) (err error) {
	if err := execStmt(w.begin, nil); err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() {
		if err != nil {
			_ = execStmt(w.rollback, nil)
		}
	}()
	now := time.Now().UnixNano()
	w.args = w.args[:0]
	w.bytes = 0
	for _, r := range batch {
		if !r.write {
			continue
		}
		for i, e := range r.events {
			data, meta := e.Data, e.Metadata
			w.bytes += len(data) + len(meta) + len(e.Type) + len(r.stream) + 32
			w.args = append(w.args,
				driver.NamedValue{Value: int64(r.firstPos + uint64(i))},
				driver.NamedValue{Value: r.stream},
				driver.NamedValue{Value: int64(r.firstVersion + uint64(i))},
				driver.NamedValue{Value: e.Type},
				driver.NamedValue{Value: data},
				driver.NamedValue{Value: meta},
				driver.NamedValue{Value: now},
			)
			if len(w.args) == insertChunks()[0]*columnsPerRow {
				if err := w.flush(); err != nil {
					return err
				}
			}
		}
	}
	if err := w.flush(); err != nil {
		return err
	}
	if err := execStmt(w.commit, nil); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// flush inserts the rows in w.args with the largest statements that fit.
func (w *writer) flush() error {
	chunks := insertChunks()
	args := w.args
	for len(args) > 0 {
		rows := len(args) / columnsPerRow
		i := 0
		for chunks[i] > rows {
			i++
		}
		n := chunks[i] * columnsPerRow
		chunk := args[:n]
		for j := range chunk {
			chunk[j].Ordinal = j + 1
		}
		if err := execStmt(w.inserts[i], chunk); err != nil {
			return fmt.Errorf("insert: %w", err)
		}
		args = args[n:]
	}
	clear(w.args) // drop references to the callers' data
	w.args = w.args[:0]
	return nil
}

// reset forgets the cached stream versions and rereads the head after a
// failed commit, so the writer starts again from what is on disk.
func (w *writer) reset() {
	clear(w.cache)
	rows, err := query(context.Background(), w.storeHead, nil)
	if err != nil {
		return
	}
	defer rows.Close()
	if rows.Next(w.dest[:1]) == nil {
		if h, ok := w.dest[0].(int64); ok && h >= 0 {
			w.head = uint64(h)
		}
	}
}

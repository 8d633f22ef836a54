package eventstore

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/usersync/usersync/domain"
)

func prepare(ctx context.Context, dc driver.Conn, query string) (driver.Stmt, error) {
	if p, ok := dc.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, query)
	}
	return dc.Prepare(query)
}

func query(ctx context.Context, st driver.Stmt, args []driver.NamedValue) (driver.Rows, error) {
	q, ok := st.(driver.StmtQueryContext)
	if !ok {
		return nil, errors.New("driver statement cannot query with a context")
	}
	return q.QueryContext(ctx, args)
}

// ReadAll returns at most limit events with Position > after, oldest
// first. Empty Data or Metadata come back as nil. A long range is read in
// parts on several connections at once.
func (s *SQLite) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("read all from %s: limit %d must be positive", s.path, limit)
	}
	out, err := s.readAll(ctx, after, limit)
	if err != nil {
		return nil, s.fileErr(fmt.Sprintf("read all after %d from", after), err)
	}
	return out, nil
}

// minPart is the fewest events a parallel part of ReadAll reads.
const minPart = 1024

func (s *SQLite) readAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	// Positions are dense and only those up to head are durable, so the
	// answer is exactly the positions after+1 .. upTo.
	head := s.head.Load()
	if after >= head {
		return nil, nil
	}
	upTo := head
	if head-after > uint64(limit) {
		upTo = after + uint64(limit)
	}
	n := int(upTo - after)

	rs := make([]*rawConn, 0, 4)
	r, err := s.getReader(ctx)
	if err != nil {
		return nil, err
	}
	rs = append(rs, r)
	for len(rs) < min(n/minPart, runtime.GOMAXPROCS(0), 4) {
		select {
		case r := <-s.readers:
			rs = append(rs, r)
			continue
		default:
		}
		break
	}
	defer func() {
		for _, r := range rs {
			s.readers <- r
		}
	}()

	out := make([]domain.RecordedEvent, n)
	if len(rs) == 1 {
		got, err := rs[0].queryAll(ctx, after, upTo, n, out[:0])
		if err != nil {
			return nil, err
		}
		return got, nil
	}
	size := (n + len(rs) - 1) / len(rs)
	parts := make([][]domain.RecordedEvent, len(rs))
	errs := make([]error, len(rs))
	var wg sync.WaitGroup
	read := func(i int) {
		lo := min(i*size, n)
		hi := min(lo+size, n)
		parts[i], errs[i] = rs[i].queryAll(ctx, after+uint64(lo), after+uint64(hi), hi-lo, out[lo:lo:hi])
	}
	for i := 1; i < len(rs); i++ {
		wg.Go(func() { read(i) })
	}
	read(0)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	// Each part filled its own stretch of out; with dense positions they
	// are full. Otherwise close the gaps.
	k := 0
	for i, p := range parts {
		lo := min(i*size, n)
		if k != lo {
			copy(out[k:], p)
		}
		k += len(p)
	}
	return out[:k], nil
}

func (s *SQLite) getReader(ctx context.Context) (*rawConn, error) {
	select {
	case r := <-s.readers:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ReadStream returns the events of stream, oldest first; a stream with no
// events yields none and no error.
func (s *SQLite) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	out, err := s.readStreamFrom(ctx, stream, 0)
	if err != nil {
		return nil, s.fileErr(fmt.Sprintf("read stream %s from", stream), err)
	}
	return out, nil
}

// readStreamFromSQL reads a stream after a version through the
// UNIQUE(stream, version) index: its cost is the rows it returns.
const readStreamFromSQL = selectColumns + `WHERE stream = ? AND version > ? AND position <= ? ORDER BY version`

// ReadStreamFrom returns the events of stream with Version > after, oldest
// first; after the stream's last version it yields none and no error.
func (s *SQLite) ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error) {
	out, err := s.readStreamFrom(ctx, stream, after)
	if err != nil {
		return nil, s.fileErr(fmt.Sprintf("read stream %s after version %d from", stream, after), err)
	}
	return out, nil
}

func (s *SQLite) readStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error) {
	return s.withReader(ctx, func(r *rawConn) ([]domain.RecordedEvent, error) {
		return r.queryStreamFrom(ctx, stream, after, s.head.Load())
	})
}

// withReader runs read on a pooled reader connection of the open store.
func (s *SQLite) withReader(ctx context.Context, read func(r *rawConn) ([]domain.RecordedEvent, error)) ([]domain.RecordedEvent, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, ErrClosed
	}
	r, err := s.getReader(ctx)
	if err != nil {
		return nil, err
	}
	defer func() { s.readers <- r }()
	return read(r)
}

// bindText binds v to parameter i of st (SQLITE_TRANSIENT: SQLite copies
// the text before the call returns).
func (c *rawConn) bindText(st uintptr, i int32, v string) error {
	p, err := libc.CString(v)
	if err != nil {
		return err
	}
	rc := sqlite3.Xsqlite3_bind_text(c.tls, st, i, p, int32(len(v)), sqlite3.SQLITE_TRANSIENT)
	libc.Xfree(c.tls, p)
	if rc != sqlite3.SQLITE_OK {
		return c.err(rc)
	}
	return nil
}

// queryStreamFrom appends the events of stream with version > after and
// position <= upTo to out.
func (c *rawConn) queryStreamFrom(ctx context.Context, stream string, after, upTo uint64) ([]domain.RecordedEvent, error) {
	st := c.readFrom
	if err := c.bindText(st, 1, stream); err != nil {
		return nil, err
	}
	sqlite3.Xsqlite3_bind_int64(c.tls, st, 2, int64(min(after, 1<<63-1)))
	sqlite3.Xsqlite3_bind_int64(c.tls, st, 3, int64(min(upTo, 1<<63-1)))
	return c.scan(ctx, st, nil)
}

// readStreamBackSQL reads a stream newest first below a version through
// the UNIQUE(stream, version) index: its cost is the rows it returns.
const readStreamBackSQL = selectColumns + `WHERE stream = ? AND version < ? AND position <= ? ORDER BY version DESC LIMIT ?`

// ReadStreamBackward returns at most limit events of stream with Version <
// before (before 0: from its last event), newest first
// (eventstore.BackwardReader).
func (s *SQLite) ReadStreamBackward(ctx context.Context, stream string, before uint64, limit int) ([]domain.RecordedEvent, error) {
	if limit <= 0 {
		return nil, fmt.Errorf("read stream %s backwards: limit %d must be positive", stream, limit)
	}
	out, err := s.readStreamBack(ctx, stream, before, limit)
	if err != nil {
		return nil, s.fileErr(fmt.Sprintf("read stream %s before version %d from", stream, before), err)
	}
	return out, nil
}

func (s *SQLite) readStreamBack(ctx context.Context, stream string, before uint64, limit int) ([]domain.RecordedEvent, error) {
	if before == 0 {
		before = 1<<63 - 1
	}
	return s.withReader(ctx, func(r *rawConn) ([]domain.RecordedEvent, error) {
		st := r.readBack
		if err := r.bindText(st, 1, stream); err != nil {
			return nil, err
		}
		sqlite3.Xsqlite3_bind_int64(r.tls, st, 2, int64(min(before, 1<<63-1)))
		sqlite3.Xsqlite3_bind_int64(r.tls, st, 3, int64(min(s.head.Load(), 1<<63-1)))
		sqlite3.Xsqlite3_bind_int64(r.tls, st, 4, int64(limit))
		return r.scan(ctx, st, nil)
	})
}

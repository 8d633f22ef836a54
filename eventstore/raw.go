package eventstore

import (
	"context"
	"fmt"
	"time"
	"unsafe"

	"modernc.org/libc"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/usersync/usersync/domain"
)

// rawConn is a read-only SQLite connection driven through the SQLite API
// (modernc.org/sqlite/lib) rather than database/sql: a replay reads
// millions of rows, and skipping the driver's per-column boxing and the
// per-value allocations makes the scan several times faster. It is not
// safe for concurrent use; the store hands each one to one goroutine at a
// time.
type rawConn struct {
	tls      *libc.TLS
	db       uintptr
	readAll  uintptr // prepared readAllSQL
	readFrom uintptr // prepared readStreamFromSQL (sqlite_read.go): every stream read
	readBack uintptr // prepared readStreamBackSQL (backward.go's SQLite side): timelines
	names    map[string]string
	// last is the name each column gave last: events of one stream are
	// mostly appended together, so the next row often repeats it.
	last [8]string
}

// sqliteError is an error code and message from the SQLite API.
type sqliteError struct {
	code int32 // extended result code
	msg  string
}

func (e *sqliteError) Error() string { return fmt.Sprintf("sqlite: %s (%d)", e.msg, e.code) }

// corrupt reports whether the error says the file is damaged.
func (e *sqliteError) corrupt() bool {
	switch e.code & 0xff {
	case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
		return true
	}
	return false
}

func openRaw(path string, mmapSize int64, busyTimeout time.Duration) (_ *rawConn, err error) {
	c := &rawConn{tls: libc.NewTLS(), names: make(map[string]string)}
	defer func() {
		if err != nil {
			c.close()
		}
	}()
	name, err := libc.CString(path)
	if err != nil {
		return nil, err
	}
	defer libc.Xfree(c.tls, name)
	pdb := libc.Xmalloc(c.tls, 8)
	if pdb == 0 {
		return nil, fmt.Errorf("sqlite: out of memory")
	}
	defer libc.Xfree(c.tls, pdb)
	*(*uintptr)(cptr(pdb)) = 0
	// Read-only: closing it never checkpoints or removes the log.
	rc := sqlite3.Xsqlite3_open_v2(c.tls, name, pdb, sqlite3.SQLITE_OPEN_READONLY|sqlite3.SQLITE_OPEN_NOMUTEX, 0)
	c.db = *(*uintptr)(cptr(pdb))
	if rc != sqlite3.SQLITE_OK {
		if c.db == 0 {
			return nil, &sqliteError{code: rc, msg: libc.GoString(sqlite3.Xsqlite3_errstr(c.tls, rc))}
		}
		return nil, c.err(rc)
	}
	sqlite3.Xsqlite3_extended_result_codes(c.tls, c.db, 1)
	sqlite3.Xsqlite3_busy_timeout(c.tls, c.db, int32(busyTimeout.Milliseconds()))
	if err := c.exec(fmt.Sprintf("PRAGMA mmap_size=%d", mmapSize)); err != nil {
		return nil, err
	}
	if c.readAll, err = c.prepare(readAllSQL); err != nil {
		return nil, err
	}
	if c.readFrom, err = c.prepare(readStreamFromSQL); err != nil {
		return nil, err
	}
	if c.readBack, err = c.prepare(readStreamBackSQL); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *rawConn) close() error {
	if c.tls == nil {
		return nil
	}
	for _, st := range []uintptr{c.readAll, c.readFrom, c.readBack} {
		if st != 0 {
			sqlite3.Xsqlite3_finalize(c.tls, st)
		}
	}
	c.readAll, c.readFrom, c.readBack = 0, 0, 0
	var err error
	if c.db != 0 {
		if rc := sqlite3.Xsqlite3_close_v2(c.tls, c.db); rc != sqlite3.SQLITE_OK {
			err = c.err(rc)
		}
		c.db = 0
	}
	c.tls.Close()
	c.tls = nil
	return err
}

func (c *rawConn) err(rc int32) error {
	msg := libc.GoString(sqlite3.Xsqlite3_errmsg(c.tls, c.db))
	if code := sqlite3.Xsqlite3_extended_errcode(c.tls, c.db); code&0xff == rc&0xff {
		rc = code
	}
	return &sqliteError{code: rc, msg: msg}
}

func (c *rawConn) prepare(query string) (uintptr, error) {
	q, err := libc.CString(query)
	if err != nil {
		return 0, err
	}
	defer libc.Xfree(c.tls, q)
	pst := libc.Xmalloc(c.tls, 8)
	if pst == 0 {
		return 0, fmt.Errorf("sqlite: out of memory")
	}
	defer libc.Xfree(c.tls, pst)
	*(*uintptr)(cptr(pst)) = 0
	if rc := sqlite3.Xsqlite3_prepare_v2(c.tls, c.db, q, -1, pst, 0); rc != sqlite3.SQLITE_OK {
		return 0, c.err(rc)
	}
	return *(*uintptr)(cptr(pst)), nil
}

func (c *rawConn) exec(query string) error {
	st, err := c.prepare(query)
	if err != nil {
		return err
	}
	defer sqlite3.Xsqlite3_finalize(c.tls, st)
	for {
		switch rc := sqlite3.Xsqlite3_step(c.tls, st); rc {
		case sqlite3.SQLITE_ROW:
		case sqlite3.SQLITE_DONE:
			return nil
		default:
			return c.err(rc)
		}
	}
}

// queryAll appends the events with after < position <= upTo, at most
// limit of them, to out.
func (c *rawConn) queryAll(ctx context.Context, after, upTo uint64, limit int, out []domain.RecordedEvent) ([]domain.RecordedEvent, error) {
	st := c.readAll
	sqlite3.Xsqlite3_bind_int64(c.tls, st, 1, int64(min(after, 1<<63-1)))
	sqlite3.Xsqlite3_bind_int64(c.tls, st, 2, int64(min(upTo, 1<<63-1)))
	sqlite3.Xsqlite3_bind_int64(c.tls, st, 3, int64(limit))
	return c.scan(ctx, st, out)
}

// scan steps st to the end, appending its rows to out, and resets it.
func (c *rawConn) scan(ctx context.Context, st uintptr, out []domain.RecordedEvent) (_ []domain.RecordedEvent, err error) {
	defer sqlite3.Xsqlite3_reset(c.tls, st)
	var slab []byte // Data and Metadata of many events share an allocation
	for n := 1; ; n++ {
		if n&1023 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
		}
		switch rc := sqlite3.Xsqlite3_step(c.tls, st); rc {
		case sqlite3.SQLITE_ROW:
		case sqlite3.SQLITE_DONE:
			return out, nil
		default:
			return nil, c.err(rc)
		}
		pos := sqlite3.Xsqlite3_column_int64(c.tls, st, 0)
		version := sqlite3.Xsqlite3_column_int64(c.tls, st, 2)
		if pos <= 0 || version <= 0 {
			return nil, fmt.Errorf("%w: malformed event row at position %d", ErrCorrupt, pos)
		}
		e := domain.RecordedEvent{
			Position:   uint64(pos),
			Stream:     c.name(st, 1),
			Version:    uint64(version),
			Type:       c.name(st, 3),
			RecordedAt: time.Unix(0, sqlite3.Xsqlite3_column_int64(c.tls, st, 6)).UTC(),
		}
		e.Data, slab = c.blob(st, 4, slab)
		e.Metadata, slab = c.blob(st, 5, slab)
		out = append(out, e)
	}
}

// column returns the bytes of column i of the current row, which SQLite
// owns until the next step.
func (c *rawConn) column(st uintptr, i int32) []byte {
	p := sqlite3.Xsqlite3_column_blob(c.tls, st, i)
	n := sqlite3.Xsqlite3_column_bytes(c.tls, st, i)
	if p == 0 || n <= 0 {
		return nil
	}
	return unsafe.Slice((*byte)(cptr(p)), n)
}

// blob copies column i into slab, allocating a new slab when it is full.
func (c *rawConn) blob(st uintptr, i int32, slab []byte) ([]byte, []byte) {
	b := c.column(st, i)
	if len(b) == 0 {
		return nil, slab
	}
	if len(b) > cap(slab)-len(slab) {
		if len(b) > 16<<10 {
			return append([]byte(nil), b...), slab
		}
		// Slabs start small and double up to 64 KiB: a stream read of a
		// few events does not pay for a replay's worth of memory.
		slab = make([]byte, 0, max(len(b), min(max(2*cap(slab), 4<<10), 64<<10)))
	}
	start := len(slab)
	slab = append(slab, b...)
	return slab[start:len(slab):len(slab)], slab
}

// name returns the text of column i, sharing one string per distinct
// value: stream and type names repeat.
func (c *rawConn) name(st uintptr, i int32) string {
	p := sqlite3.Xsqlite3_column_text(c.tls, st, i)
	n := sqlite3.Xsqlite3_column_bytes(c.tls, st, i)
	if p == 0 || n <= 0 {
		return ""
	}
	b := unsafe.Slice((*byte)(cptr(p)), n)
	if int(i) < len(c.last) && c.last[i] == string(b) {
		return c.last[i]
	}
	if s, ok := c.names[string(b)]; ok {
		c.remember(i, s)
		return s
	}
	if len(c.names) >= 1<<14 {
		clear(c.names)
	}
	s := string(b)
	c.names[s] = s
	c.remember(i, s)
	return s
}

func (c *rawConn) remember(i int32, s string) {
	if int(i) < len(c.last) {
		c.last[i] = s
	}
}

// cptr turns an address in SQLite's memory, which the libc allocator keeps
// outside the Go heap, into a pointer.
func cptr(p uintptr) unsafe.Pointer { return *(*unsafe.Pointer)(unsafe.Pointer(&p)) }

package eventstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/usersync/usersync/domain"
)

const (
	// schemaVersion is the PRAGMA user_version this code writes and reads.
	schemaVersion = 1
	// applicationID marks a SQLite file as a usersync event store
	// (PRAGMA application_id, "USYN").
	applicationID = 0x5553594e

	schemaSQL = `CREATE TABLE events (
	position    INTEGER PRIMARY KEY,
	stream      TEXT    NOT NULL,
	version     INTEGER NOT NULL,
	type        TEXT    NOT NULL,
	data        BLOB    NOT NULL,
	metadata    BLOB    NOT NULL,
	recorded_at INTEGER NOT NULL,
	UNIQUE(stream, version)
)`

	selectColumns = `SELECT position, stream, version, type, data, metadata, recorded_at FROM events `
	readAllSQL    = selectColumns + `WHERE position > ? AND position <= ? ORDER BY position LIMIT ?`
	readStreamSQL = selectColumns + `WHERE stream = ? AND position <= ? ORDER BY version`
	streamHeadSQL = `SELECT version, position FROM events WHERE stream = ? ORDER BY version DESC LIMIT 1`
	storeHeadSQL  = `SELECT COALESCE(MAX(position), 0) FROM events`
	insertRowSQL  = `(?, ?, ?, ?, COALESCE(?, x''), COALESCE(?, x''), ?)`
	insertPrefix  = `INSERT INTO events (position, stream, version, type, data, metadata, recorded_at) VALUES `
	columnsPerRow = 7
	sqliteMagic   = "SQLite format 3\x00"

	// checkpointPages is about how many pages the writer commits before it
	// wakes the checkpointer; writerCheckpointPages is the log size (in
	// pages) at which the writer checkpoints itself.
	checkpointPages       = 1000
	writerCheckpointPages = 8000
	sqliteHdrBytes        = 100
	walHdrBytes           = 32
)

// SQLite is the embedded event store: one SQLite file in WAL mode, written
// by a single group-committing goroutine. It is safe for concurrent use.
// Open it with Open.
//
// Durability: an append is acknowledged only once the write-ahead log
// holding it has been fsynced, as with synchronous=FULL. By default the
// fsync is pipelined: the writer commits a batch with synchronous=NORMAL
// (SQLite still syncs around checkpoints and log restarts), hands it to a
// syncer goroutine that fdatasyncs the log and then answers the batch's
// callers, and meanwhile commits the next batch. Readers never see events
// that are not yet durable. WithSQLiteSync makes SQLite sync inside every
// commit instead.
type SQLite struct {
	path string
	cfg  config

	lock    *os.File
	wdb     *sql.DB
	cdb     *sql.DB // the checkpointer's connection
	readers chan *rawConn

	// mu guards closed. Append holds it (read) while queueing a request
	// and reads hold it while using a connection, so Close (write) waits
	// for them and nothing is queued after the writer has stopped.
	mu         sync.RWMutex
	closed     bool
	reqs       chan *appendReq
	syncq      chan syncItem
	writerDone chan struct{} // closed once the writer and the syncer are done
	ckpt       chan struct{} // wakes the checkpointer; closed after the writer
	ckptDone   chan struct{}

	// wal is the write-ahead log, which the syncer makes durable.
	wal *os.File
	// failed holds the error that made the store unusable for appends (a
	// failed sync: what is on disk is no longer known).
	failed atomic.Pointer[error]

	// head is the position of the last durable event; readers see
	// nothing past it.
	head atomic.Uint64

	chMu    sync.Mutex
	changed chan struct{}
	ended   bool

	// Counters for tests and benchmarks.
	commits   atomic.Uint64
	committed atomic.Uint64
}

var _ Store = (*SQLite)(nil)

// Option configures Open.
type Option func(*config)

type config struct {
	readers      int // read connections: max(4, GOMAXPROCS)
	maxBatch     int // appends one group commit takes at most: 1024
	maxEvents    int
	streamCache  int
	writerGate   <-chan struct{} // tests: the writer waits for it before its first batch
	queueLen     int
	busyTimeout  time.Duration
	readMmapSize int64
	sqliteSync   bool // let SQLite fsync in every commit (synchronous=FULL)
	observer     func(appends int, d time.Duration)

	checkpointPages       int
	writerCheckpointPages int
}

// WithStreamCache bounds how many streams' versions the writer keeps in
// memory (default 262144); past it the cache is dropped and reloaded from
// the file on demand.
func WithStreamCache(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.streamCache = n
		}
	}
}

// WithSQLiteSync makes SQLite fsync the log inside every commit
// (synchronous=FULL) instead of the default pipelined sync, where SQLite
// commits with synchronous=NORMAL and a second goroutine fsyncs the log
// while the writer prepares the next batch. Both acknowledge an append only
// once it is on disk; this one is slower.
func WithSQLiteSync() Option {
	return func(c *config) { c.sqliteSync = true }
}

// WithCommitObserver registers fn to be told of every group commit once it
// is durable: how many appends with events it carried, and how long it took
// from the start of its transaction to the end of its fsync. fn runs on
// the goroutine that answers appends, so it must be quick.
func WithCommitObserver(fn func(appends int, d time.Duration)) Option {
	return func(c *config) { c.observer = fn }
}

// withCheckpoints sets the checkpoint thresholds (tests only).
func withCheckpoints(background, writer int) Option {
	return func(c *config) { c.checkpointPages, c.writerCheckpointPages = background, writer }
}

// withWriterGate holds the writer until gate is closed (tests only).
func withWriterGate(gate <-chan struct{}) Option {
	return func(c *config) { c.writerGate = gate }
}

// Open opens the event store in the SQLite file at path, creating it (and
// its directory) if it does not exist. It takes an exclusive lock on
// path+".lock" for as long as the store is open; a second Open of the same
// file fails with ErrInUse. A file that is damaged, truncated, not a
// usersync event store, or written by a newer version is refused with an
// error naming it.
func Open(ctx context.Context, path string, opts ...Option) (_ *SQLite, err error) {
	cfg := config{
		readers:      max(4, runtime.GOMAXPROCS(0)),
		maxBatch:     1024,
		maxEvents:    8192,
		streamCache:  1 << 18,
		queueLen:     4096,
		busyTimeout:  10 * time.Second,
		readMmapSize: 1 << 31,

		checkpointPages:       checkpointPages,
		writerCheckpointPages: writerCheckpointPages,
	}
	for _, o := range opts {
		o(&cfg)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("open event store %s: %w", path, err)
	}
	path = abs
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("open event store %s: %w", path, err)
	}

	s := &SQLite{
		path:       path,
		cfg:        cfg,
		reqs:       make(chan *appendReq, cfg.queueLen),
		syncq:      make(chan syncItem),
		writerDone: make(chan struct{}),
		ckpt:       make(chan struct{}, 1),
		ckptDone:   make(chan struct{}),
		changed:    make(chan struct{}),
	}
	s.lock, err = lockFile(path + ".lock")
	if err != nil {
		return nil, fmt.Errorf("open event store %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			s.release()
		}
	}()

	if err := checkFile(path); err != nil {
		return nil, err
	}

	// With synchronous=NORMAL, SQLite's commits do not fsync the log, but
	// its checkpoints and log restarts still sync what they must: the
	// syncer adds the fsync of the log that makes a commit durable.
	syncMode := "NORMAL"
	if cfg.sqliteSync {
		syncMode = "FULL"
	}
	s.wdb, err = openDB(path, url.Values{"_pragma": {
		fmt.Sprintf("busy_timeout(%d)", cfg.busyTimeout.Milliseconds()),
		"synchronous(" + syncMode + ")",
		// The statement journal of a multi-row INSERT stays in memory.
		"temp_store(MEMORY)",
		// The checkpointer keeps the log short; the writer checkpoints
		// itself only when the log still grows past this many pages, so
		// that the log restarts from its beginning.
		fmt.Sprintf("wal_autocheckpoint(%d)", cfg.writerCheckpointPages),
	}})
	if err != nil {
		return nil, s.fileErr("open", err)
	}
	s.wdb.SetMaxOpenConns(1)
	s.wdb.SetMaxIdleConns(1)
	s.wdb.SetConnMaxLifetime(0)
	s.wdb.SetConnMaxIdleTime(0)

	head, err := s.initSchema(ctx)
	if err != nil {
		return nil, err
	}
	s.head.Store(head)
	if err := s.openWAL(); err != nil {
		return nil, err
	}

	s.readers = make(chan *rawConn, cfg.readers)
	for range cfg.readers {
		r, err := openRaw(path, cfg.readMmapSize, cfg.busyTimeout)
		if err != nil {
			return nil, s.fileErr("open", err)
		}
		s.readers <- r
	}

	s.cdb, err = openDB(path, url.Values{"_pragma": {
		fmt.Sprintf("busy_timeout(%d)", cfg.busyTimeout.Milliseconds()),
		"synchronous(FULL)",
	}})
	if err != nil {
		return nil, s.fileErr("open", err)
	}
	s.cdb.SetMaxOpenConns(1)
	cconn, err := s.cdb.Conn(ctx)
	if err != nil {
		return nil, s.fileErr("open", err)
	}

	wconn, err := s.wdb.Conn(ctx)
	if err != nil {
		_ = cconn.Close()
		return nil, s.fileErr("open", err)
	}
	started := make(chan error, 1)
	go s.runWriter(wconn, head, started)
	if err := <-started; err != nil {
		_ = cconn.Close()
		<-s.writerDone
		return nil, s.fileErr("open", err)
	}
	go s.runCheckpointer(cconn)
	return s, nil
}

// runCheckpointer copies the log into the database file in the
// background (PRAGMA wal_checkpoint(PASSIVE)) each time the writer has
// committed about checkpointPages pages, so that the writer seldom has to.
// Its connection syncs fully: the log before copying, the database after.
func (s *SQLite) runCheckpointer(conn *sql.Conn) {
	defer close(s.ckptDone)
	defer conn.Close()
	for range s.ckpt {
		// A failed or partial checkpoint is harmless: the writer's own
		// checkpoint and the next wake-up catch up.
		_, _ = conn.ExecContext(context.Background(), `PRAGMA wal_checkpoint(PASSIVE)`)
	}
}

// openWAL opens the write-ahead log SQLite created, for the syncer, and
// makes it and the directory entries of the store durable.
func (s *SQLite) openWAL() error {
	f, err := os.OpenFile(s.path+"-wal", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("open event store %s: write-ahead log: %w", s.path, err)
	}
	s.wal = f
	if err := syncData(f); err != nil {
		return fmt.Errorf("open event store %s: sync write-ahead log: %w", s.path, err)
	}
	d, err := os.Open(filepath.Dir(s.path))
	if err != nil {
		return fmt.Errorf("open event store %s: %w", s.path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("open event store %s: sync directory: %w", s.path, err)
	}
	return nil
}

func openDB(path string, params url.Values) (*sql.DB, error) {
	u := url.URL{Scheme: "file", Path: path, RawQuery: params.Encode()}
	return sql.Open("sqlite", u.String())
}

// fileErr wraps err with the operation and the file name, marking SQLite's
// corruption errors with ErrCorrupt.
func (s *SQLite) fileErr(op string, err error) error {
	if errors.Is(err, ErrCorrupt) || errors.Is(err, ErrClosed) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("%s %s: %w", op, s.path, err)
	}
	var re *sqliteError
	if errors.As(err, &re) && re.corrupt() {
		return fmt.Errorf("%s %s: %w: %w", op, s.path, ErrCorrupt, err)
	}
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB:
			return fmt.Errorf("%s %s: %w: %w", op, s.path, ErrCorrupt, err)
		}
	}
	return fmt.Errorf("%s %s: %w", op, s.path, err)
}

// checkFile looks at the file before SQLite opens it: the SQLite header
// must be there, and unless a write-ahead log holds newer pages, the file
// must be as long as the header says.
func checkFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open event store %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Errorf("open event store %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("open event store %s: not a regular file", path)
	}
	size := st.Size()
	if size == 0 {
		return nil // a new store
	}
	var h [sqliteHdrBytes]byte
	if _, err := io.ReadFull(f, h[:]); err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return fmt.Errorf("open event store %s: %w: file is only %d bytes long", path, ErrCorrupt, size)
		}
		return fmt.Errorf("open event store %s: %w", path, err)
	}
	if string(h[:16]) != sqliteMagic {
		return fmt.Errorf("open event store %s: %w: no SQLite header", path, ErrCorrupt)
	}
	pageSize := int64(binary.BigEndian.Uint16(h[16:18]))
	if pageSize == 1 {
		pageSize = 65536
	}
	if pageSize < 512 || pageSize > 65536 || pageSize&(pageSize-1) != 0 {
		return fmt.Errorf("open event store %s: %w: bad page size %d in header", path, ErrCorrupt, pageSize)
	}
	if walHasFrames(path) {
		// The log may hold pages the file does not have yet; SQLite
		// recovers from it, and damage shows at the first read.
		return nil
	}
	if size%pageSize != 0 {
		return fmt.Errorf("open event store %s: %w: size %d is not a multiple of the page size %d (truncated?)", path, ErrCorrupt, size, pageSize)
	}
	changeCounter := binary.BigEndian.Uint32(h[24:28])
	pages := int64(binary.BigEndian.Uint32(h[28:32]))
	validFor := binary.BigEndian.Uint32(h[92:96])
	if validFor == changeCounter && pages*pageSize > size {
		return fmt.Errorf("open event store %s: %w: truncated: header says %d pages of %d bytes (%d bytes), file has %d bytes",
			path, ErrCorrupt, pages, pageSize, pages*pageSize, size)
	}
	return nil
}

func walHasFrames(path string) bool {
	st, err := os.Stat(path + "-wal")
	return err == nil && st.Size() > walHdrBytes
}

// initSchema creates the schema in a new file, or checks an existing one,
// and returns the store's head position.
func (s *SQLite) initSchema(ctx context.Context) (uint64, error) {
	db := s.wdb
	var appID, userVersion int64
	if err := db.QueryRowContext(ctx, `PRAGMA application_id`).Scan(&appID); err != nil {
		return 0, s.fileErr("open event store", err)
	}
	if err := db.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&userVersion); err != nil {
		return 0, s.fileErr("open event store", err)
	}
	var objects int64
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM sqlite_schema`).Scan(&objects); err != nil {
		return 0, s.fileErr("open event store", err)
	}
	switch {
	case appID == 0 && userVersion == 0 && objects == 0:
		if err := s.createSchema(ctx); err != nil {
			return 0, s.fileErr("create event store", err)
		}
	case appID != applicationID:
		return 0, fmt.Errorf("open event store %s: %w: not a usersync event store (application_id %#x)", s.path, ErrCorrupt, appID)
	case userVersion > schemaVersion:
		return 0, fmt.Errorf("open event store %s: schema version %d is newer than this program supports (%d)", s.path, userVersion, schemaVersion)
	case userVersion < schemaVersion:
		return 0, fmt.Errorf("open event store %s: %w: unknown schema version %d", s.path, ErrCorrupt, userVersion)
	}
	if _, err := db.ExecContext(ctx, `PRAGMA journal_mode=WAL`); err != nil {
		return 0, s.fileErr("open event store", err)
	}
	// A cheap read of both ends of the log: the first row and the last.
	var head int64
	if err := db.QueryRowContext(ctx, storeHeadSQL).Scan(&head); err != nil {
		return 0, s.fileErr("open event store", err)
	}
	for _, q := range []string{selectColumns + `ORDER BY position LIMIT 1`, selectColumns + `ORDER BY position DESC LIMIT 1`} {
		rows, err := db.QueryContext(ctx, q)
		if err == nil {
			for rows.Next() {
			}
			err = errors.Join(rows.Err(), rows.Close())
		}
		if err != nil {
			return 0, s.fileErr("open event store", err)
		}
	}
	return uint64(head), nil
}

func (s *SQLite) createSchema(ctx context.Context) error {
	tx, err := s.wdb.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	for _, q := range []string{
		schemaSQL,
		fmt.Sprintf(`PRAGMA application_id = %d`, applicationID),
		fmt.Sprintf(`PRAGMA user_version = %d`, schemaVersion),
	} {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// Path returns the absolute name of the store's file.
func (s *SQLite) Path() string { return s.path }

// Close stops the writer (appends already queued are committed and
// answered first), closes the file and releases the lock. Subscriptions
// end with ErrClosed. Close is idempotent.
func (s *SQLite) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	close(s.reqs)
	s.mu.Unlock()

	<-s.writerDone
	close(s.ckpt)
	<-s.ckptDone
	var errs []error
	for range cap(s.readers) {
		r := <-s.readers
		errs = append(errs, r.close())
	}
	errs = append(errs, s.cdb.Close(), s.wdb.Close(), s.wal.Close())
	unlockFile(s.lock)

	s.chMu.Lock()
	s.ended = true
	close(s.changed)
	s.chMu.Unlock()

	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close event store %s: %w", s.path, err)
	}
	return nil
}

// release closes what Open acquired, for an Open that fails.
func (s *SQLite) release() {
	if s.readers != nil {
		for len(s.readers) > 0 {
			r := <-s.readers
			_ = r.close()
		}
	}
	if s.wdb != nil {
		_ = s.wdb.Close()
	}
	if s.cdb != nil {
		_ = s.cdb.Close()
	}
	if s.wal != nil {
		_ = s.wal.Close()
	}
	if s.lock != nil {
		unlockFile(s.lock)
		s.lock = nil
	}
}

// Changed returns a channel that is closed at the next commit of new
// events (or when the store is closed). See Feed.
func (s *SQLite) Changed() <-chan struct{} {
	s.chMu.Lock()
	defer s.chMu.Unlock()
	return s.changed
}

func (s *SQLite) notify() {
	s.chMu.Lock()
	if !s.ended {
		close(s.changed)
		s.changed = make(chan struct{})
	}
	s.chMu.Unlock()
}

// Head returns the position of the last durable event (0 when empty).
func (s *SQLite) Head(ctx context.Context) (uint64, error) {
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("head of %s: %w", s.path, err)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return 0, fmt.Errorf("head of %s: %w", s.path, ErrClosed)
	}
	return s.head.Load(), nil
}

// Subscribe follows the store from position after; see Follow.
func (s *SQLite) Subscribe(ctx context.Context, after uint64) *Subscription {
	return Follow(ctx, s, after)
}

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
	out, err := s.readStream(ctx, stream)
	if err != nil {
		return nil, s.fileErr(fmt.Sprintf("read stream %s from", stream), err)
	}
	return out, nil
}

func (s *SQLite) readStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
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
	return r.queryStream(ctx, stream, s.head.Load())
}

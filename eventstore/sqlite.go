package eventstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
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
	// checkpointInterval is how often the checkpointer looks for
	// commits it has not copied yet; walSizeLimit (bytes) is the
	// journal_size_limit the log is cut back to after a restart.
	checkpointInterval = 5 * time.Second
	walSizeLimit       = 4 << 20
	// syncQueueLen bounds the commits waiting for the syncer.
	syncQueueLen   = 16
	sqliteHdrBytes = 100
	walHdrBytes    = 32
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
	pdb     *sql.DB // Writable's test writes (connects on first use)
	readers chan *rawConn

	// mu guards closed. Append holds it (read) while queueing a request
	// and reads hold it while using a connection, so Close (write) waits
	// for them and nothing is queued after the writer has stopped.
	mu     sync.RWMutex
	closed bool
	reqs   chan *appendReq
	syncq  chan syncItem
	// inflight counts the batches handed to the syncer and not yet
	// answered; synced is signalled each time the syncer answers some.
	inflight atomic.Int64
	synced   chan struct{}
	// The last group the syncer answered: how many appends, when its
	// fsync ended (unix nanoseconds) and how long it took.
	answered, syncEnd, lastSync atomic.Int64
	writerDone                  chan struct{} // closed once the writer and the syncer are done
	ckpt                        chan struct{} // wakes the checkpointer; closed after the writer
	ckptDone                    chan struct{}

	// wal is the write-ahead log, which the syncer makes durable.
	wal *os.File
	// failed holds the error that made the store unusable for appends (a
	// failed sync: what is on disk is no longer known).
	failed atomic.Pointer[error]
	// lastErr is the error of the last commit when it failed, nil once
	// a commit (or a test write of Writable) succeeds; probeMu keeps
	// Writable's test writes one at a time.
	lastErr atomic.Pointer[error]
	probeMu sync.Mutex

	// head is the position of the last durable event; readers see
	// nothing past it.
	head atomic.Uint64

	chMu    sync.Mutex
	changed chan struct{}
	ended   bool

	// Counters for tests and benchmarks.
	commits   atomic.Uint64
	committed atomic.Uint64
	syncs     atomic.Uint64 // fsyncs of the log by the syncer
	syncNanos atomic.Uint64 // time spent in them
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
	checkpointInterval    time.Duration
}

// withStreamCache bounds how many streams' versions the writer keeps in
// memory (default 262144); past it the cache is dropped and reloaded from
// the file on demand (tests only, through export_test.go).
func withStreamCache(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.streamCache = n
		}
	}
}

// withSQLiteSync makes SQLite fsync the log inside every commit
// (synchronous=FULL) instead of the default pipelined sync, where SQLite
// commits with synchronous=NORMAL and a second goroutine fsyncs the log
// while the writer prepares the next batch. Both acknowledge an append only
// once it is on disk; this one is slower. The tests and the benchmark
// BenchmarkAppendSQLiteSync use it (through export_test.go) to compare.
func withSQLiteSync() Option {
	return func(c *config) { c.sqliteSync = true }
}

// WithCommitObserver registers fn to be told of every group commit once it
// is durable: how many appends with events one fsync made durable (they
// may have been committed in several transactions while the previous fsync
// ran), and how long it took from the start of the first transaction to
// the end of the fsync. fn runs on the goroutine that answers appends, so
// it must be quick.
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

// WriteStats counts what the writer did since the store was opened.
type WriteStats struct {
	// Commits is how many transactions committed events; Appends how
	// many appends with events they carried.
	Commits, Appends uint64
	// Syncs is how many fsyncs of the log made commits durable (each
	// covers every commit made since the one before), and SyncTime the
	// time spent in them. Both are 0 with SQLite syncing in its commits.
	Syncs    uint64
	SyncTime time.Duration
}

// WriteStats returns the writer's counters, for benchmarks and metrics:
// Appends/Syncs is how wide the group commit is.
func (s *SQLite) WriteStats() WriteStats {
	return WriteStats{Commits: s.commits.Load(), Appends: s.committed.Load(), Syncs: s.syncs.Load(), SyncTime: time.Duration(s.syncNanos.Load())}
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
	errs = append(errs, s.pdb.Close(), s.cdb.Close(), s.wdb.Close(), s.wal.Close())
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
	if s.pdb != nil {
		_ = s.pdb.Close()
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

// DensePositions reports that the store numbers its events 1, 2, 3, …
// without gaps: a difference of positions counts events (lag in events,
// progress bars). Stores without the method are taken to leave gaps.
func (s *SQLite) DensePositions() bool { return true }

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

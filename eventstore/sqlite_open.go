package eventstore

import (
	"context"
	"database/sql"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Open opens the event store in the SQLite file at path, creating it (and
// its directory) if it does not exist. It takes an exclusive lock on
// path+".lock" for as long as the store is open; a second Open of the same
// file fails with ErrInUse. A file that is damaged, truncated, not a
// usersync event store, or written by a newer version is refused with an
// error naming it.
func Open(ctx context.Context, path string, opts ...Option) (_ *SQLite, err error) {
	cfg := config{
		readers:     max(4, runtime.GOMAXPROCS(0)),
		maxBatch:    1024,
		maxEvents:   8192,
		streamCache: 1 << 18,
		queueLen:    4096,
		busyTimeout: 10 * time.Second,
		// Each reader maps at most 64 MiB of the file and reads the rest
		// with pread: the same speed for the replay (measured on a
		// rebuild of 5M events), and file-backed pages of four 2 GiB maps
		// no longer show as gigabytes of RSS.
		readMmapSize: 64 << 20,

		checkpointPages:       checkpointPages,
		writerCheckpointPages: writerCheckpointPages,
		checkpointInterval:    checkpointInterval,
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
		syncq:      make(chan syncItem, syncQueueLen),
		synced:     make(chan struct{}, 1),
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
		// After a checkpoint lets the log start again from its
		// beginning, a log that grew past this is cut back to it.
		fmt.Sprintf("journal_size_limit(%d)", walSizeLimit),
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
	s.pdb, err = openDB(path, url.Values{"_pragma": {
		fmt.Sprintf("busy_timeout(%d)", cfg.busyTimeout.Milliseconds()),
		"synchronous(FULL)",
	}})
	if err != nil {
		return nil, s.fileErr("open", err)
	}
	s.pdb.SetMaxOpenConns(1)
	s.pdb.SetConnMaxIdleTime(time.Minute)
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
// committed about checkpointPages pages, so that the writer seldom has to,
// and every checkpointInterval when anything was committed since the last
// one, so that a quiet store's log does not keep what it holds.
// Its connection syncs fully: the log before copying, the database after.
func (s *SQLite) runCheckpointer(conn *sql.Conn) {
	defer close(s.ckptDone)
	defer conn.Close()
	tick := time.NewTicker(s.cfg.checkpointInterval)
	defer tick.Stop()
	var done uint64 // s.commits at the last checkpoint
	for {
		select {
		case _, ok := <-s.ckpt:
			if !ok {
				return
			}
		case <-tick.C:
			if s.commits.Load() == done {
				continue
			}
		}
		done = s.commits.Load()
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
	err = MarkStorage(err)
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

// Package projections builds the read views of usersync (users, tags,
// password returns, webhooks) from the events. Each view is a deterministic
// function of the events: it can be dropped and rebuilt at any time. A view
// is held in memory for reads and stored in one SQLite file (views.db) with
// its checkpoint, written in the same transaction as its rows, so a restart
// resumes exactly where it stopped and never applies an event twice.
package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// state is one view's data: it applies events in memory, remembers what
// changed, and writes itself to the views file.
type state interface {
	apply(rec *domain.RecordedEvent, env *domain.Envelope)
	// flush writes the rows changed since the last commit.
	flush(ctx context.Context, tx *sql.Tx) error
	// committed is told the flush committed.
	committed()
	// encodeAll encodes the state's buckets numbered part modulo parts
	// for writing, into buffers from free when there are some, marking
	// those inFile has unchanged.
	encodeAll(part, parts uint32, inFile map[uint32]sum, out chan<- encoded, free <-chan []byte) error
	// sums are the sums of the state's buckets in the file.
	sums() map[uint32]sum
	// load reads the view from the file.
	load(ctx context.Context, db *sql.DB) error
	// size is how big the state is: the length of its largest map.
	size() int
}

// projection is a named view with its checkpoint.
type projection struct {
	name string
	// newState makes an empty state with room for size (see state.size).
	newState func(size int) state

	mu  sync.RWMutex
	pos uint64
	st  state
	// moved is closed and replaced each time pos moves.
	moved chan struct{}
	// stored is the checkpoint last written to the file.
	stored uint64
}

// advance moves the checkpoint forward and wakes WaitFor. p.mu is held.
func (p *projection) advance(pos uint64) {
	if pos > p.pos {
		p.moveTo(pos)
	}
}

// moveTo sets the checkpoint, also backwards: a rebuild from a log shorter
// than the views had seen (events.db restored from a backup) must not keep
// the old checkpoint and skip the events up to it. p.mu is held.
func (p *projection) moveTo(pos uint64) {
	if pos == p.pos {
		return
	}
	p.pos = pos
	close(p.moved)
	p.moved = make(chan struct{})
}

// Views holds every projection and the file they are stored in.
type Views struct {
	db   *sql.DB
	path string

	Users     *Users
	Tags      *Tags
	Passwords *PasswordReturns
	Webhooks  *Webhooks
	all       []*projection

	stopFlush chan struct{}
	flushDone chan struct{}
	closeOnce sync.Once
	// background runs the checkpoint a rebuild leaves for later; once
	// closing is set (under bgMu) nothing more is started.
	background sync.WaitGroup
	bgMu       sync.Mutex
	closing    bool
	// walMu makes checkpoints wait for one another.
	walMu sync.Mutex
}

// FlushInterval is how often changed views are written to the file. Reads
// are served from memory, so this bounds only what a crash replays.
const FlushInterval = 100 * time.Millisecond

// checkpointEvery is how many flush ticks pass between checkpoints of the
// write-ahead log into views.db (when something was written since), and
// walSizeLimit (bytes) the journal_size_limit the log is cut back to once
// a checkpoint lets it start again: the log stays small on a quiet server
// instead of keeping megabytes that views.db never got.
const (
	checkpointEvery = 20
	walSizeLimit    = 1 << 20
)

const viewsSchema = `
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS view_buckets (view TEXT NOT NULL, bucket INTEGER NOT NULL, rows BLOB NOT NULL,
	PRIMARY KEY (view, bucket)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS parked (
	handler TEXT NOT NULL, position INTEGER NOT NULL, stream TEXT NOT NULL, version INTEGER NOT NULL,
	type TEXT NOT NULL, error TEXT NOT NULL, parked_at INTEGER NOT NULL,
	PRIMARY KEY (handler, position)) WITHOUT ROWID;
`

// viewsSchemaVersion is stored in PRAGMA user_version.
const viewsSchemaVersion = 1

// Open opens (creating if needed) the views file at path and loads every
// view into memory. Views are rebuildable, so the file is synced lazily
// (WAL, synchronous=NORMAL): a crash may lose the last few view updates,
// never their consistency with the checkpoint, and they are re-applied.
func Open(ctx context.Context, path string) (*Views, error) {
	if err := checkSQLiteFile(path); err != nil {
		return nil, err
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)" +
		fmt.Sprintf("&_pragma=journal_size_limit(%d)", walSizeLimit) + "&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open views %s: %w", path, err)
	}
	v, err := openViews(ctx, db, path)
	if err != nil {
		db.Close()
		return nil, err
	}
	v.stopFlush, v.flushDone = make(chan struct{}), make(chan struct{})
	go v.flushLoop()
	return v, nil
}

func openViews(ctx context.Context, db *sql.DB, path string) (*Views, error) {
	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return nil, fmt.Errorf("open views %s: %w (the file is damaged or not a usersync views file: move it away and run usersync rebuild)", path, err)
	}
	if version > viewsSchemaVersion {
		return nil, fmt.Errorf("open views %s: schema version %d is newer than this build reads (%d): upgrade usersync or rebuild the views", path, version, viewsSchemaVersion)
	}
	if _, err := db.ExecContext(ctx, viewsSchema); err != nil {
		return nil, fmt.Errorf("open views %s: create tables: %w (move the file away and run usersync rebuild)", path, err)
	}
	if _, err := db.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", viewsSchemaVersion)); err != nil {
		return nil, fmt.Errorf("open views %s: %w", path, err)
	}
	v := &Views{db: db, path: path}
	v.Users = &Users{p: &projection{name: "users", newState: func(size int) state { return newUsersState(size) }}}
	v.Tags = &Tags{p: &projection{name: "tags", newState: func(size int) state { return newTagsState(size) }}}
	v.Passwords = &PasswordReturns{p: &projection{name: "password_returns", newState: func(size int) state { return newPasswordsState(size) }}}
	v.Webhooks = &Webhooks{p: &projection{name: "webhooks", newState: func(size int) state { return newWebhooksState(size) }}}
	v.all = []*projection{v.Users.p, v.Tags.p, v.Passwords.p, v.Webhooks.p}
	for _, p := range v.all {
		p.st, p.moved = p.newState(0), make(chan struct{})
		if err := p.st.load(ctx, db); err != nil {
			return nil, fmt.Errorf("load view %s from %s: %w (run usersync rebuild)", p.name, path, err)
		}
		err := db.QueryRowContext(ctx, "SELECT position FROM checkpoints WHERE name = ?", p.name).Scan(&p.pos)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("load checkpoint of %s from %s: %w", p.name, path, err)
		}
		p.stored = p.pos
	}
	return v, nil
}

// checkSQLiteFile refuses a file that exists but is not SQLite, with a
// message naming it: the driver's own message does not.
func checkSQLiteFile(path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open views %s: %w", path, err)
	}
	defer f.Close()
	head := make([]byte, 16)
	n, _ := f.Read(head)
	if n == 0 {
		return nil
	}
	if n < 16 || string(head) != "SQLite format 3\x00" {
		return fmt.Errorf("open views %s: not a SQLite file (damaged?): move it away and run usersync rebuild", path)
	}
	return nil
}

func (v *Views) flushLoop() {
	defer close(v.flushDone)
	t := time.NewTicker(FlushInterval)
	defer t.Stop()
	ticks, wrote := 0, false
	for {
		select {
		case <-t.C:
			// A failed flush keeps the changes dirty; the next tick tries again.
			n, _ := v.flush(context.Background())
			wrote = wrote || n > 0
			if ticks++; ticks >= checkpointEvery && wrote {
				// Best effort, as checkpointLater.
				if v.CheckpointWAL(context.Background()) == nil {
					ticks, wrote = 0, false
				}
			}
		case <-v.stopFlush:
			return
		}
	}
}

// Flush writes every view's changed rows and checkpoint to the file, each
// view in one transaction.
func (v *Views) Flush(ctx context.Context) error {
	_, err := v.flush(ctx)
	return err
}

// flush is Flush, and says how many views it wrote.
func (v *Views) flush(ctx context.Context) (int, error) {
	var errs []error
	n := 0
	for _, p := range v.all {
		p.mu.Lock()
		if p.pos != p.stored {
			err := v.commit(ctx, p, p.st.flush)
			if err == nil {
				n++
			}
			errs = append(errs, err)
		}
		p.mu.Unlock()
	}
	return n, errors.Join(errs...)
}

// Close writes what is not yet written and closes the views file.
func (v *Views) Close() error {
	var err error
	v.closeOnce.Do(func() {
		v.bgMu.Lock()
		v.closing = true
		v.bgMu.Unlock()
		close(v.stopFlush)
		<-v.flushDone
		v.background.Wait()
		err = errors.Join(v.Flush(context.Background()), v.db.Close())
	})
	return err
}

// checkpointLater copies the write-ahead log into views.db in the
// background, holding no view lock; Close waits for it. Readers and
// flushes go on meanwhile (a passive checkpoint does not block them). Once
// Close has begun it does nothing: closing the file checkpoints anyway.
func (v *Views) checkpointLater() {
	v.bgMu.Lock()
	defer v.bgMu.Unlock()
	if v.closing {
		return
	}
	v.background.Go(func() {
		// Best effort: if it fails or stops short, the next automatic
		// checkpoint copies the rest; nothing is lost either way.
		_ = v.CheckpointWAL(context.Background())
	})
}

// CheckpointWAL copies the views' write-ahead log into views.db (an SQLite
// checkpoint), after the one a rebuild started if it still runs. It is
// never needed for correctness: it keeps the log short.
func (v *Views) CheckpointWAL(ctx context.Context) error {
	v.walMu.Lock()
	defer v.walMu.Unlock()
	if _, err := v.db.ExecContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)"); err != nil {
		return fmt.Errorf("checkpoint views %s: %w", v.path, err)
	}
	return nil
}

// Path is the views file.
func (v *Views) Path() string { return v.path }

// Names lists the projections in the order they are applied.
func (v *Views) Names() []string {
	out := make([]string, len(v.all))
	for i, p := range v.all {
		out[i] = p.name
	}
	return out
}

func (v *Views) byName(name string) (*projection, error) {
	for _, p := range v.all {
		if p.name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("no projection named %q", name)
}

// Position is the checkpoint of the named projection: the position of the
// last event it applied or skipped.
func (v *Views) Position(name string) (uint64, error) {
	p, err := v.byName(name)
	if err != nil {
		return 0, err
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.pos, nil
}

// Handle applies one event to the named projection in memory; the changed
// rows and the new checkpoint reach the file together at the next Flush. An
// event at or before the checkpoint is not applied again. A decode error (unknown type, newer
// schema) is returned without changing anything: the pipeline parks it.
func (v *Views) Handle(ctx context.Context, name string, rec domain.RecordedEvent) error {
	p, err := v.byName(name)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if rec.Position > p.pos {
		env, err := domain.Decode(rec)
		if err != nil {
			return err
		}
		p.st.apply(&rec, &env)
		p.advance(rec.Position)
	}
	return nil
}

// Skip moves the named projection's checkpoint past an event without
// applying it (the event was parked).
func (v *Views) Skip(ctx context.Context, name string, position uint64) error {
	p, err := v.byName(name)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.advance(position)
	return nil
}

// commit runs write and stores p's checkpoint in one transaction. p.mu is held.
func (v *Views) commit(ctx context.Context, p *projection, write func(context.Context, *sql.Tx) error) error {
	return eventstore.MarkStorage(v.commitTx(ctx, p, write))
}

// commitTx is commit, its storage errors not yet marked.
func (v *Views) commitTx(ctx context.Context, p *projection, write func(context.Context, *sql.Tx) error) error {
	tx, err := v.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("view %s: begin: %w", p.name, err)
	}
	defer tx.Rollback()
	if err := write(ctx, tx); err != nil {
		return fmt.Errorf("view %s: write rows: %w", p.name, err)
	}
	if _, err := tx.ExecContext(ctx, `INSERT INTO checkpoints(name, position) VALUES(?, ?)
		ON CONFLICT(name) DO UPDATE SET position = excluded.position`, p.name, p.pos); err != nil {
		return fmt.Errorf("view %s: store checkpoint %d: %w", p.name, p.pos, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("view %s: commit at %d: %w", p.name, p.pos, err)
	}
	p.st.committed()
	p.stored = p.pos
	return nil
}

// WaitFor blocks until the named projection has applied the event at
// position (or a later one), or ctx is done.
func (v *Views) WaitFor(ctx context.Context, name string, position uint64) error {
	p, err := v.byName(name)
	if err != nil {
		return err
	}
	for {
		p.mu.RLock()
		pos, moved := p.pos, p.moved
		p.mu.RUnlock()
		if pos >= position {
			return nil
		}
		select {
		case <-moved:
		case <-ctx.Done():
			return fmt.Errorf("wait for view %s to reach %d (at %d): %w", name, position, pos, ctx.Err())
		}
	}
}

// WaitAll is WaitFor for every projection.
func (v *Views) WaitAll(ctx context.Context, position uint64) error {
	for _, p := range v.all {
		if err := v.WaitFor(ctx, p.name, position); err != nil {
			return err
		}
	}
	return nil
}

// Checkpoint returns the stored checkpoint of a consumer that is not a view
// (a process manager); 0 when it has none.
func (v *Views) Checkpoint(ctx context.Context, name string) (uint64, error) {
	var pos uint64
	err := v.db.QueryRowContext(ctx, "SELECT position FROM checkpoints WHERE name = ?", name).Scan(&pos)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read checkpoint of %s: %w", name, err)
	}
	return pos, nil
}

// SaveCheckpoint stores a process manager's checkpoint.
func (v *Views) SaveCheckpoint(ctx context.Context, name string, pos uint64) error {
	if _, err := v.db.ExecContext(ctx, `INSERT INTO checkpoints(name, position) VALUES(?, ?)
		ON CONFLICT(name) DO UPDATE SET position = excluded.position`, name, pos); err != nil {
		return fmt.Errorf("store checkpoint of %s at %d: %w", name, pos, eventstore.MarkStorage(err))
	}
	return nil
}

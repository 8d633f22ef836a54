// Package projections builds the read views of usersync (users, tags,
// password returns, webhook receipts) from the events. Each view is a
// deterministic function of the events: it can be dropped and rebuilt at any
// time. The views are SQLite tables in one file (views.db), queried in place
// through their indexes; memory holds only the rows a batch of events
// touches. Views.HandleBatch applies a batch of events row by row and moves
// every view's checkpoint in the same transaction, so a restart resumes
// exactly where it stopped and never applies an event twice. A rebuild
// builds fresh views in a file of its own, tuned for bulk writes, and swaps
// it in.
package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"

	_ "modernc.org/sqlite" // database/sql driver "sqlite"
)

// projection is a named view's checkpoint as readers see it.
type projection struct {
	name string

	mu  sync.RWMutex
	pos uint64
	// moved is closed and replaced each time pos moves.
	moved chan struct{}
}

// moveTo sets the checkpoint, also backwards (a rebuild from a log shorter
// than the views had seen) and wakes WaitFor.
func (p *projection) moveTo(pos uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if pos == p.pos {
		return
	}
	p.pos = pos
	close(p.moved)
	p.moved = make(chan struct{})
}

func (p *projection) position() uint64 {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.pos
}

// The views, in the order they are applied.
const (
	viewUsers     = "users"
	viewTags      = "tags"
	viewPasswords = "password_returns"
	viewWebhooks  = "webhooks"
	viewWelcome   = "welcome_mails"
)

var viewNames = []string{viewUsers, viewTags, viewPasswords, viewWebhooks, viewWelcome}

// viewIndexWelcome is the welcome-mail view's index in viewNames (and in
// a mask).
const viewIndexWelcome = 4

// Views holds every view and the file they are stored in.
type Views struct {
	path      string
	retention time.Duration
	log       *slog.Logger
	now       func() time.Time

	// dbMu guards db, which a rebuild replaces: readers and writers hold
	// it for reading, the swap for writing.
	dbMu sync.RWMutex
	db   *sql.DB
	live *viewDB
	// applyMu makes batches (and a rebuild's catch-up and swap) wait for
	// one another: the views have one writer at a time.
	applyMu sync.Mutex
	// rebuildMu makes rebuilds wait for one another (an operator's and
	// a catch-up's).
	rebuildMu sync.Mutex

	Users     *Users
	Tags      *Tags
	Passwords *PasswordReturns
	Webhooks  *Webhooks
	Welcome   *WelcomeMails
	all       []*projection

	stopPrune chan struct{}
	pruneDone chan struct{}
	closeOnce sync.Once
}

// Option changes how Open opens the views.
type Option func(*Views)

// WithReceiptRetention keeps webhook receipts received within d (0 keeps
// every receipt, the default). Older receipts that are closed are pruned in
// small batches; open ones (queued or retrying) are kept.
func WithReceiptRetention(d time.Duration) Option { return func(v *Views) { v.retention = max(d, 0) } }

// WithLogger is where Open says what it did to an old views file.
func WithLogger(l *slog.Logger) Option { return func(v *Views) { v.log = l } }

// walSizeLimit (bytes) is the journal_size_limit the write-ahead log is cut
// back to once a checkpoint lets it start again.
const walSizeLimit = 4 << 20

// baseSchema is what every views file has, and what a batch needs to apply
// events: the tables with their primary keys, and the index by contact of
// user_tags (a tag change reads the contact's tags).
const baseSchema = `
CREATE TABLE IF NOT EXISTS checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS parked (
	handler TEXT NOT NULL, position INTEGER NOT NULL, stream TEXT NOT NULL, version INTEGER NOT NULL,
	type TEXT NOT NULL, error TEXT NOT NULL, parked_at INTEGER NOT NULL,
	PRIMARY KEY (handler, position)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS users (contact_id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, login TEXT NOT NULL,
	email TEXT NOT NULL, role TEXT NOT NULL, meta TEXT NOT NULL, tags TEXT NOT NULL,
	created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS user_tags (tag_id INTEGER NOT NULL, contact_id INTEGER NOT NULL,
	PRIMARY KEY (tag_id, contact_id)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS user_tags_by_contact ON user_tags(contact_id, tag_id);
CREATE TABLE IF NOT EXISTS tags (id INTEGER PRIMARY KEY, name TEXT NOT NULL, users INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS password_returns (contact_id INTEGER PRIMARY KEY, key_id TEXT NOT NULL, field TEXT NOT NULL,
	status TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT NOT NULL, next_attempt_at INTEGER NOT NULL,
	issued_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS webhooks (id TEXT PRIMARY KEY, action TEXT NOT NULL, contact_id INTEGER NOT NULL,
	status TEXT NOT NULL, message TEXT NOT NULL, attempts INTEGER NOT NULL,
	received_at INTEGER NOT NULL, updated_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS welcome_mails (contact_id INTEGER PRIMARY KEY, user_id TEXT NOT NULL, recipient TEXT NOT NULL,
	status TEXT NOT NULL, attempts INTEGER NOT NULL, last_error TEXT NOT NULL, next_attempt_at INTEGER NOT NULL,
	message_id TEXT NOT NULL, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS view_counts (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS webhook_log (id TEXT PRIMARY KEY, stream TEXT NOT NULL, version INTEGER NOT NULL,
	received_at INTEGER NOT NULL) WITHOUT ROWID;
`

// readIndexes are the indexes only readers need; a rebuild creates them
// after its bulk load, which is faster than keeping them up to date row by
// row.
const readIndexes = `
CREATE INDEX IF NOT EXISTS users_by_email ON users(email);
CREATE INDEX IF NOT EXISTS users_by_login ON users(login);
CREATE INDEX IF NOT EXISTS users_by_role ON users(role, contact_id);
CREATE INDEX IF NOT EXISTS password_returns_by_status ON password_returns(status, contact_id);
CREATE INDEX IF NOT EXISTS welcome_mails_by_status ON welcome_mails(status, contact_id);
CREATE INDEX IF NOT EXISTS webhooks_by_contact ON webhooks(contact_id, received_at);
CREATE INDEX IF NOT EXISTS webhooks_by_received ON webhooks(received_at, id);
CREATE INDEX IF NOT EXISTS webhooks_open ON webhooks(received_at, id) WHERE status IN ('queued', 'retrying');
`

// viewsSchemaVersion is stored in PRAGMA user_version. Version 1 kept each
// view in JSON buckets (table view_buckets) loaded whole into memory;
// version 2 had no welcome-mail view; version 3 kept no count of users
// per role.
const viewsSchemaVersion = 4

// Open opens (creating if needed) the views file at path. Views are
// rebuildable, so the file is synced lazily (WAL, synchronous=NORMAL): a
// crash may lose the last few view updates, never their consistency with
// the checkpoint, and they are re-applied. A file of schema version 1 is
// upgraded: its views are dropped and their checkpoints set to 0, so they
// are built again from the log; the process managers' checkpoints and the
// parked events are kept. A file of schema version 2 gets the welcome-mail
// view, empty and at position 0: it is built from the log while the other
// views go on from their checkpoints. A file of schema version 2 or 3 gets
// its counts of users per role from the users view.
func Open(ctx context.Context, path string, opts ...Option) (*Views, error) {
	v := &Views{path: path, log: slog.New(slog.DiscardHandler), now: time.Now}
	for _, o := range opts {
		o(v)
	}
	db, err := openDB(path)
	if err != nil {
		return nil, err
	}
	if err := v.initSchema(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	v.db, v.live = db, newViewDB(db)
	v.Users = &Users{v: v}
	v.Tags = &Tags{v: v}
	v.Passwords = &PasswordReturns{v: v}
	v.Webhooks = &Webhooks{v: v}
	v.Welcome = &WelcomeMails{v: v}
	for _, name := range viewNames {
		v.all = append(v.all, &projection{name: name, moved: make(chan struct{})})
	}
	if err := v.loadPositions(ctx); err != nil {
		db.Close()
		return nil, err
	}
	v.stopPrune, v.pruneDone = make(chan struct{}), make(chan struct{})
	go v.pruneLoop()
	return v, nil
}

// openDB opens the live views file.
func openDB(path string) (*sql.DB, error) {
	if err := checkSQLiteFile(path); err != nil {
		return nil, err
	}
	dsn := "file:" + path + "?_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_pragma=busy_timeout(5000)" +
		fmt.Sprintf("&_pragma=journal_size_limit(%d)&_pragma=cache_size(-32768)", walSizeLimit) + "&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open views %s: %w", path, err)
	}
	return db, nil
}

// initSchema creates the tables, upgrading a version 1 or 2 file.
func (v *Views) initSchema(ctx context.Context, db *sql.DB) error {
	var version int
	if err := db.QueryRowContext(ctx, "PRAGMA user_version").Scan(&version); err != nil {
		return fmt.Errorf("open views %s: %w (the file is damaged or not a usersync views file: move it away and run usersync rebuild)", v.path, err)
	}
	if version > viewsSchemaVersion {
		return fmt.Errorf("open views %s: schema version %d is newer than this build reads (%d): upgrade usersync or rebuild the views", v.path, version, viewsSchemaVersion)
	}
	if version == 1 {
		if err := upgradeFrom1(ctx, db); err != nil {
			return fmt.Errorf("open views %s: upgrade from schema version 1: %w (move the file away and run usersync rebuild)", v.path, err)
		}
		v.log.Warn("views file of schema version 1 (views held in memory): its views were dropped and are being built again from the log; process checkpoints and parked events were kept",
			"path", v.path)
	}
	if version == 2 {
		// The welcome-mail view is new: it starts at position 0 (no
		// checkpoint) and is built from the log.
		if _, err := db.ExecContext(ctx, "DELETE FROM checkpoints WHERE name = ?", viewWelcome); err != nil {
			return fmt.Errorf("open views %s: upgrade from schema version 2: %w (move the file away and run usersync rebuild)", v.path, err)
		}
		v.log.Info("views file of schema version 2: the welcome-mail view is new and is being built from the log", "path", v.path)
	}
	if _, err := db.ExecContext(ctx, baseSchema+readIndexes); err != nil {
		return fmt.Errorf("open views %s: create tables: %w (move the file away and run usersync rebuild)", v.path, err)
	}
	if version == 2 || version == 3 {
		// The counts of users per role are new: counted once from the
		// users view, then kept up to date with each batch.
		if err := countRoles(ctx, db); err != nil {
			return fmt.Errorf("open views %s: upgrade from schema version %d: count the users per role: %w (move the file away and run usersync rebuild)", v.path, version, err)
		}
	}
	if _, err := db.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", viewsSchemaVersion)); err != nil {
		return fmt.Errorf("open views %s: %w", v.path, err)
	}
	return nil
}

// countRoles sets the view_counts rows "role:ROLE" from the users view
// (a role nobody has has no row).
func countRoles(ctx context.Context, db *sql.DB) error {
	_, err := db.ExecContext(ctx, `INSERT INTO view_counts(name, n) SELECT 'role:' || role, COUNT(*) FROM users GROUP BY role
		ON CONFLICT(name) DO UPDATE SET n = excluded.n`)
	return err
}

// roleCountName is the view_counts row that counts the users with role.
func roleCountName(role domain.Role) string { return "role:" + string(role) }

// upgradeFrom1 drops the bucket table of schema version 1 and moves the
// views' checkpoints to 0, in one transaction.
func upgradeFrom1(ctx context.Context, db *sql.DB) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "DROP TABLE IF EXISTS view_buckets"); err != nil {
		return err
	}
	for _, name := range viewNames {
		if _, err := tx.ExecContext(ctx, "UPDATE checkpoints SET position = 0 WHERE name = ?", name); err != nil {
			return err
		}
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", viewsSchemaVersion)); err != nil {
		return err
	}
	return tx.Commit()
}

func (v *Views) loadPositions(ctx context.Context) error {
	for _, p := range v.all {
		err := v.db.QueryRowContext(ctx, "SELECT position FROM checkpoints WHERE name = ?", p.name).Scan(&p.pos)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("load checkpoint of %s from %s: %w", p.name, v.path, err)
		}
	}
	return nil
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

// read runs fn with the current views file for reading.
func (v *Views) read(fn func(db *sql.DB) error) error {
	v.dbMu.RLock()
	defer v.dbMu.RUnlock()
	return fn(v.db)
}

// queryRows runs a query of the views under read and appends each row,
// turned into a T by scan, to out.
func queryRows[T any](ctx context.Context, v *Views, out []T, scan func(scanner) (T, error), q string, args ...any) ([]T, error) {
	err := v.read(func(db *sql.DB) error {
		rows, err := db.QueryContext(ctx, q, args...)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			r, err := scan(rows)
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return rows.Err()
	})
	return out, err
}

// queryRow reads the one row q selects with scan; ok is false when there
// is none.
func queryRow[T any](ctx context.Context, v *Views, scan func(scanner) (T, error), q string, args ...any) (r T, ok bool, err error) {
	err = v.read(func(db *sql.DB) error {
		var err error
		r, err = scan(db.QueryRowContext(ctx, q, args...))
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		var zero T
		return zero, false, nil
	}
	return r, err == nil, err
}

// byStatus lists the rows of table (columns cols) with status ("" for
// all), in contact id order.
func byStatus[T any](ctx context.Context, v *Views, scan func(scanner) (T, error), table, cols, status string) ([]T, error) {
	if status == "" {
		return queryRows(ctx, v, nil, scan, "SELECT "+cols+" FROM "+table+" ORDER BY contact_id")
	}
	return queryRows(ctx, v, nil, scan, "SELECT "+cols+" FROM "+table+" WHERE status = ? ORDER BY contact_id", status)
}

// Close stops the pruning and closes the views file.
func (v *Views) Close() error {
	var err error
	v.closeOnce.Do(func() {
		close(v.stopPrune)
		<-v.pruneDone
		v.applyMu.Lock()
		defer v.applyMu.Unlock()
		v.dbMu.Lock()
		defer v.dbMu.Unlock()
		err = v.live.close()
	})
	return err
}

// CheckpointWAL copies the views' write-ahead log into views.db (an SQLite
// checkpoint). It is never needed for correctness: it keeps the log short.
func (v *Views) CheckpointWAL(ctx context.Context) error {
	return v.read(func(db *sql.DB) error {
		if _, err := db.ExecContext(ctx, "PRAGMA wal_checkpoint(PASSIVE)"); err != nil {
			return fmt.Errorf("checkpoint views %s: %w", v.path, err)
		}
		return nil
	})
}

// Path is the views file.
func (v *Views) Path() string { return v.path }

// Names lists the views in the order they are applied.
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

// Position is the checkpoint of the named view: the position of the last
// event it applied or skipped.
func (v *Views) Position(name string) (uint64, error) {
	p, err := v.byName(name)
	if err != nil {
		return 0, err
	}
	return p.position(), nil
}

// WaitFor blocks until the named view has applied the event at position
// (or a later one), or ctx is done.
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

// WaitAll is WaitFor for every view.
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
	err := v.read(func(db *sql.DB) error {
		return db.QueryRowContext(ctx, "SELECT position FROM checkpoints WHERE name = ?", name).Scan(&pos)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read checkpoint of %s: %w", name, err)
	}
	return pos, nil
}

const upsertCheckpoint = `INSERT INTO checkpoints(name, position) VALUES(?, ?)
	ON CONFLICT(name) DO UPDATE SET position = excluded.position`

// SaveCheckpoint stores a process manager's checkpoint.
func (v *Views) SaveCheckpoint(ctx context.Context, name string, pos uint64) error {
	err := v.read(func(db *sql.DB) error {
		_, err := db.ExecContext(ctx, upsertCheckpoint, name, int64(pos))
		return err
	})
	if err != nil {
		return fmt.Errorf("store checkpoint of %s at %d: %w", name, pos, eventstore.MarkStorage(err))
	}
	return nil
}

// parkedFrom is the parked event of handler for rec, which failed with err.
func parkedFrom(handler string, rec domain.RecordedEvent, err error) domain.ParkedEvent {
	return domain.ParkedEvent{Handler: handler, Position: rec.Position, Stream: rec.Stream, Version: rec.Version,
		Type: rec.Type, Error: err.Error(), ParkedAt: time.Now().UTC()}
}

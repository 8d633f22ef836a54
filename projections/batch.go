package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// viewDB is a views file as a batch writes it: the database and its
// prepared statements.
type viewDB struct {
	db    *sql.DB
	stmts map[string]*sql.Stmt
	// seen, when set, holds every key written to the file since it was
	// empty (a rebuild's): a key it does not hold is surely not in the
	// file, and is not looked up.
	seen *bloom
	// tx, when set, is the one transaction the file is written in (a
	// rebuild's, on its only connection): statements are prepared in it.
	tx *sql.Tx
}

func newViewDB(db *sql.DB) *viewDB { return &viewDB{db: db, stmts: map[string]*sql.Stmt{}} }

// stmt is the statement of query in tx, prepared once per file; the batch
// keeps it for its transaction.
func (b *batch) stmt(query string) (*sql.Stmt, error) {
	if st, ok := b.txStmts[query]; ok {
		return st, nil
	}
	st, err := b.d.stmt(b.ctx, b.tx, query)
	if err != nil {
		return nil, err
	}
	b.txStmts[query] = st
	return st, nil
}

func (d *viewDB) stmt(ctx context.Context, tx *sql.Tx, query string) (*sql.Stmt, error) {
	st, ok := d.stmts[query]
	if ok && d.tx != nil {
		return st, nil
	}
	if !ok {
		var err error
		if d.tx != nil {
			st, err = d.tx.PrepareContext(ctx, query)
		} else {
			st, err = d.db.PrepareContext(ctx, query)
		}
		if err != nil {
			return nil, fmt.Errorf("prepare %.40q: %w", query, err)
		}
		d.stmts[query] = st
		if d.tx != nil {
			return st, nil
		}
	}
	return tx.StmtContext(ctx, st), nil
}

func (d *viewDB) close() error {
	for _, st := range d.stmts {
		st.Close()
	}
	clear(d.stmts)
	return d.db.Close()
}

// cacheLimit bounds the rows a batch holds in memory: past it, the batch
// writes what it changed and forgets it.
const cacheLimit = 1 << 16

// batch applies events to the views within one transaction. It is the
// write-back cache of the rows the events touch: each row is read once (if
// it may exist), changed in memory, and written once at flush.
type batch struct {
	ctx context.Context
	tx  *sql.Tx
	d   *viewDB
	// cutoff (Unix nanoseconds) is the receipt retention's edge: a closed
	// receipt received before it is not kept. 0: every receipt is kept.
	cutoff int64

	txStmts     map[string]*sql.Stmt
	users       map[domain.ContactID]*userSlot
	contactTags map[domain.ContactID]*tagSetSlot
	tags        map[uint64]*tagSlot
	passwords   map[domain.ContactID]*passwordSlot
	webhooks    map[string]*webhookSlot
	welcomes    map[domain.ContactID]*welcomeSlot
	webhookLog  []webhookLogRow
	userDelta   int
	// roleDelta is the change of each role's count of users (view_counts
	// "role:ROLE") since the last flush.
	roleDelta map[domain.Role]int
	rows      int
	// limit is how many rows the batch holds before it writes them.
	limit int
	// written counts the rows written (for a rebuild's stats).
	written int
}

func newBatch(ctx context.Context, tx *sql.Tx, d *viewDB, cutoff int64) *batch {
	return &batch{ctx: ctx, tx: tx, d: d, cutoff: cutoff, limit: cacheLimit, txStmts: map[string]*sql.Stmt{},
		users: map[domain.ContactID]*userSlot{}, contactTags: map[domain.ContactID]*tagSetSlot{},
		tags: map[uint64]*tagSlot{}, passwords: map[domain.ContactID]*passwordSlot{}, webhooks: map[string]*webhookSlot{},
		welcomes: map[domain.ContactID]*welcomeSlot{}, roleDelta: map[domain.Role]int{}}
}

// addCount adds d to the view_counts row name. A count that comes to 0
// has no row, as in views built in one batch (a rebuild), so that both
// compare equal.
func (b *batch) addCount(name string, d int) error {
	if d == 0 {
		return nil
	}
	if err := b.exec(`INSERT INTO view_counts(name, n) VALUES(?, ?)
		ON CONFLICT(name) DO UPDATE SET n = n + excluded.n`, name, d); err != nil {
		return err
	}
	return b.exec("DELETE FROM view_counts WHERE name = ? AND n = 0", name)
}

func (b *batch) exec(query string, args ...any) error {
	st, err := b.stmt(query)
	if err != nil {
		return err
	}
	_, err = st.ExecContext(b.ctx, args...)
	b.written++
	return err
}

// insertChunk is how many rows one INSERT statement writes: one statement
// of many rows costs a fraction of as many statements of one.
const insertChunk = 64

// insertMany runs head (an INSERT … VALUES without its rows) and tail (an
// upsert clause, or "") for the rows of args, ncols values each,
// insertChunk rows a statement. An upsert rather than INSERT OR REPLACE:
// an update leaves alone the indexes whose columns did not change. Callers pass
// the rows in key order: SQLite then inserts each next to the one before.
func (b *batch) insertMany(head string, ncols int, args []any, tail string) error {
	for len(args) > 0 {
		n := min(insertChunk, len(args)/ncols)
		if err := b.exec(head+valuesList(n, ncols)+tail, args[:n*ncols]...); err != nil {
			return err
		}
		b.written += n - 1
		args = args[n*ncols:]
	}
	return nil
}

// valuesList is "(?, …), (?, …)…": rows rows of ncols placeholders.
func valuesList(rows, ncols int) string {
	one := "(" + strings.Repeat("?, ", ncols-1) + "?)"
	return strings.Repeat(one+", ", rows-1) + one
}

// contactSlot is one contact's row of a view held by a batch: r is nil
// while the contact has none, loaded once it was read from the file, dirty
// once the batch changed it.
type contactSlot[T any] struct {
	r      *T
	loaded bool
	dirty  bool
}

// contactRow is id's slot in slots; with load, the row is read (query,
// scan) the first time, unless the rebuild's filter bloom says the file
// cannot have it. what names the row in errors.
func contactRow[T any](b *batch, slots map[domain.ContactID]*contactSlot[T], id domain.ContactID, load bool, bloom int,
	query string, scan func(scanner) (T, error), what string) (*contactSlot[T], error) {
	s, ok := slots[id]
	if !ok {
		s = &contactSlot[T]{}
		slots[id] = s
		b.rows++
	}
	if !load || s.loaded || s.dirty {
		return s, nil
	}
	s.loaded = true
	if !b.mayExistID(bloom, uint64(id)) {
		return s, nil
	}
	row, err := b.queryRow(query, int64(id))
	if err != nil {
		return nil, err
	}
	r, err := scan(row)
	switch {
	case errors.Is(err, sql.ErrNoRows):
	case err != nil:
		return nil, fmt.Errorf("read %s of contact %d: %w", what, id, err)
	default:
		s.r = &r
	}
	return s, nil
}

func (b *batch) queryRow(query string, args ...any) (*sql.Row, error) {
	st, err := b.stmt(query)
	if err != nil {
		return nil, err
	}
	return st.QueryRowContext(b.ctx, args...), nil
}

// mayExistID says whether the row of view keyed id may be in the file.
func (b *batch) mayExistID(view int, id uint64) bool {
	return b.d.seen == nil || b.d.seen.has(b.d.seen.idKey(view, id))
}

// wroteID records that the row of view keyed id is in the file.
func (b *batch) wroteID(view int, id uint64) {
	if b.d.seen != nil {
		b.d.seen.add(b.d.seen.idKey(view, id))
	}
}

// mayExistWebhook and wroteWebhook are mayExistID and wroteID for receipts.
func (b *batch) mayExistWebhook(id string) bool {
	return b.d.seen == nil || b.d.seen.has(b.d.seen.strKey(id))
}

func (b *batch) wroteWebhook(id string) {
	if b.d.seen != nil {
		b.d.seen.add(b.d.seen.strKey(id))
	}
}

// mask says which views an event is applied to, by index in viewNames.
type mask [5]bool

// apply applies one decoded event to the views of m.
func (b *batch) apply(m mask, rec *domain.RecordedEvent, env *domain.Envelope) error {
	if m[0] {
		if err := b.applyUser(rec, env); err != nil {
			return fmt.Errorf("users: %w", err)
		}
	}
	if m[1] {
		if err := b.applyTags(rec, env); err != nil {
			return fmt.Errorf("tags: %w", err)
		}
	}
	if m[2] {
		if err := b.applyPassword(rec, env); err != nil {
			return fmt.Errorf("password returns: %w", err)
		}
	}
	if m[3] {
		if err := b.applyWebhook(rec, env); err != nil {
			return fmt.Errorf("webhooks: %w", err)
		}
	}
	if m[viewIndexWelcome] {
		if err := b.applyWelcome(rec, env); err != nil {
			return fmt.Errorf("welcome mails: %w", err)
		}
	}
	if b.rows >= b.limit {
		return b.flush()
	}
	return nil
}

// flush writes the changed rows and forgets every row held.
func (b *batch) flush() error {
	if err := b.flushUsers(); err != nil {
		return fmt.Errorf("write users: %w", err)
	}
	if err := b.flushTags(); err != nil {
		return fmt.Errorf("write tags: %w", err)
	}
	if err := b.flushPasswords(); err != nil {
		return fmt.Errorf("write password returns: %w", err)
	}
	if err := b.flushWebhooks(); err != nil {
		return fmt.Errorf("write webhooks: %w", err)
	}
	if err := b.flushWelcomes(); err != nil {
		return fmt.Errorf("write welcome mails: %w", err)
	}
	if err := b.addCount("users", b.userDelta); err != nil {
		return fmt.Errorf("write the count of users: %w", err)
	}
	b.userDelta = 0
	for role, d := range b.roleDelta {
		if err := b.addCount(roleCountName(role), d); err != nil {
			return fmt.Errorf("write the count of users with role %s: %w", role, err)
		}
	}
	clear(b.roleDelta)
	clear(b.users)
	clear(b.contactTags)
	clear(b.tags)
	clear(b.passwords)
	clear(b.webhooks)
	clear(b.welcomes)
	b.webhookLog = b.webhookLog[:0]
	b.rows = 0
	return nil
}

// storeCheckpoints moves the checkpoints of the views of m to pos.
func (b *batch) storeCheckpoints(m mask, pos uint64) error {
	for i, name := range viewNames {
		if m[i] {
			if err := b.exec(upsertCheckpoint, name, int64(pos)); err != nil {
				return fmt.Errorf("store checkpoint of %s at %d: %w", name, pos, err)
			}
		}
	}
	return nil
}

// Name is the name of the views as one consumer of the log.
func (v *Views) Name() string { return "views" }

// LowestPosition is the lowest checkpoint of the views: every event after
// it is still to be applied to one of them.
func (v *Views) LowestPosition(context.Context) (uint64, error) {
	low := v.all[0].position()
	for _, p := range v.all[1:] {
		low = min(low, p.position())
	}
	return low, nil
}

// BatchConsumer is the views as one consumer of the log, fed in batches:
// Name, Position and HandleBatch. (Views itself keeps Position(name), the
// checkpoint of one view.)
type BatchConsumer struct {
	v *Views
	// cu, when set, may rebuild the views aside before the first batch
	// (CatchUpBatch).
	cu *catchUp
}

// Batch returns the views as a batch consumer of the log.
func (v *Views) Batch() BatchConsumer { return BatchConsumer{v: v} }

// Name is "views".
func (c BatchConsumer) Name() string { return c.v.Name() }

// Names are the views' names: the handlers their parked events are
// recorded under (replayed by a rebuild, not one by one).
func (c BatchConsumer) Names() []string { return c.v.Names() }

// Position is the lowest checkpoint of the views.
func (c BatchConsumer) Position(ctx context.Context) (uint64, error) { return c.v.LowestPosition(ctx) }

// HandleBatch is Views.HandleBatch; from CatchUpBatch, the first batch is
// preceded by a rebuild aside if the views are far behind (the batch's
// events it covers are then skipped, and Position is beyond the batch).
func (c BatchConsumer) HandleBatch(ctx context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	if c.cu != nil {
		if err := c.cu.before(ctx, c.v); err != nil {
			return nil, err
		}
	}
	return c.v.HandleBatch(ctx, recs)
}

// HandleBatch applies, in order, the events of recs after the views'
// checkpoints, writing the changed rows and every view's checkpoint (moved
// to the last position of recs) in one transaction. Events this build
// cannot decode are skipped and returned as parked events (Handler = the
// view name, Error = the decode error) for the caller to park; an error
// return means nothing was applied (the caller retries the batch; it is
// never parked).
func (v *Views) HandleBatch(ctx context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	return v.handle(ctx, mask{true, true, true, true, true}, recs)
}

// handle applies recs to the views of m, each from its own checkpoint.
func (v *Views) handle(ctx context.Context, m mask, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	if len(recs) == 0 {
		return nil, nil
	}
	v.applyMu.Lock()
	defer v.applyMu.Unlock()
	v.dbMu.RLock()
	defer v.dbMu.RUnlock()
	var from [len(mask{})]uint64
	for i, p := range v.all {
		from[i] = p.position()
	}
	last := recs[len(recs)-1].Position
	var moved mask
	for i := range m {
		moved[i] = m[i] && last > from[i]
	}
	if moved == (mask{}) {
		return nil, nil
	}
	tx, err := v.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, eventstore.MarkStorage(fmt.Errorf("views: begin: %w", err))
	}
	defer tx.Rollback()
	b := newBatch(ctx, tx, v.live, v.cutoff())
	dec := domain.NewDecoder()
	var parked []domain.ParkedEvent
	for i := range recs {
		rec := &recs[i]
		var em mask
		for j := range m {
			em[j] = moved[j] && rec.Position > from[j]
		}
		if em == (mask{}) {
			continue
		}
		env, err := dec.Decode(*rec)
		if err != nil {
			for j, name := range viewNames {
				if em[j] {
					parked = append(parked, parkedFrom(name, *rec, err))
				}
			}
			continue
		}
		if err := b.apply(em, rec, &env); err != nil {
			return nil, eventstore.MarkStorage(fmt.Errorf("views: apply event %d: %w", rec.Position, err))
		}
	}
	if err := b.flush(); err != nil {
		return nil, eventstore.MarkStorage(fmt.Errorf("views: %w", err))
	}
	if moved[3] && b.cutoff != 0 {
		if _, err := b.prune(pruneBatch); err != nil {
			return nil, eventstore.MarkStorage(fmt.Errorf("views: %w", err))
		}
	}
	// The events skipped are recorded as parked in the transaction that
	// moves the checkpoints past them: a crash cannot leave one skipped
	// and unlisted. (The pipeline parks them again afterwards, an upsert.)
	for _, pe := range parked {
		if err := insertParked(ctx, tx, pe); err != nil {
			return nil, eventstore.MarkStorage(fmt.Errorf("views: %w", err))
		}
	}
	if err := b.storeCheckpoints(moved, last); err != nil {
		return nil, eventstore.MarkStorage(fmt.Errorf("views: %w", err))
	}
	if err := tx.Commit(); err != nil {
		return nil, eventstore.MarkStorage(fmt.Errorf("views: commit at %d: %w", last, err))
	}
	for i, p := range v.all {
		if moved[i] {
			p.moveTo(last)
		}
	}
	return parked, nil
}

// upsertSet is the ON CONFLICT clause that updates every column of columns
// but the key pk from the row being inserted.
func upsertSet(pk, columns string) string {
	var sets []string
	for _, c := range strings.Split(columns, ",") {
		if c = strings.TrimSpace(c); c != pk {
			sets = append(sets, c+" = excluded."+c)
		}
	}
	return " ON CONFLICT(" + pk + ") DO UPDATE SET " + strings.Join(sets, ", ")
}

package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/usersync/usersync/domain"
)

// EventLog is what a rebuild reads: the global log in position order.
type EventLog interface {
	ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error)
	Head(ctx context.Context) (uint64, error)
}

// Progress is reported while a rebuild runs.
type Progress struct {
	// Position is the position of the last event applied; Head the
	// position the rebuild runs to. Positions are ordered checkpoints:
	// Position/Head is the fraction of the log done, and Head counts the
	// events only when Dense.
	Position, Head uint64
	// Events is the number of events applied so far, counted as they are.
	Events  uint64
	Elapsed time.Duration
	// Dense is true when the log declares dense positions (1, 2, 3, …:
	// densePositions), as the embedded store does; EventStoreDB's leave
	// gaps.
	Dense bool
}

// densePositions is implemented by a log whose positions have no gaps,
// when DensePositions reports true (eventstore.SQLite, memory.Store).
type densePositions interface{ DensePositions() bool }

// isDense reports whether log declares dense positions.
func isDense(log EventLog) bool {
	d, ok := log.(densePositions)
	return ok && d.DensePositions()
}

// RebuildStats summarises a finished rebuild.
type RebuildStats struct {
	Events   uint64
	Parked   int
	Position uint64
	Users    int
	Tags     int
	// Receipts is the number of webhook receipts the rebuilt view keeps
	// (those within the retention, and every open one).
	Receipts int
	Duration time.Duration
	// ReadApply is the part of Duration spent reading, decoding and
	// applying the events up to the head read at the start (the bulk
	// load); Index the part spent creating the readers' indexes after it.
	// The rest catches up and swaps the new views in.
	ReadApply, Index time.Duration
	// Rows is the number of rows written.
	Rows int
}

// rebuildBatch is how many events a rebuild reads at a time, and
// rebuildCache how many rows it holds in memory before writing them.
const (
	rebuildBatch = 8192
	rebuildCache = 1 << 18
)

type decodedBatch struct {
	recs []domain.RecordedEvent
	envs []domain.Envelope
	errs []error
	done chan struct{}
}

// Rebuild drops every view and builds it again from the events. The new
// views are built in a file of their own beside views.db (views.db.rebuild),
// written for bulk (no journal, no sync, a large cache, the readers'
// indexes created after the load), while the old views keep serving and
// following live events. Then, with batches held back, the new views catch
// up to the head; with readers held back for the moment it takes, the
// process managers' checkpoints and parked events are copied over, the
// file is synced and renamed over views.db, and reopened. Events that
// cannot be decoded are parked, not skipped silently. progress, if not nil,
// is called every batch.
func (v *Views) Rebuild(ctx context.Context, log EventLog, progress func(Progress)) (RebuildStats, error) {
	// One rebuild at a time: they share views.db.rebuild.
	v.rebuildMu.Lock()
	defer v.rebuildMu.Unlock()
	start := time.Now()
	head, err := log.Head(ctx)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: read head: %w", err)
	}
	tmp := v.path + ".rebuild"
	if err := removeDB(tmp); err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	// The filter is sized by the events to load: the head counts them on
	// a dense log; with gaps it does not, and the filter gets its largest
	// size (newBloom caps it at 64 MiB).
	dense := isDense(log)
	expected := int(min(head, 1<<40))
	if !dense {
		expected = 1 << 40
	}
	aside, err := openBulk(ctx, tmp, expected)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: %w", err)
	}
	swapped := false
	defer func() {
		if !swapped {
			aside.close()
			_ = removeDB(tmp)
		}
	}()
	tx, err := aside.db.BeginTx(ctx, nil)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: begin: %w", err)
	}
	defer tx.Rollback()
	aside.tx = tx
	b := newBatch(ctx, tx, aside, v.cutoff())
	b.limit = rebuildCache

	var stats RebuildStats
	var parked []domain.ParkedEvent
	var applyErr error
	all := mask{true, true, true, true, true}
	apply := func(db *decodedBatch) {
		if applyErr != nil {
			return
		}
		for i := range db.recs {
			rec := &db.recs[i]
			if db.errs[i] != nil {
				for _, name := range viewNames {
					parked = append(parked, parkedFrom(name, *rec, db.errs[i]))
				}
				continue
			}
			if err := b.apply(all, rec, &db.envs[i]); err != nil {
				applyErr = fmt.Errorf("rebuild: apply event %d: %w", rec.Position, err)
				return
			}
		}
		stats.Events += uint64(len(db.recs))
		stats.Position = db.recs[len(db.recs)-1].Position
	}
	report := func() {
		if progress != nil {
			progress(Progress{Position: stats.Position, Head: head, Events: stats.Events, Elapsed: time.Since(start), Dense: dense})
		}
	}
	report()
	if err := readDecoded(ctx, log, 0, head, func(db *decodedBatch) { apply(db); report() }); err != nil {
		return stats, err
	}
	if applyErr != nil {
		return stats, applyErr
	}
	if err := b.flush(); err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	stats.ReadApply = time.Since(start)
	if _, err := tx.ExecContext(ctx, readIndexes); err != nil {
		return stats, fmt.Errorf("rebuild: create indexes: %w", err)
	}
	stats.Index = time.Since(start) - stats.ReadApply

	// Catch up with what arrived meanwhile, live batches held back.
	v.applyMu.Lock()
	defer v.applyMu.Unlock()
	now, err := log.Head(ctx)
	if err != nil {
		return stats, fmt.Errorf("rebuild: read head: %w", err)
	}
	if err := readDecoded(ctx, log, stats.Position, now, apply); err != nil {
		return stats, err
	}
	if applyErr != nil {
		return stats, applyErr
	}
	if err := b.flush(); err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	stats.Position = max(stats.Position, now)
	stats.Rows = b.written

	// Swap, readers held back.
	v.dbMu.Lock()
	defer v.dbMu.Unlock()
	if err := carryOver(ctx, v.db, tx); err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	for _, name := range viewNames {
		if _, err := tx.ExecContext(ctx, upsertCheckpoint, name, int64(stats.Position)); err != nil {
			return stats, fmt.Errorf("rebuild: store checkpoint of %s: %w", name, err)
		}
	}
	for _, pe := range parked {
		if err := insertParked(ctx, tx, pe); err != nil {
			return stats, fmt.Errorf("rebuild: %w", err)
		}
	}
	if err := counts(ctx, tx, &stats); err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	if _, err := tx.ExecContext(ctx, fmt.Sprintf("PRAGMA user_version = %d", viewsSchemaVersion)); err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return stats, fmt.Errorf("rebuild: commit: %w", err)
	}
	if err := aside.close(); err != nil {
		return stats, fmt.Errorf("rebuild: close %s: %w", tmp, err)
	}
	if err := syncFile(tmp); err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	swapped = true
	// From here the old file goes: its connections close (which copies
	// its write-ahead log in and removes it), the new file takes its name.
	if err := v.live.close(); err != nil {
		v.log.Warn("rebuild: close the old views file", "path", v.path, "err", err)
	}
	if err := removeSidecars(v.path); err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	if err := os.Rename(tmp, v.path); err != nil {
		return stats, fmt.Errorf("rebuild: move %s to %s: %w (the views are closed: restart usersync)", tmp, v.path, err)
	}
	_ = syncDir(filepath.Dir(v.path))
	db, err := openDB(v.path)
	if err != nil {
		return stats, fmt.Errorf("rebuild: reopen %s: %w (restart usersync)", v.path, err)
	}
	v.db, v.live = db, newViewDB(db)
	for _, p := range v.all {
		p.moveTo(stats.Position)
	}
	stats.Parked = len(parked)
	stats.Duration = time.Since(start)
	return stats, nil
}

// openBulk creates the views file a rebuild writes: no journal (a failed
// rebuild's file is thrown away), no sync until it is done, one connection
// with a 128 MiB cache (256 MiB was no faster and put the peak RSS of a
// 5M-event rebuild over 1 GiB), the tables without the readers' indexes.
func openBulk(ctx context.Context, path string, events int) (*viewDB, error) {
	dsn := "file:" + path + "?_pragma=journal_mode(OFF)&_pragma=synchronous(OFF)&_pragma=cache_size(-131072)" +
		"&_pragma=locking_mode(EXCLUSIVE)"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if _, err := db.ExecContext(ctx, baseSchema); err != nil {
		db.Close()
		return nil, fmt.Errorf("create tables in %s: %w", path, err)
	}
	d := newViewDB(db)
	d.seen = newBloom(events)
	return d, nil
}

// carryOver copies what views.db keeps that is not a view (the process
// managers' checkpoints and parked events, and the kind of store the
// positions belong to) from the live file into the rebuilt one.
func carryOver(ctx context.Context, from *sql.DB, to *sql.Tx) error {
	if err := carryMeta(ctx, from, to); err != nil {
		return err
	}
	rows, err := from.QueryContext(ctx, "SELECT name, position FROM checkpoints")
	if err != nil {
		return fmt.Errorf("read checkpoints: %w", err)
	}
	var cps []storedCheckpoint
	for rows.Next() {
		var c storedCheckpoint
		if err := rows.Scan(&c.name, &c.pos); err != nil {
			rows.Close()
			return fmt.Errorf("read checkpoints: %w", err)
		}
		if !slices.Contains(viewNames, c.name) {
			cps = append(cps, c)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read checkpoints: %w", err)
	}
	for _, c := range cps {
		if _, err := to.ExecContext(ctx, upsertCheckpoint, c.name, int64(c.pos)); err != nil {
			return fmt.Errorf("copy checkpoint of %s: %w", c.name, err)
		}
	}
	rows, err = from.QueryContext(ctx, "SELECT handler, position, stream, version, type, error, parked_at FROM parked")
	if err != nil {
		return fmt.Errorf("read parked events: %w", err)
	}
	var pes []domain.ParkedEvent
	for rows.Next() {
		var pe domain.ParkedEvent
		var pos, version, at int64
		if err := rows.Scan(&pe.Handler, &pos, &pe.Stream, &version, &pe.Type, &pe.Error, &at); err != nil {
			rows.Close()
			return fmt.Errorf("read parked events: %w", err)
		}
		pe.Position, pe.Version, pe.ParkedAt = uint64(pos), uint64(version), fromUnixNano(at)
		if !slices.Contains(viewNames, pe.Handler) {
			pes = append(pes, pe)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read parked events: %w", err)
	}
	for _, pe := range pes {
		if err := insertParked(ctx, to, pe); err != nil {
			return err
		}
	}
	return nil
}

// counts fills the rebuilt views' figures.
func counts(ctx context.Context, tx *sql.Tx, stats *RebuildStats) error {
	for q, n := range map[string]*int{
		"SELECT COALESCE((SELECT n FROM view_counts WHERE name = 'users'), 0)": &stats.Users,
		"SELECT COUNT(*) FROM tags":     &stats.Tags,
		"SELECT COUNT(*) FROM webhooks": &stats.Receipts,
	} {
		if err := tx.QueryRowContext(ctx, q).Scan(n); err != nil {
			return fmt.Errorf("count the rebuilt rows: %w", err)
		}
	}
	return nil
}

// removeDB removes an SQLite file and its journals, if there.
func removeDB(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return removeSidecars(path)
}

func removeSidecars(path string) error {
	for _, suffix := range []string{"-wal", "-shm", "-journal"} {
		if err := os.Remove(path + suffix); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

func syncFile(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}

func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// readDecoded reads the events in (after, upTo] in batches, decodes them on
// every core, and hands the batches to fn in order.
func readDecoded(ctx context.Context, log EventLog, after, upTo uint64, fn func(*decodedBatch)) error {
	if upTo <= after {
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	workers := max(1, runtime.GOMAXPROCS(0))
	ordered := make(chan *decodedBatch, workers*2)
	jobs := make(chan *decodedBatch, workers*2)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dec := domain.NewDecoder()
			for b := range jobs {
				b.envs = make([]domain.Envelope, len(b.recs))
				b.errs = make([]error, len(b.recs))
				for i, r := range b.recs {
					b.envs[i], b.errs[i] = dec.Decode(r)
				}
				close(b.done)
			}
		}()
	}
	readErr := make(chan error, 1)
	go func() {
		defer close(ordered)
		defer close(jobs)
		pos := after
		for pos < upTo {
			recs, err := log.ReadAll(ctx, pos, rebuildBatch)
			if err != nil {
				readErr <- fmt.Errorf("rebuild: read events after %d: %w", pos, err)
				return
			}
			if len(recs) == 0 {
				readErr <- fmt.Errorf("rebuild: the log ends at %d, before its head %d", pos, upTo)
				return
			}
			for i, r := range recs {
				if r.Position > upTo {
					recs = recs[:i]
					break
				}
			}
			if len(recs) == 0 {
				break
			}
			pos = recs[len(recs)-1].Position
			b := &decodedBatch{recs: recs, done: make(chan struct{})}
			select {
			case jobs <- b:
			case <-ctx.Done():
				return
			}
			select {
			case ordered <- b:
			case <-ctx.Done():
				return
			}
		}
	}()
	for b := range ordered {
		<-b.done
		fn(b)
	}
	wg.Wait()
	select {
	case err := <-readErr:
		return err
	default:
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	return nil
}

package projections

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
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
	// position the rebuild runs to.
	Position, Head uint64
	// Events is the number of events applied so far.
	Events  uint64
	Elapsed time.Duration
}

// RebuildStats summarises a finished rebuild.
type RebuildStats struct {
	Events   uint64
	Parked   int
	Position uint64
	Users    int
	Tags     int
	Duration time.Duration
	// ReadApply is the part of Duration spent reading, decoding and
	// applying the events; the rest writes the views.
	ReadApply time.Duration
	// Buckets is the number of buckets the views are stored in; Written
	// how many of them were written, the others being unchanged; Deleted
	// how many the new views no longer have.
	Buckets, Written, Deleted int
}

const rebuildBatch = 4096

type decodedBatch struct {
	recs []domain.RecordedEvent
	envs []domain.Envelope
	errs []error
	done chan struct{}
}

// Rebuild drops every view and builds it again from the events. The new
// views are built aside while the old ones keep serving (and keep following
// live events); then, with the views locked, the new ones catch up to the
// head and replace the old ones in memory and in the file in one
// transaction. Events that cannot be decoded are parked, not skipped
// silently. progress, if not nil, is called every batch.
func (v *Views) Rebuild(ctx context.Context, log EventLog, progress func(Progress)) (RebuildStats, error) {
	start := time.Now()
	defer collectLess()()
	head, err := log.Head(ctx)
	if err != nil {
		return RebuildStats{}, fmt.Errorf("rebuild: read head: %w", err)
	}
	aside := make([]state, len(v.all))
	for i, p := range v.all {
		// Each new state starts as big as the one it replaces: growing the
		// maps of a large view entry by entry cost a fifth of applying the
		// events.
		p.mu.RLock()
		aside[i] = p.newState(p.st.size())
		p.mu.RUnlock()
	}
	var stats RebuildStats
	var parked []domain.ParkedEvent
	// Each view applies the batches in its own goroutine: views share
	// nothing, and the apply step would otherwise be the slowest stage.
	apply := func(b *decodedBatch) {
		var wg sync.WaitGroup
		for _, st := range aside {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range b.recs {
					if b.errs[i] == nil {
						st.apply(&b.recs[i], &b.envs[i])
					}
				}
			}()
		}
		for i, rec := range b.recs {
			if b.errs[i] != nil {
				for _, p := range v.all {
					parked = append(parked, parkedFrom(p.name, rec, b.errs[i]))
				}
			}
		}
		wg.Wait()
		stats.Events += uint64(len(b.recs))
		stats.Position = b.recs[len(b.recs)-1].Position
	}
	report := func() {
		if progress != nil {
			progress(Progress{Position: stats.Position, Head: head, Events: stats.Events, Elapsed: time.Since(start)})
		}
	}
	report()
	if err := readDecoded(ctx, log, 0, head, func(b *decodedBatch) { apply(b); report() }); err != nil {
		return stats, err
	}

	readDone := time.Since(start)
	// Swap: lock every view, catch up with what arrived meanwhile, replace.
	for _, p := range v.all {
		p.mu.Lock()
		defer p.mu.Unlock()
	}
	now, err := log.Head(ctx)
	if err != nil {
		return stats, fmt.Errorf("rebuild: read head: %w", err)
	}
	if err := readDecoded(ctx, log, stats.Position, now, apply); err != nil {
		return stats, err
	}
	if now > stats.Position {
		stats.Position = now
	}
	// The new views go to the write-ahead log with automatic checkpoints
	// off on this connection: copying some 50 MB of log into views.db at
	// commit, with every view locked, took a third of the write phase. A
	// checkpoint runs after the swap instead, without the locks.
	conn, err := v.db.Conn(ctx)
	if err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	defer conn.Close()
	var autoCheckpoint int
	if err := conn.QueryRowContext(ctx, "PRAGMA wal_autocheckpoint").Scan(&autoCheckpoint); err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "PRAGMA wal_autocheckpoint = 0"); err != nil {
		return stats, fmt.Errorf("rebuild: %w", err)
	}
	defer func() {
		restore := fmt.Sprintf("PRAGMA wal_autocheckpoint = %d", autoCheckpoint)
		if _, err := conn.ExecContext(context.Background(), restore); err != nil {
			// A connection that would never checkpoint again must not go
			// back to the pool: drop it.
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		return stats, fmt.Errorf("rebuild: begin: %w", err)
	}
	defer tx.Rollback()
	if stats.Buckets, stats.Written, stats.Deleted, err = writeAll(ctx, tx, v.all, aside); err != nil {
		return stats, err
	}
	for _, p := range v.all {
		if _, err := tx.ExecContext(ctx, `INSERT INTO checkpoints(name, position) VALUES(?, ?)
			ON CONFLICT(name) DO UPDATE SET position = excluded.position`, p.name, stats.Position); err != nil {
			return stats, fmt.Errorf("rebuild: store checkpoint of %s: %w", p.name, err)
		}
		if _, err := tx.ExecContext(ctx, "DELETE FROM parked WHERE handler = ?", p.name); err != nil {
			return stats, fmt.Errorf("rebuild: clear parked events of %s: %w", p.name, err)
		}
	}
	for _, pe := range parked {
		if err := insertParked(ctx, tx, pe); err != nil {
			return stats, fmt.Errorf("rebuild: %w", err)
		}
	}
	if err := tx.Commit(); err != nil {
		return stats, fmt.Errorf("rebuild: commit: %w", err)
	}
	for i, p := range v.all {
		aside[i].committed()
		p.st = aside[i]
		p.moveTo(stats.Position)
		p.stored = stats.Position
	}
	v.checkpointLater()
	stats.Parked = len(parked)
	stats.Users = len(aside[0].(*usersState).rows.rows)
	stats.Tags = len(aside[1].(*tagsState).rows.rows)
	stats.Duration = time.Since(start)
	stats.ReadApply = readDone
	return stats, nil
}

// rebuildGCPercent is how much the heap grows between two collections
// during a rebuild; Go's default is 100.
const rebuildGCPercent = 400

// collectLess makes the collector run less often until the function it
// returns is called. A rebuild allocates a second copy of every view and
// discards the events it read as it goes: at the default, the collector
// marked that growing heap over and over, and the rebuild ran 15-20 %
// slower. The price is memory: the heap peaked at 950 MB instead of 580 MB
// over 310 MB of live data when rebuilding 1,000,000 events. A collector
// setting of the operator's own (GOGC in the environment) is left alone,
// and a memory limit (GOMEMLIMIT) still holds.
func collectLess() (undo func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	gcDuringRebuilds.Lock()
	defer gcDuringRebuilds.Unlock()
	if gcDuringRebuilds.running == 0 {
		gcDuringRebuilds.prev = debug.SetGCPercent(rebuildGCPercent)
	}
	gcDuringRebuilds.running++
	var once sync.Once
	return func() {
		once.Do(func() {
			gcDuringRebuilds.Lock()
			defer gcDuringRebuilds.Unlock()
			if gcDuringRebuilds.running--; gcDuringRebuilds.running == 0 {
				debug.SetGCPercent(gcDuringRebuilds.prev)
			}
		})
	}
}

// gcDuringRebuilds counts the rebuilds running in the process, so that the
// first raises the collector percentage and the last puts back what was
// there before. It is package state because what it guards, the
// collector's setting, belongs to the whole process.
var gcDuringRebuilds struct {
	sync.Mutex
	running int
	prev    int
}

func parkedFrom(handler string, rec domain.RecordedEvent, err error) domain.ParkedEvent {
	return domain.ParkedEvent{Handler: handler, Position: rec.Position, Stream: rec.Stream, Version: rec.Version,
		Type: rec.Type, Error: err.Error(), ParkedAt: time.Now().UTC()}
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

// writeAll replaces every view's buckets in the file with the rebuilt
// states. Each view is encoded in parts on every core while one goroutine
// (this one) writes. Buckets whose content the file holds already (their
// sum is in the old state's) are not written again: a rebuild that fixes a
// few rows writes a few buckets, and keeps the views locked that much less.
// The old states are locked by the caller.
// It returns how many buckets the new states have, how many it wrote and
// how many it deleted.
func writeAll(ctx context.Context, tx *sql.Tx, all []*projection, states []state) (buckets, written, deleted int, _ error) {
	// The writer drains ch even after an error, so encoders never block.
	// It hands the buffers back through free for the encoders to reuse:
	// the driver copies a blob when it binds it.
	ch := make(chan encoded, 64)
	free := make(chan []byte, cap(ch))
	type job struct {
		st          state
		inFile      map[uint32]sum
		part, parts uint32
	}
	workers := runtime.GOMAXPROCS(0)
	jobs := make(chan job, len(states)*workers)
	for i, st := range states {
		for part := range workers {
			jobs <- job{st, all[i].st.sums(), uint32(part), uint32(workers)}
		}
	}
	close(jobs)
	errs := make(chan error, cap(jobs))
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for j := range jobs {
				if err := j.st.encodeAll(j.part, j.parts, j.inFile, ch, free); err != nil {
					errs <- err
				}
			}
		})
	}
	go func() { wg.Wait(); close(ch) }()

	var writeErr error
	up, err := tx.PrepareContext(ctx, upsertBucket)
	if err != nil {
		writeErr = fmt.Errorf("rebuild: %w", err)
	} else {
		defer up.Close()
	}
	kept := map[string]map[uint32]bool{}
	for _, p := range all {
		kept[p.name] = map[uint32]bool{}
	}
	for e := range ch {
		if writeErr != nil {
			continue
		}
		kept[e.view][e.bucket] = true
		buckets++
		if !e.unchanged {
			written++
			if _, err := up.ExecContext(ctx, e.view, int64(e.bucket), e.blob); err != nil {
				writeErr = fmt.Errorf("rebuild: write %s bucket %d: %w", e.view, e.bucket, err)
			}
		}
		e.wrote(e.bucket, e.sum)
		select {
		case free <- e.blob:
		default:
		}
	}
	close(errs)
	for err := range errs {
		writeErr = errors.Join(writeErr, err)
	}
	if writeErr != nil {
		return 0, 0, 0, writeErr
	}
	// Buckets the new states no longer have.
	for _, p := range all {
		for bk := range p.st.sums() {
			if kept[p.name][bk] {
				continue
			}
			if _, err := tx.ExecContext(ctx, deleteBucket, p.name, int64(bk)); err != nil {
				return 0, 0, 0, fmt.Errorf("rebuild: delete %s bucket %d: %w", p.name, bk, err)
			}
			deleted++
		}
	}
	return buckets, written, deleted, nil
}

package projections

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/usersync/usersync/eventstore"
)

// StoreFile is the kind of event store a views file follows when it has
// never said otherwise: the embedded store beside it.
const StoreFile = "file"

// metaStoreKind is the meta row naming the kind of event store whose
// positions the checkpoints and parked events hold.
const metaStoreKind = "store_kind"

// StoreKind returns the kind of event store ("file", "esdb") whose positions
// the views' checkpoints and parked events hold: a position is only
// meaningful in the log it came from.
func (v *Views) StoreKind(ctx context.Context) (string, error) {
	var kind string
	err := v.read(func(db *sql.DB) error {
		return db.QueryRowContext(ctx, "SELECT value FROM meta WHERE key = ?", metaStoreKind).Scan(&kind)
	})
	if errors.Is(err, sql.ErrNoRows) {
		return StoreFile, nil
	}
	if err != nil {
		return "", fmt.Errorf("read the store kind of %s: %w", v.path, err)
	}
	return kind, nil
}

// ErrOtherStore is returned (wrapped) by FollowStore when the views hold
// positions of another kind of event store.
var ErrOtherStore = errors.New("the views follow another event store")

// FollowStore makes sure the views' positions belong to a store of the
// given kind. Views that have applied nothing yet (every checkpoint 0, no
// parked event) are simply marked as following kind; views with positions
// of another kind are refused with ErrOtherStore: their positions mean
// nothing in this store's log (usersync migrate moves them).
func (v *Views) FollowStore(ctx context.Context, kind string) error {
	current, err := v.StoreKind(ctx)
	if err != nil {
		return err
	}
	if current == kind {
		return nil
	}
	var used int
	err = v.read(func(db *sql.DB) error {
		return db.QueryRowContext(ctx,
			"SELECT (SELECT COUNT(*) FROM checkpoints WHERE position > 0) + (SELECT COUNT(*) FROM parked)").Scan(&used)
	})
	if err != nil {
		return fmt.Errorf("read the checkpoints of %s: %w", v.path, err)
	}
	if used > 0 {
		return fmt.Errorf("%s holds positions in the %s event store's log, not in this %s store's: %w", v.path, current, kind, ErrOtherStore)
	}
	return v.setStoreKind(ctx, kind)
}

func (v *Views) setStoreKind(ctx context.Context, kind string) error {
	err := v.read(func(db *sql.DB) error {
		_, err := db.ExecContext(ctx, upsertMeta, metaStoreKind, kind)
		return err
	})
	if err != nil {
		return fmt.Errorf("record the store kind of %s: %w", v.path, eventstore.MarkStorage(err))
	}
	return nil
}

const upsertMeta = `INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value`

// MoveToStore rewrites every checkpoint (the views' and the process
// managers') and every parked event's position through move, and records
// kind as the store they now belong to, in one transaction: usersync
// migrate calls it once the events are copied, so that the views and the
// process managers continue in the new log where they stopped in the old
// one. move maps a position of the old log to the new position of the same
// event; 0 (nothing applied) stays 0 without calling it.
func (v *Views) MoveToStore(ctx context.Context, kind string, move func(ctx context.Context, pos uint64) (uint64, error)) error {
	v.dbMu.Lock()
	defer v.dbMu.Unlock()
	tx, err := v.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("move %s to the %s store: %w", v.path, kind, err)
	}
	defer tx.Rollback()
	// Rows are moved to minus their new position first, then flipped:
	// a new position may be another row's old one, not moved yet (the
	// parked events' key is handler and position).
	moveRows := func(what, query, update, flip string) error {
		type row struct {
			key string
			pos uint64
		}
		rows, err := tx.QueryContext(ctx, query)
		if err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		var all []row
		for rows.Next() {
			var r row
			var pos int64
			if err := rows.Scan(&r.key, &pos); err != nil {
				rows.Close()
				return fmt.Errorf("read %s: %w", what, err)
			}
			r.pos = uint64(pos)
			all = append(all, r)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return fmt.Errorf("read %s: %w", what, err)
		}
		for _, r := range all {
			if r.pos == 0 {
				continue
			}
			to, err := move(ctx, r.pos)
			if err != nil {
				return fmt.Errorf("move %s %s at position %d: %w", what, r.key, r.pos, err)
			}
			if _, err := tx.ExecContext(ctx, update, -int64(to), r.key, int64(r.pos)); err != nil {
				return fmt.Errorf("move %s %s to position %d: %w", what, r.key, to, err)
			}
		}
		if _, err := tx.ExecContext(ctx, flip); err != nil {
			return fmt.Errorf("move %s: %w", what, err)
		}
		return nil
	}
	if err := moveRows("checkpoint", "SELECT name, position FROM checkpoints",
		"UPDATE checkpoints SET position = ? WHERE name = ? AND position = ?",
		"UPDATE checkpoints SET position = -position WHERE position < 0"); err != nil {
		return err
	}
	if err := moveRows("parked event of", "SELECT handler, position FROM parked",
		"UPDATE parked SET position = ? WHERE handler = ? AND position = ?",
		"UPDATE parked SET position = -position WHERE position < 0"); err != nil {
		return err
	}
	if _, err := tx.ExecContext(ctx, upsertMeta, metaStoreKind, kind); err != nil {
		return fmt.Errorf("record the store kind of %s: %w", v.path, err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("move %s to the %s store: %w", v.path, kind, eventstore.MarkStorage(err))
	}
	for _, p := range v.all {
		var pos int64
		err := v.db.QueryRowContext(ctx, "SELECT position FROM checkpoints WHERE name = ?", p.name).Scan(&pos)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return fmt.Errorf("load checkpoint of %s from %s: %w", p.name, v.path, err)
		}
		p.moveTo(uint64(pos))
	}
	return nil
}

// carryMeta copies the meta rows of the live views file into a rebuilt one.
func carryMeta(ctx context.Context, from *sql.DB, to *sql.Tx) error {
	rows, err := from.QueryContext(ctx, "SELECT key, value FROM meta")
	if err != nil {
		return fmt.Errorf("read meta: %w", err)
	}
	var kv [][2]string
	for rows.Next() {
		var k, val string
		if err := rows.Scan(&k, &val); err != nil {
			rows.Close()
			return fmt.Errorf("read meta: %w", err)
		}
		kv = append(kv, [2]string{k, val})
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read meta: %w", err)
	}
	for _, r := range kv {
		if _, err := to.ExecContext(ctx, upsertMeta, r[0], r[1]); err != nil {
			return fmt.Errorf("copy meta %s: %w", r[0], err)
		}
	}
	return nil
}

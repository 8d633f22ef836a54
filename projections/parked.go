package projections

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

const insertParkedSQL = `INSERT INTO parked(handler, position, stream, version, type, error, parked_at)
	VALUES(?, ?, ?, ?, ?, ?, ?) ON CONFLICT(handler, position) DO UPDATE SET error = excluded.error, parked_at = excluded.parked_at`

func insertParked(ctx context.Context, tx *sql.Tx, pe domain.ParkedEvent) error {
	if _, err := tx.ExecContext(ctx, insertParkedSQL, pe.Handler, int64(pe.Position), pe.Stream, int64(pe.Version),
		pe.Type, pe.Error, unixNano(pe.ParkedAt)); err != nil {
		return fmt.Errorf("park event %d for %s: %w", pe.Position, pe.Handler, err)
	}
	return nil
}

// Park records an event a handler gave up on, so it is visible and can be
// replayed.
func (v *Views) Park(ctx context.Context, pe domain.ParkedEvent) error {
	return eventstore.MarkStorage(v.park(ctx, pe))
}

func (v *Views) park(ctx context.Context, pe domain.ParkedEvent) error {
	v.dbMu.RLock()
	defer v.dbMu.RUnlock()
	tx, err := v.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("park event %d: %w", pe.Position, err)
	}
	defer tx.Rollback()
	if err := insertParked(ctx, tx, pe); err != nil {
		return err
	}
	return tx.Commit()
}

// Parked lists the parked events of a handler ("" for every handler) in
// position order.
func (v *Views) Parked(ctx context.Context, handler string) ([]domain.ParkedEvent, error) {
	v.dbMu.RLock()
	defer v.dbMu.RUnlock()
	rows, err := v.db.QueryContext(ctx, `SELECT handler, position, stream, version, type, error, parked_at FROM parked
		WHERE ? = '' OR handler = ? ORDER BY position, handler`, handler, handler)
	if err != nil {
		return nil, fmt.Errorf("list parked events: %w", err)
	}
	defer rows.Close()
	var out []domain.ParkedEvent
	for rows.Next() {
		var pe domain.ParkedEvent
		var pos, version, at int64
		if err := rows.Scan(&pe.Handler, &pos, &pe.Stream, &version, &pe.Type, &pe.Error, &at); err != nil {
			return nil, fmt.Errorf("list parked events: %w", err)
		}
		pe.Position, pe.Version, pe.ParkedAt = uint64(pos), uint64(version), fromUnixNano(at)
		out = append(out, pe)
	}
	return out, rows.Err()
}

// Unpark removes a parked event once it has been replayed.
func (v *Views) Unpark(ctx context.Context, handler string, position uint64) error {
	v.dbMu.RLock()
	defer v.dbMu.RUnlock()
	if _, err := v.db.ExecContext(ctx, "DELETE FROM parked WHERE handler = ? AND position = ?", handler, int64(position)); err != nil {
		return fmt.Errorf("unpark event %d of %s: %w", position, handler, err)
	}
	return nil
}

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

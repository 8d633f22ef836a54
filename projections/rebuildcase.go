package projections

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
)

// RebuildResult is what Rebuild did.
type RebuildResult struct {
	// Stats are the rebuilt views' figures (see Views.Rebuild).
	Stats RebuildStats
	// Moved are the other checkpoints kept in views.db (the process
	// managers') that were beyond the log's end and were moved back to the
	// rebuilt position, by name.
	Moved []MovedCheckpoint
}

// MovedCheckpoint is a checkpoint Rebuild moved back.
type MovedCheckpoint struct {
	Name string
	// From is the position it had handled events up to; To the position it
	// resumes from.
	From, To uint64
}

// Rebuild is the rebuild of usersync, whoever starts it: it rebuilds every
// view from the events (Views.Rebuild, which see), then moves back to the
// rebuilt position every other checkpoint kept in views.db that is beyond
// the log's end. Those are the process managers': they are not rebuilt,
// since they act on the world, but one that handled events beyond the
// log's end (events.db restored from an older backup) would skip the new
// events up to its old checkpoint. A checkpoint is judged against the
// log's head read after the rebuild, so one that a running process manager
// moved over events appended after the views were swapped in stays. A
// running process manager reads its checkpoint when it starts: one moved
// back under it takes effect at the next start (serve refuses to start
// with such a checkpoint, so it cannot be running).
//
// progress, if not nil, is called as Views.Rebuild calls it. On error the
// result holds what is known: the stats of a failed rebuild, or of a
// finished one whose checkpoints could not be moved.
func Rebuild(ctx context.Context, views *Views, log EventLog, progress func(Progress)) (RebuildResult, error) {
	stats, err := views.Rebuild(ctx, log, progress)
	res := RebuildResult{Stats: stats}
	if err != nil {
		return res, err
	}
	res.Moved, err = moveCheckpointsBack(ctx, views, log, stats.Position)
	if err != nil {
		return res, fmt.Errorf("rebuild: views rebuilt up to position %d: %w", stats.Position, err)
	}
	return res, nil
}

// moveCheckpointsBack moves every checkpoint of views.db that is not a
// view's and is beyond the log's end back to to, and says which it moved.
// The checkpoints are read before the head: a running process manager
// handles only events in the log, so none read can be beyond a head read
// after it unless it is stale.
func moveCheckpointsBack(ctx context.Context, v *Views, log EventLog, to uint64) ([]MovedCheckpoint, error) {
	others, err := v.otherCheckpoints(ctx)
	if err != nil {
		return nil, err
	}
	end, err := log.Head(ctx)
	if err != nil {
		return nil, fmt.Errorf("read the log's head: %w", err)
	}
	end = max(end, to)
	var moved []MovedCheckpoint
	for _, c := range others {
		if c.pos <= end {
			continue
		}
		// Only while it is still beyond the end: a save in between wins.
		var r sql.Result
		err := v.read(func(db *sql.DB) error {
			var err error
			r, err = db.ExecContext(ctx, "UPDATE checkpoints SET position = ? WHERE name = ? AND position > ?", to, c.name, end)
			return err
		})
		if err != nil {
			return moved, fmt.Errorf("move checkpoint of %s back from %d to %d: %w", c.name, c.pos, to, err)
		}
		n, err := r.RowsAffected()
		if err != nil {
			return moved, fmt.Errorf("move checkpoint of %s back from %d to %d: %w", c.name, c.pos, to, err)
		}
		if n > 0 {
			moved = append(moved, MovedCheckpoint{Name: c.name, From: c.pos, To: to})
		}
	}
	return moved, nil
}

// storedCheckpoint is a row of the checkpoints table.
type storedCheckpoint struct {
	name string
	pos  uint64
}

// otherCheckpoints lists the checkpoints of views.db that are not a
// view's, by name.
func (v *Views) otherCheckpoints(ctx context.Context) ([]storedCheckpoint, error) {
	v.dbMu.RLock()
	defer v.dbMu.RUnlock()
	rows, err := v.db.QueryContext(ctx, "SELECT name, position FROM checkpoints ORDER BY name")
	if err != nil {
		return nil, fmt.Errorf("list checkpoints in %s: %w", v.path, err)
	}
	defer rows.Close()
	views := v.Names()
	var out []storedCheckpoint
	for rows.Next() {
		var c storedCheckpoint
		if err := rows.Scan(&c.name, &c.pos); err != nil {
			return nil, fmt.Errorf("list checkpoints in %s: %w", v.path, err)
		}
		if !slices.Contains(views, c.name) {
			out = append(out, c)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list checkpoints in %s: %w", v.path, err)
	}
	return out, nil
}

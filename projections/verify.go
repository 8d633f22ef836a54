package projections

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/usersync/usersync/domain"
)

// Difference is one way the live views differ from a rebuild: a row only
// one side has (Column empty, Live or Rebuilt "(missing)"), or a column
// whose values differ.
type Difference struct {
	// Table is the table of views.db (users, user_tags, tags,
	// password_returns, webhooks, webhook_log, view_counts, checkpoints).
	Table string `json:"table"`
	// Row names the row by its primary key, such as contact_id=7.
	Row     string `json:"row"`
	Column  string `json:"column,omitempty"`
	Live    string `json:"live"`
	Rebuilt string `json:"rebuilt"`
}

func (d Difference) String() string {
	if d.Column == "" {
		return fmt.Sprintf("%s %s: live %s, rebuilt %s", d.Table, d.Row, d.Live, d.Rebuilt)
	}
	return fmt.Sprintf("%s %s column %s: live %s, rebuilt %s", d.Table, d.Row, d.Column, d.Live, d.Rebuilt)
}

// verifiedTables are the tables a rebuild makes, compared row by row.
var verifiedTables = []string{"users", "user_tags", "tags", "password_returns", "webhooks", "webhook_log", "view_counts"}

// missing stands for the value of a row one side does not have.
const missing = "(missing)"

// VerifyResult is what Verify found.
type VerifyResult struct {
	// Differences lists how the live views differ from the rebuild (at
	// most the limit asked for); none when they are equal.
	Differences []Difference
	// Stats are the rebuild's.
	Stats RebuildStats
	// ViewsAt is the position the live views had applied the log up to
	// (the rebuild ran to it), Head the log's last position: events after
	// ViewsAt are not yet applied (serve applies them when it starts).
	ViewsAt, Head uint64
}

// VerifyOptions say how to verify.
type VerifyOptions struct {
	// Dir is where the scratch copy is built (it must exist; the copy is
	// removed afterwards). It needs room for two views files.
	Dir string
	// Limit is the most differences listed (0: all).
	Limit int
	// Retention is serve's --receipt-retention: closed receipts received
	// before it are not rebuilt, and not compared (the live views prune
	// them lazily).
	Retention time.Duration
	// Progress, if set, is called as the rebuild goes.
	Progress func(Progress)
}

// Verify rebuilds the views into a scratch copy, up to the position the
// live views have applied, and lists every difference from the live
// views. The live views are only read: open them without a retention, so
// that they prune nothing.
func (v *Views) Verify(ctx context.Context, log EventLog, opts VerifyOptions) (VerifyResult, error) {
	var res VerifyResult
	dir, limit, progress := opts.Dir, opts.Limit, opts.Progress
	var cutoff int64
	if opts.Retention > 0 {
		cutoff = v.now().Add(-opts.Retention).UnixNano()
	}
	var err error
	if res.Head, err = log.Head(ctx); err != nil {
		return res, fmt.Errorf("verify: read head: %w", err)
	}
	res.ViewsAt, _ = v.LowestPosition(ctx)
	scratchPath := filepath.Join(dir, "views.db")
	if err := removeDB(scratchPath); err != nil {
		return res, fmt.Errorf("verify: %w", err)
	}
	defer removeDB(scratchPath)
	defer os.Remove(scratchPath + ".rebuild")
	err = v.read(func(db *sql.DB) error {
		_, err := db.ExecContext(ctx, "VACUUM INTO ?", scratchPath)
		return err
	})
	if err != nil {
		return res, fmt.Errorf("verify: copy the views to %s: %w", scratchPath, err)
	}
	scratch, err := Open(ctx, scratchPath, WithReceiptRetention(opts.Retention))
	if err == nil {
		scratch.now = func() time.Time { return time.Unix(0, cutoff).Add(opts.Retention) }
	}
	if err != nil {
		return res, fmt.Errorf("verify: open the scratch copy: %w", err)
	}
	defer scratch.Close()
	res.Stats, err = scratch.Rebuild(ctx, upToLog{log: log, upTo: res.ViewsAt}, progress)
	if err != nil {
		return res, fmt.Errorf("verify: %w", err)
	}
	var diffs []Difference
	full := func() bool { return limit > 0 && len(diffs) >= limit }
	add := func(d Difference) bool {
		diffs = append(diffs, d)
		return !full()
	}
	err = v.read(func(live *sql.DB) error {
		return scratch.read(func(rebuilt *sql.DB) error {
			for _, name := range viewNames {
				l, r := checkpointOf(ctx, live, name), checkpointOf(ctx, rebuilt, name)
				if l != r && !add(Difference{Table: "checkpoints", Row: "name=" + name, Column: "position", Live: l, Rebuilt: r}) {
					return nil
				}
			}
			for _, t := range verifiedTables {
				if err := diffTable(ctx, live, rebuilt, t, skipPruned(t, cutoff), func(d Difference) bool { return add(d) }); err != nil {
					return err
				}
				if full() {
					return nil
				}
			}
			return nil
		})
	})
	if err != nil {
		return res, fmt.Errorf("verify: compare: %w", err)
	}
	res.Differences = diffs
	return res, nil
}

// upToLog is a log that ends at position upTo.
type upToLog struct {
	log  EventLog
	upTo uint64
}

func (l upToLog) Head(ctx context.Context) (uint64, error) {
	h, err := l.log.Head(ctx)
	return min(h, l.upTo), err
}

func (l upToLog) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	if after >= l.upTo {
		return nil, nil
	}
	recs, err := l.log.ReadAll(ctx, after, limit)
	for i, r := range recs {
		if r.Position > l.upTo {
			return recs[:i], err
		}
	}
	return recs, err
}

func (l upToLog) DensePositions() bool { return isDense(l.log) }

func checkpointOf(ctx context.Context, db *sql.DB, name string) string {
	var pos int64
	if err := db.QueryRowContext(ctx, "SELECT position FROM checkpoints WHERE name = ?", name).Scan(&pos); err != nil {
		return missing
	}
	return strconv.FormatInt(pos, 10)
}

// skipPruned tells the rows of table that the retention lets the views
// prune (closed receipts received before cutoff): a rebuild leaves them
// out, the live views may still hold them.
func skipPruned(table string, cutoff int64) func(cols []string, vals []any) bool {
	if table != "webhooks" || cutoff == 0 {
		return nil
	}
	return func(cols []string, vals []any) bool {
		var received int64
		var status string
		for i, c := range cols {
			switch c {
			case "received_at":
				received, _ = vals[i].(int64)
			case "status":
				status = valueText(vals[i])
			}
		}
		return received < cutoff && status != WebhookQueued && status != WebhookRetrying
	}
}

// diffTable walks table in both files in primary key order, as a merge,
// and hands each difference to add until add returns false. Rows skip
// tells are left out on both sides.
func diffTable(ctx context.Context, live, rebuilt *sql.DB, table string, skip func(cols []string, vals []any) bool, add func(Difference) bool) error {
	cols, pk, err := tableShape(ctx, rebuilt, table)
	if err != nil {
		return err
	}
	order := strings.Join(pk, ", ")
	q := "SELECT " + strings.Join(cols, ", ") + " FROM " + table + " ORDER BY " + order
	lr, err := live.QueryContext(ctx, q)
	if err != nil {
		return fmt.Errorf("read live %s: %w", table, err)
	}
	defer lr.Close()
	rr, err := rebuilt.QueryContext(ctx, q)
	if err != nil {
		return fmt.Errorf("read rebuilt %s: %w", table, err)
	}
	defer rr.Close()
	pkIdx := make([]int, len(pk))
	for i, k := range pk {
		for j, c := range cols {
			if c == k {
				pkIdx[i] = j
			}
		}
	}
	next := func(rows *sql.Rows) ([]any, error) {
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				return nil, err
			}
			if skip == nil || !skip(cols, vals) {
				return vals, nil
			}
		}
		return nil, rows.Err()
	}
	rowName := func(vals []any) string {
		parts := make([]string, len(pk))
		for i, k := range pk {
			parts[i] = k + "=" + valueText(vals[pkIdx[i]])
		}
		return strings.Join(parts, ",")
	}
	l, err := next(lr)
	if err != nil {
		return err
	}
	r, err := next(rr)
	if err != nil {
		return err
	}
	for l != nil || r != nil {
		c := 0
		switch {
		case l == nil:
			c = 1
		case r == nil:
			c = -1
		default:
			for _, i := range pkIdx {
				if c = compareValues(l[i], r[i]); c != 0 {
					break
				}
			}
		}
		switch {
		case c < 0: // only live has the row
			if !add(Difference{Table: table, Row: rowName(l), Live: "present", Rebuilt: missing}) {
				return nil
			}
			if l, err = next(lr); err != nil {
				return err
			}
		case c > 0:
			if !add(Difference{Table: table, Row: rowName(r), Live: missing, Rebuilt: "present"}) {
				return nil
			}
			if r, err = next(rr); err != nil {
				return err
			}
		default:
			for i, col := range cols {
				if compareValues(l[i], r[i]) != 0 {
					if !add(Difference{Table: table, Row: rowName(l), Column: col, Live: valueText(l[i]), Rebuilt: valueText(r[i])}) {
						return nil
					}
				}
			}
			if l, err = next(lr); err != nil {
				return err
			}
			if r, err = next(rr); err != nil {
				return err
			}
		}
	}
	return nil
}

// tableShape lists a table's columns and its primary key columns in key
// order.
func tableShape(ctx context.Context, db *sql.DB, table string) (cols, pk []string, err error) {
	rows, err := db.QueryContext(ctx, "SELECT name, pk FROM pragma_table_info(?) ORDER BY cid", table)
	if err != nil {
		return nil, nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	defer rows.Close()
	keys := map[int]string{}
	for rows.Next() {
		var name string
		var k int
		if err := rows.Scan(&name, &k); err != nil {
			return nil, nil, fmt.Errorf("columns of %s: %w", table, err)
		}
		cols = append(cols, name)
		if k > 0 {
			keys[k] = name
		}
	}
	if err := rows.Err(); err != nil {
		return nil, nil, fmt.Errorf("columns of %s: %w", table, err)
	}
	for i := 1; i <= len(keys); i++ {
		pk = append(pk, keys[i])
	}
	if len(cols) == 0 || len(pk) == 0 {
		return nil, nil, fmt.Errorf("table %s has no columns or no primary key", table)
	}
	return cols, pk, nil
}

// compareValues orders two column values as SQLite's BINARY collation
// does for the types the views hold: integers by value, text and blobs by
// bytes, NULL first.
func compareValues(a, b any) int {
	ai, aInt := a.(int64)
	bi, bInt := b.(int64)
	switch {
	case aInt && bInt:
		switch {
		case ai < bi:
			return -1
		case ai > bi:
			return 1
		}
		return 0
	case a == nil && b == nil:
		return 0
	case a == nil:
		return -1
	case b == nil:
		return 1
	}
	return bytes.Compare([]byte(valueText(a)), []byte(valueText(b)))
}

// valueText is a column value as text.
func valueText(v any) string {
	switch v := v.(type) {
	case nil:
		return "NULL"
	case []byte:
		return string(v)
	case string:
		return v
	}
	return fmt.Sprint(v)
}

package projections_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// gappedLog is a test adapter that simulates EventStoreDB's positions over
// the real SQLite store: the event the store numbers i is at position
// i*1000 + jitter(i), increasing with large uneven gaps, as $all's byte
// offsets are. It does not declare DensePositions.
type gappedLog struct{ s *eventstore.SQLite }

func gappedPos(i uint64) uint64 {
	if i == 0 {
		return 0
	}
	return i*1000 + (i*7919)%997
}

// gappedIndex is how many events have a position at or before p.
func gappedIndex(p uint64) uint64 {
	i := p / 1000
	if gappedPos(i) > p {
		i--
	}
	return i
}

func (g gappedLog) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	recs, err := g.s.ReadAll(ctx, gappedIndex(after), limit)
	for i := range recs {
		recs[i].Position = gappedPos(recs[i].Position)
	}
	return recs, err
}

func (g gappedLog) Head(ctx context.Context) (uint64, error) {
	h, err := g.s.Head(ctx)
	return gappedPos(h), err
}

// TestRebuild_ProgressOverDenseAndGappedLogs: a rebuild reports the
// events it applied, counted as it applies them, and positions that run to
// the head; Dense says whether the head counts the events too (the bar
// shows N/head only then).
func TestRebuild_ProgressOverDenseAndGappedLogs(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dense bool
	}{{"dense", true}, {"gapped", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			e := &env{t: t, dir: dir, store: store, clock: t0}
			e.story()
			e.churn(1, 200, 20)
			count, _ := store.Head(ctx)
			var log projections.EventLog = store
			if !tc.dense {
				log = gappedLog{store}
			}
			head, _ := log.Head(ctx)
			views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer views.Close()
			var reports []projections.Progress
			stats, err := views.Rebuild(ctx, log, func(p projections.Progress) { reports = append(reports, p) })
			if err != nil {
				t.Fatal(err)
			}
			if stats.Events != count || stats.Position != head {
				t.Fatalf("stats: %d events up to %d; want %d events up to %d", stats.Events, stats.Position, count, head)
			}
			last := reports[len(reports)-1]
			if last.Dense != tc.dense || last.Head != head || last.Position != head || last.Events != count {
				t.Errorf("last report %+v; want dense %v, %d events, position and head %d", last, tc.dense, count, head)
			}
			for _, name := range views.Names() {
				if pos, _ := views.Position(name); pos != head {
					t.Errorf("view %s at %d after the rebuild, want the head %d", name, pos, head)
				}
			}
			if u, ok, _ := views.Users.Get(ctx, 1); !ok || u.ContactID != 1 {
				t.Errorf("user 1 after the rebuild: %+v, %v", u, ok)
			}
		})
	}
}

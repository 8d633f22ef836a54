package metrics_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/eventstoretest"
	"github.com/usersync/usersync/eventstore/memory"
	"github.com/usersync/usersync/http/metrics"
	"github.com/usersync/usersync/projections"
)

// gappedLog is a test adapter that simulates EventStoreDB's positions over
// the memory store: the event the memory store numbers i is at position
// i*1000 + jitter(i), increasing with gaps.
type gappedLog struct{ mem *memory.Store }

func gappedPos(i uint64) uint64 {
	if i == 0 {
		return 0
	}
	return i*1000 + (i*7919)%997
}

func (g gappedLog) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	i := after / 1000
	if gappedPos(i) > after {
		i--
	}
	recs, err := g.mem.ReadAll(ctx, i, limit)
	for k := range recs {
		recs[k].Position = gappedPos(recs[k].Position)
	}
	return recs, err
}

func (g gappedLog) Head(ctx context.Context) (uint64, error) {
	h, err := g.mem.Head(ctx)
	return gappedPos(h), err
}

// TestState_LagMetricsOnDenseAndGappedStores: the event counts are
// exported only where positions count events; the gap-independent lag,
// the caught-up decision and the store's kind and reachability on both.
func TestState_LagMetricsOnDenseAndGappedStores(t *testing.T) {
	for _, tc := range []struct {
		name  string
		dense bool
		kind  string
		down  bool
	}{
		{"dense, up", true, "file", false},
		{"gapped, down", false, "esdb", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			mem := memory.New()
			if _, err := mem.Append(ctx, "contact-1", domain.AnyVersion(), eventstoretest.Events("E", 3)...); err != nil {
				t.Fatal(err)
			}
			var log projections.EventLog = mem
			if !tc.dense {
				log = gappedLog{mem}
			}
			views, err := projections.Open(ctx, filepath.Join(t.TempDir(), "views.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer views.Close()
			m := metrics.New()
			m.Watch(metrics.Source{Views: views, Log: log, Dense: tc.dense, StoreKind: tc.kind,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				StoreUp: func(context.Context) error {
					if tc.down {
						return errors.New("unreachable")
					}
					return nil
				},
				Lag: func(context.Context) (metrics.ViewsLag, error) {
					return metrics.ViewsLag{Events: 3, Behind: 90 * time.Second, Done: 0.25}, nil
				}})
			families, err := m.Registry.Gather()
			if err != nil {
				t.Fatal(err)
			}
			// (By index, not by type: the test does not import
			// client_model.)
			got := map[string]int{}
			for i, f := range families {
				got[f.GetName()] = i
			}
			for name, want := range map[string]bool{
				"usersync_views_behind_events":    tc.dense,
				"usersync_projection_lag_events":  tc.dense,
				"usersync_views_behind_seconds":   true,
				"usersync_views_done_ratio":       true,
				"usersync_views_caught_up":        true,
				"usersync_projection_lag_seconds": true,
				"usersync_store_up":               true,
			} {
				if _, ok := got[name]; ok != want {
					t.Errorf("%s exported: %v, want %v", name, ok, want)
				}
			}
			value := func(name string) float64 { return families[got[name]].GetMetric()[0].GetGauge().GetValue() }
			if v := value("usersync_views_behind_seconds"); v != 90 {
				t.Errorf("usersync_views_behind_seconds = %v, want 90", v)
			}
			if v := value("usersync_views_caught_up"); v != 0 {
				t.Errorf("usersync_views_caught_up = %v, want 0", v)
			}
			up := families[got["usersync_store_up"]].GetMetric()[0]
			wantUp := 1.0
			if tc.down {
				wantUp = 0
			}
			if up.GetLabel()[0].GetValue() != tc.kind || up.GetGauge().GetValue() != wantUp {
				t.Errorf("usersync_store_up = %v %v, want kind %s, %v", up.GetLabel(), up.GetGauge().GetValue(), tc.kind, wantUp)
			}
		})
	}
}

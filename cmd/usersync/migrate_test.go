package main

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/memory"
	"github.com/usersync/usersync/projections"
)

// gappedStore is a test adapter over the memory store whose positions have
// gaps (each inner position p is 10p+7), as EventStoreDB's $all positions
// do: migrate must not assume that the target's positions are the source's.
type gappedStore struct{ *memory.Store }

func outer(p uint64) uint64 { return p*10 + 7 }

func inner(after uint64) uint64 {
	if after < 7 {
		return 0
	}
	return (after - 7) / 10
}

func gapped(recs []domain.RecordedEvent, err error) ([]domain.RecordedEvent, error) {
	for i := range recs {
		recs[i].Position = outer(recs[i].Position)
	}
	return recs, err
}

func (g gappedStore) Append(ctx context.Context, stream string, exp domain.ExpectedVersion, evs ...domain.NewEvent) (domain.AppendResult, error) {
	res, err := g.Store.Append(ctx, stream, exp, evs...)
	res.Position = outer(res.Position)
	return res, err
}
func (g gappedStore) ReadStream(ctx context.Context, stream string) ([]domain.RecordedEvent, error) {
	return gapped(g.Store.ReadStream(ctx, stream))
}
func (g gappedStore) ReadStreamFrom(ctx context.Context, stream string, after uint64) ([]domain.RecordedEvent, error) {
	return gapped(g.Store.ReadStreamFrom(ctx, stream, after))
}
func (g gappedStore) ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error) {
	return gapped(g.Store.ReadAll(ctx, inner(after), limit))
}
func (g gappedStore) Head(ctx context.Context) (uint64, error) {
	h, err := g.Store.Head(ctx)
	if h == 0 {
		return 0, err
	}
	return outer(h), err
}
func (g gappedStore) Subscribe(ctx context.Context, after uint64) *eventstore.Subscription {
	return eventstore.Follow(ctx, g, after)
}

// seedSource fills an embedded store with interleaved streams: runs of one
// stream, single events, a long stream crossing the copy's read batch.
func seedSource(t *testing.T, dir string) *eventstore.SQLite {
	t.Helper()
	ctx := context.Background()
	src, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	for i := range 300 {
		stream := fmt.Sprintf("contact-%d", i%17)
		n := 1 + i%3
		evs := make([]domain.NewEvent, n)
		for k := range evs {
			evs[k] = domain.NewEvent{Type: "E", Data: fmt.Appendf(nil, `{"i":%d,"k":%d}`, i, k), Metadata: []byte(`{"schema":1}`)}
		}
		if _, err := src.Append(ctx, stream, domain.AnyVersion(), evs...); err != nil {
			t.Fatal(err)
		}
	}
	long := make([]domain.NewEvent, migrateBatch+300)
	for k := range long {
		long[k] = domain.NewEvent{Type: "L", Data: fmt.Appendf(nil, `{"k":%d}`, k)}
	}
	if _, err := src.Append(ctx, "webhook-long", domain.NoStream(), long...); err != nil {
		t.Fatal(err)
	}
	return src
}

func allEvents(t *testing.T, s eventstore.Store) []domain.RecordedEvent {
	t.Helper()
	var out []domain.RecordedEvent
	var after uint64
	for range 1000 {
		recs, err := s.ReadAll(context.Background(), after, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if len(recs) == 0 {
			return out
		}
		out = append(out, recs...)
		after = recs[len(recs)-1].Position
	}
	t.Fatal("ReadAll did not end")
	return nil
}

// sameLog checks that dst holds src's events in the same order at the same
// stream versions (positions may differ).
func sameLog(t *testing.T, src, dst eventstore.Store) {
	t.Helper()
	a, b := allEvents(t, src), allEvents(t, dst)
	if len(a) != len(b) {
		t.Fatalf("source has %d events, target %d", len(a), len(b))
	}
	for i := range a {
		if !sameEvent(a[i], b[i]) {
			t.Fatalf("event %d: source %s v%d %s, target %s v%d %s", i, a[i].Stream, a[i].Version, a[i].Data, b[i].Stream, b[i].Version, b[i].Data)
		}
	}
}

func TestMigrate_CopiesInOrderAndResumes(t *testing.T) {
	ctx := context.Background()
	src := seedSource(t, t.TempDir())
	head, _ := src.Head(ctx)

	t.Run("into an empty store, then again", func(t *testing.T) {
		dst := gappedStore{memory.New()}
		var reports int
		sum, err := migrateLog(ctx, src, dst, func(p migrateProgress) {
			reports++
			if p.Head != head || p.Position > head {
				t.Errorf("progress %+v, head %d", p, head)
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if sum.Copied != head || sum.Present != 0 || sum.ResumedAfter != 0 || sum.DifferentStreams != 0 || sum.Events != int(head) || sum.Streams != 18 || reports < 2 {
			t.Fatalf("summary %+v after %d reports; want %d copied over 18 streams", sum, reports, head)
		}
		sameLog(t, src, dst)

		// A second run copies nothing and finds nothing different.
		sum, err = migrateLog(ctx, src, dst, nil)
		if err != nil || sum.Copied != 0 || sum.ResumedAfter != head || sum.DifferentStreams != 0 {
			t.Fatalf("second run: %+v, %v", sum, err)
		}
		sameLog(t, src, dst)
	})

	t.Run("after a run killed half way", func(t *testing.T) {
		dst := gappedStore{memory.New()}
		// What a killed run leaves: the first events, in order, each run whole.
		recs := allEvents(t, src)[:200]
		for i := 0; i < len(recs); {
			j := i + 1
			for j < len(recs) && recs[j].Stream == recs[i].Stream && recs[j].Version == recs[j-1].Version+1 {
				j++
			}
			if _, err := copyRun(ctx, dst, recs[i:j]); err != nil {
				t.Fatal(err)
			}
			i = j
		}
		sum, err := migrateLog(ctx, src, dst, nil)
		if err != nil {
			t.Fatal(err)
		}
		if sum.ResumedAfter != recs[len(recs)-1].Position || sum.Copied != head-200 || sum.DifferentStreams != 0 {
			t.Fatalf("summary %+v; want resumed after %d with %d copied", sum, recs[len(recs)-1].Position, head-200)
		}
		sameLog(t, src, dst)
	})

	t.Run("a run the target already holds is checked, not written again", func(t *testing.T) {
		dst := gappedStore{memory.New()}
		recs, _ := src.ReadStream(ctx, "contact-3")
		if _, err := copyRun(ctx, dst, recs[:5]); err != nil {
			t.Fatal(err)
		}
		copied, err := copyRun(ctx, dst, recs[2:5])
		if err != nil || copied {
			t.Fatalf("copy of held events: copied %v, %v", copied, err)
		}
		if n, _ := dst.ReadStream(ctx, "contact-3"); len(n) != 5 {
			t.Fatalf("target holds %d events, want 5", len(n))
		}
	})

	t.Run("a target with other events is refused, naming the event", func(t *testing.T) {
		dst := gappedStore{memory.New()}
		if _, err := dst.Append(ctx, "contact-0", domain.NoStream(), domain.NewEvent{Type: "Other", Data: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		_, err := migrateLog(ctx, src, dst, nil)
		if err == nil || !strings.Contains(err.Error(), "contact-0 version 1") || !strings.Contains(err.Error(), "empty store") {
			t.Fatalf("err = %v", err)
		}
	})

	t.Run("a target that differs in the middle is refused", func(t *testing.T) {
		dst := gappedStore{memory.New()}
		recs, _ := src.ReadStream(ctx, "contact-5")
		other := recs[0]
		other.Data = []byte(`{"other":true}`)
		if _, err := copyRun(ctx, dst, []domain.RecordedEvent{other}); err != nil {
			t.Fatal(err)
		}
		_, err := copyRun(ctx, dst, recs[:2])
		if err == nil || errors.Is(err, domain.ErrConcurrency) || !strings.Contains(err.Error(), "contact-5 version 1") {
			t.Fatalf("err = %v", err)
		}
	})
}

// The views' checkpoints and parked events move to the target's positions
// of the same events, and the views then follow the new store.
func TestMigrate_MovesTheViewsCheckpoints(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	src := seedSource(t, dir)
	dst := gappedStore{memory.New()}
	if _, err := migrateLog(ctx, src, dst, nil); err != nil {
		t.Fatal(err)
	}
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer views.Close()
	if err := views.SaveCheckpoint(ctx, "password-returns", 42); err != nil {
		t.Fatal(err)
	}
	at42, _ := src.ReadAll(ctx, 41, 1)
	if err := views.Park(ctx, domain.ParkedEvent{Handler: "welcome-mail", Position: 42, Stream: at42[0].Stream, Version: at42[0].Version, Type: at42[0].Type, Error: "x", ParkedAt: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	if err := moveViews(ctx, views, "esdb", src, dst); err != nil {
		t.Fatal(err)
	}
	if pos, _ := views.Checkpoint(ctx, "password-returns"); pos != outer(42) {
		t.Errorf("checkpoint moved to %d, want %d", pos, outer(42))
	}
	if parked, _ := views.Parked(ctx, ""); len(parked) != 1 || parked[0].Position != outer(42) {
		t.Errorf("parked after the move: %+v", parked)
	}
	if err := views.FollowStore(ctx, "esdb"); err != nil {
		t.Errorf("moved views: %v", err)
	}
}

func TestMigrateCmd_BadFlags(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no target", []string{"--from", dir}, 2, "--to is missing"},
		{"no source directory", []string{"--from", filepath.Join(dir, "nope"), "--to", "esdb://127.0.0.1:1?tls=false"}, 1, "--from " + filepath.Join(dir, "nope") + " does not exist"},
		{"not a data directory", []string{"--from", dir, "--to", "esdb://127.0.0.1:1?tls=false"}, 1, "no events.db"},
		{"bad progress", []string{"--from", dir, "--to", "esdb://x", "--progress", "sometimes"}, 2, "--progress must be auto, on or off"},
		{"stray argument", []string{"--from", dir, "--to", "esdb://x", "extra"}, 2, `unexpected argument "extra"`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			code := run(context.Background(), append([]string{"migrate"}, tc.args...), &stdout, &stderr)
			if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr.String(), tc.code, tc.want)
			}
		})
	}
}

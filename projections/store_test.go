package projections_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/projections"
)

// Views know which kind of store their positions belong to: fresh views
// take the kind they are given, used ones refuse another kind, and
// MoveToStore moves every checkpoint and parked event and keeps the kind
// across a rebuild.
func TestViews_FollowStoreAndMoveToStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "views.db")

	// Given fresh views: they follow the file store until told otherwise,
	// and take any kind while they hold no position.
	v, err := projections.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	if kind, err := v.StoreKind(ctx); err != nil || kind != projections.StoreFile {
		t.Fatalf("fresh views: kind %q, %v; want %q", kind, err, projections.StoreFile)
	}
	if err := v.FollowStore(ctx, "esdb"); err != nil {
		t.Fatalf("fresh views refused esdb: %v", err)
	}
	if err := v.FollowStore(ctx, projections.StoreFile); err != nil {
		t.Fatalf("fresh views refused file: %v", err)
	}

	// When they hold positions, another kind is refused.
	if err := v.SaveCheckpoint(ctx, "password-returns", 7); err != nil {
		t.Fatal(err)
	}
	if err := v.Park(ctx, domain.ParkedEvent{Handler: "welcome-mail", Position: 5, Stream: "contact-1", Version: 2, Type: "UserCreated", Error: "boom", ParkedAt: time.Unix(1, 0)}); err != nil {
		t.Fatal(err)
	}
	if err := v.FollowStore(ctx, "esdb"); !errors.Is(err, projections.ErrOtherStore) {
		t.Fatalf("used views followed another store: %v", err)
	}

	// When they are moved, every position goes through move and the kind changes.
	moved := map[uint64]uint64{7: 7000, 5: 5000}
	err = v.MoveToStore(ctx, "esdb", func(_ context.Context, pos uint64) (uint64, error) {
		to, ok := moved[pos]
		if !ok {
			return 0, errors.New("unexpected position")
		}
		return to, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if pos, _ := v.Checkpoint(ctx, "password-returns"); pos != 7000 {
		t.Errorf("checkpoint after move: %d, want 7000", pos)
	}
	parked, err := v.Parked(ctx, "")
	if err != nil || len(parked) != 1 || parked[0].Position != 5000 {
		t.Errorf("parked after move: %+v, %v", parked, err)
	}
	if err := v.FollowStore(ctx, "esdb"); err != nil {
		t.Errorf("moved views refuse their new store: %v", err)
	}
	if err := v.FollowStore(ctx, projections.StoreFile); !errors.Is(err, projections.ErrOtherStore) {
		t.Errorf("moved views follow the file store again: %v", err)
	}

	// A failing move changes nothing.
	err = v.MoveToStore(ctx, "other", func(context.Context, uint64) (uint64, error) { return 0, errors.New("not there") })
	if err == nil {
		t.Fatal("a failing move succeeded")
	}
	if kind, _ := v.StoreKind(ctx); kind != "esdb" {
		t.Errorf("kind after a failed move: %q", kind)
	}
	if pos, _ := v.Checkpoint(ctx, "password-returns"); pos != 7000 {
		t.Errorf("checkpoint after a failed move: %d", pos)
	}
	if err := v.Close(); err != nil {
		t.Fatal(err)
	}

	// The kind survives a reopen.
	v, err = projections.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if kind, _ := v.StoreKind(ctx); kind != "esdb" {
		t.Errorf("kind after reopen: %q", kind)
	}
}

// A rebuild keeps the kind of store the views follow.
func TestRebuild_KeepsTheStoreKind(t *testing.T) {
	ctx := context.Background()
	e := start(t, t.TempDir())
	if err := e.views.FollowStore(ctx, "esdb"); err != nil {
		t.Fatal(err)
	}
	e.story()
	e.caughtUp()
	if _, err := e.views.Rebuild(ctx, e.store, nil); err != nil {
		t.Fatal(err)
	}
	if kind, err := e.views.StoreKind(ctx); err != nil || kind != "esdb" {
		t.Fatalf("kind after rebuild: %q, %v", kind, err)
	}
}

// TestViews_MoveToStore_NewPositionIsAnotherParkedEventsOld: one handler's
// parked events at old positions a < b where the new position of a is b
// (the new log's positions are larger): every one is moved, none collides.
func TestViews_MoveToStore_NewPositionIsAnotherParkedEventsOld(t *testing.T) {
	ctx := context.Background()
	v, err := projections.Open(ctx, filepath.Join(t.TempDir(), "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	for _, pos := range []uint64{3, 600} {
		if err := v.Park(ctx, domain.ParkedEvent{Handler: "welcome-mail", Position: pos, Stream: "contact-1", Version: pos, Type: "UserCreated", Error: "boom", ParkedAt: time.Unix(1, 0)}); err != nil {
			t.Fatal(err)
		}
	}
	moved := map[uint64]uint64{3: 600, 600: 90000}
	if err := v.MoveToStore(ctx, "esdb", func(_ context.Context, pos uint64) (uint64, error) { return moved[pos], nil }); err != nil {
		t.Fatalf("move: %v", err)
	}
	parked, err := v.Parked(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	got := map[uint64]uint64{} // version → position
	for _, p := range parked {
		got[p.Version] = p.Position
	}
	if len(parked) != 2 || got[3] != 600 || got[600] != 90000 {
		t.Fatalf("parked after the move: %+v, want version 3 at 600 and version 600 at 90000", parked)
	}
}

package projections

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/usersync/usersync/domain"
)

// fixedHead is a log that only has a head.
type fixedHead uint64

func (h fixedHead) Head(context.Context) (uint64, error) { return uint64(h), nil }
func (fixedHead) ReadAll(context.Context, uint64, int) ([]domain.RecordedEvent, error) {
	return nil, nil
}

// A process manager of a running server that handled events appended after
// the views were swapped in is beyond the rebuilt position but not beyond
// the log's end: it stays where it is.
func TestMoveCheckpointsBack_JudgesByTheLogsEnd(t *testing.T) {
	ctx := context.Background()
	views, err := Open(ctx, filepath.Join(t.TempDir(), "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer views.Close()
	for name, pos := range map[string]uint64{"at_rebuild": 4, "after_swap": 8, "stale": 12} {
		if err := views.SaveCheckpoint(ctx, name, pos); err != nil {
			t.Fatal(err)
		}
	}
	moved, err := moveCheckpointsBack(ctx, views, fixedHead(8), 4)
	if err != nil {
		t.Fatal(err)
	}
	if want := []MovedCheckpoint{{Name: "stale", From: 12, To: 4}}; !reflect.DeepEqual(moved, want) {
		t.Fatalf("moved %+v, want %+v", moved, want)
	}
	for name, want := range map[string]uint64{"at_rebuild": 4, "after_swap": 8, "stale": 4} {
		if got, err := views.Checkpoint(ctx, name); err != nil || got != want {
			t.Errorf("checkpoint of %s is %d (%v), want %d", name, got, err, want)
		}
	}
}

package projections_test

import (
	"context"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// Checkpoints of process managers, as views.db keeps them: the rebuild
// knows them by being no view's.
const (
	passwordReturn = "password_return"
	welcomeEmail   = "welcome_email"
)

func TestRebuild_MovesCheckpointsBeyondTheLogsEndBack(t *testing.T) {
	tests := []struct {
		name   string
		events int
		// saved are checkpoints stored before the rebuild, by name.
		saved     map[string]uint64
		wantMoved []projections.MovedCheckpoint
		// want are the checkpoints after the rebuild.
		want map[string]uint64
	}{
		{
			name: "none beyond the end", events: 3,
			saved: map[string]uint64{passwordReturn: 2, welcomeEmail: 3},
			want:  map[string]uint64{passwordReturn: 2, welcomeEmail: 3},
		},
		{
			// Any name: the rebuild does not know the process managers.
			name: "those beyond the end go back, by name", events: 3,
			saved: map[string]uint64{welcomeEmail: 40, passwordReturn: 2, "another_process": 4},
			wantMoved: []projections.MovedCheckpoint{
				{Name: "another_process", From: 4, To: 3},
				{Name: welcomeEmail, From: 40, To: 3},
			},
			want: map[string]uint64{welcomeEmail: 3, passwordReturn: 2, "another_process": 3},
		},
		{
			name: "a view's checkpoint is rebuilt, not moved", events: 2,
			saved: map[string]uint64{"users": 50},
			want:  map[string]uint64{"users": 2},
		},
		{
			name: "an empty log", events: 0,
			saved:     map[string]uint64{welcomeEmail: 5},
			wantMoved: []projections.MovedCheckpoint{{Name: welcomeEmail, From: 5, To: 0}},
			want:      map[string]uint64{welcomeEmail: 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer store.Close()
			for i := range tt.events {
				id := domain.ContactID(i + 1)
				at := time.Date(2026, 1, 2, 10, i, 0, 0, time.UTC)
				received := domain.WebhookReceived{WebhookID: "w" + id.String(), Action: "add", ContactID: id.String(),
					Params: map[string]string{}, Method: "POST", Source: "127.0.0.1", ReceivedAt: at}
				raw, err := domain.Encode(domain.Envelope{Event: received, OccurredAt: at, WebhookID: received.WebhookID})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := store.Append(ctx, id.Stream(), domain.NoStream(), raw); err != nil {
					t.Fatal(err)
				}
			}
			views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
			if err != nil {
				t.Fatal(err)
			}
			defer views.Close()
			for name, pos := range tt.saved {
				if err := views.SaveCheckpoint(ctx, name, pos); err != nil {
					t.Fatal(err)
				}
			}
			var reported int
			res, err := projections.Rebuild(ctx, views, store, func(projections.Progress) { reported++ })
			if err != nil {
				t.Fatal(err)
			}
			if res.Stats.Position != uint64(tt.events) || res.Stats.Events != uint64(tt.events) {
				t.Errorf("rebuilt to position %d from %d events, want %d", res.Stats.Position, res.Stats.Events, tt.events)
			}
			if reported == 0 {
				t.Error("progress was never reported")
			}
			if !reflect.DeepEqual(res.Moved, tt.wantMoved) {
				t.Errorf("moved %+v, want %+v", res.Moved, tt.wantMoved)
			}
			for name, want := range tt.want {
				got, err := views.Checkpoint(ctx, name)
				if err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("checkpoint of %s is %d, want %d", name, got, want)
				}
			}
			for _, name := range views.Names() {
				if pos, err := views.Position(name); err != nil || pos != uint64(tt.events) {
					t.Errorf("view %s at %d (%v), want %d", name, pos, err, tt.events)
				}
			}
		})
	}
}

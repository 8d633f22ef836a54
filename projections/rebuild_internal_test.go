package projections

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// A rebuild turns automatic checkpoints off on the connection it writes
// with; the connection goes back to the pool with them on again, or every
// later flush on it would let the log grow without end.
func TestRebuild_PutsBackAutomaticCheckpoints(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	raw, err := domain.Encode(domain.Envelope{Event: domain.UserCreated{UserID: "u1", ContactID: 1, Login: "a@example.com", Email: "a@example.com", Role: "subscriber"},
		OccurredAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, domain.ContactID(1).Stream(), domain.NoStream(), raw); err != nil {
		t.Fatal(err)
	}
	views, err := Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer views.Close()
	// One connection: the rebuild's is then the one every later statement gets.
	views.db.SetMaxOpenConns(1)
	var before int
	if err := views.db.QueryRowContext(ctx, "PRAGMA wal_autocheckpoint").Scan(&before); err != nil {
		t.Fatal(err)
	}
	if before == 0 {
		t.Fatal("automatic checkpoints are off before the rebuild: the test proves nothing")
	}
	if _, err := views.Rebuild(ctx, store, nil); err != nil {
		t.Fatal(err)
	}
	var after int
	if err := views.db.QueryRowContext(ctx, "PRAGMA wal_autocheckpoint").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if after != before {
		t.Fatalf("after a rebuild the connection checkpoints every %d pages, want %d as before", after, before)
	}
}

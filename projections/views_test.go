package projections_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// v1Schema is the views file of schema version 1: every view in JSON
// buckets.
const v1Schema = `
CREATE TABLE checkpoints (name TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE view_buckets (view TEXT NOT NULL, bucket INTEGER NOT NULL, rows BLOB NOT NULL,
	PRIMARY KEY (view, bucket)) WITHOUT ROWID;
CREATE TABLE parked (
	handler TEXT NOT NULL, position INTEGER NOT NULL, stream TEXT NOT NULL, version INTEGER NOT NULL,
	type TEXT NOT NULL, error TEXT NOT NULL, parked_at INTEGER NOT NULL,
	PRIMARY KEY (handler, position)) WITHOUT ROWID;
INSERT INTO view_buckets VALUES ('users', 1, '[{"contact_id":1,"user_id":"old"}]');
INSERT INTO checkpoints VALUES ('users', 40), ('tags', 40), ('password_returns', 40), ('webhooks', 40), ('password_return', 3), ('welcome_email', 2);
INSERT INTO parked VALUES ('welcome_email', 2, 'contact-1', 2, 'UserCreated', 'smtp down', 1);
PRAGMA user_version = 1;
`

func TestOpen_SchemaVersion1IsRebuiltFromTheLogKeepingProcessCheckpoints(t *testing.T) {
	// Given a data directory whose views.db has the bucket format of
	// schema version 1, and a log with the story
	dir := t.TempDir()
	e := start(t, dir)
	e.story()
	e.caughtUp()
	want := e.users()
	e.stop()
	path := filepath.Join(dir, "views.db")
	if err := removeAll(path); err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(v1Schema); err != nil {
		t.Fatal(err)
	}
	db.Close()

	// When usersync opens it and the pipeline runs
	e = start(t, dir)
	e.caughtUp()

	// Then the views are built again from the log, and the process
	// managers' checkpoints and parked events are as they were.
	if got := e.users(); !reflect.DeepEqual(got, want) {
		t.Fatalf("users after the upgrade:\n%+v\nwant\n%+v", got, want)
	}
	ctx := context.Background()
	for name, wantPos := range map[string]uint64{"password_return": 3, "welcome_email": 2} {
		if pos, err := e.views.Checkpoint(ctx, name); err != nil || pos != wantPos {
			t.Errorf("checkpoint of %s: %d (%v), want %d", name, pos, err, wantPos)
		}
	}
	parked, err := e.views.Parked(ctx, "welcome_email")
	if err != nil || len(parked) != 1 || parked[0].Error != "smtp down" {
		t.Fatalf("parked: %+v %v", parked, err)
	}
	e.stop()
	db, err = sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var version, buckets int
	if err := db.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != 4 {
		t.Fatalf("user_version %d (%v), want 4", version, err)
	}
	if err := db.QueryRow("SELECT COUNT(*) FROM sqlite_master WHERE name = 'view_buckets'").Scan(&buckets); err != nil || buckets != 0 {
		t.Fatalf("view_buckets still there (%d, %v)", buckets, err)
	}
}

func TestOpen_SchemaVersion2GetsTheWelcomeMailViewBuiltFromTheLog(t *testing.T) {
	// Given a views file of schema version 2 (no welcome-mail view) that
	// has applied the story
	dir := t.TempDir()
	e := start(t, dir)
	e.story()
	e.caughtUp()
	want, err := e.views.Welcome.List(context.Background(), "")
	e.check(err)
	wantUsers := e.users()
	e.stop()
	path := filepath.Join(dir, "views.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"DROP TABLE welcome_mails", "DELETE FROM checkpoints WHERE name = 'welcome_mails'", "PRAGMA user_version = 2"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	// When usersync opens it and the pipeline runs
	e = start(t, dir)
	e.caughtUp()

	// Then the welcome-mail view is built from the log, the others are
	// as they were, and the file is of version 4
	got, err := e.views.Welcome.List(context.Background(), "")
	e.check(err)
	if len(want) != 3 || !reflect.DeepEqual(got, want) {
		t.Fatalf("welcome mails after the upgrade:\n%+v\nwant\n%+v", got, want)
	}
	if !reflect.DeepEqual(e.users(), wantUsers) {
		t.Fatal("users changed by the upgrade")
	}
	e.stop()
	db, err = sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var version int
	if err := db.QueryRow("PRAGMA user_version").Scan(&version); err != nil || version != 4 {
		t.Fatalf("user_version %d (%v), want 4", version, err)
	}
}

func removeAll(path string) error {
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		if err := removeIfThere(p); err != nil {
			return err
		}
	}
	return nil
}

// recorded appends envs to stream and returns them as the log has them.
func recorded(t *testing.T, store *eventstore.SQLite, stream string, envs ...domain.Envelope) []domain.RecordedEvent {
	t.Helper()
	ctx := context.Background()
	raw, err := domain.EncodeAll(envs)
	if err != nil {
		t.Fatal(err)
	}
	res, err := store.Append(ctx, stream, domain.AnyVersion(), raw...)
	if err != nil {
		t.Fatal(err)
	}
	recs, err := store.ReadAll(ctx, res.Position-uint64(len(envs)), len(envs))
	if err != nil {
		t.Fatal(err)
	}
	return recs
}

func TestHandleBatch_AppliesAfterEachCheckpointParksWhatItCannotRead(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer views.Close()
	c := domain.ContactID(1)
	at := t0
	recs := recorded(t, store, c.Stream(),
		domain.Envelope{Event: webhook("w1", "add", "1"), OccurredAt: at},
		domain.Envelope{Event: domain.UserCreated{UserID: "u1", ContactID: c, Login: "a@example.com", Email: "a@example.com", Role: "subscriber"}, OccurredAt: at},
		domain.Envelope{Event: domain.TagsUpdated{Tags: []domain.Tag{vip}, Added: []domain.Tag{vip}}, OccurredAt: at},
		domain.Envelope{Event: domain.WebhookProcessed{WebhookID: "w1", Action: "add"}, OccurredAt: at})
	res, err := store.Append(ctx, c.Stream(), domain.AnyVersion(),
		domain.NewEvent{Type: "UserTeleported", Data: []byte(`{}`), Metadata: []byte(`{"schema":1}`)})
	if err != nil {
		t.Fatal(err)
	}
	unknown, err := store.ReadAll(ctx, res.Position-1, 1)
	if err != nil {
		t.Fatal(err)
	}
	more := recorded(t, store, c.Stream(), domain.Envelope{Event: domain.RoleChanged{Old: "subscriber", New: "customer"}, OccurredAt: at})

	// Given the tags view alone is ahead (it applied the first three
	// events on its own)
	if _, err := views.HandleOnly(ctx, "tags", recs[:3]...); err != nil {
		t.Fatal(err)
	}
	// When one batch brings every event
	all := append(append(append([]domain.RecordedEvent{}, recs...), unknown...), more...)
	parked, err := views.HandleBatch(ctx, all)
	if err != nil {
		t.Fatal(err)
	}
	// Then each view applied what it had not, the unreadable event is
	// handed back once per view, and every checkpoint is at the end.
	if len(parked) != len(views.Names()) || parked[0].Position != unknown[0].Position || parked[0].Handler != "users" {
		t.Fatalf("parked %+v", parked)
	}
	// and is already listed as parked, in the transaction that moved the
	// checkpoints past it: no crash can leave it skipped and unlisted.
	if listed, err := views.Parked(ctx, ""); err != nil || len(listed) != len(views.Names()) {
		t.Fatalf("listed as parked by HandleBatch itself: %+v, %v", listed, err)
	}
	last := all[len(all)-1].Position
	for _, name := range views.Names() {
		if pos, _ := views.Position(name); pos != last {
			t.Errorf("%s at %d, want %d", name, pos, last)
		}
	}
	if low, _ := views.Batch().Position(ctx); low != last {
		t.Errorf("lowest checkpoint %d, want %d", low, last)
	}
	u, ok, err := views.Users.Get(ctx, c)
	if err != nil || !ok || u.Role != "customer" || !reflect.DeepEqual(u.Tags, []domain.Tag{vip}) {
		t.Fatalf("user %+v %v %v", u, ok, err)
	}
	if tag, _, _ := views.Tags.Get(ctx, vip.ID); tag.Users != 1 {
		t.Fatalf("VIP has %d users, want 1 (the tags view applied its events once)", tag.Users)
	}
	if byEmail, ok, _ := views.Users.ByEmail(ctx, "a@example.com"); !ok || byEmail.ContactID != c {
		t.Fatalf("by email: %+v %v", byEmail, ok)
	}
	if n, _ := views.Users.Count(ctx); n != 1 {
		t.Fatalf("count %d", n)
	}
	// A batch seen again changes nothing.
	if parked, err := views.HandleBatch(ctx, all); err != nil || len(parked) != 0 {
		t.Fatalf("again: %+v %v", parked, err)
	}
	if tag, _, _ := views.Tags.Get(ctx, vip.ID); tag.Users != 1 {
		t.Fatalf("VIP has %d users after the batch came again", tag.Users)
	}
}

func TestReceipts_PastTheRetentionAreAnsweredFromTheLog(t *testing.T) {
	// Given the story, whose webhooks were received long ago (t0), with a
	// retention of 30 days
	dir := t.TempDir()
	keep := start(t, t.TempDir())
	keep.story()
	keep.caughtUp()
	wantAll := keep.receipts()
	e := start(t, dir, projections.WithReceiptRetention(30*24*time.Hour))
	e.story()
	e.caughtUp()
	ctx := context.Background()

	// Then the view keeps only the open receipt
	check := func(when string) {
		t.Helper()
		if got := e.receipts(); len(got) != 1 || got[0].ID != "w8" || got[0].Status != projections.WebhookQueued {
			t.Fatalf("%s: receipts kept %+v, want w8 (open) alone", when, got)
		}
		// and every other is folded from the log as the view had it.
		for _, want := range wantAll {
			stream, version, ok, err := e.views.Webhooks.Locate(ctx, want.ID)
			if err != nil || !ok {
				t.Fatalf("%s: locate %s: %v %v", when, want.ID, ok, err)
			}
			recs, err := e.store.ReadStream(ctx, stream)
			if err != nil {
				t.Fatal(err)
			}
			got, ok, err := projections.ReceiptFromLog(want.ID, version, recs)
			if err != nil || !ok || !reflect.DeepEqual(got, want) {
				t.Errorf("%s: %s from the log: %+v (%v, %v), want %+v", when, want.ID, got, ok, err, want)
			}
		}
	}
	check("live")
	// And a rebuild skips them too.
	stats, err := e.views.Rebuild(ctx, e.store, nil)
	if err != nil {
		t.Fatal(err)
	}
	if stats.Receipts != 1 {
		t.Fatalf("rebuild kept %d receipts, want 1", stats.Receipts)
	}
	check("rebuilt")
	// And the open one is never pruned, closed ones are once processed.
	e.append(domain.ContactID(5).Stream(), "w8", domain.WebhookProcessed{WebhookID: "w8", Action: "update"})
	e.caughtUp()
	if n, err := e.views.Prune(ctx, 10); err != nil || len(e.receipts()) != 0 {
		t.Fatalf("after w8 closed: pruned %d (%v), kept %+v", n, err, e.receipts())
	}
}

func removeIfThere(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

func TestOpen_SchemaVersion3CountsTheUsersPerRole(t *testing.T) {
	// Given a views file of schema version 3 (no counts per role) that has
	// applied the story
	dir := t.TempDir()
	e := start(t, dir)
	e.story()
	e.caughtUp()
	e.stop()
	path := filepath.Join(dir, "views.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{"DELETE FROM view_counts WHERE name LIKE 'role:%'", "PRAGMA user_version = 3"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	db.Close()

	// When usersync opens it
	e = start(t, dir)
	defer e.stop()

	// Then each role's count is there, from the users view
	ctx := context.Background()
	for role, want := range map[domain.Role]int{"subscriber": 2, "customer": 1} {
		p, err := e.views.Users.Search(ctx, projections.UserQuery{Role: role, Limit: 10})
		if err != nil {
			t.Fatal(err)
		}
		if p.Total != want || len(p.Users) != want {
			t.Errorf("role %s: total %d, %d users, want %d", role, p.Total, len(p.Users), want)
		}
	}
}

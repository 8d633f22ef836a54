package projections_test

import (
	"context"
	"database/sql"
	"path/filepath"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

func TestVerify_EqualViews_ThenEachTamperedRowNamed(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	e.story()
	e.churn(3, 300, 20)
	e.caughtUp()
	ctx := context.Background()
	verify := func(opts projections.VerifyOptions) projections.VerifyResult {
		t.Helper()
		opts.Dir = t.TempDir()
		res, err := e.views.Verify(ctx, e.store, opts)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	// Given views that followed the log, when verified with or without a
	// retention (the live views keep the old receipts a rebuild leaves
	// out), then they equal the rebuild.
	for _, retention := range []time.Duration{0, time.Hour} {
		if res := verify(projections.VerifyOptions{Retention: retention}); len(res.Differences) != 0 || res.ViewsAt != res.Head || res.Stats.Events == 0 {
			t.Fatalf("retention %s: %+v", retention, res)
		}
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	users := strconv.Itoa(len(e.users()))
	tests := []struct {
		name, tamper, undo string
		want               projections.Difference
	}{
		{"column", "UPDATE users SET role = 'administrator' WHERE contact_id = 1", "UPDATE users SET role = 'subscriber' WHERE contact_id = 1",
			projections.Difference{Table: "users", Row: "contact_id=1", Column: "role", Live: "administrator", Rebuilt: "subscriber"}},
		{"row missing", "DELETE FROM user_tags WHERE tag_id = 9 AND contact_id = 1", "INSERT INTO user_tags(tag_id, contact_id) VALUES (9, 1)",
			projections.Difference{Table: "user_tags", Row: "tag_id=9,contact_id=1", Live: "(missing)", Rebuilt: "present"}},
		{"row extra", "INSERT INTO webhook_log(id, stream, version, received_at) VALUES ('ghost', 'contact-1', 99, 0)", "DELETE FROM webhook_log WHERE id = 'ghost'",
			projections.Difference{Table: "webhook_log", Row: "id=ghost", Live: "present", Rebuilt: "(missing)"}},
		{"count", "UPDATE view_counts SET n = -1 WHERE name = 'users'", "UPDATE view_counts SET n = " + users + " WHERE name = 'users'",
			projections.Difference{Table: "view_counts", Row: "name=users", Column: "n", Live: "-1", Rebuilt: users}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := db.Exec(tc.tamper); err != nil {
				t.Fatal(err)
			}
			res := verify(projections.VerifyOptions{})
			if _, err := db.Exec(tc.undo); err != nil {
				t.Fatal(err)
			}
			if len(res.Differences) != 1 || res.Differences[0] != tc.want {
				t.Fatalf("differences %+v, want %+v", res.Differences, tc.want)
			}
		})
	}
	// Given two tampered rows, when verified with a limit of 1, then one is listed.
	if _, err := db.Exec("UPDATE users SET login = 'x' WHERE contact_id IN (1, 3)"); err != nil {
		t.Fatal(err)
	}
	if res := verify(projections.VerifyOptions{Limit: 1}); len(res.Differences) != 1 {
		t.Fatalf("limit 1: %+v", res.Differences)
	}
	if res := verify(projections.VerifyOptions{}); len(res.Differences) != 2 {
		t.Fatalf("no limit: %+v", res.Differences)
	}
}

func TestUsersSearch_ByIDEmailLoginTagRole_Paged(t *testing.T) {
	e := start(t, t.TempDir())
	e.story()
	e.caughtUp()
	ctx := context.Background()
	ids := func(p projections.UserPage) []domain.ContactID {
		var out []domain.ContactID
		for _, u := range p.Users {
			out = append(out, u.ContactID)
		}
		return out
	}
	tests := []struct {
		name  string
		q     projections.UserQuery
		want  []domain.ContactID
		total int
		next  domain.ContactID
	}{
		{"all", projections.UserQuery{Limit: 10}, []domain.ContactID{1, 3, 5}, 3, 0},
		{"contact id", projections.UserQuery{Search: "3", Limit: 10}, []domain.ContactID{3}, 1, 0},
		{"login start", projections.UserQuery{Search: "bob", Limit: 10}, []domain.ContactID{3}, 1, 0},
		{"email start", projections.UserQuery{Search: "cy@", Limit: 10}, []domain.ContactID{5}, 1, 0},
		{"nobody", projections.UserQuery{Search: "zed", Limit: 10}, nil, 0, 0},
		{"tag", projections.UserQuery{Tag: gold.ID, Limit: 10}, []domain.ContactID{1}, 1, 0},
		{"role", projections.UserQuery{Role: "customer", Limit: 10}, []domain.ContactID{5}, 1, 0},
		// The role counts kept through a move (2 → 3) and a role change (5).
		{"role alone, kept count", projections.UserQuery{Role: "subscriber", Limit: 10}, []domain.ContactID{1, 3}, 2, 0},
		{"role alone, paged", projections.UserQuery{Role: "subscriber", Limit: 1}, []domain.ContactID{1}, 2, 1},
		{"role nobody has", projections.UserQuery{Role: "editor", Limit: 10}, nil, 0, 0},
		{"role and tag", projections.UserQuery{Role: "subscriber", Tag: trial.ID, Limit: 10}, []domain.ContactID{1}, 1, 0},
		{"first page", projections.UserQuery{Limit: 1}, []domain.ContactID{1}, 3, 1},
		{"second page", projections.UserQuery{After: 1, Limit: 1}, []domain.ContactID{3}, 3, 3},
		{"last page", projections.UserQuery{After: 3, Limit: 1}, []domain.ContactID{5}, 3, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := e.views.Users.Search(ctx, tc.q)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(ids(p), tc.want) || p.Total != tc.total || p.Next != tc.next {
				t.Fatalf("got %v total %d next %d, want %v total %d next %d", ids(p), p.Total, p.Next, tc.want, tc.total, tc.next)
			}
		})
	}
	if _, err := e.views.Users.Search(ctx, projections.UserQuery{}); err == nil {
		t.Fatal("limit 0 accepted")
	}
}

// Given views that stopped before the log's end, when verified, then the
// rebuild runs to the views' position: no difference, and the lag told.
func TestVerify_ViewsBehindTheLog_ComparedAtTheirPosition(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	e.story()
	e.caughtUp()
	e.stop()
	ctx := context.Background()
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
	raw, err := domain.EncodeAll([]domain.Envelope{{Event: domain.RoleChanged{Old: "subscriber", New: "customer"}, OccurredAt: t0}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, domain.ContactID(1).Stream(), domain.AnyVersion(), raw...); err != nil {
		t.Fatal(err)
	}
	res, err := views.Verify(ctx, store, projections.VerifyOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Differences) != 0 || res.ViewsAt+1 != res.Head || res.Stats.Position != res.ViewsAt {
		t.Fatalf("%+v", res)
	}
}

// Given a user whose role changed after its creation was applied in an
// earlier batch (its first role's count went to 0 in the live views, while
// a rebuild applies both in one batch), when verified, then the views equal
// the rebuild: a count of 0 has no row in either.
func TestVerify_RoleCountThatCameToZero(t *testing.T) {
	e := start(t, t.TempDir())
	c := domain.ContactID(7)
	e.append(c.Stream(), "w1", webhook("w1", "add", "7"),
		domain.UserCreated{UserID: "u7", ContactID: c, Login: "dee@example.com", Email: "dee@example.com", Role: "customer"},
		domain.WebhookProcessed{WebhookID: "w1", Action: "add", UserID: "u7"})
	e.caughtUp()
	e.append(c.Stream(), "w2", webhook("w2", "update", "7"),
		domain.RoleChanged{Old: "customer", New: "subscriber"},
		domain.WebhookProcessed{WebhookID: "w2", Action: "update", UserID: "u7"})
	e.caughtUp()
	res, err := e.views.Verify(context.Background(), e.store, projections.VerifyOptions{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Differences) != 0 {
		t.Fatalf("differences: %+v", res.Differences)
	}
}

package projections_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/pipeline"
	"github.com/usersync/usersync/projections"
)

var (
	vip   = domain.Tag{ID: 5, Name: "VIP"}
	trial = domain.Tag{ID: 7, Name: "Trial"}
	gold  = domain.Tag{ID: 9, Name: "Gold"}
	t0    = time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC)
)

type env struct {
	t     *testing.T
	dir   string
	store *eventstore.SQLite
	views *projections.Views
	pipe  *pipeline.Pipeline
	stop  func()
	clock time.Time
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// start opens the store and the views in dir and runs the pipeline that
// feeds the views.
func start(t *testing.T, dir string, opts ...projections.Option) *env {
	t.Helper()
	return startWith(t, dir, func(v *projections.Views, _ *eventstore.SQLite) projections.BatchConsumer { return v.Batch() }, opts...)
}

// startWith is start with the views fed as consumer makes them a consumer
// of the log.
func startWith(t *testing.T, dir string, consumer func(*projections.Views, *eventstore.SQLite) projections.BatchConsumer, opts ...projections.Option) *env {
	t.Helper()
	ctx := context.Background()
	store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	pipe, err := pipeline.New(pipeline.Config{Store: store, Parker: views, Log: quietLog(),
		Retry: domain.Backoff{Initial: time.Millisecond, Max: 2 * time.Millisecond}, MaxRetries: 2,
		Batch: []pipeline.BatchConsumer{consumer(views, store)}})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- pipe.Run(runCtx) }()
	select {
	case <-pipe.Running():
	case <-time.After(10 * time.Second):
		t.Fatal("pipeline did not start")
	}
	e := &env{t: t, dir: dir, store: store, views: views, pipe: pipe, clock: t0}
	stopped := false
	e.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("pipeline: %v", err)
		}
		views.Close()
		store.Close()
	}
	t.Cleanup(e.stop)
	return e
}

// append records events in a stream, one minute apart, caused by webhook wh.
func (e *env) append(stream, wh string, events ...domain.Event) {
	e.t.Helper()
	var envs []domain.Envelope
	for _, ev := range events {
		e.clock = e.clock.Add(time.Minute)
		envs = append(envs, domain.Envelope{Event: ev, OccurredAt: e.clock, WebhookID: wh})
	}
	raw, err := domain.EncodeAll(envs)
	if err != nil {
		e.t.Fatal(err)
	}
	if _, err := e.store.Append(context.Background(), stream, domain.AnyVersion(), raw...); err != nil {
		e.t.Fatal(err)
	}
}

// caughtUp waits (with a deadline) until every view applied the head.
func (e *env) caughtUp() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	head, err := e.store.Head(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.views.WaitAll(ctx, head); err != nil {
		e.t.Fatal(err)
	}
}

// The views' reads, failing the test on an error.
func (e *env) user(id domain.ContactID) (projections.User, bool) {
	u, ok, err := e.views.Users.Get(context.Background(), id)
	e.check(err)
	return u, ok
}

func (e *env) users() []projections.User {
	u, err := e.views.Users.All(context.Background())
	e.check(err)
	return u
}

func (e *env) userList(after domain.ContactID, limit int, tag uint64) ([]projections.User, bool) {
	u, more, err := e.views.Users.List(context.Background(), after, limit, tag)
	e.check(err)
	return u, more
}

func (e *env) tagList() []projections.Tag {
	t, err := e.views.Tags.List(context.Background())
	e.check(err)
	return t
}

func (e *env) tagUsers(id uint64) []domain.ContactID {
	c, err := e.views.Tags.Users(context.Background(), id)
	e.check(err)
	return c
}

func (e *env) password(id domain.ContactID) (projections.PasswordReturn, bool) {
	r, ok, err := e.views.Passwords.Get(context.Background(), id)
	e.check(err)
	return r, ok
}

func (e *env) passwords(status string) []projections.PasswordReturn {
	r, err := e.views.Passwords.List(context.Background(), status)
	e.check(err)
	return r
}

func (e *env) receipt(id string) (projections.Webhook, bool) {
	w, ok, err := e.views.Webhooks.Get(context.Background(), id)
	e.check(err)
	return w, ok
}

func (e *env) openReceipts() []projections.Webhook {
	w, err := e.views.Webhooks.Open(context.Background())
	e.check(err)
	return w
}

func (e *env) receipts() []projections.Webhook {
	w, err := e.views.Webhooks.All(context.Background())
	e.check(err)
	return w
}

func (e *env) check(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

func webhook(id, action, contact string) domain.WebhookReceived {
	return domain.WebhookReceived{WebhookID: id, Action: action, ContactID: contact, Params: map[string]string{}, Method: "POST", Source: "127.0.0.1", ReceivedAt: t0}
}

// story appends the life of a few contacts, covering every event the views read.
func (e *env) story() {
	c1, c2, c3, c4, c5 := domain.ContactID(1), domain.ContactID(2), domain.ContactID(3), domain.ContactID(4), domain.ContactID(5)
	e.append(c1.Stream(), "w1", webhook("w1", "add", "1"),
		domain.UserCreated{UserID: "u1", ContactID: c1, Login: "ann@example.com", Email: "ann@example.com", Role: "subscriber", PasswordHash: "$2a$x"},
		domain.TagsUpdated{Tags: []domain.Tag{vip, trial}, Added: []domain.Tag{vip, trial}},
		domain.MetaPulled{Changes: []domain.MetaChange{{Key: "first_name", New: "Ann"}, {Key: "last_name", New: "Lee"}}},
		domain.PasswordIssued{KeyID: "k1", Sealed: []byte("sealed"), Field: "7"},
		domain.WebhookProcessed{WebhookID: "w1", Action: "add", Message: "User created", UserID: "u1"})
	e.append(c2.Stream(), "w2", webhook("w2", "add", "2"),
		domain.UserCreated{UserID: "u2", ContactID: c2, Login: "bob@example.com", Email: "bob@example.com", Role: "subscriber"},
		domain.TagsUpdated{Tags: []domain.Tag{vip}, Added: []domain.Tag{vip}},
		domain.WebhookProcessed{WebhookID: "w2", Action: "add", UserID: "u2"})
	e.append(c1.Stream(), "w3", webhook("w3", "update_tags", "1"),
		domain.TagsUpdated{Tags: []domain.Tag{trial, gold}, Added: []domain.Tag{gold}, Removed: []domain.Tag{vip}},
		domain.WebhookProcessed{WebhookID: "w3", Action: "update_tags", UserID: "u1"})
	e.append(c1.Stream(), "", domain.PasswordReturnClaimed{KeyID: "k1", Field: "7", Attempt: 1, Until: t0.Add(time.Minute)},
		domain.PasswordReturnFailed{KeyID: "k1", Field: "7", Attempt: 1, Error: "503", NextAttemptAt: t0.Add(time.Hour)},
		domain.PasswordReturnClaimed{KeyID: "k1", Field: "7", Attempt: 2, Until: t0.Add(time.Hour + time.Minute)},
		domain.PasswordReturned{KeyID: "k1", Field: "7", Attempt: 2})
	// Contact 3 carries bob's address: his user moves to it.
	e.append(c3.Stream(), "w4", webhook("w4", "add", "3"),
		domain.UserLinked{UserID: "u2", ContactID: c3, FromContactID: c2, Login: "bob@example.com", Email: "bob@example.com", Role: "subscriber",
			Meta: map[string]string{}, Tags: []domain.Tag{{ID: 5, Name: "V.I.P."}}, CreatedAt: t0})
	e.append(c2.Stream(), "w4", domain.UserUnlinked{UserID: "u2", ToContactID: c3})
	e.append(c3.Stream(), "w4", domain.WebhookProcessed{WebhookID: "w4", Action: "add", UserID: "u2"})
	e.append(c4.Stream(), "w5", webhook("w5", "add", "4"),
		domain.WebhookRetrying{WebhookID: "w5", Attempt: 1, Error: "funnelkit unreachable", NextAttemptAt: t0},
		domain.WebhookFailed{WebhookID: "w5", Action: "add", Reason: "No email provided for imported user", Status: 500})
	e.append(domain.WebhookStream("w6"), "w6", webhook("w6", "update", ""), domain.WebhookIgnored{WebhookID: "w6", Action: "update", Reason: "Abort: Contact data not found"})
	e.append(c5.Stream(), "w7", webhook("w7", "add", "5"),
		domain.UserCreated{UserID: "u5", ContactID: c5, Login: "cy@example.com", Email: "cy@example.com", Role: "subscriber"},
		domain.PasswordIssued{KeyID: "k5", Sealed: []byte("sealed"), Field: "7"},
		domain.PasswordReplaced{OldKeyID: "k5", KeyID: "k5b", Sealed: []byte("sealed"), Field: "7", PasswordHash: "$2a$y"},
		domain.PasswordReturnClaimed{KeyID: "k5", Field: "7", Attempt: 1, Until: t0.Add(time.Minute)},
		domain.RoleChanged{Old: "subscriber", New: "customer"},
		domain.PasswordReturnClaimed{KeyID: "k5b", Field: "7", Attempt: 8, Until: t0.Add(time.Minute)},
		domain.PasswordReturnFailed{KeyID: "k5b", Field: "7", Attempt: 8, Error: "401 bad application password", GaveUp: true},
		domain.WebhookProcessed{WebhookID: "w7", Action: "add", UserID: "u5"})
	e.append(c5.Stream(), "w8", webhook("w8", "update", "5"))
}

// churn appends n random tag, meta and role changes for contacts 100..100+k.
func (e *env) churn(seed uint64, n, k int) {
	r := rand.New(rand.NewPCG(seed, 1))
	created := map[int]bool{}
	catalogue := []domain.Tag{vip, trial, gold, {ID: 11, Name: "Lead"}, {ID: 12, Name: "Customer"}}
	for i := range n {
		c := 100 + r.IntN(k)
		id := domain.ContactID(c)
		wh := fmt.Sprintf("c%d-%d", seed, i)
		if !created[c] {
			created[c] = true
			e.append(id.Stream(), wh, webhook(wh, "add", id.String()),
				domain.UserCreated{UserID: fmt.Sprintf("u%d", c), ContactID: id, Login: fmt.Sprintf("u%d@example.com", c), Email: fmt.Sprintf("u%d@example.com", c), Role: "subscriber"},
				domain.WebhookProcessed{WebhookID: wh, Action: "add"})
			continue
		}
		var tags []domain.Tag
		for _, t := range catalogue {
			if r.IntN(2) == 0 {
				tags = append(tags, t)
			}
		}
		e.append(id.Stream(), wh, webhook(wh, "update", id.String()),
			domain.TagsUpdated{Tags: tags},
			domain.MetaPulled{Changes: []domain.MetaChange{{Key: "n", New: fmt.Sprint(r.IntN(100))}}},
			domain.WebhookProcessed{WebhookID: wh, Action: "update"})
	}
}

// dump reads every table of the views file, row for row, in a fixed order.
func dump(t *testing.T, path string) map[string][][]any {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path+"?mode=ro")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	out := map[string][][]any{}
	for table, order := range map[string]string{
		"users": "contact_id", "user_tags": "tag_id, contact_id", "tags": "id", "password_returns": "contact_id",
		"webhooks": "id", "webhook_log": "id", "view_counts": "name", "checkpoints": "name", "parked": "handler, position",
	} {
		rows, err := db.Query("SELECT * FROM " + table + " ORDER BY " + order)
		if err != nil {
			t.Fatal(err)
		}
		cols, _ := rows.Columns()
		for rows.Next() {
			vals := make([]any, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			if table == "parked" {
				vals[len(vals)-1] = nil // parked_at is the time of parking
			}
			out[table] = append(out[table], vals)
		}
		rows.Close()
	}
	return out
}

func TestViews_FollowTheEvents(t *testing.T) {
	e := start(t, t.TempDir())
	e.story()
	e.caughtUp()

	ann, ok := e.user(1)
	if !ok || !reflect.DeepEqual(ann.Tags, []domain.Tag{trial, gold}) || ann.Meta["first_name"] != "Ann" || ann.Version != 8 {
		t.Fatalf("ann: %+v", ann)
	}
	if _, ok := e.user(2); ok {
		t.Fatal("contact 2 still has a user after it moved to contact 3")
	}
	if bob, ok := e.user(3); !ok || bob.UserID != "u2" || bob.Email != "bob@example.com" {
		t.Fatalf("contact 3: %+v %v", bob, ok)
	}
	if cy, _ := e.user(5); cy.Role != "customer" {
		t.Fatalf("cy: %+v", cy)
	}
	wantTags := []projections.Tag{{ID: 5, Name: "V.I.P.", Users: 1}, {ID: 7, Name: "Trial", Users: 1}, {ID: 9, Name: "Gold", Users: 1}}
	if got := e.tagList(); !reflect.DeepEqual(got, wantTags) {
		t.Fatalf("tags %+v, want %+v", got, wantTags)
	}
	if got := e.tagUsers(5); !reflect.DeepEqual(got, []domain.ContactID{3}) {
		t.Fatalf("users of VIP: %v", got)
	}
	if users, _ := e.userList(0, 10, 7); len(users) != 1 || users[0].ContactID != 1 {
		t.Fatalf("users tagged Trial: %+v", users)
	}
	pr, _ := e.password(1)
	if pr.Status != projections.PasswordReturned || pr.Attempts != 2 || pr.Field != "7" {
		t.Fatalf("password return 1: %+v", pr)
	}
	if failed := e.passwords(projections.PasswordFailed); len(failed) != 1 || failed[0].ContactID != 5 || failed[0].KeyID != "k5b" || failed[0].LastError == "" {
		t.Fatalf("failed returns: %+v", failed)
	}
	for id, want := range map[string]string{"w1": "processed", "w5": "failed", "w6": "ignored", "w8": "queued"} {
		if w, _ := e.receipt(id); w.Status != want {
			t.Errorf("webhook %s: %+v, want %s", id, w, want)
		}
	}
	if open := e.openReceipts(); len(open) != 1 || open[0].ID != "w8" {
		t.Fatalf("open webhooks: %+v", open)
	}
}

func TestRebuild_GivesTheLiveViewsRowForRow(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	e.story()
	e.churn(1, 400, 40)
	e.caughtUp()
	live := dump(t, filepath.Join(dir, "views.db"))
	liveUsers, liveTags := e.users(), e.tagList()
	liveHooks, livePasswords := e.receipts(), e.passwords("")
	if len(live["users"]) < 40 || len(liveUsers) < 40 || len(liveTags) < 3 || len(live["user_tags"]) < 40 {
		t.Fatalf("too little to compare: %d rows, %d users, %d tags", len(live["users"]), len(liveUsers), len(liveTags))
	}

	var reports atomic.Int64
	stats, err := e.views.Rebuild(context.Background(), e.store, func(projections.Progress) { reports.Add(1) })
	if err != nil {
		t.Fatal(err)
	}
	head, _ := e.store.Head(context.Background())
	if stats.Events != head || stats.Position != head || reports.Load() == 0 {
		t.Fatalf("stats %+v, head %d, %d progress reports", stats, head, reports.Load())
	}
	if stats.Users != len(liveUsers) || stats.Tags != len(liveTags) || stats.Receipts != len(liveHooks) {
		t.Errorf("stats %+v; the live views have %d users, %d tags, %d receipts", stats, len(liveUsers), len(liveTags), len(liveHooks))
	}
	rebuilt := dump(t, filepath.Join(dir, "views.db"))
	for table := range live {
		if !reflect.DeepEqual(live[table], rebuilt[table]) {
			t.Errorf("table %s differs after rebuild:\nlive    %v\nrebuilt %v", table, live[table], rebuilt[table])
		}
	}
	if !reflect.DeepEqual(liveUsers, e.users()) || !reflect.DeepEqual(liveTags, e.tagList()) ||
		!reflect.DeepEqual(liveHooks, e.receipts()) || !reflect.DeepEqual(livePasswords, e.passwords("")) {
		t.Error("the views read differently after rebuild")
	}
	// The pipeline goes on after the swap: a new event is applied once.
	e.append(domain.ContactID(1).Stream(), "w9", domain.RoleChanged{Old: "subscriber", New: "customer"})
	e.caughtUp()
	if ann, _ := e.user(1); ann.Role != "customer" {
		t.Fatalf("after rebuild: %+v", ann)
	}
}

// A rebuild over views that differ from the events (as after a bug) leaves
// the file exactly as a rebuild into an empty file does: it rewrites the
// buckets that changed, keeps those that did not, deletes those that are
// gone.
func TestRebuild_OverWrongViewsWritesWhatAFreshRebuildWrites(t *testing.T) {
	ctx := context.Background()
	dirA, dirB := t.TempDir(), t.TempDir()
	a := start(t, dirA)
	a.story()
	a.churn(1, 400, 40)
	a.caughtUp()
	a.stop()
	b := start(t, dirB)
	b.story() // the same first events: some buckets come out the same
	b.churn(3, 300, 60)
	b.caughtUp()
	b.stop()
	for _, suffix := range []string{"", "-wal"} {
		raw, err := os.ReadFile(filepath.Join(dirA, "views.db"+suffix))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dirB, "wrong.db"+suffix), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	store, err := eventstore.Open(ctx, filepath.Join(dirB, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	rebuild := func(name string) map[string][][]any {
		t.Helper()
		views, err := projections.Open(ctx, filepath.Join(dirB, name))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := views.Rebuild(ctx, store, nil); err != nil {
			t.Fatal(err)
		}
		if err := views.Close(); err != nil {
			t.Fatal(err)
		}
		return dump(t, filepath.Join(dirB, name))
	}
	wrong := dump(t, filepath.Join(dirB, "wrong.db"))
	fixed, fresh := rebuild("wrong.db"), rebuild("fresh.db")
	again := rebuild("fresh.db")
	if !reflect.DeepEqual(again, fresh) {
		t.Error("a second rebuild changed the views file")
	}
	if reflect.DeepEqual(wrong["users"], fresh["users"]) {
		t.Fatal("the wrong views are not wrong: the test proves nothing")
	}
	for table := range fresh {
		if !reflect.DeepEqual(fixed[table], fresh[table]) {
			t.Errorf("table %s after a rebuild over wrong views differs from a fresh rebuild:\nover wrong %v\nfresh      %v", table, fixed[table], fresh[table])
		}
	}
}

func TestViews_RestartResumesWithoutApplyingTwice(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	e.churn(2, 150, 20)
	e.caughtUp()
	e.stop()

	e = start(t, dir)
	e.churn(3, 150, 20)
	e.caughtUp()
	before := dump(t, filepath.Join(dir, "views.db"))
	if _, err := e.views.Rebuild(context.Background(), e.store, nil); err != nil {
		t.Fatal(err)
	}
	after := dump(t, filepath.Join(dir, "views.db"))
	if !reflect.DeepEqual(before, after) {
		t.Fatal("views after a restart differ from a rebuild: an event was lost or applied twice")
	}
}

func TestViews_UnknownEventIsParkedNotSkipped(t *testing.T) {
	dir := t.TempDir()
	e := start(t, dir)
	e.append(domain.ContactID(1).Stream(), "w1",
		domain.UserCreated{UserID: "u1", ContactID: 1, Login: "a@example.com", Email: "a@example.com", Role: "subscriber"})
	if _, err := e.store.Append(context.Background(), domain.ContactID(1).Stream(), domain.AnyVersion(),
		domain.NewEvent{Type: "UserTeleported", Data: []byte(`{}`), Metadata: []byte(`{"schema":1}`)},
		domain.NewEvent{Type: domain.TypeRoleChanged, Data: []byte(`{"old":"subscriber","new":"customer"}`), Metadata: []byte(`{"schema":9}`)}); err != nil {
		t.Fatal(err)
	}
	e.append(domain.ContactID(1).Stream(), "w2", domain.TagsUpdated{Tags: []domain.Tag{vip}, Added: []domain.Tag{vip}})
	e.caughtUp()

	if u, _ := e.user(1); !reflect.DeepEqual(u.Tags, []domain.Tag{vip}) || u.Role != "subscriber" {
		t.Fatalf("events after the parked ones were not applied: %+v", u)
	}
	parked, err := e.views.Parked(context.Background(), "users")
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) != 2 || parked[0].Position != 2 || !strings.Contains(parked[0].Error, "UserTeleported") ||
		parked[1].Position != 3 || !strings.Contains(parked[1].Error, "schema 9") {
		t.Fatalf("parked: %+v", parked)
	}
	all, _ := e.views.Parked(context.Background(), "")
	if len(all) != 2*len(e.views.Names()) {
		t.Fatalf("every view parks the events it cannot read: %d parked", len(all))
	}
	if err := e.pipe.Replay(context.Background(), e.store, parked[0]); !errors.Is(err, pipeline.ErrRebuildToReplay) {
		t.Fatalf("replaying a view's event: err = %v, want ErrRebuildToReplay", err)
	}
	// A rebuild parks them again (still unreadable) and keeps going.
	stats, err := e.views.Rebuild(context.Background(), e.store, nil)
	if err != nil || stats.Parked != 2*len(e.views.Names()) {
		t.Fatalf("rebuild: %+v, %v", stats, err)
	}
}

func TestOpen_DamagedViewsFileIsNamed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "views.db")
	if err := os.WriteFile(path, []byte("this is not a database, just some text that is long enough"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := projections.Open(context.Background(), path)
	if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "rebuild") {
		t.Fatalf("err %v", err)
	}
}

package main

import (
	"bytes"
	"context"
	"database/sql"
	"flag"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files under testdata/")

// runCLI runs a command as main does and returns its exit code and output.
func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// stoppedServer runs add → update_tags → update for contact 1 through the
// real serve harness, waits for the password return and the welcome mail,
// stops the server and returns its data directory.
func stoppedServer(t *testing.T) string {
	t.Helper()
	if os.Getenv(testStoreEnv) == "standin" {
		t.Skip("the CLI tests run on the embedded store; the stand-in store is covered by store_e2e_test.go")
	}
	h := newHarness(t)
	if a := h.send("form", hook("add", "1", "role", "customer", "send_notification", "true")); a.Code != 200 || !a.Success {
		t.Fatalf("add: %+v", a)
	}
	h.sim.SetContactTags(1, 2, 3)
	if a := h.send("json", hook("update_tags", "1")); a.Code != 200 || !a.Success {
		t.Fatalf("update_tags: %+v", a)
	}
	h.sim.SetField(1, "7", "platinum")
	if a := h.send("get", hook("update", "1", "role", "subscriber")); a.Code != 200 || !a.Success {
		t.Fatalf("update: %+v", a)
	}
	if a := h.send("form", hook("add", "5")); a.Code != 200 || !a.Success {
		t.Fatalf("add 5: %+v", a)
	}
	h.eventually("the password returned and the welcome mail sent", func() bool {
		hs := h.history(1)
		return count(hs, domain.TypePasswordReturned) == 1 && count(hs, domain.TypeWelcomeEmailSent) == 1
	})
	if err := h.app.shutdown(); err != nil {
		t.Fatal(err)
	}
	return h.dir
}

func TestCLI_OnAStoppedServersData(t *testing.T) {
	dir := stoppedServer(t)

	t.Run("history in words", func(t *testing.T) {
		code, out, errb := runCLI(t, "history", "1", "--data", dir)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb)
		}
		for _, want := range []string{
			"User created as customer (login ann@example.com, email ann@example.com), welcome email asked for",
			"Tags changed: +Trial −Customer",
			"Meta changed: membership gold → platinum",
			"Role changed: customer → subscriber",
			"Password returned to FunnelKit field " + passwordFld + " (attempt 1)",
			"Welcome email sent to ann@example.com",
			"update_tags (POST from 127.0.0.1): processed",
			"update (GET from 127.0.0.1): processed",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("history lacks %q:\n%s", want, out)
			}
		}
		if strings.Contains(out, testKey) || strings.Contains(out, "access_key") || strings.Contains(out, "$2a$") {
			t.Fatalf("history shows a secret:\n%s", out)
		}
		if i, j := strings.Index(out, "Role changed"), strings.Index(out, "User created"); i < 0 || j < i {
			t.Fatalf("history is not newest first:\n%s", out)
		}
	})

	t.Run("history of a contact without events", func(t *testing.T) {
		code, _, errb := runCLI(t, "history", "99", "--data", dir)
		if code != 1 || !strings.Contains(errb, "contact 99 has no events") {
			t.Fatalf("exit %d: %s", code, errb)
		}
	})

	t.Run("history pages", func(t *testing.T) {
		code, out, errb := runCLI(t, "history", "1", "--json", "--limit", "3", "--data", dir)
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errb)
		}
		var page projections.TimelinePage
		if err := json.Unmarshal([]byte(out), &page); err != nil {
			t.Fatal(err)
		}
		if len(page.Entries) != 3 || page.Next == 0 || page.Entries[0].Version <= page.Entries[2].Version {
			t.Fatalf("first page: %+v", page)
		}
		var versions []uint64
		for cursor := page.Next; cursor != 0; {
			code, out, _ := runCLI(t, "history", "1", "--json", "--limit", "3", "--before", uintText(cursor), "--data", dir)
			var next projections.TimelinePage
			if code != 0 || json.Unmarshal([]byte(out), &next) != nil || len(next.Entries) == 0 {
				t.Fatalf("page before %d: exit %d %s", cursor, code, out)
			}
			for _, e := range next.Entries {
				versions = append(versions, e.Version)
			}
			cursor = next.Next
		}
		if want := page.Entries[2].Version - 1; uint64(len(versions)) != want || versions[len(versions)-1] != 1 {
			t.Fatalf("older pages hold versions %v, want %d down to 1", versions, want)
		}
	})

	t.Run("users", func(t *testing.T) {
		tests := []struct {
			args  []string
			total int
			want  string
		}{
			{nil, 2, "ann@example.com"},
			{[]string{"--search", "1"}, 1, "ann@example.com"},
			{[]string{"--search", "dan@"}, 1, "dan@example.com"},
			{[]string{"--tag", "3"}, 1, "3:Trial"},
			{[]string{"--role", "subscriber"}, 2, "subscriber"},
			{[]string{"--role", "customer"}, 0, "no users match"},
			{[]string{"--search", "nobody"}, 0, "no users match"},
		}
		for _, tc := range tests {
			code, out, errb := runCLI(t, append([]string{"users", "--data", dir}, tc.args...)...)
			if code != 0 || !strings.Contains(out, tc.want) {
				t.Errorf("users %v: exit %d, %q %s; want %q", tc.args, code, out, errb, tc.want)
			}
			code, out, _ = runCLI(t, append([]string{"users", "--json", "--data", dir}, tc.args...)...)
			var page projections.UserPage
			if code != 0 || json.Unmarshal([]byte(out), &page) != nil || page.Total != tc.total || len(page.Users) != tc.total {
				t.Errorf("users --json %v: exit %d, %s; want %d users", tc.args, code, out, tc.total)
			}
		}
		code, out, _ := runCLI(t, "users", "--limit", "1", "--data", dir)
		if code != 0 || !strings.Contains(out, "1 shown, 2 match") || !strings.Contains(out, "--after 1") {
			t.Fatalf("users --limit 1: %d %s", code, out)
		}
		code, out, _ = runCLI(t, "users", "--limit", "1", "--after", "1", "--data", dir)
		if code != 0 || !strings.Contains(out, "dan@example.com") || strings.Contains(out, "--after") {
			t.Fatalf("users --after 1: %d %s", code, out)
		}
	})

	t.Run("verify equal", func(t *testing.T) {
		code, out, errb := runCLI(t, "verify", "--data", dir, "--progress", "off")
		if code != 0 || !strings.Contains(out, "no differences") || errb != "" {
			t.Fatalf("verify: exit %d, %q %q", code, out, errb)
		}
		assertNoScratch(t, dir)
	})

	t.Run("verify names a tampered row", func(t *testing.T) {
		tests := []struct {
			name, sql string
			want      []string
		}{
			{"column", "UPDATE users SET email = 'eve@example.com' WHERE contact_id = 1",
				[]string{"users contact_id=1 column email: live eve@example.com, rebuilt ann@example.com"}},
			{"missing row", "DELETE FROM user_tags WHERE contact_id = 1 AND tag_id = 3",
				[]string{"user_tags tag_id=3,contact_id=1: live (missing), rebuilt present"}},
			{"extra row", "INSERT INTO tags(id, name, users) VALUES (99, 'Ghost', 0)",
				[]string{"tags id=99: live present, rebuilt (missing)"}},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				undo := tamper(t, filepath.Join(dir, "views.db"), tc.sql)
				defer undo()
				code, out, errb := runCLI(t, "verify", "--data", dir, "--progress", "on")
				if code != 1 || !strings.Contains(out, "1 difference\n") {
					t.Fatalf("verify: exit %d, %q %q", code, out, errb)
				}
				for _, w := range tc.want {
					if !strings.Contains(out, w) {
						t.Fatalf("verify output lacks %q:\n%s", w, out)
					}
				}
				if !strings.Contains(errb, "100.0%") {
					t.Fatalf("--progress on drew no bar: %q", errb)
				}
				code, out, _ = runCLI(t, "verify", "--data", dir, "--json")
				var res struct {
					Equal       bool                     `json:"equal"`
					Differences []projections.Difference `json:"differences"`
				}
				if code != 1 || json.Unmarshal([]byte(out), &res) != nil || res.Equal || len(res.Differences) != 1 {
					t.Fatalf("verify --json: exit %d %s", code, out)
				}
				assertNoScratch(t, dir)
			})
		}
	})
}

// tamper changes views.db behind the views' back and returns a func that
// restores it (a rebuild).
func tamper(t *testing.T, path, stmt string) func() {
	t.Helper()
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(stmt); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	return func() {
		if code, _, errb := runCLI(t, "rebuild", "--data", filepath.Dir(path), "--progress", "off"); code != 0 {
			t.Fatalf("rebuild after tampering: %s", errb)
		}
	}
}

func assertNoScratch(t *testing.T, dir string) {
	t.Helper()
	left, _ := filepath.Glob(filepath.Join(dir, ".verify-*"))
	if len(left) > 0 {
		t.Fatalf("verify left %v behind", left)
	}
}

func uintText(n uint64) string { return strconv.FormatUint(n, 10) }

func TestCLI_DataDirectoryErrors_NeverCreateOne(t *testing.T) {
	t.Setenv("USERSYNC_DATA", "")
	os.Unsetenv("USERSYNC_DATA")
	base := t.TempDir()
	missing := filepath.Join(base, "nope")
	empty := filepath.Join(base, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	onlyEvents := filepath.Join(base, "events-only")
	if err := os.Mkdir(onlyEvents, 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := eventstore.Open(context.Background(), filepath.Join(onlyEvents, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	commands := [][]string{
		{"history", "1"}, {"users"}, {"verify"}, {"parked"}, {"parked", "list"}, {"parked", "replay"}, {"parked", "skip", "--handler", "users", "1"},
	}
	for _, cmd := range commands {
		for _, tc := range []struct {
			dir, want string
		}{
			{missing, "--data " + missing + " does not exist"},
			{empty, "--data " + empty + " holds no usersync data"},
		} {
			code, _, errb := runCLI(t, append(cmd, "--data", tc.dir)...)
			if code != 1 || !strings.Contains(errb, tc.want) {
				t.Errorf("%v --data %s: exit %d, stderr %q; want 1 and %q", cmd, tc.dir, code, errb, tc.want)
			}
		}
		if cmd[0] != "history" {
			code, _, errb := runCLI(t, append(cmd, "--data", onlyEvents)...)
			if code != 1 || !strings.Contains(errb, "has no views.db") || !strings.Contains(errb, "usersync rebuild --data") {
				t.Errorf("%v without views.db: exit %d, stderr %q", cmd, code, errb)
			}
		}
	}
	if _, err := os.Stat(missing); !os.IsNotExist(err) {
		t.Fatalf("a command created %s", missing)
	}
	for _, d := range []string{empty, onlyEvents} {
		entries, _ := os.ReadDir(d)
		for _, e := range entries {
			if !strings.HasPrefix(e.Name(), "events.db") { // the test made events.db and its lock
				t.Errorf("a command created %s in %s", e.Name(), d)
			}
		}
	}
}

func TestCLI_UsageErrors(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		args    []string
		mention string
	}{
		{[]string{"history"}, "give one CONTACT_ID"},
		{[]string{"history", "1", "2"}, "give one CONTACT_ID"},
		{[]string{"history", "abc"}, "positive integer"},
		{[]string{"history", "1", "--limit", "0"}, "--limit 0 must be 1 to"},
		{[]string{"history", "1", "--before", "x"}, "--before"},
		{[]string{"history", "1", "--nope"}, "flag provided but not defined"},
		{[]string{"users", "--limit", "5000"}, "--limit 5000"},
		{[]string{"users", "--after", "x"}, "--after"},
		{[]string{"users", "extra"}, "unexpected argument"},
		{[]string{"verify", "--progress", "maybe"}, "auto, on or off"},
		{[]string{"verify", "--limit", "-1"}, "--limit -1"},
		{[]string{"parked", "frob"}, `unknown subcommand "frob"`},
		{[]string{"parked", "skip", "1"}, "skip needs --handler"},
		{[]string{"parked", "skip", "--handler", "users"}, "skip needs --handler"},
		{[]string{"parked", "list", "7"}, "list takes no POSITION"},
		{[]string{"parked", "replay", "x"}, "POSITION"},
	}
	for _, tc := range tests {
		code, _, errb := runCLI(t, append(tc.args, "--data", dir)...)
		if code != 2 || !strings.Contains(errb, tc.mention) {
			t.Errorf("%v: exit %d, stderr %q; want 2 mentioning %q", tc.args, code, errb, tc.mention)
		}
	}
	if code, out, _ := runCLI(t, "help"); code != 0 || !strings.Contains(out, "usersync history CONTACT_ID") || !strings.Contains(out, "usersync verify") {
		t.Fatalf("help: %d %s", code, out)
	}
}

// TestHistory_JSONGolden pins the shape of history --json: events appended
// directly with fixed times, a webhook with a secret-looking parameter.
func TestHistory_JSONGolden(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 1, 2, 10, 0, 0, 0, time.UTC)
	tick := func(n int) time.Time { return at.Add(time.Duration(n) * time.Second) }
	raw, err := domain.EncodeAll([]domain.Envelope{
		{Event: domain.WebhookReceived{WebhookID: "wh-1", Action: "add", ContactID: "12", Method: "POST", Source: "203.0.113.9",
			Params: map[string]string{"role": "subscriber", "api_token": "leak"}, ReceivedAt: tick(0)}, OccurredAt: tick(0), WebhookID: "wh-1"},
		{Event: domain.UserCreated{UserID: "u1", ContactID: 12, Login: "ann", Email: "ann@example.com", Role: "subscriber", PasswordHash: "$2a$04$hash"}, OccurredAt: tick(1), WebhookID: "wh-1"},
		{Event: domain.MetaPulled{Changes: []domain.MetaChange{{Key: "phone", Old: "555-1", New: "555-2"}}}, OccurredAt: tick(1), WebhookID: "wh-1"},
		{Event: domain.TagsUpdated{Tags: []domain.Tag{{ID: 5, Name: "VIP"}}, Added: []domain.Tag{{ID: 5, Name: "VIP"}}, Removed: []domain.Tag{{ID: 6, Name: "Trial"}}}, OccurredAt: tick(1), WebhookID: "wh-1"},
		{Event: domain.PasswordIssued{KeyID: "k1", Sealed: []byte("sealed"), Field: "7"}, OccurredAt: tick(1), WebhookID: "wh-1"},
		{Event: domain.WebhookProcessed{WebhookID: "wh-1", Action: "add", Message: "User created", UserID: "u1"}, OccurredAt: tick(1), WebhookID: "wh-1"},
		{Event: domain.PasswordReturnClaimed{KeyID: "k1", Field: "7", Attempt: 1, Until: tick(60), Node: "n1"}, OccurredAt: tick(2)},
		{Event: domain.PasswordReturned{KeyID: "k1", Field: "7", Attempt: 1}, OccurredAt: tick(3)},
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, domain.ContactID(12).Stream(), domain.NoStream(), raw...); err != nil {
		t.Fatal(err)
	}
	store.Close()
	code, out, errb := runCLI(t, "history", "12", "--json", "--data", dir)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb)
	}
	if strings.Contains(out, "leak") || strings.Contains(out, "$2a$") || strings.Contains(out, "c2VhbGVk") {
		t.Fatalf("history --json shows a secret:\n%s", out)
	}
	golden := filepath.Join("testdata", "history.golden.json")
	if *updateGolden {
		if err := os.WriteFile(golden, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -run TestHistory_JSONGolden -update to write it)", err)
	}
	if out != string(want) {
		t.Fatalf("history --json differs from %s (go test -run TestHistory_JSONGolden -update rewrites it):\n%s", golden, out)
	}
	if _, err := os.Stat(filepath.Join(dir, "views.db")); !os.IsNotExist(err) {
		t.Fatalf("history created views.db")
	}
}

func TestParked_ListReplaySkip(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	raw, err := domain.EncodeAll([]domain.Envelope{{Event: domain.UserCreated{UserID: "u1", ContactID: 12, Login: "ann", Email: "ann@example.com", Role: "subscriber"}, OccurredAt: time.Now()}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "contact-12", domain.NoStream(), raw...); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Append(ctx, "contact-13", domain.NoStream(), domain.NewEvent{Type: "FromTheFuture", Data: []byte(`{}`), Metadata: []byte(`{"schema":1}`)}); err != nil {
		t.Fatal(err)
	}
	store.Close()
	if code, _, errb := runCLI(t, "rebuild", "--data", dir, "--progress", "off"); code != 0 {
		t.Fatal(errb)
	}
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	if err := views.Park(ctx, domain.ParkedEvent{Handler: "welcome_email", Position: 1, Stream: "contact-12", Version: 1, Type: "UserCreated", Error: "smtp down", ParkedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	views.Close()

	steps := []struct {
		args      []string
		code      int
		out, nout string
	}{
		{[]string{"parked"}, 0, "FromTheFuture", ""},
		{[]string{"parked", "list", "--handler", "welcome_email"}, 0, "smtp down", "FromTheFuture"},
		{[]string{"parked", "replay", "--handler", "users", "2"}, 0, "event 2 for users: parked again", ""},
		{[]string{"parked", "replay", "--handler", "welcome_email"}, 1, "smtp down", ""},
		{[]string{"parked", "skip", "--handler", "users", "9"}, 1, "", ""},
		{[]string{"parked", "skip", "--handler", "users", "2"}, 0, "skipped event 2 (FromTheFuture in contact-13) for users", ""},
		{[]string{"parked", "list", "--handler", "users"}, 0, "no parked events", ""},
		{[]string{"parked", "list", "--json"}, 0, `"handler": "tags"`, `"handler": "users"`},
	}
	for _, s := range steps {
		code, out, errb := runCLI(t, append(s.args, "--data", dir)...)
		if code != s.code || !strings.Contains(out, s.out) || (s.nout != "" && strings.Contains(out, s.nout)) {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q; want %d with %q", s.args, code, out, errb, s.code, s.out)
		}
		if s.code == 1 && s.args[1] == "replay" && !strings.Contains(errb, "POST /api/parked/replay") {
			t.Fatalf("%v: stderr %q does not say how to replay", s.args, errb)
		}
	}
}

// TestStoreHandle_ReadsBackwardsBounded: the handle the commands read
// through keeps the store's bounded backward read (history's pages).
func TestStoreHandle_ReadsBackwardsBounded(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	h, err := openStore(ctx, storeConfig{Events: filepath.Join(dir, "events.db")}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for i := range 30 {
		raw, err := domain.Encode(domain.Envelope{Event: domain.RoleChanged{Old: "a", New: domain.Role(strconv.Itoa(i))}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := h.Append(ctx, "contact-1", domain.AnyVersion(), raw); err != nil {
			t.Fatal(err)
		}
	}
	got, err := h.ReadStreamBackward(ctx, "contact-1", 11, 4)
	if err != nil || len(got) != 4 || got[0].Version != 10 || got[3].Version != 7 {
		t.Fatalf("ReadStreamBackward(11, 4) = %d events from %v, %v", len(got), got, err)
	}
}

package main

// End-to-end tests: the real server (startApp, the same wiring as usersync
// serve) on a free loopback port, the real embedded store, and FunnelKit
// played by the in-process simulator, which speaks FunnelKit's REST API over
// real HTTP (FunnelKit itself cannot run here). Webhooks are sent the three
// ways FunnelKit sends them: GET with a query, POST with a form body, POST
// with a JSON body whose values are all strings.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	nethttp "net/http"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore/keystore"
	"github.com/usersync/usersync/funnelkit"
	"github.com/usersync/usersync/funnelkit/simulator"
	"github.com/usersync/usersync/mail/smtptest"
	"github.com/usersync/usersync/projections"
)

const (
	testKey      = "test-access-key-9f8e7d"
	testToken    = "test-admin-token-1a2b3c"
	testFKPass   = "abcd EFGH 1234 ijkl"
	passwordFld  = "10"
	waitDeadline = 10 * time.Second
)

// syncBuffer is a log sink safe for concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type harness struct {
	t      *testing.T
	dir    string
	sim    *simulator.Simulator
	simURL string
	app    *app
	base   string
	logs   *syncBuffer
}

func newSim(t *testing.T) (*simulator.Simulator, string) {
	sim := simulator.New("automation", testFKPass)
	sim.SampleData()
	sim.PutContact(simulator.Contact{ID: 4, Email: "ANN@example.com", FirstName: "Ann", LastName: "Lee-Two"})
	sim.PutContact(simulator.Contact{ID: 5, Email: "dan@example.com", FirstName: "Dan", TagIDs: []uint64{1}})
	u, stop := sim.Start()
	t.Cleanup(stop)
	return sim, u
}

func testConfig(dir, simURL string) *serveConfig {
	return &serveConfig{
		Addr: "127.0.0.1:0", Data: dir, AccessKey: testKey, AdminToken: testToken,
		FunnelKitURL: simURL, FunnelKitUser: "automation", FunnelKitPassword: testFKPass,
		PasswordField: passwordFld, DefaultRole: "subscriber", Roles: "subscriber,customer,administrator",
		FieldMap: "membership=7,joined=9", MailFrom: "site@example.com", LoginURL: "https://site.example/login",
		// A generous wait: a sync answer returns as soon as it is processed;
		// a loaded CI machine must not turn it into 202.
		Wait: 30 * time.Second, RetryInitial: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond,
		ReturnAttempts: 5, MailAttempts: 3, Concurrency: 8, LogFormat: "json", LogLevel: "debug",
		FunnelKitTimeout: 2 * time.Second, TakeoverAfter: time.Minute,
		// The least bcrypt cost: hashing is not what these tests test.
		ProcessingConcurrency: 64, FunnelKitConcurrency: 16, ContactCache: 1000, PasswordHashCost: 4,
	}
}

func start(t *testing.T, dir string, sim *simulator.Simulator, simURL string, change ...func(*serveConfig)) *harness {
	t.Helper()
	cfg := testConfig(dir, simURL)
	cfg.Store = testStore(t, dir)
	for _, f := range change {
		f(cfg)
	}
	if err := cfg.validate(); err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	log := slog.New(slog.NewJSONHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	a, err := startApp(context.Background(), cfg, log, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, dir: dir, sim: sim, simURL: simURL, app: a, base: "http://" + a.addr, logs: logs}
	t.Cleanup(func() { _ = a.shutdown() })
	return h
}

func newHarness(t *testing.T, change ...func(*serveConfig)) *harness {
	sim, u := newSim(t)
	return start(t, t.TempDir(), sim, u, change...)
}

type answer struct {
	Code      int
	Success   bool              `json:"success"`
	Message   string            `json:"message"`
	WebhookID string            `json:"webhook_id"`
	Status    string            `json:"status"`
	User      *projections.User `json:"user"`
}

// send delivers a webhook the way FunnelKit does: how is get, form or json.
func (h *harness) send(how string, params map[string]string) answer {
	h.t.Helper()
	var req *nethttp.Request
	var err error
	switch how {
	case "get":
		q := url.Values{}
		for k, v := range params {
			q.Set(k, v)
		}
		req, err = nethttp.NewRequest("GET", h.base+"/?"+q.Encode(), nil)
	case "form":
		q := url.Values{}
		for k, v := range params {
			q.Set(k, v)
		}
		req, err = nethttp.NewRequest("POST", h.base+"/", strings.NewReader(q.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	case "json":
		b, _ := json.Marshal(params)
		req, err = nethttp.NewRequest("POST", h.base+"/", bytes.NewReader(b))
		if err == nil {
			req.Header.Set("Content-Type", "application/json")
		}
	default:
		h.t.Fatalf("unknown transport %s", how)
	}
	if err != nil {
		h.t.Fatal(err)
	}
	resp, err := nethttp.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	var a answer
	body, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(body, &a); err != nil {
		h.t.Fatalf("answer is not JSON (%d): %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		h.t.Fatalf("answer Content-Type %q", ct)
	}
	a.Code = resp.StatusCode
	return a
}

func hook(action, contact string, extra ...string) map[string]string {
	p := map[string]string{"wpf_action": action, "access_key": testKey}
	if contact != "" {
		p["contact_id"] = contact
	}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return p
}

// api GETs (or POSTs) a read-API path with the admin token into v.
func (h *harness) api(method, path string, v any) int {
	h.t.Helper()
	req, _ := nethttp.NewRequest(method, h.base+path, nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := nethttp.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	if v != nil {
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			h.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
	return resp.StatusCode
}

func (h *harness) user(id int) (projections.User, bool) {
	h.t.Helper()
	var u projections.User
	code := h.api("GET", fmt.Sprintf("/api/users/%d", id), &u)
	return u, code == 200
}

type historyEntry struct {
	Position   uint64          `json:"position"`
	Version    uint64          `json:"version"`
	Type       string          `json:"type"`
	OccurredAt time.Time       `json:"occurred_at"`
	WebhookID  string          `json:"webhook_id"`
	Data       json.RawMessage `json:"data"`
}

func (h *harness) history(id int) []historyEntry {
	h.t.Helper()
	var out struct {
		Events []historyEntry `json:"events"`
	}
	h.api("GET", fmt.Sprintf("/api/users/%d/history", id), &out)
	return out.Events
}

func count(events []historyEntry, typ string) int {
	n := 0
	for _, e := range events {
		if e.Type == typ {
			n++
		}
	}
	return n
}

// eventually polls cond (a cheap read) until it holds or the deadline passes.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	eventually(h.t, what, cond)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitDeadline)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		<-tick.C
	}
}

func (h *harness) receipt(id string) projections.Webhook {
	h.t.Helper()
	var w projections.Webhook
	h.api("GET", "/api/webhooks/"+id, &w)
	return w
}

// TestProtocolTable sends every row of the protocol reference's table.
func TestProtocolTable(t *testing.T) {
	h := newHarness(t)
	tests := []struct {
		name    string
		how     string
		params  map[string]string
		code    int
		success bool
		message string
		status  string // receipt status when recorded, "" when not recorded
	}{
		{"no action", "get", map[string]string{"access_key": testKey, "contact_id": "1"}, 500, false, "No Action Specified", ""},
		{"missing key", "form", map[string]string{"wpf_action": "update", "contact_id": "1"}, 403, false, "Invalid Access Key", ""},
		{"wrong key", "json", map[string]string{"wpf_action": "update", "contact_id": "1", "access_key": testKey + "x"}, 403, false, "Invalid Access Key", ""},
		{"test", "get", hook("test", ""), 200, true, "reachable", ""},
		{"test upper case", "form", hook("TEST", ""), 200, true, "reachable", ""},
		{"no contact_id", "form", hook("update", ""), 200, false, "Abort: Contact data not found", "ignored"},
		{"contact_id not a number", "get", hook("update", "12abc"), 400, false, "positive integer", "failed"},
		{"contact_id zero", "json", hook("update_tags", "0"), 400, false, "positive integer", "failed"},
		{"contact_id path injection", "get", hook("update", "1/../2"), 400, false, "positive integer", "failed"},
		{"update, no user", "get", hook("update", "2"), 200, false, "No matching user found", "ignored"},
		{"update_tags, no user", "json", hook("update_tags", "2"), 200, false, "No matching user found", "ignored"},
		{"update_tags, no user, unknown email", "form", hook("update_tags", "2", "email", "nobody@example.com"), 200, false, "No matching user found", "ignored"},
		{"unknown action", "get", hook("delete_everything", "1"), 400, false, "unknown wpf_action", "failed"},
		{"bad async flag", "form", hook("update", "1", "async", "maybe"), 400, false, "async must be", "failed"},
		{"add without email", "get", hook("add", "3"), 500, false, "No email provided for imported user", "failed"},
		{"add unknown contact", "form", hook("add", "404"), 502, false, "FunnelKit", "failed"},
		{"add", "get", hook("add", "1"), 200, true, "User created", "processed"},
		{"add_user alias, existing user", "json", hook("add_user", "1"), 200, true, "", "processed"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h.t = t
			a := h.send(tt.how, tt.params)
			if a.Code != tt.code || a.Success != tt.success || !strings.Contains(a.Message, tt.message) {
				t.Fatalf("got %d success=%v %q; want %d success=%v containing %q", a.Code, a.Success, a.Message, tt.code, tt.success, tt.message)
			}
			if tt.status == "" {
				return
			}
			if a.WebhookID == "" {
				t.Fatal("recorded webhook answered without an id")
			}
			h.eventually("receipt of "+a.WebhookID, func() bool { return h.receipt(a.WebhookID).Status == tt.status })
		})
	}
	h.t = t
	// The access key is never recorded or logged.
	if strings.Contains(h.logs.String(), testKey) {
		t.Fatal("the access key is in the log")
	}
}

func TestAddUpdateUpdateTags_EveryTransport(t *testing.T) {
	for _, how := range []string{"get", "form", "json"} {
		t.Run(how, func(t *testing.T) {
			h := newHarness(t)
			a := h.send(how, hook("add", "1", "role", "customer", "send_notification", "true"))
			if a.Code != 200 || !a.Success || a.User == nil {
				t.Fatalf("add: %+v", a)
			}
			u := *a.User
			if u.ContactID != 1 || u.Email != "ann@example.com" || u.Login != "ann@example.com" || u.Role != "customer" ||
				u.Meta["first_name"] != "Ann" || u.Meta["membership"] != "gold" || u.Meta["billing_country"] != "US" {
				t.Fatalf("user after add: %+v", u)
			}
			if !reflect.DeepEqual(u.Tags, []domain.Tag{{ID: 1, Name: "Customer"}, {ID: 2, Name: "VIP"}}) {
				t.Fatalf("tags after add: %+v", u.Tags)
			}
			// FunnelKit changes the contact's tags: update_tags replaces the set.
			h.sim.SetContactTags(1, 2, 3)
			a = h.send(how, hook("update_tags", "1"))
			if a.Code != 200 || !a.Success || !reflect.DeepEqual(a.User.Tags, []domain.Tag{{ID: 2, Name: "VIP"}, {ID: 3, Name: "Trial"}}) {
				t.Fatalf("update_tags: %+v %+v", a, a.User)
			}
			// update pulls the fields too, and applies an allowed role.
			h.sim.SetField(1, "7", "platinum")
			a = h.send(how, hook("update", "1", "role", "subscriber"))
			if a.Code != 200 || a.User.Meta["membership"] != "platinum" || a.User.Role != "subscriber" {
				t.Fatalf("update: %+v %+v", a, a.User)
			}
			// A repeat that changes nothing appends no domain event. (The
			// process managers append to the stream too: wait for them.)
			h.eventually("the password returned and the welcome mail sent", func() bool {
				hs := h.history(1)
				return count(hs, domain.TypePasswordReturned) == 1 && count(hs, domain.TypeWelcomeEmailSent) == 1
			})
			before := h.history(1)
			a = h.send(how, hook("update", "1", "role", "subscriber"))
			if a.Code != 200 || !a.Success || a.Message != "No changes" {
				t.Fatalf("repeat update: %+v", a)
			}
			after := h.history(1)
			if got := after[len(before):]; len(got) != 2 || got[0].Type != "WebhookReceived" || got[1].Type != "WebhookProcessed" {
				t.Fatalf("a repeat appended %+v", got)
			}
			// History: oldest first, global positions, stream versions, causation.
			for i, e := range after {
				if e.Version != uint64(i+1) || (i > 0 && e.Position <= after[i-1].Position) || e.WebhookID == "" || e.OccurredAt.IsZero() {
					t.Fatalf("history entry %d: %+v", i, e)
				}
			}
			if count(after, "UserCreated") != 1 || count(after, "TagsUpdated") != 2 || count(after, "RoleChanged") != 1 {
				t.Fatalf("history types: %+v", after)
			}
			for _, e := range after {
				if e.Type == "UserCreated" && !strings.Contains(string(e.Data), `"password_hash":"[redacted]"`) {
					t.Fatalf("history shows the password hash: %s", e.Data)
				}
			}
		})
	}
}

func TestRoles_AdministratorNeverGranted(t *testing.T) {
	h := newHarness(t)
	a := h.send("get", hook("add", "1", "role", "administrator"))
	if a.Code != 200 || a.User.Role != "subscriber" || !strings.Contains(a.Message, "administrator is never granted") {
		t.Fatalf("add as administrator: %+v %+v", a, a.User)
	}
	a = h.send("form", hook("update", "1", "role", "Administrator"))
	if a.Code != 200 || a.User.Role != "subscriber" || !strings.Contains(a.Message, "administrator") {
		t.Fatalf("update to administrator: %+v %+v", a, a.User)
	}
	a = h.send("json", hook("update", "1", "role", "editor"))
	if a.User.Role != "subscriber" || !strings.Contains(a.Message, "not in the allowed roles") {
		t.Fatalf("update to a role not allowed: %+v", a)
	}
	a = h.send("json", hook("add", "5", "role", "editor"))
	if a.User.Role != "subscriber" {
		t.Fatalf("add with a role not allowed: %+v", a.User)
	}
}

func TestDuplicateAdd_OneUserWhateverTheConcurrency(t *testing.T) {
	h := newHarness(t)
	const n = 16
	var wg sync.WaitGroup
	answers := make([]answer, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			answers[i] = h.send([]string{"get", "form", "json"}[i%3], hook("add", "1"))
		}()
	}
	wg.Wait()
	ids := map[string]bool{}
	for _, a := range answers {
		if a.Code != 200 || !a.Success || a.User == nil {
			t.Fatalf("concurrent add: %+v", a)
		}
		ids[a.User.UserID] = true
	}
	if len(ids) != 1 || count(h.history(1), "UserCreated") != 1 {
		t.Fatalf("%d user ids, %d UserCreated", len(ids), count(h.history(1), "UserCreated"))
	}
	var list struct {
		Users []projections.User `json:"users"`
	}
	h.api("GET", "/api/users", &list)
	if len(list.Users) != 1 {
		t.Fatalf("users: %+v", list.Users)
	}
}

func TestEmailClash_LinksTheExistingUser(t *testing.T) {
	h := newHarness(t)
	first := h.send("get", hook("add", "1"))
	// Contact 4 is another FunnelKit contact with the same address (other case).
	second := h.send("get", hook("add", "4"))
	if second.Code != 200 || second.User == nil || second.User.UserID != first.User.UserID || second.User.ContactID != 4 {
		t.Fatalf("add of a contact whose email has a user: %+v %+v", second, second.User)
	}
	if _, ok := h.user(1); ok {
		t.Fatal("contact 1 still has the user after it moved to contact 4")
	}
	if count(h.history(4), "UserCreated") != 0 || count(h.history(4), "UserLinked") != 1 || count(h.history(1), "UserUnlinked") != 1 {
		t.Fatal("history does not show the move")
	}
	// update by email for a contact without a user finds the user too.
	a := h.send("form", hook("update_tags", "5", "email", "nobody@example.com"))
	if a.Success {
		t.Fatalf("update_tags by unknown email: %+v", a)
	}
}

func TestTagsParam(t *testing.T) {
	h := newHarness(t)
	h.send("get", hook("add", "1"))
	a := h.send("form", hook("update_tags", "1", "tags", "3, VIP"))
	if a.Code != 200 || !reflect.DeepEqual(a.User.Tags, []domain.Tag{{ID: 2, Name: "VIP"}, {ID: 3, Name: "Trial"}}) {
		t.Fatalf("tags=3,VIP: %+v %+v", a, a.User)
	}
	a = h.send("form", hook("update_tags", "1", "tags", "Trial,VIP"))
	if a.Code != 200 || len(a.User.Tags) != 2 {
		t.Fatalf("tags=Trial,VIP must be two tags: %+v", a.User)
	}
	a = h.send("get", hook("update_tags", "1", "tags", "Nope"))
	if a.Code != 400 || !strings.Contains(a.Message, `"Nope"`) {
		t.Fatalf("unknown tag: %+v", a)
	}
	if u, _ := h.user(1); len(u.Tags) != 2 {
		t.Fatalf("a refused tags param changed the user: %+v", u.Tags)
	}
}

func TestFailedCRMRead_NeverWipesTags(t *testing.T) {
	h := newHarness(t)
	h.send("get", hook("add", "1"))
	// The password return appends to the contact's stream too (its claim,
	// its result): a webhook whose append it beats decides again, with a
	// second FunnelKit read that would take the next fault. Let it finish.
	h.eventually("the password returned", func() bool { return count(h.history(1), domain.TypePasswordReturned) == 1 })
	before, _ := h.user(1)
	// Answers that are not FunnelKit's (a challenge page, an empty or
	// broken body, refused credentials) are an outage: the webhook is
	// kept and retried, and the user is not touched meanwhile.
	faults := []func(){
		func() { h.sim.FailWith(funnelkit.EndpointContact, 1, funnelkit.KindHTML) },
		func() { h.sim.FailWith(funnelkit.EndpointContact, 1, funnelkit.KindEmptyBody) },
		func() { h.sim.FailWith(funnelkit.EndpointContact, 1, funnelkit.KindInvalidJSON) },
		func() { h.sim.FailNext(funnelkit.EndpointContact, 1, 401) },
	}
	for i, fault := range faults {
		fault()
		a := h.send("get", hook("update_tags", "1"))
		if !a.Success || a.Code != 202 || a.Status != "queued" || strings.Contains(a.Message, testFKPass) {
			t.Fatalf("fault %d: %+v\n%s", i, a, h.logs.String())
		}
		if u, _ := h.user(1); !reflect.DeepEqual(before, u) {
			t.Fatalf("fault %d: a failed FunnelKit read changed the user:\n%+v\n%+v", i, before, u)
		}
		// The retry takes the next fault only once it is processed.
		h.eventually("webhook "+a.WebhookID+" to be processed", func() bool { return h.receipt(a.WebhookID).Status == "processed" })
	}
	after, _ := h.user(1)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("a failed FunnelKit read changed the user:\n%+v\n%+v", before, after)
	}
}

func TestCRMUnavailable_QueuedAndRetriedNeverDropped(t *testing.T) {
	h := newHarness(t, func(c *serveConfig) {
		c.Wait = 300 * time.Millisecond
		c.RetryInitial, c.RetryMax = 50*time.Millisecond, 100*time.Millisecond
	})
	h.sim.FailNext(funnelkit.EndpointContact, 3, 503)
	a := h.send("get", hook("add", "1"))
	if a.Code != 202 || !a.Success || a.Status != "queued" {
		t.Fatalf("add while FunnelKit fails: %+v", a)
	}
	h.eventually("the webhook to be processed", func() bool { return h.receipt(a.WebhookID).Status == "processed" })
	if r := h.receipt(a.WebhookID); r.Attempts < 1 {
		t.Fatalf("receipt: %+v", r)
	}
	if count(h.history(1), "WebhookRetrying") != 3 {
		t.Fatalf("history: %+v", h.history(1))
	}
}

func TestAsync_AnswersAtOnce(t *testing.T) {
	h := newHarness(t)
	a := h.send("json", hook("add", "1", "async", "true"))
	if a.Code != 202 || a.Status != "queued" || !a.Success {
		t.Fatalf("async: %+v", a)
	}
	h.eventually("async add", func() bool { _, ok := h.user(1); return ok })
	// async=false is false (WP Fusion queued it anyway).
	if a := h.send("json", hook("update", "1", "async", "false")); a.Code != 200 {
		t.Fatalf("async=false: %+v", a)
	}
}

func TestPasswordReturn_FunnelKitFailsTwiceFirst(t *testing.T) {
	h := newHarness(t)
	h.sim.FailNext(funnelkit.EndpointSetFields, 2, 503)
	a := h.send("get", hook("add", "1", "send_notification", "1"))
	if a.Code != 200 {
		t.Fatalf("add: %+v", a)
	}
	var pr struct {
		Returns []projections.PasswordReturn `json:"password_returns"`
	}
	h.eventually("the password return", func() bool {
		h.api("GET", "/api/password-returns?status=returned", &pr)
		return len(pr.Returns) == 1
	})
	if r := pr.Returns[0]; r.ContactID != 1 || r.Field != passwordFld || r.Attempts != 3 {
		t.Fatalf("password return: %+v", r)
	}
	c, _ := h.sim.Contact(1)
	password := c.Fields[passwordFld]
	if len(password) < 16 {
		t.Fatalf("FunnelKit field %s holds %q", passwordFld, password)
	}
	h.eventually("the welcome email", func() bool {
		files, _ := filepath.Glob(filepath.Join(h.dir, "outbox", "*.eml"))
		return len(files) == 1
	})
	if err := h.app.shutdown(); err != nil {
		t.Fatal(err)
	}
	// The plaintext password is nowhere in the data directory, nor in the logs.
	err := filepath.Walk(h.dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, secret := range []string{password, testKey, testToken, testFKPass} {
			if bytes.Contains(b, []byte(secret)) {
				t.Errorf("%s holds a secret in the clear", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{password, testKey, testToken, testFKPass} {
		if strings.Contains(h.logs.String(), secret) {
			t.Errorf("the log holds a secret")
		}
	}
	files, _ := filepath.Glob(filepath.Join(h.dir, "outbox", "*.eml"))
	mail, _ := os.ReadFile(files[0])
	if !bytes.Contains(mail, []byte("ann@example.com")) || !bytes.Contains(mail, []byte("https://site.example/login")) {
		t.Fatalf("welcome email: %s", mail)
	}
}

func TestRestart_InTheMiddleOfAQueue(t *testing.T) {
	sim, u := newSim(t)
	dir := t.TempDir()
	h := start(t, dir, sim, u, func(c *serveConfig) { c.Wait = 100 * time.Millisecond })
	// Under load the add may be answered 202 after the 100 ms wait: the
	// fault below is for the webhooks after it.
	add := h.send("get", hook("add", "1"))
	h.eventually("the add processed", func() bool { return h.receipt(add.WebhookID).Status == "processed" })
	// FunnelKit goes down; webhooks for contact 1 queue up behind the first.
	sim.FailNext(funnelkit.EndpointContact, 1000, 503)
	var ids []string
	sim.SetContactTags(1, 3)
	for _, action := range []string{"update_tags", "update", "update_tags"} {
		a := h.send("form", hook(action, "1", "async", "1"))
		if a.Code != 202 {
			t.Fatalf("%s: %+v", action, a)
		}
		ids = append(ids, a.WebhookID)
	}
	h.eventually("the first webhook to be retrying", func() bool { return h.receipt(ids[0]).Status == "retrying" })
	if err := h.app.shutdown(); err != nil {
		t.Fatal(err)
	}
	// FunnelKit recovers; a new server on the same data processes the queue in order.
	sim.ClearFaults()
	h = start(t, dir, sim, u)
	for _, id := range ids {
		h.eventually("webhook "+id+" after the restart", func() bool { return h.receipt(id).Status == "processed" })
	}
	var order []string
	for _, e := range h.history(1) {
		if e.Type == "WebhookProcessed" {
			order = append(order, e.WebhookID)
		}
	}
	if !reflect.DeepEqual(order[1:], ids) {
		t.Fatalf("processed in order %v, want %v", order[1:], ids)
	}
	if u, _ := h.user(1); !reflect.DeepEqual(u.Tags, []domain.Tag{{ID: 3, Name: "Trial"}}) {
		t.Fatalf("user after the queue: %+v", u)
	}
}

func TestReadAPI(t *testing.T) {
	h := newHarness(t)
	h.send("get", hook("add", "1"))
	h.send("get", hook("add", "2"))
	h.send("get", hook("add", "5"))

	req, _ := nethttp.NewRequest("GET", h.base+"/api/users/1", nil)
	resp, err := nethttp.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("no token: %d", resp.StatusCode)
	}
	req.Header.Set("Authorization", "Bearer wrong")
	resp, _ = nethttp.DefaultClient.Do(req)
	resp.Body.Close()
	if resp.StatusCode != 401 {
		t.Fatalf("wrong token: %d", resp.StatusCode)
	}

	var page struct {
		Users []projections.User `json:"users"`
		Next  string             `json:"next"`
	}
	h.api("GET", "/api/users?limit=2", &page)
	if len(page.Users) != 2 || page.Next != "2" {
		t.Fatalf("page 1: %+v", page)
	}
	h.api("GET", "/api/users?limit=2&after="+page.Next, &page)
	if len(page.Users) != 1 || page.Users[0].ContactID != 5 || page.Next != "" {
		t.Fatalf("page 2: %+v", page)
	}
	h.api("GET", "/api/users?tag=1", &page)
	if len(page.Users) != 2 {
		t.Fatalf("tag 1: %+v", page)
	}
	var tags struct {
		Tags []projections.Tag `json:"tags"`
	}
	// An answer waits for the users view; the tags view follows on its own.
	wantTags := []projections.Tag{{ID: 1, Name: "Customer", Users: 2}, {ID: 2, Name: "VIP", Users: 1}, {ID: 3, Name: "Trial", Users: 1}}
	h.eventually("the tags view", func() bool {
		h.api("GET", "/api/tags", &tags)
		return reflect.DeepEqual(tags.Tags, wantTags)
	})
	h.api("GET", "/api/tags/3/users", &page)
	if len(page.Users) != 1 || page.Users[0].ContactID != 2 {
		t.Fatalf("tag 3 users: %+v", page)
	}
	for path, code := range map[string]int{
		"/api/users/99": 404, "/api/users/x": 400, "/api/users?limit=0": 400, "/api/users?tag=-1": 400,
		"/api/tags/99/users": 404, "/api/password-returns?status=lost": 400, "/api/webhooks/nope": 404, "/api/nothing": 404,
	} {
		if got := h.api("GET", path, nil); got != code {
			t.Errorf("%s: %d, want %d", path, got, code)
		}
	}
	// Rebuild through the API gives the same views.
	before, _ := h.user(1)
	var st map[string]any
	if code := h.api("POST", "/api/rebuild", &st); code != 202 {
		t.Fatalf("POST /api/rebuild: %d", code)
	}
	h.eventually("the rebuild", func() bool { h.api("GET", "/api/rebuild", &st); return st["status"] == "done" })
	after, _ := h.user(1)
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("user differs after rebuild:\n%+v\n%+v", before, after)
	}
	// Health.
	for _, path := range []string{"/healthz", "/readyz"} {
		resp, err = nethttp.Get(h.base + path)
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", path, resp, err)
		}
		resp.Body.Close()
	}
	// One structured log line per webhook, with its id as correlation id.
	found := false
	for _, line := range strings.Split(h.logs.String(), "\n") {
		var l struct {
			Msg       string   `json:"msg"`
			WebhookID string   `json:"webhook_id"`
			Action    string   `json:"action"`
			Outcome   string   `json:"outcome"`
			Duration  *float64 `json:"duration_seconds"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "webhook" && l.Action == "add" {
			if l.WebhookID == "" || l.Outcome != "processed" || l.Duration == nil {
				t.Fatalf("webhook log line: %s", line)
			}
			found = true
		}
	}
	if !found {
		t.Fatal("no webhook log line")
	}
}

func TestWelcomeEmail_OverRealSMTP_RetriedAfterATemporaryFailure(t *testing.T) {
	srv, err := smtptest.Start(smtptest.WithAuth("mailer", "smtp-secret-77"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	srv.FailNext(1, 451)
	h := newHarness(t, func(c *serveConfig) { c.SMTPURL = "smtp://mailer:smtp-secret-77@" + srv.Addr() })
	a := h.send("get", hook("add", "1", "send_notification", "yes"))
	if a.Code != 200 {
		t.Fatalf("add: %+v", a)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitDeadline)
	defer cancel()
	msgs, err := srv.WaitFor(ctx, 1)
	if err != nil {
		t.Fatalf("%v\n%s", err, h.logs.String())
	}
	body := string(msgs[0].Data)
	if msgs[0].To[0] != "ann@example.com" || !strings.Contains(body, "ann@example.com") || !strings.Contains(body, "https://site.example/login") {
		t.Fatalf("welcome email: %+v\n%s", msgs[0], body)
	}
	h.eventually("WelcomeEmailSent", func() bool { return count(h.history(1), "WelcomeEmailSent") == 1 })
	if hist := h.history(1); count(hist, "WelcomeEmailFailed") != 1 {
		t.Fatalf("the 451 is not in the history: %+v", hist)
	}
	// The generated password is not in the mail. Its return to FunnelKit
	// is another process manager's, which may come after the mail.
	h.eventually("the password returned", func() bool { c, _ := h.sim.Contact(1); return c.Fields[passwordFld] != "" })
	c, _ := h.sim.Contact(1)
	if pw := c.Fields[passwordFld]; pw == "" || strings.Contains(body, pw) {
		t.Fatalf("password %q and the mail", pw)
	}
	if strings.Contains(h.logs.String(), "smtp-secret-77") {
		t.Fatal("the SMTP password is in the log")
	}
	// No email without send_notification.
	h.send("get", hook("add", "5"))
	h.eventually("contact 5's user", func() bool { _, ok := h.user(5); return ok })
	if n := len(srv.Messages()); n != 1 {
		t.Fatalf("%d mails, want 1", n)
	}
}

func TestPasswordReturn_GivenUpAfterTheLimit_KeyDestroyed(t *testing.T) {
	h := newHarness(t, func(c *serveConfig) { c.ReturnAttempts = 3 })
	h.sim.FailNext(funnelkit.EndpointSetFields, 100, 503)
	h.send("get", hook("add", "1"))
	var pr struct {
		Returns []projections.PasswordReturn `json:"password_returns"`
	}
	h.eventually("the return to fail", func() bool {
		h.api("GET", "/api/password-returns?status=failed", &pr)
		return len(pr.Returns) == 1
	})
	if r := pr.Returns[0]; r.Attempts != 3 || !strings.Contains(r.LastError, "503") {
		t.Fatalf("failed return: %+v", r)
	}
	// The key is destroyed (right after the failure is recorded): the
	// sealed password in the log is unreadable.
	var keyID string
	var sealed []byte
	recs, _ := h.app.store.ReadStream(context.Background(), "contact-1")
	for _, r := range recs {
		if r.Type == "PasswordIssued" {
			var d struct {
				KeyID  string `json:"key_id"`
				Sealed []byte `json:"sealed"`
			}
			json.Unmarshal(r.Data, &d)
			keyID, sealed = d.KeyID, d.Sealed
		}
	}
	var err error
	h.eventually("the key to be destroyed", func() bool {
		_, err = h.app.keys.Unseal(context.Background(), keyID, sealed)
		return err != nil
	})
	if !errors.Is(err, keystore.ErrShredded) {
		t.Fatalf("unseal after giving up: %v", err)
	}
}

func TestEmailChange(t *testing.T) {
	h := newHarness(t)
	h.send("get", hook("add", "1"))
	h.send("get", hook("add", "2"))
	// Ann changes her address in FunnelKit.
	h.sim.SetEmail(1, "ann@new.example")
	a := h.send("get", hook("update", "1"))
	if a.User.Email != "ann@new.example" || a.User.Login != "ann@example.com" {
		t.Fatalf("after the change: %+v", a.User)
	}
	// The old address is free again: a new contact with it gets a new user.
	h.sim.PutContact(simulator.Contact{ID: 6, Email: "ann@example.com", FirstName: "Other"})
	a = h.send("get", hook("add", "6"))
	if a.Code != 200 || a.User == nil || a.User.UserID == "" {
		t.Fatalf("add with the freed address: %+v", a)
	}
	if u1, _ := h.user(1); u1.UserID == a.User.UserID {
		t.Fatal("the freed address linked Ann's user")
	}
	if a.User.Login == "ann@example.com" {
		t.Fatalf("login clash not resolved: %+v", a.User)
	}
	// An address held by another user is not taken.
	h.sim.SetEmail(1, "bob@example.com")
	a = h.send("get", hook("update", "1"))
	if a.User.Email != "ann@new.example" || !strings.Contains(a.Message, "belongs to another user") {
		t.Fatalf("taking Bob's address: %+v %+v", a, a.User)
	}
}

// Contacts 1 and 4 carry the same address. Whatever the interleaving, the
// address ends with exactly one user, and a moved user is never lost.
func TestSameEmail_TwoContactsConcurrently(t *testing.T) {
	for round := range 6 {
		h := newHarness(t)
		var wg sync.WaitGroup
		for _, c := range []string{"1", "4"} {
			wg.Add(1)
			go func() { defer wg.Done(); h.send("get", hook("add", c)) }()
		}
		wg.Wait()
		defer func() {
			if t.Failed() {
				for _, l := range strings.Split(h.logs.String(), "\n") {
					if strings.Contains(l, "ERROR") {
						t.Log(l)
					}
				}
			}
		}()
		created := count(h.history(1), "UserCreated") + count(h.history(4), "UserCreated")
		u1, ok1 := h.user(1)
		u4, ok4 := h.user(4)
		if created != 1 || ok1 == ok4 {
			t.Fatalf("round %d: %d users created; contact 1 has a user: %v, contact 4: %v", round, created, ok1, ok4)
		}
		owner := u1
		if ok4 {
			owner = u4
		}
		// Move it back and forth while webhooks for both contacts arrive.
		for _, c := range []string{"1", "4"} {
			wg.Add(2)
			go func() { defer wg.Done(); h.send("form", hook("add", c)) }()
			go func() { defer wg.Done(); h.send("json", hook("update_tags", c)) }()
		}
		wg.Wait()
		u1, ok1 = h.user(1)
		u4, ok4 = h.user(4)
		if ok1 == ok4 {
			for _, c := range []int{1, 4} {
				for _, e := range h.history(c) {
					t.Logf("contact %d: %d %d %s %s %s", c, e.Position, e.Version, e.Type, e.WebhookID, e.Data)
				}
			}
			t.Fatalf("round %d: contact 1 has a user: %v, contact 4: %v", round, ok1, ok4)
		}
		now := u1
		if ok4 {
			now = u4
		}
		if now.UserID != owner.UserID || count(h.history(1), "UserCreated")+count(h.history(4), "UserCreated") != 1 {
			for _, c := range []int{1, 4} {
				for _, e := range h.history(c) {
					t.Logf("contact %d: %d %d %s %s %s", c, e.Position, e.Version, e.Type, e.WebhookID, e.Data)
				}
			}
			t.Fatalf("round %d: the user was replaced: %s then %s", round, owner.UserID, now.UserID)
		}
	}
}

func TestPasswordReturn_OneSlowContactDoesNotHoldBackOthers(t *testing.T) {
	h := newHarness(t, func(c *serveConfig) { c.FunnelKitTimeout = 8 * time.Second })
	h.sim.Hang(funnelkit.EndpointSetFields, 1) // contact 1's return hangs until the timeout
	h.send("get", hook("add", "1"))
	h.eventually("contact 1's return to be under way", func() bool { return h.sim.RequestsTo(funnelkit.EndpointSetFields) == 1 })
	h.send("get", hook("add", "2"))
	status := func(id int) string {
		var pr struct {
			Returns []projections.PasswordReturn `json:"password_returns"`
		}
		h.api("GET", "/api/password-returns", &pr)
		for _, r := range pr.Returns {
			if int(r.ContactID) == id {
				return r.Status
			}
		}
		return ""
	}
	h.eventually("contact 2's password to be returned", func() bool { return status(2) == "returned" })
	if s := status(1); s != "pending" {
		t.Fatalf("contact 1's return is %q while FunnelKit still hangs on it", s)
	}
}

func TestPasswordReturn_ResumesAfterARestart(t *testing.T) {
	sim, u := newSim(t)
	dir := t.TempDir()
	h := start(t, dir, sim, u, func(c *serveConfig) {
		c.RetryInitial, c.RetryMax, c.ReturnAttempts = 20*time.Millisecond, 20*time.Millisecond, 1000
	})
	sim.FailNext(funnelkit.EndpointSetFields, 100000, 503)
	h.send("get", hook("add", "1"))
	h.eventually("failed attempts", func() bool { return count(h.history(1), "PasswordReturnFailed") >= 2 })
	if err := h.app.shutdown(); err != nil {
		t.Fatal(err)
	}
	sim.ClearFaults()
	h = start(t, dir, sim, u)
	h.eventually("the return after the restart", func() bool { return count(h.history(1), "PasswordReturned") == 1 })
	if parked, _ := h.app.views.Parked(context.Background(), ""); len(parked) != 0 {
		t.Fatalf("the stop parked %+v", parked)
	}
	c, _ := sim.Contact(1)
	if len(c.Fields[passwordFld]) < 16 {
		t.Fatalf("field %s: %q", passwordFld, c.Fields[passwordFld])
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	nethttp "net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/funnelkit/simulator"
	"github.com/usersync/usersync/projections"
)

var usersyncBin struct {
	once sync.Once
	path string
	err  error
}

// buildUsersync builds the real usersync binary once for the package's
// tests.
func buildUsersync(t *testing.T) string {
	t.Helper()
	usersyncBin.once.Do(func() {
		dir, err := os.MkdirTemp("", "usersync-load-test-")
		if err != nil {
			usersyncBin.err = err
			return
		}
		usersyncBin.path = filepath.Join(dir, "usersync")
		out, err := exec.Command("go", "build", "-o", usersyncBin.path, "github.com/usersync/usersync/cmd/usersync").CombinedOutput()
		if err != nil {
			usersyncBin.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if usersyncBin.err != nil {
		t.Fatal(usersyncBin.err)
	}
	return usersyncBin.path
}

func TestMain(m *testing.M) {
	code := m.Run()
	if usersyncBin.path != "" {
		_ = os.RemoveAll(filepath.Dir(usersyncBin.path))
	}
	os.Exit(code)
}

func TestLoad_SimulatorAndServe_ProcessesEveryWebhook(t *testing.T) {
	// Given the real usersync, started by the tool on a FunnelKit simulator.
	bin := buildUsersync(t)
	// When 200 async webhooks of every action and encoding go to 40 contacts.
	rep, code, stderr := runLoad(t, "--serve", bin, "--crm-latency", "5ms", "--contacts", "40",
		"--mix", "add=40,update=30,update_tags=30", "--skew", "seq", "--method", "mixed", "--async",
		"--requests", "200", "--connections", "8", "--drain-timeout", "45s")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	// Then every one was recorded, and followed until processed.
	if rep.Sent != 200 || rep.Answered != 200 || rep.Statuses["202"] != 200 || len(rep.Errors) != 0 {
		t.Fatalf("sent %d, answered %d, statuses %v, errors %v", rep.Sent, rep.Answered, rep.Statuses, rep.Errors)
	}
	d := rep.Drain
	if d == nil || d.Followed != 200 || d.Unfinished != 0 {
		t.Fatalf("drain %+v, want 200 followed and none unfinished", d)
	}
	final := uint64(0)
	for _, n := range d.Final {
		final += n
	}
	// The first pass over the contacts is in turn, so an update may come
	// before its contact's add: ignored ("No matching user found").
	if final != 200 || d.Final["failed"] != 0 || d.Final["processed"] < 100 {
		t.Errorf("final %v, want 200 processed or ignored, none failed", d.Final)
	}
	if rep.CRMRequests == 0 || !strings.HasPrefix(rep.Target, "http://127.0.0.1:") {
		t.Errorf("target %s, %d FunnelKit requests", rep.Target, rep.CRMRequests)
	}
}

func TestSeed_ServerStartedOnTheSeededStoreServesItsUsers(t *testing.T) {
	bin := buildUsersync(t)
	data := t.TempDir()
	// Given a seeded store of 30 users with 6 webhooks each.
	var out strings.Builder
	if code := run(context.Background(), []string{"seed", "--data", data, "--users", "30", "--webhooks-per-user", "6",
		"--first-contact", "11", "--writers", "8", "--hash-cost", "4", "--progress", "off"}, &out, io.Discard); code != 0 {
		t.Fatalf("seed exit %d: %s", code, out.String())
	}
	if !strings.Contains(out.String(), "seeded 30 users") || !strings.Contains(out.String(), "events/s") {
		t.Errorf("seed said %q", out.String())
	}
	// And its process managers have handled every seeded event (nothing to
	// catch up at the start).
	views, err := projections.Open(context.Background(), filepath.Join(data, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range command.ProcessNames() {
		if pos, err := views.Checkpoint(context.Background(), name); err != nil || pos != 30*21 {
			t.Errorf("checkpoint of %s = %d, %v; want %d (30 users × 21 events)", name, pos, err, 30*21)
		}
	}
	if err := views.Close(); err != nil {
		t.Fatal(err)
	}
	// And a second seed into the same directory is refused.
	var again strings.Builder
	if code := run(context.Background(), []string{"seed", "--data", data, "--users", "1", "--progress", "off"}, io.Discard, &again); code != 1 ||
		!strings.Contains(again.String(), "seed a new data directory") {
		t.Errorf("second seed: exit %d, %q; want a refusal", code, again.String())
	}
	// When usersync serve starts on it (through the tool's world).
	cfg, err := parseLoad([]string{"--serve", bin, "--serve-data", data, "--contacts", "30", "--first-contact", "11", "--crm-latency", "0s"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w, err := startWorld(ctx, cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := w.close(io.Discard); err != nil {
			t.Error(err)
		}
	}()
	// Then it answers a seeded user, with its history's last tags.
	user := waitUser(ctx, t, w, 25)
	if user.Email != "c25@example.com" || user.Login != "c25@example.com" || user.Role != "subscriber" {
		t.Errorf("user 25 = %+v", user)
	}
	wantTags := tagSet(contactTags(25, 4)) // 5 later webhooks, 4 of which changed the tags
	if fmt.Sprint(user.Tags) != fmt.Sprint(wantTags) {
		t.Errorf("user 25 tags %v, want %v", user.Tags, wantTags)
	}
	// And an update webhook for a seeded contact finds its user (the
	// reservations and the contact agree with the simulator).
	rep := sendOne(ctx, t, w, "update", 30)
	if !rep.Success || rep.Status != "processed" {
		t.Errorf("update of seeded contact 30: %+v", rep)
	}
	// And an add for a new contact with a seeded user's address links that
	// user instead of creating a second one (the email reservation is there).
	w.sim.PutContact(simulator.Contact{ID: 99, Email: "c13@example.com", FirstName: "Load", LastName: "13", Country: "US"})
	rep = sendOne(ctx, t, w, "add", 99)
	if !rep.Success || rep.Message != "Linked the existing user with this email" {
		t.Errorf("add for a new contact with seeded user 13's address: %+v", rep)
	}
}

type seededUser struct {
	Email string `json:"email"`
	Login string `json:"login"`
	Role  string `json:"role"`
	Tags  []struct {
		ID   uint64 `json:"id"`
		Name string `json:"name"`
	} `json:"tags"`
}

// waitUser reads GET /api/users/{id} until it answers (the views may
// still be catching up after the start), within ctx.
func waitUser(ctx context.Context, t *testing.T, w *world, id int) seededUser {
	t.Helper()
	for {
		req, _ := nethttp.NewRequestWithContext(ctx, nethttp.MethodGet, fmt.Sprintf("%s/api/users/%d", w.target, id), nil)
		req.Header.Set("Authorization", "Bearer "+w.adminToken)
		resp, err := nethttp.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("GET /api/users/%d: %v", id, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == nethttp.StatusOK {
			var u seededUser
			if err := json.Unmarshal(body, &u); err != nil {
				t.Fatal(err)
			}
			return u
		}
		if resp.StatusCode != nethttp.StatusNotFound {
			t.Fatalf("GET /api/users/%d: %d %s", id, resp.StatusCode, body)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("GET /api/users/%d: still 404 when the test's time ran out", id)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func sendOne(ctx context.Context, t *testing.T, w *world, action string, contact int) webhookAnswer {
	t.Helper()
	u := fmt.Sprintf("%s/?wpf_action=%s&contact_id=%d&access_key=%s", w.target, action, contact, w.accessKey)
	req, _ := nethttp.NewRequestWithContext(ctx, nethttp.MethodGet, u, nil)
	resp, err := nethttp.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s webhook: %v", action, err)
	}
	defer resp.Body.Close()
	var a webhookAnswer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		t.Fatal(err)
	}
	return a
}

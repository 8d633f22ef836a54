package http

import (
	"context"
	"encoding/json"
	nethttp "net/http"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
)

// api sends an admin request to the server at base and decodes the answer.
func api(t *testing.T, method, url string, v any) int {
	t.Helper()
	req, err := nethttp.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer admin-token")
	resp, err := nethttp.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode
}

// POST /api/rebuild is the same rebuild as usersync rebuild: a process
// manager's checkpoint beyond the log's end goes back to it, and the log
// says so.
func TestRebuildAPI_MovesCheckpointsBeyondTheLogsEndBack(t *testing.T) {
	ctx := context.Background()
	logs := &syncBuffer{}
	cfg := testConfig(t, slogJSON(logs))
	for i := range 2 {
		raw, err := domain.Encode(domain.Envelope{Event: domain.RoleChanged{Old: "a", New: "b"}, OccurredAt: time.Unix(int64(i), 0)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cfg.Store.Append(ctx, "contact-1", domain.AnyVersion(), raw); err != nil {
			t.Fatal(err)
		}
	}
	if err := cfg.Views.SaveCheckpoint(ctx, command.WelcomeEmailName, 10); err != nil {
		t.Fatal(err)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	base := serve(t, s)
	var st map[string]any
	if code := api(t, "POST", base+"/api/rebuild", &st); code != nethttp.StatusAccepted {
		t.Fatalf("POST /api/rebuild: %d %v", code, st)
	}
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for api(t, "GET", base+"/api/rebuild", &st); st["status"] == "running"; api(t, "GET", base+"/api/rebuild", &st) {
		if time.Now().After(deadline) {
			t.Fatal("timed out waiting for the rebuild")
		}
		<-tick.C
	}
	if st["status"] != "done" || st["position"] != 2.0 {
		t.Fatalf("rebuild: %v", st)
	}
	if pos, err := cfg.Views.Checkpoint(ctx, command.WelcomeEmailName); err != nil || pos != 2 {
		t.Fatalf("checkpoint of %s after the rebuild: %d (%v), want 2", command.WelcomeEmailName, pos, err)
	}
	var found bool
	for _, line := range strings.Split(logs.String(), "\n") {
		var l struct {
			Level, Msg, Process string
			Position            uint64
			ResumesFrom         uint64 `json:"resumes_from"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && strings.Contains(l.Msg, "beyond the log's end") {
			found = l.Level == "WARN" && l.Process == command.WelcomeEmailName && l.Position == 10 && l.ResumesFrom == 2
			if !found {
				t.Errorf("log line %s", line)
			}
		}
	}
	if !found {
		t.Errorf("no log line for the moved checkpoint:\n%s", logs.String())
	}
}

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	nethttp "net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeUsersync is a loopback server that answers webhooks as usersync
// does (queued when async, else processed) and receipts from
// /api/webhooks/{id}: a webhook's receipt is queued for its first
// queuedLookups look-ups, then processed.
type fakeUsersync struct {
	queuedLookups int

	mu       sync.Mutex
	webhooks []url.Values
	lookups  map[string]int
}

func (f *fakeUsersync) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if id, ok := strings.CutPrefix(r.URL.Path, "/api/webhooks/"); ok {
		if r.Header.Get("Authorization") != "Bearer token" {
			w.WriteHeader(nethttp.StatusUnauthorized)
			return
		}
		f.lookups[id]++
		status := "processed"
		if f.lookups[id] <= f.queuedLookups {
			status = "queued"
		}
		_ = json.NewEncoder(w).Encode(map[string]string{"id": id, "status": status})
		return
	}
	body, _ := io.ReadAll(r.Body)
	rows := r.URL.Query()
	if r.Header.Get("Content-Type") == "application/json" {
		var obj map[string]string
		_ = json.Unmarshal(body, &obj)
		for k, v := range obj {
			rows.Set(k, v)
		}
	} else if len(body) > 0 {
		form, _ := url.ParseQuery(string(body))
		for k, v := range form {
			rows[k] = v
		}
	}
	f.webhooks = append(f.webhooks, rows)
	id := fmt.Sprintf("wh-%d", len(f.webhooks))
	if rows.Get("access_key") != "key" {
		w.WriteHeader(nethttp.StatusForbidden)
		_ = json.NewEncoder(w).Encode(map[string]any{"success": false, "message": "Invalid Access Key"})
		return
	}
	if rows.Get("async") == "1" {
		w.WriteHeader(nethttp.StatusAccepted)
		_ = json.NewEncoder(w).Encode(map[string]any{"success": true, "message": "Queued", "webhook_id": id, "status": "queued"})
		return
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"success": true, "message": "User updated", "webhook_id": id, "status": "processed"})
}

func (f *fakeUsersync) received() []url.Values {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]url.Values(nil), f.webhooks...)
}

func startFake(t *testing.T, queuedLookups int) (*fakeUsersync, string) {
	t.Helper()
	f := &fakeUsersync{queuedLookups: queuedLookups, lookups: map[string]int{}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// runLoad runs the load command in-process and returns its JSON report.
func runLoad(t *testing.T, args ...string) (report, int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stdout, stderr strings.Builder
	code := run(ctx, append(args, "--json", "--progress", "off"), &stdout, &stderr)
	var rep report
	if err := json.Unmarshal([]byte(stdout.String()), &rep); err != nil {
		t.Fatalf("exit %d, no JSON report (%v):\n%s\nstderr:\n%s", code, err, stdout.String(), stderr.String())
	}
	return rep, code, stderr.String()
}

func TestLoad_FixedRate_SendsWhatTheScheduleHolds(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want int
	}{
		// 200/s over 500 ms: the schedule holds the requests intended at
		// 0, 5, … 495 ms, whatever the machine's speed.
		{"rate over a duration", []string{"--rate", "200", "--duration", "500ms", "--connections", "4"}, 100},
		{"rate up to a count", []string{"--rate", "1000/s", "--requests", "30", "--connections", "2"}, 30},
		{"flat out up to a count", []string{"--rate", "0", "--requests", "50", "--connections", "8"}, 50},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, target := startFake(t, 0)
			rep, code, stderr := runLoad(t, append([]string{"--target", target, "--access-key", "key", "--contacts", "10"}, tt.args...)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			if got := len(f.received()); got != tt.want || rep.Sent != uint64(tt.want) || rep.Answered != uint64(tt.want) {
				t.Errorf("server got %d, report sent %d answered %d; want %d", got, rep.Sent, rep.Answered, tt.want)
			}
			if rep.Statuses["200"] != uint64(tt.want) || rep.Answers["processed"] != uint64(tt.want) || len(rep.Errors) != 0 {
				t.Errorf("statuses %v, answers %v, errors %v", rep.Statuses, rep.Answers, rep.Errors)
			}
			if rep.Latency.Max <= 0 || rep.Latency.P50 > rep.Latency.P99 || rep.Latency.P99 > rep.Latency.Max {
				t.Errorf("latency %+v is not ordered", rep.Latency)
			}
		})
	}
}

func TestLoad_Webhooks_HaveFunnelKitsShape(t *testing.T) {
	// Given a mixed run of async webhooks in all three encodings.
	f, target := startFake(t, 2)
	rep, code, stderr := runLoad(t, "--target", target, "--access-key", "key", "--admin-token", "token",
		"--method", "mixed", "--async", "--mix", "add=1,update=1,update_tags=1", "--skew", "seq", "--contacts", "7", "--first-contact", "100",
		"--requests", "21", "--connections", "1", "--poll-interval", "1ms")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	got := f.received()
	if len(got) != 21 {
		t.Fatalf("server got %d webhooks, want 21", len(got))
	}
	for i, rows := range got {
		// Then each carries the rows FunnelKit sends, the contacts taken in turn.
		if want := fmt.Sprint(100 + i%7); rows.Get("contact_id") != want {
			t.Errorf("webhook %d: contact_id %q, want %q", i, rows.Get("contact_id"), want)
		}
		if a := rows.Get("wpf_action"); a != "add" && a != "update" && a != "update_tags" {
			t.Errorf("webhook %d: wpf_action %q", i, a)
		}
		if rows.Get("access_key") != "key" || rows.Get("async") != "1" {
			t.Errorf("webhook %d: rows %v lack the access key or async=1", i, rows)
		}
	}
	// And every queued webhook was followed until processed.
	if d := rep.Drain; d == nil || d.Followed != 21 || d.Final["processed"] != 21 || d.Unfinished != 0 || d.Lookups < 21*3 {
		t.Errorf("drain %+v; want 21 followed and processed, each looked up 3 times", rep.Drain)
	}
}

func TestLoad_Drain_ReportsWhatIsNotFinishedInTime(t *testing.T) {
	_, target := startFake(t, 1_000_000)
	rep, code, _ := runLoad(t, "--target", target, "--access-key", "key", "--admin-token", "token", "--async",
		"--requests", "5", "--drain-timeout", "100ms", "--poll-interval", "10ms")
	if code != 1 || rep.Drain == nil || rep.Drain.Unfinished != 5 {
		t.Fatalf("exit %d, drain %+v; want exit 1 and 5 unfinished", code, rep.Drain)
	}
}

func TestLoad_ErrorsAreCountedByKind(t *testing.T) {
	// Given a wrong access key, and a closed port.
	_, target := startFake(t, 0)
	rep, code, _ := runLoad(t, "--target", target, "--access-key", "wrong", "--requests", "3", "--connections", "1")
	if code != 0 || rep.Errors["HTTP 403"] != 3 || rep.Messages["Invalid Access Key"] != 3 {
		t.Errorf("wrong key: exit %d, errors %v, messages %v; want 3 × HTTP 403", code, rep.Errors, rep.Messages)
	}
	closed := httptest.NewServer(nethttp.NotFoundHandler())
	closed.Close()
	rep, _, _ = runLoad(t, "--target", closed.URL, "--access-key", "key", "--requests", "2", "--connections", "1")
	if rep.Errors["connection refused"] != 2 || rep.Answered != 0 {
		t.Errorf("closed port: errors %v, answered %d; want 2 × connection refused", rep.Errors, rep.Answered)
	}
}

func TestPicker_Skews(t *testing.T) {
	const n, draws = 1000, 20000
	tests := []struct {
		skew string
		// check gets how often each contact (0-based) was drawn.
		check func(t *testing.T, hits []int)
	}{
		{"seq", func(t *testing.T, hits []int) {
			for c, h := range hits {
				if h != draws/n {
					t.Fatalf("contact %d drawn %d times, want %d", c, h, draws/n)
				}
			}
		}},
		{"hot=0.01/0.5", func(t *testing.T, hits []int) {
			hot := 0
			for _, h := range hits[:10] {
				hot += h
			}
			if hot < draws*45/100 || hot > draws*55/100 {
				t.Errorf("the 10 hot contacts got %d of %d draws, want about half", hot, draws)
			}
		}},
		{"zipf=1.1", func(t *testing.T, hits []int) {
			if hits[0] < 5*hits[99] {
				t.Errorf("zipf: contact 1 drawn %d times, contact 100 %d: want a strong skew", hits[0], hits[99])
			}
		}},
		{"uniform", func(t *testing.T, hits []int) {
			for c, h := range hits {
				if h == 0 || h > 4*draws/n {
					t.Fatalf("uniform: contact %d drawn %d times", c, h)
				}
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.skew, func(t *testing.T) {
			s, err := parseSkew(tt.skew)
			if err != nil {
				t.Fatal(err)
			}
			p := newPicker(s, 5, n, rand.New(rand.NewPCG(7, 8)))
			hits := make([]int, n)
			for i := range uint64(draws) {
				c := p.pick(i)
				if c < 5 || c >= 5+n {
					t.Fatalf("picked contact %d outside 5…%d", c, 5+n-1)
				}
				hits[c-5]++
			}
			tt.check(t, hits)
		})
	}
}

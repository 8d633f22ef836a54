package http

import (
	"encoding/json"
	nethttp "net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// counter is a Refused hook that counts.
type counter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counter) refused(endpoint, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[endpoint+" "+reason]++
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[key]
}

// do serves one request from source through s, as the real server would.
func do(s nethttp.Handler, source, method, target, auth string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, target, nil)
	r.RemoteAddr = source + ":40000"
	if auth != "" {
		r.Header.Set("Authorization", auth)
	}
	w := httptest.NewRecorder()
	s.ServeHTTP(w, r)
	return w
}

func hookURL(key string) string {
	return "/?" + url.Values{"wpf_action": {"test"}, "access_key": {key}}.Encode()
}

// Wrong keys from one source are throttled after the burst; right keys
// from that source and any other pass; the admin token shares the bucket;
// the refused lines are bounded and the rest summed up; every refusal is
// counted; no secret is in the log.
func TestThrottle_WrongSecretsPerSource(t *testing.T) {
	logs := &syncBuffer{}
	cfg := testConfig(t, slogJSON(logs))
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	lim, err := NewFailureLimiter(FailureLimiterConfig{Rate: 1, Burst: 10, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	counts := &counter{}
	cfg.AuthFailures, cfg.Now, cfg.RefusedLogsPerSecond, cfg.Refused = lim, clock.Now, 5, counts.refused
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	statuses := map[int]int{}
	for i := range 220 {
		w := do(s, "192.0.2.1", "GET", hookURL("guess-"+string(rune('a'+i%26))), "")
		statuses[w.Code]++
		if w.Code == nethttp.StatusTooManyRequests {
			var a webhookAnswer
			if err := json.Unmarshal(w.Body.Bytes(), &a); err != nil || a.Success || !strings.Contains(a.Message, "Too many wrong access keys from this address: try again in 1 s") {
				t.Fatalf("429 answer %s (%v)", w.Body, err)
			}
			if got := w.Header().Get("Retry-After"); got != "1" {
				t.Fatalf("Retry-After %q, want 1", got)
			}
		}
		if i%20 == 0 {
			for _, source := range []string{"192.0.2.1", "192.0.2.2"} {
				if w := do(s, source, "GET", hookURL("access-key"), ""); w.Code != nethttp.StatusOK {
					t.Fatalf("right key from %s after %d wrong ones: %d %s", source, i+1, w.Code, w.Body)
				}
			}
		}
	}
	if statuses[403] != 10 || statuses[429] != 210 || len(statuses) != 2 {
		t.Fatalf("220 wrong keys from one source answered %v; want 10 403 (the burst) and 210 429", statuses)
	}
	if w := do(s, "192.0.2.2", "GET", hookURL("guess"), ""); w.Code != nethttp.StatusForbidden {
		t.Fatalf("a wrong key from another source: %d, want 403", w.Code)
	}
	// The admin token shares the source's bucket; its scheme's case does not matter.
	if w := do(s, "192.0.2.1", "GET", "/api/tags", "Bearer wrong-token"); w.Code != nethttp.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" ||
		!strings.Contains(w.Body.String(), "too many wrong admin tokens from this address") {
		t.Fatalf("a wrong admin token from the throttled source: %d %q %s", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	if w := do(s, "192.0.2.1", "GET", "/api/tags", "bearer admin-token"); w.Code != nethttp.StatusOK {
		t.Fatalf("the right admin token from the throttled source: %d %s", w.Code, w.Body)
	}
	if w := do(s, "192.0.2.3", "GET", "/api/tags", "Bearer wrong-token"); w.Code != nethttp.StatusUnauthorized {
		t.Fatalf("a wrong admin token from another source: %d", w.Code)
	}
	// Once the bucket refills, a wrong key is a 403 again.
	clock.Add(time.Second)
	if w := do(s, "192.0.2.1", "GET", hookURL("guess"), ""); w.Code != nethttp.StatusForbidden {
		t.Fatalf("a wrong key 1s later: %d, want 403", w.Code)
	}
	for key, want := range map[string]int{"webhook wrong_secret": 12, "webhook throttled": 210, "api throttled": 1, "api wrong_secret": 1} {
		if got := counts.get(key); got != want {
			t.Errorf("refused %s counted %d, want %d", key, got, want)
		}
	}
	// 223 refused requests with the clock standing still, then one a
	// second later: 5 lines, one line for the 218 others once their second
	// is over (more than one should the second end in the middle), and the
	// last one.
	var refusedLines, suppressed int
	eventually(t, "the summary of the refused lines", func() bool {
		refusedLines, suppressed = 0, 0
		for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var line map[string]any
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("log line %q: %v", l, err)
			}
			switch {
			case line["msg"] == "refused requests not logged":
				suppressed += int(line["suppressed"].(float64))
			case line["webhook_id"] == nil:
				refusedLines++
			}
		}
		return suppressed >= 218
	})
	if refusedLines != 6 || suppressed != 218 {
		t.Errorf("%d refused lines and %d suppressed, want 6 and 218:\n%s", refusedLines, suppressed, logs)
	}
	for _, secret := range []string{"access-key", "admin-token", "guess", "wrong-token"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("%q is in the log", secret)
		}
	}
}

// eventually waits for cond, up to 5 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRequireAdmin_BearerScheme(t *testing.T) {
	s, err := New(testConfig(t, quietLog()))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		header string
		want   int
	}{
		{"Bearer admin-token", 200},
		{"bearer admin-token", 200},
		{"BEARER admin-token", 200},
		{"  Bearer   admin-token  ", 200},
		{"Bearer wrong", 401},
		{"Basic admin-token", 401},
		{"Bearer", 401},
		{"Beareradmin-token", 401},
		{"admin-token", 401},
		{"", 401},
	}
	for _, tt := range tests {
		t.Run(tt.header, func(t *testing.T) {
			w := do(s, "192.0.2.1", "GET", "/api/tags", tt.header)
			if w.Code != tt.want {
				t.Fatalf("Authorization %q: %d %s, want %d", tt.header, w.Code, w.Body, tt.want)
			}
			if tt.want == 401 && w.Header().Get("WWW-Authenticate") == "" {
				t.Fatal("a 401 without WWW-Authenticate")
			}
		})
	}
}

// Requests refused before the key check are counted by reason.
func TestRefused_CountedByReason(t *testing.T) {
	counts := &counter{}
	cfg := testConfig(t, quietLog())
	cfg.Refused = counts.refused
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for target, want := range map[string]int{
		"/?contact_id=1":                          500,
		"/?wpf_action=add&x=%00":                  400,
		"/?wpf_action=add&access_key=nope":        403,
		"/?wpf_action=test&access_key=access-key": 200,
	} {
		if w := do(s, "192.0.2.1", "GET", target, ""); w.Code != want {
			t.Errorf("GET %s: %d, want %d", target, w.Code, want)
		}
	}
	for key, want := range map[string]int{"webhook no_action": 1, "webhook unreadable": 1, "webhook wrong_secret": 1} {
		if got := counts.get(key); got != want {
			t.Errorf("%s counted %d, want %d", key, got, want)
		}
	}
	if len(counts.n) != 3 {
		t.Errorf("counted %v", counts.n)
	}
}

package main

// Abuse proofs: the real server (startApp) on loopback, attacked the ways
// issue 9 lists. The figures they measure are logged (go test -v -run
// Abuse) for docs/reliability.md.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

// clientFrom is an HTTP client whose connections come from the loopback
// address ip (127.0.0.2 is as much loopback as 127.0.0.1 on Linux).
func clientFrom(t *testing.T, ip string) *nethttp.Client {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Skipf("cannot use the loopback address %s here: %v", ip, err)
	}
	ln.Close()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	tr := &nethttp.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16}
	t.Cleanup(tr.CloseIdleConnections)
	return &nethttp.Client{Transport: tr, Timeout: 10 * time.Second}
}

// call sends one request and returns its status, Retry-After and body.
func call(t *testing.T, c *nethttp.Client, method, target, auth string, params url.Values) (int, string, string) {
	t.Helper()
	var body io.Reader
	if method == "POST" {
		body = strings.NewReader(params.Encode())
	} else if params != nil {
		target += "?" + params.Encode()
	}
	req, err := nethttp.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	if method == "POST" {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), string(b)
}

func form(kv ...string) url.Values {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

// TestAbuse_KeyGuessingIsThrottledGoodWebhooksPass: 220 wrong keys from
// one address, then a flood of 2,000 more, while real webhooks and API
// calls with the right secrets from that address and another keep being
// answered 200. Then no secret is in the log, the events or the metrics.
func TestAbuse_KeyGuessingIsThrottledGoodWebhooksPass(t *testing.T) {
	h := newHarness(t, func(c *serveConfig) {
		// A refill far slower than the test, so that the counts are exact.
		c.AuthFailRate, c.AuthFailBurst = 0.01, 10
		c.LogLevel = "info"
	})
	attacker, other := clientFrom(t, "127.0.0.1"), clientFrom(t, "127.0.0.2")
	statuses := map[int]int{}
	good := map[string]map[int]int{"127.0.0.1": {}, "127.0.0.2": {}}
	for i := range 220 {
		code, retry, body := call(t, attacker, "GET", h.base+"/", "", form("wpf_action", "add", "contact_id", "1", "access_key", fmt.Sprintf("guess-%03d", i)))
		statuses[code]++
		if code == 429 && (retry == "" || !strings.Contains(body, "Too many wrong access keys")) {
			t.Fatalf("429 with Retry-After %q: %s", retry, body)
		}
		if i%22 == 0 {
			for ip, c := range map[string]*nethttp.Client{"127.0.0.1": attacker, "127.0.0.2": other} {
				code, _, body := call(t, c, "POST", h.base+"/", "", form("wpf_action", "update", "contact_id", "1", "access_key", testKey, "first_name", "Ann"))
				good[ip][code]++
				if code != 200 && code != 202 {
					t.Fatalf("a right webhook from %s: %d %s", ip, code, body)
				}
				if code, _, body := call(t, c, "GET", h.base+"/api/tags", "bearer "+testToken, nil); code != 200 {
					t.Fatalf("the right admin token from %s: %d %s", ip, code, body)
				}
			}
		}
	}
	t.Logf("220 wrong keys from 127.0.0.1 (burst 10): %d answered 403, %d answered 429; right webhooks from 127.0.0.1 %v, from 127.0.0.2 %v",
		statuses[403], statuses[429], good["127.0.0.1"], good["127.0.0.2"])
	if statuses[403] != 10 || statuses[429] != 210 {
		t.Fatalf("220 wrong keys answered %v; want 10 403 and 210 429", statuses)
	}
	if code, _, _ := call(t, other, "GET", h.base+"/", "", form("wpf_action", "add", "access_key", "guess")); code != 403 {
		t.Fatalf("a wrong key from the other address: %d, want 403", code)
	}
	if code, retry, _ := call(t, attacker, "GET", h.base+"/api/users", "Bearer guess", nil); code != 429 || retry == "" {
		t.Fatalf("a wrong admin token from the throttled address: %d (Retry-After %q), want 429", code, retry)
	}

	// A flood: 2,000 wrong keys from 8 connections at once.
	before := len(h.logs.String())
	start := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	flood := map[int]int{}
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 250 {
				code, _, _ := call(t, attacker, "GET", h.base+"/", "", form("wpf_action", "add", "access_key", fmt.Sprintf("flood-%d-%d", g, i)))
				mu.Lock()
				flood[code]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if code, _, _ := call(t, attacker, "POST", h.base+"/", "", form("wpf_action", "test", "access_key", testKey)); code != 200 {
		t.Fatalf("the right key after the flood: %d", code)
	}
	// The suppressed lines are summed up within a second of the flood.
	wantRefused := 220 + 2 + 2000
	var refusedLines, suppressed int
	h.eventually("the summary of the refused lines", func() bool {
		refusedLines, suppressed = 0, 0
		for _, l := range strings.Split(strings.TrimSpace(h.logs.String()), "\n") {
			var line map[string]any
			if json.Unmarshal([]byte(l), &line) != nil {
				continue
			}
			switch {
			case line["msg"] == "refused requests not logged":
				suppressed += int(line["suppressed"].(float64))
			case (line["msg"] == "webhook" || line["msg"] == "api request refused") && line["webhook_id"] == nil:
				refusedLines++
			}
		}
		return refusedLines+suppressed == wantRefused
	})
	floodLog := len(h.logs.String()) - before
	t.Logf("flood of 2,000 wrong keys in %s (%.0f/s): %v; log grew %d bytes; %d refused requests in all, %d logged, %d summed up",
		elapsed.Round(time.Millisecond), 2000/elapsed.Seconds(), flood, floodLog, wantRefused, refusedLines, suppressed)
	if flood[429] != 2000 {
		t.Errorf("flood answered %v; want all 2,000 429", flood)
	}
	if maxLines := 10 * (int(time.Since(start).Seconds()) + 3); refusedLines > maxLines {
		t.Errorf("%d refused lines logged; at 10 a second it should be at most %d", refusedLines, maxLines)
	}

	fams, text := scrape(t, h.app.addr)
	refused := fams["usersync_requests_refused_total"]
	webhookThrottled := refused.get(map[string]string{"endpoint": "webhook", "reason": "throttled"})
	webhookWrong := refused.get(map[string]string{"endpoint": "webhook", "reason": "wrong_secret"})
	apiThrottled := refused.get(map[string]string{"endpoint": "api", "reason": "throttled"})
	t.Logf("usersync_requests_refused_total: webhook throttled %v, webhook wrong_secret %v, api throttled %v", webhookThrottled, webhookWrong, apiThrottled)
	if webhookThrottled != 2210 || webhookWrong != 11 || apiThrottled != 1 {
		t.Errorf("refused metric: webhook throttled %v (want 2210), wrong_secret %v (want 11), api throttled %v (want 1)", webhookThrottled, webhookWrong, apiThrottled)
	}
	assertNoSecrets(t, h, text)
}

// assertNoSecrets: neither the access key nor the admin token is in the
// log, any event or the metrics.
func assertNoSecrets(t *testing.T, h *harness, metricsText string) {
	t.Helper()
	ctx := context.Background()
	var events int
	for after := uint64(0); ; {
		batch, err := h.app.store.ReadAll(ctx, after, 500)
		if err != nil {
			t.Fatal(err)
		}
		if len(batch) == 0 {
			break
		}
		for _, e := range batch {
			events++
			raw, _ := json.Marshal(e)
			for _, secret := range []string{testKey, testToken} {
				if strings.Contains(string(raw), secret) {
					t.Errorf("event %d (%s) holds a secret: %s", e.Position, e.Type, raw)
				}
			}
			after = e.Position
		}
	}
	if events == 0 {
		t.Fatal("no events read: the check would prove nothing")
	}
	for _, secret := range []string{testKey, testToken} {
		if strings.Contains(h.logs.String(), secret) {
			t.Errorf("the log holds a secret")
		}
		if strings.Contains(metricsText, secret) {
			t.Errorf("the metrics hold a secret")
		}
	}
}

// TestAbuse_SlowClientsAreDropped: a client that sends its headers, or
// its body, slower than the server's timeouts is dropped, while another
// client is served. The timeouts are the ones of newWebServer (checked to
// be those of the running server) shortened so that the test is fast; the
// handler is the running server's.
func TestAbuse_SlowClientsAreDropped(t *testing.T) {
	h := newHarness(t)
	hs := h.app.servers[len(h.app.servers)-1]
	if hs.ReadHeaderTimeout != 10*time.Second || hs.ReadTimeout != 30*time.Second || hs.IdleTimeout != 2*time.Minute {
		t.Fatalf("the server's timeouts are %s/%s/%s; docs/operations.md says 10s/30s/2m", hs.ReadHeaderTimeout, hs.ReadTimeout, hs.IdleTimeout)
	}
	fast := newWebServer(hs.Handler)
	fast.ReadHeaderTimeout, fast.ReadTimeout = 300*time.Millisecond, 600*time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go fast.Serve(ln)
	t.Cleanup(func() { fast.Close() })
	addr := ln.Addr().String()

	tests := []struct {
		name  string
		start string // sent at once
		drip  string // then a byte every 50 ms
		want  time.Duration
		// wantAnswer is the start of what the server answers, "" when it
		// closes without an answer.
		wantAnswer string
	}{
		{"headers", "GET /healthz HTTP/1.1\r\nHost: usersync\r\n", strings.Repeat("X-Slow: 1\r\n", 5), fast.ReadHeaderTimeout, ""},
		{"body", "POST / HTTP/1.1\r\nHost: usersync\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 200\r\n\r\nwpf_action=test&access_key=" + testKey + "&",
			strings.Repeat("a", 60), fast.ReadTimeout, "HTTP/1.1 400"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			began := time.Now()
			if _, err := io.WriteString(conn, tt.start); err != nil {
				t.Fatal(err)
			}
			closed := make(chan string, 1)
			go func() {
				_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
				b, _ := io.ReadAll(bufio.NewReader(conn))
				closed <- string(b)
			}()
			tick := time.NewTicker(50 * time.Millisecond)
			defer tick.Stop()
			var answer string
			dropped := false
		drip:
			for i := 0; i < len(tt.drip); i++ {
				select {
				case answer = <-closed:
					dropped = true
					break drip
				case <-tick.C:
					if _, err := conn.Write([]byte{tt.drip[i]}); err != nil {
						answer, dropped = <-closed, true
						break drip
					}
				}
			}
			took := time.Since(began)
			// A normal client is served meanwhile and after.
			if code, _, _ := call(t, nethttp.DefaultClient, "GET", "http://"+addr+"/healthz", "", nil); code != 200 {
				t.Fatalf("a normal client got %d", code)
			}
			t.Logf("slow %s dropped after %s (timeout %s); answer %q", tt.name, took.Round(time.Millisecond), tt.want, firstLine(answer))
			// The drip lasts 2.75 s (headers) or 3 s (body), less than the
			// client's own 5 s read deadline: the server must have dropped
			// the client before it ended.
			if !dropped {
				t.Fatalf("the slow client was still connected after %s (timeout %s)", took, tt.want)
			}
			if !strings.HasPrefix(answer, tt.wantAnswer) {
				t.Fatalf("answer %q, want it to start with %q", firstLine(answer), tt.wantAnswer)
			}
		})
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\r\n")
	return line
}

// TestAbuse_OversizedAndMalformedRequests: clear 4xx answers, nothing
// recorded.
func TestAbuse_OversizedAndMalformedRequests(t *testing.T) {
	h := newHarness(t)
	head, err := h.app.store.Head(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	many := "wpf_action=add&contact_id=1&access_key=" + testKey + strings.Repeat("&f=1", 10000)
	tests := []struct {
		name     string
		method   string
		query    string
		ctype    string
		body     string
		header   string // a header of this size
		want     int
		wantBody string
	}{
		{"a body over 1 MiB", "POST", "", "application/x-www-form-urlencoded", "wpf_action=add&access_key=" + testKey + "&x=" + strings.Repeat("y", 2<<20), "", 400, "body is larger than 1048576 bytes"},
		{"headers of 2 MiB", "GET", "wpf_action=test", "", "", "X-Big", 431, ""},
		{"10,001 query parameters", "GET", many, "", "", "", 400, "the query string has 10003 parameters, more than the 1000"},
		{"10,001 form fields", "POST", "", "application/x-www-form-urlencoded", many, "", 400, "the form body has 10003 parameters, more than the 1000"},
		{"a NUL byte in a query value", "GET", "wpf_action=add&contact_id=1&first_name=A%00&access_key=" + testKey, "", "", "", 400, `parameter \"first_name\" holds a NUL byte`},
		{"a NUL byte in a form value", "POST", "", "application/x-www-form-urlencoded", "wpf_action=add&contact_id=1&email=a%00@b.c&access_key=" + testKey, "", 400, `parameter \"email\" holds a NUL byte`},
		{"a NUL byte in a JSON value", "POST", "", "application/json", `{"wpf_action":"add","contact_id":"1","email":"a\u0000@b.c","access_key":"` + testKey + `"}`, "", 400, `parameter \"email\" holds a NUL byte`},
		{"invalid UTF-8 in a query value", "GET", "wpf_action=add&contact_id=1&last_name=Caf%E9&access_key=" + testKey, "", "", "", 400, `parameter \"last_name\" is not valid UTF-8`},
		{"invalid UTF-8 in a JSON body", "POST", "", "application/json", "{\"wpf_action\":\"add\",\"contact_id\":\"1\",\"last_name\":\"Caf\xe9\",\"access_key\":\"" + testKey + "\"}", "", 400, "the JSON body is not valid UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target := h.base + "/"
			if tt.query != "" {
				target += "?" + tt.query
			}
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			req, err := nethttp.NewRequest(tt.method, target, body)
			if err != nil {
				t.Fatal(err)
			}
			if tt.ctype != "" {
				req.Header.Set("Content-Type", tt.ctype)
			}
			if tt.header != "" {
				req.Header.Set(tt.header, strings.Repeat("z", 2<<20))
			}
			resp, err := nethttp.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tt.want || !strings.Contains(string(b), tt.wantBody) {
				t.Fatalf("answered %d %s; want %d with %q", resp.StatusCode, b, tt.want, tt.wantBody)
			}
		})
	}
	if now, _ := h.app.store.Head(context.Background()); now != head {
		t.Fatalf("refused requests were recorded: the head moved from %d to %d", head, now)
	}
}

// TestAbuse_AdministratorNeverGranted: no action, transport, spelling or
// nesting of role=administrator makes an administrator, even with
// administrator in --roles.
func TestAbuse_AdministratorNeverGranted(t *testing.T) {
	h := newHarness(t) // testConfig lists administrator in --roles
	spellings := []string{"administrator", "Administrator", "ADMINISTRATOR", " administrator ", "administrator\t", "aDmInIsTrAtOr"}
	keys := []string{"Role", "ROLE", " role", "user.role", "roles", "wp_capabilities"}
	sent := 0
	check := func(how, action, key, role string) {
		t.Helper()
		a := h.send(how, hook(action, "1", key, role))
		sent++
		if a.User != nil && a.User.Role == domain.Administrator {
			t.Fatalf("%s %s %s=%q made an administrator: %+v", how, action, key, role, a)
		}
	}
	for _, how := range []string{"get", "form", "json"} {
		for _, action := range []string{"add", "update", "update_tags"} {
			for _, role := range spellings {
				check(how, action, "role", role)
			}
		}
	}
	// Other names for the role are not the role.
	for _, action := range []string{"add", "update"} {
		for _, key := range keys {
			check("form", action, key, "administrator")
		}
	}
	// Nested JSON.
	for _, body := range []string{`{"role":"administrator"}`, `{"user":{"role":"administrator"}}`} {
		req, _ := nethttp.NewRequest("POST", h.base+"/", strings.NewReader(`{"wpf_action":"update","contact_id":"1","access_key":"`+testKey+`","data":`+body+`}`))
		req.Header.Set("Content-Type", "application/json")
		resp, err := nethttp.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		sent++
	}
	for _, id := range []int{1} {
		u, ok := h.user(id)
		if !ok || u.Role == domain.Administrator {
			t.Fatalf("user %d after %d webhooks: %+v (found %v)", id, sent, u, ok)
		}
		for _, e := range h.history(id) {
			data := strings.ToLower(string(e.Data))
			if e.Type != "WebhookReceived" && (strings.Contains(data, `"role":"administrator"`) || strings.Contains(data, `"new":"administrator"`)) {
				t.Fatalf("user %d's history has an administrator role: %s %s", id, e.Type, e.Data)
			}
		}
	}
	t.Logf("%d webhooks asking for administrator: none granted", sent)
}

package http

import (
	"context"
	"fmt"
	"io"
	nethttp "net/http"
	"net/http/cookiejar"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

// browser is a client with cookies that does not follow redirects.
type browser struct {
	t    testing.TB
	base string
	c    *nethttp.Client
}

func newBrowser(t testing.TB, base string) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, base: base, c: &nethttp.Client{Jar: jar, CheckRedirect: func(*nethttp.Request, []*nethttp.Request) error {
		return nethttp.ErrUseLastResponse
	}}}
}

// do sends a request and reads the whole answer.
func (b *browser) do(method, path string, form url.Values, header ...string) (*nethttp.Response, string) {
	b.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := nethttp.NewRequest(method, b.base+path, body)
	if err != nil {
		b.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	text, err := io.ReadAll(resp.Body)
	if err != nil {
		b.t.Fatal(err)
	}
	return resp, string(text)
}

var csrfField = regexp.MustCompile(`name="csrf" value="([^"]+)"`)

// signinForm is the sign-in form with token, its CSRF token from the
// sign-in page (and its cookie in the jar).
func (b *browser) signinForm(token string) url.Values {
	b.t.Helper()
	resp, page := b.do("GET", "/ui/signin", nil)
	m := csrfField.FindStringSubmatch(page)
	if resp.StatusCode != nethttp.StatusOK || m == nil {
		b.t.Fatalf("GET /ui/signin: %d, CSRF field found: %v", resp.StatusCode, m != nil)
	}
	return url.Values{"token": {token}, "csrf": {m[1]}}
}

// signIn signs in with the admin token and returns the CSRF token of the
// session.
func (b *browser) signIn() string {
	b.t.Helper()
	resp, _ := b.do("POST", "/ui/signin", b.signinForm("admin-token"))
	if resp.StatusCode != nethttp.StatusSeeOther || resp.Header.Get("Location") != "/ui/users" {
		b.t.Fatalf("sign-in: %d to %q, want 303 to /ui/users", resp.StatusCode, resp.Header.Get("Location"))
	}
	_, page := b.do("GET", "/ui/ops", nil)
	m := csrfField.FindStringSubmatch(page)
	if m == nil {
		b.t.Fatal("no CSRF token on the operations page")
	}
	return m[1]
}

func consoleServer(t *testing.T, change ...func(*Config)) string {
	t.Helper()
	cfg := testConfig(t, slogJSON(io.Discard))
	ctx := context.Background()
	for i, ev := range []domain.Event{domain.RoleChanged{Old: "subscriber", New: "customer"}, domain.RoleChanged{Old: "customer", New: "vip"}} {
		raw, err := domain.Encode(domain.Envelope{Event: ev, OccurredAt: time.Unix(int64(1700000000+i), 0)})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cfg.Store.Append(ctx, domain.ContactID(7).Stream(), domain.AnyVersion(), raw); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range change {
		f(&cfg)
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, s)
}

// Given no session, when any console page is asked for, then a GET is
// sent to the sign-in page and a POST is refused, and no data is shown.
func TestConsole_WithoutSession_NothingShown(t *testing.T) {
	b := newBrowser(t, consoleServer(t))
	for _, path := range []string{"/ui/", "/ui/users", "/ui/users?q=a", "/ui/users/7", "/ui/users/7/events/1", "/ui/ops", "/ui/ops/rebuild"} {
		resp, body := b.do("GET", path, nil)
		if resp.StatusCode != nethttp.StatusSeeOther || resp.Header.Get("Location") != "/ui/signin" {
			t.Errorf("GET %s: %d to %q, want 303 to /ui/signin", path, resp.StatusCode, resp.Header.Get("Location"))
		}
		if strings.Contains(body, "customer") {
			t.Errorf("GET %s shows data without a session", path)
		}
	}
	for _, path := range []string{"/ui/ops/rebuild", "/ui/ops/verify", "/ui/ops/parked/replay", "/ui/ops/parked/skip", "/ui/signout"} {
		if resp, _ := b.do("POST", path, url.Values{"csrf": {"x"}}); resp.StatusCode != nethttp.StatusForbidden {
			t.Errorf("POST %s without a session: %d, want 403", path, resp.StatusCode)
		}
	}
	// A forged cookie is no session either.
	u, _ := url.Parse(b.base + "/ui/")
	b.c.Jar.SetCookies(u, []*nethttp.Cookie{{Name: sessionCookie, Value: "forged", Path: "/ui/"}})
	if resp, _ := b.do("GET", "/ui/users", nil); resp.StatusCode != nethttp.StatusSeeOther {
		t.Errorf("forged session: %d, want 303", resp.StatusCode)
	}
}

// Given the admin token, sign-in sets a strict session cookie; every page
// then answers with the strict CSP, under 100 KB; sign-out ends it.
func TestConsole_SignIn_PagesWithCSP_SignOut(t *testing.T) {
	b := newBrowser(t, consoleServer(t))
	resp, body := b.do("POST", "/ui/signin", b.signinForm("wrong"))
	if resp.StatusCode != nethttp.StatusUnauthorized || !strings.Contains(body, "Wrong admin token") || len(resp.Cookies()) != 0 {
		t.Fatalf("wrong token: %d, cookies %v", resp.StatusCode, resp.Cookies())
	}
	resp, _ = b.do("POST", "/ui/signin", b.signinForm("admin-token"))
	cookies := resp.Cookies()
	if len(cookies) != 1 || cookies[0].Name != sessionCookie {
		t.Fatalf("sign-in set cookies %v, want the session's only", cookies)
	}
	c := cookies[0]
	if !c.HttpOnly || c.SameSite != nethttp.SameSiteStrictMode || c.Secure || c.MaxAge != 8*3600 || c.Expires.IsZero() || len(c.Value) < 40 {
		t.Errorf("session cookie %+v: want HttpOnly, SameSite=Strict, not Secure over plain HTTP, 8 h, a long random id", c)
	}
	_, ops := b.do("GET", "/ui/ops", nil)
	csrf := csrfField.FindStringSubmatch(ops)[1]
	for _, tc := range []struct{ path, want string }{
		{"/ui/users", "0 users match"},
		{"/ui/users?q=7", "match"},
		{"/ui/users/7", "Role changed: customer → vip"},
		{"/ui/ops", "welcome_email"},
		{"/ui/ops/rebuild", "Rebuild idle"},
		{"/ui/users/7/events/2", `"type":"RoleChanged"`},
	} {
		resp, body := b.do("GET", tc.path, nil)
		if resp.StatusCode != nethttp.StatusOK {
			t.Errorf("GET %s: %d\n%s", tc.path, resp.StatusCode, body)
			continue
		}
		if csp := resp.Header.Get("Content-Security-Policy"); csp != consoleCSP || !strings.Contains(csp, "default-src 'none'") {
			t.Errorf("GET %s: CSP %q", tc.path, csp)
		}
		if len(body) > 100_000 {
			t.Errorf("GET %s: %d bytes, want under 100 KB", tc.path, len(body))
		}
		if !strings.Contains(body, tc.want) {
			t.Errorf("GET %s does not show %q:\n%s", tc.path, tc.want, body)
		}
		if strings.Contains(body, "<script") || strings.Contains(body, "style=") {
			t.Errorf("GET %s has inline script or style", tc.path)
		}
	}
	if resp, _ := b.do("POST", "/ui/signout", url.Values{"csrf": {csrf}}); resp.StatusCode != nethttp.StatusSeeOther {
		t.Fatalf("sign-out: %d", resp.StatusCode)
	}
	if resp, _ := b.do("GET", "/ui/users", nil); resp.StatusCode != nethttp.StatusSeeOther {
		t.Errorf("after sign-out: %d, want 303 to the sign-in page", resp.StatusCode)
	}
}

// Given a session, a form that changes something without its CSRF token,
// or with another, is refused and changes nothing; what the operator did is
// recorded in the operator stream.
func TestConsole_ChangeWithoutCSRF_Refused(t *testing.T) {
	var store Store
	b := newBrowser(t, consoleServer(t, func(c *Config) { store = c.Store }))
	csrf := b.signIn()
	for _, tc := range []struct {
		name string
		form url.Values
		want int
	}{
		{"no token", url.Values{}, nethttp.StatusForbidden},
		{"another token", url.Values{"csrf": {csrf + "x"}}, nethttp.StatusForbidden},
		{"the session's token", url.Values{"csrf": {csrf}}, nethttp.StatusSeeOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, _ := b.do("POST", "/ui/ops/rebuild", tc.form)
			if resp.StatusCode != tc.want {
				t.Errorf("POST /ui/ops/rebuild: %d, want %d", resp.StatusCode, tc.want)
			}
		})
	}
	// The rebuild started once, by the form with the token.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, page := b.do("GET", "/ui/ops/rebuild", nil)
		if strings.Contains(page, "Rebuild done") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the rebuild did not finish:\n%s", page)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Then the sign-in and the one rebuild are recorded, without the token.
	_, ops := b.do("GET", "/ui/ops", nil)
	for _, want := range []string{"Operator rebuild from 127.0.0.1 with the admin token: started", "Operator sign in from 127.0.0.1 with the admin token: signed in"} {
		if strings.Count(ops, want) != 1 {
			t.Errorf("the operations page shows %q %d times, want once", want, strings.Count(ops, want))
		}
	}
	recs, err := store.ReadStream(context.Background(), domain.OperatorStream)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 2 {
		t.Errorf("%d operator events, want 2 (the sign-in, the rebuild)", len(recs))
	}
	for _, rec := range recs {
		if strings.Contains(string(rec.Data)+string(rec.Metadata), "admin-token") {
			t.Errorf("an operator event holds the token: %s", rec.Data)
		}
	}
}

// Given a source that sent wrong tokens, once its failures are used up it
// is throttled (429 with Retry-After), like wrong access keys.
func TestConsole_WrongTokens_Throttled(t *testing.T) {
	lim, err := NewFailureLimiter(FailureLimiterConfig{Rate: 0.001, Burst: 2})
	if err != nil {
		t.Fatal(err)
	}
	b := newBrowser(t, consoleServer(t, func(c *Config) { c.AuthFailures = lim }))
	var codes []int
	for range 4 {
		resp, _ := b.do("POST", "/ui/signin", b.signinForm("wrong"))
		codes = append(codes, resp.StatusCode)
	}
	if codes[0] != 401 || codes[3] != 429 {
		t.Errorf("wrong tokens answered %v, want 401 first and 429 once throttled", codes)
	}
	resp, _ := b.do("POST", "/ui/signin", b.signinForm("wrong"))
	if resp.Header.Get("Retry-After") == "" {
		t.Error("a throttled answer has no Retry-After")
	}
	if resp, _ := b.do("POST", "/ui/signin", b.signinForm("admin-token")); resp.StatusCode != nethttp.StatusSeeOther {
		t.Errorf("the right token while throttled: %d, want 303 (always accepted)", resp.StatusCode)
	}
}

// A browser opening / with no parameters is sent to the console; anything
// with a parameter, a body or no text/html is still the webhook.
func TestConsole_BrowserAtRoot_SentToConsole_WebhooksUnchanged(t *testing.T) {
	b := newBrowser(t, consoleServer(t))
	html := "text/html,application/xhtml+xml,*/*;q=0.8"
	for _, tc := range []struct {
		name, method, path, accept string
		form                       url.Values
		console                    bool
	}{
		{"browser", "GET", "/", html, nil, true},
		{"no accept", "GET", "/", "", nil, false},
		{"any accept", "GET", "/", "*/*", nil, false},
		{"with a parameter", "GET", "/?wpf_action=add", html, nil, false},
		{"a form post", "POST", "/", html, url.Values{"wpf_action": {"add"}}, false},
		{"another path", "GET", "/hook", html, nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var header []string
			if tc.accept != "" {
				header = []string{"Accept", tc.accept}
			}
			resp, _ := b.do(tc.method, tc.path, tc.form, header...)
			toConsole := resp.StatusCode == nethttp.StatusSeeOther && resp.Header.Get("Location") == "/ui/"
			if toConsole != tc.console {
				t.Errorf("%s %s: %d to %q, want console %v", tc.method, tc.path, resp.StatusCode, resp.Header.Get("Location"), tc.console)
			}
		})
	}
}

// Given webhooks with many parameters, a timeline page shows fewer events
// and stays under 100 KB, with the link to the older ones.
func TestConsole_TimelineOfLargeWebhooks_StaysUnder100KB(t *testing.T) {
	base := consoleServer(t, func(c *Config) {
		params := map[string]string{}
		for i := range 60 {
			params[fmt.Sprintf("field_%02d", i)] = strings.Repeat("x", 60)
		}
		var envs []domain.Envelope
		at := time.Unix(1700000000, 0)
		for i := range 60 {
			wid := fmt.Sprintf("wh-%d", i)
			envs = append(envs,
				domain.Envelope{Event: domain.WebhookReceived{WebhookID: wid, Action: "update", ContactID: "8", Method: "POST", Source: "10.0.0.1", Params: params, ReceivedAt: at}, OccurredAt: at, WebhookID: wid},
				domain.Envelope{Event: domain.RoleChanged{Old: "a", New: "b"}, OccurredAt: at, WebhookID: wid})
		}
		raw, err := domain.EncodeAll(envs)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Store.Append(context.Background(), domain.ContactID(8).Stream(), domain.AnyVersion(), raw...); err != nil {
			t.Fatal(err)
		}
	})
	b := newBrowser(t, base)
	b.signIn()
	resp, page := b.do("GET", "/ui/users/8", nil)
	if resp.StatusCode != nethttp.StatusOK {
		t.Fatalf("GET /ui/users/8: %d", resp.StatusCode)
	}
	if len(page) > 100_000 || !strings.Contains(page, `id="older"`) {
		t.Errorf("the page is %d bytes (want under 100 KB) and has an older link: %v", len(page), strings.Contains(page, `id="older"`))
	}
	t.Logf("%d bytes, %d events", len(page), strings.Count(page, `class="words"`))
}

// Given a sign-in posted from another site (login CSRF: the attacker's
// own token), or without the sign-in form's token, it is refused and no
// session is made; from the form itself it is accepted.
func TestConsole_SignInCSRF_Refused(t *testing.T) {
	base := consoleServer(t)
	for _, tc := range []struct {
		name   string
		form   func(b *browser) url.Values
		header []string
		want   int
	}{
		{"no form token", func(b *browser) url.Values { return url.Values{"token": {"admin-token"}} }, nil, nethttp.StatusForbidden},
		{"another form token", func(b *browser) url.Values {
			f := b.signinForm("admin-token")
			f.Set("csrf", f.Get("csrf")+"x")
			return f
		}, nil, nethttp.StatusForbidden},
		{"a cross-site Sec-Fetch-Site", func(b *browser) url.Values { return b.signinForm("admin-token") }, []string{"Sec-Fetch-Site", "cross-site"}, nethttp.StatusForbidden},
		{"a same-site subdomain", func(b *browser) url.Values { return b.signinForm("admin-token") }, []string{"Sec-Fetch-Site", "same-site"}, nethttp.StatusForbidden},
		{"the form, same origin", func(b *browser) url.Values { return b.signinForm("admin-token") }, []string{"Origin", base, "Sec-Fetch-Site", "same-origin"}, nethttp.StatusSeeOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBrowser(t, base)
			resp, _ := b.do("POST", "/ui/signin", tc.form(b), tc.header...)
			if resp.StatusCode != tc.want {
				t.Fatalf("POST /ui/signin: %d, want %d", resp.StatusCode, tc.want)
			}
			for _, c := range resp.Cookies() {
				if c.Name == sessionCookie && tc.want != nethttp.StatusSeeOther {
					t.Error("a refused sign-in set a session cookie")
				}
			}
		})
	}
}

package http

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"embed"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io/fs"
	nethttp "net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// The console is the operators' web pages under /ui/: sign-in with the
// admin token, users, one user's timeline, operations (checkpoints,
// rebuild, verify, parked events). Server-rendered, no script, its CSS
// embedded (docs/operations.md, "Console").

//go:embed console
var consoleFiles embed.FS

const (
	sessionCookie = "usersync_session"
	// DefaultSessionTTL is how long a console session lasts.
	DefaultSessionTTL = 8 * time.Hour
	// maxSessions bounds the sessions kept in memory; the oldest goes
	// first.
	maxSessions = 1000
	// consoleCSP allows the console's own stylesheet and nothing else: no
	// script at all, no inline style, forms only to itself.
	consoleCSP = "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
	// maxPageBytes is the size a timeline page is kept under, by showing
	// fewer events (down to minTimelinePage).
	maxPageBytes    = 100_000
	minTimelinePage = 6
	// maxConsoleForm bounds a console form's body.
	maxConsoleForm      = 16 << 10
	consoleUsersPage    = 50
	consoleTimelinePage = 50
)

// session is one signed-in browser, kept in memory only (lost at restart).
type session struct {
	csrf    string
	expires time.Time
	created time.Time
}

// sessions are the console's signed-in browsers.
type sessions struct {
	mu  sync.Mutex
	all map[string]session
}

// randomToken is 32 random bytes, URL-safe.
func randomToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("random session id: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

func (ss *sessions) create(now time.Time, ttl time.Duration) (id string, s session, err error) {
	if id, err = randomToken(); err != nil {
		return "", session{}, err
	}
	csrf, err := randomToken()
	if err != nil {
		return "", session{}, err
	}
	s = session{csrf: csrf, expires: now.Add(ttl), created: now}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.all == nil {
		ss.all = map[string]session{}
	}
	var oldest string
	for k, v := range ss.all {
		if !now.Before(v.expires) {
			delete(ss.all, k)
		} else if oldest == "" || v.created.Before(ss.all[oldest].created) {
			oldest = k
		}
	}
	if len(ss.all) >= maxSessions && oldest != "" {
		delete(ss.all, oldest)
	}
	ss.all[id] = s
	return id, s, nil
}

func (ss *sessions) get(id string, now time.Time) (session, bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.all[id]
	if !ok {
		return session{}, false
	}
	if !now.Before(s.expires) {
		delete(ss.all, id)
		return session{}, false
	}
	return s, true
}

func (ss *sessions) drop(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.all, id)
}

// console holds the parsed pages.
type console struct {
	pages map[string]*template.Template
	css   []byte
}

var consoleFuncs = template.FuncMap{
	"when": func(t time.Time) string {
		if t.IsZero() {
			return "—"
		}
		return t.UTC().Format("2006-01-02 15:04:05 UTC")
	},
	"json": func(v any) string {
		b, _ := json.MarshalIndent(v, "", "  ")
		return string(b)
	},
}

func newConsole() (*console, error) {
	css, err := fs.ReadFile(consoleFiles, "console/style.css")
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	c := &console{pages: map[string]*template.Template{}, css: css}
	for _, name := range []string{"signin", "users", "user", "ops", "queue", "rebuild", "verify", "message"} {
		t, err := template.New("layout.html").Funcs(consoleFuncs).ParseFS(consoleFiles, "console/layout.html", "console/"+name+".html")
		if err != nil {
			return nil, fmt.Errorf("console page %s: %w", name, err)
		}
		c.pages[name] = t
	}
	return c, nil
}

// consoleRoutes adds /ui/ to r.
func (s *Server) consoleRoutes(r *mux.Router) error {
	c, err := newConsole()
	if err != nil {
		return err
	}
	s.console = c
	ui := r.PathPrefix("/ui/").Subrouter()
	ui.Use(consoleHeaders)
	ui.HandleFunc("/style.css", s.consoleCSS).Methods("GET")
	ui.HandleFunc("/signin", s.signinPage).Methods("GET")
	ui.HandleFunc("/signin", s.signin).Methods("POST")
	ui.Handle("/signout", s.withSession(true, s.signout)).Methods("POST")
	ui.Handle("/", s.withSession(false, func(w nethttp.ResponseWriter, r *nethttp.Request, _ session) {
		nethttp.Redirect(w, r, "/ui/users", nethttp.StatusSeeOther)
	})).Methods("GET")
	ui.Handle("/users", s.withSession(false, s.usersPage)).Methods("GET")
	ui.Handle("/users/{contact_id}", s.withSession(false, s.userPage)).Methods("GET")
	ui.Handle("/users/{contact_id}/events/{version}", s.withSession(false, s.rawEvent)).Methods("GET")
	ui.Handle("/ops", s.withSession(false, s.opsPage)).Methods("GET")
	ui.Handle("/ops/rebuild", s.withSession(true, s.consoleRebuild)).Methods("POST")
	ui.Handle("/ops/rebuild", s.withSession(false, s.rebuildPage)).Methods("GET")
	ui.Handle("/ops/verify", s.withSession(true, s.consoleVerify)).Methods("POST")
	ui.Handle("/ops/queue", s.withSession(false, s.queuePage)).Methods("GET")
	ui.Handle("/ops/queue/retry", s.withSession(true, s.consoleRetry)).Methods("POST")
	ui.Handle("/ops/parked/replay", s.withSession(true, s.consoleReplay)).Methods("POST")
	ui.Handle("/ops/parked/skip", s.withSession(true, s.consoleSkip)).Methods("POST")
	ui.NotFoundHandler = consoleHeaders(nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		s.consoleMessage(w, nethttp.StatusNotFound, "Not found", "There is no console page here.", session{}, false)
	}))
	return nil
}

// consoleHeaders sets the strict headers every console answer has.
func consoleHeaders(next nethttp.Handler) nethttp.Handler {
	return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", consoleCSP)
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		// The console's forms are small: a token, a CSRF token, a position.
		r.Body = nethttp.MaxBytesReader(w, r.Body, maxConsoleForm)
		next.ServeHTTP(w, r)
	})
}

// browserHome reports whether r is a browser opening / with no webhook
// parameter at all (FunnelKit always sends some): it is sent to /ui/.
func browserHome(r *nethttp.Request) bool {
	return r.URL.Path == "/" && (r.Method == "GET" || r.Method == "HEAD") && r.URL.RawQuery == "" &&
		r.ContentLength <= 0 && r.Header.Get("Content-Type") == "" && strings.Contains(r.Header.Get("Accept"), "text/html")
}

func (s *Server) consoleCSS(w nethttp.ResponseWriter, r *nethttp.Request) {
	w.Header().Set("Content-Type", "text/css; charset=utf-8")
	w.Header().Set("Cache-Control", "max-age=3600")
	_, _ = w.Write(s.console.css)
}

// withSession lets a signed-in browser through to h (checking the form's
// CSRF token when changes is true); others are sent to the sign-in page.
func (s *Server) withSession(changes bool, h func(nethttp.ResponseWriter, *nethttp.Request, session)) nethttp.Handler {
	return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		c, err := r.Cookie(sessionCookie)
		var sess session
		ok := err == nil
		if ok {
			sess, ok = s.sessions.get(c.Value, s.cfg.Now())
		}
		if !ok {
			if r.Method != "GET" {
				s.consoleMessage(w, nethttp.StatusForbidden, "Signed out", "Your session has ended: sign in again, then repeat the action.", session{}, false)
				return
			}
			nethttp.Redirect(w, r, "/ui/signin", nethttp.StatusSeeOther)
			return
		}
		if changes {
			if subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(sess.csrf)) != 1 {
				s.consoleMessage(w, nethttp.StatusForbidden, "Refused", "The form's CSRF token is missing or wrong: reload the page and try again.", sess, true)
				return
			}
		}
		h(w, r, sess)
	})
}

// pageData is what every page's layout reads.
type pageData struct {
	Title    string
	SignedIn bool
	CSRF     string
	Nav      string
	Refresh  int
	Body     any
}

func (s *Server) render(w nethttp.ResponseWriter, status int, page string, d pageData) {
	html, err := s.renderPage(page, d)
	if err != nil {
		s.cfg.Log.Error("console page", "page", page, "err", err)
		nethttp.Error(w, "the page could not be shown; see the server log", nethttp.StatusInternalServerError)
		return
	}
	s.writePage(w, status, html)
}

func (s *Server) renderPage(page string, d pageData) (string, error) {
	var b strings.Builder
	err := s.console.pages[page].Execute(&b, d)
	return b.String(), err
}

func (s *Server) writePage(w nethttp.ResponseWriter, status int, html string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(html))
}

func (s *Server) consoleMessage(w nethttp.ResponseWriter, status int, title, text string, sess session, signedIn bool) {
	s.render(w, status, "message", pageData{Title: title, SignedIn: signedIn, CSRF: sess.csrf, Body: text})
}

// signinCookie holds the sign-in form's own CSRF token (a pre-session
// cookie, double-submitted in the form's csrf field): a sign-in posted
// from another site is refused (login CSRF).
const (
	signinCookie = "usersync_signin"
	signinTTL    = time.Hour
)

// signinToken is the browser's sign-in CSRF token, a new one (set as its
// cookie) when it has none.
func (s *Server) signinToken(w nethttp.ResponseWriter, r *nethttp.Request) (string, error) {
	if c, err := r.Cookie(signinCookie); err == nil && len(c.Value) >= 40 {
		return c.Value, nil
	}
	token, err := randomToken()
	if err != nil {
		return "", err
	}
	nethttp.SetCookie(w, &nethttp.Cookie{Name: signinCookie, Value: token, Path: "/ui/", MaxAge: int(signinTTL / time.Second),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: nethttp.SameSiteStrictMode})
	return token, nil
}

func (s *Server) signinPage(w nethttp.ResponseWriter, r *nethttp.Request) {
	token, err := s.signinToken(w, r)
	if err != nil {
		s.cfg.Log.Error("console sign-in", "err", err)
		s.consoleMessage(w, nethttp.StatusInternalServerError, "Error", "The sign-in form could not be made; see the server log.", session{}, false)
		return
	}
	s.render(w, nethttp.StatusOK, "signin", pageData{Title: "Sign in", CSRF: token})
}

// crossSite reports whether the browser says r was sent from another site
// (Sec-Fetch-Site). Origin is not compared with Host: behind a proxy that
// rewrites Host they differ for the console's own form.
func crossSite(r *nethttp.Request) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
		return false
	}
	return true
}

// signin checks the form's sign-in CSRF token, then the admin token (in
// constant time, throttled per source like wrong access keys) and starts a
// session.
func (s *Server) signin(w nethttp.ResponseWriter, r *nethttp.Request) {
	c, cerr := r.Cookie(signinCookie)
	if crossSite(r) || cerr != nil || c.Value == "" || subtle.ConstantTimeCompare([]byte(r.PostFormValue("csrf")), []byte(c.Value)) != 1 {
		s.consoleMessage(w, nethttp.StatusForbidden, "Refused", "This sign-in did not come from usersync's own sign-in form: open /ui/signin and sign in there.", session{}, false)
		return
	}
	again := pageData{Title: "Sign in", CSRF: c.Value}
	token := r.PostFormValue("token")
	if token == "" || !s.cfg.AdminToken.Matches(token) {
		source := remoteHost(r)
		if wait, throttled := s.throttled(source); throttled {
			w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(wait)))
			again.Body = fmt.Sprintf("Too many wrong tokens from this address: try again in %d s.", retryAfterSeconds(wait))
			s.render(w, nethttp.StatusTooManyRequests, "signin", again)
			s.refusedAPI(r, nethttp.StatusTooManyRequests, RefusedThrottled, source)
			return
		}
		again.Body = "Wrong admin token."
		s.render(w, nethttp.StatusUnauthorized, "signin", again)
		s.refusedAPI(r, nethttp.StatusUnauthorized, RefusedWrongSecret, source)
		return
	}
	id, sess, err := s.sessions.create(s.cfg.Now(), DefaultSessionTTL)
	if err != nil {
		s.cfg.Log.Error("console sign-in", "err", err)
		s.consoleMessage(w, nethttp.StatusInternalServerError, "Error", "The session could not be started; see the server log.", session{}, false)
		return
	}
	nethttp.SetCookie(w, &nethttp.Cookie{
		Name: sessionCookie, Value: id, Path: "/ui/", Expires: sess.expires, MaxAge: int(DefaultSessionTTL / time.Second),
		HttpOnly: true, Secure: r.TLS != nil, SameSite: nethttp.SameSiteStrictMode,
	})
	s.operatorActed(r, "sign_in", "", "signed in")
	nethttp.Redirect(w, r, "/ui/users", nethttp.StatusSeeOther)
}

func (s *Server) signout(w nethttp.ResponseWriter, r *nethttp.Request, _ session) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		s.sessions.drop(c.Value)
	}
	nethttp.SetCookie(w, &nethttp.Cookie{Name: sessionCookie, Value: "", Path: "/ui/", MaxAge: -1, HttpOnly: true, Secure: r.TLS != nil, SameSite: nethttp.SameSiteStrictMode})
	nethttp.Redirect(w, r, "/ui/signin", nethttp.StatusSeeOther)
}

// usersBody is the users page.
type usersBody struct {
	Q, Tag, Role string
	Page         projections.UserPage
	Next         string
	Error        string
}

func (s *Server) usersPage(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	q := r.URL.Query()
	b := usersBody{Q: strings.TrimSpace(q.Get("q")), Tag: strings.TrimSpace(q.Get("tag")), Role: strings.TrimSpace(q.Get("role"))}
	query := projections.UserQuery{Search: b.Q, Role: domain.Role(b.Role), Limit: consoleUsersPage}
	status := nethttp.StatusOK
	if b.Tag != "" {
		n, err := strconv.ParseUint(b.Tag, 10, 64)
		if err != nil || n == 0 {
			b.Error, status = "Tag must be a FunnelKit tag id (a positive whole number).", nethttp.StatusBadRequest
		}
		query.Tag = n
	}
	if v := q.Get("after"); v != "" && b.Error == "" {
		id, err := domain.ParseContactID(v)
		if err != nil {
			b.Error, status = "The page cursor is not valid: start the search again.", nethttp.StatusBadRequest
		}
		query.After = id
	}
	if b.Error == "" {
		page, err := s.cfg.Views.Users.Search(r.Context(), query)
		if err != nil {
			s.cfg.Log.Error("console users", "err", err)
			b.Error, status = "The users could not be read; see the server log.", nethttp.StatusInternalServerError
		}
		b.Page = page
		if page.Next != 0 {
			v := q
			v.Set("after", page.Next.String())
			b.Next = "/ui/users?" + v.Encode()
		}
	}
	s.render(w, status, "users", pageData{Title: "Users", SignedIn: true, CSRF: sess.csrf, Nav: "users", Body: b})
}

// userBody is one user's page.
type userBody struct {
	ContactID domain.ContactID
	User      *projections.User
	Password  *projections.PasswordReturn
	Welcome   *projections.WelcomeMail
	Timeline  projections.TimelinePage
	Older     string
}

func (s *Server) userPage(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	id, err := domain.ParseContactID(mux.Vars(r)["contact_id"])
	if err != nil {
		s.consoleMessage(w, nethttp.StatusBadRequest, "Not a contact id", err.Error(), sess, true)
		return
	}
	var before uint64
	if v := r.URL.Query().Get("before"); v != "" {
		if before, err = strconv.ParseUint(v, 10, 64); err != nil {
			s.consoleMessage(w, nethttp.StatusBadRequest, "Bad cursor", "before must be the older link of a previous page.", sess, true)
			return
		}
	}
	ctx := r.Context()
	b := userBody{ContactID: id}
	fail := func(what string, err error) {
		s.cfg.Log.Error("console user", "what", what, "contact_id", id, "err", err)
		s.consoleMessage(w, nethttp.StatusInternalServerError, "Error", "The "+what+" could not be read; see the server log.", sess, true)
	}
	if u, ok, err := s.cfg.Views.Users.Get(ctx, id); err != nil {
		fail("user", err)
		return
	} else if ok {
		b.User = &u
	}
	if p, ok, err := s.cfg.Views.Passwords.Get(ctx, id); err != nil {
		fail("password return", err)
		return
	} else if ok {
		b.Password = &p
	}
	if m, ok, err := s.cfg.Views.Welcome.Get(ctx, id); err != nil {
		fail("welcome mail", err)
		return
	} else if ok {
		b.Welcome = &m
	}
	// A page stays under maxPageBytes: with webhooks of many parameters,
	// fewer events a page (50, 25, 12, 6).
	var html string
	for limit := consoleTimelinePage; ; limit /= 2 {
		if b.Timeline, err = projections.Timeline(ctx, s.cfg.Store, s.cfg.Views.Webhooks, id, before, limit); err != nil {
			fail("timeline", err)
			return
		}
		b.Older = ""
		if b.Timeline.Next != 0 {
			b.Older = fmt.Sprintf("/ui/users/%s?before=%d", id, b.Timeline.Next)
		}
		if b.User == nil && len(b.Timeline.Entries) == 0 {
			s.consoleMessage(w, nethttp.StatusNotFound, "No such contact", "Contact "+id.String()+" has no user and no events.", sess, true)
			return
		}
		if html, err = s.renderPage("user", pageData{Title: "Contact " + id.String(), SignedIn: true, CSRF: sess.csrf, Nav: "users", Body: b}); err != nil {
			fail("page", err)
			return
		}
		if len(html) <= maxPageBytes || limit <= minTimelinePage {
			break
		}
	}
	s.writePage(w, nethttp.StatusOK, html)
}

// rawEvent serves one event of a contact as JSON, its secrets redacted.
func (s *Server) rawEvent(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	id, err := domain.ParseContactID(mux.Vars(r)["contact_id"])
	version, verr := strconv.ParseUint(mux.Vars(r)["version"], 10, 64)
	if err != nil || verr != nil {
		writeError(w, nethttp.StatusBadRequest, "want /ui/users/CONTACT_ID/events/VERSION")
		return
	}
	page, err := projections.Timeline(r.Context(), s.cfg.Store, s.cfg.Views.Webhooks, id, version+1, 1)
	if err != nil {
		s.cfg.Log.Error("console raw event", "contact_id", id, "err", err)
		writeError(w, nethttp.StatusInternalServerError, "could not read the event store; see the server log")
		return
	}
	if len(page.Entries) == 0 || page.Entries[0].Version != version {
		writeError(w, nethttp.StatusNotFound, fmt.Sprintf("contact %s has no event %d", id, version))
		return
	}
	writeJSON(w, nethttp.StatusOK, page.Entries[0])
}

// checkpointRow is a view's or process manager's place in the log.
type checkpointRow struct {
	Name, Kind     string
	Position, Head uint64
	Behind         uint64
}

type opsBody struct {
	Head        uint64
	Checkpoints []checkpointRow
	Parked      []domain.ParkedEvent
	Rebuild     rebuildView
	Notice      string
	Actions     []operatorLine
	CanReplay   bool
}

// rebuildView is a copy of the rebuild's progress for a page.
type rebuildView struct {
	Status                 string
	Position, Head, Events uint64
	Parked                 int
	StartedAt, FinishedAt  time.Time
	Error                  string
	Percent                int
}

func (s *Server) rebuildNow() rebuildView {
	st := &s.rebuild
	st.mu.Lock()
	defer st.mu.Unlock()
	v := rebuildView{Status: st.Status, Position: st.Position, Head: st.Head, Events: st.Events, Parked: st.Parked, Error: st.Error}
	if v.Status == "" {
		v.Status = "idle"
	}
	if st.StartedAt != nil {
		v.StartedAt = *st.StartedAt
	}
	if st.FinishedAt != nil {
		v.FinishedAt = *st.FinishedAt
	}
	if v.Head > 0 {
		v.Percent = int(v.Position * 100 / v.Head)
	}
	if v.Status == "done" {
		v.Percent = 100
	}
	return v
}

func (s *Server) opsPage(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	b, err := s.opsState(r.Context())
	if err != nil {
		s.cfg.Log.Error("console operations", "err", err)
		s.consoleMessage(w, nethttp.StatusInternalServerError, "Error", "The checkpoints could not be read; see the server log.", sess, true)
		return
	}
	b.Notice = r.URL.Query().Get("notice")
	s.render(w, nethttp.StatusOK, "ops", pageData{Title: "Operations", SignedIn: true, CSRF: sess.csrf, Nav: "ops", Body: b})
}

func (s *Server) opsState(ctx context.Context) (opsBody, error) {
	head, err := s.cfg.Store.Head(ctx)
	if err != nil {
		return opsBody{}, fmt.Errorf("read the head: %w", err)
	}
	b := opsBody{Head: head, Rebuild: s.rebuildNow(), CanReplay: s.cfg.Replay != nil}
	add := func(name, kind string, pos uint64) {
		row := checkpointRow{Name: name, Kind: kind, Position: pos, Head: head}
		if head > pos {
			row.Behind = head - pos
		}
		b.Checkpoints = append(b.Checkpoints, row)
	}
	for _, name := range s.cfg.Views.Names() {
		pos, err := s.cfg.Views.Position(name)
		if err != nil {
			return opsBody{}, err
		}
		add(name, "view", pos)
	}
	for _, name := range command.ProcessNames() {
		pos, err := s.cfg.Views.Checkpoint(ctx, name)
		if err != nil {
			return opsBody{}, err
		}
		add(name, "process manager", pos)
	}
	if b.Parked, err = s.cfg.Views.Parked(ctx, ""); err != nil {
		return opsBody{}, err
	}
	recs, err := eventstore.ReadStreamBackward(ctx, s.cfg.Store, domain.OperatorStream, 0, recentActions)
	if err != nil {
		return opsBody{}, fmt.Errorf("read the operator stream: %w", err)
	}
	for _, rec := range recs {
		line := operatorLine{Words: rec.Type}
		if env, err := domain.Decode(rec); err == nil {
			line.At, line.Words = env.OccurredAt, domain.Describe(env.Event)
		}
		b.Actions = append(b.Actions, line)
	}
	return b, nil
}

func (s *Server) consoleRebuild(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	if !s.beginRebuild() {
		s.consoleMessage(w, nethttp.StatusConflict, "Rebuild running", "A rebuild is already running: follow it on the rebuild page.", sess, true)
		return
	}
	s.operatorActed(r, "rebuild", "", "started")
	nethttp.Redirect(w, r, "/ui/ops/rebuild", nethttp.StatusSeeOther)
}

func (s *Server) rebuildPage(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	v := s.rebuildNow()
	d := pageData{Title: "Rebuild", SignedIn: true, CSRF: sess.csrf, Nav: "ops", Body: v}
	if v.Status == "running" {
		d.Refresh = 1
	}
	s.render(w, nethttp.StatusOK, "rebuild", d)
}

type verifyBody struct {
	Result projections.VerifyResult
	Took   time.Duration
	Error  string
}

// consoleVerify rebuilds the views into a scratch copy and lists how the
// live views differ (Views.Verify).
func (s *Server) consoleVerify(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	if !s.verifying.TryLock() {
		s.consoleMessage(w, nethttp.StatusConflict, "Verify running", "A verify is already running: wait for it, then try again.", sess, true)
		return
	}
	defer s.verifying.Unlock()
	dir := s.cfg.VerifyDir
	if dir == "" {
		dir = os.TempDir()
	}
	scratch, err := os.MkdirTemp(dir, ".verify-")
	var b verifyBody
	status := nethttp.StatusOK
	if err == nil {
		defer os.RemoveAll(scratch)
		start := time.Now()
		b.Result, err = s.cfg.Views.Verify(r.Context(), s.cfg.Store, projections.VerifyOptions{Dir: scratch, Limit: 200, Retention: s.cfg.Retention})
		b.Took = time.Since(start).Round(time.Millisecond)
	}
	if err != nil {
		s.cfg.Log.Error("console verify", "err", err)
		b.Error, status = "Verify failed: "+err.Error(), nethttp.StatusInternalServerError
	}
	outcome := fmt.Sprintf("%d differences", len(b.Result.Differences))
	if b.Error != "" {
		outcome = "failed: " + err.Error()
	}
	s.operatorActed(r, "verify", "", outcome)
	s.render(w, status, "verify", pageData{Title: "Verify", SignedIn: true, CSRF: sess.csrf, Nav: "ops", Body: b})
}

// parkedForm is the parked event a Replay or Skip form names.
func (s *Server) parkedForm(r *nethttp.Request) (domain.ParkedEvent, bool, error) {
	handler := r.PostFormValue("handler")
	pos, err := strconv.ParseUint(r.PostFormValue("position"), 10, 64)
	if handler == "" || err != nil {
		return domain.ParkedEvent{}, false, nil
	}
	parked, err := s.cfg.Views.Parked(r.Context(), handler)
	if err != nil {
		return domain.ParkedEvent{}, false, err
	}
	for _, pe := range parked {
		if pe.Position == pos {
			return pe, true, nil
		}
	}
	return domain.ParkedEvent{}, false, nil
}

func (s *Server) consoleReplay(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	if s.cfg.Replay == nil {
		s.consoleMessage(w, nethttp.StatusNotImplemented, "Not available", "Replay is not available on this server.", sess, true)
		return
	}
	pe, ok, err := s.parkedForm(r)
	if err != nil || !ok {
		s.consoleMessage(w, nethttp.StatusNotFound, "No such parked event", "No parked event matches (it may have been replayed or skipped already).", sess, true)
		return
	}
	if err := s.cfg.Replay(r.Context(), pe); err != nil {
		s.operatorActed(r, domain.ActionParkedReplay, parkedTarget(pe), "failed: "+err.Error(), pe.Stream)
		s.consoleMessage(w, nethttp.StatusConflict, "Replay failed", err.Error(), sess, true)
		return
	}
	s.operatorActed(r, domain.ActionParkedReplay, parkedTarget(pe), "replayed", pe.Stream)
	nethttp.Redirect(w, r, fmt.Sprintf("/ui/ops?notice=replayed+event+%d+for+%s", pe.Position, pe.Handler), nethttp.StatusSeeOther)
}

func (s *Server) consoleSkip(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	pe, ok, err := s.parkedForm(r)
	if err != nil || !ok {
		s.consoleMessage(w, nethttp.StatusNotFound, "No such parked event", "No parked event matches (it may have been replayed or skipped already).", sess, true)
		return
	}
	if err := s.cfg.Views.Unpark(r.Context(), pe.Handler, pe.Position); err != nil {
		s.cfg.Log.Error("console skip", "err", err)
		s.consoleMessage(w, nethttp.StatusInternalServerError, "Skip failed", "The parked event could not be skipped; see the server log.", sess, true)
		return
	}
	s.operatorActed(r, domain.ActionParkedSkip, parkedTarget(pe), "skipped", pe.Stream)
	nethttp.Redirect(w, r, fmt.Sprintf("/ui/ops?notice=skipped+event+%d+for+%s", pe.Position, pe.Handler), nethttp.StatusSeeOther)
}

// recentActions is how many operator actions the operations page lists.
const recentActions = 10

// operatorLine is an operator's action in words.
type operatorLine struct {
	At    time.Time
	Words string
}

// consoleCredential names the credential a console session was opened
// with, as recorded in OperatorActed (never the token).
const consoleCredential = "admin token"

// operatorActed records an operator's action as an OperatorActed event in
// the operator stream and, when also names a contact's stream (a parked
// event's), in that stream too, so that the contact's timeline shows it.
// A failure to record is logged; the action stands.
func (s *Server) operatorActed(r *nethttp.Request, action, target, outcome string, also ...string) {
	ev := s.operatorEvent(r, action, target, outcome)
	ne, err := domain.Encode(domain.Envelope{Event: ev, OccurredAt: s.cfg.Now().UTC()})
	streams := []string{domain.OperatorStream}
	for _, st := range also {
		if _, ok := domain.ContactIDFromStream(st); ok {
			streams = append(streams, st)
		}
	}
	for _, stream := range streams {
		if err == nil {
			// Recorded even when the browser has gone away meanwhile. In
			// a contact's stream at any version: a webhook decided
			// meanwhile loses its race and is decided again.
			_, err = s.cfg.Store.Append(context.WithoutCancel(r.Context()), stream, domain.AnyVersion(), ne)
		}
	}
	if err != nil {
		s.cfg.Log.Error("console: record the operator's action", "action", action, "err", err)
		return
	}
	s.cfg.Log.Info("console: operator action", "action", action, "target", target, "source", ev.Source, "outcome", outcome)
}

// operatorEvent is an operator's action from r, as recorded.
func (s *Server) operatorEvent(r *nethttp.Request, action, target, outcome string) domain.OperatorActed {
	return domain.OperatorActed{Action: action, Target: target, Source: remoteHost(r), Credential: consoleCredential, Outcome: outcome}
}

// parkedTarget names a parked event in OperatorActed.
func parkedTarget(pe domain.ParkedEvent) string {
	return fmt.Sprintf("%s event %d (%s version %d)", pe.Handler, pe.Position, pe.Stream, pe.Version)
}

// Retrier asks the process managers to try a contact's password return or
// welcome mail again now (command.PasswordReturner.Retry,
// command.Welcomer.Retry): by is recorded in the contact's stream.
// command.ErrNothingToRetry and command.ErrKeyDestroyed say why not.
type Retrier interface {
	RetryPasswordReturn(ctx context.Context, id domain.ContactID, by domain.OperatorActed) error
	RetryWelcomeEmail(ctx context.Context, id domain.ContactID, by domain.OperatorActed) error
}

// queueRows bounds each list of the queue page (it stays under 100 KB).
const queueRows = 100

type queueBody struct {
	Returns  []projections.PasswordReturn
	Mails    []projections.WelcomeMail
	More     []string
	CanRetry bool
	Notice   string
}

// queuePage lists the password returns and welcome mails waiting (pending,
// a failure's next attempt among them) and given up, with Retry.
func (s *Server) queuePage(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	ctx := r.Context()
	b := queueBody{CanRetry: s.cfg.Retries != nil, Notice: r.URL.Query().Get("notice")}
	for _, status := range []string{projections.PasswordFailed, projections.PasswordPending} {
		rows, err := s.cfg.Views.Passwords.List(ctx, status)
		if err != nil {
			s.cfg.Log.Error("console queue", "err", err)
			s.consoleMessage(w, nethttp.StatusInternalServerError, "Error", "The password returns could not be read; see the server log.", sess, true)
			return
		}
		if n := queueRows - len(b.Returns); len(rows) > n {
			b.More = append(b.More, fmt.Sprintf("%d %s password returns not shown", len(rows)-n, status))
			rows = rows[:n]
		}
		b.Returns = append(b.Returns, rows...)
	}
	for _, status := range []string{projections.WelcomeFailed, projections.WelcomePending} {
		rows, err := s.cfg.Views.Welcome.List(ctx, status)
		if err != nil {
			s.cfg.Log.Error("console queue", "err", err)
			s.consoleMessage(w, nethttp.StatusInternalServerError, "Error", "The welcome mails could not be read; see the server log.", sess, true)
			return
		}
		if n := queueRows - len(b.Mails); len(rows) > n {
			b.More = append(b.More, fmt.Sprintf("%d %s welcome mails not shown", len(rows)-n, status))
			rows = rows[:n]
		}
		b.Mails = append(b.Mails, rows...)
	}
	s.render(w, nethttp.StatusOK, "queue", pageData{Title: "Password returns and welcome mails", SignedIn: true, CSRF: sess.csrf, Nav: "ops", Body: b})
}

// consoleRetry asks for a contact's password return (kind password) or
// welcome mail (kind welcome) to be tried again now.
func (s *Server) consoleRetry(w nethttp.ResponseWriter, r *nethttp.Request, sess session) {
	if s.cfg.Retries == nil {
		s.consoleMessage(w, nethttp.StatusNotImplemented, "Not available", "Retry is not available on this server.", sess, true)
		return
	}
	id, err := domain.ParseContactID(r.PostFormValue("contact_id"))
	if err != nil {
		s.consoleMessage(w, nethttp.StatusBadRequest, "Not a contact id", err.Error(), sess, true)
		return
	}
	kind := r.PostFormValue("kind")
	var action, what string
	retry := s.cfg.Retries.RetryPasswordReturn
	switch kind {
	case "password":
		action, what = domain.ActionRetryPasswordReturn, "password return"
	case "welcome":
		action, what, retry = domain.ActionRetryWelcomeEmail, "welcome email", s.cfg.Retries.RetryWelcomeEmail
	default:
		s.consoleMessage(w, nethttp.StatusBadRequest, "Nothing to retry", "kind must be password or welcome.", sess, true)
		return
	}
	target := "contact " + id.String()
	err = retry(context.WithoutCancel(r.Context()), id, s.operatorEvent(r, action, target, "asked"))
	switch {
	case errors.Is(err, command.ErrKeyDestroyed), errors.Is(err, command.ErrNothingToRetry):
		s.operatorActed(r, action, target, "refused: "+err.Error())
		s.consoleMessage(w, nethttp.StatusConflict, "Not retried", err.Error(), sess, true)
		return
	case err != nil:
		s.cfg.Log.Error("console retry", "contact_id", id, "what", what, "err", err)
		s.operatorActed(r, action, target, "failed: "+err.Error())
		s.consoleMessage(w, nethttp.StatusInternalServerError, "Retry failed", "The retry could not be recorded; see the server log.", sess, true)
		return
	}
	s.operatorActed(r, action, target, "asked")
	nethttp.Redirect(w, r, "/ui/ops/queue?notice="+url.QueryEscape("the "+what+" of contact "+id.String()+" is tried again now"), nethttp.StatusSeeOther)
}

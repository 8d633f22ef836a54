// Package http is usersync's HTTP interface: the FunnelKit webhook
// (recognised on any path by wpf_action, as WP Fusion does), the read API
// under /api (bearer token) and the health endpoints.
package http

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	nethttp "net/http"
	"path"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gorilla/mux"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/projections"
)

// Store is what the server needs of the event store.
type Store interface {
	domain.EventStore
	projections.EventLog
}

// Queue takes recorded webhooks for processing.
type Queue interface {
	// Await is called before a webhook is recorded; its channel gets the
	// webhook's first outcome.
	Await(webhookID string) <-chan command.Outcome
	// Submit asks for the contact's recorded webhooks to be processed.
	Submit(id domain.ContactID) error
	// Forget drops an Await no longer waited for.
	Forget(webhookID string, ch <-chan command.Outcome)
}

// Outcomes waits for a recorded webhook's outcome where the node that
// decides it may be another one (several nodes on EventStoreDB): on the
// answering node's own views.
type Outcomes interface {
	// WaitOutcome blocks until webhookID has an outcome (retrying
	// included) or ctx is done.
	WaitOutcome(ctx context.Context, webhookID string) (command.Outcome, error)
}

// Config is what the server is built from. New fills the defaults and
// validates it.
type Config struct {
	// AccessKey is the key webhooks send as access_key (required).
	AccessKey Secret
	// AdminToken is the bearer token of /api (required).
	AdminToken Secret
	// Wait is how long a webhook answer waits for processing before it
	// answers 202 queued (0: it does not wait).
	Wait time.Duration
	// Store records the webhooks and is read by /api and rebuilds (required).
	Store Store
	// Views answer /api and are rebuilt by POST /api/rebuild (required).
	Views *projections.Views
	// Queue processes the recorded webhooks (required).
	Queue Queue
	// Outcomes, if set, is what a synchronous webhook's answer waits on
	// instead of Queue.Await.
	Outcomes Outcomes
	// Log takes the webhook lines and the errors (required).
	Log *slog.Logger
	// NewID gives each webhook its id (required).
	NewID func() string
	// Now is the clock (default time.Now).
	Now func() time.Time
	// Ready reports whether the server can take webhooks (nil: always).
	Ready func(ctx context.Context) error
	// Admit, when set, is asked before a new webhook is recorded; an
	// error refuses the webhook with 503 and the error's message, not
	// recorded (FunnelKit sends it again). usersync refuses so while the
	// data disk is below its reserve.
	Admit func(ctx context.Context) error
	// Metrics serves /metrics when set.
	Metrics nethttp.Handler
	// WebhookDecorators wrap the webhook handler, the first outermost,
	// around the decorator that logs each webhook; they read what the
	// handler found out with Report (see ObserveWebhooks).
	WebhookDecorators []Decorator
	// Retries, when set, retries a contact's password return or welcome
	// mail for the console (nil: no Retry buttons).
	Retries Retrier
	// Replay hands a parked event to its handler again (nil: not offered).
	Replay func(ctx context.Context, pe domain.ParkedEvent) error
	// OnRebuild, when set, follows a rebuild started through the API.
	OnRebuild func(p projections.Progress, done bool)
	// AuthFailures throttles wrong access keys and admin tokens per source
	// address, shared by the webhook and /api (nil: not throttled). A
	// throttled source gets 429 with Retry-After for a wrong secret; a
	// right one is always accepted.
	AuthFailures *FailureLimiter
	// RefusedLogsPerSecond bounds the log lines of refused requests (0:
	// DefaultRefusedLogsPerSecond); the rest are counted in one line a
	// second.
	RefusedLogsPerSecond int
	// VerifyDir is where the console's Verify builds its scratch copy
	// (default os.TempDir()).
	VerifyDir string
	// Retention is serve's --receipt-retention, for the console's Verify.
	Retention time.Duration
	// Refused, when set, counts each request refused before it was
	// authenticated, by endpoint (EndpointWebhook, EndpointAPI) and reason
	// (RefusedUnreadable, RefusedNoAction, RefusedWrongSecret,
	// RefusedThrottled).
	Refused func(endpoint, reason string)
}

// setDefaults fills what the config may leave out.
func (c *Config) setDefaults() {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RefusedLogsPerSecond == 0 {
		c.RefusedLogsPerSecond = DefaultRefusedLogsPerSecond
	}
	if c.Refused == nil {
		c.Refused = func(string, string) {}
	}
}

// Validate reports every required part that is missing or wrong, in one
// error.
func (c Config) Validate() error {
	var problems []string
	if !c.AccessKey.set {
		problems = append(problems, "AccessKey is missing: the key webhooks must send as access_key")
	}
	if !c.AdminToken.set {
		problems = append(problems, "AdminToken is missing: the bearer token of /api")
	}
	if c.Wait < 0 {
		problems = append(problems, fmt.Sprintf("Wait is %s: it must not be negative", c.Wait))
	}
	if c.Store == nil {
		problems = append(problems, "Store is missing: the event store webhooks are recorded in")
	}
	if c.Views == nil {
		problems = append(problems, "Views is missing: the views /api answers from")
	}
	if c.Queue == nil {
		problems = append(problems, "Queue is missing: what processes the recorded webhooks")
	}
	if c.Log == nil {
		problems = append(problems, "Log is missing: the logger of webhooks and errors")
	}
	if c.NewID == nil {
		problems = append(problems, "NewID is missing: what gives each webhook its id")
	}
	if c.RefusedLogsPerSecond < 0 {
		problems = append(problems, fmt.Sprintf("RefusedLogsPerSecond is %d: it must not be negative", c.RefusedLogsPerSecond))
	}
	for i, d := range c.WebhookDecorators {
		if d == nil {
			problems = append(problems, fmt.Sprintf("WebhookDecorators[%d] is nil", i))
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("http config: %s", strings.Join(problems, "; "))
	}
	return nil
}

// Server serves the webhook and the API.
type Server struct {
	cfg          Config
	router       *mux.Router
	webhookChain nethttp.Handler // the webhook with its decorators
	rebuild      rebuildState
	refused      *refusedLog
	console      *console
	sessions     sessions
	verifying    sync.Mutex // one console verify at a time
}

// New builds the server's routes from cfg, its defaults filled, once it is
// valid (see Config.Validate).
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, router: mux.NewRouter(), refused: newRefusedLog(cfg.Log, cfg.RefusedLogsPerSecond, cfg.Now)}
	r := s.router
	r.HandleFunc("/healthz", s.healthz).Methods("GET", "HEAD")
	r.HandleFunc("/readyz", s.readyz).Methods("GET", "HEAD")
	if cfg.Metrics != nil {
		r.Handle("/metrics", cfg.Metrics).Methods("GET")
	}
	if err := s.consoleRoutes(r); err != nil {
		return nil, err
	}
	api := r.PathPrefix("/api/").Subrouter()
	api.Use(s.requireAdmin)
	api.HandleFunc("/users", s.listUsers).Methods("GET")
	api.HandleFunc("/users/{contact_id}", s.getUser).Methods("GET")
	api.HandleFunc("/users/{contact_id}/history", s.history).Methods("GET")
	api.HandleFunc("/tags", s.listTags).Methods("GET")
	api.HandleFunc("/tags/{id}/users", s.tagUsers).Methods("GET")
	api.HandleFunc("/password-returns", s.passwordReturns).Methods("GET")
	api.HandleFunc("/webhooks/{id}", s.getWebhook).Methods("GET")
	api.HandleFunc("/parked", s.parked).Methods("GET")
	api.HandleFunc("/parked/replay", s.replayParked).Methods("POST")
	api.HandleFunc("/rebuild", s.startRebuild).Methods("POST")
	api.HandleFunc("/rebuild", s.rebuildStatus).Methods("GET")
	api.NotFoundHandler = nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		writeError(w, nethttp.StatusNotFound, "no such API endpoint: see docs/api.md")
	})
	api.MethodNotAllowedHandler = nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		writeError(w, nethttp.StatusMethodNotAllowed, "method "+r.Method+" not allowed here: see docs/api.md")
	})
	// Everything else is the webhook, on any path, as WP Fusion does.
	webhook := logWebhooks(cfg.Log, s.refused, cfg.Refused)(nethttp.HandlerFunc(s.webhook))
	for i := len(cfg.WebhookDecorators) - 1; i >= 0; i-- {
		webhook = cfg.WebhookDecorators[i](webhook)
	}
	r.NotFoundHandler = webhook
	r.MethodNotAllowedHandler = webhook
	s.webhookChain = webhook
	return s, nil
}

// ServeHTTP implements http.Handler. A request on a path no route can
// match goes to the webhook at once, as the router would send it, without
// the router's matching of every route.
func (s *Server) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	if browserHome(r) {
		nethttp.Redirect(w, r, "/ui/", nethttp.StatusSeeOther)
		return
	}
	if webhookPath(r.URL.Path) {
		s.webhookChain.ServeHTTP(w, r)
		return
	}
	s.router.ServeHTTP(w, r)
}

// webhookPath reports whether the router would hand a request on p to the
// webhook whatever its method: p is in the clean form the router does not
// redirect, and no route is on it.
func webhookPath(p string) bool {
	switch p {
	case "/":
		return true
	case "", "/healthz", "/readyz", "/metrics":
		return false
	}
	if strings.HasPrefix(p, "/api/") || strings.HasPrefix(p, "/ui/") || p[0] != '/' {
		return false
	}
	clean := path.Clean(p)
	if strings.HasSuffix(p, "/") && clean != "/" {
		clean += "/"
	}
	return clean == p
}

func (s *Server) healthz(w nethttp.ResponseWriter, r *nethttp.Request) {
	writeJSON(w, nethttp.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w nethttp.ResponseWriter, r *nethttp.Request) {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(r.Context()); err != nil {
			writeJSON(w, nethttp.StatusServiceUnavailable, map[string]string{"status": "not ready", "reason": err.Error()})
			return
		}
	}
	writeJSON(w, nethttp.StatusOK, map[string]string{"status": "ready"})
}

// requireAdmin lets through requests with the admin token as a bearer
// token (the scheme in any case, RFC 6750 and RFC 9110). A wrong or
// missing token is 401, or 429 once its source is throttled (see
// Config.AuthFailures); the right token is checked first and always
// passes.
func (s *Server) requireAdmin(next nethttp.Handler) nethttp.Handler {
	return nethttp.HandlerFunc(func(w nethttp.ResponseWriter, r *nethttp.Request) {
		if token, ok := bearerToken(r.Header.Get("Authorization")); ok && s.cfg.AdminToken.Matches(token) {
			next.ServeHTTP(w, r)
			return
		}
		source := remoteHost(r)
		if wait, throttled := s.throttled(source); throttled {
			w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(wait)))
			writeError(w, nethttp.StatusTooManyRequests, fmt.Sprintf("too many wrong admin tokens from this address: try again in %d s", retryAfterSeconds(wait)))
			s.refusedAPI(r, nethttp.StatusTooManyRequests, RefusedThrottled, source)
			return
		}
		w.Header().Set("WWW-Authenticate", `Bearer realm="usersync"`)
		writeError(w, nethttp.StatusUnauthorized, "missing or wrong admin token: send Authorization: Bearer <admin token>")
		s.refusedAPI(r, nethttp.StatusUnauthorized, RefusedWrongSecret, source)
	})
}

// refusedAPI logs (within the refused lines' limit) and counts a refused
// API request, without its path's query or its headers.
func (s *Server) refusedAPI(r *nethttp.Request, status int, reason, source string) {
	s.cfg.Refused(EndpointAPI, reason)
	s.refused.Info("api request refused", "status", status, "reason", reason, "method", r.Method, "source", source)
}

// throttled records a failed secret from source and reports whether the
// source is throttled, and for how long.
func (s *Server) throttled(source string) (time.Duration, bool) {
	if s.cfg.AuthFailures == nil {
		return 0, false
	}
	wait, ok := s.cfg.AuthFailures.Fail(source)
	return wait, !ok
}

// bearerToken is the token of an Authorization header with the Bearer
// scheme, whatever its case.
func bearerToken(header string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimSpace(token), true
}

func writeJSON(w nethttp.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func writeError(w nethttp.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// rebuildState is the progress of the last rebuild started through the API.
type rebuildState struct {
	mu         sync.Mutex
	Status     string     `json:"status"`
	Position   uint64     `json:"position"`
	Head       uint64     `json:"head"`
	Events     uint64     `json:"events"`
	Parked     int        `json:"parked"`
	StartedAt  *time.Time `json:"started_at,omitempty"`
	FinishedAt *time.Time `json:"finished_at,omitempty"`
	Error      string     `json:"error,omitempty"`
}

func (s *Server) startRebuild(w nethttp.ResponseWriter, r *nethttp.Request) {
	if !s.beginRebuild() {
		writeError(w, nethttp.StatusConflict, "a rebuild is already running: follow it at GET /api/rebuild")
		return
	}
	writeJSON(w, nethttp.StatusAccepted, map[string]string{"status": "running", "progress": "/api/rebuild"})
}

// beginRebuild starts a rebuild in the background (aside, then swapped
// in); false when one is already running.
func (s *Server) beginRebuild() bool {
	st := &s.rebuild
	st.mu.Lock()
	if st.Status == "running" {
		st.mu.Unlock()
		return false
	}
	now := s.cfg.Now().UTC()
	st.Status, st.Position, st.Head, st.Events, st.Parked, st.StartedAt, st.FinishedAt, st.Error = "running", 0, 0, 0, 0, &now, nil, ""
	st.mu.Unlock()
	go func() {
		var last projections.Progress
		res, err := projections.Rebuild(context.Background(), s.cfg.Views, s.cfg.Store, func(p projections.Progress) {
			st.mu.Lock()
			st.Position, st.Head, st.Events = p.Position, p.Head, p.Events
			st.mu.Unlock()
			last = p
			if s.cfg.OnRebuild != nil {
				s.cfg.OnRebuild(p, false)
			}
		})
		stats := res.Stats
		for _, m := range res.Moved {
			s.cfg.Log.Warn("rebuild: a process had handled events beyond the log's end; it resumes from the rebuilt position",
				"process", m.Name, "position", m.From, "resumes_from", m.To)
		}
		if s.cfg.OnRebuild != nil {
			last.Position, last.Events = stats.Position, stats.Events
			s.cfg.OnRebuild(last, true)
		}
		st.mu.Lock()
		defer st.mu.Unlock()
		end := s.cfg.Now().UTC()
		st.FinishedAt, st.Parked = &end, stats.Parked
		if err != nil {
			st.Status, st.Error = "failed", err.Error()
			s.cfg.Log.Error("rebuild failed", "err", err)
			return
		}
		st.Status, st.Position, st.Events = "done", stats.Position, stats.Events
		s.cfg.Log.Info("rebuild done", "events", stats.Events, "users", stats.Users, "parked", stats.Parked, "duration", stats.Duration)
	}()
	return true
}

func (s *Server) rebuildStatus(w nethttp.ResponseWriter, r *nethttp.Request) {
	st := &s.rebuild
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.Status == "" {
		writeJSON(w, nethttp.StatusOK, map[string]string{"status": "idle"})
		return
	}
	writeJSON(w, nethttp.StatusOK, st)
}

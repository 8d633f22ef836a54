package http

import (
	"context"
	"io"
	"log/slog"
	nethttp "net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/domain/command"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// queue is a Queue that processes nothing.
type queue struct{}

func (queue) Await(string) <-chan command.Outcome   { return make(chan command.Outcome, 1) }
func (queue) Submit(domain.ContactID) error         { return nil }
func (queue) Forget(string, <-chan command.Outcome) {}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testConfig is a complete config over a real store and real views in a
// temporary directory.
func testConfig(t testing.TB, log *slog.Logger) Config {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	store, err := eventstore.Open(ctx, filepath.Join(dir, "events.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	views, err := projections.Open(ctx, filepath.Join(dir, "views.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { views.Close() })
	return Config{
		AccessKey: NewSecret("access-key"), AdminToken: NewSecret("admin-token"), Wait: time.Second,
		Store: store, Views: views, Queue: queue{}, Log: log, NewID: func() string { return "w1" },
	}
}

func TestConfig_Validate(t *testing.T) {
	tests := []struct {
		name   string
		change func(*Config)
		// want are the parts of the message, "" when valid.
		want []string
	}{
		{"complete", func(*Config) {}, nil},
		{"without the optional parts", func(c *Config) { c.Now, c.Ready, c.Metrics, c.Replay, c.OnRebuild, c.Wait = nil, nil, nil, nil, nil, 0 }, nil},
		{"no access key", func(c *Config) { c.AccessKey = Secret{} }, []string{"AccessKey is missing"}},
		{"an empty access key", func(c *Config) { c.AccessKey = NewSecret("") }, []string{"AccessKey is missing"}},
		{"no admin token", func(c *Config) { c.AdminToken = Secret{} }, []string{"AdminToken is missing"}},
		{"a negative wait", func(c *Config) { c.Wait = -time.Second }, []string{"Wait is -1s: it must not be negative"}},
		{"no store", func(c *Config) { c.Store = nil }, []string{"Store is missing"}},
		{"no views", func(c *Config) { c.Views = nil }, []string{"Views is missing"}},
		{"no queue", func(c *Config) { c.Queue = nil }, []string{"Queue is missing"}},
		{"no log", func(c *Config) { c.Log = nil }, []string{"Log is missing"}},
		{"no ids", func(c *Config) { c.NewID = nil }, []string{"NewID is missing"}},
		{"a nil decorator", func(c *Config) {
			c.WebhookDecorators = []Decorator{ObserveWebhooks(func(string, string, time.Duration) {}), nil}
		},
			[]string{"WebhookDecorators[1] is nil"}},
		{"several", func(c *Config) { c.Store, c.Log = nil, nil }, []string{"http config: ", "Store is missing", "; Log is missing"}},
	}
	base := testConfig(t, quietLog())
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.change(&cfg)
			err := cfg.Validate()
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Validate: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("Validate accepted it")
			}
			for _, part := range tt.want {
				if !strings.Contains(err.Error(), part) {
					t.Errorf("Validate: %q, want it to contain %q", err, part)
				}
			}
		})
	}
}

func TestNew(t *testing.T) {
	if s, err := New(Config{}); err == nil || s != nil {
		t.Fatalf("New of an empty config: %v, %v", s, err)
	}
	cfg := testConfig(t, quietLog())
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if s.cfg.Now == nil {
		t.Fatal("New did not default Now")
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cfg.Now = func() time.Time { return at }
	if s, err = New(cfg); err != nil || !s.cfg.Now().Equal(at) {
		t.Fatalf("New replaced the clock given: %v", err)
	}
}

// The shortcut to the webhook must agree with the router: a path it takes
// is one the router hands to the webhook, for every method.
func TestWebhookPath_AsTheRouter(t *testing.T) {
	cfg := testConfig(t, quietLog())
	cfg.Metrics = nethttp.NotFoundHandler()
	var hit bool
	cfg.WebhookDecorators = []Decorator{func(nethttp.Handler) nethttp.Handler {
		return nethttp.HandlerFunc(func(nethttp.ResponseWriter, *nethttp.Request) { hit = true })
	}}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"/", "/wp-json/x", "/hook/", "//", "/a//b", "/a/../b", "/./", "/healthz", "/healthz/", "/readyz", "/metrics",
		"/api", "/api/", "/api/users", "/API/users", "/x/.", "/é"} {
		for _, method := range []string{"GET", "POST", "HEAD"} {
			hit = false
			r := httptest.NewRequest(method, "http://example.com/", nil)
			r.URL.Path = p
			s.router.ServeHTTP(httptest.NewRecorder(), r)
			if webhookPath(p) && !hit {
				t.Errorf("%s %q: the shortcut takes it to the webhook, the router does not", method, p)
			}
		}
	}
}

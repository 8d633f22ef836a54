package funnelkit_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/usersync/usersync/funnelkit"
	"github.com/usersync/usersync/funnelkit/simulator"
)

// An Application Password as WordPress shows it: groups separated by spaces.
const (
	testUser     = "usersync-bot"
	testPassword = "abcd EFGH 1234 ijkl MNOP 5678"
)

// startSim serves a fresh simulator on 127.0.0.1.
func startSim(t *testing.T) (*simulator.Simulator, string) {
	t.Helper()
	sim := simulator.New(testUser, testPassword)
	baseURL, stop := sim.Start()
	t.Cleanup(stop)
	return sim, baseURL
}

// startHandler serves h on 127.0.0.1.
func startHandler(t *testing.T, h http.HandlerFunc) string {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv.URL
}

func newClient(t *testing.T, baseURL string, mods ...func(*funnelkit.Config)) *funnelkit.Client {
	t.Helper()
	cfg := funnelkit.Config{BaseURL: baseURL, User: testUser, Password: testPassword}
	for _, m := range mods {
		m(&cfg)
	}
	c, err := funnelkit.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return c
}

func withTimeout(d time.Duration) func(*funnelkit.Config) {
	return func(c *funnelkit.Config) { c.Timeout = d }
}

func ctx(t *testing.T) context.Context { return t.Context() }

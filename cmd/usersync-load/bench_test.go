package main

import (
	"context"
	nethttp "net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"
)

// BenchmarkSend is the tool's own cost per webhook, against a trivial
// handler on loopback (its CPU is in the figure too).
func BenchmarkSend(b *testing.B) {
	srv := httptest.NewServer(nethttp.HandlerFunc(trivialHandler))
	defer srv.Close()
	base, _ := url.Parse(srv.URL + "/")
	cfg, err := parseLoad([]string{"--target", srv.URL, "--access-key", "k", "--async", "--connections", "16"}, nil)
	if err != nil {
		b.Fatal(err)
	}
	cfg.Requests, cfg.Duration = b.N, time.Hour
	s := &sender{cfg: cfg, client: &nethttp.Client{Transport: newTransport(cfg.Connections, false)}, base: base, accessKey: "k"}
	b.ResetTimer()
	res := s.run(context.Background())
	if res.stats.latency.Count() != uint64(b.N) {
		b.Fatalf("answered %d of %d", res.stats.latency.Count(), b.N)
	}
}

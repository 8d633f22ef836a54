package main

import (
	"context"
	"io"
	nethttp "net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"
)

func TestRawConn_ReadsEveryKindOfAnswer(t *testing.T) {
	big := strings.Repeat("x", 10000)
	tests := []struct {
		name    string
		handler nethttp.HandlerFunc
		want    string
	}{
		{"content length", func(w nethttp.ResponseWriter, r *nethttp.Request) { io.WriteString(w, "short") }, "short"},
		{"chunked", func(w nethttp.ResponseWriter, r *nethttp.Request) {
			io.WriteString(w, big[:5000])
			w.(nethttp.Flusher).Flush()
			io.WriteString(w, big[5000:])
		}, big},
		{"connection close", func(w nethttp.ResponseWriter, r *nethttp.Request) {
			w.Header().Set("Connection", "close")
			io.WriteString(w, "bye")
		}, "bye"},
		{"echo of the body", func(w nethttp.ResponseWriter, r *nethttp.Request) {
			b, _ := io.ReadAll(r.Body)
			io.WriteString(w, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Content-Type")+" "+string(b))
		}, "POST /hook?a=1 application/json {}"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(tt.handler)
			defer srv.Close()
			u, _ := url.Parse(srv.URL)
			rc := &rawConn{addr: u.Host, host: u.Host, timeout: 10 * time.Second}
			defer rc.close()
			// Three requests in a row on the one connection (or a new
			// one when the server closed it).
			for i := range 3 {
				a, err := rc.do(context.Background(), "POST", "/hook?a=1", "application/json", []byte("{}"))
				if err != nil || a.status != 200 || string(a.body) != tt.want {
					t.Fatalf("request %d: %d %.40q, %v; want 200 %.40q", i, a.status, a.body, err, tt.want)
				}
			}
		})
	}
}

func TestRawConn_RefusesAnAddressOffThisMachine(t *testing.T) {
	// The dialer refuses before connecting: no packet leaves.
	rc := &rawConn{addr: "192.0.2.1:80", host: "192.0.2.1", timeout: time.Second}
	_, err := rc.do(context.Background(), "GET", "/", "", nil)
	if err == nil || errorKind(err) != "refused: not a loopback address" {
		t.Fatalf("err = %v (%s), want a refusal", err, errorKind(err))
	}
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	nethttp "net/http"
	"time"
)

// trivialAnswer is what the trivial server answers every request with: a
// queued webhook's answer, the same size as usersync's.
const trivialAnswer = `{"success":true,"message":"Queued","webhook_id":"01a23180-b8ab-7d75-b21a-3c00da612525","status":"queued"}` + "\n"

// trivialCmd serves a trivial net/http handler on a loopback address
// until ctx ends: the yardstick of the intake ratio (usersync's durable
// webhooks/s over this handler's requests/s, same load, same machine).
func trivialCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("trivial", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8089", "loopback address to listen on")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: usersync-load trivial [--addr 127.0.0.1:8089]\n\nServes a trivial handler that reads each request and answers 202 with a\nfixed JSON body, until interrupted: load it like usersync to get the intake\nratio's denominator.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return errHelp
		}
		return errUsage
	}
	host, _, err := net.SplitHostPort(*addr)
	if err != nil || !loopbackHost(host) {
		return fmt.Errorf("trivial: --addr %q must be a loopback host:port, e.g. 127.0.0.1:8089", *addr)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return fmt.Errorf("trivial: %w", err)
	}
	srv := &nethttp.Server{Handler: nethttp.HandlerFunc(trivialHandler), ReadHeaderTimeout: 10 * time.Second}
	fmt.Fprintf(stdout, "trivial handler on http://%s (any access key); stop with Ctrl-C\n", ln.Addr())
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); !errors.Is(err, nethttp.ErrServerClosed) {
		return fmt.Errorf("trivial: %w", err)
	}
	return nil
}

func trivialHandler(w nethttp.ResponseWriter, r *nethttp.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(nethttp.StatusAccepted)
	_, _ = io.WriteString(w, trivialAnswer)
}

// Command usersync-load measures usersync under load: it sends
// FunnelKit-shaped webhooks (GET, form or JSON; add, update and
// update_tags over a set of contacts with a skew) at a fixed rate or flat
// out, can start its own FunnelKit simulator and its own usersync, and
// reports throughput, latency percentiles, errors and the time until every
// webhook it sent was processed. Its seed command writes a large history
// straight into an event store. See docs/benchmarks.md, "The load tool".
//
//	usersync-load [flags]                 send webhooks (see --help)
//	usersync-load seed --data DIR [flags] write users and their history into DIR/events.db
//	usersync-load trivial [--addr A]      serve a trivial handler, the intake ratio's yardstick
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `usersync-load: load usersync with FunnelKit webhooks, or seed a large store

Usage:
  usersync-load [flags]                   send webhooks and report (usersync-load --help)
  usersync-load seed --data DIR [flags]   write users and their webhook history into DIR/events.db
                                          (usersync-load seed --help)
  usersync-load trivial [--addr ADDR]     serve a trivial net/http handler to compare usersync's intake with
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the load or the seed command and returns the exit code: 0
// when it ran (and, for a load, every webhook was processed within
// --drain-timeout), 1 on an error, 2 on a usage error.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	var err error
	switch {
	case len(args) > 0 && args[0] == "seed":
		err = seedCmd(ctx, args[1:], stdout, stderr)
	case len(args) > 0 && args[0] == "trivial":
		err = trivialCmd(ctx, args[1:], stdout, stderr)
	case len(args) > 0 && (args[0] == "help" || args[0] == "-h" && len(args) == 1):
		fmt.Fprint(stdout, usage)
		return 0
	default:
		err = loadCmd(ctx, args, stdout, stderr)
	}
	switch {
	case errors.Is(err, errHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case err != nil:
		fmt.Fprintf(stderr, "usersync-load: %v\n", err)
		return 1
	}
	return 0
}

var (
	// errUsage is returned after a flag error was already printed.
	errUsage = errors.New("usage")
	// errHelp is returned after --help printed the flags.
	errHelp = errors.New("help")
)

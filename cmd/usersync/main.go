// Command usersync is the FunnelKit webhook-to-user sync engine.
//
//	usersync serve [flags]        receive FunnelKit webhooks, serve the read API
//	usersync rebuild --data DIR   drop and rebuild every view from the events
//	usersync parked --data DIR    list the events a handler parked
//	usersync migrate --from DIR --to esdb://…   copy the embedded store into EventStoreDB
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

const usage = `usersync: an event-sourced FunnelKit webhook-to-user sync engine

Usage:
  usersync serve [flags]          receive FunnelKit webhooks and serve the API (see --help)
  usersync rebuild [--data DIR]   drop and rebuild every view from the events
  usersync parked [--data DIR]    list the events a handler parked
  usersync migrate --from DIR --to esdb://HOST:PORT
                                  copy the embedded store into EventStoreDB

Run "usersync COMMAND --help" for a command's flags.
`

func main() { os.Exit(runWithSignals(os.Args[1:])) }

// runWithSignals runs a command until it ends or SIGINT/SIGTERM asks it to
// stop (serve then drains and exits 0).
func runWithSignals(args []string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return run(ctx, args, os.Stdout, os.Stderr)
}

// run executes one command and returns the process exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "serve":
		err = serveCmd(ctx, args[1:], stdout, stderr)
	case "rebuild":
		err = rebuildCmd(ctx, args[1:], stdout, stderr)
	case "parked":
		err = parkedCmd(ctx, args[1:], stdout, stderr)
	case "migrate":
		err = migrateCmd(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "usersync: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, errUsage) {
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "usersync %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// errUsage is returned after a flag error was already printed.
var errUsage = errors.New("usage")

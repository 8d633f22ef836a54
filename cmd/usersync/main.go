// Command usersync is the FunnelKit webhook-to-user sync engine.
//
//	usersync serve [flags]        receive FunnelKit webhooks, serve the read API
//	usersync rebuild --data DIR   drop and rebuild every view from the events
//	usersync parked list|replay|skip   the events a handler parked
//	usersync history CONTACT_ID   a contact's events in words, newest first
//	usersync users [--search S]   search the users view
//	usersync verify               compare the views with a rebuild (exit 1 on a difference)
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
  usersync parked list|replay|skip [--data DIR]
                                  list, replay or skip the events a handler parked
  usersync history CONTACT_ID [--json] [--limit N] [--before CURSOR]
                                  a contact's events in words, newest first
  usersync users [--search S] [--tag ID] [--role R] [--json]
                                  search users by email, login or contact id
  usersync verify [--data DIR]    rebuild into a scratch copy and list every
                                  difference from the views (exit 1 if any)
  usersync migrate --from DIR --to esdb://HOST:PORT
                                  copy the embedded store into EventStoreDB

All but serve and migrate read a stopped server's data directory (--data,
default ./data) and never create one. Exit codes: 0 ok, 1 an error or a
finding (verify's differences), 2 a usage error.
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
	case "history":
		err = historyCmd(ctx, args[1:], stdout, stderr)
	case "users":
		err = usersCmd(ctx, args[1:], stdout, stderr)
	case "verify":
		err = verifyCmd(ctx, args[1:], stdout, stderr)
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
	if errors.Is(err, errFinding) {
		return 1
	}
	if err != nil {
		fmt.Fprintf(stderr, "usersync %s: %v\n", args[0], err)
		return 1
	}
	return 0
}

// errUsage is returned after a flag error was already printed.
var errUsage = errors.New("usage")

// Command esdb-standin runs the in-process EventStoreDB stand-in (package
// eventstore/esdb/esdbtest) as a process, so that several usersync processes can share one
// event store in tests and demos where no EventStoreDB server can run.
//
//	esdb-standin [--addr 127.0.0.1:2113] [--data FILE] [--max-append-size BYTES] [--allow-remote]
//
// It prints the connection string on the first line of standard output, then serves until
// SIGINT or SIGTERM. It has no authentication and no TLS: it refuses a non-loopback address
// unless --allow-remote is given. It is not EventStoreDB; see the package comment of esdbtest
// for what it does not implement.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/usersync/usersync/eventstore/esdb/esdbtest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr))
}

// run parses the flags, serves until ctx ends and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("esdb-standin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:2113", "address to listen on (loopback only unless --allow-remote)")
	data := fs.String("data", "", "append-only file to keep the log (with the persistent subscription groups) in, reloaded at start (default: memory only)")
	maxAppend := fs.Int("max-append-size", esdbtest.DefaultMaxAppendSize, "append size limit in bytes, like the server's MaxAppendSize")
	allowRemote := fs.Bool("allow-remote", false, "allow a non-loopback --addr (the stand-in has no authentication)")
	verbose := fs.Bool("v", false, "log every call to standard error")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: esdb-standin [flags]\n\nRuns an EventStoreDB stand-in for tests; prints its connection string, serves until SIGINT/SIGTERM.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "esdb-standin: unexpected argument %q (all settings are flags; see --help)\n", fs.Arg(0))
		return 2
	}
	if *maxAppend <= 0 {
		fmt.Fprintf(stderr, "esdb-standin: --max-append-size %d: want a positive number of bytes\n", *maxAppend)
		return 2
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	srv, err := esdbtest.Start(esdbtest.Options{
		Addr:          *addr,
		Logger:        logger,
		MaxAppendSize: *maxAppend,
		AllowRemote:   *allowRemote,
		DataFile:      *data,
	})
	if err != nil {
		fmt.Fprintf(stderr, "esdb-standin: %v\n", err)
		return 1
	}
	fmt.Fprintln(stdout, srv.ConnString())
	<-ctx.Done()
	if err := srv.Close(); err != nil {
		fmt.Fprintf(stderr, "esdb-standin: %v\n", err)
		return 1
	}
	logger.Info("esdb stand-in stopped")
	return 0
}

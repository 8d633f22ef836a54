package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/projections"
)

func verifyCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	of := addOfflineFlags(fs)
	progress := fs.String("progress", "auto", "progress bar: auto (on a terminal), on, off")
	limit := fs.Int("limit", 100, "list at most this many differences (0: all)")
	asJSON := fs.Bool("json", false, "print the differences as JSON (for scripts)")
	retention, err := retentionFlag(fs)
	if err != nil {
		return err
	}
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: usersync verify [--data DIR] [--store esdb://…] [--limit N] [--json]\n\n"+
			"Rebuilds every view from the events into a scratch copy and lists every difference\nfrom the live views (table, row, column, live and rebuilt value). The live views are\nonly read. Exit 0 when they are equal, 1 when they differ. Stop usersync serve first.\n\n")
		fs.PrintDefaults()
	}
	if help, err := parseFlags(fs, args, stderr); help || err != nil {
		return err
	}
	bar, ok := progressWanted(*progress, stderr)
	if !ok {
		return usageError(stderr, fs, "--progress must be auto, on or off, not %q", *progress)
	}
	if *limit < 0 {
		return usageError(stderr, fs, "--limit %d must be 0 (all) or more", *limit)
	}
	if *retention < 0 {
		return usageError(stderr, fs, "--receipt-retention %s must be 0 (keep every receipt) or a positive duration", *retention)
	}
	// The live views are opened without a retention: verify only reads
	// them, and prunes nothing.
	o, err := of.open(ctx, stderr, true, true)
	if err != nil {
		return err
	}
	defer o.Close()
	// Positions of another store's log mean nothing in this one (verify
	// reads, so it does not mark the views as FollowStore would).
	if kind, err := o.views.StoreKind(ctx); err != nil {
		return err
	} else if kind != o.store.kind {
		return fmt.Errorf("%s follows the %s event store, not this %s one (--store): verify with the --store its serve runs with, or move it with usersync migrate", o.views.Path(), kind, o.store.kind)
	}
	scratch, err := os.MkdirTemp(o.paths.dir, ".verify-")
	if err != nil {
		return fmt.Errorf("make a scratch directory in --data %s: %w", o.paths.dir, err)
	}
	defer os.RemoveAll(scratch)
	var report func(projections.Progress)
	if bar {
		pb := &progressBar{w: stderr}
		report = pb.update
		defer pb.finish()
	}
	res, err := o.views.Verify(ctx, o.store, projections.VerifyOptions{Dir: scratch, Limit: *limit, Retention: *retention, Progress: report})
	if err != nil {
		return err
	}
	diffs, stats := res.Differences, res.Stats
	lag := ""
	if res.Head > res.ViewsAt {
		lag = fmt.Sprintf("\nthe log goes on to position %d, which the views have not applied yet: usersync serve applies it when it starts\n", res.Head)
	}
	if *asJSON {
		if diffs == nil {
			diffs = []projections.Difference{}
		}
		b, err := json.MarshalIndent(map[string]any{"equal": len(diffs) == 0, "events": stats.Events, "position": stats.Position, "head": res.Head, "differences": diffs}, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s\n", b)
	} else {
		if len(diffs) == 0 {
			fmt.Fprintf(stdout, "the views equal a rebuild from %d events (up to position %d): no differences\n%s", stats.Events, stats.Position, lag)
			return nil
		}
		more := ""
		if *limit > 0 && len(diffs) >= *limit {
			more = " (the first; --limit 0 lists all)"
		}
		noun := "differences"
		if len(diffs) == 1 {
			noun = "difference"
		}
		fmt.Fprintf(stdout, "the views differ from a rebuild from %d events (up to position %d): %d %s%s\n", stats.Events, stats.Position, len(diffs), noun, more)
		for _, d := range diffs {
			fmt.Fprintln(stdout, "  "+d.String())
		}
		fmt.Fprintf(stdout, "%susersync rebuild --data %s replaces the views with the rebuild\n", lag, shellWord(o.paths.dir))
	}
	if len(diffs) > 0 {
		return errFinding
	}
	return nil
}

package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	json "github.com/goccy/go-json"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/projections"
)

const parkedUsage = `Usage:
  usersync parked [list] [--handler H] [--json] [--data DIR]
      list the events a handler gave up on, with their error
  usersync parked replay [--handler H] [POSITION…] [--data DIR] [--store esdb://…]
      apply them again: a view's parked events by rebuilding the views; a process
      manager's (password_return, welcome_email) need serve's FunnelKit and mail
      settings, so replay them on the running server (POST /api/parked/replay)
  usersync parked skip --handler H POSITION… [--data DIR]
      forget them: the handler never handles them (the events stay in the log)

Stop usersync serve first.

`

func parkedCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	sub := "list"
	if len(args) > 0 && (args[0] == "list" || args[0] == "replay" || args[0] == "skip") {
		sub, args = args[0], args[1:]
	} else if len(args) > 0 && args[0] != "" && args[0][0] != '-' {
		fmt.Fprintf(stderr, "usersync parked: unknown subcommand %q: want list, replay or skip\n\n%s", args[0], parkedUsage)
		return errUsage
	}
	fs := flag.NewFlagSet("parked "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	of := addOfflineFlags(fs)
	handler := fs.String("handler", "", "only this handler's parked events")
	asJSON := fs.Bool("json", false, "print as JSON (for scripts)")
	progress := fs.String("progress", "auto", "progress bar of replay's rebuild: auto (on a terminal), on, off")
	retention, err := retentionFlag(fs)
	if err != nil {
		return err
	}
	fs.Usage = func() {
		fmt.Fprint(stderr, parkedUsage)
		fs.PrintDefaults()
	}
	pos, help, err := splitArgs(fs, args, stderr)
	if help || err != nil {
		return err
	}
	var positions []uint64
	for _, p := range pos {
		n, err := strconv.ParseUint(p, 10, 64)
		if err != nil || n == 0 {
			return usageError(stderr, fs, "POSITION %q must be the position of a parked event (a positive number)", domain.Truncate(p, 40))
		}
		positions = append(positions, n)
	}
	if sub == "list" && len(positions) > 0 {
		return usageError(stderr, fs, "list takes no POSITION (got %d)", len(positions))
	}
	if sub == "skip" && (*handler == "" || len(positions) == 0) {
		return usageError(stderr, fs, "skip needs --handler and at least one POSITION: it forgets only what it is told to")
	}
	bar, ok := progressWanted(*progress, stderr)
	if !ok {
		return usageError(stderr, fs, "--progress must be auto, on or off, not %q", *progress)
	}
	// The parked events are listed in views.db; the log is read by
	// replay's rebuild only, but --store says where it is, and so whether
	// --data holds events.db.
	if *retention < 0 {
		return usageError(stderr, fs, "--receipt-retention %s must be 0 (keep every receipt) or a positive duration", *retention)
	}
	var opts []projections.Option
	if sub == "replay" {
		opts = append(opts, projections.WithReceiptRetention(*retention))
	}
	o, err := of.open(ctx, stderr, sub == "replay", true, opts...)
	if err != nil {
		return err
	}
	defer o.Close()
	parked, err := o.views.Parked(ctx, *handler)
	if err != nil {
		return err
	}
	if len(positions) > 0 {
		parked = slices.DeleteFunc(parked, func(pe domain.ParkedEvent) bool { return !slices.Contains(positions, pe.Position) })
		if len(parked) == 0 {
			return fmt.Errorf("no parked event at position %v%s: list them with usersync parked list", positions, forHandler(*handler))
		}
	}
	switch sub {
	case "skip":
		return skipParked(ctx, o.views, parked, stdout)
	case "replay":
		return replayParked(ctx, o, parked, bar, stdout, stderr)
	}
	if *asJSON {
		if parked == nil {
			parked = []domain.ParkedEvent{}
		}
		b, err := json.MarshalIndent(map[string]any{"parked": parked}, "", "  ")
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(stdout, "%s\n", b)
		return err
	}
	if len(parked) == 0 {
		fmt.Fprintln(stdout, "no parked events")
		return nil
	}
	if err := writeParked(stdout, parked); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "\nusersync parked replay applies them again (a view's by a rebuild); usersync parked skip --handler H POSITION forgets one.")
	return nil
}

func forHandler(h string) string {
	if h == "" {
		return ""
	}
	return " for handler " + h
}

func writeParked(w io.Writer, parked []domain.ParkedEvent) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "HANDLER\tPOSITION\tSTREAM\tVERSION\tTYPE\tPARKED AT\tERROR")
	for _, pe := range parked {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\t%s\t%s\n", pe.Handler, pe.Position, pe.Stream, pe.Version, pe.Type, pe.ParkedAt.Format(time.RFC3339), pe.Error)
	}
	return tw.Flush()
}

// skipParked forgets parked events.
func skipParked(ctx context.Context, views *projections.Views, parked []domain.ParkedEvent, stdout io.Writer) error {
	for _, pe := range parked {
		if err := views.Unpark(ctx, pe.Handler, pe.Position); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "skipped event %d (%s in %s) for %s: it stays in the log, %s will not handle it\n", pe.Position, pe.Type, pe.Stream, pe.Handler, pe.Handler)
	}
	return nil
}

// replayParked applies parked events again. A view applies events in
// order only, so its parked events are replayed by rebuilding the views
// (what this build cannot read is parked again); a process manager's need
// the settings of serve and are refused with what to do.
func replayParked(ctx context.Context, o *offline, parked []domain.ParkedEvent, bar bool, stdout, stderr io.Writer) error {
	if len(parked) == 0 {
		fmt.Fprintln(stdout, "no parked events")
		return nil
	}
	views := o.views.Names()
	var ofViews, others []domain.ParkedEvent
	for _, pe := range parked {
		if slices.Contains(views, pe.Handler) {
			ofViews = append(ofViews, pe)
		} else {
			others = append(others, pe)
		}
	}
	if len(ofViews) > 0 {
		if err := followStore(ctx, o.views, *o.store, o.paths.dir); err != nil {
			return err
		}
		var report func(projections.Progress)
		if bar {
			pb := &progressBar{w: stderr}
			report = pb.update
			defer pb.finish()
		}
		stats, err := o.views.Rebuild(ctx, o.store, report)
		if err != nil {
			return err
		}
		still, err := o.views.Parked(ctx, "")
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "rebuilt the views from %d events to replay %d parked events\n", stats.Events, len(ofViews))
		for _, pe := range ofViews {
			again := slices.ContainsFunc(still, func(s domain.ParkedEvent) bool { return s.Handler == pe.Handler && s.Position == pe.Position })
			if again {
				fmt.Fprintf(stdout, "event %d for %s: parked again (this build still cannot apply it)\n", pe.Position, pe.Handler)
			} else {
				fmt.Fprintf(stdout, "event %d for %s: replayed\n", pe.Position, pe.Handler)
			}
		}
	}
	if len(others) > 0 {
		if err := writeParked(stdout, others); err != nil {
			return err
		}
		return fmt.Errorf("%d parked events of process managers were not replayed: replaying them writes to FunnelKit or sends mail with serve's settings, "+
			"so start usersync serve and POST /api/parked/replay (with the admin token), or forget them with usersync parked skip", len(others))
	}
	return nil
}

package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/term"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// migrateBatch is how many events migrate reads from the source at a time.
const migrateBatch = 4096

// Limits of one append of the copy: a run of one stream's events is cut
// into appends of at most this many events and bytes, well under
// EventStoreDB's 1 MiB append limit.
const (
	migrateAppendEvents = 256
	migrateAppendBytes  = 512 << 10
)

// migrateProgress is what the copy reports as it goes.
type migrateProgress = projections.Progress

// migrateSummary is what a migration did and what its check found.
type migrateSummary struct {
	// Copied events were appended to the target; Present ones were already
	// there (a run that was killed, or a second run) and were checked
	// equal. ResumedAfter is the source position the copy resumed after (0
	// for a copy from the start).
	Copied, Present uint64
	ResumedAfter    uint64
	// Streams and Events are counted in the source; Differences lists the
	// streams whose event counts differ in the target (at most
	// maxDifferences of them), DifferentStreams counts them all.
	Streams, Events  int
	DifferentStreams int
	Differences      []string
	Elapsed          time.Duration
}

const maxDifferences = 20

// migrateLog copies every event of src into dst in log order, each stream's
// events at exactly their versions. It is idempotent and resumable: it
// resumes after the source event that is the target's last one, and a run
// the target already holds (the append is refused at its expected version)
// is compared event by event and counted as present. An event the target
// holds that differs from the source stops the copy with an error naming it.
// Then it compares the per-stream event counts of both logs.
func migrateLog(ctx context.Context, src, dst eventstore.Store, report func(migrateProgress)) (migrateSummary, error) {
	start := time.Now()
	var sum migrateSummary
	head, err := src.Head(ctx)
	if err != nil {
		return sum, fmt.Errorf("read the source's head: %w", err)
	}
	after, err := resumePoint(ctx, src, dst)
	if err != nil {
		return sum, err
	}
	sum.ResumedAfter = after
	for after < head {
		recs, err := src.ReadAll(ctx, after, migrateBatch)
		if err != nil {
			return sum, fmt.Errorf("read the source after position %d: %w", after, err)
		}
		if len(recs) == 0 {
			break
		}
		for i := 0; i < len(recs); {
			j := i + 1
			size := eventSize(recs[i])
			for j < len(recs) && j-i < migrateAppendEvents && recs[j].Stream == recs[i].Stream &&
				recs[j].Version == recs[j-1].Version+1 && size+eventSize(recs[j]) <= migrateAppendBytes {
				size += eventSize(recs[j])
				j++
			}
			copied, err := copyRun(ctx, dst, recs[i:j])
			if err != nil {
				return sum, err
			}
			if copied {
				sum.Copied += uint64(j - i)
			} else {
				sum.Present += uint64(j - i)
			}
			i = j
		}
		after = recs[len(recs)-1].Position
		if report != nil {
			report(migrateProgress{Position: after, Head: head, Events: sum.Copied + sum.Present, Elapsed: time.Since(start)})
		}
	}
	if err := compareCounts(ctx, src, dst, &sum); err != nil {
		return sum, err
	}
	sum.Elapsed = time.Since(start)
	return sum, nil
}

func eventSize(e domain.RecordedEvent) int { return len(e.Data) + len(e.Metadata) + 2*len(e.Type) }

// resumePoint is the source position to copy after: that of the source
// event the target's last event is a copy of, 0 for an empty target.
func resumePoint(ctx context.Context, src, dst eventstore.Store) (uint64, error) {
	dstHead, err := dst.Head(ctx)
	if err != nil {
		return 0, fmt.Errorf("read the target's head: %w", err)
	}
	if dstHead == 0 {
		return 0, nil
	}
	last, err := dst.ReadAll(ctx, dstHead-1, 1)
	if err != nil {
		return 0, fmt.Errorf("read the target's last event: %w", err)
	}
	if len(last) == 0 || last[0].Position != dstHead {
		return 0, fmt.Errorf("read the target's last event: none at its head %d", dstHead)
	}
	t := last[0]
	recs, err := src.ReadStreamFrom(ctx, t.Stream, t.Version-1)
	if err != nil {
		return 0, fmt.Errorf("read %s in the source: %w", t.Stream, err)
	}
	if len(recs) == 0 || !sameEvent(recs[0], t) {
		return 0, fmt.Errorf("the target's last event (%s version %d) is not in the source: the target holds other events "+
			"(usersync may already run on it); migrate into an empty store", t.Stream, t.Version)
	}
	return recs[0].Position, nil
}

// copyRun appends a run of one stream's consecutive events at the version
// before the first. It reports false when the target already holds them.
func copyRun(ctx context.Context, dst eventstore.Store, run []domain.RecordedEvent) (bool, error) {
	stream, first := run[0].Stream, run[0].Version
	events := make([]domain.NewEvent, len(run))
	for i, e := range run {
		events[i] = domain.NewEvent{Type: e.Type, Data: e.Data, Metadata: e.Metadata}
	}
	_, err := dst.Append(ctx, stream, domain.ExactVersion(first-1), events...)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, domain.ErrConcurrency) {
		return false, fmt.Errorf("copy %s versions %d–%d: %w", stream, first, first+uint64(len(run))-1, err)
	}
	held, rerr := dst.ReadStreamFrom(ctx, stream, first-1)
	if rerr != nil {
		return false, fmt.Errorf("copy %s version %d: the target refused it (%v) and reading it back failed: %w", stream, first, err, rerr)
	}
	for i, e := range run {
		if i >= len(held) {
			return false, fmt.Errorf("copy %s version %d: the target is at another version than the source (%v)", stream, e.Version, err)
		}
		if !sameEvent(e, held[i]) {
			return false, fmt.Errorf("copy %s version %d: the target holds another event there (%s, not %s): it has events that are not the source's; migrate into an empty store",
				stream, e.Version, held[i].Type, e.Type)
		}
	}
	return false, nil
}

func sameEvent(a, b domain.RecordedEvent) bool {
	return a.Stream == b.Stream && a.Version == b.Version && a.Type == b.Type &&
		bytes.Equal(a.Data, b.Data) && bytes.Equal(a.Metadata, b.Metadata)
}

// compareCounts counts each stream's events in both logs.
func compareCounts(ctx context.Context, src, dst eventstore.Store, sum *migrateSummary) error {
	want, err := streamCounts(ctx, src)
	if err != nil {
		return fmt.Errorf("count the source's events: %w", err)
	}
	got, err := streamCounts(ctx, dst)
	if err != nil {
		return fmt.Errorf("count the target's events: %w", err)
	}
	sum.Streams = len(want)
	var diffs []string
	for s, n := range want {
		sum.Events += int(n)
		if got[s] != n {
			diffs = append(diffs, fmt.Sprintf("%s: %d events in the source, %d in the target", s, n, got[s]))
		}
	}
	for s, n := range got {
		if _, ok := want[s]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: not in the source, %d events in the target", s, n))
		}
	}
	sort.Strings(diffs)
	sum.DifferentStreams = len(diffs)
	sum.Differences = diffs[:min(len(diffs), maxDifferences)]
	return nil
}

func streamCounts(ctx context.Context, s eventstore.Store) (map[string]uint64, error) {
	counts := make(map[string]uint64)
	var after uint64
	for {
		recs, err := s.ReadAll(ctx, after, migrateBatch)
		if err != nil {
			return nil, err
		}
		if len(recs) == 0 {
			return counts, nil
		}
		for _, e := range recs {
			counts[e.Stream]++
		}
		after = recs[len(recs)-1].Position
	}
}

// moveViews moves the checkpoints and parked events of the views beside
// the source to the target's positions of the same events.
func moveViews(ctx context.Context, views *projections.Views, kind string, src, dst eventstore.Store) error {
	return views.MoveToStore(ctx, kind, func(ctx context.Context, pos uint64) (uint64, error) {
		recs, err := src.ReadAll(ctx, pos-1, 1)
		if err != nil {
			return 0, fmt.Errorf("read the source at %d: %w", pos, err)
		}
		if len(recs) == 0 || recs[0].Position != pos {
			return 0, fmt.Errorf("no event at position %d in the source", pos)
		}
		e := recs[0]
		held, err := dst.ReadStreamFrom(ctx, e.Stream, e.Version-1)
		if err != nil {
			return 0, fmt.Errorf("read %s in the target: %w", e.Stream, err)
		}
		if len(held) == 0 || !sameEvent(e, held[0]) {
			return 0, fmt.Errorf("%s version %d is not in the target", e.Stream, e.Version)
		}
		return held[0].Position, nil
	})
}

func migrateCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	from := fs.String("from", "", "data directory of the embedded store to copy (the --data of usersync serve)")
	to := fs.String("to", "", "EventStoreDB to copy into: an esdb:// or esdb+discover:// connection string")
	progress := fs.String("progress", "auto", "progress bar: auto (on a terminal), on, off")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: usersync migrate --from DATA --to esdb://HOST:PORT\n\n"+
			"Copies every event of the embedded store in DATA into EventStoreDB, in log order, each\n"+
			"stream's events at their versions, then compares the per-stream event counts (exit 1 on\n"+
			"a difference) and moves the checkpoints in DATA/views.db to the new log, so that\n"+
			"usersync serve --data DATA --store esdb://… continues where it stopped. Stop usersync\n"+
			"serve first. Safe to run again, or after it was killed: it resumes and copies each\n"+
			"event once.\n\n")
		fs.PrintDefaults()
	}
	if help, err := parseFlags(fs, args, stderr); help || err != nil {
		return err
	}
	bar, ok := progressWanted(*progress, stderr)
	if !ok {
		fmt.Fprintf(stderr, "usersync migrate: --progress must be auto, on or off, not %q\n", *progress)
		return errUsage
	}
	if strings.TrimSpace(*to) == "" {
		fmt.Fprintln(stderr, "usersync migrate: --to is missing: give the EventStoreDB connection string, e.g. esdb://127.0.0.1:2113?tls=false")
		return errUsage
	}
	paths, err := existingDir("--from", *from)
	if err != nil {
		return err
	}
	src, err := eventstore.Open(ctx, paths.events())
	if err != nil {
		return fmt.Errorf("open the source: %w", err)
	}
	defer src.Close()
	dst, err := openMigrationTarget(ctx, *to)
	if err != nil {
		return err
	}
	defer dst.Close()
	kind := dst.kind

	var report func(migrateProgress)
	if bar {
		pb := &progressBar{w: stderr}
		report = pb.update
		defer pb.finish()
	}
	sum, err := migrateLog(ctx, src, dst, report)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "copied %d events, %d were already there (resumed after source position %d), in %s; %d streams, %d events in the source\n",
		sum.Copied, sum.Present, sum.ResumedAfter, sum.Elapsed.Round(time.Millisecond), sum.Streams, sum.Events)
	if sum.DifferentStreams > 0 {
		for _, d := range sum.Differences {
			fmt.Fprintln(stdout, "  "+d)
		}
		if sum.DifferentStreams > len(sum.Differences) {
			fmt.Fprintf(stdout, "  … and %d more\n", sum.DifferentStreams-len(sum.Differences))
		}
		return fmt.Errorf("%d streams differ between the source and the target: the views in %s were left as they are", sum.DifferentStreams, paths.views())
	}
	fmt.Fprintln(stdout, "every stream has the same events in the target")
	if _, err := os.Stat(paths.views()); err != nil {
		fmt.Fprintf(stdout, "no %s: usersync serve --store builds the views from the new log\n", paths.views())
		return nil
	}
	views, err := projections.Open(ctx, paths.views())
	if err != nil {
		return err
	}
	defer views.Close()
	if current, err := views.StoreKind(ctx); err != nil {
		return err
	} else if current != projections.StoreFile {
		fmt.Fprintf(stdout, "the checkpoints of %s were already moved to the %s store's log: left as they are\n", paths.views(), current)
		return nil
	}
	if err := moveViews(ctx, views, kind, src, dst); err != nil {
		return fmt.Errorf("move the checkpoints of %s to the new log: %w (the events are copied; run usersync rebuild --data %s --store … instead)", paths.views(), err, paths.dir)
	}
	fmt.Fprintf(stdout, "moved the checkpoints of %s to the new log: start usersync serve --data %s --store with the same connection string\n", paths.views(), paths.dir)
	return nil
}

// parseFlags parses the flags of a command that takes no arguments: help
// is true (and err nil) after --help, err is errUsage after a flag error
// (already printed) or a stray argument (printed here).
func parseFlags(fs *flag.FlagSet, args []string, stderr io.Writer) (help bool, err error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return true, nil
		}
		return false, errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "usersync %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return false, errUsage
	}
	return false, nil
}

// progressWanted reads a --progress flag: auto draws a bar on a terminal.
func progressWanted(v string, stderr io.Writer) (bar, ok bool) {
	switch v {
	case "auto":
		f, isFile := stderr.(*os.File)
		return isFile && term.IsTerminal(int(f.Fd())), true
	case "on":
		return true, true
	case "off":
		return false, true
	}
	return false, false
}

// openMigrationTarget opens the store migrate copies into: EventStoreDB,
// never the embedded store (it is the source).
func openMigrationTarget(ctx context.Context, to string) (storeHandle, error) {
	spec, err := parseStore(to)
	if err != nil {
		return storeHandle{}, fmt.Errorf("--to: %w", err)
	}
	if spec.kind != storeESDB {
		return storeHandle{}, fmt.Errorf("--to %q: migrate copies the embedded store into EventStoreDB: give an esdb:// or esdb+discover:// connection string", redactStoreURL(to))
	}
	h, err := openStore(ctx, storeConfig{Store: to}, slog.New(slog.DiscardHandler))
	if err != nil {
		return storeHandle{}, fmt.Errorf("--to: %w", err)
	}
	return h, nil
}

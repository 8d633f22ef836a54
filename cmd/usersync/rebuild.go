package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/usersync/usersync/projections"
)

// dataPaths are the files of a data directory.
type dataPaths struct{ dir string }

func (d dataPaths) events() string { return filepath.Join(d.dir, "events.db") }
func (d dataPaths) views() string  { return filepath.Join(d.dir, "views.db") }
func (d dataPaths) keys() string   { return filepath.Join(d.dir, "keys.db") }
func (d dataPaths) outbox() string { return filepath.Join(d.dir, "outbox") }

// openData checks the data directory and creates it if it does not exist.
func openData(dir string) (dataPaths, error) {
	if strings.TrimSpace(dir) == "" {
		return dataPaths{}, errors.New("--data is empty: give the data directory (default ./data)")
	}
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return dataPaths{}, fmt.Errorf("--data %s is a file, not a directory", dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return dataPaths{}, fmt.Errorf("create data directory: %w", err)
	}
	return dataPaths{dir: dir}, nil
}

// errNoData is a --data directory that holds no usersync data.
var errNoData = errors.New("holds no usersync data")

// existingData checks that dir is a data directory usersync serve made (it
// holds events.db), without creating anything: rebuild and parked given a
// wrong --data must say so, not report on an empty store they made there.
func existingData(dir string) (dataPaths, error) { return existingDir("--data", dir) }

// existingDir is existingData for a directory given by flag.
func existingDir(flag, dir string) (dataPaths, error) {
	if strings.TrimSpace(dir) == "" {
		return dataPaths{}, fmt.Errorf("%s is empty: give the data directory of usersync serve (default ./data)", flag)
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return dataPaths{}, fmt.Errorf("%s %s does not exist: give the data directory of usersync serve (its --data, default ./data), which holds events.db", flag, dir)
	case err != nil:
		return dataPaths{}, fmt.Errorf("%s %s: %w", flag, dir, err)
	case !fi.IsDir():
		return dataPaths{}, fmt.Errorf("%s %s is a file, not a directory", flag, dir)
	}
	d := dataPaths{dir: dir}
	if fi, err := os.Stat(d.events()); err != nil || !fi.Mode().IsRegular() {
		return dataPaths{}, fmt.Errorf("%s %s %w (no events.db): give the data directory of usersync serve (its --data, default ./data), which holds events.db", flag, dir, errNoData)
	}
	return d, nil
}

// existingDataFor is existingData for the event store spec: with the
// embedded store the directory must hold events.db; with EventStoreDB the
// log is elsewhere, and the directory must hold what serve keeps there (the
// views or the keys).
func existingDataFor(dir string, spec storeSpec) (dataPaths, error) {
	if spec.kind == storeFile {
		return existingData(dir)
	}
	if strings.TrimSpace(dir) == "" {
		return dataPaths{}, errors.New("--data is empty: give the data directory of usersync serve (default ./data)")
	}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return dataPaths{}, fmt.Errorf("--data %s does not exist: give the data directory of usersync serve (its --data, default ./data), which holds views.db", dir)
	case err != nil:
		return dataPaths{}, fmt.Errorf("--data %s: %w", dir, err)
	case !fi.IsDir():
		return dataPaths{}, fmt.Errorf("--data %s is a file, not a directory", dir)
	}
	d := dataPaths{dir: dir}
	for _, p := range []string{d.views(), d.keys()} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return d, nil
		}
	}
	return dataPaths{}, fmt.Errorf("--data %s %w (no views.db or keys.db): give the data directory of usersync serve (its --data, default ./data)", dir, errNoData)
}

// dataFlag is the --data flag of rebuild and parked: the default comes from
// USERSYNC_DATA. fromEnv names the variable in errors when it set the value.
func dataFlag(fs *flag.FlagSet) (dir *string, fromEnv func() map[string]string) {
	env, set := os.LookupEnv("USERSYNC_DATA")
	def := "./data"
	if set {
		def = env
	}
	dir = fs.String("data", def, "data directory of usersync serve (holds events.db); env USERSYNC_DATA")
	return dir, func() map[string]string {
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "data" })
		if !set || given {
			return nil
		}
		return map[string]string{"data": env}
	}
}

func rebuildCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rebuild", flag.ContinueOnError)
	fs.SetOutput(stderr)
	data, dataEnv := dataFlag(fs)
	storeURL, storeEnv := storeFlag(fs)
	progress := fs.String("progress", "auto", "progress bar: auto (on a terminal), on, off")
	retention := defaultReceiptRetention
	if v, ok := os.LookupEnv(envName("receipt-retention")); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return fmt.Errorf("%s=%q: want a duration such as 720h, or 0 to keep every receipt", envName("receipt-retention"), v)
		}
		retention = d
	}
	fs.DurationVar(&retention, "receipt-retention", retention, "receipts of closed webhooks older than this are not rebuilt (0 keeps all); env USERSYNC_RECEIPT_RETENTION, as serve's")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: usersync rebuild [--data DIR] [--store esdb://…]\n\nDrops every view (users, tags, password returns, webhooks) and builds it again\nfrom the events. Stop usersync serve first, or use POST /api/rebuild on a running one.\n\n")
		fs.PrintDefaults()
	}
	if help, err := parseFlags(fs, args, stderr); help || err != nil {
		return err
	}
	bar, ok := progressWanted(*progress, stderr)
	if !ok {
		fmt.Fprintf(stderr, "usersync rebuild: --progress must be auto, on or off, not %q\n", *progress)
		return errUsage
	}
	spec, err := parseStore(*storeURL)
	if err != nil {
		return explainEnv(err, storeEnv())
	}
	paths, err := existingDataFor(*data, spec)
	if err != nil {
		return explainEnv(err, dataEnv())
	}
	store, err := openStore(ctx, storeConfig{Store: *storeURL, Events: paths.events()}, slog.New(slog.NewTextHandler(stderr, nil)))
	if err != nil {
		return explainEnv(err, storeEnv())
	}
	defer store.Close()
	if retention < 0 {
		return fmt.Errorf("--receipt-retention %s must be 0 (keep every receipt) or a positive duration", retention)
	}
	views, err := projections.Open(ctx, paths.views(), projections.WithReceiptRetention(retention))
	if err != nil {
		return err
	}
	defer views.Close()
	if err := followStore(ctx, views, store, paths.dir); err != nil {
		return err
	}

	var report func(projections.Progress)
	if bar {
		pb := &progressBar{w: stderr}
		report = pb.update
		defer pb.finish()
	}
	res, err := projections.Rebuild(ctx, views, store, report)
	if err != nil {
		return err
	}
	for _, m := range res.Moved {
		fmt.Fprintf(stdout, "process %s had handled events up to position %d, beyond the log's end: it resumes from %d\n", m.Name, m.From, m.To)
	}
	stats := res.Stats
	rate := float64(stats.Events) / max(stats.Duration.Seconds(), 1e-9)
	fmt.Fprintf(stdout, "rebuilt %d views from %d events in %s (%.0f events/s): %d users, %d tags, %d webhook receipts, %d parked events, position %d; wrote %d rows into a new %s\n",
		len(views.Names()), stats.Events, stats.Duration.Round(time.Millisecond), rate, stats.Users, stats.Tags, stats.Receipts, stats.Parked, stats.Position,
		stats.Rows, filepath.Base(views.Path()))
	if stats.Parked > 0 {
		fmt.Fprintf(stdout, "some events could not be read by this build and were parked: list them with usersync parked\n")
	}
	return nil
}

// progressBar draws one line: bar, percent, events, events/s, ETA.
type progressBar struct {
	w    io.Writer
	last time.Time
	drew bool
}

func (p *progressBar) update(pr projections.Progress) {
	if time.Since(p.last) < 100*time.Millisecond && pr.Position < pr.Head {
		return
	}
	p.last = time.Now()
	fmt.Fprint(p.w, "\r"+progressLine(pr))
	p.drew = true
}

// progressLine is the bar's line for pr. The fraction done is that of the
// positions up to the head; the events are counted as they are applied
// (on a store with dense positions, out of the head, which counts them;
// with gaps the total is not known); the ETA comes from the rate the
// fraction grows, which holds either way.
func progressLine(pr projections.Progress) string {
	frac := 1.0
	if pr.Head > 0 {
		frac = min(float64(pr.Position)/float64(pr.Head), 1)
	}
	const width = 30
	filled := int(frac * width)
	rate := float64(pr.Events) / max(pr.Elapsed.Seconds(), 1e-9)
	eta := "--"
	if frac > 0 && pr.Elapsed > 0 {
		eta = time.Duration(float64(pr.Elapsed) * (1 - frac) / frac).Round(time.Second).String()
	}
	events := fmt.Sprintf("%d events", pr.Events)
	if pr.Dense {
		events = fmt.Sprintf("%d/%d events", pr.Events, pr.Head)
	}
	return fmt.Sprintf("[%s%s] %5.1f%%  %s  %.0f events/s  ETA %s   ",
		strings.Repeat("=", filled), strings.Repeat(" ", width-filled), frac*100, events, rate, eta)
}

func (p *progressBar) finish() {
	if p.drew {
		fmt.Fprintln(p.w)
	}
}

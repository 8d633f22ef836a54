package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/projections"
)

// errFinding is returned by a command that ran and found something to
// report (verify's differences) after printing it: exit code 1, no more
// words.
var errFinding = errors.New("finding")

// offlineFlags are the flags of the commands that read a stopped server's
// data directory: --data and --store, defaulted from USERSYNC_DATA and
// USERSYNC_STORE as rebuild's.
type offlineFlags struct {
	data, store       *string
	dataEnv, storeEnv func() map[string]string
}

func addOfflineFlags(fs *flag.FlagSet) offlineFlags {
	var o offlineFlags
	o.data, o.dataEnv = dataFlag(fs)
	o.store, o.storeEnv = storeFlag(fs)
	return o
}

// offline is a stopped server's data opened by a command: the event store
// (nil unless asked for) and the views (nil unless asked for).
type offline struct {
	paths dataPaths
	store *storeHandle
	views *projections.Views
}

func (o *offline) Close() {
	if o.views != nil {
		o.views.Close()
	}
	if o.store != nil {
		o.store.Close()
	}
}

// open checks --data and --store and opens what the command needs, never
// creating the data directory, and the views only if views.db exists (a
// command that needs the views says what to do when it does not).
func (f offlineFlags) open(ctx context.Context, stderr io.Writer, needStore, needViews bool, opts ...projections.Option) (*offline, error) {
	spec, err := parseStore(*f.store)
	if err != nil {
		return nil, explainEnv(err, f.storeEnv())
	}
	paths, err := existingDataFor(*f.data, spec)
	if err != nil {
		return nil, explainEnv(err, f.dataEnv())
	}
	o := &offline{paths: paths}
	if needViews {
		if fi, err := os.Stat(paths.views()); err != nil || !fi.Mode().IsRegular() {
			return nil, explainEnv(fmt.Errorf("--data %s has no views.db: run usersync rebuild --data %s to build the views from the events, or start usersync serve once", paths.dir, paths.dir), f.dataEnv())
		}
		if o.views, err = projections.Open(ctx, paths.views(), opts...); err != nil {
			return nil, err
		}
	}
	if needStore {
		h, err := openStore(ctx, storeConfig{Store: *f.store, Events: paths.events()}, slog.New(slog.NewTextHandler(stderr, nil)))
		if err != nil {
			o.Close()
			return nil, explainEnv(err, f.storeEnv())
		}
		o.store = &h
	}
	return o, nil
}

// splitArgs parses flags and arguments in any order, so that
// "history 12 --json" and "history --json 12" both work ("--" ends the
// flags).
func splitArgs(fs *flag.FlagSet, args []string, stderr io.Writer) (positional []string, help bool, err error) {
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, true, nil
			}
			return nil, false, errUsage
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, false, nil
		}
		if len(args) > 0 && len(rest) < len(args) && args[len(args)-len(rest)-1] == "--" {
			return append(positional, rest...), false, nil
		}
		positional, args = append(positional, rest[0]), rest[1:]
	}
}

// usageError prints a usage mistake and returns errUsage (exit 2).
func usageError(stderr io.Writer, fs *flag.FlagSet, format string, args ...any) error {
	fmt.Fprintf(stderr, "usersync %s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	return errUsage
}

// retentionFlag is the --receipt-retention flag of the commands that
// rebuild the views, as serve's: the default comes from
// USERSYNC_RECEIPT_RETENTION. A bad variable is an error, returned.
func retentionFlag(fs *flag.FlagSet) (*time.Duration, error) {
	retention := defaultReceiptRetention
	if v, ok := os.LookupEnv(envName("receipt-retention")); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return nil, fmt.Errorf("%s=%q: want a duration such as 720h, or 0 to keep every receipt", envName("receipt-retention"), v)
		}
		retention = d
	}
	fs.DurationVar(&retention, "receipt-retention", retention, "receipts of closed webhooks older than this are not rebuilt (0 keeps all); env USERSYNC_RECEIPT_RETENTION, as serve's")
	return &retention, nil
}

// ReadStreamBackward forwards the store's bounded backward read
// (eventstore.BackwardReader): a handle embeds the store as an interface,
// which does not carry the method.
func (h storeHandle) ReadStreamBackward(ctx context.Context, stream string, before uint64, limit int) ([]domain.RecordedEvent, error) {
	return eventstore.ReadStreamBackward(ctx, h.logStore, stream, before, limit)
}

var _ eventstore.BackwardReader = storeHandle{}

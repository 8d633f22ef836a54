package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/usersync/usersync/eventstore"
	"github.com/usersync/usersync/eventstore/esdb"
	"github.com/usersync/usersync/eventstore/pipeline"
	"github.com/usersync/usersync/projections"
)

// The kinds of event store --store selects.
const (
	// storeFile is the embedded store, events.db under --data.
	storeFile = "file"
	// storeESDB is EventStoreDB (KurrentDB), by connection string.
	storeESDB = "esdb"
)

// storeForms lists what --store accepts, for its errors.
const storeForms = "empty or file (the embedded store, events.db under --data), " +
	"esdb://host:2113?… or esdb+discover://host:2113?… (EventStoreDB: any connection string its client accepts)"

// storeSpec is a parsed --store.
type storeSpec struct {
	kind string
	// url is the connection string as given (kind esdb). It may hold
	// credentials: never log it, print redactStoreURL(url).
	url string
}

// parseStore checks --store: empty or file is the embedded store under
// --data, esdb:// or esdb+discover:// EventStoreDB. The errors never repeat
// credentials.
func parseStore(v string) (storeSpec, error) {
	v = strings.TrimSpace(v)
	if v == "" || strings.EqualFold(v, storeFile) {
		return storeSpec{kind: storeFile}, nil
	}
	scheme, rest, ok := strings.Cut(v, "://")
	if !ok || strings.EqualFold(scheme, "file") || strings.HasPrefix(strings.ToLower(v), "file:") {
		return storeSpec{}, fmt.Errorf("--store %q is not a kind of event store: the embedded store lives in the data directory, "+
			"so give the directory with --data (for example --data %s) and leave --store empty; --store takes %s",
			redactStoreURL(v), dataDirOf(v), storeForms)
	}
	switch strings.ToLower(scheme) {
	case "esdb", "esdb+discover":
		host := rest
		if at := strings.LastIndex(host, "@"); at >= 0 {
			host = host[at+1:]
		}
		if i := strings.IndexAny(host, "/?#"); i >= 0 {
			host = host[:i]
		}
		if strings.Trim(host, ",") == "" {
			return storeSpec{}, fmt.Errorf("--store %q names no host: give host:port, for example esdb://127.0.0.1:2113?tls=false", redactStoreURL(v))
		}
		for _, hp := range strings.Split(host, ",") {
			if err := checkPort(hp); err != nil {
				return storeSpec{}, fmt.Errorf("--store %q: %w", redactStoreURL(v), err)
			}
		}
		return storeSpec{kind: storeESDB, url: v}, nil
	}
	return storeSpec{}, fmt.Errorf("--store %q: unknown scheme %q: --store takes %s", redactStoreURL(v), scheme, storeForms)
}

// checkPort refuses a host:port whose port is not 1–65535 (the client
// would wrap it silently and dial another port). A host without a port is
// the client's to default.
func checkPort(hostPort string) error {
	i := strings.LastIndex(hostPort, ":")
	if i < 0 || strings.HasSuffix(hostPort, "]") {
		return nil
	}
	port := hostPort[i+1:]
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("port %q of %s is not a port number (1–65535)", port, hostPort)
	}
	return nil
}

// dataDirOf is the data directory a path given to --store points at: the
// directory of an events.db, or the path itself.
func dataDirOf(p string) string {
	p = strings.TrimPrefix(strings.TrimPrefix(p, "file://"), "file:")
	if filepath.Base(p) == "events.db" {
		return filepath.Dir(p)
	}
	return p
}

// redactStoreURL is a connection string fit for logs and errors: the
// userinfo (user:password@) and the value of every query parameter that
// names a password, secret or token are replaced by ***. It works on the
// text, not on net/url (a connection string may list several hosts), and
// masks too much rather than too little: the userinfo ends at the last @.
func redactStoreURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		rest = "***@" + rest[at+1:]
	}
	q := strings.Index(rest, "?")
	if q < 0 {
		return scheme + "://" + rest
	}
	head, query, frag := rest[:q], rest[q+1:], ""
	if h := strings.Index(query, "#"); h >= 0 {
		query, frag = query[:h], query[h:]
	}
	params := strings.Split(query, "&")
	for i, p := range params {
		if name, _, hasValue := strings.Cut(p, "="); hasValue && secretParam(name) {
			params[i] = name + "=***"
		}
	}
	return scheme + "://" + head + "?" + strings.Join(params, "&") + frag
}

// secretParam tells the query parameters whose value is a secret.
func secretParam(name string) bool {
	n := strings.ToLower(name)
	for _, s := range []string{"password", "passwd", "pwd", "secret", "token"} {
		if strings.Contains(n, s) {
			return true
		}
	}
	return false
}

// storeSecrets are the parts of a connection string that must not be
// repeated: the string itself, its userinfo and password, and the values of
// its secret query parameters.
func storeSecrets(raw string) []string {
	_, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return nil
	}
	out := []string{raw}
	if at := strings.LastIndex(rest, "@"); at >= 0 {
		info := rest[:at]
		out = append(out, info)
		if _, pw, ok := strings.Cut(info, ":"); ok && pw != "" {
			out = append(out, pw)
		}
	}
	if _, query, ok := strings.Cut(rest, "?"); ok {
		query, _, _ = strings.Cut(query, "#")
		for _, p := range strings.Split(query, "&") {
			if name, v, ok := strings.Cut(p, "="); ok && v != "" && secretParam(name) {
				out = append(out, v)
			}
		}
	}
	return out
}

// redactedError is an error whose text had the secrets of a connection
// string taken out; errors.Is and As still see the original.
type redactedError struct {
	err error
	msg string
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redactErr takes the secrets of the connection string raw out of err's
// text (an adapter's error may quote its connection string).
func redactErr(err error, raw string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	changed := false
	for _, s := range storeSecrets(raw) {
		if s != "" && strings.Contains(msg, s) {
			repl := "***"
			if s == raw {
				repl = redactStoreURL(raw)
			}
			msg, changed = strings.ReplaceAll(msg, s, repl), true
		}
	}
	if !changed {
		return err
	}
	return &redactedError{err: err, msg: msg}
}

// logStore is what usersync needs of an event store: the port, and the
// change notifications the pipeline waits on (eventstore.Feed).
type logStore interface {
	eventstore.Store
	Changed() <-chan struct{}
}

// storeHandle is the event store a command reads and writes, whichever
// kind --store selected, with what serve reports about it.
type storeHandle struct {
	logStore
	// kind is storeFile or storeESDB (the label of usersync_store_up).
	kind string
	// where names the store in logs and errors: the path of events.db, or
	// the connection string redacted.
	where string
	// ping is a cheap check that the store answers (/readyz, the metrics).
	ping func(ctx context.Context) error
	// writable, if set, says whether the store can take appends (the
	// embedded store's check after a failed commit).
	writable func(ctx context.Context) error
	// raw is the connection string (kind esdb), for redactErr only.
	raw string
}

// up is nil when the store answers and can take appends.
func (h storeHandle) up(ctx context.Context) error {
	if err := h.checkPing(ctx); err != nil {
		return fmt.Errorf("event store unreachable: %w", h.redact(err))
	}
	if h.writable != nil {
		if err := h.writable(ctx); err != nil {
			return h.redact(err)
		}
	}
	return nil
}

// pingTimeout bounds the store check of /readyz and of the metrics, so
// that a probe gets its answer in time (a load balancer's is often 2–5 s).
const pingTimeout = 2 * time.Second

// checkPing is ping within pingTimeout.
func (h storeHandle) checkPing(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	return h.ping(ctx)
}

// redact takes the connection string's secrets out of err.
func (h storeHandle) redact(err error) error { return redactErr(err, h.raw) }

// storeConfig is what openStore needs.
type storeConfig struct {
	// Store is --store.
	Store string
	// Events is the path of events.db under --data (kind file).
	Events string
	// OnCommit, if set, observes the embedded store's commits (metrics).
	OnCommit func(appends int, d time.Duration)
}

// openStore opens the event store --store selects.
func openStore(ctx context.Context, cfg storeConfig, log *slog.Logger) (storeHandle, error) {
	spec, err := parseStore(cfg.Store)
	if err != nil {
		return storeHandle{}, err
	}
	switch spec.kind {
	case storeFile:
		var opts []eventstore.Option
		if cfg.OnCommit != nil {
			opts = append(opts, eventstore.WithCommitObserver(cfg.OnCommit))
		}
		s, err := eventstore.Open(ctx, cfg.Events, opts...)
		if err != nil {
			return storeHandle{}, err
		}
		return storeHandle{logStore: s, kind: storeFile, where: cfg.Events, writable: s.Writable,
			ping: func(ctx context.Context) error { _, err := s.Head(ctx); return err }}, nil
	case storeESDB:
		h, err := openESDB(ctx, spec, log)
		if err != nil {
			return storeHandle{}, fmt.Errorf("--store %s: %w", redactStoreURL(spec.url), redactErr(err, spec.url))
		}
		return h, nil
	}
	return storeHandle{}, fmt.Errorf("--store: kind %q has no adapter", spec.kind)
}

// openESDB opens EventStoreDB (eventstore/esdb over the real client). It
// fails within esdb.DefaultConnectTimeout when the server does not answer,
// naming its address, never its credentials.
func openESDB(ctx context.Context, spec storeSpec, log *slog.Logger) (storeHandle, error) {
	s, err := esdb.Open(ctx, spec.url, esdb.Options{Logger: log})
	if err != nil {
		return storeHandle{}, err
	}
	return storeHandle{logStore: s, kind: storeESDB, where: redactStoreURL(spec.url), ping: s.Ping, raw: spec.url}, nil
}

// storeFlag is the --store flag of rebuild and parked: the default comes
// from USERSYNC_STORE. fromEnv names the variable in errors when it set the
// value (without repeating it: it may hold credentials).
func storeFlag(fs *flag.FlagSet) (store *string, fromEnv func() map[string]string) {
	env, set := os.LookupEnv(envName("store"))
	store = fs.String("store", env, "event store of usersync serve: empty or file (events.db under --data), or an EventStoreDB connection string esdb://…; env USERSYNC_STORE")
	return store, func() map[string]string {
		given := false
		fs.Visit(func(f *flag.Flag) { given = given || f.Name == "store" })
		if !set || given {
			return nil
		}
		return map[string]string{"store": env}
	}
}

// DensePositions forwards the store's own answer (pipeline.Dense): a
// wrapper that embeds the eventstore.Store interface does not get the
// method of the store inside.
func (h storeHandle) DensePositions() bool { return pipeline.Dense(h.logStore) }

// followStore makes sure the positions in views.db belong to the store h
// (projections.Views.FollowStore), or says what to do: views that followed
// another kind of store hold checkpoints that mean nothing in this one.
func followStore(ctx context.Context, views *projections.Views, h storeHandle, data string) error {
	err := views.FollowStore(ctx, h.kind)
	if errors.Is(err, projections.ErrOtherStore) {
		return fmt.Errorf("%w: to move from the embedded store to EventStoreDB, stop usersync and run usersync migrate --from %s --to … "+
			"(it copies the events and moves these checkpoints); to start over on %s instead, move %s away "+
			"(its process managers would then handle every event again)", err, data, h.where, views.Path())
	}
	return err
}

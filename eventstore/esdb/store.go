// Package esdb is the eventstore.Store adapter over EventStoreDB / KurrentDB,
// through the official Go client (github.com/EventStore/EventStore-Client-Go/v4).
//
// Mapping: a domain stream is an EventStoreDB stream of the same name; a
// domain version is the stream revision plus one (versions start at 1,
// revisions at 0); a position is the event's commit position in $all
// (commit == prepare). Positions increase with gaps: they are ordered,
// opaque checkpoints, not counts.
//
// $all may hold other applications' streams and the server's own ($-prefixed)
// ones: ReadAll, Head, Subscribe and Changed see only the streams whose names
// start with one of Options.StreamPrefixes (domain.StreamPrefixes by default).
//
// Idempotent retries: every event gets a deterministic id (EventID: UUID v5
// of the stream, the version the event is appended at and its type, data and
// metadata) and every append is sent with an exact expected revision, also
// for domain.AnyVersion (the adapter keeps the last revision it saw of each
// stream and moves on to the actual one after a wrong-expected-version
// answer). A transport error is retried with the same ids and the same
// expected revision, so an append whose answer was lost is recognised by the
// server (the ids after the expected revision match) instead of being
// written twice. The server's id cache used for Any appends is never relied on.
//
// Faults: transport errors (unavailable, deadline, connection closed, not
// leader) are retried with backoff for at most Options.RetryTimeout and then
// reported as ErrUnavailable; a client the library closed for good (after a
// failed discovery) is replaced by a new one; every call is bounded by its
// context even while the client discovers (which ignores contexts);
// subscriptions resubscribe from the last event they delivered.
//
// Limits: the client's ReadAll has no server-side filter, so ReadAll and
// Head read $all and filter here; on a server shared with busy foreign
// streams they read those too (Subscribe and Changed filter on the server).
// Reading $all needs a user the server lets read it ($admins by default).
// Calls abandoned at their deadline while the client discovers a silent
// server finish (and free their goroutine) only when the discovery ends.
package esdb

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	kdb "github.com/EventStore/EventStore-Client-Go/v4/esdb"
	"github.com/google/uuid"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// Defaults of Options.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultMaxAppendSize  = 1 << 20
	DefaultRetryTimeout   = 10 * time.Second
)

// Options tunes a Store. The zero value is usable: every zero field takes
// its default.
type Options struct {
	// ConnectTimeout bounds Open's first call to the server (discovery
	// included) and every Ping. Default 10 s.
	ConnectTimeout time.Duration
	// MaxAppendSize is the server's append size limit in bytes (data +
	// metadata + 2 × type length of all events of one append); larger
	// appends are refused before sending. Default 1 MiB, the server's default.
	MaxAppendSize int
	// RetryTimeout bounds how long one call retries transport errors
	// before it fails with ErrUnavailable. Default 10 s.
	RetryTimeout time.Duration
	// StreamPrefixes are the stream families ReadAll, Head, Subscribe and
	// Changed see (streams starting with $, the server's, never are).
	// Default domain.StreamPrefixes(); []string{""} is every stream.
	StreamPrefixes []string
	// Namespace, when set, is put before every stream name on the server
	// and taken off on the way back, so that several installations (or
	// test runs) can share one server without seeing each other's events.
	Namespace string
	// Logger receives the adapter's and the client's diagnostics (the
	// client's at debug level). Default: discard.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.MaxAppendSize <= 0 {
		o.MaxAppendSize = DefaultMaxAppendSize
	}
	if o.RetryTimeout <= 0 {
		o.RetryTimeout = DefaultRetryTimeout
	}
	if len(o.StreamPrefixes) == 0 {
		o.StreamPrefixes = domain.StreamPrefixes()
	}
	o.StreamPrefixes = append([]string(nil), o.StreamPrefixes...)
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Store is the EventStoreDB event store. It is safe for concurrent use.
type Store struct {
	opts  Options
	cfg   kdb.Configuration
	addrs string // host:port list, for errors and String
	log   *slog.Logger
	ns    uuid.UUID // namespace of EventID

	life     context.Context // done at Close: ends subscriptions
	stopLife context.CancelFunc

	mu      sync.Mutex
	closed  bool
	cur     *client
	changed chan struct{} // closed at the next usersync event or at Close
	feeding bool          // the Changed feeder runs
	revs    map[string]uint64

	feeder sync.WaitGroup
}

var _ eventstore.Store = (*Store)(nil)

// client is one kdb.Client with the calls in flight on it. The library
// panics when a client is closed while a call on it is failing (it sends on
// the closed channel), so a retired client is closed only once its last call
// has returned.
type client struct {
	c       *kdb.Client
	refs    int
	retired bool
	closed  bool
	gone    chan struct{} // closed when retired: calls waiting on it give up
}

func newClient(c *kdb.Client) *client { return &client{c: c, gone: make(chan struct{})} }

// errRetired ends a call whose client was replaced (or the store closed)
// while it waited: it is retried on the new client.
var errRetired = errors.New("esdb client replaced while the call waited")

// maxRevisionCache bounds the map of last known revisions used by
// AnyVersion appends; it is emptied when full (a miss costs one round trip).
const maxRevisionCache = 1 << 16

// Open connects to the EventStoreDB named by connString, any connection
// string the client accepts (esdb://… or esdb+discover://…, with TLS,
// credentials, node preference). It fails within opts.ConnectTimeout (or
// when ctx ends) with an error naming the address when the server cannot be
// reached. Errors never contain the credentials.
func Open(ctx context.Context, connString string, opts Options) (*Store, error) {
	opts = opts.withDefaults()
	cfg, err := kdb.ParseConnectionString(connString)
	if err != nil {
		return nil, parseError(connString, err)
	}
	s := &Store{
		opts:    opts,
		addrs:   addresses(cfg),
		log:     opts.Logger,
		ns:      uuid.MustParse(idNamespace),
		changed: make(chan struct{}),
		revs:    make(map[string]uint64),
	}
	cfg.Logger = func(level kdb.LogLevel, format string, args ...any) {
		s.log.Debug("esdb client: "+fmt.Sprintf(format, args...), "client_level", level)
	}
	s.cfg = *cfg
	c, err := kdb.NewClient(cfg)
	if err != nil {
		return nil, fmt.Errorf("esdb: %s: %s", s.addrs, scrub(err.Error(), connString))
	}
	s.cur = newClient(c)
	s.life, s.stopLife = context.WithCancel(context.Background())
	if err := s.ping(ctx, "connect", false); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// addresses lists the host:port the configuration points at.
func addresses(cfg *kdb.Configuration) string {
	if len(cfg.GossipSeeds) > 0 {
		parts := make([]string, len(cfg.GossipSeeds))
		for i, e := range cfg.GossipSeeds {
			parts[i] = e.String()
		}
		return strings.Join(parts, ",")
	}
	return cfg.Address
}

// String names the store by its addresses, never its credentials.
func (s *Store) String() string { return "esdb(" + s.addrs + ")" }

// Kind is "esdb", for readyz and the metrics.
func (s *Store) Kind() string { return "esdb" }

// Ping checks that the server answers a cheap read ($all backwards, one
// event), within ctx and Options.ConnectTimeout, retrying transport errors
// meanwhile (a connection broken by a server restart is not an outage).
func (s *Store) Ping(ctx context.Context) error { return s.ping(ctx, "ping", true) }

// ping reads once, or with retries; Open reads once, so that a server that
// refuses connections fails it at once.
func (s *Store) ping(ctx context.Context, what string, retry bool) error {
	ctx, cancel := context.WithTimeout(ctx, s.opts.ConnectTimeout)
	defer cancel()
	var err error
	if retry {
		err = s.retry(ctx, func(ctx context.Context) error { return s.readOne(ctx) })
	} else {
		err = s.readOne(ctx)
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, eventstore.ErrClosed):
		return fmt.Errorf("esdb: %s to %s: %w", what, s.addrs, err)
	case errors.Is(err, ErrUnavailable):
		return fmt.Errorf("esdb: %s to %s: %w", what, s.addrs, err)
	case ctx.Err() != nil:
		if !retry {
			return fmt.Errorf("esdb: %s to %s: %w: no answer within %s (%w)", what, s.addrs, ErrUnavailable, s.opts.ConnectTimeout, ctx.Err())
		}
		return fmt.Errorf("esdb: %s to %s: %w: no answer in time (%w)", what, s.addrs, ErrUnavailable, ctx.Err())
	case denied(err):
		return fmt.Errorf("esdb: %s to %s: %w: the server refused the user (%w): usersync reads $all, which needs a user in $admins "+
			"(or an ACL granting $all reads); give one as esdb://user:password@host:2113?tls=true (the client sends credentials only over TLS)",
			what, s.addrs, ErrUnavailable, err)
	default:
		return fmt.Errorf("esdb: %s to %s: %w: %w", what, s.addrs, ErrUnavailable, err)
	}
}

// denied reports an answer refusing the user: access denied or not
// authenticated.
func denied(err error) bool {
	code, ok := codeOf(err)
	return ok && (code == kdb.ErrorCodeAccessDenied || code == kdb.ErrorCodeUnauthenticated)
}

// readOne reads the last event of $all.
func (s *Store) readOne(ctx context.Context) error {
	_, err := call(ctx, s, func(ctx context.Context, c *kdb.Client) (struct{}, error) {
		rs, err := c.ReadAll(ctx, kdb.ReadAllOptions{Direction: kdb.Backwards, From: kdb.End{}}, 1)
		if err != nil {
			return struct{}{}, err
		}
		defer rs.Close()
		_, err = rs.Recv()
		if isEOF(err) {
			return struct{}{}, nil
		}
		return struct{}{}, err
	})
	return err
}

// Close ends the subscriptions and releases the client. Operations after
// Close fail with eventstore.ErrClosed; Close is idempotent.
func (s *Store) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.stopLife()
	close(s.changed)
	s.retireLocked(s.cur)
	s.mu.Unlock()
	s.feeder.Wait()
	return nil
}

func (s *Store) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// acquire returns the current client with one more call in flight.
func (s *Store) acquire() (*client, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, eventstore.ErrClosed
	}
	s.cur.refs++
	return s.cur, nil
}

// release ends a call on cl, closing cl if it was retired and idle.
func (s *Store) release(cl *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	cl.refs--
	s.maybeCloseLocked(cl)
}

// replace retires cl (closed for good by the library) and makes a new
// client current, unless that was done already.
func (s *Store) replace(cl *client) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed || s.cur != cl {
		return
	}
	cfg := s.cfg
	c, err := kdb.NewClient(&cfg)
	if err != nil {
		s.log.Error("esdb: cannot make a new client", "addr", s.addrs, "err", err)
		return
	}
	s.log.Info("esdb: the client was closed; using a new one", "addr", s.addrs)
	s.retireLocked(cl)
	s.cur = newClient(c)
}

func (s *Store) retireLocked(cl *client) {
	if !cl.retired {
		cl.retired = true
		close(cl.gone)
	}
	s.maybeCloseLocked(cl)
}

func (s *Store) maybeCloseLocked(cl *client) {
	if cl.retired && cl.refs == 0 && !cl.closed {
		cl.closed = true
		cl.c.Close()
	}
}

// call runs fn on the current client, returning when fn does or when ctx
// ends, whichever is first: the client ignores contexts while it discovers
// the server, so fn runs on its own goroutine and is abandoned (it still
// releases the client when it returns). fn's result comes back through the
// channel only, so an abandoned fn shares nothing with the caller. A client
// closed for good is replaced for the next call.
func call[T any](ctx context.Context, s *Store, fn func(ctx context.Context, c *kdb.Client) (T, error)) (T, error) {
	var zero T
	if err := ctx.Err(); err != nil {
		return zero, err
	}
	cl, err := s.acquire()
	if err != nil {
		return zero, err
	}
	type result struct {
		v   T
		err error
	}
	done := make(chan result, 1)
	go func() {
		defer s.release(cl)
		v, err := fn(ctx, cl.c)
		done <- result{v, err}
	}()
	select {
	case r := <-done:
		// A client closed for good, or a gRPC error the client passed on
		// untranslated (so it will not rediscover the server itself, and
		// its connection may wait out gRPC's long backoff): use a new one.
		if code, ok := codeOf(r.err); (ok && code == kdb.ErrorCodeConnectionClosed) || rawUnavailable(r.err) {
			s.replace(cl)
			if s.isClosed() {
				return zero, eventstore.ErrClosed
			}
		}
		return r.v, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	case <-cl.gone:
		// The call may hang on a client closed for good (its discovery
		// failed while the call queued); the store has a new one.
		return zero, errRetired
	}
}

// retry runs attempt until it succeeds, fails for good, or transport
// errors have been retried for Options.RetryTimeout (then the error wraps
// ErrUnavailable). A done ctx ends it with ctx's error.
func (s *Store) retry(ctx context.Context, attempt func(ctx context.Context) error) error {
	rctx, cancel := context.WithTimeout(ctx, s.opts.RetryTimeout)
	defer cancel()
	for n := 0; ; n++ {
		err := attempt(rctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, eventstore.ErrClosed) {
			return err
		}
		if !transient(err) && rctx.Err() == nil {
			return err
		}
		if rctx.Err() != nil || n+1 >= maxAttempts {
			return fmt.Errorf("%w: %s: gave up after %d attempts: %w", ErrUnavailable, s.addrs, n+1, err)
		}
		s.log.Debug("esdb: retrying after a transport error", "addr", s.addrs, "attempt", n+1, "err", err)
		if !pause(rctx, backoff(n)) {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w: %s: gave up after %d attempts: %w", ErrUnavailable, s.addrs, n+1, err)
		}
	}
}

// maxAttempts bounds the attempts of one call (RetryTimeout bounds them in time).
const maxAttempts = 40

// backoff is the pause before retry n+1: 25 ms doubling up to 1 s.
func backoff(n int) time.Duration {
	d := 25 * time.Millisecond
	for range min(n, 6) {
		d *= 2
	}
	return min(d, time.Second)
}

// pause waits d or until ctx is done, reporting whether d passed.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// ours reports whether stream (a server name) belongs to the families
// this store reads back.
func (s *Store) ours(stream string) bool {
	name, ok := strings.CutPrefix(stream, s.opts.Namespace)
	if !ok || strings.HasPrefix(stream, "$") {
		return false
	}
	for _, p := range s.opts.StreamPrefixes {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// serverName is the server's name of a domain stream.
func (s *Store) serverName(stream string) string { return s.opts.Namespace + stream }

// filterPrefixes are the server-side subscription filter's stream prefixes.
func (s *Store) filterPrefixes() []string {
	out := make([]string, len(s.opts.StreamPrefixes))
	for i, p := range s.opts.StreamPrefixes {
		out[i] = s.opts.Namespace + p
	}
	return out
}

// knownVersion returns the last version seen of stream (0: none seen).
func (s *Store) knownVersion(stream string) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.revs[stream]
}

// rememberVersion notes that stream has reached version v (a later,
// higher note wins).
func (s *Store) rememberVersion(stream string, v uint64) { s.noteVersion(stream, v, false) }

// noteVersion records v as stream's last known version; exact (the server
// said so in a wrong-expected-version answer) overrides a higher guess.
func (s *Store) noteVersion(stream string, v uint64, exact bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.revs) >= maxRevisionCache {
		clear(s.revs)
	}
	if exact || v > s.revs[stream] {
		s.revs[stream] = v
	}
}

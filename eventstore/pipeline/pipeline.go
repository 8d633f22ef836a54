// Package pipeline feeds the event log to its consumers: the views, which
// apply events in batches (BatchConsumer), and the process managers, which
// act on one event at a time through a Watermill router (Consumer) with
// retry, recovery and parking middleware.
//
// # One reader
//
// One goroutine reads the log in batches (Config.BatchSize events a read,
// Source.ReadAll) from the lowest checkpoint of all consumers, and waits
// for Source.Changed once it reaches the head. Each consumer has a lane: a
// queue of at most Config.Buffer batches (the batches are shared, never
// copied) and its own position; a lane drops the events at or before its
// consumer's checkpoint, so each consumer is given only the events after
// it. A batch consumer's lane hands it everything queued at once (up to
// Config.MaxBatch events); a process manager's lane hands its events one at
// a time to its Watermill handler and waits for the ack, so order and the
// checkpoint are kept per consumer.
//
// The reader goes at the pace of the fastest consumer, never of the
// slowest: when a lane is full the reader waits for it only while every
// other lane still has batches queued. Once another lane has drained its
// queue, the full lane is detached: it gets no more batches, and when it
// has handled what it holds it reads the log itself, from its own position,
// with the same batch size, until it reaches what the reader has handed
// out; then it rejoins the reader. A consumer that is slow, or retrying a
// failing batch with backoff, therefore costs one extra reader while it is
// behind and holds no one back, and what the pipeline holds in memory is
// bounded by Buffer batches a lane. With no lane attached the reader waits
// for one to rejoin rather than read ahead for nobody.
//
// # Failures
//
// A batch whose HandleBatch fails is tried again with Config.Retry's
// backoff for as long as it takes (nothing of it was applied); the events a
// batch consumer could not decode come back as parked events and are
// parked (Parker.Park) and counted (OnPark). A process manager's event is
// retried by Watermill's Retry middleware up to MaxRetries, then parked and
// skipped; a temporary storage error (eventstore.TemporaryStorage) never
// parks, the event is delivered again until it succeeds. A read of the log
// that fails is retried with backoff: the pipeline does not stop for it.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// Consumer is a handler the pipeline feeds with every event in order, one
// at a time through Watermill: a process manager. It keeps its own
// checkpoint.
type Consumer interface {
	// Name is unique; it names the Watermill handler and topic.
	Name() string
	// Position is the checkpoint: the last event handled or skipped.
	Position(ctx context.Context) (uint64, error)
	// Handle applies one event and moves the checkpoint to it.
	Handle(ctx context.Context, rec domain.RecordedEvent) error
	// Skip moves the checkpoint past a parked event.
	Skip(ctx context.Context, position uint64) error
}

// BatchConsumer applies the events in batches, as the views do.
type BatchConsumer interface {
	// Name is unique among all consumers.
	Name() string
	// Position is the checkpoint: the last event applied or skipped.
	Position(ctx context.Context) (uint64, error)
	// HandleBatch applies, in order, the events of recs after its
	// checkpoint and moves the checkpoint to the last position of recs,
	// or beyond it (the views rebuilt aside): the lane then goes on from
	// the checkpoint, without handing it the events it moved past.
	// Events it cannot decode are skipped and returned as parked events
	// (Handler, Error filled) for the pipeline to park and count (a
	// consumer that also records them in the transaction of its
	// checkpoint, as the views do, leaves no window in which a crash
	// forgets them; Park must then be an upsert); an
	// error return means nothing was applied: the batch is retried with
	// backoff, never parked.
	HandleBatch(ctx context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error)
}

// Selective is implemented by a Consumer that acts on a few event types
// only and merely moves its checkpoint for the others (a process manager).
// The pipeline hands an event it does not want to Handle directly, without
// a Watermill message; if that Handle fails, the event goes through
// Watermill like the others (retries, parking).
type Selective interface {
	Wants(eventType string) bool
}

// InOrder is implemented by a Consumer that can apply events in position
// order only, as a view does, when InOrderOnly reports true. Replay refuses
// its parked events with ErrRebuildToReplay: they are replayed by a rebuild.
type InOrder interface {
	InOrderOnly() bool
}

// Parker records events that consumers gave up on, and forgets them once
// they have been replayed.
type Parker interface {
	Park(ctx context.Context, pe domain.ParkedEvent) error
	Unpark(ctx context.Context, handler string, position uint64) error
}

// Log is the part of the event store Replay reads a parked event from.
type Log interface {
	ReadAll(ctx context.Context, after uint64, limit int) ([]domain.RecordedEvent, error)
}

// Source is the event log the pipeline reads: eventstore.SQLite and
// memory.Store are sources.
type Source interface {
	eventstore.Feed
	// Head is the position of the last event (for catch-up progress).
	Head(ctx context.Context) (uint64, error)
}

// Defaults of Config.
const (
	DefaultMaxRetries     = 5
	DefaultRetryInitial   = 100 * time.Millisecond
	DefaultRetryMax       = 2 * time.Second
	DefaultBatchSize      = 4096
	DefaultBuffer         = 8
	DefaultMaxBatch       = 16384
	DefaultProgressEvery  = 5 * time.Second
	DefaultLag            = 1000
	DefaultCaughtUpWindow = 10 * time.Second
)

// Config is what New needs beyond the per-event consumers. Zero fields that
// have a default get it; New validates the result once.
type Config struct {
	// Store is the event log the consumers follow. Required.
	Store Source
	// Parker records the events a consumer gave up on. Required.
	Parker Parker
	// Batch are the consumers that apply events in batches (the views).
	Batch []BatchConsumer
	// Retry is the backoff between tries of a failing handler, batch or
	// read of the log, doubling from Retry.Initial up to Retry.Max. Zero
	// fields default to DefaultRetryInitial and DefaultRetryMax.
	Retry domain.Backoff
	// MaxRetries is how many times a failing process manager is tried
	// again before its event is parked; 0 means DefaultMaxRetries.
	MaxRetries int
	// BatchSize is how many events one read of the log returns at most;
	// 0 means DefaultBatchSize.
	BatchSize int
	// Buffer is how many batches a consumer's lane holds before the
	// consumer counts as behind; 0 means DefaultBuffer.
	Buffer int
	// MaxBatch bounds the events one HandleBatch gets (the lane merges
	// what it has queued up to this); 0 means DefaultMaxBatch. It is at
	// least BatchSize.
	MaxBatch int
	// ProgressEvery is how often the catch-up of the batch consumers is
	// logged while they are behind; 0 means DefaultProgressEvery.
	ProgressEvery time.Duration
	// Lag is how many events the batch consumers may be behind the head
	// and still count as caught up (Lag.CaughtUp, the progress log: a live
	// tail is always a few events behind), on a store with dense positions
	// (see Dense); 0 means DefaultLag.
	Lag uint64
	// CaughtUpWindow is, on a store whose positions have gaps (where a
	// difference of positions counts nothing), how long ago the head the
	// batch consumers must have reached was observed for them to count as
	// caught up; 0 means DefaultCaughtUpWindow. The head is observed at
	// every ProgressEvery and every call of Lag.
	CaughtUpWindow time.Duration
	// Log gets the pipeline's messages; nil means slog.Default().
	Log *slog.Logger
	// Instrument, if set, is given the router before handlers are added
	// (to add metrics middleware).
	Instrument func(*message.Router)
	// OnPark, if set, is called after an event is parked (for metrics).
	OnPark func(pe domain.ParkedEvent)
	// OnRead, if set, is told how many events each read of the log
	// returned, the reader's and a behind lane's (for metrics).
	OnRead func(events int)
	// OnBatch, if set, is told of each batch a batch consumer applied:
	// how many events and how long it took (for metrics).
	OnBatch func(consumer string, events int, d time.Duration)
}

// withDefaults returns c with the defaults filled in.
func (c Config) withDefaults() Config {
	if c.Retry.Initial == 0 {
		c.Retry.Initial = DefaultRetryInitial
	}
	if c.Retry.Max == 0 {
		c.Retry.Max = DefaultRetryMax
	}
	if c.MaxRetries == 0 {
		c.MaxRetries = DefaultMaxRetries
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultBatchSize
	}
	if c.Buffer == 0 {
		c.Buffer = DefaultBuffer
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = max(DefaultMaxBatch, c.BatchSize)
	}
	if c.ProgressEvery == 0 {
		c.ProgressEvery = DefaultProgressEvery
	}
	if c.Lag == 0 {
		c.Lag = DefaultLag
	}
	if c.CaughtUpWindow == 0 {
		c.CaughtUpWindow = DefaultCaughtUpWindow
	}
	if c.Log == nil {
		c.Log = slog.Default()
	}
	return c
}

// Validate reports what is wrong with c, once its defaults are filled in.
func (c Config) Validate() error {
	var errs []error
	if c.Store == nil {
		errs = append(errs, errors.New("no event store"))
	}
	if c.Parker == nil {
		errs = append(errs, errors.New("no parker"))
	}
	if err := c.Retry.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("retry %w", err))
	}
	if c.MaxRetries < 0 {
		errs = append(errs, fmt.Errorf("max retries %d is negative", c.MaxRetries))
	}
	if c.BatchSize < 1 {
		errs = append(errs, fmt.Errorf("batch size %d: want at least 1", c.BatchSize))
	}
	if c.Buffer < 1 {
		errs = append(errs, fmt.Errorf("buffer of %d batches: want at least 1", c.Buffer))
	}
	if c.MaxBatch < c.BatchSize {
		errs = append(errs, fmt.Errorf("max batch %d is below the batch size %d", c.MaxBatch, c.BatchSize))
	}
	if c.ProgressEvery < 0 {
		errs = append(errs, fmt.Errorf("progress interval %v is negative", c.ProgressEvery))
	}
	if c.CaughtUpWindow < 0 {
		errs = append(errs, fmt.Errorf("caught-up window %v is negative", c.CaughtUpWindow))
	}
	for i, b := range c.Batch {
		if b == nil {
			errs = append(errs, fmt.Errorf("batch consumer %d is nil", i))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pipeline config: %w", err)
	}
	return nil
}

// Pipeline runs the one reader of the log, the batch consumers' lanes, and
// the process managers as handlers of a Watermill router with Recoverer and
// Retry middleware; an event whose handler still fails is parked
// (recorded, counted, replayable) and the handler moves on.
type Pipeline struct {
	cfg       Config
	log       *slog.Logger
	router    *message.Router
	sub       *Subscriber
	consumers map[string]Consumer
	batch     map[string]BatchConsumer
	lanes     []*lane
	byName    map[string]*lane

	// mu guards dispatched and every lane's attached and fed (the part
	// the reader and a rejoining lane share).
	mu sync.Mutex
	// dispatched is the last position of the batch the reader hands out,
	// or has handed out, to the lanes: a detached lane rejoins once it has
	// handed its consumer that position itself.
	dispatched uint64
	// wake tells the reader a lane took a batch or rejoined.
	wake chan struct{}
	// started is closed once every lane has its position.
	started chan struct{}
	reads   atomic.Int64

	// dense is Dense(cfg.Store); heads the heads observed for Lag on a
	// store with gaps; now the clock of Lag and progress (time.Now, a
	// test's own clock).
	dense bool
	heads headSamples
	now   func() time.Time
}

// New wires the batch consumers of cfg and the per-event consumers to the
// store.
func New(cfg Config, consumers ...Consumer) (*Pipeline, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Log
	wlog := noTrace{watermill.NewSlogLoggerWithLevelMapping(log, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	p := &Pipeline{cfg: cfg, log: log, router: router, consumers: map[string]Consumer{}, batch: map[string]BatchConsumer{},
		byName: map[string]*lane{}, wake: make(chan struct{}, 1), started: make(chan struct{}),
		dense: Dense(cfg.Store), now: time.Now}
	addLane := func(name string, l *lane) error {
		if _, dup := p.byName[name]; dup {
			return fmt.Errorf("pipeline: two consumers named %q", name)
		}
		l.name = name
		l.in = make(chan []domain.RecordedEvent, cfg.Buffer)
		p.byName[name] = l
		p.lanes = append(p.lanes, l)
		return nil
	}
	for _, b := range cfg.Batch {
		if err := addLane(b.Name(), &lane{batch: b}); err != nil {
			return nil, err
		}
		p.batch[b.Name()] = b
	}
	for _, c := range consumers {
		if err := addLane(c.Name(), &lane{consumer: c}); err != nil {
			return nil, err
		}
		p.consumers[c.Name()] = c
	}
	p.sub = &Subscriber{p: p, redeliver: 200 * time.Millisecond, closing: make(chan struct{})}
	// Outermost first: park what retries could not fix; retry with backoff;
	// turn panics into errors so they are retried and parked too.
	router.AddMiddleware(
		p.park,
		middleware.Retry{
			MaxRetries: cfg.MaxRetries, InitialInterval: cfg.Retry.Initial,
			MaxInterval: cfg.Retry.Max, Multiplier: 2,
			ShouldRetry: func(rp middleware.RetryParams) bool { return !permanent(rp.Err) },
			Logger:      wlog,
		}.Middleware,
		middleware.Recoverer,
	)
	if cfg.Instrument != nil {
		cfg.Instrument(router)
	}
	for name, c := range p.consumers {
		router.AddConsumerHandler(name, name, p.sub, func(msg *message.Message) error {
			rec, err := FromMessage(msg)
			if err != nil {
				return err
			}
			return c.Handle(msg.Context(), rec)
		})
	}
	return p, nil
}

// noTrace drops Watermill's trace lines (a few per message) before they
// are built: the router writes them for every message, and the slog
// adapter formats their fields even when the level is off.
type noTrace struct{ watermill.LoggerAdapter }

func (noTrace) Trace(string, watermill.LogFields) {}

func (n noTrace) With(fields watermill.LogFields) watermill.LoggerAdapter {
	return noTrace{n.LoggerAdapter.With(fields)}
}

// permanent errors are not retried: the event cannot be read by this build.
func permanent(err error) bool {
	return errors.Is(err, domain.ErrUnknownEventType) || errors.Is(err, domain.ErrUnsupportedSchema)
}

// park is the outermost middleware: an error that survived the retries
// parks the event and moves the handler's checkpoint past it. A temporary
// storage error (eventstore.TemporaryStorage: disk full, database busy)
// never parks: the event is delivered again until it succeeds.
func (p *Pipeline) park(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		out, err := h(msg)
		if err == nil {
			return out, nil
		}
		if msg.Context().Err() != nil || errors.Is(err, context.Canceled) {
			// Stopping, not failing: the event is delivered again at the
			// next start, from the checkpoint.
			return nil, err
		}
		name := message.HandlerNameFromCtx(msg.Context())
		if eventstore.TemporaryStorage(err) {
			// The disk is full or the file busy: that passes, and the
			// event must not be given up on for it. The error nacks it;
			// the subscriber delivers it again after a pause, for as long
			// as it takes.
			p.log.Warn("temporary storage error: the event is tried again, not parked; free disk space if it is full",
				"handler", name, "err", err)
			return nil, err
		}
		rec, recErr := FromMessage(msg)
		if recErr != nil {
			return nil, errors.Join(err, recErr)
		}
		pe := domain.ParkedEvent{Handler: name, Position: rec.Position, Stream: rec.Stream, Version: rec.Version,
			Type: rec.Type, Error: err.Error(), ParkedAt: time.Now().UTC()}
		ctx := context.WithoutCancel(msg.Context())
		if perr := p.cfg.Parker.Park(ctx, pe); perr != nil {
			return nil, fmt.Errorf("handler %s failed on event %d (%w) and parking it failed: %w", name, rec.Position, err, perr)
		}
		if c, ok := p.consumers[name]; ok {
			if serr := c.Skip(ctx, rec.Position); serr != nil {
				return nil, fmt.Errorf("skip parked event %d for %s: %w", rec.Position, name, serr)
			}
		}
		p.logParked(pe)
		return nil, nil
	}
}

func (p *Pipeline) logParked(pe domain.ParkedEvent) {
	p.log.Error("event parked: handler gave up on it; fix the cause, then replay it or rebuild",
		"handler", pe.Handler, "position", pe.Position, "stream", pe.Stream, "version", pe.Version, "type", pe.Type, "err", pe.Error)
	if p.cfg.OnPark != nil {
		p.cfg.OnPark(pe)
	}
}

// ErrRebuildToReplay says a view's parked event is replayed by rebuilding
// the views: a view applies events in order only.
var ErrRebuildToReplay = errors.New("a view replays parked events by a rebuild: run usersync rebuild")

// ErrNotStarted is returned by Behind before Run has read the consumers'
// checkpoints.
var ErrNotStarted = errors.New("pipeline not started yet")

// Run reads every consumer's checkpoint, then runs the reader, the lanes
// and the router until ctx is done. It fails only if a checkpoint cannot be
// read or the router cannot start.
func (p *Pipeline) Run(ctx context.Context) error {
	low := uint64(0)
	for i, l := range p.lanes {
		pos, err := l.position(ctx)
		if err != nil {
			return fmt.Errorf("pipeline: read checkpoint of %s: %w", l.name, err)
		}
		l.fed, l.attached = pos, true
		l.pos.Store(pos)
		if i == 0 || pos < low {
			low = pos
		}
	}
	p.dispatched = low
	close(p.started)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	if len(p.lanes) > 0 {
		wg.Go(func() { p.read(ctx, low) })
	}
	for _, l := range p.lanes {
		if l.batch != nil {
			wg.Go(func() { p.runBatch(ctx, l) })
		}
	}
	if len(p.batch) > 0 && p.cfg.ProgressEvery > 0 {
		wg.Go(func() { p.progress(ctx) })
	}
	// A router without handlers does not stop by itself.
	wg.Go(func() {
		<-ctx.Done()
		_ = p.router.Close()
	})
	err := p.router.Run(ctx)
	cancel()
	wg.Wait()
	if err != nil {
		return fmt.Errorf("pipeline: %w", err)
	}
	return nil
}

// Running is closed once every handler runs.
func (p *Pipeline) Running() chan struct{} { return p.router.Running() }

// Replay hands a parked event, read from log, to its handler again (out of
// order, after a fix); on success it is unparked. The parked event of a
// batch consumer (its Name, or one of its Names: see Named), or of a
// consumer that applies events in order only, fails with
// ErrRebuildToReplay.
func (p *Pipeline) Replay(ctx context.Context, log Log, pe domain.ParkedEvent) error {
	if p.batchHandler(pe.Handler) {
		return fmt.Errorf("replay event %d for view %s: %w", pe.Position, pe.Handler, ErrRebuildToReplay)
	}
	c, ok := p.consumers[pe.Handler]
	if !ok {
		return fmt.Errorf("replay event %d: no handler %q", pe.Position, pe.Handler)
	}
	if o, ok := c.(InOrder); ok && o.InOrderOnly() {
		return fmt.Errorf("replay event %d for view %s: %w", pe.Position, pe.Handler, ErrRebuildToReplay)
	}
	// The first event after pe.Position-1 is the one at pe.Position, gaps
	// in the positions or not: positions are whole numbers, so none lies
	// between the two (a parked event's position is that of an event, never
	// 0). If the log has no event there, the check below says so.
	recs, err := log.ReadAll(ctx, pe.Position-1, 1)
	if err != nil {
		return fmt.Errorf("replay event %d: %w", pe.Position, err)
	}
	if len(recs) == 0 || recs[0].Position != pe.Position {
		return fmt.Errorf("replay event %d: not in the store", pe.Position)
	}
	if err := c.Handle(ctx, recs[0]); err != nil {
		return fmt.Errorf("replay event %d for %s: %w", pe.Position, pe.Handler, err)
	}
	return p.cfg.Parker.Unpark(ctx, pe.Handler, pe.Position)
}

// Named is implemented by a BatchConsumer that applies several views and
// parks their events under the views' names (the views: users, tags, …)
// rather than under its own Name.
type Named interface {
	Names() []string
}

// batchHandler reports whether handler parks events for a batch consumer:
// its Name, or one of its Names.
func (p *Pipeline) batchHandler(handler string) bool {
	for name, b := range p.batch {
		if name == handler {
			return true
		}
		if n, ok := b.(Named); ok && slices.Contains(n.Names(), handler) {
			return true
		}
	}
	return false
}

// pause waits d, or less if ctx is done; false means ctx is done.
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

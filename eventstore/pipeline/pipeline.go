// Package pipeline feeds the event log to its consumers (projections and
// process managers) through a Watermill router: Subscriber is a Watermill
// message.Subscriber over the event store, and Pipeline runs each consumer
// as a router handler with retry and recovery middleware, parking the
// events a consumer still cannot handle.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	"github.com/usersync/usersync/domain"
	"github.com/usersync/usersync/eventstore"
)

// Consumer is a handler the pipeline feeds with every event in order: a
// projection or a process manager. It keeps its own checkpoint.
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

// Defaults of Config.
const (
	DefaultMaxRetries   = 5
	DefaultRetryInitial = 100 * time.Millisecond
	DefaultRetryMax     = 2 * time.Second
)

// Config is what New needs beyond the consumers. Zero fields that have a
// default get it; New validates the result once.
type Config struct {
	// Store is the event log the consumers follow. Required.
	Store Follower
	// Parker records the events a consumer gave up on. Required.
	Parker Parker
	// Retry is the backoff a failing handler gets between tries, doubling
	// from Retry.Initial up to Retry.Max. Zero fields default to
	// DefaultRetryInitial and DefaultRetryMax.
	Retry domain.Backoff
	// MaxRetries is how many times a failing handler is tried again before
	// its event is parked; 0 means DefaultMaxRetries.
	MaxRetries int
	// Log gets the pipeline's messages; nil means slog.Default().
	Log *slog.Logger
	// Instrument, if set, is given the router before handlers are added
	// (to add metrics middleware).
	Instrument func(*message.Router)
	// OnPark, if set, is called after an event is parked (for metrics).
	OnPark func(pe domain.ParkedEvent)
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
	if c.Retry.Initial <= 0 || c.Retry.Max < c.Retry.Initial {
		errs = append(errs, fmt.Errorf("retry backoff %v..%v: want 0 < initial <= max", c.Retry.Initial, c.Retry.Max))
	}
	if c.MaxRetries < 0 {
		errs = append(errs, fmt.Errorf("max retries %d is negative", c.MaxRetries))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("pipeline config: %w", err)
	}
	return nil
}

// Pipeline runs consumers as handlers of a Watermill router fed by the event
// store, with Recoverer and Retry middleware; an event whose handler still
// fails is parked (recorded, counted, replayable) and the handler moves on.
type Pipeline struct {
	router    *message.Router
	consumers map[string]Consumer
	parker    Parker
	log       *slog.Logger
	onPark    func(pe domain.ParkedEvent)
}

// New wires consumers to the store.
func New(cfg Config, consumers ...Consumer) (*Pipeline, error) {
	cfg = cfg.withDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	log := cfg.Log
	wlog := watermill.NewSlogLoggerWithLevelMapping(log, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	p := &Pipeline{router: router, consumers: map[string]Consumer{}, parker: cfg.Parker, log: log, onPark: cfg.OnPark}
	for _, c := range consumers {
		if _, dup := p.consumers[c.Name()]; dup {
			return nil, fmt.Errorf("pipeline: two consumers named %q", c.Name())
		}
		p.consumers[c.Name()] = c
	}
	sub := NewSubscriber(cfg.Store, func(ctx context.Context, topic string) (uint64, error) {
		c, ok := p.consumers[topic]
		if !ok {
			return 0, fmt.Errorf("no consumer %q", topic)
		}
		return c.Position(ctx)
	}, log)
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
		router.AddConsumerHandler(name, name, sub, func(msg *message.Message) error {
			rec, err := FromMessage(msg)
			if err != nil {
				return err
			}
			return c.Handle(msg.Context(), rec)
		})
	}
	return p, nil
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
		if perr := p.parker.Park(ctx, pe); perr != nil {
			return nil, fmt.Errorf("handler %s failed on event %d (%w) and parking it failed: %w", name, rec.Position, err, perr)
		}
		if c, ok := p.consumers[name]; ok {
			if serr := c.Skip(ctx, rec.Position); serr != nil {
				return nil, fmt.Errorf("skip parked event %d for %s: %w", rec.Position, name, serr)
			}
		}
		p.log.Error("event parked: handler gave up on it; fix the cause, then replay it or rebuild",
			"handler", name, "position", rec.Position, "stream", rec.Stream, "version", rec.Version, "type", rec.Type, "err", err)
		if p.onPark != nil {
			p.onPark(pe)
		}
		return nil, nil
	}
}

// ErrRebuildToReplay says a view's parked event is replayed by rebuilding
// the views: a view applies events in order only.
var ErrRebuildToReplay = errors.New("a view replays parked events by a rebuild: run usersync rebuild")

// Run runs the router until ctx is done.
func (p *Pipeline) Run(ctx context.Context) error { return p.router.Run(ctx) }

// Running is closed once every handler runs.
func (p *Pipeline) Running() chan struct{} { return p.router.Running() }

// Replay hands a parked event, read from log, to its handler again (out of
// order, after a fix); on success it is unparked. The parked event of a
// consumer that applies events in order only fails with ErrRebuildToReplay.
func (p *Pipeline) Replay(ctx context.Context, log Log, pe domain.ParkedEvent) error {
	c, ok := p.consumers[pe.Handler]
	if !ok {
		return fmt.Errorf("replay event %d: no handler %q", pe.Position, pe.Handler)
	}
	if o, ok := c.(InOrder); ok && o.InOrderOnly() {
		return fmt.Errorf("replay event %d for view %s: %w", pe.Position, pe.Handler, ErrRebuildToReplay)
	}
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
	return p.parker.Unpark(ctx, pe.Handler, pe.Position)
}

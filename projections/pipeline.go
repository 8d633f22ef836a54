package projections

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

// Parker records events that consumers gave up on.
type Parker interface {
	Park(ctx context.Context, pe ParkedEvent) error
}

// RetryPolicy is the exponential backoff a failing handler gets before its
// event is parked.
type RetryPolicy struct {
	MaxRetries      int
	InitialInterval time.Duration
	MaxInterval     time.Duration
	Multiplier      float64
}

// DefaultRetry retries 5 times over about 3 seconds.
func DefaultRetry() RetryPolicy {
	return RetryPolicy{MaxRetries: 5, InitialInterval: 100 * time.Millisecond, MaxInterval: 2 * time.Second, Multiplier: 2}
}

// Pipeline runs consumers as handlers of a Watermill router fed by the event
// store, with Recoverer and Retry middleware; an event whose handler still
// fails is parked (recorded, counted, replayable) and the handler moves on.
type Pipeline struct {
	router    *message.Router
	consumers map[string]Consumer
	parker    Parker
	log       *slog.Logger
	onPark    func(pe ParkedEvent)
}

// PipelineConfig is what NewPipeline needs beyond the consumers.
type PipelineConfig struct {
	Store  Follower
	Parker Parker
	Retry  RetryPolicy
	Log    *slog.Logger
	// Instrument, if set, is given the router before handlers are added
	// (to add metrics middleware).
	Instrument func(*message.Router)
	// OnPark, if set, is called after an event is parked (for metrics).
	OnPark func(pe ParkedEvent)
}

// NewPipeline wires consumers to the store.
func NewPipeline(cfg PipelineConfig, consumers ...Consumer) (*Pipeline, error) {
	store, parker, retry, log := cfg.Store, cfg.Parker, cfg.Retry, cfg.Log
	wlog := watermill.NewSlogLoggerWithLevelMapping(log, map[slog.Level]slog.Level{slog.LevelInfo: slog.LevelDebug})
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, wlog)
	if err != nil {
		return nil, fmt.Errorf("pipeline: %w", err)
	}
	p := &Pipeline{router: router, consumers: map[string]Consumer{}, parker: parker, log: log, onPark: cfg.OnPark}
	for _, c := range consumers {
		if _, dup := p.consumers[c.Name()]; dup {
			return nil, fmt.Errorf("pipeline: two consumers named %q", c.Name())
		}
		p.consumers[c.Name()] = c
	}
	sub := NewSubscriber(store, func(ctx context.Context, topic string) (uint64, error) {
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
			MaxRetries: retry.MaxRetries, InitialInterval: retry.InitialInterval,
			MaxInterval: retry.MaxInterval, Multiplier: retry.Multiplier,
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
// parks the event and moves the handler's checkpoint past it.
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
		rec, recErr := FromMessage(msg)
		if recErr != nil {
			return nil, errors.Join(err, recErr)
		}
		pe := parkedFrom(name, rec, err)
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

// Run runs the router until ctx is done or Close is called.
func (p *Pipeline) Run(ctx context.Context) error { return p.router.Run(ctx) }

// Running is closed once every handler runs.
func (p *Pipeline) Running() chan struct{} { return p.router.Running() }

// Close stops the router and waits for the handlers.
func (p *Pipeline) Close() error { return p.router.Close() }

// Replay hands a parked event to its handler again (out of order, after a
// fix); on success it is removed from the parked list.
func (p *Pipeline) Replay(ctx context.Context, v *Views, log EventLog, pe ParkedEvent) error {
	c, ok := p.consumers[pe.Handler]
	if !ok {
		return fmt.Errorf("replay event %d: no handler %q", pe.Position, pe.Handler)
	}
	if _, isView := c.(viewConsumer); isView {
		return fmt.Errorf("replay event %d for view %s: %w", pe.Position, pe.Handler, ErrRebuildToReplay)
	}
	return replay(ctx, c, v, log, pe)
}

func replay(ctx context.Context, c Consumer, v *Views, log EventLog, pe ParkedEvent) error {
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
	return v.Unpark(ctx, pe.Handler, pe.Position)
}

// viewConsumer feeds one projection of Views.
type viewConsumer struct {
	v    *Views
	name string
}

func (c viewConsumer) Name() string { return c.name }
func (c viewConsumer) Position(context.Context) (uint64, error) {
	return c.v.Position(c.name)
}
func (c viewConsumer) Handle(ctx context.Context, rec domain.RecordedEvent) error {
	return c.v.Handle(ctx, c.name, rec)
}
func (c viewConsumer) Skip(ctx context.Context, position uint64) error {
	return c.v.Skip(ctx, c.name, position)
}

// Consumers returns one pipeline consumer per projection.
func (v *Views) Consumers() []Consumer {
	out := make([]Consumer, len(v.all))
	for i, p := range v.all {
		out[i] = viewConsumer{v: v, name: p.name}
	}
	return out
}

package pipeline

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/usersync/usersync/domain"
)

// setFed records that the lane handed its consumer the events up to pos.
func (p *Pipeline) setFed(l *lane, pos uint64) {
	p.mu.Lock()
	l.fed = pos
	p.mu.Unlock()
}

// runBatch feeds a batch consumer until ctx is done.
func (p *Pipeline) runBatch(ctx context.Context, l *lane) {
	failures := 0
	for ctx.Err() == nil {
		recs, err := p.next(ctx, l, p.cfg.MaxBatch)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			p.log.Error("reading the event log failed; trying again", "consumer", l.name, "after", l.fed, "err", err)
			if !pause(ctx, p.cfg.Retry.Delay(failures)) {
				return
			}
			continue
		}
		failures = 0
		parked, ok := p.apply(ctx, l, recs)
		if !ok {
			return
		}
		last := recs[len(recs)-1].Position
		p.setFed(l, last)
		l.pos.Store(last)
		for _, pe := range parked {
			p.parkBatch(ctx, l, pe)
		}
	}
}

// apply hands recs to the batch consumer until it takes them, retrying with
// backoff; false means ctx is done first.
func (p *Pipeline) apply(ctx context.Context, l *lane, recs []domain.RecordedEvent) ([]domain.ParkedEvent, bool) {
	for attempt := 1; ; attempt++ {
		start := time.Now()
		parked, err := l.batch.HandleBatch(ctx, recs)
		if err == nil {
			if p.cfg.OnBatch != nil {
				p.cfg.OnBatch(l.name, len(recs), time.Since(start))
			}
			return parked, true
		}
		if ctx.Err() != nil {
			return nil, false
		}
		p.log.Warn("applying a batch of events failed; trying it again (nothing of it was applied)",
			"consumer", l.name, "from", recs[0].Position, "to", recs[len(recs)-1].Position, "attempt", attempt, "err", err)
		if !pause(ctx, p.cfg.Retry.Delay(attempt)) {
			return nil, false
		}
	}
}

// parkBatch parks an event a batch consumer skipped, retrying with backoff
// while the parker fails: the consumer has already moved past it.
func (p *Pipeline) parkBatch(ctx context.Context, l *lane, pe domain.ParkedEvent) {
	if pe.Handler == "" {
		pe.Handler = l.name
	}
	if pe.ParkedAt.IsZero() {
		pe.ParkedAt = time.Now().UTC()
	}
	for attempt := 1; ; attempt++ {
		err := p.cfg.Parker.Park(context.WithoutCancel(ctx), pe)
		if err == nil {
			p.logParked(pe)
			return
		}
		p.log.Error("parking an event failed; trying again", "handler", pe.Handler, "position", pe.Position, "err", err)
		if !pause(ctx, p.cfg.Retry.Delay(attempt)) {
			p.log.Error("stopped before an event skipped by a view could be parked: it is not listed as parked; rebuild the views to apply it once it can be read",
				"handler", pe.Handler, "position", pe.Position)
			return
		}
	}
}

// PerEvent adapts a Consumer that applies one event at a time (an
// in-memory view) to a BatchConsumer: HandleBatch hands each event to
// Handle; an event Handle cannot decode (unknown type, newer schema) is
// skipped and returned as parked. Any other error stops the batch; the
// pipeline hands it over again, so Handle must ignore the events at or
// before its checkpoint (a view's Handle does).
// The events it skipped before such an error are returned with the batch
// that succeeds.
func PerEvent(c Consumer) BatchConsumer { return &perEvent{c: c} }

type perEvent struct {
	c Consumer
	// parked are the events skipped by a batch that then failed: they are
	// returned by the next batch that succeeds (HandleBatch is called
	// from one goroutine).
	parked []domain.ParkedEvent
}

func (a *perEvent) Name() string                                 { return a.c.Name() }
func (a *perEvent) Position(ctx context.Context) (uint64, error) { return a.c.Position(ctx) }

// InOrderOnly reports what the adapted consumer does.
func (a *perEvent) InOrderOnly() bool {
	o, ok := a.c.(InOrder)
	return ok && o.InOrderOnly()
}

func (a *perEvent) HandleBatch(ctx context.Context, recs []domain.RecordedEvent) ([]domain.ParkedEvent, error) {
	for _, rec := range recs {
		err := a.c.Handle(ctx, rec)
		if err == nil {
			continue
		}
		if !permanent(err) {
			return nil, fmt.Errorf("%s: event %d: %w", a.c.Name(), rec.Position, err)
		}
		if serr := a.c.Skip(ctx, rec.Position); serr != nil {
			return nil, fmt.Errorf("%s: skip event %d: %w", a.c.Name(), rec.Position, errors.Join(err, serr))
		}
		a.parked = append(a.parked, domain.ParkedEvent{Handler: a.c.Name(), Position: rec.Position, Stream: rec.Stream,
			Version: rec.Version, Type: rec.Type, Error: err.Error(), ParkedAt: time.Now().UTC()})
	}
	parked := a.parked
	a.parked = nil
	return parked, nil
}

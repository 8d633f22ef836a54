package pipeline

import (
	"context"
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
		// A consumer may have moved past the batch (the views, rebuilt
		// aside before it): the lane goes on from its checkpoint rather
		// than hand it events it has.
		if pos, err := l.batch.Position(ctx); err == nil && pos > last {
			last = pos
		}
		p.setFed(l, last)
		l.applied.Add(uint64(len(recs)))
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

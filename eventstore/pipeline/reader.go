package pipeline

import (
	"context"
	"sort"
	"sync/atomic"

	"github.com/usersync/usersync/domain"
)

// lane is one consumer's queue of batches and its position (see the
// package doc).
type lane struct {
	name     string
	batch    BatchConsumer // one of batch and consumer is set
	consumer Consumer
	in       chan []domain.RecordedEvent

	// attached says the reader hands this lane its batches; when false
	// the lane reads the log itself. fed is the last position handed to
	// the consumer. Both are guarded by Pipeline.mu when they change;
	// the lane's goroutine reads fed freely.
	attached bool
	fed      uint64
	// pos is the consumer's checkpoint as last seen; applied counts the
	// events a batch consumer was handed and took since Run started (Lag).
	pos     atomic.Uint64
	applied atomic.Uint64
}

func (l *lane) position(ctx context.Context) (uint64, error) {
	if l.batch != nil {
		return l.batch.Position(ctx)
	}
	return l.consumer.Position(ctx)
}

// read is the one reader: it reads the log after pos in batches and hands
// them to the lanes, until ctx is done.
func (p *Pipeline) read(ctx context.Context, pos uint64) {
	failures := 0
	for ctx.Err() == nil {
		wake := p.cfg.Store.Changed()
		recs, err := p.readLog(ctx, pos)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			failures++
			p.log.Error("reading the event log failed; trying again", "after", pos, "err", err)
			if !pause(ctx, p.cfg.Retry.Delay(failures)) {
				return
			}
			continue
		}
		failures = 0
		if len(recs) == 0 {
			select {
			case <-wake:
			case <-ctx.Done():
			}
			continue
		}
		if !p.dispatch(ctx, recs) {
			return
		}
		pos = recs[len(recs)-1].Position
	}
}

// readLog is one read of the log, counted.
func (p *Pipeline) readLog(ctx context.Context, after uint64) ([]domain.RecordedEvent, error) {
	recs, err := p.cfg.Store.ReadAll(ctx, after, p.cfg.BatchSize)
	p.reads.Add(1)
	if err == nil && p.cfg.OnRead != nil {
		p.cfg.OnRead(len(recs))
	}
	return recs, err
}

// dispatch hands recs to every attached lane. It waits for a full lane
// only while every lane that took recs still has batches queued: once one
// of them has drained its queue the full lanes are detached. With no lane
// attached it waits for one to rejoin. False means ctx is done.
func (p *Pipeline) dispatch(ctx context.Context, recs []domain.RecordedEvent) bool {
	last := recs[len(recs)-1].Position
	var pending []*lane
	p.mu.Lock()
	// From now on a lane rejoins only once it has read past recs itself:
	// one that rejoins while recs is handed out is not among pending.
	p.dispatched = last
	for _, l := range p.lanes {
		if l.attached {
			pending = append(pending, l)
		}
	}
	p.mu.Unlock()
	for len(pending) == 0 {
		// Nobody to read for: wait for a lane to rejoin.
		select {
		case <-p.wake:
		case <-ctx.Done():
			return false
		}
		p.mu.Lock()
		for _, l := range p.lanes {
			if l.attached {
				pending = append(pending, l)
			}
		}
		p.mu.Unlock()
	}
	var took []*lane
	for {
		p.mu.Lock()
		kept := pending[:0]
		for _, l := range pending {
			select {
			case l.in <- recs:
				took = append(took, l)
			default:
				kept = append(kept, l)
			}
		}
		pending = kept
		starving := false
		for _, l := range took {
			if len(l.in) == 0 {
				starving = true
			}
		}
		if len(pending) == 0 || starving {
			for _, l := range pending {
				l.attached = false
				p.log.Info("consumer is behind the others: it reads the event log itself until it catches up",
					"consumer", l.name, "at", l.fed, "reader_at", last)
			}
			p.dispatched = last
			p.mu.Unlock()
			return true
		}
		p.mu.Unlock()
		select {
		case <-p.wake:
		case <-ctx.Done():
			return false
		}
	}
}

// signal wakes the reader (a lane took a batch or rejoined).
func (p *Pipeline) signal() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// after is the part of recs (in position order) after position pos.
func after(recs []domain.RecordedEvent, pos uint64) []domain.RecordedEvent {
	i := sort.Search(len(recs), func(i int) bool { return recs[i].Position > pos })
	return recs[i:]
}

// next returns the lane's next events after l.fed: from its queue while it
// is attached, read from the log itself while it is behind. For a batch
// lane it merges what is queued, up to merge events. It does not move
// l.fed: the caller does as it hands the events over.
func (p *Pipeline) next(ctx context.Context, l *lane, merge int) ([]domain.RecordedEvent, error) {
	for ctx.Err() == nil {
		select {
		case b := <-l.in:
			p.signal()
			if recs := p.merge(l, after(b, l.fed), merge); len(recs) > 0 {
				return recs, nil
			}
			continue
		default:
		}
		p.mu.Lock()
		attached := l.attached
		if !attached && l.fed >= p.dispatched {
			l.attached, attached = true, true
			p.log.Info("consumer caught up with the others: it rejoins the one reader", "consumer", l.name, "at", l.fed)
		}
		p.mu.Unlock()
		if attached {
			p.signal()
			select {
			case b := <-l.in:
				p.signal()
				if recs := p.merge(l, after(b, l.fed), merge); len(recs) > 0 {
					return recs, nil
				}
			case <-ctx.Done():
			}
			continue
		}
		recs, err := p.readLog(ctx, l.fed)
		if err != nil {
			return nil, err
		}
		if len(recs) > 0 {
			return recs, nil
		}
		// The log ends before what the reader handed out: only a store
		// replaced under a running pipeline does that. Rejoin.
		p.mu.Lock()
		l.attached = true
		p.mu.Unlock()
	}
	return nil, ctx.Err()
}

// merge appends to recs the batches queued in l while recs has fewer than
// limit events: small batches (the live tail) become one; a full batch (a
// catch-up) is handed over as it is, without a copy. limit 0 merges nothing.
func (p *Pipeline) merge(l *lane, recs []domain.RecordedEvent, limit int) []domain.RecordedEvent {
	if limit == 0 || len(recs) == 0 || len(recs) >= p.cfg.BatchSize {
		return recs
	}
	merged := false
	for len(recs) < limit {
		select {
		case b := <-l.in:
			p.signal()
			if !merged {
				recs = append(make([]domain.RecordedEvent, 0, min(limit, len(recs)+len(b))), recs...)
				merged = true
			}
			recs = append(recs, after(b, recs[len(recs)-1].Position)...)
		default:
			return recs
		}
	}
	return recs
}

package pipeline

import (
	"context"
	"time"
)

// progress logs, every Config.ProgressEvery while the batch consumers are
// more than Config.Lag events behind the head, how far they are and how fast they catch up, and once
// when they have caught up.
func (p *Pipeline) progress(ctx context.Context) {
	t := time.NewTicker(p.cfg.ProgressEvery)
	defer t.Stop()
	var (
		catchingUp bool
		since      time.Time
		lastAt     time.Time
		lastLow    uint64
	)
	for first := true; ; first = false {
		if !first {
			select {
			case <-t.C:
			case <-ctx.Done():
				return
			}
		}
		head, err := p.cfg.Store.Head(ctx)
		if err != nil {
			continue
		}
		behind, err := p.Behind(head)
		if err != nil {
			continue
		}
		low := head - behind
		now := time.Now()
		switch {
		case behind > p.cfg.Lag && !catchingUp:
			catchingUp, since = true, now
			p.log.Info("views catching up with the event log", "head", head, "behind", behind)
		case behind > p.cfg.Lag:
			rate := float64(low-lastLow) / now.Sub(lastAt).Seconds()
			args := []any{"head", head, "behind", behind, "events_per_second", int64(rate)}
			if rate > 0 {
				args = append(args, "eta", (time.Duration(float64(behind) / rate * float64(time.Second))).Round(time.Second).String())
			}
			p.log.Info("views catching up with the event log", args...)
		case catchingUp:
			catchingUp = false
			p.log.Info("views caught up with the event log", "head", head, "took", now.Sub(since).Round(time.Millisecond).String())
		}
		lastAt, lastLow = now, low
	}
}

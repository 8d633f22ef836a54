package pipeline

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// DensePositions is implemented by a store whose positions are 1, 2, 3, …
// without gaps (the embedded SQLite store, the memory store), when
// DensePositions reports true: a difference of its positions then counts
// events. A position is otherwise an ordered, opaque checkpoint (on
// EventStoreDB a byte offset in the log, increasing with large gaps), and
// a store without the method is taken to leave gaps.
type DensePositions interface {
	DensePositions() bool
}

// Dense reports whether store declares dense positions (DensePositions).
func Dense(store any) bool {
	d, ok := store.(DensePositions)
	return ok && d.DensePositions()
}

// Lag is how far the batch consumers (the views) are behind the log's
// head, in measures that hold whatever the store's positions are.
type Lag struct {
	// Head is the position of the last event in the log; Applied the
	// checkpoint of the batch consumer furthest behind (Head when none
	// runs).
	Head, Applied uint64
	// Dense is true on a store with dense positions (DensePositions).
	Dense bool
	// Events is how many events are left to apply, Head-Applied, on a
	// store with dense positions; 0 on one with gaps, where a difference
	// of positions counts nothing.
	Events uint64
	// Behind is the log time left to apply: the recorded time of the head
	// event minus that of the last applied event (0 when caught up).
	Behind time.Duration
	// Done is the fraction of the positions up to Head that is applied,
	// Applied/Head (1 for an empty log). On a store with gaps it is the
	// share of the log's bytes, not of its events.
	Done float64
	// CaughtUp is the readiness decision. Dense: at most Config.Lag
	// events behind. With gaps: Applied has reached the head observed
	// Config.CaughtUpWindow ago (or, before the pipeline has observed one
	// that old, the first head it observed), so the consumers have applied
	// every event that was in the log that long ago.
	CaughtUp bool

	// applied counts the events the lane furthest behind has applied
	// since the pipeline started (for the rate in the progress log).
	applied uint64
}

// String says how far behind l is: "1500 events behind" on a store with
// dense positions, "42% of the log, 3m10s behind" on one with gaps.
func (l Lag) String() string {
	if l.Dense {
		return fmt.Sprintf("%d events behind", l.Events)
	}
	return fmt.Sprintf("%s of the log, %s behind", percent(l.Done), l.Behind.Round(time.Second))
}

// percent is f as a whole percentage, rounded down: "99%" until done.
func percent(f float64) string { return fmt.Sprintf("%d%%", int(f*100)) }

// Behind is how far apart head and the checkpoint of the batch consumer
// furthest behind are, in positions: 0 when every batch consumer is at
// head or none runs. It counts events only on a store with dense
// positions (see Dense); Lag says how far behind in terms that hold on
// every store. It fails with ErrNotStarted before Run has read the
// checkpoints.
func (p *Pipeline) Behind(head uint64) (uint64, error) {
	select {
	case <-p.started:
	default:
		return 0, ErrNotStarted
	}
	var behind uint64
	for _, l := range p.lanes {
		if l.batch == nil {
			continue
		}
		if pos := l.pos.Load(); head > pos {
			behind = max(behind, head-pos)
		}
	}
	return behind, nil
}

// Lag reads the head and says how far the batch consumers are behind it
// (see Lag). It fails with ErrNotStarted before Run has read the
// checkpoints. It reads the log twice (the recorded times of the head
// event and of the last applied one) when the consumers are behind.
func (p *Pipeline) Lag(ctx context.Context) (Lag, error) {
	select {
	case <-p.started:
	default:
		return Lag{}, ErrNotStarted
	}
	head, err := p.cfg.Store.Head(ctx)
	if err != nil {
		return Lag{}, fmt.Errorf("lag: read the head: %w", err)
	}
	return p.lagAt(ctx, head)
}

// lagAt is Lag for a head already read.
func (p *Pipeline) lagAt(ctx context.Context, head uint64) (Lag, error) {
	lg := Lag{Head: head, Applied: head, Dense: p.dense, Done: 1}
	first := true
	for _, l := range p.lanes {
		if l.batch == nil {
			continue
		}
		if pos := l.pos.Load(); first || pos < lg.Applied {
			lg.Applied, lg.applied = pos, l.applied.Load()
		}
		first = false
	}
	// A consumer may have moved past a head read before it.
	lg.Applied = min(lg.Applied, head)
	if head > 0 {
		lg.Done = float64(lg.Applied) / float64(head)
	}
	if p.dense {
		lg.Events = head - lg.Applied
		lg.CaughtUp = lg.Events <= p.cfg.Lag
	} else {
		lg.CaughtUp = lg.Applied >= p.heads.observe(p.now(), head, p.cfg.CaughtUpWindow)
	}
	if lg.Applied < head {
		behind, err := p.logTime(ctx, lg.Applied, head)
		if err != nil {
			return lg, err
		}
		lg.Behind = behind
	}
	return lg, nil
}

// logTime is the recorded time of the event at position to minus that of
// the event at position from (the first event's when from is 0: nothing
// applied yet), never negative. ReadAll(pos-1, 1) returns the event at pos:
// positions are whole numbers, so the first one after pos-1 is pos itself
// when an event has it, gaps or not.
func (p *Pipeline) logTime(ctx context.Context, from, to uint64) (time.Duration, error) {
	at := func(pos uint64) (time.Time, error) {
		after := uint64(0)
		if pos > 0 {
			after = pos - 1
		}
		recs, err := p.cfg.Store.ReadAll(ctx, after, 1)
		if err != nil {
			return time.Time{}, fmt.Errorf("lag: read the event at %d: %w", pos, err)
		}
		if len(recs) == 0 {
			return time.Time{}, fmt.Errorf("lag: no event at or after position %d", pos)
		}
		return recs[0].RecordedAt, nil
	}
	t0, err := at(from)
	if err != nil {
		return 0, err
	}
	t1, err := at(to)
	if err != nil {
		return 0, err
	}
	return max(t1.Sub(t0), 0), nil
}

// headSamples remembers the heads the pipeline observed recently, for the
// caught-up decision on a store with gaps.
type headSamples struct {
	mu sync.Mutex
	s  []headSample // oldest first
}

type headSample struct {
	at   time.Time
	head uint64
}

// maxHeadSamples bounds the samples kept: the oldest (the reference) is
// kept and the next oldest dropped.
const maxHeadSamples = 64

// observe records head as seen at now and returns the newest head seen at
// least window before now, or the oldest one seen when none was seen that
// long ago.
// Samples older than that one are dropped.
func (h *headSamples) observe(now time.Time, head uint64, window time.Duration) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.s = append(h.s, headSample{at: now, head: head})
	ref := -1
	for i, s := range h.s {
		if now.Sub(s.at) < window {
			break
		}
		ref = i
	}
	if ref > 0 {
		h.s = append(h.s[:0], h.s[ref:]...)
		ref = 0
	}
	if len(h.s) > maxHeadSamples {
		h.s = append(h.s[:1], h.s[2:]...)
	}
	// Before one is window old, the oldest is the reference: the head
	// when the pipeline first looked (at the start). The current head
	// would make every event appended meanwhile (a process manager's, a
	// webhook's) a moment of "not caught up".
	return h.s[0].head
}

// progress logs, every Config.ProgressEvery while the batch consumers have
// not caught up (Lag.CaughtUp), how far behind they are and how fast they
// catch up, and once when they have caught up. On a store with dense
// positions it says how many events are left; on one with gaps how much of
// the log is done and how much log time is left, and its ETA comes from
// the rate at which that fraction grows. Either way the events per second
// are counted as the consumers apply them.
func (p *Pipeline) progress(ctx context.Context) {
	t := time.NewTicker(p.cfg.ProgressEvery)
	defer t.Stop()
	var (
		catchingUp bool
		since      time.Time
		last       Lag
		lastAt     time.Time
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
		lg, err := p.lagAt(ctx, head)
		if err != nil {
			continue
		}
		now := p.now()
		switch {
		case !lg.CaughtUp && !catchingUp:
			catchingUp, since = true, now
			p.log.Info("views catching up with the event log", progressArgs(lg, Lag{}, 0)...)
		case !lg.CaughtUp:
			p.log.Info("views catching up with the event log", progressArgs(lg, last, now.Sub(lastAt))...)
		case catchingUp:
			catchingUp = false
			p.log.Info("views caught up with the event log", "head", head, "took", now.Sub(since).Round(time.Millisecond).String())
		}
		last, lastAt = lg, now
	}
}

// progressArgs are the fields of a catch-up log line: now is the lag now,
// last the one dt earlier (dt 0: none yet, no rates).
func progressArgs(now, last Lag, dt time.Duration) []any {
	var args []any
	if now.Dense {
		args = []any{"head", now.Head, "behind", now.Events}
	} else {
		args = []any{"head", now.Head, "applied", now.Applied, "done", percent(now.Done), "behind_time", now.Behind.Round(time.Second).String()}
	}
	if dt <= 0 {
		return args
	}
	rate := float64(now.applied-min(last.applied, now.applied)) / dt.Seconds()
	args = append(args, "events_per_second", int64(rate))
	var eta time.Duration
	switch {
	case now.Dense && rate > 0:
		eta = time.Duration(float64(now.Events) / rate * float64(time.Second))
	case !now.Dense && now.Done > last.Done:
		perSecond := (now.Done - last.Done) / dt.Seconds()
		eta = time.Duration((1 - now.Done) / perSecond * float64(time.Second))
	default:
		return args
	}
	return append(args, "eta", eta.Round(time.Second).String())
}

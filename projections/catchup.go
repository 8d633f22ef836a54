package projections

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// DefaultCatchUpMinBehind is CatchUp.MinBehind's default: below it the
// live batches catch up within seconds anyway.
const DefaultCatchUpMinBehind = 100_000

// DefaultCatchUpMinBehindBytes is CatchUp.MinBehind's counterpart for a log
// whose positions are byte offsets (EventStoreDB's $all): 32 MiB is about
// 100,000 usersync events (the 6 events of one add took 1,912 bytes of the
// stand-in's log, which sizes records as the server does). Below it a rebuild aside would cost more than it saves:
// a few events behind, the live batches catch up within milliseconds while
// a rebuild reads the whole log and holds back every synchronous answer
// waiting on the views.
const DefaultCatchUpMinBehindBytes = 32 << 20

// CatchUp says how the views catch up when the first batch handed to them
// finds them far behind the log (a start without views.db, or with views
// of schema 1, or long stopped): they are then built aside at rebuild
// speed (Rebuild: bulk settings, readers' indexes made after the load) and
// swapped in, instead of being brought up batch by batch through the live
// file (write-ahead log, every index kept up to date row by row, a
// transaction per batch), which is about half as fast. Readers keep the
// old views until the swap. The process managers keep their own
// checkpoints (Rebuild carries them over at the swap); one as far behind
// as the views may wait for the swap (WaitAside) rather than share the
// cores with the rebuild.
type CatchUp struct {
	// Log is the event log a rebuild reads. Required.
	Log EventLog
	// MinBehind is how many events the views must be behind the head for
	// a rebuild aside; 0 means DefaultCatchUpMinBehind. They must also be
	// behind by at least half the log: a rebuild reads the whole log, the
	// live path only what is missing, and the rebuild is about twice as
	// fast (2.2× in docs/benchmarks.md).
	MinBehind uint64
	// ProgressEvery is how often the rebuild's progress is logged (to
	// WithLogger's logger); 0 means 5 s.
	ProgressEvery time.Duration
}

// catchUp is the state of a BatchConsumer's CatchUp: it is decided once,
// at the first batch.
type catchUp struct {
	cfg     CatchUp
	mu      sync.Mutex
	decided bool
	// done is closed once decided is set.
	done chan struct{}
}

// decide records that the first batch was decided (and any rebuild aside
// ended).
func (c *catchUp) decide() {
	if !c.decided {
		c.decided = true
		close(c.done)
	}
}

// CatchUpBatch is Batch with cu: the first batch it is handed decides
// whether the views are rebuilt aside first (see CatchUp).
func (v *Views) CatchUpBatch(cu CatchUp) BatchConsumer {
	if cu.MinBehind == 0 {
		cu.MinBehind = DefaultCatchUpMinBehind
	}
	if cu.ProgressEvery <= 0 {
		cu.ProgressEvery = 5 * time.Second
	}
	return BatchConsumer{v: v, cu: &catchUp{cfg: cu, done: make(chan struct{})}}
}

// farBehind reports whether views at from are to be rebuilt aside to catch
// up with a log whose head is head.
func farBehind(from, head, minBehind uint64) bool {
	if head <= from {
		return false
	}
	behind := head - from
	return behind >= minBehind && behind >= head-head/2
}

// before runs once, before the first batch: if the views are far behind,
// it rebuilds them aside and swaps them in. A rebuild that fails is logged
// and the views catch up batch by batch instead; only a stop (ctx done)
// or a log whose head cannot be read returns an error (the batch is then
// tried again, and so is this).
func (c *catchUp) before(ctx context.Context, v *Views) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.decided {
		return nil
	}
	from, _ := v.LowestPosition(ctx)
	head, err := c.cfg.Log.Head(ctx)
	if err != nil {
		return fmt.Errorf("views: read the log's head: %w", err)
	}
	if !farBehind(from, head, c.cfg.MinBehind) {
		c.decide()
		return nil
	}
	v.log.Info("views far behind the event log: building them aside at rebuild speed; the current views serve reads until they are swapped in",
		"views_at", from, "head", head, "behind", head-from)
	var last time.Time
	st, err := v.Rebuild(ctx, c.cfg.Log, func(p Progress) {
		if time.Since(last) < c.cfg.ProgressEvery || p.Events == 0 {
			return
		}
		last = time.Now()
		rate := float64(p.Events) / p.Elapsed.Seconds()
		args := []any{"position", p.Position, "head", p.Head, "events_per_second", int64(rate)}
		if eta, ok := p.eta(); ok {
			args = append(args, "eta", eta.Round(time.Second).String())
		}
		v.log.Info("views being built aside", args...)
	})
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("views: build aside: %w", ctx.Err())
		}
		c.decide()
		v.log.Warn("building the views aside failed: they catch up batch by batch instead", "err", err)
		return nil
	}
	c.decide()
	v.log.Info("views built aside and swapped in; they follow the log from here",
		"position", st.Position, "events", st.Events, "parked", st.Parked, "took", st.Duration.Round(time.Millisecond).String(),
		"events_per_second", int64(float64(st.Events)/st.Duration.Seconds()))
	// As any rebuild does (see Rebuild); serve refuses to start with such
	// a checkpoint, so this is only for other callers.
	moved, err := moveCheckpointsBack(ctx, v, c.cfg.Log, st.Position)
	if err != nil && ctx.Err() == nil {
		v.log.Warn("views built aside: moving back the process checkpoints beyond the log's end failed", "err", err)
	}
	for _, m := range moved {
		v.log.Warn("rebuild: a process had handled events beyond the log's end; it resumes from the rebuilt position",
			"process", m.Name, "position", m.From, "resumes_from", m.To)
	}
	return nil
}

// WaitAside waits while the views are being built aside, or are far
// enough behind to be once their first batch comes (see CatchUp), until
// that is over or ctx is done. It returns at once for views that are not,
// and for a BatchConsumer made by Batch. serve has a process manager that
// is far behind too wait on it, so that the two catch-ups do not share
// the cores: the views' catch-up is what /readyz waits for.
func (c BatchConsumer) WaitAside(ctx context.Context) error {
	if c.cu == nil {
		return nil
	}
	select {
	case <-c.cu.done:
		return nil
	default:
	}
	from, _ := c.v.LowestPosition(ctx)
	head, err := c.cu.cfg.Log.Head(ctx)
	if err != nil {
		return fmt.Errorf("views: read the log's head: %w", err)
	}
	if !farBehind(from, head, c.cu.cfg.MinBehind) {
		return nil
	}
	select {
	case <-c.cu.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// eta is how long the rest of a rebuild should take at its pace so far:
// on a dense log from the events left and the events per second, on a
// gapped one (positions are not counts) from the share of the positions
// done.
func (p Progress) eta() (time.Duration, bool) {
	if p.Head <= p.Position || p.Position == 0 || p.Elapsed <= 0 {
		return 0, false
	}
	if p.Dense {
		if p.Events == 0 {
			return 0, false
		}
		rate := float64(p.Events) / p.Elapsed.Seconds()
		return time.Duration(float64(p.Head-p.Position) / rate * float64(time.Second)), true
	}
	done := float64(p.Position) / float64(p.Head)
	return time.Duration(float64(p.Elapsed) * (1 - done) / done), true
}

package pipeline

import "time"

// Queued is how many batches the lane of the named consumer holds.
func (p *Pipeline) Queued(name string) int { return len(p.byName[name].in) }

// Reads is how many reads of the log the pipeline made, the reader's and
// the lanes' own.
func (p *Pipeline) Reads() int64 { return p.reads.Load() }

// SetClock replaces the clock of Lag and the progress log; call it before
// Run.
func (p *Pipeline) SetClock(now func() time.Time) { p.now = now }

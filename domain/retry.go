package domain

import (
	"fmt"
	"time"
)

// Backoff is an exponential retry schedule: Initial, doubled after each
// failure, never more than Max. It is the one retry policy of usersync:
// webhooks waiting for the CRM, password returns, welcome emails and the
// event pipeline's handlers all use it.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

// Validate says what is wrong with a schedule: the first wait must be
// positive and the longest at least as long.
func (b Backoff) Validate() error {
	if b.Initial <= 0 || b.Max < b.Initial {
		return fmt.Errorf("backoff %s..%s: want 0 < initial <= max", b.Initial, b.Max)
	}
	return nil
}

// JitterFraction is the part of a delay Jittered may take off: a jittered
// delay lies between (1-JitterFraction)·Delay(n) and Delay(n).
const JitterFraction = 0.5

// Delay is the wait before attempt n+1 after n failures (n ≥ 1). It is
// also the cap of Jittered.
func (b Backoff) Delay(n int) time.Duration {
	d := b.Initial
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

// Jittered is Delay(n) shortened by a random part of it, so that the
// retries of many webhooks that failed together do not all come back at
// once: Delay(n)·(1 − JitterFraction·r). r is a random number in [0, 1)
// the caller draws (the domain holds no random source); values outside
// [0, 1] are clamped, NaN counts as 0. r = 0 gives Delay(n), r = 1 the
// shortest delay, (1 − JitterFraction)·Delay(n).
func (b Backoff) Jittered(n int, r float64) time.Duration {
	d := b.Delay(n)
	switch {
	case !(r > 0): // also NaN
		return d
	case r > 1:
		r = 1
	}
	return d - time.Duration(float64(d)*JitterFraction*r)
}

package domain

import "time"

// Backoff is an exponential retry schedule: Initial, doubled after each
// failure, never more than Max. It is the one retry policy of usersync:
// webhooks waiting for the CRM, password returns, welcome emails and the
// event pipeline's handlers all use it.
type Backoff struct {
	Initial time.Duration
	Max     time.Duration
}

// Delay is the wait before attempt n+1 after n failures (n ≥ 1).
func (b Backoff) Delay(n int) time.Duration {
	d := b.Initial
	for i := 1; i < n && d < b.Max; i++ {
		d *= 2
	}
	return min(d, b.Max)
}

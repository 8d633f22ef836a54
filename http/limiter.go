package http

import (
	"container/list"
	"fmt"
	"math"
	"net/netip"
	"sync"
	"time"
)

// DefaultMaxTracked is how many source addresses a FailureLimiter follows
// at most when its config leaves MaxTracked at 0.
const DefaultMaxTracked = 10000

// FailureLimiterConfig is what a FailureLimiter is built from.
type FailureLimiterConfig struct {
	// Rate is how many failures per second a source may make once its
	// burst is spent (its bucket refills at this rate); it must be
	// positive.
	Rate float64
	// Burst is how many failures in a row a source may make before it is
	// throttled (the bucket's size); at least 1.
	Burst int
	// MaxTracked bounds the sources followed at once (0: DefaultMaxTracked).
	// Past it, the source touched least recently is forgotten.
	MaxTracked int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// FailureLimiter throttles failed secrets (a wrong access key, a wrong
// admin token, later a failed sign-in) per source address with a token
// bucket each: every failure takes a token; a source with none left is
// throttled until its bucket refills. Only failures are counted: the
// caller checks the secret first (in constant time) and asks the limiter
// only when it was wrong, so a right secret is never slowed, whichever
// address it comes from. Memory is bounded: at most MaxTracked buckets,
// the least recently used dropped first, and a bucket that has refilled
// is dropped as soon as it is the oldest (it holds nothing a new one
// would not). No goroutine runs for it. Safe for concurrent use.
type FailureLimiter struct {
	rate  float64
	burst float64
	max   int
	now   func() time.Time

	mu      sync.Mutex
	buckets map[string]*list.Element // of *bucket
	lru     list.List                // front: touched most recently
}

type bucket struct {
	source string
	tokens float64
	at     time.Time // when tokens was last computed
}

// NewFailureLimiter makes a limiter from cfg, or says what is wrong in it.
func NewFailureLimiter(cfg FailureLimiterConfig) (*FailureLimiter, error) {
	if !(cfg.Rate > 0) || math.IsInf(cfg.Rate, 0) {
		return nil, fmt.Errorf("failure limiter: Rate is %v: it must be a positive number of failures per second", cfg.Rate)
	}
	if cfg.Burst < 1 {
		return nil, fmt.Errorf("failure limiter: Burst is %d: it must be at least 1", cfg.Burst)
	}
	if cfg.MaxTracked < 0 {
		return nil, fmt.Errorf("failure limiter: MaxTracked is %d: it must not be negative", cfg.MaxTracked)
	}
	if cfg.MaxTracked == 0 {
		cfg.MaxTracked = DefaultMaxTracked
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &FailureLimiter{rate: cfg.Rate, burst: float64(cfg.Burst), max: cfg.MaxTracked, now: cfg.Now,
		buckets: map[string]*list.Element{}}, nil
}

// Fail records a failure from source (a host as in RemoteAddr, without
// the port). It returns ok when the source still had a token (answer the
// failure as usual); otherwise the source is throttled and retryAfter is
// how long until it has a token again.
func (l *FailureLimiter) Fail(source string) (retryAfter time.Duration, ok bool) {
	key := sourcePrefix(source)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dropRefilled(now)
	var b *bucket
	if e, found := l.buckets[key]; found {
		b = e.Value.(*bucket)
		l.lru.MoveToFront(e)
		b.tokens = min(l.burst, b.tokens+now.Sub(b.at).Seconds()*l.rate)
		b.at = now
	} else {
		for l.lru.Len() >= l.max {
			l.remove(l.lru.Back())
		}
		b = &bucket{source: key, tokens: l.burst, at: now}
		l.buckets[key] = l.lru.PushFront(b)
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0, true
	}
	return time.Duration((1 - b.tokens) / l.rate * float64(time.Second)), false
}

// Tracked is how many sources the limiter follows now.
func (l *FailureLimiter) Tracked() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.lru.Len()
}

// dropRefilled forgets the least recently used buckets that have refilled.
func (l *FailureLimiter) dropRefilled(now time.Time) {
	for e := l.lru.Back(); e != nil; e = l.lru.Back() {
		b := e.Value.(*bucket)
		if b.tokens+now.Sub(b.at).Seconds()*l.rate < l.burst {
			return
		}
		l.remove(e)
	}
}

func (l *FailureLimiter) remove(e *list.Element) {
	delete(l.buckets, e.Value.(*bucket).source)
	l.lru.Remove(e)
}

// sourcePrefix is the bucket of a source: an IPv4 address on its own, an
// IPv6 address by its /64 (one site or host usually holds a whole /64, so
// an attacker could otherwise make a new bucket per guess). A source that
// is not an address (a Unix socket) has a bucket of its own spelling.
func sourcePrefix(source string) string {
	addr, err := netip.ParseAddr(source)
	if err != nil {
		return "other " + source
	}
	addr = addr.Unmap().WithZone("")
	if addr.Is6() {
		p, _ := addr.Prefix(64)
		return p.String()
	}
	return addr.String()
}

// retryAfterSeconds is a Retry-After value: whole seconds, at least 1.
func retryAfterSeconds(d time.Duration) int {
	return max(1, int(math.Ceil(d.Seconds())))
}

package http

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a clock the test moves by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

func newTestLimiter(t *testing.T, rate float64, burst, maxTracked int) (*FailureLimiter, *fakeClock) {
	t.Helper()
	clock := &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)}
	l, err := NewFailureLimiter(FailureLimiterConfig{Rate: rate, Burst: burst, MaxTracked: maxTracked, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	return l, clock
}

func TestNewFailureLimiter_RefusesABadConfig(t *testing.T) {
	tests := []struct {
		name string
		cfg  FailureLimiterConfig
		want string
	}{
		{"no rate", FailureLimiterConfig{Burst: 1}, "Rate is 0"},
		{"a negative rate", FailureLimiterConfig{Rate: -1, Burst: 1}, "Rate is -1"},
		{"no burst", FailureLimiterConfig{Rate: 1}, "Burst is 0"},
		{"a negative cap", FailureLimiterConfig{Rate: 1, Burst: 1, MaxTracked: -1}, "MaxTracked is -1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := NewFailureLimiter(tt.cfg)
			if err == nil || l != nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewFailureLimiter: %v, %v; want an error with %q", l, err, tt.want)
			}
		})
	}
}

func TestFailureLimiter_BurstThenRate(t *testing.T) {
	l, clock := newTestLimiter(t, 0.5, 3, 0) // one failure per 2 s after 3
	for i := range 3 {
		if _, ok := l.Fail("192.0.2.1"); !ok {
			t.Fatalf("failure %d throttled within the burst", i+1)
		}
	}
	wait, ok := l.Fail("192.0.2.1")
	if ok || wait != 2*time.Second {
		t.Fatalf("4th failure: ok %v, retry after %s; want throttled for 2s", ok, wait)
	}
	if _, ok := l.Fail("192.0.2.2"); !ok {
		t.Fatal("another address was throttled")
	}
	clock.Add(time.Second)
	if wait, ok := l.Fail("192.0.2.1"); ok || wait != time.Second {
		t.Fatalf("after 1s: ok %v, retry after %s; want throttled for 1s more", ok, wait)
	}
	clock.Add(time.Second)
	if _, ok := l.Fail("192.0.2.1"); !ok {
		t.Fatal("after 2s the bucket has a token again, but it was throttled")
	}
	if _, ok := l.Fail("192.0.2.1"); ok {
		t.Fatal("the token was spent, but the next failure passed")
	}
}

func TestFailureLimiter_SourcesShareABucket(t *testing.T) {
	tests := []struct {
		name     string
		a, b     string
		together bool
	}{
		{"one IPv6 /64", "2001:db8:1:2::1", "2001:db8:1:2:ffff::9", true},
		{"two IPv6 /64s", "2001:db8:1:2::1", "2001:db8:1:3::1", false},
		{"an IPv4 address and its mapped IPv6 form", "192.0.2.7", "::ffff:192.0.2.7", true},
		{"two IPv4 addresses", "192.0.2.7", "192.0.2.8", false},
		{"a zone", "fe80::1%eth0", "fe80::2%eth1", true},
		{"not addresses", "@", "unix", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, _ := newTestLimiter(t, 1, 1, 0)
			l.Fail(tt.a)
			_, ok := l.Fail(tt.b)
			if ok == tt.together {
				t.Fatalf("%s then %s: second passed %v; want them sharing a bucket: %v", tt.a, tt.b, ok, tt.together)
			}
		})
	}
}

// Memory stays bounded: never more buckets than the cap, and refilled
// buckets are forgotten.
func TestFailureLimiter_BoundedMemory(t *testing.T) {
	l, clock := newTestLimiter(t, 1, 2, 100)
	for i := range 1000 {
		l.Fail(fmt.Sprintf("198.51.%d.%d", i/256, i%256))
		if n := l.Tracked(); n > 100 {
			t.Fatalf("after %d sources: %d tracked, more than the cap", i+1, n)
		}
	}
	// The newest sources are the ones kept.
	l.Fail("198.51.3.231") // the 1000th source, failing a second time
	if _, ok := l.Fail("198.51.3.231"); ok {
		t.Fatal("the most recent source was forgotten")
	}
	clock.Add(2 * time.Second) // every bucket has refilled
	l.Fail("203.0.113.1")
	if n := l.Tracked(); n != 1 {
		t.Fatalf("%d sources tracked after every bucket refilled; want 1 (the new one)", n)
	}
}

func TestFailureLimiter_ConcurrentUse(t *testing.T) {
	l, _ := newTestLimiter(t, 1, 50, 10)
	var wg sync.WaitGroup
	var mu sync.Mutex
	passed := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				if _, ok := l.Fail("192.0.2.1"); ok {
					mu.Lock()
					passed++
					mu.Unlock()
				}
				l.Fail(fmt.Sprintf("192.0.2.%d", 10+g))
			}
		}()
	}
	wg.Wait()
	if passed != 50 {
		t.Fatalf("%d of 800 failures passed from one source with a frozen clock; want the burst, 50", passed)
	}
}

func TestRetryAfterSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int{0: 1, time.Millisecond: 1, time.Second: 1, 1001 * time.Millisecond: 2, 90 * time.Second: 90} {
		if got := retryAfterSeconds(d); got != want {
			t.Errorf("retryAfterSeconds(%s) = %d, want %d", d, got, want)
		}
	}
}

package pipeline

import (
	"fmt"
	"testing"
	"time"
)

// TestProgressArgs_RatesAndETA: the rate counts applied events on both
// logs; the ETA divides the events left by it on a dense log, and the part
// of the log left by the rate the done fraction grows on a gapped one.
func TestProgressArgs_RatesAndETA(t *testing.T) {
	for _, tc := range []struct {
		name      string
		last, now Lag
		dt        time.Duration
		want      string
	}{
		{"dense", Lag{Dense: true, Head: 3000, Applied: 1000, Events: 2000, applied: 0},
			Lag{Dense: true, Head: 3000, Applied: 2000, Events: 1000, applied: 1000}, 10 * time.Second,
			"[head 3000 behind 1000 events_per_second 100 eta 10s]"},
		{"gapped", Lag{Head: 4_000_000, Applied: 1_000_000, Done: 0.25, Behind: time.Hour, applied: 0},
			Lag{Head: 4_000_000, Applied: 2_000_000, Done: 0.5, Behind: 30 * time.Minute, applied: 500}, 10 * time.Second,
			"[head 4000000 applied 2000000 done 50% behind_time 30m0s events_per_second 50 eta 20s]"},
		{"gapped, no progress: no ETA", Lag{Head: 4_000_000, Applied: 1_000_000, Done: 0.25, applied: 7},
			Lag{Head: 4_000_000, Applied: 1_000_000, Done: 0.25, Behind: time.Hour, applied: 7}, 10 * time.Second,
			"[head 4000000 applied 1000000 done 25% behind_time 1h0m0s events_per_second 0]"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := fmt.Sprint(progressArgs(tc.now, tc.last, tc.dt)); got != tc.want {
				t.Errorf("progressArgs = %s, want %s", got, tc.want)
			}
		})
	}
}

// TestHeadSamples_NewestAtLeastWindowOld: observe answers the newest head
// seen at least the window ago, the first one seen before any is that old,
// and keeps a bounded number of samples.
func TestHeadSamples_NewestAtLeastWindowOld(t *testing.T) {
	var h headSamples
	t0 := time.Date(2026, 12, 1, 0, 0, 0, 0, time.UTC)
	at := func(s float64) time.Time { return t0.Add(time.Duration(s * float64(time.Second))) }
	steps := []struct {
		at   float64
		head uint64
		want uint64
	}{
		{0, 100, 100}, // none old enough: the first one seen
		{5, 200, 100},
		{10, 300, 100}, // the head seen at 0 is 10s old
		{14, 400, 100},
		{15, 500, 200},
		{100, 600, 500},
	}
	for _, s := range steps {
		if got := h.observe(at(s.at), s.head, 10*time.Second); got != s.want {
			t.Errorf("at %vs with head %d: %d, want %d", s.at, s.head, got, s.want)
		}
	}
	for i := range 1000 {
		h.observe(at(200+float64(i)/1000), uint64(1000+i), 10*time.Second)
	}
	if len(h.s) > maxHeadSamples {
		t.Errorf("%d samples kept, want at most %d", len(h.s), maxHeadSamples)
	}
}

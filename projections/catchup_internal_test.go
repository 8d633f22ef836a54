package projections

import (
	"testing"
	"time"
)

func TestFarBehind_DecidesWhetherTheViewsAreBuiltAside(t *testing.T) {
	tests := []struct {
		name                  string
		from, head, minBehind uint64
		want                  bool
	}{
		{name: "no views.db: the whole log to apply", from: 0, head: 5_000_000, minBehind: 100_000, want: true},
		{name: "behind by half the log", from: 2_500_000, head: 5_000_000, minBehind: 100_000, want: true},
		{name: "behind by less than half: batch by batch reads less", from: 2_500_001, head: 5_000_000, minBehind: 100_000, want: false},
		{name: "a small log: fewer events than the threshold", from: 0, head: 99_999, minBehind: 100_000, want: false},
		{name: "exactly the threshold", from: 0, head: 100_000, minBehind: 100_000, want: true},
		{name: "at the head", from: 5_000_000, head: 5_000_000, minBehind: 1, want: false},
		{name: "ahead of the head (serve refuses it before)", from: 6, head: 5, minBehind: 1, want: false},
		{name: "an odd head: half rounds up", from: 1, head: 3, minBehind: 1, want: true},
		{name: "an empty log", from: 0, head: 0, minBehind: 1, want: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Given views at from and a log whose head is head; when the
			// first batch decides; then they are built aside only if far
			// behind.
			if got := farBehind(tt.from, tt.head, tt.minBehind); got != tt.want {
				t.Errorf("farBehind(%d, %d, %d) = %v, want %v", tt.from, tt.head, tt.minBehind, got, tt.want)
			}
		})
	}
}

func TestProgress_ETA(t *testing.T) {
	tests := []struct {
		name string
		p    Progress
		want time.Duration
		ok   bool
	}{
		{"dense: events left at the rate so far", Progress{Position: 1000, Head: 3000, Events: 1000, Elapsed: time.Second, Dense: true}, 2 * time.Second, true},
		{"gapped: the share of positions left", Progress{Position: 250_000, Head: 1_000_000, Events: 10, Elapsed: time.Second}, 3 * time.Second, true},
		{"done", Progress{Position: 3000, Head: 3000, Events: 3000, Elapsed: time.Second, Dense: true}, 0, false},
		{"not started", Progress{Head: 3000, Elapsed: time.Second}, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, ok := tc.p.eta()
			if ok != tc.ok || got != tc.want {
				t.Fatalf("eta = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}

package projections

import "testing"

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

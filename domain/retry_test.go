package domain_test

import (
	"math"
	"strings"
	"testing"
	"time"

	"github.com/usersync/usersync/domain"
)

func TestBackoff_Delay_DoublesFromInitialUpToMax(t *testing.T) {
	tests := []struct {
		name    string
		backoff domain.Backoff
		want    []time.Duration // Delay(1), Delay(2), ...
	}{
		{
			name:    "PowersOfTwoUnderTheCap",
			backoff: domain.Backoff{Initial: time.Second, Max: 10 * time.Second},
			want:    []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 10 * time.Second, 10 * time.Second},
		},
		{
			name:    "ServeDefaults",
			backoff: domain.Backoff{Initial: 500 * time.Millisecond, Max: 5 * time.Minute},
			want: []time.Duration{
				500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second,
				16 * time.Second, 32 * time.Second, 64 * time.Second, 128 * time.Second, 256 * time.Second,
				5 * time.Minute, 5 * time.Minute,
			},
		},
		{
			name:    "CapReachedExactly",
			backoff: domain.Backoff{Initial: time.Second, Max: 4 * time.Second},
			want:    []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second},
		},
		{
			name:    "InitialEqualsMax_IsConstant",
			backoff: domain.Backoff{Initial: 3 * time.Second, Max: 3 * time.Second},
			want:    []time.Duration{3 * time.Second, 3 * time.Second, 3 * time.Second},
		},
		{
			name:    "InitialAboveMax_IsCappedFromTheStart",
			backoff: domain.Backoff{Initial: time.Minute, Max: time.Second},
			want:    []time.Duration{time.Second, time.Second},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, want := range tt.want {
				if got := tt.backoff.Delay(i + 1); got != want {
					t.Errorf("Delay(%d) = %v, want %v", i+1, got, want)
				}
			}
		})
	}
}

func TestBackoff_Delay_ManyFailures_StaysAtMax(t *testing.T) {
	b := domain.Backoff{Initial: time.Millisecond, Max: 20 * time.Millisecond}
	for _, n := range []int{6, 64, 1000, 1 << 30} {
		if got := b.Delay(n); got != b.Max {
			t.Errorf("Delay(%d) = %v, want Max %v", n, got, b.Max)
		}
	}
}

func TestBackoff_Delay_BeforeAnyFailure_IsInitial(t *testing.T) {
	b := domain.Backoff{Initial: time.Second, Max: time.Minute}
	for _, n := range []int{0, -1} {
		if got := b.Delay(n); got != time.Second {
			t.Errorf("Delay(%d) = %v, want Initial", n, got)
		}
	}
}

func TestBackoff_Jittered_StaysBetweenHalfTheDelayAndTheDelay(t *testing.T) {
	b := domain.Backoff{Initial: time.Second, Max: 8 * time.Second}
	tests := []struct {
		name string
		n    int
		r    float64
		want time.Duration
	}{
		{"NoJitter_IsDelay", 1, 0, time.Second},
		{"Half", 1, 0.5, 750 * time.Millisecond},
		{"AlmostOne_JustAboveHalf", 3, 0.999, 4*time.Second - time.Duration(float64(4*time.Second)*0.5*0.999)},
		{"One_IsHalf", 2, 1, time.Second},
		{"AtTheCap", 10, 0.25, 7 * time.Second},
		{"NegativeClampedToZero", 2, -3, 2 * time.Second},
		{"AboveOneClampedToOne", 2, 7, time.Second},
		{"NaNIsZero", 2, math.NaN(), 2 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := b.Jittered(tt.n, tt.r); got != tt.want {
				t.Errorf("Jittered(%d, %v) = %v, want %v", tt.n, tt.r, got, tt.want)
			}
		})
	}
}

func TestBackoff_Jittered_NeverAboveDelayNorBelowItsFloor(t *testing.T) {
	b := domain.Backoff{Initial: 3 * time.Millisecond, Max: 5 * time.Minute}
	for n := 1; n <= 40; n++ {
		d := b.Delay(n)
		floor := d - time.Duration(float64(d)*domain.JitterFraction)
		for i := 0; i <= 100; i++ {
			r := float64(i) / 100
			if got := b.Jittered(n, r); got > d || got < floor {
				t.Fatalf("Jittered(%d, %v) = %v, want within [%v, %v]", n, r, got, floor, d)
			}
		}
	}
}

func TestBackoff_Validate(t *testing.T) {
	tests := []struct {
		name string
		b    domain.Backoff
		ok   bool
	}{
		{"positive, max above", domain.Backoff{Initial: time.Millisecond, Max: time.Second}, true},
		{"initial equals max", domain.Backoff{Initial: time.Second, Max: time.Second}, true},
		{"zero initial", domain.Backoff{Max: time.Second}, false},
		{"negative initial", domain.Backoff{Initial: -time.Second, Max: time.Second}, false},
		{"max below initial", domain.Backoff{Initial: time.Second, Max: time.Millisecond}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.b.Validate()
			if (err == nil) != tt.ok {
				t.Fatalf("Validate() = %v, want ok %v", err, tt.ok)
			}
			if err != nil && !strings.Contains(err.Error(), "want 0 < initial <= max") {
				t.Errorf("error %q does not say what a schedule needs", err)
			}
		})
	}
}

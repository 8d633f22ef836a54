package main

import (
	"math/rand/v2"
	"testing"
	"time"
)

func TestHistogram_Percentiles_OfKnownSamples(t *testing.T) {
	// Given the samples 1 µs … 10,000 µs, each once (in a shuffled order).
	var h histogram
	r := rand.New(rand.NewPCG(1, 2))
	for _, i := range r.Perm(10000) {
		h.Record(time.Duration(i+1) * time.Microsecond)
	}
	tests := []struct {
		q    float64
		want time.Duration
	}{
		{0.5, 5000 * time.Microsecond},
		{0.9, 9000 * time.Microsecond},
		{0.99, 9900 * time.Microsecond},
		{0.999, 9990 * time.Microsecond},
		{1, 10000 * time.Microsecond},
	}
	for _, tt := range tests {
		// Then each percentile is the sample's value within the
		// histogram's precision (1/128), never below it.
		got := h.Quantile(tt.q)
		if got < tt.want || float64(got-tt.want) > float64(tt.want)/histSub {
			t.Errorf("Quantile(%v) = %v, want %v within 1/%d above", tt.q, got, tt.want, histSub)
		}
	}
	if h.Count() != 10000 || h.Max() != 10*time.Millisecond || h.Min() != time.Microsecond {
		t.Errorf("count %d, min %v, max %v; want 10000, 1µs, 10ms", h.Count(), h.Min(), h.Max())
	}
	if want := 5000500 * time.Nanosecond; h.Mean() != want {
		t.Errorf("mean %v, want %v", h.Mean(), want)
	}
}

func TestHistogram_Merge_IsTheSameAsRecordingAll(t *testing.T) {
	var a, b, all histogram
	for i := range 1000 {
		d := time.Duration(i*i) * time.Microsecond
		all.Record(d)
		if i%3 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	a.Merge(&b)
	for _, q := range []float64{0.1, 0.5, 0.9, 0.99, 1} {
		if a.Quantile(q) != all.Quantile(q) {
			t.Errorf("merged Quantile(%v) = %v, want %v", q, a.Quantile(q), all.Quantile(q))
		}
	}
	if a.Count() != all.Count() || a.Min() != all.Min() || a.Max() != all.Max() {
		t.Errorf("merged count/min/max %d/%v/%v, want %d/%v/%v", a.Count(), a.Min(), a.Max(), all.Count(), all.Min(), all.Max())
	}
}

func TestHistogram_Buckets_HoldTheirValues(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for range 100000 {
		v := r.Uint64() >> r.UintN(64)
		i := bucketOf(v)
		if i < 0 || i >= histSize {
			t.Fatalf("bucketOf(%d) = %d, outside 0…%d", v, i, histSize-1)
		}
		if high := bucketHigh(i); high < v || (i > 0 && bucketHigh(i-1) >= v) {
			t.Fatalf("value %d in bucket %d whose range ends at %d (previous ends at %d)", v, i, high, bucketHigh(i-1))
		}
	}
	if h := (histogram{}); h.Quantile(0.99) != 0 || h.Mean() != 0 {
		t.Error("an empty histogram has no percentiles")
	}
}

package main

import (
	"math"
	"math/bits"
	"time"
)

// histSubBits sets the histogram's precision: each power of two is split
// into 2^histSubBits buckets, so a recorded value is off by at most
// 1/2^histSubBits (0.8 %).
const histSubBits = 7

const (
	histSub  = 1 << histSubBits
	histSize = 2*histSub + (64-histSubBits-1)*histSub
)

// histogram counts durations (in nanoseconds) in log-linear buckets, as
// HDR histograms do: memory is fixed (about 60 KiB) whatever the number of
// samples, and every percentile is within 0.8 % of the true value. Min,
// max and the mean are exact. It is not safe for concurrent use: each
// connection keeps its own and they are merged.
type histogram struct {
	counts   [histSize]uint64
	n        uint64
	sum      float64
	min, max uint64
}

// bucketOf is the index of the bucket holding v.
func bucketOf(v uint64) int {
	if v < 2*histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1
	return 2*histSub + (shift-1)*histSub + int(v>>shift) - histSub
}

// bucketHigh is the largest value bucket i holds.
func bucketHigh(i int) uint64 {
	if i < 2*histSub {
		return uint64(i)
	}
	shift := (i-2*histSub)/histSub + 1
	m := uint64((i-2*histSub)%histSub + histSub)
	return (m+1)<<shift - 1
}

// Record adds one duration; negative ones count as zero.
func (h *histogram) Record(d time.Duration) {
	v := uint64(max(d, 0))
	h.counts[bucketOf(v)]++
	if h.n == 0 || v < h.min {
		h.min = v
	}
	h.max = max(h.max, v)
	h.n++
	h.sum += float64(v)
}

// Merge adds o's samples to h.
func (h *histogram) Merge(o *histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.n == 0 || o.min < h.min {
		h.min = o.min
	}
	h.max = max(h.max, o.max)
	h.n += o.n
	h.sum += o.sum
}

// Count is the number of samples.
func (h *histogram) Count() uint64 { return h.n }

// Max is the largest sample.
func (h *histogram) Max() time.Duration { return time.Duration(h.max) }

// Min is the smallest sample.
func (h *histogram) Min() time.Duration { return time.Duration(h.min) }

// Mean is the average sample.
func (h *histogram) Mean() time.Duration {
	if h.n == 0 {
		return 0
	}
	return time.Duration(h.sum / float64(h.n))
}

// Quantile is the sample at quantile q (0.99 for p99): the smallest value
// that at least q of the samples do not exceed, as the upper bound of its
// bucket (never more than Max).
func (h *histogram) Quantile(q float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(max(bucketHigh(i), h.min), h.max))
		}
	}
	return time.Duration(h.max)
}

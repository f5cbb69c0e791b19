package main

import (
	"math/bits"
	"time"
)

// histogram is a log-linear latency histogram in the manner of
// HdrHistogram: values below 128 ns have a bucket each, and every power of
// two above is split into 64 buckets, so a recorded value is off by at
// most 1/64 (1.6%). It has a fixed size (30 KiB) whatever it records. It
// is not safe for concurrent use: each worker keeps its own and they are
// merged at the end.
type histogram struct {
	counts [histBuckets]uint64
	total  uint64
	max    int64
}

const (
	histSubBits = 7
	histHalf    = 1 << (histSubBits - 1) // 64
	histBuckets = (64-histSubBits+1)*histHalf + histHalf
)

func histIndex(v uint64) int {
	if v < 1<<histSubBits {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits
	return shift*histHalf + int(v>>shift)
}

// histUpper is the highest value that lands in bucket i.
func histUpper(i int) uint64 {
	if i < 1<<histSubBits {
		return uint64(i)
	}
	shift := i/histHalf - 1
	m := uint64(i - shift*histHalf)
	return (m+1)<<shift - 1
}

func (h *histogram) record(d time.Duration) {
	v := max(int64(d), 0)
	h.counts[histIndex(uint64(v))]++
	h.total++
	h.max = max(h.max, v)
}

func (h *histogram) merge(o *histogram) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.total += o.total
	h.max = max(h.max, o.max)
}

// quantile returns the value at quantile q (0 to 1): the highest value of
// the bucket that holds it, but never above the largest value recorded.
func (h *histogram) quantile(q float64) time.Duration {
	if h.total == 0 {
		return 0
	}
	rank := uint64(q*float64(h.total) + 0.5)
	rank = min(max(rank, 1), h.total)
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			return time.Duration(min(int64(histUpper(i)), h.max))
		}
	}
	return time.Duration(h.max)
}

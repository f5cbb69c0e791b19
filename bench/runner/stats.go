package runner

import (
	"math"
	"math/bits"
	"runtime"
	"slices"
	"time"
)

// percentile returns the p-quantile (0 < p <= 1) of ds by the nearest-rank
// method. ds is sorted in place.
func percentile(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	slices.Sort(ds)
	i := int(math.Ceil(p*float64(len(ds)))) - 1
	return ds[max(0, min(i, len(ds)-1))]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Summary is one metric of one subject over the rounds.
type Summary struct {
	Median float64   `json:"median"`
	Min    float64   `json:"min"`
	Max    float64   `json:"max"`
	Rounds []float64 `json:"rounds"`
	// Ratio is Median divided by the baseline's Median in the same run;
	// absent when the baseline has no such figure or it is zero.
	Ratio *float64 `json:"ratio,omitempty"`
}

func summarize(xs []float64) Summary {
	s := slices.Clone(xs)
	slices.Sort(s)
	var med float64
	if n := len(s); n%2 == 1 {
		med = s[n/2]
	} else {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return Summary{Median: med, Min: s[0], Max: s[len(s)-1], Rounds: xs}
}

// allocMeter measures heap allocations between start and stop, of every
// goroutine (background work a library does for a read is part of its
// cost).
type allocMeter struct{ m0 runtime.MemStats }

func (a *allocMeter) start() { runtime.ReadMemStats(&a.m0) }

// stop returns allocations and bytes allocated per op.
func (a *allocMeter) stop(ops int) (allocs, bytes float64) {
	var m1 runtime.MemStats
	runtime.ReadMemStats(&m1)
	if ops <= 0 {
		return 0, 0
	}
	return float64(m1.Mallocs-a.m0.Mallocs) / float64(ops), float64(m1.TotalAlloc-a.m0.TotalAlloc) / float64(ops)
}

// heapInUse returns HeapAlloc once collections stop freeing memory.
// Several rounds, with a pause between them, because memory of closed
// instances can be held one cycle longer by finalizers (patrickmn/go-cache
// stops its janitor goroutine from one) and by goroutines still exiting.
func heapInUse() uint64 {
	var m runtime.MemStats
	prev := uint64(0)
	for range 8 {
		runtime.GC()
		runtime.ReadMemStats(&m)
		if prev != 0 && m.HeapAlloc >= prev-prev/200 {
			break // freed less than 0.5%: stable
		}
		prev = m.HeapAlloc
		time.Sleep(20 * time.Millisecond)
	}
	return m.HeapAlloc
}

// hist is a latency histogram with 64 buckets per power of two of
// nanoseconds (under 1.6% error), so that millions of reads cost no memory
// growth and no allocation during a measurement. Not safe for concurrent
// use: one per goroutine, merged afterwards.
type hist struct {
	counts [64 << histSubBits]uint64
	n      uint64
}

const histSubBits = 6

func histBucket(v uint64) int {
	if v < 1<<histSubBits {
		return int(v)
	}
	e := bits.Len64(v) - histSubBits - 1
	return (e+1)<<histSubBits + int((v>>e)&(1<<histSubBits-1))
}

// histValue is the middle of bucket i, in nanoseconds.
func histValue(i int) uint64 {
	if i < 1<<histSubBits {
		return uint64(i)
	}
	e := i>>histSubBits - 1
	low := uint64(1<<histSubBits+i&(1<<histSubBits-1)) << e
	return low + (uint64(1)<<e)/2
}

func (h *hist) add(d time.Duration) {
	h.counts[histBucket(uint64(max(d, 0)))]++
	h.n++
}

func (h *hist) merge(o *hist) {
	for i, c := range o.counts {
		h.counts[i] += c
	}
	h.n += o.n
}

// quantile returns the p-quantile (0 < p <= 1) by the nearest-rank method.
func (h *hist) quantile(p float64) time.Duration {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(p * float64(h.n)))
	rank = max(1, min(rank, h.n))
	var cum uint64
	for i, c := range h.counts {
		if cum += c; cum >= rank {
			return time.Duration(histValue(i))
		}
	}
	return 0
}

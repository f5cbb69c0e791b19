package sim

import (
	"math/rand/v2"
	"slices"
	"testing"
)

// naiveOPT is Bélády's policy by linear scans: on a miss with a full cache,
// evict the cached key (or skip the new one) whose next use is farthest.
func naiveOPT(keys []uint64, size int) int {
	nextUse := func(k uint64, from int) int {
		for j := from; j < len(keys); j++ {
			if keys[j] == k {
				return j
			}
		}
		return len(keys)
	}
	var cached []uint64
	hits := 0
	for i, k := range keys {
		if slices.Contains(cached, k) {
			hits++
			continue
		}
		if len(cached) < size {
			cached = append(cached, k)
			continue
		}
		far, farAt := -1, nextUse(k, i+1)
		for ci, c := range cached {
			if nu := nextUse(c, i+1); nu > farAt {
				far, farAt = ci, nu
			}
		}
		if far >= 0 {
			cached[far] = k
		}
	}
	return hits
}

func TestOptimalHitsMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for trial := range 200 {
		n := 1 + r.IntN(300)
		universe := 1 + r.IntN(40)
		keys := make([]uint64, n)
		for i := range keys {
			keys[i] = uint64(r.IntN(universe))
		}
		size := 1 + r.IntN(12)
		if got, want := OptimalHits(keys, size), naiveOPT(keys, size); got != want {
			t.Fatalf("trial %d (n=%d, size=%d): OptimalHits = %d, naive = %d", trial, n, size, got, want)
		}
	}
}

func TestOptimalHitsBoundsOnlinePolicies(t *testing.T) {
	tr := Synthetic(7, 60_000)
	for _, res := range Replay(tr, Policies(), 1) {
		opt := res.HitRatio[OPT]
		for name, hr := range res.HitRatio {
			if hr > opt+1e-9 {
				t.Errorf("size %d: %s hit ratio %.4f above OPT %.4f", res.Size, name, hr, opt)
			}
		}
		if len(res.Errors) > 0 {
			t.Errorf("size %d: policy errors: %v", res.Size, res.Errors)
		}
	}
}

func TestLRU(t *testing.T) {
	l := newLRU(2)
	steps := []struct {
		key uint64
		hit bool
	}{{1, false}, {2, false}, {1, true}, {3, false}, {2, false}, {1, false}, {3, false}}
	for i, s := range steps {
		if got := l.Access(s.key); got != s.hit {
			t.Fatalf("step %d: Access(%d) = %v, want %v", i, s.key, got, s.hit)
		}
	}
}

func TestGlimpse(t *testing.T) {
	tr, err := Glimpse()
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Keys) != 6015 || tr.Distinct() != 2529 {
		t.Fatalf("glimpse: %d refs, %d distinct; want 6015, 2529", len(tr.Keys), tr.Distinct())
	}
}

func TestSyntheticIsSeeded(t *testing.T) {
	a, b := Synthetic(3, 50_000), Synthetic(3, 50_000)
	if !slices.Equal(a.Keys, b.Keys) {
		t.Fatal("same seed, different traces")
	}
	if c := Synthetic(4, 50_000); slices.Equal(a.Keys, c.Keys) {
		t.Fatal("different seeds, same trace")
	}
}

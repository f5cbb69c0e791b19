package tiercache

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// tripCounter counts the Redis round trips of single-key reads.
type tripCounter struct {
	NopObserver
	get, mget atomic.Int64
}

func (o *tripCounter) Redis(op string, _ time.Duration, _ error) {
	switch op {
	case "get":
		o.get.Add(1)
	case "mget":
		o.mget.Add(1)
	}
}

// Concurrent Gets of keys over every slot, hits and misses, with
// duplicates: each gets its own key's answer, and they share round trips.
func TestCoalescedReads(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		obs := &tripCounter{}
		c := newCache[string](t, tg, WithObserver(obs))
		const n = 400
		items := map[string]string{}
		for i := range n {
			items[fmt.Sprint("key-", i)] = fmt.Sprint("value-", i)
		}
		if err := c.SetMany(ctx, items); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		var reads atomic.Int64
		for g := range 64 {
			wg.Go(func() {
				for i := range 60 {
					j := (g*37 + i*11) % (n + n/4) // a fifth are absent
					k := fmt.Sprint("key-", j)
					v, err := c.Get(ctx, k)
					reads.Add(1)
					if j >= n {
						if !errors.Is(err, ErrMiss) {
							t.Errorf("Get(%s) absent = %q, %v; want ErrMiss", k, v, err)
						}
					} else if err != nil || v != items[k] {
						t.Errorf("Get(%s) = %q, %v; want %q", k, v, err, items[k])
					}
				}
			})
		}
		wg.Wait()
		s := c.Stats()
		trips := obs.get.Load() + obs.mget.Load()
		t.Logf("%s: %d reads in %d round trips (%d shared); %d reads batched", tg.Name, reads.Load(), trips, obs.mget.Load(), s.Count(EventReadBatched))
		if s.Count(EventReadBatched) == 0 || trips >= reads.Load() {
			t.Errorf("64 concurrent readers never shared a round trip (%d round trips for %d reads)", trips, reads.Load())
		}
		if got := s.L2Hits + s.L2Misses; got != uint64(reads.Load()) {
			t.Errorf("L2 lookups counted = %d, want one per read (%d)", got, reads.Load())
		}
	})
}

// WithoutReadCoalescing: one GET per read, never an MGET.
func TestWithoutReadCoalescing(t *testing.T) {
	obs := &tripCounter{}
	c := newCacheOn[string](t, directClient(t, redistest.SharedServer(t)), faultPrefix(t), WithObserver(obs), WithoutReadCoalescing())
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 20 {
				_, _ = c.Get(t.Context(), fmt.Sprint("k", g, i))
			}
		})
	}
	wg.Wait()
	if obs.get.Load() != 32*20 || obs.mget.Load() != 0 {
		t.Errorf("without coalescing: %d GETs and %d MGETs for 640 reads", obs.get.Load(), obs.mget.Load())
	}
}

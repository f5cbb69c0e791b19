package tiercache

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

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

// The breaker's fast path keeps gobreaker's rules: consecutive failures
// open it, a success in between resets the count, a canceled call counts
// for nothing, and after OpenFor one probe's success closes it again.
func TestBreakerFastPath(t *testing.T) {
	var changes []string
	var mu sync.Mutex
	b := newBreaker(BreakerSettings{ConsecutiveFailures: 3, OpenFor: 50 * time.Millisecond, Probes: 1}, func(from, to BreakerState) {
		mu.Lock()
		changes = append(changes, from.String()+">"+to.String())
		mu.Unlock()
	})
	fault := fmt.Errorf("read: %w", context.DeadlineExceeded)
	call := func(err error) bool {
		done, ok := b.begin()
		if ok {
			b.end(done, err)
		}
		return ok
	}
	state := func() BreakerState { return breakerState(b.cb.State()) }
	for _, err := range []error{fault, fault, nil, fault, fault, context.Canceled, context.Canceled, nil, redis.Nil, fault, fault} {
		if !call(err) {
			t.Fatalf("a call was refused with the breaker %v", state())
		}
	}
	if s := state(); s != BreakerClosed {
		t.Fatalf("after failures broken up by successes the breaker is %v", s)
	}
	call(fault) // the third in a row
	if s := state(); s != BreakerOpen {
		t.Fatalf("after 3 consecutive failures the breaker is %v", s)
	}
	if call(nil) {
		t.Fatal("an open breaker let a call through")
	}
	time.Sleep(60 * time.Millisecond)
	done, ok := b.begin()
	if !ok || done == nil {
		t.Fatalf("after OpenFor: probe allowed %v, through gobreaker %v", ok, done != nil)
	}
	if _, ok := b.begin(); ok {
		t.Fatal("a second probe was let through with Probes 1")
	}
	b.end(done, nil)
	if s := state(); s != BreakerClosed {
		t.Fatalf("after a successful probe the breaker is %v", s)
	}
	if done, ok := b.begin(); !ok || done != nil {
		t.Fatalf("closed again: allowed %v, fast path %v", ok, done == nil)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(changes, " "); got != "closed>open open>half-open half-open>closed" {
		t.Errorf("state changes: %s", got)
	}
}

package tiercache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// WithoutReadCoalescing: one GET per read, never an MGET.
func TestWithoutReadCoalescing(t *testing.T) {
	obs := &countingObserver{}
	c := newCacheOn[string](t, directClient(t, redistest.SharedServer(t)), testPrefix(t), WithObserver(obs), WithoutReadCoalescing())
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 20 {
				_, _ = c.Get(t.Context(), fmt.Sprint("k", g, i))
			}
		})
	}
	wg.Wait()
	if obs.count("get") != 32*20 || obs.count("mget") != 0 {
		t.Errorf("without coalescing: %d GETs and %d MGETs for 640 reads", obs.count("get"), obs.count("mget"))
	}
}

// 1,000 goroutines on one cold key with a 50ms loader: one load.
func TestCoalescingOneLoad(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		for _, lease := range []bool{true, false} {
			name := "lease"
			opts := []Option{}
			if !lease {
				name, opts = "no lease", []Option{WithoutLease()}
			}
			t.Run(name, func(t *testing.T) {
				c := newCache[int](t, tg, opts...)
				var calls atomic.Int64
				load := func(ctx context.Context) (int, error) {
					calls.Add(1)
					time.Sleep(50 * time.Millisecond)
					return 42, nil
				}
				var wg sync.WaitGroup
				start := make(chan struct{})
				errs := make(chan error, 1000)
				for range 1000 {
					wg.Go(func() {
						<-start
						v, err := c.GetOrLoad(t.Context(), "cold", load)
						if err == nil && v != 42 {
							err = errors.New("wrong value")
						}
						if err != nil {
							errs <- err
						}
					})
				}
				close(start)
				wg.Wait()
				close(errs)
				for err := range errs {
					t.Fatal(err)
				}
				if n := calls.Load(); n != 1 {
					t.Fatalf("loader called %d times, want 1", n)
				}
				if s := c.Stats(); s.Count(EventCoalesced) == 0 {
					t.Fatalf("no coalesced reads counted: %+v", s)
				}
			})
		}
	})
}

// A caller whose context ends returns at once; the load goes on for the
// others, who get the value.
func TestLeaderCancelDoesNotFailOthers(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		c := newCache[string](t, tg)
		started := make(chan struct{})
		release := make(chan struct{})
		var calls atomic.Int64
		load := func(ctx context.Context) (string, error) {
			calls.Add(1)
			close(started)
			select {
			case <-release:
			case <-ctx.Done():
				return "", ctx.Err()
			}
			return "value", nil
		}
		leaderCtx, cancel := context.WithCancel(t.Context())
		leaderErr := make(chan error, 1)
		go func() {
			_, err := c.GetOrLoad(leaderCtx, "k", load)
			leaderErr <- err
		}()
		<-started
		results := make(chan string, 10)
		var wg sync.WaitGroup
		for range 10 {
			wg.Go(func() {
				v, err := c.GetOrLoad(t.Context(), "k", load)
				if err != nil {
					v = err.Error()
				}
				results <- v
			})
		}
		cancel()
		if err := redistest.Receive(t, leaderErr, 20*time.Second, "the cancelled leader did not return while the load went on"); !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled leader got %v, want context.Canceled", err)
		}
		close(release)
		wg.Wait()
		close(results)
		for v := range results {
			if v != "value" {
				t.Fatalf("a waiter got %q after the leader left, want the value", v)
			}
		}
		if v, err := c.Get(t.Context(), "k"); err != nil || v != "value" || calls.Load() != 1 {
			t.Fatalf("after the leader left: Get = %q, %v after %d loader calls; want the value, cached by one load", v, err, calls.Load())
		}
	})
}

// A loader panic and a loader error reach every waiter, nothing is cached,
// and nothing stays locked: the next read loads again.
func TestLoaderPanicAndErrorReachEveryWaiter(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		boom := errors.New("database down")
		for _, tc := range []struct {
			name  string
			fail  func() (int, error)
			check func(error) bool
		}{
			{"panic", func() (int, error) { panic("loader bug") }, func(err error) bool {
				var pe *PanicError
				return errors.Is(err, ErrLoaderPanic) && errors.As(err, &pe) && pe.Value == "loader bug" && len(pe.Stack) > 0
			}},
			{"error", func() (int, error) { return 0, boom }, func(err error) bool { return errors.Is(err, boom) }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := newCache[int](t, tg)
				var calls atomic.Int64
				gate := make(chan struct{})
				load := func(ctx context.Context) (int, error) {
					calls.Add(1)
					<-gate
					return tc.fail()
				}
				var wg sync.WaitGroup
				errs := make(chan error, 50)
				for range 50 {
					wg.Go(func() {
						_, err := c.GetOrLoad(t.Context(), "k", load)
						errs <- err
					})
				}
				// Let the waiters join the flight before it fails.
				time.Sleep(50 * time.Millisecond)
				close(gate)
				wg.Wait()
				close(errs)
				for err := range errs {
					if !tc.check(err) {
						t.Fatalf("waiter got %v", err)
					}
				}
				if _, err := c.Get(t.Context(), "k"); !errors.Is(err, ErrMiss) {
					t.Fatalf("something was cached after a failed load: %v", err)
				}
				v, err := c.GetOrLoad(t.Context(), "k", func(context.Context) (int, error) { return 7, nil })
				if err != nil || v != 7 {
					t.Fatalf("the key stayed locked after the failure: %v, %v", v, err)
				}
			})
		}
	})
}

// The loader runs on a detached context bounded by the load timeout.
func TestLoadTimeout(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		c := newCache[int](t, tg, WithLoadTimeout(50*time.Millisecond))
		_, err := c.GetOrLoad(t.Context(), "slow", func(ctx context.Context) (int, error) {
			<-ctx.Done()
			return 0, ctx.Err()
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("GetOrLoad of a loader past the load timeout = %v", err)
		}
	})
}

// Close while a load is in flight: the caller returns ErrClosed, not the
// context.Canceled the loader returned (a caller would take it for its
// own), and goroutines stop. The same for GetOrLoad, GetOrLoadMany and
// Refresh.
func TestCloseDuringLoad(t *testing.T) {
	blocked := func(started chan struct{}) func(ctx context.Context) error {
		return func(ctx context.Context) error {
			close(started)
			<-ctx.Done()
			return ctx.Err()
		}
	}
	for _, call := range []struct {
		name string
		do   func(c *Cache[int], ctx context.Context, wait func(context.Context) error) error
	}{
		{"GetOrLoad", func(c *Cache[int], ctx context.Context, wait func(context.Context) error) error {
			_, err := c.GetOrLoad(ctx, "k", func(ctx context.Context) (int, error) { return 0, wait(ctx) })
			return err
		}},
		{"GetOrLoadMany", func(c *Cache[int], ctx context.Context, wait func(context.Context) error) error {
			_, err := c.GetOrLoadMany(ctx, []string{"k", "l"}, func(ctx context.Context, _ []string) (map[string]int, error) { return nil, wait(ctx) })
			return err
		}},
		{"Refresh", func(c *Cache[int], ctx context.Context, wait func(context.Context) error) error {
			_, err := c.Refresh(ctx, "k", func(ctx context.Context) (int, error) { return 0, wait(ctx) })
			return err
		}},
	} {
		t.Run(call.name, func(t *testing.T) {
			redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
				// No load timeout: only Close can end the load.
				c := newCache[int](t, tg, WithL1(100), WithLoadTimeout(time.Hour))
				started := make(chan struct{})
				done := make(chan error, 1)
				go func() { done <- call.do(c, t.Context(), blocked(started)) }()
				<-started
				closed := make(chan error, 1)
				go func() { closed <- c.Close() }()
				if err := redistest.Receive(t, closed, 20*time.Second, "Close did not cancel the load in flight"); err != nil {
					t.Fatal(err)
				}
				if err := redistest.Receive(t, done, 20*time.Second, "the call did not return after Close"); !errors.Is(err, ErrClosed) || errors.Is(err, context.Canceled) {
					t.Fatalf("a load cancelled by Close returned %v, want ErrClosed and not context.Canceled", err)
				}
			})
		})
	}
}

// readOdds: when Redis rarely has what GetOrLoad asks it for, the GET is
// skipped and the Acquire is the read (a miss is two round trips, not
// three); the skipped reads still count as L2 lookups; once another
// instance fills Redis, the Acquires find the values, the odds rise and
// GETs come back. Values and the lease are the same either way.
func TestReadOddsSkipTheGetWhenRedisRarelyHasTheValue(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		rdb := tg.NewClient(t)
		prefix := testPrefix(t)
		obs := &countingObserver{}
		a := newCacheOn[string](t, rdb, prefix, WithL1(10_000), WithObserver(obs))
		b := newCacheOn[string](t, rdb, prefix)
		var loads atomic.Int64
		load := func(v string) LoadFunc[string] {
			return func(context.Context) (string, error) { loads.Add(1); return v, nil }
		}
		// Cold keys: every read misses Redis, and the odds fall.
		for i := range 50 {
			k := fmt.Sprint("cold-", i)
			if v, err := a.GetOrLoad(ctx, k, load(k)); err != nil || v != k {
				t.Fatalf("GetOrLoad(%s) = %q, %v", k, v, err)
			}
		}
		if !a.odds.low() {
			t.Fatalf("after 50 cold misses the odds are %d/%d", a.odds.v.Load(), oddsOne)
		}
		gets := obs.count("get") + obs.count("mget")
		before := a.Stats()
		for i := range 20 {
			k := fmt.Sprint("colder-", i)
			if v, err := a.GetOrLoad(ctx, k, load(k)); err != nil || v != k {
				t.Fatalf("GetOrLoad(%s) = %q, %v", k, v, err)
			}
		}
		if n := obs.count("get") + obs.count("mget") - gets; n != 0 {
			t.Errorf("%d GETs for 20 misses with low odds, want 0 (the Acquire is the read)", n)
		}
		if after := a.Stats(); after.L2Misses-before.L2Misses != 20 {
			t.Errorf("L2 misses counted %d for 20 skipped reads", after.L2Misses-before.L2Misses)
		}
		// Another instance fills Redis: a's Acquires find the values (no
		// load), and the odds come back up.
		for i := range 100 {
			if err := b.Set(ctx, fmt.Sprint("warm-", i), "w"); err != nil {
				t.Fatal(err)
			}
		}
		loads.Store(0)
		for i := range 100 {
			k := fmt.Sprint("warm-", i)
			if v, err := a.GetOrLoad(ctx, k, load("loaded")); err != nil || v != "w" {
				t.Fatalf("GetOrLoad(%s) = %q, %v; want the stored w", k, v, err)
			}
		}
		if n := loads.Load(); n != 0 {
			t.Errorf("%d loads of keys Redis had", n)
		}
		if a.odds.low() {
			t.Errorf("after 100 Redis hits the odds are still low: %d/%d", a.odds.v.Load(), oddsOne)
		}
	})
}

// Concurrent Gets of keys over every slot, hits and misses, with
// duplicates: each gets its own key's answer, and they share round trips.
func TestCoalescedReads(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		obs := &countingObserver{}
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
		trips := int64(obs.count("get") + obs.count("mget"))
		t.Logf("%s: %d reads in %d round trips (%d shared); %d reads batched", tg.Name, reads.Load(), trips, obs.count("mget"), s.Count(EventReadBatched))
		if s.Count(EventReadBatched) == 0 || trips >= reads.Load() {
			t.Errorf("64 concurrent readers never shared a round trip (%d round trips for %d reads)", trips, reads.Load())
		}
		if got := s.L2Hits + s.L2Misses; got != uint64(reads.Load()) {
			t.Errorf("L2 lookups counted = %d, want one per read (%d)", got, reads.Load())
		}
	})
}

// Without the lease a read's GET is its only look at Redis: it is never
// skipped. (It was skipped when most reads had missed, as after a cold
// start, on the grounds that the lease's Acquire would read the value
// instead; without a lease nothing did, and every read went to the loader
// for good: the demo's "coalesced" scenario hit 18 % where it had hit 68 %.)
func TestWithoutLeaseReadsRedisAfterMisses(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		c := newCache[string](t, tg, WithoutLease())
		var calls atomic.Int64
		load := func(context.Context) (string, error) {
			calls.Add(1)
			return "v", nil
		}
		ks := numberedKeys("k", 100)
		for range 2 {
			for _, k := range ks {
				if v, err := c.GetOrLoad(t.Context(), k, load); err != nil || v != "v" {
					t.Fatalf("GetOrLoad(%s) = %q, %v", k, v, err)
				}
			}
		}
		if n := calls.Load(); n != int64(len(ks)) {
			t.Fatalf("%d loader calls for %d keys read twice: the second reads did not look in Redis", n, len(ks))
		}
	})
}

// labelProbe is a loader's body that blocks until release closes, so that a
// goroutine profile finds it on the stack by this function's name.
//
//go:noinline
func labelProbe(started chan<- struct{}, release <-chan struct{}) {
	close(started)
	<-release
}

// probeLabels returns the profiler labels of the goroutine blocked in
// labelProbe ("" for none), from a goroutine profile.
func probeLabels(t *testing.T) string {
	t.Helper()
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 1); err != nil {
		t.Fatal(err)
	}
	for rec := range bytes.SplitSeq(b.Bytes(), []byte("\n\n")) {
		if !bytes.Contains(rec, []byte("tiercache.labelProbe")) {
			continue
		}
		for line := range bytes.SplitSeq(rec, []byte("\n")) {
			if l, ok := bytes.CutPrefix(line, []byte("# labels: ")); ok {
				return string(l)
			}
		}
		return ""
	}
	t.Fatal("no goroutine in labelProbe")
	return ""
}

// A load runs under the profiler labels (pprof.Do) of the read that leads
// it, as a goroutine that read started would, although the goroutines that
// run loads are reused: a load is never profiled under the labels of an
// earlier load's reader.
func TestLoadRunsUnderItsLeadersProfilerLabels(t *testing.T) {
	c := newLocalT[string](t, WithL1(100))
	for i, who := range []string{"first", "second", ""} {
		started, release := make(chan struct{}), make(chan struct{})
		load := func(context.Context) (string, error) { labelProbe(started, release); return "v", nil }
		done := make(chan error, 1)
		read := func(ctx context.Context) { _, err := c.GetOrLoad(ctx, fmt.Sprint("k", i), load); done <- err }
		if who == "" {
			go read(context.Background())
		} else {
			go pprof.Do(context.Background(), pprof.Labels("who", who), read)
		}
		<-started
		want := ""
		if who != "" {
			want = fmt.Sprintf(`{"who":%q}`, who)
		}
		got := probeLabels(t)
		close(release)
		if err := redistest.Receive(t, done, 20*time.Second, "the load"); err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Fatalf("load %d ran under labels %s, want %s (its reader's)", i, got, want)
		}
	}
}

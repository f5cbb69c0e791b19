package tiercache

// Red-team tests of the read and load paths. Each test
// quotes the promise it checks.

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// newLocalT is NewLocal closed when the test ends.
func newLocalT[V any](t *testing.T, opts ...Option) *Cache[V] {
	t.Helper()
	c, err := NewLocal[V](append([]Option{WithL1(1000)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// localAndRedis runs f against NewLocal and against a Redis-backed cache
// with L1, on one node and a cluster: the promise must hold in both.
func localAndRedis(t *testing.T, opts []Option, f func(t *testing.T, c *Cache[string])) {
	t.Run("local", func(t *testing.T) {
		f(t, newLocalT[string](t, opts...))
	})
	t.Run("redis", func(t *testing.T) { redisOnly(t, opts, f) })
}

// redisOnly is the Redis half of localAndRedis, for a promise that
// NewLocal's doc says it does not keep (the stale windows, versioned loads,
// the count of refused fills).
func redisOnly(t *testing.T, opts []Option, f func(t *testing.T, c *Cache[string])) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		c := newCache[string](t, tg, append([]Option{WithL1(1000)}, opts...)...)
		waitSubscribed(t, c) // its first subscription flushes L1 and forgets flights
		f(t, c)
	})
}

// Redis only (NewLocal has no stale copy: see its doc).
// options.go (WithStaleWhileRevalidate): "keeps a value for d past its
// logical expiry: a read in that window gets the old value at once while
// the cache refreshes it in the background."
func TestRedTeamLoadStaleWhileRevalidate(t *testing.T) {
	redisOnly(t, []Option{WithStaleWhileRevalidate(time.Minute), WithEarlyRefresh(0), WithJitter(0)}, func(t *testing.T, c *Cache[string]) {
		load1 := func(ctx context.Context) (string, error) {
			LoadOptions(ctx, WithTTL(50*time.Millisecond))
			return "old", nil
		}
		if v, err := c.GetOrLoad(t.Context(), "k", load1); err != nil || v != "old" {
			t.Fatalf("first load: %q %v", v, err)
		}
		time.Sleep(150 * time.Millisecond) // past the logical expiry, within the window
		release := make(chan struct{})
		defer close(release)
		refreshing := make(chan struct{}, 1)
		got := async(func() (string, error) {
			return c.GetOrLoad(context.Background(), "k", func(ctx context.Context) (string, error) {
				select {
				case refreshing <- struct{}{}:
				default:
				}
				select {
				case <-release:
				case <-ctx.Done():
				}
				return "new", nil
			})
		})
		if v := redistest.Receive(t, got, 20*time.Second, "a read in the stale-while-revalidate window waited for the loader instead of getting the old value at once"); v != "old" {
			t.Fatalf("read in the stale window got %q, want the old value", v)
		}
	})
}

// Redis only (NewLocal has no stale copy: see its doc).
// options.go (WithStaleIfError): "keeps a value for d past its logical
// expiry to serve when the loader fails: the caller gets the old value,
// and the loader's error is counted and logged instead."
func TestRedTeamLoadStaleIfError(t *testing.T) {
	redisOnly(t, []Option{WithStaleIfError(time.Minute), WithEarlyRefresh(0), WithJitter(0)}, func(t *testing.T, c *Cache[string]) {
		if v, err := c.GetOrLoad(t.Context(), "k", func(ctx context.Context) (string, error) {
			LoadOptions(ctx, WithTTL(50*time.Millisecond))
			return "old", nil
		}); err != nil || v != "old" {
			t.Fatalf("first load: %q %v", v, err)
		}
		time.Sleep(150 * time.Millisecond)
		boom := errors.New("db down")
		v, err := c.GetOrLoad(t.Context(), "k", func(ctx context.Context) (string, error) { return "", boom })
		if err != nil || v != "old" {
			t.Fatalf("loader failed within the stale-if-error window: got %q, %v; want the old value", v, err)
		}
		if n := c.Stats().Count(EventStaleOnError); n != 1 {
			t.Fatalf("EventStaleOnError = %d, want 1", n)
		}
	})
}

// Redis only (NewLocal checks no versioned load: see its doc).
// options.go (WithVersion): "Redis keeps the newest version written ...
// and refuses, atomically, a versioned Set that is not newer, and a
// versioned load that is older ...: writers whose Sets arrive out of order
// leave the newest row cached, on one node or a cluster, and every L1
// follows."
func TestRedTeamLoadVersionedLoadOlderThanSetRefused(t *testing.T) {
	redisOnly(t, []Option{WithEarlyRefresh(0)}, func(t *testing.T, c *Cache[string]) {
		if err := c.Set(t.Context(), "k", "v5", WithVersion(5)); err != nil {
			t.Fatal(err)
		}
		// A load that read an older row (a lagging replica, say).
		v, err := c.Refresh(t.Context(), "k", func(ctx context.Context) (string, error) {
			LoadOptions(ctx, WithVersion(3))
			return "v3", nil
		})
		if err != nil {
			t.Fatal(err)
		}
		_ = v
		if got, err := c.Get(t.Context(), "k"); err != nil || got != "v5" {
			t.Fatalf("after a load of version 3 over a Set of version 5: Get = %q, %v; want v5", got, err)
		}
	})
}

// stats.go: "EventFillRefused // a loaded value was not cached: the key
// changed during the load". The value of a load that overlapped a Set is
// returned, not cached, and the refusal is counted. (Redis only: NewLocal
// does not count it, see its doc.)
func TestRedTeamLoadFillRefusedCounted(t *testing.T) {
	redisOnly(t, []Option{WithEarlyRefresh(0)}, func(t *testing.T, c *Cache[string]) {
		g := startGatedLoad(context.Background(), c, "k", "before-set", "")
		<-g.started
		if err := c.Set(t.Context(), "k", "set"); err != nil {
			t.Fatal(err)
		}
		g.release()
		if v := <-g.done; v != "before-set" {
			t.Fatalf("the overlapping read got %q", v)
		}
		if got, err := c.Get(t.Context(), "k"); err != nil || got != "set" {
			t.Fatalf("stale set: Get = %q, %v; want the Set's value", got, err)
		}
		if n := c.Stats().Count(EventFillRefused); n != 1 {
			t.Fatalf("EventFillRefused = %d, want 1 (the load's value was not cached: the key changed during it)", n)
		}
	})
}

// cache.go (NewLocal): same semantics "(... negative caching)"; load.go
// (GetOrLoad): "When load returns [ErrNotFound], the key is cached as not
// found for the negative TTL and GetOrLoad returns ErrNotFound";
// options.go: "WithNegativeTTL ... 0 turns negative caching off."
func TestRedTeamLoadNegativeCaching(t *testing.T) {
	for _, tc := range []struct {
		name  string
		opts  []Option
		calls int64 // the loader's calls for three reads
		get   error // what Get returns then
	}{
		{"on", nil, 1, ErrNotFound},
		{"off", []Option{WithNegativeTTL(0)}, 3, ErrMiss},
	} {
		t.Run(tc.name, func(t *testing.T) {
			localAndRedis(t, tc.opts, func(t *testing.T, c *Cache[string]) {
				var calls atomic.Int64
				nf := func(ctx context.Context) (string, error) { calls.Add(1); return "", ErrNotFound }
				for range 3 {
					if _, err := c.GetOrLoad(t.Context(), "k", nf); !errors.Is(err, ErrNotFound) {
						t.Fatalf("got %v, want ErrNotFound", err)
					}
				}
				if calls.Load() != tc.calls {
					t.Fatalf("loader called %d times, want %d (negative caching %s)", calls.Load(), tc.calls, tc.name)
				}
				if _, err := c.Get(t.Context(), "k"); !errors.Is(err, tc.get) {
					t.Fatalf("Get = %v, want %v", err, tc.get)
				}
				if tc.calls != 1 {
					return
				}
				m, err := c.GetOrLoadMany(t.Context(), []string{"k"}, func(ctx context.Context, ks []string) (map[string]string, error) {
					t.Errorf("batch loader called for %v, which is cached as not found", ks)
					return nil, nil
				})
				if err != nil || len(m) != 0 {
					t.Fatalf("GetOrLoadMany = %v, %v", m, err)
				}
				if s := c.Stats(); s.LoadErrors != 0 || s.Loads != 1 {
					t.Fatalf("Loads %d LoadErrors %d; want 1, 0 (ErrNotFound is not a failure)", s.Loads, s.LoadErrors)
				}
			})
		})
	}
}

// load.go (GetOrLoadMany): "then from one call of load with only the keys
// still missing ... Keys that load does not return are cached as not found
// and are absent from the map"; read.go (manyFromL1): duplicates dropped;
// load.go (BatchLoadFunc): "Keys it returns that were not asked for are
// ignored."
func TestRedTeamLoadBatchOnlyMissingKeys(t *testing.T) {
	localAndRedis(t, []Option{WithEarlyRefresh(0)}, func(t *testing.T, c *Cache[string]) {
		mustSet(t, c, "a", "v:a")
		l := &countingBatchLoader{absent: map[string]bool{"c": true}, extra: true}
		m, err := c.GetOrLoadMany(t.Context(), []string{"a", "b", "c", "b", "a", "c"}, l.load)
		if err != nil {
			t.Fatal(err)
		}
		if len(m) != 2 || m["a"] != "v:a" || m["b"] != "v:b" {
			t.Fatalf("got %v", m)
		}
		if len(l.calls) != 1 {
			t.Fatalf("loader called %d times: %v", len(l.calls), l.calls)
		}
		if !slices.Equal(l.loaded(), []string{"b", "c"}) {
			t.Fatalf("loader asked for %v, want [b c] once each", l.calls[0])
		}
		if _, err := c.Get(t.Context(), "c"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("key not returned by the loader: Get = %v, want ErrNotFound", err)
		}
		if _, err := c.Get(t.Context(), "not-asked-for"); !errors.Is(err, ErrMiss) {
			t.Fatalf("key not asked for: Get = %v, want ErrMiss (ignored)", err)
		}
		m, err = c.GetOrLoadMany(t.Context(), []string{"a", "b", "c"}, l.load)
		if err != nil || len(m) != 2 || len(l.calls) != 1 {
			t.Fatalf("second batch: %v, %v, loader calls %d", m, err, len(l.calls))
		}
	})
}

// load.go (GetOrLoadMany): "A loader error is returned with the values
// found so far; nothing from the failed load is cached."
func TestRedTeamLoadBatchLoaderError(t *testing.T) {
	localAndRedis(t, []Option{WithEarlyRefresh(0)}, func(t *testing.T, c *Cache[string]) {
		mustSet(t, c, "a", "A")
		boom := errors.New("boom")
		m, err := c.GetOrLoadMany(t.Context(), []string{"a", "b"}, func(ctx context.Context, ks []string) (map[string]string, error) {
			return map[string]string{"b": "B"}, boom
		})
		if !errors.Is(err, boom) || m["a"] != "A" || len(m) != 1 {
			t.Fatalf("got %v, %v; want {a:A} and the loader's error", m, err)
		}
		if _, err := c.Get(t.Context(), "b"); !errors.Is(err, ErrMiss) {
			t.Fatalf("b cached from a failed load: %v", err)
		}
	})
}

// load.go (BatchLoadFunc): a batch loader's ErrNotFound, wrapped or not, is
// "none of the keys it did not return exists": they are cached as not
// found, the values it did return are cached and returned, and it is not a
// load error (errors.go, ErrNotFound; stats.go, LoadErrors). It used to be
// neither: no error, nothing cached, a load error counted on every call.
func TestRedTeamLoadBatchLoaderNotFound(t *testing.T) {
	localAndRedis(t, []Option{WithEarlyRefresh(0)}, func(t *testing.T, c *Cache[string]) {
		var calls atomic.Int64
		load := func(ctx context.Context, ks []string) (map[string]string, error) {
			calls.Add(1)
			return map[string]string{"found": "F"}, fmt.Errorf("rows %v: %w", ks, ErrNotFound)
		}
		for range 3 {
			m, err := c.GetOrLoadMany(t.Context(), []string{"found", "a", "b"}, load)
			if err != nil || len(m) != 1 || m["found"] != "F" {
				t.Fatalf("GetOrLoadMany = %v, %v; want {found:F}, nil", m, err)
			}
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("loader called %d times for 3 batches, want 1 (the rest cached as not found)", n)
		}
		if _, err := c.Get(t.Context(), "a"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get(a) = %v, want ErrNotFound", err)
		}
		if s := c.Stats(); s.Loads != 1 || s.LoadErrors != 0 {
			t.Fatalf("Loads %d, LoadErrors %d; want 1, 0", s.Loads, s.LoadErrors)
		}
	})
}

// options.go: LoadOptions "WithTTL ... NoCache makes a load return its value
// without caching it"; load.go (LoadKeyOptions) "that key's TTL, tags
// ([WithTags] adds to the call's), row version, or [NoCache], applied after
// the call's own options"; options.go (WithTags): "[Cache.InvalidateTags]
// of any of them makes the value unreachable."
func TestRedTeamLoadLoadOptions(t *testing.T) {
	localAndRedis(t, []Option{WithEarlyRefresh(0), WithJitter(0)}, func(t *testing.T, c *Cache[string]) {
		var calls atomic.Int64
		nocache := func(ctx context.Context) (string, error) {
			calls.Add(1)
			LoadOptions(ctx, NoCache())
			return "x", nil
		}
		for range 2 {
			if v, err := c.GetOrLoad(t.Context(), "nc", nocache); err != nil || v != "x" {
				t.Fatal(v, err)
			}
		}
		if calls.Load() != 2 {
			t.Fatalf("NoCache: loader called %d times, want 2", calls.Load())
		}
		m, err := c.GetOrLoadMany(t.Context(), []string{"p", "q", "r"}, func(ctx context.Context, ks []string) (map[string]string, error) {
			LoadOptions(ctx, WithTags("all"))
			LoadKeyOptions(ctx, "p", WithTags("only-p"))
			LoadKeyOptions(ctx, "q", NoCache())
			LoadKeyOptions(ctx, "r", WithTTL(100*time.Millisecond))
			return map[string]string{"p": "P", "q": "Q", "r": "R"}, nil
		})
		if err != nil || len(m) != 3 {
			t.Fatal(m, err)
		}
		if _, err := c.Get(t.Context(), "q"); !errors.Is(err, ErrMiss) {
			t.Fatalf("q loaded with NoCache was cached: %v", err)
		}
		if v, err := c.Get(t.Context(), "p"); err != nil || v != "P" {
			t.Fatalf("p: %q %v", v, err)
		}
		if err := c.InvalidateTags(t.Context(), "only-p"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(t.Context(), "p"); !errors.Is(err, ErrMiss) {
			t.Fatalf("p still reachable after InvalidateTags(only-p): %v", err)
		}
		// (r is not read before its TTL: on a loaded machine the reads
		// above may take longer than it. Under the default TTL, 5 minutes,
		// it would still be there now.)
		time.Sleep(200 * time.Millisecond)
		if _, err := c.Get(t.Context(), "r"); !errors.Is(err, ErrMiss) {
			t.Fatalf("r past its own TTL: %v", err)
		}
		if err := c.InvalidateTags(t.Context(), "all"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(t.Context(), "r"); !errors.Is(err, ErrMiss) {
			t.Fatalf("r: %v", err)
		}
	})
}

// load.go (GetOrLoad): "A loader that panics (or calls runtime.Goexit)
// makes every waiter get a *[PanicError] (errors.Is [ErrLoaderPanic]);
// nothing is cached and nothing stays locked." README: "a loader's panic
// reaches every waiter as a `*PanicError`; nothing stays locked."
func TestRedTeamLoadPanicAndGoexitAcrossInstances(t *testing.T) {
	for _, how := range []string{"panic", "goexit"} {
		t.Run(how, func(t *testing.T) {
			redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
				a, b := subscribedPair[string](t, tg, WithLease(time.Minute), WithL1(100))
				started, release := make(chan struct{}), make(chan struct{})
				bad := func(ctx context.Context) (string, error) {
					close(started)
					<-release
					if how == "panic" {
						panic("kaboom")
					}
					runtime.Goexit()
					return "", nil
				}
				const n = 5
				errs := make(chan error, n)
				go func() { _, err := a.GetOrLoad(context.Background(), "k", bad); errs <- err }()
				<-started
				for range n - 1 {
					go func() { _, err := a.GetOrLoad(context.Background(), "k", constLoad("never", 0)); errs <- err }()
				}
				waitFor(t, 20*time.Second, "waiters joined", func() bool { return a.Stats().Count(EventCoalesced) >= n-1 })
				// Another instance waits for a's lease.
				bGot := async(func() (string, error) {
					return b.GetOrLoad(context.Background(), "k", constLoad("from-b", 0))
				})
				waitFor(t, 20*time.Second, "b waits for the lease", func() bool { return b.Stats().L2Misses+b.Stats().L2Hits >= 1 })
				close(release)
				for range n {
					select {
					case err := <-errs:
						var pe *PanicError
						if !errors.As(err, &pe) || !errors.Is(err, ErrLoaderPanic) {
							t.Fatalf("a waiter got %v, want a *PanicError", err)
						}
					case <-time.After(20 * time.Second):
						t.Fatal("a waiter of the panicking load never returned")
					}
				}
				if v := redistest.Receive(t, bGot, 20*time.Second, "the other instance waited on: the panicking holder's lease stayed locked"); v != "from-b" {
					t.Fatalf("the other instance got %q, want its own load", v)
				}
				ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
				defer cancel()
				// b's value is cached now; drop it and read again on a: a new load.
				if err := b.Delete(ctx, "k"); err != nil {
					t.Fatal(err)
				}
				waitMiss(t, a, "k", 20*time.Second, "a sees the delete")
				if v, err := a.GetOrLoad(ctx, "k", constLoad("again", 0)); err != nil || v != "again" {
					t.Fatalf("next read after the panic: %q, %v", v, err)
				}
			})
		})
	}
}

// cache.go (Close): "background refreshes and loads are cancelled and
// waited for, the leases they held are given back"; README: "`Close` stops
// every goroutine, gives back the leases it held". So another instance
// waiting for the lease loads promptly, not after the lease TTL.
func TestRedTeamLoadCloseWakesOtherInstancesWaiters(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		a, b := subscribedPair[string](t, tg, WithLease(time.Minute))
		started := make(chan struct{})
		go func() {
			_, _ = a.GetOrLoad(context.Background(), "k", func(ctx context.Context) (string, error) {
				close(started)
				<-ctx.Done()
				return "", ctx.Err()
			})
		}()
		<-started
		bGot := async(func() (string, error) {
			return b.GetOrLoad(context.Background(), "k", constLoad("b", 0))
		})
		waitWaited(t, tg, b, "k") // b waits for a's lease
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		if v := redistest.Receive(t, bGot, 20*time.Second, "b still waits 20s after the holder closed (lease TTL 1m): its lease was not given back"); v != "b" {
			t.Fatalf("b got %q", v)
		}
	})
}

// cache.go (NewLocal): same semantics "(... early refresh ...)"; options.go
// (WithEarlyRefresh): "on a hit, a value is refreshed in the background
// with probability exp(-t/(beta*delta))"; stats.go: "EventEarlyRefresh // a
// background refresh started before expiry (XFetch)".
func TestRedTeamLoadEarlyRefresh(t *testing.T) {
	localAndRedis(t, []Option{WithEarlyRefresh(1000), WithJitter(0)}, func(t *testing.T, c *Cache[string]) {
		var n atomic.Int64
		load := func(ctx context.Context) (string, error) {
			i := n.Add(1)
			time.Sleep(20 * time.Millisecond)
			LoadOptions(ctx, WithTTL(10*time.Second))
			if i == 1 {
				return "v1", nil
			}
			return "v2", nil
		}
		if v, err := c.GetOrLoad(t.Context(), "k", load); err != nil || v != "v1" {
			t.Fatal(v, err)
		}
		// beta*delta = 20s > TTL: every hit is almost surely due.
		waitFor(t, 20*time.Second, "early refresh", func() bool {
			v, err := c.GetOrLoad(t.Context(), "k", load)
			return err == nil && v == "v2"
		})
		if c.Stats().Count(EventEarlyRefresh) == 0 {
			t.Fatal("refreshed early but EventEarlyRefresh not counted")
		}
	})
}

// load.go (Refresh): "When another instance is already loading the key,
// Refresh waits for that load's value instead." stats.go: "EventLeaseWait
// // a read waited for another instance's load instead of loading";
// "Loads ... // loader calls".
func TestRedTeamLoadRefreshWaitsForOtherInstancesLoad(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		a, b := subscribedPair[string](t, tg, WithLease(time.Minute))
		started, release := make(chan struct{}), make(chan struct{})
		aGot := make(chan string, 1)
		go func() {
			v, _ := a.GetOrLoad(context.Background(), "k", func(ctx context.Context) (string, error) {
				close(started)
				<-release
				return "from-a", nil
			})
			aGot <- v
		}()
		<-started
		var bCalls atomic.Int64
		bGot := async(func() (string, error) {
			return b.Refresh(context.Background(), "k", func(ctx context.Context) (string, error) {
				bCalls.Add(1)
				return "from-b", nil
			})
		})
		// b's acquire finds a's lease and marks it waited for.
		waitWaited(t, tg, b, "k")
		close(release)
		if v := <-aGot; v != "from-a" {
			t.Fatalf("a got %q", v)
		}
		if v := redistest.Receive(t, bGot, 20*time.Second, "Refresh never returned"); v != "from-a" || bCalls.Load() != 0 {
			t.Fatalf("Refresh got %q (its loader called %d times), want a's value", v, bCalls.Load())
		}
		if s := b.Stats(); s.Loads != 0 || s.Count(EventLeaseWait) != 1 {
			t.Fatalf("b: Loads %d LeaseWait %d, want 0 and 1", s.Loads, s.Count(EventLeaseWait))
		}
	})
}

// waitWaited waits until c's read of key has found another instance's
// lease and marked it waited for (the waiters key).
func waitWaited(t *testing.T, tg redistest.Target, c *Cache[string], key string) {
	t.Helper()
	admin := tg.NewClient(t)
	wk := waitersKey(c, key)
	waitFor(t, 20*time.Second, "the lease marked waited for", func() bool {
		n, err := admin.Exists(context.Background(), wk).Result()
		return err == nil && n == 1
	})
}

// Stats counters match what happened: "L1Hits, L1Misses // L1 lookups",
// "L2Hits, L2Misses // Redis lookups", "Loads // loader calls",
// "EventLeaseWait // a read waited for another instance's load instead of
// loading", "EventCoalesced // a read shared another caller's load in this
// process" (stats.go).
func TestRedTeamLoadStatsAcrossInstances(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		a, b := subscribedPair[string](t, tg, WithLease(time.Minute), WithL1(100), WithEarlyRefresh(0))
		started, release := make(chan struct{}), make(chan struct{})
		aGot := make(chan string, 2)
		slow := func(ctx context.Context) (string, error) {
			close(started)
			<-release
			return "v", nil
		}
		go func() { v, _ := a.GetOrLoad(context.Background(), "k", slow); aGot <- v }()
		<-started
		go func() { v, _ := a.GetOrLoad(context.Background(), "k", slow); aGot <- v }()
		waitFor(t, 20*time.Second, "coalesced", func() bool { return a.Stats().Count(EventCoalesced) == 1 })
		bGot := make(chan string, 1)
		go func() { v, _ := b.GetOrLoad(context.Background(), "k", constLoad("b", 0)); bGot <- v }()
		waitWaited(t, tg, b, "k")
		close(release)
		<-aGot
		<-aGot
		if v := <-bGot; v != "v" {
			t.Fatalf("b got %q", v)
		}
		if v, err := b.GetOrLoad(t.Context(), "k", constLoad("b", 0)); err != nil || v != "v" {
			t.Fatal(v, err)
		}
		sa, sb := a.Stats(), b.Stats()
		if sa.Loads != 1 || sa.L1Misses != 2 || sa.L1Hits != 0 || sa.L2Misses != 1 || sa.L2Hits != 0 || sa.Count(EventCoalesced) != 1 {
			t.Errorf("a: Loads %d L1 %d/%d L2 %d/%d coalesced %d; want 1, 0/2, 0/1, 1", sa.Loads, sa.L1Hits, sa.L1Misses, sa.L2Hits, sa.L2Misses, sa.Count(EventCoalesced))
		}
		if sb.Loads != 0 || sb.L1Misses != 1 || sb.L1Hits != 1 || sb.L2Misses != 1 || sb.Count(EventLeaseWait) != 1 {
			t.Errorf("b: Loads %d L1 %d/%d L2 %d/%d leasewait %d; want 0, 1/1, 0/1, 1", sb.Loads, sb.L1Hits, sb.L1Misses, sb.L2Hits, sb.L2Misses, sb.Count(EventLeaseWait))
		}
	})
}

// load.go (GetOrLoad): "a caller whose ctx ends returns ctx.Err() at once
// while the load goes on for the others"; GetOrLoadMany: "Keys that
// another call in this process is loading (a GetOrLoad or another batch)
// are waited for, not loaded again."
func TestRedTeamLoadBatchLeaderCancelled(t *testing.T) {
	localAndRedis(t, []Option{WithEarlyRefresh(0)}, func(t *testing.T, c *Cache[string]) {
		started, release := make(chan struct{}), make(chan struct{})
		var calls atomic.Int64
		ctx, cancel := context.WithCancel(t.Context())
		leadErr := make(chan error, 1)
		go func() {
			_, err := c.GetOrLoadMany(ctx, []string{"x", "y"}, func(ctx context.Context, ks []string) (map[string]string, error) {
				calls.Add(1)
				close(started)
				select {
				case <-release:
				case <-ctx.Done():
					return nil, ctx.Err()
				}
				return map[string]string{"x": "X", "y": "Y"}, nil
			})
			leadErr <- err
		}()
		<-started
		got := async(func() (string, error) {
			return c.GetOrLoad(context.Background(), "y", constLoad("other", 0))
		})
		waitFor(t, 20*time.Second, "joined", func() bool {
			select {
			case v := <-got:
				t.Fatalf("the read of y returned %q before the batch load ended; stats %+v", v, c.Stats())
			default:
			}
			return c.Stats().Count(EventCoalesced) >= 1
		})
		cancel()
		if err := <-leadErr; !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled batch: %v", err)
		}
		close(release)
		if v := <-got; v != "Y" {
			t.Fatalf("the joined read got %q, want the batch's Y", v)
		}
		if calls.Load() != 1 {
			t.Fatalf("loader calls %d", calls.Load())
		}
		if v, err := c.Get(t.Context(), "x"); err != nil || v != "X" {
			t.Fatalf("x not cached after its first caller left: %q %v", v, err)
		}
	})
}

// A batch loader's panic or Goexit: "a loader's panic or runtime.Goexit is a
// [*PanicError] for every waiter" (doc.go); "nothing stays locked" (README).
func TestRedTeamLoadBatchLoaderGoexit(t *testing.T) {
	localAndRedis(t, []Option{WithLease(time.Minute)}, func(t *testing.T, c *Cache[string]) {
		_, err := c.GetOrLoadMany(t.Context(), []string{"x", "y"}, func(ctx context.Context, ks []string) (map[string]string, error) {
			runtime.Goexit()
			return nil, nil
		})
		if !errors.Is(err, ErrLoaderPanic) {
			t.Fatalf("Goexit in a batch loader: %v", err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		m, err := c.GetOrLoadMany(ctx, []string{"x", "y"}, func(ctx context.Context, ks []string) (map[string]string, error) {
			return map[string]string{"x": "X", "y": "Y"}, nil
		})
		if err != nil || len(m) != 2 {
			t.Fatalf("next batch: %v %v", m, err)
		}
	})
}

// Close with a batch load in flight (keys on every node of a cluster):
// "the leases they held are given back" (cache.go, Close).
func TestRedTeamLoadCloseDuringBatchGivesBackEveryLease(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		a, b := subscribedPair[string](t, tg, WithLease(time.Minute))
		ks := numberedKeys("k", 12)
		started := make(chan struct{})
		go func() {
			_, _ = a.GetOrLoadMany(context.Background(), ks, func(ctx context.Context, ks []string) (map[string]string, error) {
				close(started)
				<-ctx.Done()
				return nil, ctx.Err()
			})
		}()
		<-started
		if err := a.Close(); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		m, err := b.GetOrLoadMany(ctx, ks, func(ctx context.Context, ks []string) (map[string]string, error) {
			out := map[string]string{}
			for _, k := range ks {
				out[k] = "b"
			}
			return out, nil
		})
		if err != nil || len(m) != len(ks) {
			t.Fatalf("after the holder closed: %d values, %v (lease TTL 1m, waited at most 20s)", len(m), err)
		}
	})
}

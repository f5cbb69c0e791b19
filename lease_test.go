package tiercache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/keys"
	"github.com/tiercache/tiercache/internal/redistest"
)

// XFetch's trigger probability matches exp(-t/(beta*delta)) under a fixed
// random source: for each t, the share of N draws that trigger is within
// 4.5 standard deviations of the formula.
func TestXFetchProbability(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	const n = 20000
	delta := int64(20_000) // µs
	for _, beta := range []float64{0.5, 1, 2} {
		for _, tLeft := range []int64{0, 5_000, 20_000, 40_000, 80_000} {
			p := math.Exp(-float64(tLeft) / (beta * float64(delta)))
			hits := 0
			for range n {
				if shouldRefreshEarly(rng.Float64(), tLeft, delta, beta) {
					hits++
				}
			}
			got := float64(hits) / n
			sd := math.Sqrt(p*(1-p)/n) + 1e-9
			if math.Abs(got-p) > 4.5*sd {
				t.Errorf("beta %v, t %dµs: triggered %.4f, formula %.4f (±%.4f)", beta, tLeft, got, p, 4.5*sd)
			}
		}
	}
	if shouldRefreshEarly(0, 1, 1000, 0) {
		t.Error("beta 0 must turn early refresh off")
	}
	if !shouldRefreshEarly(0.999, -5, 1000, 1) {
		t.Error("a value past its expiry must refresh")
	}
}

// 4 instances x 250 goroutines on one cold key: the loader runs exactly
// once in total, and every other instance waited for it. The loader holds
// until each instance has sent its acquire (a script call, counted by a
// hook on its client), so that no instance can come late and simply find
// the value: a loaded machine must not make the test pass or fail.
func TestLeaseOneLoadAcrossInstances(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		prefix := testPrefix(t)
		var scripts [4]atomic.Int64
		cs := make([]*Cache[int], 4)
		for i := range cs {
			rdb := tg.NewClient(t)
			rdb.AddHook(scriptCounter{&scripts[i]})
			cs[i] = newCacheOn[int](t, rdb, prefix, WithL1(1000))
		}
		var calls atomic.Int64
		load := func(ctx context.Context) (int, error) {
			calls.Add(1)
			for i := range scripts {
				for scripts[i].Load() == 0 {
					if ctx.Err() != nil {
						return 0, ctx.Err()
					}
					time.Sleep(time.Millisecond)
				}
			}
			time.Sleep(10 * time.Millisecond)
			return 99, nil
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		var bad atomic.Int64
		for _, c := range cs {
			for range 250 {
				wg.Go(func() {
					<-start
					if v, err := c.GetOrLoad(t.Context(), "cold", load); err != nil || v != 99 {
						bad.Add(1)
					}
				})
			}
		}
		for i := range scripts {
			scripts[i].Store(0) // what New ran does not count
		}
		close(start)
		wg.Wait()
		if bad.Load() != 0 {
			t.Fatalf("%d reads failed", bad.Load())
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("loader ran %d times across 4 instances, want 1", n)
		}
		var waits uint64
		for _, c := range cs {
			waits += c.Stats().Count(EventLeaseWait)
		}
		if waits < 3 {
			t.Fatalf("lease waits = %d, want at least 3 (one per other instance)", waits)
		}
	})
}

// The stale-set race, forced step by step: instance A misses and loads the
// old row; the row is updated and B invalidates the key (Delete, or Set of
// the new row); then A's load returns. A's fill must be refused: the old row
// never lands in Redis or in any L1, and the next read sees the new row.
func TestStaleSetRefused(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		for _, write := range []string{"delete", "set"} {
			t.Run(write, func(t *testing.T) {
				ctx := t.Context()
				cs := instances[string](t, tg, 2, WithL1(100))
				a, b := cs[0], cs[1]
				var row atomic.Value
				row.Store("old")
				loaded := make(chan struct{})
				proceed := make(chan struct{})
				done := async(func() (string, error) {
					return a.GetOrLoad(ctx, "row", func(context.Context) (string, error) {
						v := row.Load().(string) // reads the old row
						close(loaded)
						<-proceed // ... and is slow to return it
						return v, nil
					})
				})
				<-loaded
				row.Store("new")
				switch write {
				case "delete":
					if err := b.Delete(ctx, "row"); err != nil {
						t.Fatal(err)
					}
				case "set":
					if err := b.Set(ctx, "row", "new"); err != nil {
						t.Fatal(err)
					}
				}
				close(proceed)
				if v := <-done; v != "old" {
					t.Fatalf("the slow reader got %q; it should still get what it loaded", v)
				}
				if n := a.Stats().Count(EventFillRefused); n != 1 {
					t.Fatalf("fills refused = %d, want 1", n)
				}
				raw, err := a.st.RDB.Get(ctx, a.st.Layout.Value("row")).Bytes()
				switch write {
				case "delete":
					if !errors.Is(err, redis.Nil) {
						t.Fatalf("after Delete, Redis holds %q (err %v): the stale fill landed", raw, err)
					}
				case "set":
					var e entry[string]
					if err := decode(a.vc, raw, a.keyHash(a.st.Layout.Value("row")), &e); err != nil || e.val != "new" {
						t.Fatalf("after Set, Redis holds %q (err %v), want the new row", e.val, err)
					}
				}
				for i, c := range cs {
					if e, ok := c.l1.get("row"); ok && e.val == "old" {
						t.Fatalf("instance %d's L1 holds the stale row", i)
					}
				}
				for i, c := range cs {
					v, err := c.GetOrLoad(ctx, "row", func(context.Context) (string, error) { return row.Load().(string), nil })
					if err != nil || v != "new" {
						t.Fatalf("instance %d reads %q, %v after the write; want new", i, v, err)
					}
				}
			})
		}
	})
}

// A lease holder that dies delays the others by at most the lease TTL;
// then a waiter takes the lease over and loads.
func TestDeadLeaseHolder(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		const leaseTTL = 300 * time.Millisecond
		t.Run("orphaned lease", func(t *testing.T) {
			ctx := t.Context()
			cs := instances[string](t, tg, 1, WithLease(leaseTTL))
			c := cs[0]
			// A holder that took the lease and was killed before it filled.
			if err := c.st.RDB.Set(ctx, leaseKey(c, "k"), "dead-holder", leaseTTL).Err(); err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			v, err := c.GetOrLoad(ctx, "k", func(context.Context) (string, error) { return "v", nil })
			took := time.Since(start)
			if err != nil || v != "v" {
				t.Fatalf("GetOrLoad = %q, %v", v, err)
			}
			if took > leaseTTL+3*time.Second { // it takes the lease over once it expires, not a whole wait budget later
				t.Fatalf("waited %v for a dead holder, lease TTL is %v", took, leaseTTL)
			}
			if took < leaseTTL/2 {
				t.Fatalf("returned after %v: the lease of the other holder was not respected", took)
			}
		})
		t.Run("holder that never returns", func(t *testing.T) {
			ctx := t.Context()
			cs := instances[string](t, tg, 2, WithLease(leaseTTL), WithLoadTimeout(10*time.Second))
			hung := make(chan struct{})
			stuck := make(chan struct{})
			defer close(stuck)
			go func() {
				_, _ = cs[0].GetOrLoad(ctx, "k", func(ctx context.Context) (string, error) {
					close(hung)
					select { // a holder that hangs (until the test ends)
					case <-stuck:
					case <-ctx.Done():
					}
					return "from the hung holder", nil
				})
			}()
			<-hung
			start := time.Now()
			v, err := cs[1].GetOrLoad(ctx, "k", func(context.Context) (string, error) { return "v", nil })
			took := time.Since(start)
			if err != nil || v != "v" {
				t.Fatalf("GetOrLoad = %q, %v", v, err)
			}
			if took > leaseTTL+3*time.Second {
				t.Fatalf("waited %v for a hung holder, lease TTL is %v", took, leaseTTL)
			}
		})
	})
}

// Under a steady read rate r, a hot key is refreshed before it expires in
// nearly every cycle: the chance that no read triggers a refresh in a cycle
// is about exp(-r*beta*delta). With beta 1, r about 200/s and delta 20ms
// that is e^-4, under 2%; with beta 0.2 it is e^-0.8, about 45%. The
// measured share of cycles that ended in a foreground load is checked
// against the formula (for the measured r) with a generous statistical bound.
func TestXFetchRefreshesBeforeExpiry(t *testing.T) {
	if testing.Short() {
		t.Skip("timing test")
	}
	tg := redistest.Target{Name: "single"}
	srv := redistest.SharedServer(t)
	tg.NewClient = func(tb testing.TB) redis.UniversalClient {
		return srv.Client(tb, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
	}
	const (
		ttl   = 250 * time.Millisecond
		delta = 20 * time.Millisecond
		every = 5 * time.Millisecond
		run   = 5 * time.Second
	)
	for _, beta := range []float64{1, 0.2} {
		t.Run(fmt.Sprint("beta ", beta), func(t *testing.T) {
			c := newCache[int](t, tg, WithDefaultTTL(ttl), WithJitter(0), WithEarlyRefresh(beta))
			load := func(context.Context) (int, error) { time.Sleep(delta); return 1, nil }
			start := time.Now()
			reads := 0
			for time.Since(start) < run {
				if _, err := c.GetOrLoad(t.Context(), "hot", load); err != nil {
					t.Fatal(err)
				}
				reads++
				time.Sleep(every)
			}
			elapsed := time.Since(start)
			c.bg.Wait()
			s := c.Stats()
			early := s.Count(EventEarlyRefresh)
			foreground := s.Loads - early - 1 // the first load is the cold one
			cycles := float64(s.Loads - 1)
			r := float64(reads) / elapsed.Seconds()
			p := math.Exp(-r * beta * delta.Seconds())
			got := float64(foreground) / cycles
			sd := math.Sqrt(p * (1 - p) / cycles)
			t.Logf("read rate %.0f/s, %v cycles, %d early refreshes, %d foreground loads: miss share %.3f, formula %.3f", r, cycles, early, foreground, got, p)
			if cycles < 10 {
				t.Fatalf("only %v cycles in %v", cycles, run)
			}
			// The bound allows for delta being a little more than the sleep
			// (the measured load includes scheduling), which lowers the miss share.
			if got > p+4*sd+0.05 || got < p-4*sd-0.15 {
				t.Fatalf("miss share %.3f, formula %.3f ± %.3f", got, p, 4*sd)
			}
		})
	}
}

// Stale-while-revalidate: past the logical expiry, within the window, the
// old value comes back at once and a background refresh replaces it.
func TestStaleWhileRevalidate(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[int](t, tg, WithDefaultTTL(100*time.Millisecond), WithJitter(0), WithEarlyRefresh(0),
			WithStaleWhileRevalidate(time.Minute))
		var version atomic.Int64
		release := make(chan struct{})
		load := func(context.Context) (int, error) {
			if version.Load() > 0 {
				<-release // the refresh is held until the stale read returned
			}
			return int(version.Add(1)), nil
		}
		if v, _ := c.GetOrLoad(ctx, "k", load); v != 1 {
			t.Fatalf("first load = %d", v)
		}
		time.Sleep(150 * time.Millisecond) // now stale
		// The stale read returns while its refresh's loader is still
		// blocked: it did not wait for the load.
		v, err := c.GetOrLoad(ctx, "k", load)
		if err != nil || v != 1 {
			t.Fatalf("stale read = %d, %v; want the old value 1", v, err)
		}
		close(release)
		c.bg.Wait()
		if v, _ := c.GetOrLoad(ctx, "k", load); v != 2 {
			t.Fatalf("after the background refresh, read %d, want 2", v)
		}
		if c.Stats().Count(EventStaleServed) != 1 {
			t.Fatalf("stale served = %d, want 1", c.Stats().Count(EventStaleServed))
		}
		// Get without a loader does not serve stale values.
		time.Sleep(150 * time.Millisecond)
		if _, err := c.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
			t.Fatalf("Get of a stale value = %v, want ErrMiss", err)
		}
	})
}

// Stale-if-error: when the loader fails and an expired value within the
// window exists, the old value is returned and the error counted.
func TestStaleIfError(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithDefaultTTL(80*time.Millisecond), WithJitter(0), WithEarlyRefresh(0),
			WithStaleIfError(300*time.Millisecond))
		if _, err := c.GetOrLoad(ctx, "k", func(context.Context) (string, error) { return "good", nil }); err != nil {
			t.Fatal(err)
		}
		time.Sleep(120 * time.Millisecond)
		boom := errors.New("db down")
		failing := func(context.Context) (string, error) { return "", boom }
		v, err := c.GetOrLoad(ctx, "k", failing)
		if err != nil || v != "good" {
			t.Fatalf("GetOrLoad with a failing loader = %q, %v; want the stale value", v, err)
		}
		if c.Stats().Count(EventStaleOnError) != 1 || c.Stats().LoadErrors != 1 {
			t.Fatalf("stats %+v: want one stale-on-error and one load error", c.Stats())
		}
		time.Sleep(350 * time.Millisecond) // past the window
		if _, err := c.GetOrLoad(ctx, "k", failing); !errors.Is(err, boom) {
			t.Fatalf("past the stale-if-error window = %v, want the loader's error", err)
		}
	})
}

// Refresh reloads a fresh value through the lease, and tells the other
// instances to drop their L1 copies, as a Set does (load.go, Refresh): once
// its message arrives, no L1 holds the value Redis no longer does.
func TestRefresh(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[int](t, tg, WithL1(10))
		var n atomic.Int64
		load := func(context.Context) (int, error) { return int(n.Add(1)), nil }
		if v, _ := a.GetOrLoad(ctx, "k", load); v != 1 {
			t.Fatalf("first load %d", v)
		}
		if v, _ := b.GetOrLoad(ctx, "k", load); v != 1 { // now in b's L1
			t.Fatalf("other instance's first read %d", v)
		}
		before := b.Stats().Count(EventInvalidationReceived)
		if v, err := a.Refresh(ctx, "k", load); err != nil || v != 2 {
			t.Fatalf("Refresh = %d, %v; want 2", v, err)
		}
		if v, _ := a.GetOrLoad(ctx, "k", load); v != 2 {
			t.Fatalf("after Refresh, read %d", v)
		}
		waitFor(t, 20*time.Second, "the Refresh's message at the other instance", func() bool {
			return b.Stats().Count(EventInvalidationReceived) > before
		})
		if v, _ := b.GetOrLoad(ctx, "k", load); v != 2 {
			t.Fatalf("other instance reads %d after Refresh", v)
		}
		if n.Load() != 2 {
			t.Fatalf("%d loads, want 2", n.Load())
		}
	})
}

// Close (cache.go): a write in flight whose Redis write landed still
// publishes its invalidation. A Refresh whose fill landed as Close began
// tells the other instances all the same (its load's context is cancelled
// by Close; the message must not be). Without the fix about one run in
// three failed: the send chose the cancelled context over the queue.
func TestRefreshDuringCloseStillTellsTheOthers(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b, obs := hookedPair[int](t, tg, "fill")
		mustSet(t, a, "k", 1)
		if v, err := b.Get(ctx, "k"); err != nil || v != 1 { // now in b's L1
			t.Fatalf("b: %d, %v", v, err)
		}
		before := b.Stats().Count(EventInvalidationReceived)
		closed := make(chan error, 1)
		obs.arm(func() { // the fill landed: Close begins before the load goes on
			go func() { closed <- a.Close() }()
			<-a.life.Done()
			time.Sleep(10 * time.Millisecond) // for the load's context to be cancelled too
		})
		if v, err := a.Refresh(ctx, "k", func(context.Context) (int, error) { return 2, nil }); err != nil || v != 2 {
			t.Skipf("Refresh during Close = %d, %v: the fill did not land first", v, err)
		}
		if err := redistest.Receive(t, closed, 20*time.Second, "Close"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "the Refresh's message at b", func() bool {
			return b.Stats().Count(EventInvalidationReceived) > before
		})
		if v, err := b.Get(ctx, "k"); err != nil || v != 2 {
			t.Fatalf("b after the Refresh: %d, %v; want 2", v, err)
		}
	})
}

// A waiter for another instance's lease is woken by the holder's fill: it
// costs Redis no polls while it waits (one acquire to find the lease held,
// one after the wake-up), and gets the holder's value.
func TestLeaseWaiterWokenByFill(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		holder, waiter, obs := leaseHolderAndWaiter(t, tg)
		loading, release := make(chan struct{}), make(chan struct{})
		var calls atomic.Int64
		go func() {
			_, _ = holder.GetOrLoad(context.Background(), "k", func(ctx context.Context) (string, error) {
				calls.Add(1)
				close(loading)
				<-release
				return "held", nil
			})
		}()
		<-loading
		got := async(func() (string, error) {
			return waiter.GetOrLoad(context.Background(), "k", func(ctx context.Context) (string, error) {
				calls.Add(1)
				return "waiter", nil
			})
		})
		waitFor(t, 10*time.Second, "the waiter's first acquire", func() bool { return obs.count("acquire") >= 1 })
		time.Sleep(200 * time.Millisecond) // polling would acquire about 20 times meanwhile
		if n := obs.count("acquire"); n > 1 {
			t.Fatalf("the waiter acquired %d times while the holder loaded: it polls", n)
		}
		close(release)
		if v := <-got; v != "held" {
			t.Fatalf("the waiter got %q, want the holder's value", v)
		}
		if calls.Load() != 1 || obs.count("acquire") > 2 {
			t.Fatalf("%d loads, %d acquires by the waiter", calls.Load(), obs.count("acquire"))
		}
	})
}

// Close ends a read that waits for another instance's lease with
// ErrClosed, not a bare context.Canceled the caller could take for its own.
func TestCloseEndsALeaseWaitWithErrClosed(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		holder, waiter, obs := leaseHolderAndWaiter(t, tg)
		release, _ := holdLoad(holder, "k", "held")
		defer release()
		read := make(chan error, 1)
		go func() {
			_, err := waiter.GetOrLoad(t.Context(), "k", constLoad("waiter", 0))
			read <- err
		}()
		waitFor(t, 10*time.Second, "the waiter's acquire", func() bool { return obs.count("acquire") >= 1 })
		if err := waiter.Close(); err != nil {
			t.Fatal(err)
		}
		if err := redistest.Receive(t, read, 20*time.Second, "the waiting read did not return after Close"); !errors.Is(err, ErrClosed) {
			t.Fatalf("the waiting read returned %v, want ErrClosed", err)
		}
	})
}

// A fill wakes the waiters of its lease on the channel the waiters listen
// to: the classic fill channel on one node, the sharded one on a Redis 7
// cluster. Before, the fill script PUBLISHed classically on a cluster too,
// and the message crossed the cluster bus to the subscribers' node, which
// took up to 40 ms on Redis 7.0 (issue "under load": waiters woke p99
// 38.7 ms after the fill). The other channel carries nothing.
func TestFillWakesOnTheWaitersChannel(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		holder, waiter, obs := leaseHolderAndWaiter(t, tg)

		want, other := holder.st.Layout.Fills(), holder.st.Layout.ShardedFills()
		rdb := tg.NewClient(t)
		var wantSub, otherSub *redis.PubSub
		if tg.Cluster != nil {
			want, other = other, want
			cc := rdb.(*redis.ClusterClient)
			wantSub, otherSub = cc.SSubscribe(ctx, want), cc.Subscribe(ctx, other)
		} else {
			wantSub, otherSub = rdb.Subscribe(ctx, want), rdb.SSubscribe(ctx, other)
		}
		defer wantSub.Close()
		defer otherSub.Close()
		for _, ps := range []*redis.PubSub{wantSub, otherSub} {
			if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
				t.Fatal(err)
			}
		}

		held := startGatedLoad(context.Background(), holder, "k", "held", "")
		<-held.started
		got := async(func() (string, error) {
			return waiter.GetOrLoad(context.Background(), "k", func(context.Context) (string, error) { return "waiter", nil })
		})
		waitFor(t, 10*time.Second, "the waiter's acquire", func() bool { return obs.count("acquire") >= 1 })
		close(held.proceed)

		vk := holder.st.Layout.Value("k")
		deadline := time.After(10 * time.Second)
	wake:
		for {
			select {
			case m := <-wantSub.Channel():
				if isEcho(m.Payload) {
					continue // the subscription's self-check (an instance without L1 has no other channel)
				}
				if m.Payload != vk {
					t.Fatalf("wake on %s carries %q, want %q", want, m.Payload, vk)
				}
				break wake
			case <-deadline:
				t.Fatalf("no wake on %s", want)
			}
		}
		if v := <-got; v != "held" {
			t.Fatalf("the waiter got %q, want the holder's value", v)
		}
		select {
		case m := <-otherSub.Channel():
			t.Fatalf("a wake on %s too: %q", other, m.Payload)
		case <-time.After(200 * time.Millisecond):
		}
	})
}

// The stampede of the issue: 4 instances x 250 goroutines on one cold key,
// a 50ms loader. Reported: loads (must be 1) and the waiters' p99 over the
// loader time, with fills waking the waiters and with polling.
func BenchmarkStampede(b *testing.B) {
	for _, mode := range []string{"woken", "polling"} {
		b.Run(mode, func(b *testing.B) {
			tg := redistest.Target{NewClient: func(tb testing.TB) redis.UniversalClient {
				return redistest.SharedServer(tb).Client(tb, func(o *redis.Options) { o.ContextTimeoutEnabled = true; o.PoolSize = 64 })
			}}
			var p99s []time.Duration
			var loads int64
			for i := range b.N {
				prefix := fmt.Sprintf("stampede%s%d%d", mode, time.Now().UnixNano(), i)
				cs := make([]*Cache[int], 4)
				for j := range cs {
					cs[j] = newCacheOn[int](b, tg.NewClient(b), prefix, WithL1(10))
					if mode == "polling" {
						cs[j].inv.fills = nil
					} else {
						for !cs[j].inv.healthy() {
							time.Sleep(time.Millisecond)
						}
					}
				}
				var calls atomic.Int64
				load := func(ctx context.Context) (int, error) {
					calls.Add(1)
					time.Sleep(50 * time.Millisecond)
					return 1, nil
				}
				lat := make([]time.Duration, 0, 1000)
				var mu sync.Mutex
				start := make(chan struct{})
				var wg sync.WaitGroup
				for _, c := range cs {
					for range 250 {
						wg.Go(func() {
							<-start
							t0 := time.Now()
							_, _ = c.GetOrLoad(context.Background(), "cold", load)
							mu.Lock()
							lat = append(lat, time.Since(t0))
							mu.Unlock()
						})
					}
				}
				close(start)
				wg.Wait()
				slices.Sort(lat)
				p99s = append(p99s, lat[len(lat)*99/100])
				loads += calls.Load()
				for _, c := range cs {
					_ = c.Close()
				}
			}
			slices.Sort(p99s)
			b.ReportMetric(float64(p99s[len(p99s)/2].Microseconds())/1000, "p99-ms")
			b.ReportMetric(float64(loads)/float64(b.N), "loads/op")
		})
	}
}

// scriptCounter counts the scripts a client runs (EVALSHA and EVAL).
type scriptCounter struct{ n *atomic.Int64 }

func (scriptCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h scriptCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if n := cmd.Name(); n == "evalsha" || n == "eval" {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h scriptCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if n := cmd.Name(); n == "evalsha" || n == "eval" {
				h.n.Add(1)
			}
		}
		return next(ctx, cmds)
	}
}

// Concurrent misses of different keys share their lease scripts' round
// trips, as reads do: 40 loads held until all 40 run, then released at
// once, fill in far fewer than 40 round trips (counted at the client: a
// pipeline is one). Each key gets its own answer in a shared round trip:
// the key written during its load has its fill refused (Redis and L1 keep
// the write), the others are written to Redis and to L1 (but for the keys
// of k0's L1 stripe, whose fills k0's invalidation refuses as well).
func TestConcurrentMissesShareLeaseRoundTrips(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		rdb := tg.NewClient(t)
		fills := &scriptTrips{hash: keys.Fill.Hash()}
		rdb.AddHook(fills)
		c := newCacheOn[string](t, rdb, testPrefix(t), WithDefaultTTL(time.Minute), WithL1(1000))
		admin := tg.NewClient(t)
		// (Until subscribed, L1 is flushed when the subscription comes up,
		// which would refuse the fills' L1 copies.)
		waitFor(t, time.Minute, "the subscription", func() bool { return c.Stats().Subscribed })
		const n = 40
		var started atomic.Int64
		gate := make(chan struct{})
		var wg sync.WaitGroup
		for i := range n {
			key := fmt.Sprint("k", i)
			wg.Go(func() {
				v, err := c.GetOrLoad(ctx, key, func(context.Context) (string, error) {
					started.Add(1)
					<-gate
					return "loaded " + key, nil
				})
				if err != nil || v != "loaded "+key {
					t.Errorf("GetOrLoad(%s) = %q, %v", key, v, err)
				}
			})
		}
		waitFor(t, time.Minute, "every load to start", func() bool { return started.Load() == n })
		// Written while k0 loads: k0's fill must be refused.
		if err := c.Set(ctx, "k0", "written"); err != nil {
			t.Fatal(err)
		}
		close(gate)
		if !redistest.WaitDone(t, &wg, time.Minute) {
			t.Fatal("loads still running")
		}
		trips := fills.n.Load()
		t.Logf("%d fill round trips for %d misses", trips, n)
		if trips >= n/2 {
			t.Errorf("%d fill round trips for %d fills released at once: they did not share round trips", trips, n)
		}
		if got := c.Stats().Count(EventFillRefused); got != 1 {
			t.Errorf("fills refused = %d, want 1 (k0's)", got)
		}
		for i := range n {
			key, want := fmt.Sprint("k", i), fmt.Sprint("loaded k", i)
			if i == 0 {
				want = "written"
			}
			if got := decodedValue(t, c, admin, key); got != want {
				t.Errorf("Redis holds %q for %s, want %q", got, key, want)
			}
			if i > 0 && c.l1.stripe(key) == c.l1.stripe("k0") {
				continue // k0's write refused L1 fills of its stripe's keys too (by design)
			}
			if e, ok := c.l1.peek(key); !ok || e.val != want {
				t.Errorf("L1 holds %v (present %v) for %s, want %q: its fill's answer was another key's", e, ok, key, want)
			}
		}
	})
}

// Bytes that look like a fresh frame by their header (version 1, reserved
// byte 0, a logical expiry far ahead) but do not decode: Acquire answers
// "fresh" without taking the lease, and the read acquires again, forced.
// Nobody holds a lease on the key, so no fill will come to wake a wait:
// the forced acquire goes out at once. Before, the read waited for a wake
// (500 ms with the fill subscription up) first, and a GetOrLoad with a
// 500 ms deadline over such bytes failed (a random fault test found it,
// about one CI run in 300).
func TestFreshLookingGarbageIsLoadedWithoutAWait(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		_, c, obs := leaseHolderAndWaiter(t, tg)
		admin := tg.NewClient(t)
		garbage := func(k string) {
			b := make([]byte, 60)
			b[0] = 1 // version 1, reserved byte b[3] 0
			for i := 4; i < len(b); i++ {
				b[i] = byte(rand.Uint32())
			}
			b[4] = 0               // a write time in the past
			b[12], b[13] = 0x7f, 0 // a logical expiry far ahead
			if err := admin.Set(ctx, c.st.Layout.Value(k), b, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		}
		const n = 5
		read := func(k string, want string) time.Duration {
			start := time.Now()
			if v, err := c.GetOrLoad(ctx, k, constLoad(want, 0)); err != nil || v != want {
				t.Fatalf("GetOrLoad(%s) = %q, %v", k, v, err)
			}
			return time.Since(start)
		}
		// The same reads over absent keys, in the same conditions: the
		// bound below is relative, so that a loaded machine does not fail
		// the test.
		var plain, forced time.Duration
		for i := range n {
			plain += read(fmt.Sprint("absent", i), "v")
		}
		corrupt := c.Stats().Count(EventCorrupt)
		acquires := obs.count("acquire")
		for i := range n {
			k := fmt.Sprint("garbage", i)
			garbage(k)
			forced += read(k, "loaded")
		}
		if got := c.Stats().Count(EventCorrupt) - corrupt; got < n {
			t.Fatalf("%d corrupt reads counted, want %d", got, n)
		}
		if got := obs.count("acquire") - acquires; got != 2*n {
			t.Errorf("%d acquires for %d keys, want 2 each (the first answers fresh, the forced one leases)", got, n)
		}
		t.Logf("%d reads: absent %v, fresh-looking garbage %v", n, plain, forced)
		if forced > n*400*time.Millisecond && forced > 10*plain {
			t.Fatalf("%d reads over fresh-looking garbage took %v (over absent keys %v): each waited for a wake no fill sends", n, forced, plain)
		}
		for i := range n {
			if v, err := c.Get(ctx, fmt.Sprint("garbage", i)); err != nil || v != "loaded" {
				t.Fatalf("the loaded value was not cached: %q, %v", v, err)
			}
		}
	})
}

// A Delete during a load hands the load's value to the reads that were
// waiting for it on other instances (their reads overlapped the Delete),
// instead of making each wait for a second load; a read that began after
// the Delete never gets it, and nothing of it is cached. If the holder
// fails, or never fills, the waiters load anew.
func TestDeleteHandsTheLoadToItsWaiters(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		// holder loads "old" until released; the waiter waits for it; a
		// third instance, the writer, deletes the key meanwhile.
		withL1 := []Option{WithL1(100)}
		setup := func(t *testing.T, lease time.Duration, holderErr error, opts []Option, hooks ...redis.Hook) (holder, waiter, writer *Cache[string], obs *countingObserver, release func(), held <-chan string) {
			prefix := testPrefix(t)
			opts = append(opts, WithLease(lease))
			holder = newCacheOn[string](t, tg.NewClient(t), prefix, opts...)
			obs = &countingObserver{}
			wc := tg.NewClient(t)
			for _, h := range hooks {
				wc.AddHook(h)
			}
			waiter = newCacheOn[string](t, wc, prefix, append(opts, WithObserver(obs))...)
			writer = newCacheOn[string](t, tg.NewClient(t), prefix, WithLease(lease), WithL1(100))
			waitSubscribed(t, holder, waiter, writer)
			loading, proceed := make(chan struct{}), make(chan struct{})
			out := async(func() (string, error) {
				return holder.GetOrLoad(context.Background(), "k", func(ctx context.Context) (string, error) {
					close(loading)
					select {
					case <-proceed:
					case <-ctx.Done():
					}
					return "old", holderErr
				})
			})
			<-loading
			var once sync.Once
			release = func() { once.Do(func() { close(proceed) }) }
			t.Cleanup(release)
			return holder, waiter, writer, obs, release, out
		}
		t.Run("handed off", func(t *testing.T) {
			ctx := t.Context()
			holder, waiter, writer, obs, release, held := setup(t, 30*time.Second, nil, withL1)
			var calls atomic.Int64
			got := readK(waiter, "waiter's own load", &calls)
			// Woken by the Delete, the waiter finds the lease gone, and
			// waits on for the holder's value.
			deleteDuringWait(t, obs, writer, true)
			release()
			if v := <-held; v != "old" {
				t.Fatalf("the holder got %q", v)
			}
			if v := <-got; v != "old" || calls.Load() != 0 {
				t.Fatalf("the waiter got %q after %d loads of its own; want the holder's value and none", v, calls.Load())
			}
			if n := holder.Stats().Count(EventFillRefused); n != 1 {
				t.Fatalf("%d fills refused, want 1: the value loaded before the Delete landed", n)
			}
			if n, err := writer.st.RDB.Exists(ctx, writer.st.Layout.Value("k")).Result(); err != nil || n != 0 {
				t.Fatalf("after the Delete Redis holds the key (%d, %v)", n, err)
			}
			for i, c := range []*Cache[string]{holder, waiter, writer} {
				if _, ok := c.l1.get("k"); ok {
					t.Fatalf("instance %d's L1 holds the value loaded before the Delete", i)
				}
			}
			// A read from now on loads anew, on every instance.
			var after atomic.Int64
			if v := <-readK(waiter, "new", &after); v != "new" || after.Load() != 1 {
				t.Fatalf("a read after the Delete got %q with %d loads", v, after.Load())
			}
		})
		t.Run("deleted after the fill", func(t *testing.T) {
			// The fill wakes the waiter; a Delete lands before the waiter's
			// next acquire reads the value.
			ctx := t.Context()
			gate := newAcquireGate(1, false)
			_, waiter, writer, obs, release, held := setup(t, 30*time.Second, nil, withL1, gate)
			var calls atomic.Int64
			got := readK(waiter, "waiter's own load", &calls)
			waitFor(t, 10*time.Second, "the waiter's first acquire", func() bool { return obs.count("acquire") >= 1 })
			release()
			if v := <-held; v != "old" {
				t.Fatalf("the holder got %q", v)
			}
			<-gate.in // woken by the fill, the waiter's acquire is on its way
			if err := writer.Delete(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			close(gate.proceed)
			if v := <-got; v != "old" || calls.Load() != 0 {
				t.Fatalf("the waiter got %q after %d loads of its own; want the filled value and none", v, calls.Load())
			}
			if _, ok := waiter.l1.get("k"); ok {
				t.Fatal("the waiter's L1 holds the value deleted since")
			}
			var after atomic.Int64
			if v := <-readK(writer, "new", &after); v != "new" || after.Load() != 1 {
				t.Fatalf("a read after the Delete got %q with %d loads", v, after.Load())
			}
		})
		t.Run("a read after the Delete loads anew", func(t *testing.T) {
			holder, waiter, writer, obs, release, held := setup(t, 30*time.Second, nil, withL1)
			var calls, late, later atomic.Int64
			got := readK(waiter, "waiter's own load", &calls)
			deleteDuringWait(t, obs, writer, false)
			// The holder's instance has seen the Delete: a read there now,
			// while its own load of the old value goes on, must not join it.
			waitFor(t, 10*time.Second, "the holder's instance to apply the Delete", func() bool {
				return holder.Stats().Count(EventInvalidationReceived) >= 1
			})
			if v := <-readK(holder, "new", &late); v != "new" || late.Load() != 1 {
				t.Fatalf("a read on the holder's instance after the Delete got %q with %d loads; want its own load", v, late.Load())
			}
			// The writer's read, after its Delete: the new value.
			if v := <-readK(writer, "newer", &later); v != "new" || later.Load() != 0 {
				t.Fatalf("a read after the Delete got %q with %d loads; want the new value", v, later.Load())
			}
			release()
			<-held
			// The waiter returns the old value or, woken after the new
			// fill, the new one: both overlapped the Delete.
			if v := <-got; (v != "old" && v != "new") || calls.Load() != 0 {
				t.Fatalf("the waiter got %q after %d loads of its own", v, calls.Load())
			}
			if v := decodedValue(t, writer, writer.st.RDB, "k"); v != "new" {
				t.Fatalf("Redis holds %q, want the new value", v)
			}
		})
		t.Run("instances without L1", func(t *testing.T) {
			// They apply the others' writes to their flights too: a read,
			// a Refresh or a batch that begins once the Delete reached the
			// instance neither joins the waiting flight nor is handed the
			// value loaded before the Delete; nor on the holder's instance.
			holder, waiter, writer, obs, release, held := setup(t, 30*time.Second, nil, nil)
			var calls atomic.Int64
			got := readK(waiter, "waiter's own load", &calls)
			deleteDuringWait(t, obs, writer, false)
			for _, c := range []*Cache[string]{holder, waiter} {
				waitFor(t, 10*time.Second, "the Delete to reach the instance", func() bool {
					return c.Stats().Count(EventInvalidationReceived) >= 1
				})
			}
			type late struct {
				what string
				v    <-chan string
			}
			var lates []late
			for i, c := range []*Cache[string]{holder, waiter} {
				lates = append(lates, late{fmt.Sprintf("GetOrLoad on instance %d", i), readK(c, "new", new(atomic.Int64))})
				refreshed, batch := make(chan string, 1), make(chan string, 1)
				go func() {
					v, err := c.Refresh(context.Background(), "k", constLoad("new", 0))
					if err != nil {
						v = err.Error()
					}
					refreshed <- v
				}()
				go func() {
					m, err := c.GetOrLoadMany(context.Background(), []string{"k"}, func(context.Context, []string) (map[string]string, error) {
						return map[string]string{"k": "new"}, nil
					})
					v := m["k"]
					if err != nil {
						v = err.Error()
					}
					batch <- v
				}()
				lates = append(lates, late{fmt.Sprintf("Refresh on instance %d", i), refreshed}, late{fmt.Sprintf("GetOrLoadMany on instance %d", i), batch})
			}
			for _, l := range lates[:3] {
				// The holder's instance's reads do not wait for its load
				// (the waiter's may: their new load may find the waiter's
				// lease taken, and the handoff only after it).
				if v := <-l.v; v != "new" {
					t.Errorf("%s, begun after the instance saw the Delete, got %q", l.what, v)
				}
			}
			release()
			<-held
			for _, l := range lates[3:] {
				if v := <-l.v; v != "new" {
					t.Errorf("%s, begun after the instance saw the Delete, got %q", l.what, v)
				}
			}
			// The waiter, begun before the Delete: the old value, or the
			// new one if it was filled before the waiter's next acquire.
			if v := <-got; (v != "old" && v != "new") || calls.Load() != 0 {
				t.Fatalf("the waiter, begun before the Delete, got %q after %d loads of its own", v, calls.Load())
			}
		})
		t.Run("a Set during the wait for a handoff wakes the waiter", func(t *testing.T) {
			// The Delete's wake ends the waiters key; the waiter, waiting
			// on for the holder's value, marks it again, so that a Set
			// before the holder's fill publishes a wake too (it waited for
			// its half-second backstop before).
			ctx := t.Context()
			// The holder loads for as long as the test runs: no wake can
			// come from its end.
			_, waiter, writer, obs, _, _ := setup(t, 30*time.Second, nil, []Option{WithL1(100), WithLoadTimeout(time.Hour)})
			sharded, err := waiter.inv.st.Sharded(ctx)
			if err != nil {
				t.Fatal(err)
			}
			admin := tg.NewClient(t)
			var ps *redis.PubSub
			if sharded {
				ps = admin.(*redis.ClusterClient).SSubscribe(ctx, waiter.st.Layout.ShardedFills())
			} else {
				ps = admin.Subscribe(ctx, waiter.st.Layout.Fills())
			}
			defer ps.Close()
			if _, err := ps.Receive(ctx); err != nil {
				t.Fatal(err)
			}
			var calls atomic.Int64
			got := readK(waiter, "waiter's own load", &calls)
			deleteDuringWait(t, obs, writer, false)
			if _, err := ps.ReceiveMessage(ctx); err != nil { // the Delete's wake
				t.Fatal(err)
			}
			waitFor(t, 10*time.Second, "the waiter's acquire after the Delete", func() bool { return obs.count("acquire") >= 2 })
			if err := writer.Set(ctx, "k", "set"); err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if _, err := ps.ReceiveMessage(rctx); err != nil {
				t.Fatalf("the Set during the wait for the handoff woke nobody (%v)", err)
			}
			if v := <-got; v != "set" || calls.Load() != 0 {
				t.Fatalf("the waiter got %q after %d loads of its own; want the Set's value", v, calls.Load())
			}
		})
		t.Run("holder fails", func(t *testing.T) {
			_, waiter, writer, obs, release, held := setup(t, 30*time.Second, errors.New("database down"), withL1)
			var calls atomic.Int64
			got := readK(waiter, "waiter's own load", &calls)
			deleteDuringWait(t, obs, writer, true)
			release()
			<-held
			if v := <-got; v != "waiter's own load" || calls.Load() != 1 {
				t.Fatalf("the waiter got %q after %d loads of its own; want its own, once the holder failed", v, calls.Load())
			}
		})
		t.Run("holder never fills", func(t *testing.T) {
			const lease = time.Second
			_, waiter, writer, obs, _, _ := setup(t, lease, nil, withL1)
			var calls atomic.Int64
			got := readK(waiter, "waiter's own load", &calls)
			deleteDuringWait(t, obs, writer, false)
			// The handoff lives as long as the lease had left: then the
			// waiter takes a lease of its own.
			if v := <-got; v != "waiter's own load" || calls.Load() != 1 {
				t.Fatalf("the waiter got %q after %d loads of its own", v, calls.Load())
			}
		})
	})
}

// Only a flight that has heard every write of its key since it began asks
// for a handoff. One that began while its instance's subscription was down
// can hold a caller that joined after a Delete the instance never heard of
// (nothing forgot the flight); once the subscription is back, its next
// acquire must not be handed the value loaded before that Delete, or the
// late caller gets it. (Found by a review: the health was checked at each
// acquire, not over the flight's life.)
func TestHandoffOnlyToFlightsThatHeardEveryWrite(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := testPrefix(t)
		opts := []Option{WithLease(30 * time.Second)}
		holder := newCacheOn[string](t, tg.NewClient(t), prefix, opts...)
		obs := &countingObserver{}
		other := newCacheOn[string](t, tg.NewClient(t), prefix, append(opts, WithObserver(obs))...)
		writer := newCacheOn[string](t, tg.NewClient(t), prefix, opts...)
		// b's second acquire runs in Redis before the Delete; its reply
		// is held until b's subscription is back.
		gate := newAcquireGate(1, true)
		bc := tg.NewClient(t)
		bc.AddHook(gate)
		b := newCacheOn[string](t, bc, prefix, opts...)
		waitSubscribed(t, holder, other, writer, b)

		// The holder loads "old" until released; another instance waits
		// for it, so that the lease is waited for (and a Delete leaves a
		// handoff).
		held := startGatedLoad(context.Background(), holder, "k", "old", "")
		t.Cleanup(held.release)
		<-held.started
		var otherCalls, firstCalls, lateCalls atomic.Int64
		otherGot := readK(other, "other's own load", &otherCalls)
		waitFor(t, 10*time.Second, "the other waiter's acquire", func() bool { return obs.count("acquire") >= 1 })

		// b's subscription goes down and stays down (its connection lock
		// held, it cannot subscribe again).
		b.inv.mu.Lock()
		sub := b.inv.sub
		b.inv.mu.Unlock()
		sub.mu.Lock()
		locked := true
		unlock := func() {
			if locked {
				locked = false
				sub.mu.Unlock()
			}
		}
		t.Cleanup(unlock)
		killPubSub(t, tg)
		waitFor(t, 10*time.Second, "b's subscription down", func() bool { return !b.inv.healthy() })
		waitSubscribed(t, holder, other, writer)

		first := readK(b, "new", &firstCalls) // a waiter of the holder's lease, before the Delete
		<-gate.in
		if err := writer.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		// b never heard of the Delete: a read there joins the flight.
		coalesced := b.Stats().Count(EventCoalesced)
		late := readK(b, "new", &lateCalls)
		waitFor(t, 10*time.Second, "the late read to join the flight", func() bool { return b.Stats().Count(EventCoalesced) > coalesced })

		unlock()
		waitFor(t, 10*time.Second, "b's subscription back", b.inv.healthy)
		close(gate.proceed)
		waitFor(t, 10*time.Second, "b's acquire after the subscription is back", func() bool { return gate.sent.Load() >= 3 })
		held.release()
		if v := <-held.done; v != "old" {
			t.Fatalf("the holder got %q", v)
		}
		if v := <-otherGot; v != "old" && v != "other's own load" {
			t.Errorf("the other waiter (began before the Delete) got %q", v)
		}
		if v := <-late; v == "old" {
			t.Errorf("a read on b that began after the Delete got %q, loaded before it (the first read got %q)", v, <-first)
		}
	})
}

// readK reads "k" from c in the background, loading v (counted in calls)
// if it must; the channel gets the value or the error's text.
func readK(c *Cache[string], v string, calls *atomic.Int64) <-chan string {
	return async(func() (string, error) {
		return c.GetOrLoad(context.Background(), "k", func(context.Context) (string, error) {
			calls.Add(1)
			return v, nil
		})
	})
}

// deleteDuringWait waits for the waiter's first acquire (it waits for
// the holder), has writer Delete "k", and, with woken, waits for the
// waiter's acquire after the Delete's wake.
func deleteDuringWait(t *testing.T, obs *countingObserver, writer *Cache[string], woken bool) {
	t.Helper()
	waitFor(t, 10*time.Second, "the waiter's first acquire", func() bool { return obs.count("acquire") >= 1 })
	if err := writer.Delete(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	if woken {
		waitFor(t, 10*time.Second, "the waiter's acquire after the Delete", func() bool { return obs.count("acquire") >= 2 })
	}
}

// leaseKey is the Redis key of the lease on c's key.
func leaseKey[V any](c *Cache[V], key string) string { return keys.Lease(c.st.Layout.Value(key)) }

// waitersKey is the key that counts the waiters of key's lease.
func waitersKey[V any](c *Cache[V], key string) string { return keys.Waiters(c.st.Layout.Value(key)) }

// acquireGate holds the first Acquire script a client sends after the
// first skip until proceed is closed, and closes in when it has it; with
// reply, it lets the script run in Redis and holds its reply instead.
type acquireGate struct {
	hash        string
	skip        int64
	reply       bool
	sent        atomic.Int64
	once        sync.Once
	in, proceed chan struct{}
}

func (*acquireGate) DialHook(next redis.DialHook) redis.DialHook { return next }

func (g *acquireGate) hold(cmd redis.Cmder) {
	if a := cmd.Args(); len(a) > 1 && cmd.Name() == "evalsha" && a[1] == g.hash && g.sent.Add(1) > g.skip {
		g.once.Do(func() {
			close(g.in)
			<-g.proceed
		})
	}
}

func (g *acquireGate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if g.reply {
			err := next(ctx, cmd)
			g.hold(cmd)
			return err
		}
		g.hold(cmd)
		return next(ctx, cmd)
	}
}

func (g *acquireGate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		var err error
		if g.reply {
			err = next(ctx, cmds)
		}
		for _, cmd := range cmds {
			g.hold(cmd)
		}
		if !g.reply {
			err = next(ctx, cmds)
		}
		return err
	}
}

func newAcquireGate(skip int64, reply bool) *acquireGate {
	return &acquireGate{hash: keys.Acquire.Hash(), skip: skip, reply: reply, in: make(chan struct{}), proceed: make(chan struct{})}
}

// scriptTrips counts the round trips (a command, or a pipeline) in which a
// client sends the script of the given hash.
type scriptTrips struct {
	hash string
	n    atomic.Int64
}

func (*scriptTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *scriptTrips) is(cmd redis.Cmder) bool {
	a := cmd.Args()
	return len(a) > 1 && (cmd.Name() == "evalsha" && a[1] == h.hash || cmd.Name() == "eval")
}

func (h *scriptTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.is(cmd) {
			h.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (h *scriptTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if h.is(cmd) {
				h.n.Add(1)
				break
			}
		}
		return next(ctx, cmds)
	}
}

package faults_test

// The fault suite: "a sick Redis never fails a read, and bad data never
// crashes anything". Every test runs against real redis-server processes;
// network faults are injected by a toxiproxy proxy embedded in the test
// binary (internal/proxy) between the go-redis client and Redis. Each test
// says what it expects in its name and first comment.
//
// Bounds are generous, for -race on two cores: they tell a read that pays a
// timeout or two from one that hangs on a dead socket or a stuck lease, not
// a fast machine from a slow one. The figures themselves are logged.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/faults/internal/proxy"
	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/keys"
	"github.com/tiercache/tiercache/internal/redistest"
)

// 1. Every Redis reply 500ms late, a 50ms read timeout: GetOrLoad returns
// the loader's value every time. While the breaker is closed a read pays
// its Redis timeouts and the loader; once the breaker opens (5 consecutive
// failures) reads take about the loader's time only, and a half-open probe
// costs at most one more timeout.
func TestFaultSlowRedisReadsFallBackToLoader(t *testing.T) {
	const (
		readTimeout = 50 * time.Millisecond
		loadTime    = 20 * time.Millisecond
		slack       = 150 * time.Millisecond // scheduling under -race on 2 cores
	)
	ctx := t.Context()
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	c := newCacheOn[string](t, px.Client(t), faultPrefix(t), tiercache.WithReadTimeout(readTimeout))
	if v, err := c.GetOrLoad(ctx, "warm", constLoad("w", 0)); err != nil || v != "w" {
		t.Fatalf("healthy read = %q, %v", v, err)
	}
	px.Latency(t, 500*time.Millisecond, 0)

	var seq atomic.Int64
	read := func(t *testing.T) time.Duration {
		k := fmt.Sprint("k", seq.Add(1))
		start := time.Now()
		v, err := c.GetOrLoad(ctx, k, constLoad("db:"+k, loadTime))
		d := time.Since(start)
		if err != nil || v != "db:"+k {
			t.Errorf("GetOrLoad(%s) with Redis slow = %q, %v; want the loader's value", k, v, err)
		}
		return d
	}

	// Closed: each read times out on Redis, then loads.
	var closed latencies
	for i := 0; c.Stats().BreakerState != tiercache.BreakerOpen; i++ {
		if i == 10 {
			t.Fatalf("the breaker is still %v after 10 reads against a slow Redis", c.Stats().BreakerState)
		}
		closed.add(read(t))
	}
	// Open: inside OpenFor (1s), no read touches Redis.
	var open latencies
	until := time.Now().Add(600 * time.Millisecond)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(until) {
				open.add(read(t))
			}
		})
	}
	wg.Wait()
	// Then across half-open probes (each fails and reopens the breaker).
	var probing latencies
	until = time.Now().Add(1500 * time.Millisecond)
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(until) {
				probing.add(read(t))
			}
		})
	}
	wg.Wait()

	s := c.Stats()
	t.Logf("500ms Redis latency, %v read timeout, %v loader: breaker closed: %v; open: %v; across probes: %v; redis timeouts %d, breaker rejects %d",
		readTimeout, loadTime, &closed, &open, &probing, s.Count(tiercache.EventRedisTimeout), s.Count(tiercache.EventBreakerReject))
	if p := open.q(.99); p > loadTime+80*time.Millisecond {
		t.Errorf("p99 with the breaker open = %v, want about the loader's %v", p, loadTime)
	}
	if p := probing.q(.99); p > readTimeout+loadTime+slack {
		t.Errorf("p99 across half-open probes = %v", p)
	}
	if m := probing.max(); m > 2*readTimeout+loadTime+slack {
		t.Errorf("a read across half-open probes took %v", m)
	}
	// With the breaker closed, a read should pay one read timeout: the
	// GET's failure tells it Redis is sick, so the lease (and anything
	// else that needs Redis) is not worth trying before the loader.
	if m := closed.max(); m > 3*readTimeout+250*time.Millisecond+loadTime+slack {
		t.Errorf("a read with the breaker closed took %v", m)
	}
	if med := closed.q(.5); med > readTimeout+loadTime+40*time.Millisecond {
		t.Fatalf("a read with the breaker closed took %v (median of %d; read timeout %v, loader %v): "+
			"after the GET timed out the read still goes through the lease's Redis calls (Acquire, and the Release "+
			"of a lease whose Acquire timed out), each paying its own timeout before the loader runs", med, closed.n(), readTimeout, loadTime)
	}
}

// 2. The connections to Redis are reset while the loader runs: the read
// returns the loader's value with no error, and the key is not left
// locked: another instance reads it promptly once Redis is reachable.
func TestFaultConnectionResetMidLoad(t *testing.T) {
	for _, tc := range []struct {
		name string
		// fault breaks the connections while the loader runs; heal, called
		// once the read has returned, repairs what is left.
		fault func(t *testing.T, px *proxy.Proxy) (heal func())
	}{
		{"every connection dropped, Redis reachable again", func(t *testing.T, px *proxy.Proxy) func() {
			px.Disable()
			px.Enable(t)
			return func() {}
		}},
		{"every command reset until the read returned", func(t *testing.T, px *proxy.Proxy) func() {
			return px.ResetPeer(t, 0).Remove
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := redistest.SharedServer(t)
			px := proxy.Start(t, s.Addr)
			prefix := faultPrefix(t)
			a := newCacheOn[string](t, px.Client(t), prefix)
			b := newCacheOn[string](t, directClient(t, s), prefix)
			started, gate := make(chan struct{}), make(chan struct{})
			type result struct {
				v   string
				err error
			}
			done := make(chan result, 1)
			go func() {
				v, err := a.GetOrLoad(ctx, "k", func(context.Context) (string, error) {
					close(started)
					<-gate
					return "loaded", nil
				})
				done <- result{v, err}
			}()
			redistest.Receive(t, started, 5*time.Second, "the loader started")
			heal := tc.fault(t, px)
			close(gate)
			select {
			case r := <-done:
				if r.err != nil || r.v != "loaded" {
					t.Fatalf("GetOrLoad across a connection reset = %q, %v; want the loader's value", r.v, r.err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("GetOrLoad did not return after the connection reset")
			}
			heal()

			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			start := time.Now()
			v, err := b.GetOrLoad(rctx, "k", constLoad("reloaded", 0))
			d := time.Since(start)
			t.Logf("next read from another instance: %q, %v in %v", v, err, d)
			if err != nil {
				leaseTTL, _ := s.Client(t).PTTL(ctx, keys.Lease(valueKey(prefix, "k"))).Result()
				t.Fatalf("after a fill failed on a reset connection, the key stays leased (lease PTTL now %v): "+
					"another instance's read waited %v and failed with %v", leaseTTL, d, err)
			}
			if v != "loaded" && v != "reloaded" {
				t.Fatalf("next read = %q", v)
			}
		})
	}
}

// 3. Redis is stopped, then restarted empty. Reads keep succeeding through
// the outage (from the loader), the clients reconnect, the L1 is flushed
// when the subscription comes back, a value written after the restart is
// seen by the other instance, and no instance serves the value from before
// the outage past the L1 max TTL.
func TestFaultRedisRestartEmpty(t *testing.T) {
	const l1TTL = 500 * time.Millisecond
	ctx := t.Context()
	s := redistest.StartServer(t)
	prefix := faultPrefix(t)
	opts := []tiercache.Option{tiercache.WithL1(1000), tiercache.WithL1TTL(l1TTL), tiercache.WithHealthCheck(200 * time.Millisecond)}
	a := newCacheOn[string](t, directClient(t, s), prefix, opts...)
	b := newCacheOn[string](t, directClient(t, s), prefix, opts...)
	// g is b with L1 entries that may live an hour, also while the
	// subscription is down: it holds the entry planted in the gap below.
	g := newCacheOn[string](t, directClient(t, s), prefix,
		append(slices.Clip(opts), tiercache.WithL1TTL(time.Hour), tiercache.WithL1OutageTTL(time.Hour))...)
	waitSubscribed(t, a, b, g)

	if err := a.Set(ctx, "k", "v1"); err != nil {
		t.Fatal(err)
	}
	// a's invalidation must reach b before b reads, or it drops the copy.
	waitFor(t, time.Second, "b received a's invalidation", func() bool {
		return b.Stats().Count(tiercache.EventInvalidationReceived) > 0
	})
	if v, err := b.Get(ctx, "k"); err != nil || v != "v1" {
		t.Fatalf("b.Get = %q, %v", v, err)
	}
	// Does b's L1 hold v1 now? Then the next Get is an L1 hit on v1.
	if v, hit, err := getL1(ctx, b, "k"); !hit || err != nil || v != "v1" {
		t.Fatalf("b's L1 does not hold v1 (the next Get: %q, %v, L1 hit %v)", v, err, hit)
	}
	flushes := b.Stats().Count(tiercache.EventL1Flush)

	s.Stop()
	stopped := time.Now()
	// v1 may be served from L1 for at most the L1 max TTL after Redis went
	// away (in fact until the subscription is noticed lost).
	staleOK := func() bool { return time.Since(stopped) < l1TTL }
	var outage latencies
	var failed, stale atomic.Int64
	check := func(v string, err error, key string, d time.Duration) {
		outage.add(d)
		switch {
		case err != nil:
			failed.Add(1)
			t.Errorf("read of %s during the outage failed: %v", key, err)
		case v == "v1" && !staleOK():
			stale.Add(1)
		}
	}
	for i := 0; time.Since(stopped) < 1500*time.Millisecond; i++ {
		start := time.Now()
		v, err := b.GetOrLoad(ctx, "k", constLoad("db", time.Millisecond))
		check(v, err, "k", time.Since(start))
		k := fmt.Sprint("other", i)
		start = time.Now()
		v, err = b.GetOrLoad(ctx, k, constLoad("db", time.Millisecond))
		check(v, err, k, time.Since(start))
		time.Sleep(5 * time.Millisecond)
	}
	if b.Stats().Subscribed || b.Stats().Count(tiercache.EventL1Flush) == flushes {
		t.Fatal("b did not notice that its subscription was lost")
	}
	if stale.Load() > 0 {
		t.Errorf("%d reads served v1 more than the L1 max TTL after Redis went away", stale.Load())
	}
	t.Logf("reads during the outage: %v; failed %d", &outage, failed.Load())
	if m := outage.max(); m > time.Second {
		t.Errorf("a read during the outage took %v", m)
	}

	// Plant an L1 entry just after a failed resubscription, as if a read
	// had filled it while no invalidation could arrive: the flush on
	// resubscribing must drop it. The entry is planted the way a read
	// plants it: a GetOrLoad while Redis is down, whose loaded value Redis
	// cannot take, so that L1 keeps it for the outage TTL. It goes into g,
	// not b: b's L1 keeps nothing past its 500ms L1 TTL, less than the
	// subscriber's backoff (a second by now) before it resubscribes, so
	// there the entry would be gone by itself; in g it lives an hour, and
	// only a flush drops it.
	var lost uint64
	for try := 1; ; try++ {
		lost = g.Stats().Count(tiercache.EventL1Flush)
		waitFor(t, 5*time.Second, "a failed resubscription", func() bool { return g.Stats().Count(tiercache.EventL1Flush) > lost })
		lost = g.Stats().Count(tiercache.EventL1Flush)
		if v, err := g.GetOrLoad(ctx, "planted", constLoad("gap", 0)); err != nil || v != "gap" {
			t.Fatalf("GetOrLoad during the outage = %q, %v", v, err)
		}
		// Planted if the next Get is an L1 hit (Redis is down: only L1
		// can answer it).
		v, hit, err := getL1(ctx, g, "planted")
		if g.Stats().Count(tiercache.EventL1Flush) > lost {
			// Another failed resubscription flushed L1 meanwhile.
			if try == 5 {
				t.Fatal("every try to plant an L1 entry in the gap was flushed by another failed resubscription")
			}
			continue
		}
		if !hit || err != nil || v != "gap" {
			t.Fatalf("a value loaded while Redis is down was not kept in L1 (the next Get: %q, %v, L1 hit %v)", v, err, hit)
		}
		break
	}
	s.Restart(t)
	back := time.Now()
	waitFor(t, 5*time.Second, "subscriptions back after the restart", func() bool {
		return a.Stats().Subscribed && b.Stats().Subscribed && g.Stats().Subscribed
	})
	resub := time.Since(back)
	// Redis restarted empty: a Get of "planted" that finds it is an L1 hit.
	if v, hit, _ := getL1(ctx, g, "planted"); hit {
		t.Errorf("an L1 entry from the gap (%q) survived the resubscription: L1 not flushed when the subscription came back", v)
	} else if g.Stats().Count(tiercache.EventL1Flush) > lost {
		t.Log("inconclusive: another resubscription failed after the entry was planted")
	}
	// Redis restarted empty: nobody may serve v1.
	for _, x := range []*tiercache.Cache[string]{a, b} {
		if v, err := x.Get(ctx, "k"); err == nil || v == "v1" {
			t.Fatalf("after the restart Get = %q, %v; want a miss", v, err)
		}
	}
	// Writes resume once the breaker lets them through.
	recv := b.Stats().Count(tiercache.EventInvalidationReceived)
	waitFor(t, 5*time.Second, "Set succeeds after the restart", func() bool {
		return a.Set(ctx, "k", "v2") == nil
	})
	waitFor(t, time.Second, "b sees v2", func() bool {
		v, err := b.GetOrLoad(ctx, "k", constLoad("db", 0))
		if err != nil || v == "v1" {
			t.Fatalf("b read %q, %v after v2 was written", v, err)
		}
		return v == "v2"
	})
	// And invalidation works again: once b holds v2 in L1, a writes v3 and
	// b sees it at once.
	waitFor(t, time.Second, "b received the invalidation of v2", func() bool {
		return b.Stats().Count(tiercache.EventInvalidationReceived) > recv
	})
	if v, err := b.Get(ctx, "k"); err != nil || v != "v2" {
		t.Fatalf("b.Get = %q, %v", v, err)
	}
	// Did b's L1 take v2? Then the next Get is an L1 hit on v2.
	if v, hit, err := getL1(ctx, b, "k"); !hit || err != nil || v != "v2" {
		t.Fatalf("b's L1 did not take v2 (the next Get: %q, %v, L1 hit %v)", v, err, hit)
	}
	if err := a.Set(ctx, "k", "v3"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 200*time.Millisecond, "b sees v3 through invalidation", func() bool {
		v, _ := b.Get(ctx, "k")
		return v == "v3"
	})
	t.Logf("subscriptions back %v after the restart", resub)
}

// 4. The subscription's connection stalls silently (every byte dropped,
// nothing closed): with WithHealthCheck(200ms) the stall is noticed, L1
// flushed and the subscription marked down, within two intervals plus
// slack; once the network heals the subscription comes back.
func TestFaultStalledSubscriptionNoticed(t *testing.T) {
	const interval = 200 * time.Millisecond
	ctx := t.Context()
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	c := newCacheOn[string](t, px.Client(t), faultPrefix(t), tiercache.WithL1(100), tiercache.WithHealthCheck(interval))
	waitSubscribed(t, c)
	if err := c.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	flushes := c.Stats().Count(tiercache.EventL1Flush)
	stall := px.Blackhole(t)
	start := time.Now()
	waitFor(t, 4*interval+time.Second, "stalled subscription noticed", func() bool {
		return !c.Stats().Subscribed && c.Stats().Count(tiercache.EventL1Flush) > flushes
	})
	noticed := time.Since(start)
	t.Logf("stall noticed after %v (health check %v)", noticed, interval)
	// Twice the interval on an idle machine (the figure is logged); the
	// bound tells the health check from the L1 TTL (30s) with room for a
	// loaded one.
	if noticed > 2*interval+2*time.Second {
		t.Errorf("stall noticed after %v, want within 2 x %v plus slack", noticed, interval)
	}
	// Does L1 still hold k? Then a Get is an L1 hit (Redis, blackholed,
	// cannot answer it: a miss costs the read timeout and fails).
	if v, hit, _ := getL1(ctx, c, "k"); hit {
		t.Errorf("L1 still holds k (%q) after the stall was noticed", v)
	}
	stall.Remove()
	waitFor(t, 5*time.Second, "subscription back after the stall", subscribed(c))
}

// 5. A cluster master is killed while a key it owns is being loaded: that
// read returns the loader's value, reads of every key keep succeeding
// through the failover (from the loader while the slot is down), and
// writes resume once a replica is promoted (within 15s).
func TestFaultClusterMasterKilled(t *testing.T) {
	ctx := t.Context()
	cl := redistest.StartCluster(t, 3, 1)
	// After the client is closed, go-redis's redial loop for the dead node
	// notices only on its next attempt, up to a second later.
	t.Cleanup(func() { waitGoroutinesGone(t, "(*ConnPool).tryDial", 3*time.Second) })
	cc := cl.Client(t, func(o *redis.ClusterOptions) { o.ContextTimeoutEnabled = true })
	prefix := faultPrefix(t)
	c := newCacheOn[string](t, cc, prefix)
	const key = "k"
	vk := valueKey(prefix, key)
	victim := cl.MasterForKey(ctx, vk)
	if victim == nil {
		t.Fatal("no master for the key")
	}
	started, gate := make(chan struct{}), make(chan struct{})
	loaded := make(chan error, 1)
	go func() {
		v, err := c.GetOrLoad(ctx, key, func(context.Context) (string, error) {
			close(started)
			<-gate
			return "v0", nil
		})
		if err == nil && v != "v0" {
			err = fmt.Errorf("got %q", v)
		}
		loaded <- err
	}()
	redistest.Receive(t, started, 5*time.Second, "the loader started")
	victim.Stop()
	killed := time.Now()
	close(gate)
	if err := redistest.Receive(t, loaded, 10*time.Second, "the read whose master died"); err != nil {
		t.Fatalf("the read whose master died during its load: %v", err)
	}

	// Readers of the dead slot's key and of 30 other keys, until writes
	// to the dead slot work again.
	var lat latencies
	var reads, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				k := key
				if i%2 == 1 {
					k = fmt.Sprint("o", (g*31+i)%30)
				}
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				start := time.Now()
				_, err := c.GetOrLoad(rctx, k, constLoad("db:"+k, time.Millisecond))
				lat.add(time.Since(start))
				cancel()
				reads.Add(1)
				if err != nil {
					failed.Add(1)
					t.Errorf("read of %s during the failover: %v", k, err)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	// Writes to the dead slot resume once a replica is promoted and the
	// client knows it. go-redis v9.23 reloads the slot map only on MOVED
	// or READONLY, or every ClusterStateReloadInterval (60s by default):
	// a dead master answers neither, so the cache has to tell it.
	var promoted, resumed time.Duration
	var setErr error
	staleTopology := false
	deadline := time.Now().Add(15 * time.Second)
	for {
		if setErr = c.Set(ctx, key, "v1"); setErr == nil {
			resumed = time.Since(killed)
			break
		}
		if promoted == 0 {
			if m := cl.MasterForKey(ctx, vk); m != nil && m != victim {
				promoted = time.Since(killed)
			}
		} else if time.Since(killed) > promoted+3*time.Second && !staleTopology {
			// The fix would do this inside the cache.
			staleTopology = true
			cc.ReloadState(ctx)
		}
		if time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Keep reading a little after the writes resumed.
	time.Sleep(300 * time.Millisecond)
	close(stop)
	wg.Wait()
	if setErr != nil {
		t.Fatalf("Set still fails %v after the master was killed (replica promoted after %v): %v", time.Since(killed), promoted, setErr)
	}
	waitFor(t, 2*time.Second, "the written value is read back", func() bool {
		v, err := c.Get(ctx, key)
		return err == nil && v == "v1"
	})
	s := c.Stats()
	t.Logf("replica promoted %v after the master was killed, writes resumed after %v; %d reads, %d failed, latency %v; redis errors %d, breaker rejects %d",
		promoted.Round(time.Millisecond), resumed.Round(time.Millisecond), reads.Load(), failed.Load(), &lat,
		s.Count(tiercache.EventRedisError), s.Count(tiercache.EventBreakerReject))
	if staleTopology {
		t.Fatalf("writes to the dead master's slots kept failing more than 3s after a replica was promoted (%v after the kill), "+
			"until the cluster client's slot map was reloaded by hand: the cache never asks go-redis to reload it", promoted)
	}
	if m := lat.max(); m > 3*time.Second {
		t.Errorf("a read during the failover took %v", m)
	}
}

// 6. FLUSHALL (and SCRIPT FLUSH) while an instance holds a lease and
// another waits on it: the waiter takes the key over at once, the holder's
// fill is refused or lands, and no key stays locked. FLUSHALL while values
// exist: they are misses, loaded again, never errors.
func TestFaultFlushAll(t *testing.T) {
	ctx := t.Context()
	s := redistest.StartServer(t)
	admin := s.Client(t)
	prefix := faultPrefix(t)
	a := newCacheOn[string](t, directClient(t, s), prefix)
	b := newCacheOn[string](t, directClient(t, s), prefix)
	lease := keys.Lease(valueKey(prefix, "k"))

	started, gate := make(chan struct{}), make(chan struct{})
	aDone := make(chan string, 1)
	go func() {
		v, err := a.GetOrLoad(ctx, "k", func(context.Context) (string, error) {
			close(started)
			<-gate
			return "from a", nil
		})
		if err != nil {
			v = "error: " + err.Error()
		}
		aDone <- v
	}()
	redistest.Receive(t, started, 5*time.Second, "a's loader started")
	if n, _ := admin.Exists(ctx, lease).Result(); n != 1 {
		t.Fatal("a holds no lease while it loads")
	}
	// b waits on a's lease.
	bDone := make(chan string, 1)
	go func() {
		v, err := b.GetOrLoad(ctx, "k", constLoad("from b", 0))
		if err != nil {
			v = "error: " + err.Error()
		}
		bDone <- v
	}()
	waitFor(t, 2*time.Second, "b waiting on a's lease", func() bool {
		return b.Stats().L2Misses > 0
	})
	time.Sleep(20 * time.Millisecond) // let b poll the lease at least once
	if err := admin.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := admin.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	flushed := time.Now()
	select {
	case v := <-bDone:
		if v != "from b" {
			t.Fatalf("b = %q", v)
		}
		t.Logf("b took the key over %v after FLUSHALL", time.Since(flushed))
	case <-time.After(time.Second):
		t.Fatal("b still waits on a lease that FLUSHALL removed")
	}
	close(gate)
	if v := redistest.Receive(t, aDone, 5*time.Second, "a's read"); v != "from a" {
		t.Fatalf("a = %q", v)
	}
	if n := a.Stats().Count(tiercache.EventFillRefused); n != 1 {
		t.Errorf("a's fill after FLUSHALL: refused %d times, want 1 (b's value is newer)", n)
	}
	if n, _ := admin.Exists(ctx, lease).Result(); n != 0 {
		t.Error("the lease is still there")
	}
	for _, x := range []*tiercache.Cache[string]{a, b} {
		rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		v, err := x.GetOrLoad(rctx, "k", constLoad("again", 0))
		cancel()
		if err != nil || v != "from b" {
			t.Fatalf("read after FLUSHALL = %q, %v; want b's value", v, err)
		}
	}

	// FLUSHALL under existing values.
	items := map[string]string{}
	ks := make([]string, 50)
	for i := range ks {
		ks[i] = fmt.Sprint("e", i)
		items[ks[i]] = "old"
	}
	if err := a.SetMany(ctx, items); err != nil {
		t.Fatal(err)
	}
	if err := admin.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Get(ctx, "e0"); !errors.Is(err, tiercache.ErrMiss) || errors.Is(err, tiercache.ErrRedis) {
		t.Fatalf("Get after FLUSHALL = %v, want a plain miss", err)
	}
	if got, err := b.GetMany(ctx, ks); err != nil || len(got) != 0 {
		t.Fatalf("GetMany after FLUSHALL = %d values, %v", len(got), err)
	}
	got, err := b.GetOrLoadMany(ctx, ks, func(_ context.Context, ks []string) (map[string]string, error) {
		out := map[string]string{}
		for _, k := range ks {
			out[k] = "new"
		}
		return out, nil
	})
	if err != nil || len(got) != len(ks) || got["e7"] != "new" {
		t.Fatalf("GetOrLoadMany after FLUSHALL = %d values, %v", len(got), err)
	}
	if v, err := a.Get(ctx, "e7"); err != nil || v != "new" {
		t.Fatalf("a reads %q, %v after b reloaded", v, err)
	}
}

// 7. A Delete whose DEL cannot reach Redis returns an error wrapping
// ErrRedis, and the local L1 copy is gone anyway; so is it after a Set that
// failed. The value is still in Redis, so a retried Delete removes it.
func TestFaultDeleteFailureClearsL1(t *testing.T) {
	ctx := t.Context()
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	c := newCacheOn[string](t, px.Client(t), faultPrefix(t), tiercache.WithL1(100))
	waitSubscribed(t, c)
	if err := c.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, "s", "v"); err != nil {
		t.Fatal(err)
	}
	for _, fault := range []string{"proxy down", "blackhole"} {
		t.Run(fault, func(t *testing.T) {
			// Does L1 hold k? Then a Get is an L1 hit on it.
			if v, hit, err := getL1(ctx, c, "k"); !hit || err != nil || v != "v" {
				t.Fatalf("L1 does not hold k (a Get: %q, %v, L1 hit %v)", v, err, hit)
			}
			var heal func()
			if fault == "proxy down" {
				px.Disable()
				heal = func() { px.Enable(t) }
			} else {
				heal = px.Blackhole(t).Remove
			}
			start := time.Now()
			err := c.Delete(ctx, "k")
			t.Logf("Delete with Redis unreachable (%s): %v in %v", fault, err, time.Since(start))
			if !errors.Is(err, tiercache.ErrRedis) {
				t.Fatalf("Delete = %v, want an error wrapping ErrRedis", err)
			}
			// Redis is unreachable: a Get of k that answers is an L1 hit.
			if v, hit, _ := getL1(ctx, c, "k"); hit {
				t.Fatalf("the L1 copy (%q) survived the failed Delete", v)
			}
			if err := c.Set(ctx, "s", "v2"); !errors.Is(err, tiercache.ErrRedis) {
				t.Fatalf("Set = %v, want an error wrapping ErrRedis", err)
			}
			if v, hit, _ := getL1(ctx, c, "s"); hit {
				t.Fatalf("L1 holds %q for s after a failed Set", v)
			}
			heal()
			// The DEL did not happen: the value is still in Redis, and L1
			// is refilled from there; a retried Delete goes through.
			waitFor(t, 5*time.Second, "Get works again", func() bool {
				v, err := c.Get(ctx, "k")
				return err == nil && v == "v"
			})
			waitFor(t, 5*time.Second, "the retried Delete succeeds", func() bool {
				return c.Delete(ctx, "k") == nil
			})
			if _, err := c.Get(ctx, "k"); !errors.Is(err, tiercache.ErrMiss) || errors.Is(err, tiercache.ErrRedis) {
				t.Fatalf("Get after the retried Delete = %v", err)
			}
			if err := c.Set(ctx, "k", "v"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// 8. 10,000 random keys under jittery latency, many goroutines, Set then
// GetOrLoad / Get / GetMany: every value read carries its own key. A
// reply delivered for another key would show as a wrong value or, caught
// by the frame's key check, as a corrupt entry: there must be neither.
func TestFaultEveryValueMatchesItsKey(t *testing.T) {
	type keyed struct {
		Key string `json:"k"`
		N   int    `json:"n"`
	}
	n, workers := 10_000, 32
	if testing.Short() {
		n = 2000
	}
	ctx := t.Context()
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	px.Latency(t, 2*time.Millisecond, 2*time.Millisecond)
	c := newCacheOn[keyed](t, px.Client(t, func(o *redis.Options) { o.PoolSize = 16 }), faultPrefix(t),
		tiercache.WithReadTimeout(2*time.Second), tiercache.WithWriteTimeout(2*time.Second))
	alphabet := "abcdefghijklmnopqrstuvwxyz0123456789:{}-_ "
	randKey := func(i int) string {
		b := make([]byte, 1+rand.IntN(24))
		for j := range b {
			b[j] = alphabet[rand.IntN(len(alphabet))]
		}
		return fmt.Sprintf("%s#%d", b, i)
	}
	jobs := make(chan int)
	var wrong, fallbacks, reads atomic.Int64
	checkV := func(k string, i int, v keyed, how string) {
		reads.Add(1)
		if v.Key != k {
			wrong.Add(1)
			t.Errorf("%s(%q) returned the value of %q", how, k, v.Key)
		} else if v.N != i {
			fallbacks.Add(1) // the loader's value: Redis did not answer in time
		}
	}
	var wg sync.WaitGroup
	start := time.Now()
	for range workers {
		wg.Go(func() {
			var batch []string
			idx := map[string]int{}
			for i := range jobs {
				k := randKey(i)
				if err := c.Set(ctx, k, keyed{k, i}); err != nil {
					t.Errorf("Set(%q): %v", k, err)
					continue
				}
				switch i % 3 {
				case 0:
					v, err := c.GetOrLoad(ctx, k, func(context.Context) (keyed, error) { return keyed{k, -1}, nil })
					if err != nil {
						t.Errorf("GetOrLoad(%q): %v", k, err)
						continue
					}
					checkV(k, i, v, "GetOrLoad")
				case 1:
					v, err := c.Get(ctx, k)
					if err != nil {
						t.Errorf("Get(%q): %v", k, err)
						continue
					}
					checkV(k, i, v, "Get")
				case 2:
					batch = append(batch, k)
					idx[k] = i
					if len(batch) < 16 {
						continue
					}
					got, err := c.GetMany(ctx, batch)
					if err != nil || len(got) != len(batch) {
						t.Errorf("GetMany: %d of %d, %v", len(got), len(batch), err)
					}
					for k, v := range got {
						checkV(k, idx[k], v, "GetMany")
					}
					batch = batch[:0]
					clear(idx)
				}
			}
		})
	}
	for i := range n {
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	s := c.Stats()
	t.Logf("%d keys, %d reads in %v under 2±2ms latency: %d wrong, %d from the loader, %d corrupt",
		n, reads.Load(), time.Since(start).Round(time.Millisecond), wrong.Load(), fallbacks.Load(), s.Count(tiercache.EventCorrupt))
	if s.Count(tiercache.EventCorrupt) != 0 {
		t.Errorf("%d replies failed the frame check (a reply for another key?)", s.Count(tiercache.EventCorrupt))
	}
}

// 9. A loader that panics or outlives the load timeout, with waiters in
// its own instance and in another one (waiting on its lease): every
// waiter in the instance gets the *PanicError or context.DeadlineExceeded,
// the other instance takes the key over at once instead of waiting out the
// lease, and nothing stays locked: the next read loads promptly.
func TestFaultLoaderPanicAndTimeout(t *testing.T) {
	for _, tc := range []struct {
		name  string
		load  tiercache.LoadFunc[string]
		check func(error) bool
	}{
		{"panic", func(context.Context) (string, error) {
			time.Sleep(50 * time.Millisecond)
			panic("loader bug")
		}, func(err error) bool {
			var pe *tiercache.PanicError
			return errors.Is(err, tiercache.ErrLoaderPanic) && errors.As(err, &pe) && pe.Value == "loader bug" &&
				bytes.Contains(pe.Stack, []byte("resilience_test.go"))
		}},
		{"timeout", func(ctx context.Context) (string, error) {
			<-ctx.Done()
			return "", ctx.Err()
		}, func(err error) bool { return errors.Is(err, context.DeadlineExceeded) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := t.Context()
			s := redistest.SharedServer(t)
			prefix := faultPrefix(t)
			// b's loads (and so its wait on a's lease) may take 2s; a's 100ms.
			a := newCacheOn[string](t, directClient(t, s), prefix, tiercache.WithLoadTimeout(100*time.Millisecond), tiercache.WithL1(100))
			b := newCacheOn[string](t, directClient(t, s), prefix, tiercache.WithLoadTimeout(2*time.Second), tiercache.WithL1(100))
			const waiters = 20
			type result struct {
				v   string
				err error
			}
			results := make(chan result, waiters)
			var wg sync.WaitGroup
			for range waiters {
				wg.Go(func() {
					v, err := a.GetOrLoad(ctx, "k", tc.load)
					results <- result{v, err}
				})
			}
			// b arrives while a loads: it waits on a's lease.
			admin := directClient(t, s)
			waitFor(t, time.Second, "a holds the lease", func() bool {
				return admin.Exists(ctx, keys.Lease(valueKey(prefix, "k"))).Val() == 1
			})
			bStart := time.Now()
			bv, berr := b.GetOrLoad(ctx, "k", constLoad("from b", 0))
			bTook := time.Since(bStart)
			wg.Wait()
			close(results)
			failed := 0
			for r := range results {
				switch {
				case tc.check(r.err):
					failed++
				case r.err == nil && r.v == "from b":
					// A reader that the loaded machine started after a's
					// load had failed: it did not wait for that load, and
					// rightly reads b's value.
				default:
					t.Fatalf("a waiter got %q, %v", r.v, r.err)
				}
			}
			if failed == 0 {
				t.Fatal("no reader of a got its failed load's error")
			}
			t.Logf("b, waiting on a's lease: %q, %v after %v", bv, berr, bTook)
			if bTook > time.Second {
				t.Fatalf("after a loader %s, another instance waited on the lease for %v and got %q, %v: "+
					"the failed load did not release its lease", tc.name, bTook, bv, berr)
			}
			if berr != nil || bv != "from b" {
				t.Fatalf("b = %q, %v", bv, berr)
			}
			// Nothing locked: the next read in a returns promptly.
			rctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			if v, err := a.GetOrLoad(rctx, "k", constLoad("again", 0)); err != nil {
				t.Fatalf("the key stayed locked: %v", err)
			} else if v != "from b" {
				t.Fatalf("a reads %q, want b's value", v)
			}
		})
	}
}

// 10. Pool exhaustion under a burst: a client with 2 connections and a
// 10ms pool timeout, Redis 20ms away, 200 goroutines reading at once.
// Every read succeeds (from Redis or, when no connection is free in time,
// from the loader), none waits long, nothing deadlocks.
func TestFaultPoolExhaustion(t *testing.T) {
	ctx := t.Context()
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	px.Latency(t, 20*time.Millisecond, 0)
	rdb := px.Client(t, func(o *redis.Options) { o.PoolSize = 2; o.PoolTimeout = 10 * time.Millisecond })
	c := newCacheOn[string](t, rdb, faultPrefix(t))
	var lat latencies
	var failed atomic.Int64
	var wg sync.WaitGroup
	begin := make(chan struct{})
	for g := range 200 {
		wg.Go(func() {
			<-begin
			for i := range 5 {
				k := fmt.Sprint("p", (g*5+i)%300)
				start := time.Now()
				v, err := c.GetOrLoad(ctx, k, constLoad("db:"+k, time.Millisecond))
				lat.add(time.Since(start))
				if err != nil || v != "db:"+k {
					failed.Add(1)
					t.Errorf("GetOrLoad(%s) = %q, %v", k, v, err)
				}
			}
		})
	}
	start := time.Now()
	close(begin)
	if !waitDone(t, &wg, 30*time.Second) {
		t.Fatal("the burst did not finish: deadlock?")
	}
	s := c.Stats()
	t.Logf("1000 reads by 200 goroutines over 2 connections in %v: %v; failed %d; redis errors %d (timeouts %d), breaker rejects %d, loads %d",
		time.Since(start).Round(time.Millisecond), &lat, failed.Load(), s.Count(tiercache.EventRedisError), s.Count(tiercache.EventRedisTimeout),
		s.Count(tiercache.EventBreakerReject), s.Loads)
	if m := lat.max(); m > 3*time.Second {
		t.Errorf("a read waited %v", m)
	}
}

// 11. Close while calls are in flight through a slow Redis (300ms away):
// every call returns soon after Close (with its result or an error), Close
// itself does not hang, and every goroutine stops (TestMain runs goleak).
func TestFaultCloseInFlight(t *testing.T) {
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	px.Latency(t, 300*time.Millisecond, 0)
	c, err := tiercache.New[string](px.Client(t), tiercache.WithPrefix(faultPrefix(t)), tiercache.WithL1(1000),
		tiercache.WithReadTimeout(time.Second), tiercache.WithWriteTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	waitSubscribed(t, c)

	var closedAt atomic.Int64 // unix ns, 0 while open
	var late latencies        // how long after Close each call returned
	var stuckMu sync.Mutex
	stuck := map[string]int{} // calls that ended only at their deadline, by method
	// Each call has a deadline well past anything legitimate, so that a
	// call that never returns on its own still ends and leaks nothing.
	const callLimit = 4 * time.Second
	op := func(name string, f func(ctx context.Context) error) func() {
		return func() {
			for {
				ctx, cancel := context.WithTimeout(context.Background(), callLimit)
				start := time.Now()
				_ = f(ctx)
				took := time.Since(start)
				cancel()
				if at := closedAt.Load(); at != 0 {
					late.add(time.Since(time.Unix(0, at)))
					if took >= callLimit-100*time.Millisecond {
						stuckMu.Lock()
						stuck[name]++
						stuckMu.Unlock()
					}
					return
				}
			}
		}
	}
	slowLoad := func(ctx context.Context) (string, error) {
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(2 * time.Second):
			return "v", nil
		}
	}
	var wg sync.WaitGroup
	var n atomic.Int64
	for g := range 60 {
		k := fmt.Sprint("c", g%10)
		var f func(ctx context.Context) error
		name := []string{"GetOrLoad", "Set", "Get", "GetOrLoadMany", "Delete", "Refresh"}[g%6]
		switch g % 6 {
		case 0:
			f = func(ctx context.Context) error { _, err := c.GetOrLoad(ctx, k, slowLoad); return err }
		case 1:
			f = func(ctx context.Context) error { return c.Set(ctx, fmt.Sprint(k, n.Add(1)), "v") }
		case 2:
			f = func(ctx context.Context) error { _, err := c.Get(ctx, k); return err }
		case 3:
			f = func(ctx context.Context) error {
				_, err := c.GetOrLoadMany(ctx, []string{k, k + "x"}, func(ctx context.Context, ks []string) (map[string]string, error) {
					_, err := slowLoad(ctx)
					return map[string]string{}, err
				})
				return err
			}
		case 4:
			f = func(ctx context.Context) error { return c.Delete(ctx, fmt.Sprint(k, n.Add(1))) }
		case 5:
			f = func(ctx context.Context) error { _, err := c.Refresh(ctx, k, slowLoad); return err }
		}
		wg.Go(op(name, f))
	}
	time.Sleep(700 * time.Millisecond)
	start := time.Now()
	closedAt.Store(start.UnixNano())
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	closeTook := time.Since(start)
	if !waitDone(t, &wg, callLimit+2*time.Second) {
		t.Fatal("calls still running after Close")
	}
	t.Logf("Close took %v; calls returned after Close: %v; stuck until their deadline: %v", closeTook, &late, stuck)
	if closeTook > 2*time.Second {
		t.Errorf("Close took %v", closeTook)
	}
	if len(stuck) > 0 {
		t.Fatalf("calls in flight at Close never returned on their own (they ended at their %v deadline): %v", callLimit, stuck)
	}
	if m := late.max(); m > 2*time.Second {
		t.Errorf("a call returned %v after Close", m)
	}
}

// 11b. Close while Redis is blackholed (the subscriber is reconnecting to a
// Redis that never answers): Close returns promptly.
func TestFaultCloseWhileBlackholed(t *testing.T) {
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	// A 1s socket timeout (3s by default) bounds what this test waits when
	// Close does wait on the network.
	rdb := px.Client(t, func(o *redis.Options) { o.ReadTimeout = time.Second })
	c, err := tiercache.New[string](rdb, tiercache.WithPrefix(faultPrefix(t)), tiercache.WithL1(1000), tiercache.WithHealthCheck(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	waitSubscribed(t, c)
	px.Blackhole(t)
	flushes := c.Stats().Count(tiercache.EventL1Flush)
	waitFor(t, 2*time.Second, "stall noticed", func() bool { return c.Stats().Count(tiercache.EventL1Flush) > flushes })
	time.Sleep(50 * time.Millisecond) // the subscriber is now resubscribing into the void
	start := time.Now()
	_ = c.Close()
	took := time.Since(start)
	t.Logf("Close with Redis blackholed took %v", took)
	// The subscriber's network calls run on a context that Close cancels,
	// outside its lock; but go-redis's connection handshake (HELLO) does not
	// look at that context, so Close can wait for it up to the client's own
	// ReadTimeout (1s here). Before the fix Close took the client's full
	// dial-and-retry time (3s here, 15s with a default client).
	if took > 1500*time.Millisecond {
		t.Errorf("Close with Redis blackholed took %v, more than the client's 1s socket timeout", took)
	}
}

// 12. Bytes no tiercache wrote, under the cache's keys: a value over
// WithMaxValueSize (raw junk, and compression bombs in valid frames) and
// random garbage under 100 keys. Every one is a counted miss, never a
// panic or a huge allocation; GetMany returns nothing for them without an
// error; GetOrLoad and GetOrLoadMany load and overwrite them promptly.
func TestFaultForeignBytes(t *testing.T) {
	const maxSize = 64 << 10
	ctx := t.Context()
	s := redistest.SharedServer(t)
	rdb := directClient(t, s)
	prefix := faultPrefix(t)
	c := newCacheOn[string](t, rdb, prefix, tiercache.WithMaxValueSize(maxSize), tiercache.WithLoadTimeout(2*time.Second),
		tiercache.WithCompression(tiercache.Zstd, 1<<20))

	frame := func(k string, flags uint8, payload []byte) []byte {
		now := time.Now()
		env := envelope.Envelope{Flags: flags, Codec: tiercache.JSON.ID(), WrittenAt: now.UnixMicro(),
			SoftExpiry: now.Add(time.Hour).UnixMicro(), KeyHash: keys.Hash(valueKey(prefix, k)), Payload: payload}
		b, err := envelope.Append(nil, &env)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	zeros := make([]byte, 16<<20)
	zenc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	zbomb := zenc.EncodeAll(zeros, nil)
	_ = zenc.Close()
	s2bomb := s2.Encode(nil, zeros)
	junk := make([]byte, 1<<20)
	for i := range junk {
		junk[i] = byte(rand.Uint32())
	}
	var compressed envelope.Envelope
	compressed.SetCompression(envelope.CompressionZstd)
	zflags := compressed.Flags
	compressed.SetCompression(envelope.CompressionS2)
	s2flags := compressed.Flags

	t.Run("oversized", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			b    func(k string) []byte
		}{
			{"zstd bomb: 16MiB of zeros in a valid frame", func(k string) []byte { return frame(k, zflags, zbomb) }},
			{"s2 bomb: 16MiB of zeros in a valid frame", func(k string) []byte { return frame(k, s2flags, s2bomb) }},
			{"1MiB of junk", func(string) []byte { return junk }},
		} {
			t.Run(tc.name, func(t *testing.T) {
				k := "big:" + tc.name
				b := tc.b(k)
				if err := rdb.Set(ctx, valueKey(prefix, k), b, time.Minute).Err(); err != nil {
					t.Fatal(err)
				}
				corrupt := c.Stats().Count(tiercache.EventCorrupt)
				// The read itself holds the stored bytes once or twice; the
				// decoded 16MiB must never be allocated. TotalAlloc counts
				// the whole process: the least of three reads is the read's.
				alloc := uint64(math.MaxUint64)
				for range 3 {
					var before, after runtime.MemStats
					runtime.ReadMemStats(&before)
					_, err := c.Get(ctx, k)
					runtime.ReadMemStats(&after)
					if !errors.Is(err, tiercache.ErrMiss) || errors.Is(err, tiercache.ErrRedis) {
						t.Fatalf("Get = %v, want a miss", err)
					}
					alloc = min(alloc, after.TotalAlloc-before.TotalAlloc)
				}
				if c.Stats().Count(tiercache.EventCorrupt) <= corrupt {
					t.Fatal("the miss was not counted as corrupt")
				}
				if alloc > uint64(3*len(b)+4<<20) {
					t.Errorf("reading a %d-byte stored value allocated %d bytes", len(b), alloc)
				}
				rctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				if v, err := c.GetOrLoad(rctx, k, constLoad("fresh", 0)); err != nil || v != "fresh" {
					t.Fatalf("GetOrLoad over %d bytes of junk = %q, %v: Acquire judges the junk fresh by its \"header\" "+
						"and the forced retry is fooled by its \"write time\"", len(b), v, err)
				}
				if v, err := c.Get(ctx, k); err != nil || v != "fresh" {
					t.Fatalf("the load did not overwrite the oversized value: %q, %v", v, err)
				}
			})
		}
	})

	// Random garbage, 1 to 300 bytes, under 100 keys.
	ks := make([]string, 100)
	garbage := func() {
		for i := range ks {
			ks[i] = fmt.Sprint("g", i)
			b := make([]byte, 1+rand.IntN(300))
			for j := range b {
				b[j] = byte(rand.Uint32())
			}
			if err := rdb.Set(ctx, valueKey(prefix, ks[i]), b, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	batchLoad := func(_ context.Context, ks []string) (map[string]string, error) {
		out := map[string]string{}
		for _, k := range ks {
			out[k] = "db:" + k
		}
		return out, nil
	}
	// A cache of its own, so that loads still busy with the keys above do
	// not count in its statistics.
	prefix = faultPrefix(t)
	c = newCacheOn[string](t, rdb, prefix, tiercache.WithMaxValueSize(maxSize), tiercache.WithLoadTimeout(2*time.Second))
	t.Run("garbage GetMany and GetOrLoadMany", func(t *testing.T) {
		garbage()
		corrupt := c.Stats().Count(tiercache.EventCorrupt)
		got, err := c.GetMany(ctx, ks)
		if err != nil || len(got) != 0 {
			t.Fatalf("GetMany of garbage = %d values, %v; want none, no error", len(got), err)
		}
		if n := c.Stats().Count(tiercache.EventCorrupt) - corrupt; n != 100 {
			t.Fatalf("%d corrupt entries counted, want 100", n)
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		start := time.Now()
		got, err = c.GetOrLoadMany(rctx, ks, batchLoad)
		took := time.Since(start)
		t.Logf("GetOrLoadMany over 100 garbage values: %d values, %v in %v", len(got), err, took)
		if err != nil || len(got) != 100 {
			t.Fatalf("GetOrLoadMany over garbage values returned %d of 100 values and %v after %v: "+
				"garbage whose bytes read as a future write time keep Acquire answering \"fresh\", and loadBatch retries without end", len(got), err, took)
		}
		got, err = c.GetMany(ctx, ks)
		if err != nil || len(got) != 100 || got["g42"] != "db:g42" {
			t.Fatalf("after GetOrLoadMany, GetMany = %d values, %v", len(got), err)
		}
	})
	t.Run("garbage GetOrLoad", func(t *testing.T) {
		garbage()
		var slowest time.Duration
		for i, k := range ks {
			rctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
			start := time.Now()
			v, err := c.GetOrLoad(rctx, k, constLoad("db:"+k, 0))
			slowest = max(slowest, time.Since(start))
			cancel()
			if err != nil || v != "db:"+k {
				raw, _ := rdb.Get(ctx, valueKey(prefix, k)).Bytes()
				t.Fatalf("GetOrLoad over a garbage value (%d bytes) = %q, %v after %d keys went fine: Acquire judges random bytes "+
					"fresh by their \"header\" and the forced retry is fooled by their \"write time\"", len(raw), v, err, i)
			}
		}
		t.Logf("GetOrLoad over 100 garbage values: slowest %v", slowest)
	})
}

// The README figures: Redis blackholed (every byte dropped, nothing
// closed) under 8 concurrent readers. The share of reads that fail (goal
// 0), their latency without a breaker, with the breaker before and after
// it opens, and the time from Redis coming back to the breaker closing.
func TestResilienceFigures(t *testing.T) {
	const (
		readers  = 8
		loadTime = time.Millisecond
	)
	ctx := t.Context()
	s := redistest.SharedServer(t)

	type phase struct {
		closed, halfOpen, open latencies // by the breaker's state when the read began
		reads, fails           atomic.Int64
	}
	// run reads random keys of 1000 from readers goroutines for d.
	run := func(c *tiercache.Cache[string], d time.Duration, p *phase) {
		var wg sync.WaitGroup
		until := time.Now().Add(d)
		for range readers {
			wg.Go(func() {
				for time.Now().Before(until) {
					k := fmt.Sprint("f", rand.IntN(1000))
					state := c.Stats().BreakerState
					start := time.Now()
					_, err := c.GetOrLoad(ctx, k, constLoad("db", loadTime))
					el := time.Since(start)
					p.reads.Add(1)
					if err != nil {
						p.fails.Add(1)
					}
					switch state {
					case tiercache.BreakerOpen:
						p.open.add(el)
					case tiercache.BreakerHalfOpen:
						p.halfOpen.add(el)
					default:
						p.closed.add(el)
					}
				}
			})
		}
		wg.Wait()
	}
	share := func(p *phase) float64 { return float64(p.fails.Load()) / float64(max(p.reads.Load(), 1)) }

	// Healthy baseline, then blackholed without a breaker.
	var healthy, noBreaker phase
	{
		px := proxy.Start(t, s.Addr)
		c := newCacheOn[string](t, px.Client(t), faultPrefix(t), tiercache.WithoutBreaker())
		run(c, 300*time.Millisecond, &healthy)
		px.Blackhole(t)
		run(c, 1500*time.Millisecond, &noBreaker)
	}
	// Blackholed with the default breaker, then healed.
	var withBreaker phase
	px := proxy.Start(t, s.Addr)
	c := newCacheOn[string](t, px.Client(t), faultPrefix(t))
	run(c, 100*time.Millisecond, &phase{}) // warm the pool
	hole := px.Blackhole(t)
	run(c, 2500*time.Millisecond, &withBreaker)
	if c.Stats().BreakerState == tiercache.BreakerClosed {
		t.Fatal("the breaker is closed with Redis blackholed")
	}
	hole.Remove()
	healed := time.Now()
	var recovering phase
	var closedAfter time.Duration
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(c, 4*time.Second, &recovering)
	}()
	for closedAfter == 0 && time.Since(healed) < 4*time.Second {
		if c.Stats().BreakerState == tiercache.BreakerClosed {
			closedAfter = time.Since(healed)
		}
		time.Sleep(time.Millisecond)
	}
	<-done

	rt := 100 * time.Millisecond
	t.Logf("README figures (Redis blackholed, %d readers, %v loader, %v read timeout, breaker 5 failures / 1s open):", readers, loadTime, rt)
	t.Logf("  healthy Redis:             failed %.2f%% of %d reads; %v", 100*share(&healthy), healthy.reads.Load(), &healthy.closed)
	t.Logf("  blackholed, no breaker:    failed %.2f%% of %d reads; %v", 100*share(&noBreaker), noBreaker.reads.Load(), &noBreaker.closed)
	t.Logf("  blackholed, with breaker:  failed %.2f%% of %d reads; before it opened %v; while open %v; while half-open %v",
		100*share(&withBreaker), withBreaker.reads.Load(), &withBreaker.closed, &withBreaker.open, &withBreaker.halfOpen)
	t.Logf("  Redis back -> breaker closed after %v (OpenFor 1s); reads meanwhile: failed %.2f%%, %v",
		closedAfter.Round(time.Millisecond), 100*share(&recovering), &recovering.closed)
	for name, p := range map[string]*phase{"healthy": &healthy, "no breaker": &noBreaker, "breaker": &withBreaker, "recovering": &recovering} {
		if p.fails.Load() != 0 {
			t.Errorf("%s: %d of %d reads failed", name, p.fails.Load(), p.reads.Load())
		}
	}
	// Bounds that tell a read that waits on a dead socket (seconds) from one
	// that skips Redis, and hold with both cores busy; the figures above are
	// what the README quotes.
	if p := withBreaker.open.q(.99); p > loadTime+time.Second {
		t.Errorf("p99 with the breaker open = %v", p)
	}
	if closedAfter == 0 {
		t.Errorf("the breaker did not close within 4s of Redis coming back")
	}
}

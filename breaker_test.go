package tiercache

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// One breaker per node: with one master of three dead (no replica), keys on
// the two live masters keep their Redis hits, no read fails, only the dead
// node's breaker opens, and it closes once the node is back.
func TestClusterDeadMasterKeepsTheOthers(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	ctx := t.Context()
	rdb := cl.Client(t, func(o *redis.ClusterOptions) {
		o.ContextTimeoutEnabled = true
		o.MaxRetries = 1
		o.DialTimeout = 100 * time.Millisecond
	})
	c := newCacheOn[string](t, rdb, "nodes", WithBreaker(BreakerSettings{ConsecutiveFailures: 3, OpenFor: 200 * time.Millisecond, Probes: 1}))
	const n = 300
	ks := make([]string, n)
	for i := range ks {
		ks[i] = "n" + strconv.Itoa(i)
		if err := c.Set(ctx, ks[i], "v"); err != nil {
			t.Fatal(err)
		}
	}
	victim := cl.MasterForKey(ctx, c.st.Layout.Value(ks[0]))
	onVictim := map[string]bool{}
	for _, k := range ks {
		onVictim[k] = cl.MasterForKey(ctx, c.st.Layout.Value(k)) == victim
	}
	var liveLoads, deadLoads atomic.Int64
	load := func(k string) LoadFunc[string] {
		return func(ctx context.Context) (string, error) {
			if onVictim[k] {
				deadLoads.Add(1)
			} else {
				liveLoads.Add(1)
			}
			return "v", nil
		}
	}
	readAll := func() (failed int64) {
		var wg sync.WaitGroup
		var bad atomic.Int64
		for g := range 8 {
			wg.Go(func() {
				for i := g; i < n; i += 8 {
					if v, err := c.GetOrLoad(ctx, ks[i], load(ks[i])); err != nil || v != "v" {
						bad.Add(1)
					}
				}
			})
		}
		wg.Wait()
		return bad.Load()
	}
	if bad := readAll(); bad != 0 || liveLoads.Load()+deadLoads.Load() != 0 {
		t.Fatalf("before the kill: %d failed reads, %d loads", bad, liveLoads.Load()+deadLoads.Load())
	}
	victim.Stop()
	for round := range 3 {
		if bad := readAll(); bad != 0 {
			t.Fatalf("round %d: %d reads failed with one master dead", round, bad)
		}
	}
	// Keys on the live masters: all still Redis hits (within 5%, for reads
	// that shared a round trip with a dead node's keys as the breaker opened).
	live := 0
	for _, k := range ks {
		if !onVictim[k] {
			live++
		}
	}
	if l := liveLoads.Load(); l > int64(3*live/20) {
		t.Fatalf("%d loads of keys on live masters in 3 rounds of %d such keys: their Redis hits were lost", l, live)
	}
	if deadLoads.Load() == 0 {
		t.Fatal("no loads of the dead master's keys")
	}
	st := c.Stats()
	if st.Breakers[victim.Addr] != BreakerOpen && st.Breakers[victim.Addr] != BreakerHalfOpen {
		t.Fatalf("the dead node's breaker is %v (%v)", st.Breakers[victim.Addr], st.Breakers)
	}
	for addr, s := range st.Breakers {
		if addr != victim.Addr && s != BreakerClosed {
			t.Fatalf("breaker of live node %s is %v", addr, s)
		}
	}
	victim.Restart(t)
	waitFor(t, 30*time.Second, "the restarted node's breaker closed", func() bool {
		_ = readAll()
		return c.Stats().Breakers[victim.Addr] == BreakerClosed
	})
}

// Sharded pub/sub: killing the master that owns the invalidation channel's
// slot moves the subscription to its promoted replica; L1 is flushed on the
// way, and a write after the failover reaches the other instance's L1.
func TestShardedSubscriptionFollowsTheChannelsShard(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 1)
	t.Cleanup(func() { waitGoroutinesGone(t, "(*ConnPool).tryDial", 3*time.Second) })
	ctx := t.Context()
	client := func() redis.UniversalClient {
		return cl.Client(t, func(o *redis.ClusterOptions) { o.ContextTimeoutEnabled = true })
	}
	a := newCacheOn[string](t, client(), "shard", WithL1(100))
	b := newCacheOn[string](t, client(), "shard", WithL1(100))
	waitSubscribed(t, a, b)
	if sharded, err := b.inv.shardedMode(ctx); err != nil || !sharded {
		t.Fatalf("sharded pub/sub on a Redis 7 cluster: %v, %v", sharded, err)
	}
	owner := cl.MasterForKey(ctx, b.st.Layout.Channel())
	flushes := b.Stats().Count(EventL1Flush)
	owner.Stop()
	waitFor(t, 60*time.Second, "b's subscription lost and back", func() bool {
		return b.Stats().Count(EventL1Flush) > flushes && b.Stats().Subscribed
	})
	if now := cl.MasterForKey(ctx, b.st.Layout.Channel()); now == nil || now == owner {
		t.Fatalf("the channel's slot did not move (owner %v)", now)
	}
	waitFor(t, 60*time.Second, "a write after the failover", func() bool { return a.Set(ctx, "k", "old") == nil })
	if v, err := b.Get(ctx, "k"); err != nil || v != "old" {
		t.Fatalf("b reads %q, %v", v, err)
	}
	recv := b.Stats().Count(EventInvalidationReceived)
	waitFor(t, 30*time.Second, "a's Set reaches b", func() bool {
		_ = a.Set(ctx, "k", "new")
		return b.Stats().Count(EventInvalidationReceived) > recv
	})
	if v, _ := b.Get(ctx, "k"); v != "new" {
		t.Fatalf("b reads %q after a's Set", v)
	}
}

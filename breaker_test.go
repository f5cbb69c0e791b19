package tiercache

// Nodes that die or fail over: a dead cluster master (one breaker per
// node), a sharded subscription following its channel's shard, and
// Sentinel failovers.

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/internal/store"
)

// breakerStates converts the store's states by value: the two sets of
// constants must agree, each with its name.
func TestBreakerStatesAreTheStores(t *testing.T) {
	for s, want := range map[store.State]BreakerState{store.Closed: BreakerClosed, store.HalfOpen: BreakerHalfOpen, store.Open: BreakerOpen} {
		all, worst := breakerStates(map[string]store.State{"n": s}, s)
		if worst != want || all["n"] != want {
			t.Errorf("store state %d is %v (%v), want %v", s, worst, all["n"], want)
		}
	}
	if got := fmt.Sprint(BreakerClosed, BreakerHalfOpen, BreakerOpen); got != "closed half-open open" {
		t.Errorf("names: %q", got)
	}
}

// One breaker per node: with one master of three dead (no replica), keys on
// the two live masters keep their Redis hits, no read fails, only the dead
// node's breaker opens, and it closes once the node is back.
func TestClusterDeadMasterKeepsTheOthers(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	ctx := t.Context()
	rdb := clusterClient(t, cl, 1, 100*time.Millisecond)
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
	// Without this, the live masters answer CLUSTERDOWN to every key once
	// the cluster marks the dead master failed (the node timeout, 2s): the
	// rounds below took longer than that on a loaded machine, and the live
	// keys lost their hits for a reason that is not tiercache's. This is
	// the setting of a cluster that serves what it can with a master down.
	for _, m := range cl.Masters {
		if err := m.Client(t).ConfigSet(ctx, "cluster-require-full-coverage", "no").Err(); err != nil {
			t.Fatal(err)
		}
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
	a := newCacheOn[string](t, clusterClient(t, cl, 0, 0), "shard", WithL1(100))
	b := newCacheOn[string](t, clusterClient(t, cl, 0, 0), "shard", WithL1(100))
	waitSubscribed(t, a, b)
	if sharded, err := b.inv.st.Sharded(ctx); err != nil || !sharded {
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

// sentinelBudget bounds each Sentinel test as a whole: every wait in it is
// a poll that ends at this deadline, well under a minute, whatever the
// machine's load.
const sentinelBudget = 50 * time.Second

// sentinelPair returns two instances (L1 and invalidation on) under
// prefix, each on its own failover client of s, with their subscriptions
// up. Redis calls get generous timeouts: these tests check where writes
// and invalidations go, not how fast Redis answers on a busy machine (a
// read that times out goes to the loader, and the tests' checks of what
// Redis holds would then see the loader's value).
func sentinelPair(t *testing.T, s *redistest.Sentinel, prefix string, opts ...Option) (a, b *Cache[string]) {
	t.Helper()
	opts = append([]Option{WithL1(1000), WithReadTimeout(5 * time.Second), WithWriteTimeout(5 * time.Second)}, opts...)
	a = newCacheOn[string](t, s.Client(t), prefix, opts...)
	b = newCacheOn[string](t, s.Client(t), prefix, opts...)
	waitSubscribed(t, a, b)
	return a, b
}

// A Sentinel failover under load: readers on two instances run GetOrLoad
// over 200 keys throughout, and none of their reads fails; each instance
// flushes its L1 and subscribes again, on the new master; and a Set on one
// instance after the failover reaches the other's L1.
//
// On Redis 7 the instances' subscriptions leave the old master only when
// the sentinels demote it to a replica, some ten seconds after the switch,
// and kill its pub/sub clients (see TestSentinelInvalidationAfterSwitch for
// what happens until then); every wait here is a poll bounded by
// sentinelBudget, so the test does not depend on how long that takes.
func TestSentinelFailover(t *testing.T) {
	t.Parallel()
	start := time.Now()
	deadline := start.Add(sentinelBudget)
	left := func() time.Duration { return time.Until(deadline) }
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	s := redistest.StartSentinel(t, 1)
	oldMaster := s.Master()
	a, b := sentinelPair(t, s, "sentinel")
	channel := a.inv.channel
	oldCl := oldMaster.Client(t)
	if n := numSub(oldCl, channel); n != 2 {
		t.Fatalf("%d subscribers on the master %s before the failover, want 2", n, oldMaster.Addr)
	}

	// Readers: 4 per instance, each over all 200 keys, until stop.
	const nkeys = 200
	load := func(k string) LoadFunc[string] {
		return func(context.Context) (string, error) { return "v:" + k, nil }
	}
	var (
		stop     atomic.Bool
		failures atomic.Int64
		firstErr atomic.Value // string
		wg       sync.WaitGroup
	)
	reads := map[*Cache[string]]*atomic.Int64{a: new(atomic.Int64), b: new(atomic.Int64)}
	for _, c := range []*Cache[string]{a, b} {
		for r := range 4 {
			wg.Go(func() {
				for i := r; !stop.Load(); i++ {
					k := "k" + strconv.Itoa(i%nkeys)
					v, err := c.GetOrLoad(ctx, k, load(k))
					if err != nil || v != "v:"+k {
						failures.Add(1)
						firstErr.CompareAndSwap(nil, fmt.Sprintf("GetOrLoad(%s) = %q, %v", k, v, err))
					}
					reads[c].Add(1)
				}
			})
		}
	}
	stopReaders := func() {
		stop.Store(true)
		wg.Wait()
	}
	defer stopReaders()
	// Every key has been read on both instances before the failover.
	waitFor(t, left(), "warm-up reads", func() bool { return reads[a].Load() >= 2*nkeys && reads[b].Load() >= 2*nkeys })

	flushes := map[*Cache[string]]uint64{a: a.Stats().Count(EventL1Flush), b: b.Stats().Count(EventL1Flush)}
	readsBefore := map[*Cache[string]]int64{a: reads[a].Load(), b: reads[b].Load()}
	s.Failover(t)
	newMaster := s.Master()
	if newMaster == nil || newMaster == oldMaster {
		t.Fatalf("after Failover the master is %v, want the replica", newMaster)
	}
	t.Logf("failed over from %s to %s after %v", oldMaster.Addr, newMaster.Addr, time.Since(start))

	// Each instance has flushed L1 and is subscribed again, and both
	// subscriptions are on the new master, none left on the old one.
	newCl := newMaster.Client(t)
	waitFor(t, left(), "both instances flushed L1 and subscribed on the new master", func() bool {
		for _, c := range []*Cache[string]{a, b} {
			if st := c.Stats(); st.Count(EventL1Flush) <= flushes[c] || !st.Subscribed {
				return false
			}
		}
		return numSub(newCl, channel) == 2 && numSub(oldCl, channel) == 0
	})
	t.Logf("subscribed on the new master after %v", time.Since(start))
	// The readers went on through the failover.
	waitFor(t, left(), "reads on both instances since the failover", func() bool {
		return reads[a].Load()-readsBefore[a] >= nkeys && reads[b].Load()-readsBefore[b] >= nkeys
	})

	// A Set on a after the failover reaches b's L1, which held the old value.
	if v, err := b.GetOrLoad(ctx, "probe", load("probe")); err != nil || v != "v:probe" {
		t.Fatalf("b: GetOrLoad(probe) = %q, %v", v, err)
	}
	if _, ok := b.l1.get("probe"); !ok {
		t.Fatal("b's L1 does not hold probe after a read")
	}
	received := b.Stats().Count(EventInvalidationReceived)
	if err := a.Set(ctx, "probe", "new"); err != nil {
		t.Fatalf("a: Set(probe) after the failover: %v", err)
	}
	waitFor(t, left(), "b received a's invalidation", func() bool {
		return b.Stats().Count(EventInvalidationReceived) > received
	})
	// A read that fails (a connection the demotion killed, say) is
	// retried; one that answers must answer the new value.
	for name, c := range map[string]*Cache[string]{"a": a, "b": b} {
		var v string
		var err error
		waitFor(t, left(), name+" reads probe", func() bool {
			v, err = c.Get(ctx, "probe")
			return err == nil
		})
		if v != "new" {
			t.Errorf("%s: Get(probe) after a's Set = %q; want new", name, v)
		}
	}

	stopReaders()
	if n := failures.Load(); n != 0 {
		t.Errorf("%d of %d reads failed; first: %v", n, reads[a].Load()+reads[b].Load(), firstErr.Load())
	}
	t.Logf("%d reads on a, %d on b, in %v", reads[a].Load(), reads[b].Load(), time.Since(start))
}

// After a failover, a write on the new master reaches every instance's L1
// even if the old master is never demoted: the sentinels may not reach it
// (a partition) although the clients still do. Here it refuses REPLICAOF,
// so the sentinels cannot demote it and do not kill its clients, and the
// subscriptions have to find the new master on their own.
//
// b holds "v1" in L1; after the failover a writes "v2" to the new master;
// b must read v2 within the bound, long before its L1 TTL (10 minutes)
// ends. Only an invalidation or a flush can get it there.
func TestSentinelInvalidationAfterSwitch(t *testing.T) {
	t.Parallel()
	start := time.Now()
	deadline := start.Add(sentinelBudget)
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()

	s := redistest.StartSentinel(t, 1)
	oldMaster := s.Master()
	oldCl := oldMaster.Client(t)
	if err := oldCl.Do(ctx, "ACL", "SETUSER", "default", "-replicaof", "-slaveof").Err(); err != nil {
		t.Fatalf("ACL SETUSER on the master: %v", err)
	}
	const prefix = "switch"
	a, b := sentinelPair(t, s, prefix, WithL1TTL(10*time.Minute))

	if err := a.Set(ctx, "probe", "v1"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Until(deadline), "b received a's first invalidation", func() bool {
		return b.Stats().Count(EventInvalidationReceived) > 0
	})
	var v string
	var err error
	waitFor(t, time.Until(deadline), "b reads probe", func() bool {
		v, err = b.Get(ctx, "probe")
		return err == nil
	})
	if v != "v1" {
		t.Fatalf("b: Get(probe) = %q; want v1", v)
	}
	if _, ok := b.l1.get("probe"); !ok {
		t.Fatal("b's L1 does not hold probe after a read")
	}

	s.Failover(t)
	newMaster := s.Master()
	t.Logf("failed over from %s to %s after %v", oldMaster.Addr, newMaster.Addr, time.Since(start))

	// a's Set lands on the new master: a reader on a fresh failover client
	// (which asks a sentinel for the master) sees it. a's client may not
	// have heard of the switch yet and write to the old master, so retry.
	fresh := newCacheOn[string](t, s.Client(t), prefix, WithoutInvalidation(), WithReadTimeout(5*time.Second))
	waitFor(t, time.Until(deadline), "a's Set of v2 on the new master", func() bool {
		if err := a.Set(ctx, "probe", "v2"); err != nil {
			return false
		}
		v, err := fresh.Get(ctx, "probe")
		return err == nil && v == "v2"
	})
	t.Logf("v2 written to the new master after %v", time.Since(start))

	// A generous bound: several health-check intervals (5 s), far from
	// the L1 TTL.
	const bound = 30 * time.Second
	written := time.Now()
	until := written.Add(bound)
	if until.After(deadline) {
		until = deadline
	}
	var last string
	for {
		v, err := b.Get(ctx, "probe")
		if err == nil && v == "v2" {
			t.Logf("b reads v2 %v after the write", time.Since(written))
			break
		}
		last = fmt.Sprintf("%q, %v", v, err)
		if time.Now().After(until) {
			st := b.Stats()
			t.Errorf("b still reads %s, not v2, %v after a wrote v2 to the new master: the write never reached b's L1. "+
				"b: Subscribed=%v, L1 flushes %d, invalidations received %d; subscribers on the old master %s: %d, on the new master %s: %d",
				last, time.Since(written).Round(time.Millisecond), st.Subscribed, st.Count(EventL1Flush), st.Count(EventInvalidationReceived),
				oldMaster.Addr, numSub(oldCl, a.inv.channel), newMaster.Addr, numSub(newMaster.Client(t), a.inv.channel))
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if role, err := oldCl.Do(ctx, "ROLE").Slice(); err == nil && len(role) > 0 {
		t.Logf("the old master %s answers ROLE %v", oldMaster.Addr, role[0])
	}
}

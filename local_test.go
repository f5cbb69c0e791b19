package tiercache

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/msg"
	"github.com/tiercache/tiercache/internal/redistest"
)

// The fill/invalidation race, on L1 alone, a hundred thousand times: a
// reader takes its token, reads the "Redis" value and fills; a writer
// stores a new value and invalidates. L1 must never end with the old
// value once both are done.
func TestL1FillRaceUnit(t *testing.T) {
	cfg := defaultConfig()
	cfg.l1Entries = 1000
	l, err := newLocal[int](&cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer l.close()
	n := 100_000
	if testing.Short() {
		n = 10_000
	}
	var stored atomic.Int64 // stands for the value in Redis
	for i := range n {
		key := strconv.Itoa(i % 64)
		old := int64(2 * i)
		stored.Store(old)
		l.invalidate(key)
		var wg sync.WaitGroup
		wg.Go(func() {
			tok := l.token(key)
			v := stored.Load()
			now := nowMicro()
			l.fill(key, tok, entry[int]{val: int(v), softExp: now + 1e9}, time.Minute)
		})
		wg.Go(func() {
			stored.Store(old + 1)
			l.invalidate(key)
		})
		wg.Wait()
		if e, ok := l.get(key); ok && int64(e.val) == old {
			t.Fatalf("iteration %d: L1 holds the value from before the invalidation", i)
		}
	}
}

// The same race through real Redis and two instances, thousands of times:
// b reads k while a writes it; once b has applied a's invalidation, b's L1
// must not hold the old value.
func TestL1FillRaceInstances(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[int](t, tg, WithL1(1000))
		n := 2000
		if testing.Short() || tg.Cluster != nil {
			n = 500
		}
		for i := range n {
			key := strconv.Itoa(i % 32)
			received := b.Stats().Count(EventInvalidationReceived)
			if err := a.Set(ctx, key, 2*i); err != nil {
				t.Fatal(err)
			}
			// Let the message of this first Set arrive, so that the wait
			// below is for the second one.
			waitFor(t, time.Second, "first invalidation applied", func() bool {
				return b.Stats().Count(EventInvalidationReceived) > received
			})
			received++
			var wg sync.WaitGroup
			wg.Go(func() { _, _ = b.Get(ctx, key) })
			wg.Go(func() {
				if err := a.Set(ctx, key, 2*i+1); err != nil {
					t.Error(err)
				}
			})
			wg.Wait()
			waitFor(t, time.Second, "invalidation applied", func() bool {
				return b.Stats().Count(EventInvalidationReceived) > received
			})
			if e, ok := b.l1.get(key); ok && e.val == 2*i {
				t.Fatalf("iteration %d: b's L1 holds the overwritten value", i)
			}
		}
	})
}

// A Set or Delete on one instance is seen by another's next read within
// 100ms, although the other had the old value in its L1.
func TestL1InvalidationAcrossInstances(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		cs := instances[string](t, tg, 3, WithL1(1000))
		a, b, c := cs[0], cs[1], cs[2]
		waitSubscribed(t, cs...)
		load := func(context.Context) (string, error) { return "v1", nil }
		for _, x := range cs {
			if v, err := x.GetOrLoad(ctx, "k", load); err != nil || v != "v1" {
				t.Fatalf("warm-up read %q, %v", v, err)
			}
		}
		if _, ok := b.l1.get("k"); !ok {
			t.Fatal("b's L1 does not hold the value after a read")
		}
		l1HitsBefore := b.Stats().L1Hits
		if v, _ := b.GetOrLoad(ctx, "k", load); v != "v1" || b.Stats().L1Hits != l1HitsBefore+1 {
			t.Fatal("b's read did not come from L1")
		}

		if err := a.Set(ctx, "k", "v2"); err != nil {
			t.Fatal(err)
		}
		for _, x := range []*Cache[string]{b, c} {
			waitFor(t, 100*time.Millisecond, "Set seen by another instance", func() bool {
				v, err := x.Get(ctx, "k")
				return err == nil && v == "v2"
			})
		}
		if v, _ := a.Get(ctx, "k"); v != "v2" {
			t.Fatalf("the writer reads %q from its own L1", v)
		}

		if err := c.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		for _, x := range []*Cache[string]{a, b} {
			waitMiss(t, x, "k", 100*time.Millisecond, "Delete seen by another instance")
		}
		// The writer ignores its own messages; the others each applied two.
		if n := b.Stats().Count(EventInvalidationReceived); n != 2 {
			t.Fatalf("b applied %d invalidation messages, want 2", n)
		}
	})
}

// Many writes at once go out batched: fewer messages than keys.
func TestInvalidationBatches(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		cs := instances[int](t, tg, 2, WithL1(10000))
		waitSubscribed(t, cs...)
		const n = 500
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				if err := cs[0].Set(ctx, strconv.Itoa(i), i); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		sent := cs[0].Stats().Count(EventInvalidationSent)
		if sent >= n {
			t.Fatalf("%d messages for %d concurrent writes: not batched", sent, n)
		}
		t.Logf("%d concurrent Sets published in %d messages", n, sent)
	})
}

// Killing the subscriber's connection flushes L1 (invalidations may have
// been lost) and the subscription comes back; 100 reconnects leak nothing
// (TestMain checks goroutines).
func TestL1FlushedOnSubscriptionLoss(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[string](t, tg, WithL1(100))
		mustSet(t, b, "k", "v")
		if _, ok := b.l1.get("k"); !ok {
			t.Fatal("Set did not fill the writer's L1")
		}
		flushes := b.Stats().Count(EventL1Flush)
		killPubSub(t, tg)
		waitFor(t, 2*time.Second, "L1 flushed after the subscription was killed", func() bool {
			return b.Stats().Count(EventL1Flush) > flushes
		})
		if _, ok := b.l1.get("k"); ok {
			t.Fatal("L1 still holds the entry after the subscription was lost")
		}
		waitSubscribed(t, a, b)
		// The new subscription works: a write on a reaches b's L1.
		if _, err := b.Get(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		if err := a.Set(ctx, "k", "v2"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 100*time.Millisecond, "Set seen after resubscribing", func() bool {
			v, _ := b.Get(ctx, "k")
			return v == "v2"
		})

		for i := range 100 {
			before := b.Stats().Count(EventL1Flush)
			killPubSub(t, tg)
			waitFor(t, 2*time.Second, "reconnect "+strconv.Itoa(i)+" noticed", func() bool {
				return b.Stats().Count(EventL1Flush) > before
			})
			waitSubscribed(t, b)
		}
	})
}

// While the subscription is down, L1 entries live at most the outage TTL.
func TestL1OutageTTL(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithL1(100), WithL1OutageTTL(30*time.Millisecond))
		waitSubscribed(t, c)
		c.inv.epoch.Add(1) // even: as if the subscription had just dropped
		if err := c.Set(ctx, "k", "v"); err != nil {
			t.Fatal(err)
		}
		if _, ok := c.l1.get("k"); !ok {
			t.Fatal("no L1 entry right after Set")
		}
		waitFor(t, time.Second, "L1 entry gone after the outage TTL", func() bool {
			_, ok := c.l1.c.GetIfPresent("k")
			return !ok
		})
		if v, err := c.Get(ctx, "k"); err != nil || v != "v" {
			t.Fatalf("Redis lost the value: %q, %v", v, err)
		}
	})
}

// An L1 entry never outlives the value's logical expiry, nor the L1 max TTL.
func TestL1Lifetime(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithL1(100), WithJitter(0), WithL1TTL(80*time.Millisecond), WithoutInvalidation())
		if err := c.Set(ctx, "short", "v", WithTTL(30*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, "long", "v", WithTTL(time.Hour)); err != nil {
			t.Fatal(err)
		}
		time.Sleep(40 * time.Millisecond)
		if _, ok := c.l1.get("short"); ok {
			t.Fatal("L1 entry outlived its logical expiry")
		}
		if _, ok := c.l1.get("long"); !ok {
			t.Fatal("L1 entry gone before the L1 TTL")
		}
		waitFor(t, time.Second, "L1 entry gone after the L1 max TTL", func() bool {
			_, ok := c.l1.c.GetIfPresent("long")
			return !ok
		})
		if _, err := c.Get(ctx, "long"); err != nil {
			t.Fatalf("value gone from Redis too: %v", err)
		}
	})
}

// Each applied invalidation message records its delay, from the sender's
// acknowledged write to this instance's L1 drop: a message sent 700ms ago
// lands in the histogram's 700ms bucket, and a real write from another
// instance is counted too.
func TestInvalidationDelayHistogram(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[string](t, tg, WithL1(100))
		mustSet(t, a, "k", "v")
		waitFor(t, 10*time.Second, "a's message at b", func() bool { return b.Stats().InvalidationDelay.Count == 1 })
		// A message that took 700ms (its send time is 700ms old).
		late := msg.EncodeAt([8]byte{9, 9, 9}, nowMicro()-700_000, []string{"k"}, nil, false)[0]
		if err := publishRaw(ctx, b, tg.NewClient(t), late); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the late message at b", func() bool { return b.Stats().InvalidationDelay.Count == 2 })
		h := b.Stats().InvalidationDelay
		if h.Max < 700*time.Millisecond || h.Quantile(1) < 700*time.Millisecond || h.Quantile(0.5) > h.Quantile(1) {
			t.Fatalf("histogram after a 700ms message: max %v, p100 %v, p50 %v", h.Max, h.Quantile(1), h.Quantile(0.5))
		}
		var n uint64
		for i, c := range h.Buckets {
			n += c
			if c > 0 && i > 0 && DelayBucketBound(i) <= 700*time.Millisecond && DelayBucketBound(i-1) >= 700*time.Millisecond {
				t.Fatalf("bucket %d holds a delay it cannot", i)
			}
		}
		if n != 2 || h.Sum < 700*time.Millisecond {
			t.Fatalf("buckets add up to %d, sum %v", n, h.Sum)
		}
	})
}

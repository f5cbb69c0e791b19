package tiercache

import (
	"context"
	"errors"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// User code that runs on the cache's own goroutines (the invalidation
// publisher and subscriber, the lease releases) has no caller to take its
// panic: a panic there must not end the process, and neither a panic nor
// a runtime.Goexit may leave the cache without invalidations.

// failures are the two ways user code fails without returning.
var failures = []struct {
	name string
	do   func()
}{
	{"panic", func() { panic("observer boom") }},
	{"Goexit", runtime.Goexit},
}

// eventHook is an Observer that runs its armed func at the first event e.
type eventHook struct {
	NopObserver
	e Event
	oneShot
}

func (o *eventHook) Event(e Event) {
	if e == o.e {
		o.fire()
	}
}

// redisHook is an Observer that runs its armed func after the first round
// trip of operation op.
type redisHook struct {
	NopObserver
	op string
	oneShot
}

func (o *redisHook) Redis(op string, _ time.Duration, _ error) {
	if op == o.op {
		o.fire()
	}
}

// A panic of the writer's Observer in its invalidation publisher: the
// write's invalidation still reaches the other instance, and so do the
// next ones (the writers publish them themselves from then on).
func TestObserverPanicInThePublisher(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := testPrefix(t)
		obs := &eventHook{e: EventInvalidationSent}
		a := newCacheOn[string](t, tg.NewClient(t), prefix, WithObserver(obs))
		b := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
		waitSubscribed(t, a, b)
		mustSet(t, a, "k", "v1")
		waitFor(t, 10*time.Second, "b to read v1", func() bool { v, err := b.Get(ctx, "k"); return err == nil && v == "v1" })
		obs.arm(func() { panic("observer boom") })
		if err := a.Set(ctx, "k", "v2"); err != nil {
			t.Fatalf("Set whose publisher's Observer panicked = %v", err)
		}
		waitFor(t, 10*time.Second, "b to drop v1", func() bool { v, err := b.Get(ctx, "k"); return err == nil && v == "v2" })
		mustSet(t, a, "k", "v3")
		waitFor(t, 10*time.Second, "b to drop v2", func() bool { v, err := b.Get(ctx, "k"); return err == nil && v == "v3" })
	})
}

// A panic or a runtime.Goexit of the receiver's Observer while it applies
// an invalidation: the subscription is lost and comes back, L1 is flushed
// meanwhile (nothing stale is served), and later invalidations arrive.
func TestObserverPanicOrGoexitInTheSubscriber(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		for _, tc := range failures {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				prefix := testPrefix(t)
				obs := &eventHook{e: EventInvalidationReceived}
				a := newCacheOn[string](t, tg.NewClient(t), prefix)
				b := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100), WithObserver(obs))
				waitSubscribed(t, a, b)
				mustSet(t, a, "k", "v1")
				waitFor(t, 10*time.Second, "b to read v1", func() bool { v, err := b.Get(ctx, "k"); return err == nil && v == "v1" })
				obs.arm(tc.do)
				mustSet(t, a, "k", "v2")
				// v2 in b's L1, where only an invalidation can replace it.
				waitFor(t, 10*time.Second, "b to hold v2 in L1", func() bool {
					_, _ = b.Get(ctx, "k")
					e, ok := b.l1.peek("k")
					return ok && e.val == "v2"
				})
				waitSubscribed(t, b)
				mustSet(t, a, "k", "v3")
				waitFor(t, 10*time.Second, "b to read v3", func() bool { v, err := b.Get(ctx, "k"); return err == nil && v == "v3" })
				if b.Stats().Count(EventL1Flush) == 0 {
					t.Error("b's L1 was not flushed when its subscription was lost")
				}
			})
		}
	})
}

// A panic of the Observer after the round trip that gives leases back
// (they are given back on a background goroutine): the process goes on,
// and so does the cache.
func TestObserverPanicInALeaseRelease(t *testing.T) {
	obs := &redisHook{op: "release"}
	c := newCacheOn[string](t, directClient(t, redistest.SharedServer(t)), testPrefix(t), WithObserver(obs))
	obs.arm(func() { panic("observer boom") })
	failed := errors.New("loader failed")
	if _, err := c.GetOrLoad(t.Context(), "k", func(context.Context) (string, error) { return "", failed }); !errors.Is(err, failed) {
		t.Fatalf("GetOrLoad = %v, want the loader's error", err)
	}
	c.st.WaitReleases()
	if v, err := c.GetOrLoad(t.Context(), "k", constLoad("v", 0)); err != nil || v != "v" {
		t.Fatalf("GetOrLoad after the release's Observer panicked = %q, %v", v, err)
	}
}

// flushHook is an Observer that runs do at every EventL1Flush while armed.
type flushHook struct {
	NopObserver
	armed atomic.Bool
	do    func()
}

func (o *flushHook) Event(e Event) {
	if e == EventL1Flush && o.armed.Load() {
		o.do()
	}
}

// dropSubscription closes c's subscription connection, as a network
// failure would.
func dropSubscription[V any](c *Cache[V]) {
	c.inv.mu.Lock()
	sub := c.inv.sub
	c.inv.mu.Unlock()
	sub.close()
}

// An Observer that panics, or calls runtime.Goexit, at every L1 flush (a
// flush is what a lost subscription does): the subscriber comes back with
// a backoff, not in a loop of new connections, and resubscribes once the
// Observer behaves; Close then returns (a Goexit in the restart's own
// flush once skipped the WaitGroup's Done, and Close waited for good).
func TestObserverFailingAtEveryFlush(t *testing.T) {
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			obs := &flushHook{do: tc.do}
			c := newCacheOn[string](t, directClient(t, redistest.SharedServer(t)), testPrefix(t), WithL1(100), WithObserver(obs))
			waitSubscribed(t, c)
			before := c.Stats().Count(EventL1Flush)
			obs.armed.Store(true)
			dropSubscription(c)
			time.Sleep(time.Second)
			obs.armed.Store(false)
			// Backing off from 10ms doubling to 1s, a second holds about 7
			// attempts of a few flushes each; without a backoff, thousands.
			if n := c.Stats().Count(EventL1Flush) - before; n > 100 {
				t.Errorf("%d L1 flushes in a second: the subscriber restarts without a backoff", n)
			}
			waitSubscribed(t, c)
			closed := make(chan error, 1)
			go func() { closed <- c.Close() }()
			if err := redistest.Receive(t, closed, 20*time.Second, "Close did not return"); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// A subscriber that user code ends again and again backs off further each
// time, but one that then stayed up for a second starts from 10ms again:
// a rare failure costs a short gap, not a second's.
func TestSubscriberBackoffStartsAnewAfterAHealthySpell(t *testing.T) {
	for _, tc := range failures {
		t.Run(tc.name, func(t *testing.T) {
			tg := redistest.SharedServer(t)
			prefix := testPrefix(t)
			obs := &eventHook{e: EventInvalidationReceived}
			a := newCacheOn[string](t, directClient(t, tg), prefix)
			b := newCacheOn[string](t, directClient(t, tg), prefix, WithL1(100), WithObserver(obs))
			var longestUp time.Duration
			fail := func() time.Duration {
				waitSubscribed(t, a, b)
				up := time.Now()
				obs.arm(tc.do)
				mustSet(t, a, "k", "v")
				waitFor(t, 10*time.Second, "the subscription to fail", func() bool { return !b.inv.healthy() })
				longestUp = max(longestUp, time.Since(up))
				return time.Duration(b.inv.resubscribeIn.Load())
			}
			var last time.Duration
			for range 6 {
				last = fail()
			}
			// (On a machine so loaded that the subscription stayed up a
			// second between two failures, the backoff rightly started anew.)
			if last < 100*time.Millisecond && longestUp < 900*time.Millisecond {
				t.Fatalf("after 6 failures in a row the subscriber waits %v to resubscribe: no backoff", last)
			}
			waitSubscribed(t, b)
			time.Sleep(1100 * time.Millisecond) // up for more than a second
			if d := fail(); d != 10*time.Millisecond {
				t.Fatalf("after a healthy second the subscriber waits %v to resubscribe, want 10ms", d)
			}
		})
	}
}

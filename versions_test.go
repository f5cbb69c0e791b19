package tiercache

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// Two caches of different value types on one prefix do not decode each
// other's bytes: the frame's check includes the type.
func TestTwoTypesOnOnePrefixMiss(t *testing.T) {
	srv := redistest.SharedServer(t)
	ctx := t.Context()
	prefix := testPrefix(t)
	ints := newCacheOn[int](t, srv.Client(t), prefix)
	strs := newCacheOn[string](t, srv.Client(t), prefix)
	mustSet(t, ints, "k", 42)
	if v, err := strs.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
		t.Fatalf("a string cache read an int's bytes: %q, %v", v, err)
	}
}

// Writers commit versions 1..1,000 of one row in order; their Sets arrive
// shuffled and concurrently, from two instances with L1: Redis and every L1
// end with version 1,000. A versioned Delete at 1,000 then refuses a late
// write of 999, and a write of 1,001 lands.
func TestVersionedWritesKeepTheNewest(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[int](t, tg, WithL1(100))
		versions := rand.Perm(1000)
		var wg sync.WaitGroup
		next := make(chan int)
		for w := range 8 {
			c := []*Cache[int]{a, b}[w%2]
			wg.Go(func() {
				for v := range next {
					if err := c.Set(ctx, "row", v, WithVersion(uint64(v))); err != nil {
						t.Error(err)
					}
				}
			})
		}
		for _, v := range versions {
			next <- v + 1
		}
		close(next)
		wg.Wait()
		waitFor(t, 10*time.Second, "every message delivered", func() bool {
			return a.Stats().Count(EventInvalidationReceived) >= b.Stats().Count(EventInvalidationSent) &&
				b.Stats().Count(EventInvalidationReceived) >= a.Stats().Count(EventInvalidationSent)
		})
		if got := decodedValue(t, a, tg.NewClient(t), "row"); got != 1000 {
			t.Fatalf("Redis holds version %d, want 1000", got)
		}
		for name, c := range map[string]*Cache[int]{"a": a, "b": b} {
			if v, err := c.Get(ctx, "row"); err != nil || v != 1000 {
				t.Fatalf("%s reads %d, %v; want 1000", name, v, err)
			}
		}
		if refused := a.Stats().Count(EventWriteRefused) + b.Stats().Count(EventWriteRefused); refused == 0 {
			t.Fatal("no write was refused out of 1,000 shuffled ones")
		}
		// A versioned Delete at 1,000 leaves its version behind.
		recv := b.Stats().Count(EventInvalidationReceived)
		if err := a.Invalidate(ctx, Invalidation{Keys: []string{"row"}, Version: 1000}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the Delete at b", func() bool { return b.Stats().Count(EventInvalidationReceived) > recv })
		mustSet(t, b, "row", 999, WithVersion(999))
		for name, c := range map[string]*Cache[int]{"a": a, "b": b} {
			if v, err := c.Get(ctx, "row"); !errors.Is(err, ErrMiss) {
				t.Fatalf("%s reads %d, %v after a late write of 999; want a miss", name, v, err)
			}
		}
		// A versioned load older than the Delete is refused too.
		v, err := a.GetOrLoad(ctx, "row", func(ctx context.Context) (int, error) {
			LoadOptions(ctx, WithVersion(998))
			return 998, nil
		})
		if err != nil || v != 998 {
			t.Fatalf("GetOrLoad = %d, %v", v, err)
		}
		if _, err := b.Get(ctx, "row"); !errors.Is(err, ErrMiss) {
			t.Fatalf("a load of version 998 was cached after a Delete at 1000: %v", err)
		}
		mustSet(t, b, "row", 1001, WithVersion(1001))
		if v, err := a.Get(ctx, "row"); err != nil || v != 1001 {
			t.Fatalf("after a write of 1001: %d, %v", v, err)
		}
		// An unversioned write neither checks nor moves the version.
		recv = b.Stats().Count(EventInvalidationReceived)
		mustSet(t, a, "row", 5)
		waitFor(t, 10*time.Second, "a's Set at b", func() bool { return b.Stats().Count(EventInvalidationReceived) > recv })
		if v, _ := b.Get(ctx, "row"); v != 5 {
			t.Fatalf("an unversioned write: %d", v)
		}
		mustSet(t, a, "row", 1000, WithVersion(1000))
		if v, _ := b.Get(ctx, "row"); v != 5 {
			t.Fatalf("a versioned write older than the last versioned one landed: %d", v)
		}
	})
}

// A versioned tag invalidation leaves its version on the tag: a later
// versioned write carrying the tag and not newer is refused, a newer one
// lands, and an unversioned one is not ordered.
func TestVersionedTagInvalidation(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[int](t, tg)
		if err := c.Invalidate(ctx, Invalidation{Tags: []string{"shelf"}, Version: 500}); err != nil {
			t.Fatal(err)
		}
		mustSet(t, c, "a", 499, WithVersion(499), WithTags("shelf"))
		if _, err := c.Get(ctx, "a"); !errors.Is(err, ErrMiss) || c.Stats().Count(EventWriteRefused) != 1 {
			t.Fatalf("a write of 499 after the tag's invalidation at 500: %v, %d refused", err, c.Stats().Count(EventWriteRefused))
		}
		v, _ := c.GetOrLoad(ctx, "b", func(ctx context.Context) (int, error) {
			LoadOptions(ctx, WithVersion(400), WithTags("shelf"))
			return 400, nil
		})
		if _, err := c.Get(ctx, "b"); v != 400 || !errors.Is(err, ErrMiss) {
			t.Fatalf("a load of 400 after the tag's invalidation at 500 was cached: %v", err)
		}
		// A load as old as the tag's invalidation is the current row: cached.
		v, _ = c.GetOrLoad(ctx, "d", func(ctx context.Context) (int, error) {
			LoadOptions(ctx, WithVersion(500), WithTags("shelf"))
			return 500, nil
		})
		if got, err := c.Get(ctx, "d"); v != 500 || err != nil || got != 500 {
			t.Fatalf("a load of 500 after the tag's invalidation at 500: %d, %v", got, err)
		}
		mustSet(t, c, "a", 501, WithVersion(501), WithTags("shelf"))
		if v, err := c.Get(ctx, "a"); err != nil || v != 501 {
			t.Fatalf("a newer write: %d, %v", v, err)
		}
		mustSet(t, c, "c", 1, WithTags("shelf"))
		if v, err := c.Get(ctx, "c"); err != nil || v != 1 {
			t.Fatalf("an unversioned write: %d, %v", v, err)
		}
	})
}

// A load that began before a Clear never lands: the loader read the source
// before the Clear, so its value is stored in the old generation, a miss
// for every reader, as for a write or an invalidation during a load.
func TestLoadDuringClearNeverLands(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg)
		g := startGatedLoad(ctx, c, "k", "read before the Clear", "")
		<-g.started
		if err := c.Clear(ctx); err != nil {
			t.Fatal(err)
		}
		g.release()
		if v := <-g.done; v != "read before the Clear" {
			t.Fatalf("the load's caller got %q", v)
		}
		if v, err := c.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
			t.Fatalf("after a load that began before Clear: Get = %q, %v; want a miss", v, err)
		}
		n := 0
		if v, err := c.GetOrLoad(ctx, "k", func(context.Context) (string, error) { n++; return "new", nil }); err != nil || v != "new" || n != 1 {
			t.Fatalf("the next read: %q, %v, %d loads; want a load of the new row", v, err, n)
		}
	})
}

// Clear hides every value of the namespace at once on every instance, in
// Redis and in L1; values written after it are visible. An instance
// without L1 (no subscription) sees the Clear too.
func TestClearHidesEverythingEverywhere(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := testPrefix(t)
		a := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
		b := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
		plain := newCacheOn[string](t, tg.NewClient(t), prefix, WithHealthCheck(50*time.Millisecond))
		waitSubscribed(t, a, b)
		ks := []string{"x", "y", "z"}
		for _, k := range ks {
			mustSet(t, a, k, "old")
			for _, c := range []*Cache[string]{b, plain} {
				if v, err := c.Get(ctx, k); err != nil || v != "old" {
					t.Fatalf("before Clear: %q, %v", v, err)
				}
			}
		}
		if err := a.Clear(ctx); err != nil {
			t.Fatal(err)
		}
		for _, k := range ks {
			if v, err := a.Get(ctx, k); !errors.Is(err, ErrMiss) {
				t.Fatalf("a reads %s = %q, %v after its own Clear", k, v, err)
			}
		}
		// At b, once its message is in. (Not "once b received a message":
		// the Sets' own messages may still be arriving.)
		for _, k := range ks {
			waitMiss(t, b, k, 10*time.Second, "the Clear at b")
		}
		waitMiss(t, plain, "x", 10*time.Second, "the Clear at the instance without L1")
		mustSet(t, b, "x", "new")
		for name, c := range map[string]*Cache[string]{"a": a, "b": b, "plain": plain} {
			if v, err := c.Get(ctx, "x"); err != nil || v != "new" {
				t.Fatalf("%s reads %q, %v after a write following the Clear", name, v, err)
			}
		}
		// A Clear whose message is lost (the generation moved in Redis and
		// nobody was told) reaches an instance with L1 within its health
		// interval: its L1 is flushed too.
		quick := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100), WithHealthCheck(50*time.Millisecond))
		waitSubscribed(t, quick)
		if v, err := quick.Get(ctx, "x"); err != nil || v != "new" {
			t.Fatalf("quick reads %q, %v", v, err)
		}
		if err := tg.NewClient(t).Incr(ctx, quick.st.Layout.Generation()).Err(); err != nil {
			t.Fatal(err)
		}
		waitMiss(t, quick, "x", 10*time.Second, "a silent Clear noticed")
	})
}

// A versioned load as old as the row version Redis keeps is the current
// row, and is cached: after a versioned Set and then the invalidation of
// that same change (the commit-log follower's, versioned or not), the next
// read loads the row once and the reads after it hit. Before, such a fill
// was refused until the version key expired, and every read went to the
// loader. WithoutLease gives up only the protection against a concurrent
// Delete (WithVersion: Redis "refuses, atomically, ... a versioned load that
// is older (one as old is the current row)"), so the same holds without it.
func TestVersionedLoadAsOldAsTheStoredVersionIsCached(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		t.Run("lease", func(t *testing.T) { versionedLoadAsOldIsCached(t, tg) })
		t.Run("without-lease", func(t *testing.T) { versionedLoadAsOldIsCached(t, tg, WithoutLease()) })
	})
}

func versionedLoadAsOldIsCached(t *testing.T, tg redistest.Target, opts ...Option) {
	ctx := t.Context()
	c := newCache[int](t, tg, opts...)
	// Control: a newer versioned load of a fresh key is cached.
	var newer atomic.Int64
	for range 3 {
		if _, err := c.GetOrLoad(ctx, "row8", func(ctx context.Context) (int, error) {
			newer.Add(1)
			LoadOptions(ctx, WithVersion(8))
			return 8, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if newer.Load() != 1 {
		t.Fatalf("control: a versioned load on a fresh key was loaded %d times for 3 reads", newer.Load())
	}
	for _, inv := range []Invalidation{{Keys: []string{"row"}}, {Keys: []string{"row"}, Version: 7}} {
		mustSet(t, c, "row", 7, WithVersion(7))
		if err := c.Invalidate(ctx, inv); err != nil {
			t.Fatal(err)
		}
		var loads atomic.Int64
		load := func(ctx context.Context) (int, error) {
			loads.Add(1)
			LoadOptions(ctx, WithVersion(7))
			return 7, nil
		}
		for range 5 {
			if v, err := c.GetOrLoad(ctx, "row", load); err != nil || v != 7 {
				t.Fatalf("GetOrLoad = %d, %v", v, err)
			}
		}
		if n := loads.Load(); n != 1 {
			t.Fatalf("after %+v: %d loads for 5 reads of the current row, want 1 (refused fills: %d)",
				inv, n, c.Stats().Count(EventFillRefused))
		}
	}
	// One older is still refused.
	if err := c.Invalidate(ctx, Invalidation{Keys: []string{"row"}, Version: 8}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.GetOrLoad(ctx, "row", func(ctx context.Context) (int, error) {
		LoadOptions(ctx, WithVersion(7))
		return 7, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(ctx, "row"); !errors.Is(err, ErrMiss) {
		t.Fatalf("a load of version 7 was cached after an invalidation at 8: %v", err)
	}
}

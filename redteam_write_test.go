package tiercache

// Red-team tests of the write and invalidation paths. Each test asserts a
// promise quoted from the package's documentation and fails only if it is
// broken.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// plainInstance is an instance without L1 under prefix: its reads go to Redis.
func plainInstance(t *testing.T, tg redistest.Target, prefix string) *Cache[string] {
	return newCacheOn[string](t, tg.NewClient(t), prefix)
}

// ErrInvalidTag (tags.go): "returned for an empty tag, a tag over 255
// bytes or one that starts with '}' (on a Redis Cluster its keys could not
// share a slot)". README: "tags on a cluster". Every other tag, braces
// inside it included, is written and invalidated on one node and a cluster.
func TestRedTeamWriteTagStartingWithBrace(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg)
		for _, tag := range []string{"}t", "}"} {
			if err := c.Set(ctx, "k"+tag, "v", WithTags(tag)); !errors.Is(err, ErrInvalidTag) {
				t.Fatalf("Set with tag %q: %v, want ErrInvalidTag", tag, err)
			}
			if err := c.InvalidateTags(ctx, tag); !errors.Is(err, ErrInvalidTag) {
				t.Fatalf("InvalidateTags(%q): %v, want ErrInvalidTag", tag, err)
			}
			if err := c.Invalidate(ctx, Invalidation{Keys: []string{"kept"}, Tags: []string{tag}}); !errors.Is(err, ErrInvalidTag) {
				t.Fatalf("Invalidate with tag %q: %v, want ErrInvalidTag", tag, err)
			}
		}
		for _, tag := range []string{"a}b", "{x}", "x{", "t}"} {
			k := "k" + tag
			if err := c.Set(ctx, k, "v", WithTags(tag)); err != nil {
				t.Fatalf("Set with valid tag %q: %v", tag, err)
			}
			if v, err := c.Get(ctx, k); err != nil || v != "v" {
				t.Fatalf("Get after Set with tag %q: %q, %v", tag, v, err)
			}
			if err := c.InvalidateTags(ctx, tag); err != nil {
				t.Fatalf("InvalidateTags(%q): %v", tag, err)
			}
			if v, err := c.Get(ctx, k); !errors.Is(err, ErrMiss) {
				t.Fatalf("after InvalidateTags(%q): Get = %q, %v; want a miss", tag, v, err)
			}
		}
	})
}

// ErrInvalidTag (tags.go) is for "more than 64 tags on one value";
// InvalidateTags (write.go): "makes every value carrying any of tags
// unreachable"; Invalidate (write.go): "deletes inv.Keys and invalidates
// inv.Tags ... a consumer should not acknowledge the event until it returns
// nil". An invalidation of 65 tags is not a value carrying 65 tags.
func TestRedTeamWriteInvalidateTagsMoreThan64(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg)
		tags := make([]string, 65)
		for i := range tags {
			tags[i] = fmt.Sprint("tag", i)
			mustSet(t, c, tags[i], "v", WithTags(tags[i]))
		}
		if err := c.InvalidateTags(ctx, tags...); err != nil {
			t.Fatalf("InvalidateTags of 65 tags (one per value): %v", err)
		}
		for _, k := range tags {
			if _, err := c.Get(ctx, k); !errors.Is(err, ErrMiss) {
				t.Fatalf("%s survived: %v", k, err)
			}
		}
	})
}

// NewLocal (cache.go): "a versioned Set older than (or as old as) the
// value in L1 is refused ... no row version outlives its value in L1 (a
// versioned Delete leaves none behind, and a versioned load is not checked
// against one)".
func TestRedTeamWriteLocalVersionedSets(t *testing.T) {
	ctx := t.Context()
	c, err := NewLocal[int](WithL1(100))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	mustSet(t, c, "row", 5, WithVersion(5))
	for n, v := range []uint64{4, 5} { // older, then as old (another value: the row itself is judged by its version)
		mustSet(t, c, "row", 10*int(v), WithVersion(v))
		if got, err := c.Get(ctx, "row"); err != nil || got != 5 {
			t.Fatalf("NewLocal: after a Set of version %d over version 5: Get = %d, %v; want 5", v, got, err)
		}
		if got := c.Stats().Count(EventWriteRefused); got != uint64(n+1) {
			t.Fatalf("NewLocal: %d writes refused, want %d (WithVersion: counted as EventWriteRefused)", got, n+1)
		}
	}
	mustSet(t, c, "row", 6, WithVersion(6))
	if got, err := c.Get(ctx, "row"); err != nil || got != 6 {
		t.Fatalf("NewLocal: a newer Set was not kept: Get = %d, %v", got, err)
	}
	// What the doc says is left out: after a versioned Delete nothing
	// remembers its version.
	if err := c.Invalidate(ctx, Invalidation{Keys: []string{"row"}, Version: 7}); err != nil {
		t.Fatal(err)
	}
	mustSet(t, c, "row", 4, WithVersion(4))
	if got, err := c.Get(ctx, "row"); err != nil || got != 4 {
		t.Fatalf("NewLocal: after a versioned Delete, a Set is checked against nothing: Get = %d, %v", got, err)
	}
}

// docs/DESIGN.md: "Redis keeps the newest per key in a row version key
// beside the value (same slot), for at least the value's TTL". Invalidation
// (write.go): the deletion leaves its version "so that a versioned write of
// an older version arriving later ... is refused". A newer versioned delete
// must not protect the key less than the Set it deleted did.
func TestRedTeamWriteVersionedDeleteKeepsTheProtection(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[int](t, tg, WithDefaultTTL(200*time.Millisecond), WithJitter(0))
		// Control: without the delete, a late Set of version 4 is refused
		// (the version key lives as long as the 1h value).
		mustSet(t, c, "ctl", 5, WithVersion(5), WithTTL(time.Hour))
		mustSet(t, c, "row", 5, WithVersion(5), WithTTL(time.Hour))
		if err := c.Invalidate(ctx, Invalidation{Keys: []string{"row"}, Version: 6}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // past the default TTL (a lower bound, not a deadline)
		for _, k := range []string{"ctl", "row"} {
			mustSet(t, c, k, 4, WithVersion(4), WithTTL(time.Hour))
		}
		if v, err := c.Get(ctx, "ctl"); err != nil || v != 5 {
			t.Fatalf("control: %d, %v (a late Set of 4 after a Set of 5 with a 1h TTL)", v, err)
		}
		if v, err := c.Get(ctx, "row"); !errors.Is(err, ErrMiss) {
			t.Fatalf("a Set of version 4 arriving 1s after a delete at version 6 (of a value set at 5 for 1h) was kept: Get = %d, %v", v, err)
		}
	})
}

// onOp runs what it is armed with at the first round trip of op after.
type onOp struct {
	NopObserver
	oneShot
	op string
}

func (o *onOp) Redis(op string, _ time.Duration, _ error) {
	if op == o.op {
		o.fire()
	}
}

// hookedPair is two subscribed instances of V with L1 under one prefix;
// the first one's first op round trip after the hook's arm runs what it
// was armed with.
func hookedPair[V any](t *testing.T, tg redistest.Target, op string) (a, b *Cache[V], obs *onOp) {
	obs, prefix := &onOp{op: op}, testPrefix(t)
	a = newCacheOn[V](t, tg.NewClient(t), prefix, WithL1(100), WithObserver(obs))
	b = newCacheOn[V](t, tg.NewClient(t), prefix, WithL1(100))
	waitSubscribed(t, a, b)
	return a, b, obs
}

// Set (write.go): "Set writes v under key, in Redis and in this instance's
// L1, and tells the other instances to drop their L1 copies." ErrClosed
// (errors.go): "returned by calls made after [Cache.Close]". Close
// (cache.go): "Calls in flight return (with the loader's result, or an
// error)." A Set made before Close whose Redis write landed must not leave
// another instance serving the old value from L1 while Redis has the new.
func TestRedTeamWriteCloseDuringSet(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b, obs := hookedPair[string](t, tg, "set")
		c := newCacheOn[string](t, tg.NewClient(t), a.cfg.prefix, WithL1(100))
		plain := plainInstance(t, tg, a.cfg.prefix)
		waitSubscribed(t, c)
		b0 := b.Stats().Count(EventInvalidationReceived)
		mustSet(t, c, "k", "old")
		// c's own message must be in at b before b fills its L1.
		waitFor(t, 10*time.Second, "c's Set at b", func() bool { return b.Stats().Count(EventInvalidationReceived) > b0 })
		if v, err := b.Get(ctx, "k"); err != nil || v != "old" {
			t.Fatalf("b: %q, %v", v, err)
		}
		obs.arm(func() { _ = a.Close() })
		setErr := a.Set(ctx, "k", "new")
		if v, err := plain.Get(ctx, "k"); err != nil || v != "new" {
			t.Skipf("the Set did not land in Redis (%q, %v; Set: %v)", v, err, setErr)
		}
		// A later message from c, on the same channel: once b applied it,
		// a's message (had it been sent) was applied before.
		before := b.Stats().Count(EventInvalidationReceived)
		if err := c.Delete(ctx, "other"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "c's message at b", func() bool {
			return b.Stats().Count(EventInvalidationReceived) > before
		})
		if v, err := b.Get(ctx, "k"); err == nil && v == "old" {
			t.Fatalf("Set (err %v) landed in Redis during Close but b's L1 still serves %q: no invalidation was sent", setErr, v)
		}
		if setErr != nil && errors.Is(setErr, ErrClosed) {
			t.Errorf("Set made before Close landed in Redis but returned %v (ErrClosed is for calls made after Close; not ErrRedis, so not retried)", setErr)
		}
	})
}

// Clear (write.go): "values written before it are misses from then on";
// doc.go: no L1 holds a value Redis does not. A Set whose Redis write lands
// just before another instance's Clear, which reaches the writer before the
// Set fills its own L1, must not leave the cleared value in that L1 (the
// write's L1 token is taken before the write, so the Clear's flush voids
// it).
func TestRedTeamWriteClearDuringSetLeavesNoL1Copy(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b, obs := hookedPair[string](t, tg, "set")
		cleared := false
		obs.arm(func() { // between a's Redis write and its L1 fill
			before := a.Stats().Count(EventInvalidationReceived)
			if err := b.Clear(ctx); err != nil {
				t.Error(err)
				return
			}
			waitFor(t, 20*time.Second, "b's Clear at a", func() bool { return a.Stats().Count(EventInvalidationReceived) > before })
			cleared = true
		})
		mustSet(t, a, "k", "v")
		if !cleared {
			t.Fatal("the Clear did not run during the Set")
		}
		if v, err := plainInstance(t, tg, a.cfg.prefix).Get(ctx, "k"); !errors.Is(err, ErrMiss) {
			t.Fatalf("Redis after the Clear: %q, %v; want a miss", v, err)
		}
		if v, err := a.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
			t.Fatalf("the writer's L1 kept a value written before the Clear: %q, %v", v, err)
		}
	})
}

// Close (cache.go): "later calls return [ErrClosed]".
func TestRedTeamWriteCallsAfterCloseReturnErrClosed(t *testing.T) {
	tg := redistest.Target{}
	redistest.ForEach(t, func(t *testing.T, target redistest.Target) {
		if target.Name != "single" {
			t.Skip("one topology is enough")
		}
		tg = target
		ctx := t.Context()
		c := newCache[string](t, tg, WithL1(10))
		_ = c.Close()
		checks := map[string]error{
			"Set":               c.Set(ctx, "k", "v"),
			"SetMany(empty)":    c.SetMany(ctx, nil),
			"Delete(k)":         c.Delete(ctx, "k"),
			"Delete()":          c.Delete(ctx),
			"InvalidateTags()":  c.InvalidateTags(ctx),
			"Invalidate(empty)": c.Invalidate(ctx, Invalidation{}),
			"Clear":             c.Clear(ctx),
			"InvalidateTags(t)": c.InvalidateTags(ctx, "t"),
			"Invalidate(k)":     c.Invalidate(ctx, Invalidation{Keys: []string{"k"}}),
			"SetMany(one)":      c.SetMany(ctx, map[string]string{"k": "v"}),
			// Bad input after Close is still a call after Close.
			"InvalidateTags(\"\")": c.InvalidateTags(ctx, ""),
			"Invalidate(bad tag)":  c.Invalidate(ctx, Invalidation{Keys: []string{"k"}, Tags: []string{"}t"}}),
			"Delete(\"\")":         c.Delete(ctx, ""),
			"Set(\"\")":            c.Set(ctx, "", "v"),
		}
		for name, err := range checks {
			if !errors.Is(err, ErrClosed) {
				t.Errorf("%s after Close = %v, want ErrClosed", name, err)
			}
		}
	})
}

// README: "No stale set: a load that began before a Set, Delete, tag
// invalidation or Clear never lands, in Redis or in any instance's L1."
// The loader blocks on a channel; the write is made by another instance
// (or the loading one) while it blocks.
func TestRedTeamWriteNoStaleSet(t *testing.T) {
	writes := map[string]func(ctx context.Context, w *Cache[string], k string) error{
		"Set": func(ctx context.Context, w *Cache[string], k string) error {
			return w.Set(ctx, k, "new", WithTags("tg"+k))
		},
		"Delete": func(ctx context.Context, w *Cache[string], k string) error { return w.Delete(ctx, k) },
		"Tags":   func(ctx context.Context, w *Cache[string], k string) error { return w.InvalidateTags(ctx, "tg"+k) },
		"Clear":  func(ctx context.Context, w *Cache[string], k string) error { return w.Clear(ctx) },
		"VersionedSet": func(ctx context.Context, w *Cache[string], k string) error {
			return w.Set(ctx, k, "new", WithVersion(10))
		},
		"VersionedInvalidate": func(ctx context.Context, w *Cache[string], k string) error {
			return w.Invalidate(ctx, Invalidation{Keys: []string{k}, Version: 10})
		},
		"SetMany": func(ctx context.Context, w *Cache[string], k string) error {
			return w.SetMany(ctx, map[string]string{k: "new", k + "x": "new"})
		},
	}
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		for name, write := range writes {
			for _, same := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/same=%v", name, same), func(t *testing.T) {
					ctx := t.Context()
					prefix := testPrefix(t)
					loader := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
					other := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
					plain := plainInstance(t, tg, prefix)
					waitSubscribed(t, loader, other)
					writer := other
					if same {
						writer = loader
					}
					k := "k"
					inLoad, release := make(chan struct{}), make(chan struct{})
					done := make(chan error, 1)
					go func() {
						_, err := loader.GetOrLoad(ctx, k, func(ctx context.Context) (string, error) {
							LoadOptions(ctx, WithTags("tg"+k), WithVersion(9))
							close(inLoad)
							<-release
							return "old", nil
						})
						done <- err
					}()
					<-inLoad
					if err := write(ctx, writer, k); err != nil {
						t.Fatal(err)
					}
					close(release)
					if err := <-done; err != nil {
						t.Fatal(err)
					}
					// The write's messages: wait for both L1s to have heard
					// something newer by a marker write from a third party.
					marker := plainInstance(t, tg, prefix)
					b1, b2 := loader.Stats().Count(EventInvalidationReceived), other.Stats().Count(EventInvalidationReceived)
					if err := marker.Delete(ctx, "marker"); err != nil {
						t.Fatal(err)
					}
					waitFor(t, 10*time.Second, "marker message", func() bool {
						return loader.Stats().Count(EventInvalidationReceived) > b1 && other.Stats().Count(EventInvalidationReceived) > b2
					})
					for n, c := range map[string]*Cache[string]{"redis": plain, "loader L1": loader, "other L1": other} {
						if v, err := c.Get(ctx, k); err == nil && v == "old" {
							t.Errorf("%s: the load that began before %s landed: %q", n, name, v)
						}
					}
					// A read that begins now never gets the old value.
					v, err := loader.GetOrLoad(ctx, k, func(context.Context) (string, error) { return "fresh", nil })
					if err != nil || v == "old" {
						t.Errorf("a read after %s got %q, %v", name, v, err)
					}
				})
			}
		}
	})
}

// doc.go: "a read that begins once its instance sees the Delete ... loads
// anew"; README "No stale set". A waiter on a third instance waits for the
// holder's lease; a Delete happens; a read started on the waiter's
// instance after it heard the Delete must not get the old value, and
// nothing caches it.
func TestRedTeamWriteDeleteDuringWaitNewReadLoadsAnew(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := testPrefix(t)
		holder := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100), WithLease(30*time.Second))
		waiter := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100), WithLease(30*time.Second))
		writer := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
		plain := plainInstance(t, tg, prefix)
		waitSubscribed(t, holder, waiter, writer)
		held := startGatedLoad(ctx, holder, "k", "old", "")
		<-held.started
		wdone := make(chan string, 1)
		go func() {
			v, _ := waiter.GetOrLoad(ctx, "k", func(context.Context) (string, error) { return "waiter-load", nil })
			wdone <- v
		}()
		// Let the waiter find the lease held (it takes the lease only if the
		// holder's is gone, which it is not).
		admin := tg.NewClient(t)
		wk := waitersKey(waiter, "k")
		waitFor(t, 10*time.Second, "the waiter marks the lease waited for", func() bool {
			n, err := admin.Exists(ctx, wk).Result()
			return err == nil && n == 1
		})
		before := waiter.Stats().Count(EventInvalidationReceived)
		if err := writer.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the Delete at the waiter", func() bool {
			return waiter.Stats().Count(EventInvalidationReceived) > before
		})
		late := make(chan string, 1)
		go func() {
			v, _ := waiter.GetOrLoad(ctx, "k", func(context.Context) (string, error) { return "late-load", nil })
			late <- v
		}()
		time.Sleep(50 * time.Millisecond)
		held.release()
		if v := <-held.done; v != "old" {
			t.Fatalf("the holder got %q", v)
		}
		<-wdone
		if v := <-late; v == "old" {
			t.Errorf("a read begun after the waiter's instance applied the Delete got the value loaded before it")
		}
		for n, c := range map[string]*Cache[string]{"redis": plain, "holder": holder, "waiter": waiter, "writer": writer} {
			if v, err := c.Get(ctx, "k"); err == nil && v == "old" {
				t.Errorf("%s holds the value loaded before the Delete", n)
			}
		}
	})
}

// Doc comment of Set, doc.go "Every instance drops the keys that another
// instance writes"; README "bad input is an error, never a panic". Keys
// with braces, NUL bytes and non-UTF-8 are keys like any other: each has
// its own value, and writes of it reach the other instance's L1.
func TestRedTeamWriteOddKeys(t *testing.T) {
	keysList := []string{"{", "}", "{}", "{a}", "a}b{", "}:lease", "x", "x:lease", "x:ver", "{x}", "\x00", "k\x00x",
		"\xff\xfe", "#0}", "__tag:{x", "__generation", strings.Repeat("}", 3), "a\x00}"}
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[string](t, tg, WithL1(1000))
		for i, k := range keysList {
			if err := a.Set(ctx, k, fmt.Sprint("v1-", i), WithTags("t"+k)); err != nil {
				t.Fatalf("Set(%q): %v", k, err)
			}
		}
		for i, k := range keysList {
			if v, err := b.Get(ctx, k); err != nil || v != fmt.Sprint("v1-", i) {
				t.Fatalf("b.Get(%q) = %q, %v", k, v, err)
			}
		}
		for i, k := range keysList {
			mustSet(t, a, k, fmt.Sprint("v2-", i))
		}
		for i, k := range keysList {
			want := fmt.Sprint("v2-", i)
			waitFor(t, 10*time.Second, fmt.Sprintf("b sees the second write of %q", k), func() bool {
				v, err := b.Get(ctx, k)
				return err == nil && v == want
			})
		}
		if err := b.Delete(ctx, keysList...); err != nil {
			t.Fatal(err)
		}
		for _, k := range keysList {
			waitMiss(t, a, k, 10*time.Second, fmt.Sprintf("a sees b's Delete of %q", k))
		}
		if err := a.Set(ctx, "", "v"); !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("Set empty key: %v", err)
		}
		if err := a.SetMany(ctx, map[string]string{"ok": "v", "": "v"}); !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("SetMany with an empty key: %v", err)
		}
		if err := a.Delete(ctx, "ok", ""); !errors.Is(err, ErrInvalidKey) {
			t.Fatalf("Delete with an empty key: %v", err)
		}
		if err := a.SetMany(ctx, map[string]string{}); err != nil {
			t.Fatalf("SetMany(empty): %v", err)
		}
	})
}

// SetMany (write.go): "writes items as [Cache.Set] does, in one round trip
// per Redis node, and tells the other instances to drop them in one
// message"; Delete: "removes keys from Redis and from every instance's L1".
func TestRedTeamWriteHugeBatch(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[string](t, tg, WithL1(20_000))
		const n = 10_000
		ks := numberedKeys("big:", n)
		items := make(map[string]string, n)
		for _, k := range ks {
			items[k] = "old"
		}
		if err := a.SetMany(ctx, items); err != nil {
			t.Fatal(err)
		}
		got, err := b.GetMany(ctx, ks)
		if err != nil || len(got) != n {
			t.Fatalf("b.GetMany: %d values, %v", len(got), err)
		}
		for _, k := range ks {
			items[k] = "new"
		}
		if err := a.SetMany(ctx, items, WithTags("bigtag")); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "b sees all 10,000 new values", func() bool {
			got, err := b.GetMany(ctx, ks)
			if err != nil {
				return false
			}
			for _, k := range ks {
				if got[k] != "new" {
					return false
				}
			}
			return true
		})
		if err := a.InvalidateTags(ctx, "bigtag"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "b drops the tagged 10,000", func() bool {
			got, err := b.GetMany(ctx, ks)
			return err == nil && len(got) == 0
		})
		if err := a.SetMany(ctx, items); err != nil {
			t.Fatal(err)
		}
		if got, err := b.GetMany(ctx, ks); err != nil || len(got) != n {
			t.Fatalf("b.GetMany: %d values, %v", len(got), err)
		}
		if err := a.Delete(ctx, ks...); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "b drops all 10,000 deleted", func() bool {
			got, err := b.GetMany(ctx, ks)
			return err == nil && len(got) == 0
		})
	})
}

// Set (write.go) writes v "in Redis and in this instance's L1, and tells
// the other instances to drop their L1 copies"; a 1 MB value is under the
// default 4 MiB limit (options.go WithMaxValueSize).
func TestRedTeamWriteBigValue(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[string](t, tg, WithL1Bytes(64<<20))
		old, nw := strings.Repeat("o", 1<<20), strings.Repeat("n", 1<<20)
		mustSet(t, a, "big", old)
		if v, err := b.Get(ctx, "big"); err != nil || v != old {
			t.Fatalf("b: %d bytes, %v", len(v), err)
		}
		mustSet(t, a, "big", nw)
		if v, err := a.Get(ctx, "big"); err != nil || v != nw {
			t.Fatalf("a reads its own write: %d bytes, %v", len(v), err)
		}
		waitFor(t, 10*time.Second, "b sees the new 1 MB value", func() bool {
			v, err := b.Get(ctx, "big")
			return err == nil && v == nw
		})
	})
}

// doc.go: "Within one instance, a read that starts after a Set or Delete
// returned sees its effect (or something newer)"; options.go WithTTL and
// write.go set: a TTL that is not positive is ErrInvalidOption.
func TestRedTeamWriteTTLs(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[string](t, tg, WithL1(100))
		for _, d := range []time.Duration{time.Nanosecond, time.Microsecond, 999 * time.Microsecond} {
			k := fmt.Sprint("tiny", d)
			mustSet(t, a, k, "old")
			if v, err := b.Get(ctx, k); err != nil || v != "old" {
				t.Fatal(v, err)
			}
			if err := a.Set(ctx, k, "new", WithTTL(d)); err != nil {
				t.Fatalf("WithTTL(%v): %v", d, err)
			}
			if v, err := a.Get(ctx, k); err == nil && v == "old" {
				t.Fatalf("WithTTL(%v): a reads the old value after its Set", d)
			}
			waitFor(t, 10*time.Second, "b drops the old value", func() bool {
				v, err := b.Get(ctx, k)
				return !(err == nil && v == "old")
			})
		}
		for _, d := range []time.Duration{0, -1, math.MinInt64} {
			if err := a.Set(ctx, "bad", "v", WithTTL(d)); !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("WithTTL(%v): %v, want ErrInvalidOption", d, err)
			}
			if err := a.SetMany(ctx, map[string]string{"bad": "v"}, WithTTL(d)); !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("SetMany WithTTL(%v): %v, want ErrInvalidOption", d, err)
			}
		}
		for _, d := range []time.Duration{math.MaxInt64, math.MaxInt64 - 1, 200 * 365 * 24 * time.Hour} {
			if err := a.Set(ctx, "huge", fmt.Sprint(d), WithTTL(d), WithTags("h"), WithVersion(uint64(time.Now().UnixNano()))); err != nil {
				t.Fatalf("WithTTL(%v): %v", d, err)
			}
			for n, c := range map[string]*Cache[string]{"a": a, "b": b} {
				waitFor(t, 10*time.Second, "huge TTL visible", func() bool {
					v, err := c.Get(ctx, "huge")
					return err == nil && v == fmt.Sprint(d)
				})
				_ = n
			}
		}
	})
}

// Concurrent versioned Sets from two instances, in random order: WithVersion
// (options.go) "writers whose Sets arrive out of order leave the newest row
// cached ... and every L1 follows"; doc.go "After concurrent writes of a
// key have returned and their messages arrived, no L1 holds a value Redis
// does not."
func TestRedTeamWriteConcurrentVersionedSets(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[int](t, tg, WithL1(100))
		for round := range 20 {
			k := fmt.Sprint("c", round)
			var wg sync.WaitGroup
			for v := 1; v <= 20; v++ {
				w := a
				if v%2 == 0 {
					w = b
				}
				wg.Go(func() {
					if err := w.Set(ctx, k, v, WithVersion(uint64(v))); err != nil {
						t.Error(err)
					}
					_, _ = w.Get(ctx, k)
				})
			}
			wg.Wait()
			for n, c := range map[string]*Cache[int]{"a": a, "b": b} {
				waitFor(t, 10*time.Second, "newest row everywhere", func() bool {
					v, err := c.Get(ctx, k)
					return err == nil && v == 20
				})
				_ = n
			}
		}
	})
}

// Clear (write.go): "This instance's reads miss them as soon as Clear
// returns; another instance's reads (of L1 and of Redis alike) once the
// message reaches it". Instances without L1, so every read is Redis's.
func TestRedTeamWriteClearAtOnceForOtherInstancesRedisReads(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := testPrefix(t)
		a := plainInstance(t, tg, prefix)
		b := plainInstance(t, tg, prefix)
		waitSubscribed(t, a, b)
		for i := range 30 {
			k := fmt.Sprint("c", i)
			mustSet(t, a, k, "old")
			if v, err := b.Get(ctx, k); err != nil || v != "old" {
				t.Fatal(v, err)
			}
			if err := a.Clear(ctx); err != nil {
				t.Fatal(err)
			}
			if v, err := a.Get(ctx, k); !errors.Is(err, ErrMiss) {
				t.Fatalf("the clearing instance read %q, %v right after Clear returned", v, err)
			}
			// Once b has applied every message a sent (the Sets' and the
			// Clear's, in order on one channel), it misses too.
			sent := a.Stats().Count(EventInvalidationSent)
			waitFor(t, time.Minute, "the Clear's message", func() bool {
				return b.Stats().Count(EventInvalidationReceived) >= sent
			})
			if v, err := b.Get(ctx, k); !errors.Is(err, ErrMiss) {
				t.Fatalf("another instance read %q, %v after the Clear's message", v, err)
			}
		}
	})
}

package tiercache

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// countingBatchLoader loads "v:<key>" for every key but those in absent,
// and records each call's keys.
type countingBatchLoader struct {
	mu     sync.Mutex
	calls  [][]string
	absent map[string]bool
	extra  bool // also return a key nobody asked for
	delay  time.Duration
}

func (l *countingBatchLoader) load(ctx context.Context, ks []string) (map[string]string, error) {
	l.mu.Lock()
	l.calls = append(l.calls, slices.Clone(ks))
	l.mu.Unlock()
	time.Sleep(l.delay)
	out := make(map[string]string, len(ks))
	for _, k := range ks {
		if !l.absent[k] {
			out[k] = "v:" + k
		}
	}
	if l.extra {
		out["not-asked-for"] = "x"
	}
	return out, nil
}

func (l *countingBatchLoader) loaded() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var all []string
	for _, c := range l.calls {
		all = append(all, c...)
	}
	slices.Sort(all)
	return all
}

func TestGetManySetMany(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		for _, l1 := range []bool{false, true} {
			t.Run(fmt.Sprint("L1 ", l1), func(t *testing.T) {
				var opts []Option
				if l1 {
					opts = append(opts, WithL1(1000))
				}
				c := newCache[string](t, tg, opts...)
				items := map[string]string{}
				for i := range 300 { // spread over every slot
					items[fmt.Sprint("key-", i)] = fmt.Sprint("value-", i)
				}
				if err := c.SetMany(ctx, items); err != nil {
					t.Fatal(err)
				}
				ks := append(slices.Collect(maps.Keys(items)), "absent-1", "absent-2", "key-1", "key-1")
				got, err := c.GetMany(ctx, ks)
				if err != nil {
					t.Fatal(err)
				}
				if !maps.Equal(got, items) {
					t.Fatalf("GetMany returned %d values, want the %d set", len(got), len(items))
				}
				if got, err := c.GetMany(ctx, nil); err != nil || len(got) != 0 {
					t.Fatalf("GetMany(nil) = %v, %v", got, err)
				}
				if err := c.SetMany(ctx, map[string]string{}); err != nil {
					t.Fatal(err)
				}
				if _, err := c.GetMany(ctx, []string{"a", ""}); !errors.Is(err, ErrInvalidKey) {
					t.Fatalf("GetMany with an empty key = %v", err)
				}
				if err := c.SetMany(ctx, map[string]string{"": "x"}); !errors.Is(err, ErrInvalidKey) {
					t.Fatalf("SetMany with an empty key = %v", err)
				}
			})
		}
	})
}

func TestGetOrLoadMany(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithL1(1000))
		// Some keys cached in Redis only, some in L1 too, some not at all.
		if err := c.SetMany(ctx, map[string]string{"a": "v:a", "b": "v:b"}); err != nil {
			t.Fatal(err)
		}
		c.l1.invalidate("b") // b: Redis only
		var ks []string
		for i := range 200 {
			ks = append(ks, fmt.Sprint("k", i))
		}
		input := append([]string{"a", "b", "a", "gone", "b"}, ks...)
		l := &countingBatchLoader{absent: map[string]bool{"gone": true}, extra: true}
		got, err := c.GetOrLoadMany(ctx, input, l.load)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"a": "v:a", "b": "v:b"}
		for _, k := range ks {
			want[k] = "v:" + k
		}
		if !maps.Equal(got, want) {
			t.Fatalf("got %d values, want %d (missing %v)", len(got), len(want), missingKeys(want, got))
		}
		if len(l.calls) != 1 {
			t.Fatalf("loader called %d times, want 1", len(l.calls))
		}
		wantLoaded := append(slices.Clone(ks), "gone")
		slices.Sort(wantLoaded)
		if !slices.Equal(l.loaded(), wantLoaded) {
			t.Fatalf("loader asked for %v, want only the missing keys", l.loaded())
		}
		// Second time: all from the cache; "gone" is cached as not found
		// and the extra key was not cached.
		got, err = c.GetOrLoadMany(ctx, input, l.load)
		if err != nil || !maps.Equal(got, want) || len(l.calls) != 1 {
			t.Fatalf("second call: %d values, err %v, %d loader calls", len(got), err, len(l.calls))
		}
		if _, err := c.Get(ctx, "gone"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("a key the loader did not return = %v, want ErrNotFound", err)
		}
		if _, err := c.Get(ctx, "not-asked-for"); !errors.Is(err, ErrMiss) {
			t.Fatalf("the extra key the loader returned was cached: %v", err)
		}
		if got, err := c.GetOrLoadMany(ctx, nil, l.load); err != nil || len(got) != 0 {
			t.Fatalf("empty input = %v, %v", got, err)
		}
		if _, err := c.GetOrLoadMany(ctx, ks, nil); !errors.Is(err, ErrNilLoader) {
			t.Fatalf("nil loader = %v", err)
		}
	})
}

// The keys are the batch loader's own: one that sorts them in place (or
// overwrites them once done) gets each value cached under its own key.
func TestBatchLoaderMayChangeItsKeys(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithL1(100))
		input := []string{"c", "a", "d", "b"}
		got, err := c.GetOrLoadMany(ctx, input, func(_ context.Context, ks []string) (map[string]string, error) {
			slices.Sort(ks)
			m := make(map[string]string, len(ks))
			for i, k := range ks {
				m[k] = "v:" + k
				ks[i] = "overwritten"
			}
			return m, nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]string{"a": "v:a", "b": "v:b", "c": "v:c", "d": "v:d"}
		if !maps.Equal(got, want) {
			t.Fatalf("GetOrLoadMany = %v, want %v", got, want)
		}
		if !slices.Equal(input, []string{"c", "a", "d", "b"}) {
			t.Fatalf("the caller's keys were changed: %v", input)
		}
		c.l1.flush() // what Redis holds, too
		for k, v := range want {
			if g, err := c.Get(ctx, k); err != nil || g != v {
				t.Errorf("Get(%q) = %q, %v; want %q", k, g, err, v)
			}
		}
	})
}

func missingKeys(want, got map[string]string) []string {
	var m []string
	for k := range want {
		if _, ok := got[k]; !ok {
			m = append(m, k)
		}
	}
	return m
}

func TestGetOrLoadManyLoaderError(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg)
		if err := c.Set(ctx, "cached", "v"); err != nil {
			t.Fatal(err)
		}
		boom := errors.New("db down")
		got, err := c.GetOrLoadMany(ctx, []string{"cached", "x", "y"}, func(context.Context, []string) (map[string]string, error) {
			return map[string]string{"x": "partial"}, boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("err = %v, want the loader's", err)
		}
		if got["cached"] != "v" || len(got) != 1 {
			t.Fatalf("values found before the failure: %v", got)
		}
		for _, k := range []string{"x", "y"} {
			if _, err := c.Get(ctx, k); !errors.Is(err, ErrMiss) {
				t.Fatalf("%s cached after a failed load: %v", k, err)
			}
		}
		// The leases were released: the next load goes at once.
		start := time.Now()
		l := &countingBatchLoader{}
		if _, err := c.GetOrLoadMany(ctx, []string{"x", "y"}, l.load); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("next load waited %v: leases not released", d)
		}
		// A panicking batch loader reaches the caller as a PanicError.
		_, err = c.GetOrLoadMany(ctx, []string{"p"}, func(context.Context, []string) (map[string]string, error) { panic("bug") })
		if !errors.Is(err, ErrLoaderPanic) {
			t.Fatalf("panic = %v", err)
		}
	})
}

func TestGetOrLoadManyCancel(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		c := newCache[string](t, tg)
		ctx, cancel := context.WithCancel(t.Context())
		release := make(chan struct{})
		l := func(ctx context.Context, ks []string) (map[string]string, error) {
			cancel()
			<-release
			out := map[string]string{}
			for _, k := range ks {
				out[k] = "v"
			}
			return out, nil
		}
		done := make(chan error, 1)
		go func() {
			_, err := c.GetOrLoadMany(ctx, []string{"a", "b"}, l)
			done <- err
		}()
		if err := redistest.Receive(t, done, 20*time.Second, "a cancelled batch did not return while its load went on"); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		close(release)
		// The load went on for the cache: the values land.
		waitFor(t, 2*time.Second, "the detached batch load filled the cache", func() bool {
			got, _ := c.GetMany(t.Context(), []string{"a", "b"})
			return len(got) == 2
		})
	})
}

// Batch and single reads of overlapping keys, at once, in one process and
// across two instances: every key is loaded once.
func TestBatchAndSingleShareLoads(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		cs := instances[string](t, tg, 2, WithL1(1000))
		var perKey sync.Map
		count := func(k string) {
			n, _ := perKey.LoadOrStore(k, new(atomic.Int64))
			n.(*atomic.Int64).Add(1)
		}
		batch := func(ctx context.Context, ks []string) (map[string]string, error) {
			time.Sleep(30 * time.Millisecond)
			out := map[string]string{}
			for _, k := range ks {
				count(k)
				out[k] = "v:" + k
			}
			return out, nil
		}
		var all []string
		for i := range 50 {
			all = append(all, fmt.Sprint("o", i))
		}
		var wg sync.WaitGroup
		start := make(chan struct{})
		for _, c := range cs {
			for g := range 4 {
				wg.Go(func() {
					<-start
					ks := all[g*10 : g*10+20]
					got, err := c.GetOrLoadMany(t.Context(), ks, batch)
					if err != nil || len(got) != len(ks) {
						t.Errorf("batch: %d values, %v", len(got), err)
					}
				})
			}
			for _, k := range all[:10] {
				wg.Go(func() {
					<-start
					v, err := c.GetOrLoad(t.Context(), k, func(ctx context.Context) (string, error) {
						time.Sleep(30 * time.Millisecond)
						count(k)
						return "v:" + k, nil
					})
					if err != nil || v != "v:"+k {
						t.Errorf("single %s: %q, %v", k, v, err)
					}
				})
			}
		}
		close(start)
		wg.Wait()
		perKey.Range(func(k, n any) bool {
			if n.(*atomic.Int64).Load() != 1 {
				t.Errorf("key %v loaded %d times", k, n.(*atomic.Int64).Load())
			}
			return true
		})
	})
}

// A batch loader sets options per key: TTL, tags, "don't cache".
func TestBatchLoaderPerKeyOptions(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithJitter(0))
		load := func(ctx context.Context, ks []string) (map[string]string, error) {
			LoadOptions(ctx, WithTTL(time.Hour))
			LoadKeyOptions(ctx, "short", WithTTL(2*time.Second))
			LoadKeyOptions(ctx, "tagged", WithTags("t"))
			LoadKeyOptions(ctx, "skip", NoCache())
			out := map[string]string{}
			for _, k := range ks {
				out[k] = "v:" + k
			}
			return out, nil
		}
		if got, err := c.GetOrLoadMany(ctx, []string{"long", "short", "tagged", "skip"}, load); err != nil || len(got) != 4 {
			t.Fatalf("GetOrLoadMany = %v, %v", got, err)
		}
		admin := tg.NewClient(t)
		ttl := func(k string) time.Duration { return admin.PTTL(ctx, c.st.Layout.Value(k)).Val() }
		if l, s := ttl("long"), ttl("short"); l < 50*time.Minute || s > 3*time.Second || s <= 0 {
			t.Fatalf("TTLs: long %v, short %v", l, s)
		}
		if admin.Exists(ctx, c.st.Layout.Value("skip")).Val() != 0 {
			t.Fatal("a NoCache key was cached")
		}
		if err := c.InvalidateTags(ctx, "t"); err != nil {
			t.Fatal(err)
		}
		got, _ := c.GetMany(ctx, []string{"long", "tagged"})
		if _, ok := got["tagged"]; ok || got["long"] != "v:long" {
			t.Fatalf("after invalidating the one key's tag: %v", got)
		}
	})
}

// Values of a batch that are due for a background refresh (stale within
// the stale-while-revalidate window, here) are refreshed with one call of
// the batch loader, not one per key.
func TestBatchBackgroundRefreshIsOneCall(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithJitter(0), WithStaleWhileRevalidate(time.Hour), WithEarlyRefresh(0))
		ks := numberedKeys("r", 100)
		var calls, loaded atomic.Int64
		load := func(ctx context.Context, keys []string) (map[string]string, error) {
			calls.Add(1)
			loaded.Add(int64(len(keys)))
			LoadOptions(ctx, WithTTL(50*time.Millisecond))
			out := map[string]string{}
			for _, k := range keys {
				out[k] = "v"
			}
			return out, nil
		}
		if _, err := c.GetOrLoadMany(ctx, ks, load); err != nil || calls.Load() != 1 {
			t.Fatalf("first load: %d calls, %v", calls.Load(), err)
		}
		time.Sleep(100 * time.Millisecond) // every value is now stale (and servable)
		got, err := c.GetOrLoadMany(ctx, ks, load)
		if err != nil || len(got) != 100 {
			t.Fatalf("stale read: %d values, %v", len(got), err)
		}
		waitFor(t, 10*time.Second, "the background refresh", func() bool { return loaded.Load() >= 200 })
		c.bg.Wait()
		if calls.Load() != 2 || loaded.Load() != 200 {
			t.Fatalf("refreshing 100 due keys took %d loader calls for %d keys, want 1 call", calls.Load()-1, loaded.Load()-100)
		}
	})
}

package tiercache

// The audit's findings (issue "one load path"), one test each, against real
// redis-server on one node and on a cluster. Each failed on the code before
// the one load core; the comment above each says how.

import (
	"context"
	"encoding/binary"
	"errors"
	"math"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/internal/store"
)

// firstLoadHeld returns a loader whose first call closes loading, waits
// for release and returns first; every later call returns later at once.
func firstLoadHeld(first, later string) (load LoadFunc[string], loading, release chan struct{}) {
	loading, release = make(chan struct{}), make(chan struct{})
	var calls atomic.Int64
	return func(ctx context.Context) (string, error) {
		if calls.Add(1) == 1 {
			close(loading)
			<-release
			return first, nil
		}
		return later, nil
	}, loading, release
}

// Finding 1: an instance without L1 built no invalidator, so its writes
// never reached the other instances' L1.
func TestAuditWritesWithoutL1ReachOtherL1s(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := testPrefix(t)
		writer := newCacheOn[string](t, tg.NewClient(t), prefix) // no L1
		reader := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
		waitSubscribed(t, reader)
		steps := []struct {
			name  string
			write func() error
			want  string // what the reader must read after it ("" for a miss)
		}{
			{"Set", func() error { return writer.Set(ctx, "k", "set") }, "set"},
			{"SetMany", func() error { return writer.SetMany(ctx, map[string]string{"k": "many"}) }, "many"},
			{"Delete", func() error { return writer.Delete(ctx, "k") }, ""},
			{"Invalidate", func() error { return writer.Invalidate(ctx, Invalidation{Keys: []string{"k"}}) }, ""},
			{"InvalidateTags", func() error { return writer.InvalidateTags(ctx, "t") }, ""},
		}
		for _, st := range steps {
			// The reader holds an old value in L1 (tagged, for the tag step).
			if err := reader.Set(ctx, "k", "old", WithTags("t")); err != nil {
				t.Fatal(err)
			}
			if v, err := reader.Get(ctx, "k"); err != nil || v != "old" {
				t.Fatalf("%s: reader's L1 = %q, %v", st.name, v, err)
			}
			recv := reader.Stats().Count(EventInvalidationReceived)
			if err := st.write(); err != nil {
				t.Fatalf("%s: %v", st.name, err)
			}
			waitFor(t, 10*time.Second, st.name+": invalidation received", func() bool {
				return reader.Stats().Count(EventInvalidationReceived) > recv
			})
			v, err := reader.Get(ctx, "k")
			if st.want == "" && !errors.Is(err, ErrMiss) || st.want != "" && v != st.want {
				t.Fatalf("%s from an instance without L1: reader reads %q, %v; want %q", st.name, v, err, st.want)
			}
		}
	})
}

// Finding 2: lease waiters gave up at half the load timeout and loaded
// themselves (without caching), and could fail with the deadline. A holder
// whose load takes most of the load timeout must still be the only load.
func TestAuditWaitersWaitForASlowHolder(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		const loadTimeout = 2 * time.Second
		cs := instances[int](t, tg, 3, WithLoadTimeout(loadTimeout), WithLease(5*time.Second))
		var calls atomic.Int64
		holding := make(chan struct{})
		load := func(ctx context.Context) (int, error) {
			if calls.Add(1) == 1 {
				close(holding)
				// Well past half the load timeout, well short of all of it.
				time.Sleep(loadTimeout * 3 / 4)
			}
			return 7, nil
		}
		var wg sync.WaitGroup
		errs := make(chan error, len(cs))
		wg.Go(func() {
			if _, err := cs[0].GetOrLoad(t.Context(), "slow", load); err != nil {
				errs <- err
			}
		})
		<-holding
		for _, c := range cs[1:] {
			wg.Go(func() {
				if v, err := c.GetOrLoad(t.Context(), "slow", load); err != nil || v != 7 {
					errs <- errors.Join(err, errors.New("value "+strconv.Itoa(v)))
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("a read failed: %v", err)
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("loader called %d times across 3 instances, want 1", n)
		}
	})
}

// Finding 3: on a node that does not know the scripts (a fresh cluster, a
// restart, SCRIPT FLUSH) the batch path re-ran the whole pipeline with EVAL:
// the Acquires that had run ran twice, found their own leases, waited and
// loaded again without caching.
func TestAuditScriptFlushRunsNothingTwice(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg)
		ks := numberedKeys("sf", 60) // over every master of the cluster
		var calls, loaded atomic.Int64
		load := func(ctx context.Context, ks []string) (map[string]string, error) {
			calls.Add(1)
			loaded.Add(int64(len(ks)))
			out := map[string]string{}
			for _, k := range ks {
				out[k] = "v" + k
			}
			return out, nil
		}
		// Warm the scripts, then make one node (on a cluster, the first
		// master only) forget them.
		if _, err := c.GetOrLoadMany(ctx, []string{"warm"}, load); err != nil {
			t.Fatal(err)
		}
		admin := tg.NewClient(t)
		if cc, ok := admin.(*redis.ClusterClient); ok {
			m, err := cc.MasterForKey(ctx, c.st.Layout.Value(ks[0]))
			if err != nil {
				t.Fatal(err)
			}
			if err := m.ScriptFlush(ctx).Err(); err != nil {
				t.Fatal(err)
			}
		} else if err := admin.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
		calls.Store(0)
		loaded.Store(0)
		got, err := c.GetOrLoadMany(ctx, ks, load)
		if err != nil || len(got) != len(ks) {
			t.Fatalf("GetOrLoadMany = %d values, %v", len(got), err)
		}
		if calls.Load() != 1 || loaded.Load() != int64(len(ks)) {
			t.Fatalf("after SCRIPT FLUSH: %d loader calls for %d keys, want 1 call for %d", calls.Load(), loaded.Load(), len(ks))
		}
		if w := c.Stats().Count(EventLeaseWait); w != 0 {
			t.Fatalf("%d lease waits on keys nobody else loads", w)
		}
		if _, err := c.GetOrLoadMany(ctx, ks, load); err != nil || calls.Load() != 1 {
			t.Fatalf("the loaded values were not cached: %d calls, %v", calls.Load(), err)
		}
	})
}

// Finding 4: GetOrLoadMany kept the leases of keys it did not cache, so
// the next reader of such a key, on any instance, waited the lease TTL.
func TestAuditBatchGivesBackLeasesOfUncachedKeys(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := testPrefix(t)
		opts := []Option{WithNegativeTTL(0), WithMaxValueSize(200), WithLease(time.Minute)}
		a := newCacheOn[string](t, tg.NewClient(t), prefix, opts...)
		b := newCacheOn[string](t, tg.NewClient(t), prefix, opts...)
		big := string(make([]byte, 300))
		load := func(ctx context.Context, ks []string) (map[string]string, error) {
			// "gone" is not found (negative TTL 0: not cached); "huge" is
			// over the size limit; "kept" is cached.
			return map[string]string{"huge": big, "kept": "v"}, nil
		}
		if _, err := a.GetOrLoadMany(ctx, []string{"gone", "huge", "kept"}, load); err != nil {
			t.Fatal(err)
		}
		admin := tg.NewClient(t)
		for _, k := range []string{"gone", "huge"} {
			lk := leaseKey(a, k)
			waitFor(t, 20*time.Second, "the lease of "+k+" given back", func() bool {
				return admin.Exists(ctx, lk).Val() == 0
			})
		}
		// And b loads such a key at once: with its one-minute lease still
		// held, it would wait for it.
		var calls atomic.Int64
		if _, err := b.GetOrLoad(ctx, "gone", func(ctx context.Context) (string, error) {
			calls.Add(1)
			return "now", nil
		}); err != nil || calls.Load() != 1 {
			t.Fatalf("b: %v, %d loads", err, calls.Load())
		}
		// The same for a single-key load told not to cache.
		if _, err := a.GetOrLoad(ctx, "ttl0", func(ctx context.Context) (string, error) {
			LoadOptions(ctx, WithTTL(0))
			return "x", nil
		}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 20*time.Second, "the lease of a WithTTL(0) load given back", func() bool {
			return admin.Exists(ctx, leaseKey(a, "ttl0")).Val() == 0
		})
	})
}

// Finding 5: Set stored its value in its own L1 after the Redis write,
// unconditionally; when another write of the key reached Redis (and its
// message reached this instance) in between, this instance kept the older
// value while Redis and the others had the newer one.
func TestAuditWriterL1FollowsRedis(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[string](t, tg, WithL1(100))
		admin := tg.NewClient(t)

		// The interleaving, step by step: a takes its token and writes
		// Redis; b's write lands after it and b's message reaches a; only
		// then does a store in its L1.
		tok := a.l1.token("k")
		if _, _, err := a.st.Set(ctx, []store.Write{a.frame(t, "k", "a-old")}); err != nil {
			t.Fatal(err)
		}
		recv := a.Stats().Count(EventInvalidationReceived)
		if err := b.Set(ctx, "k", "b-new"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "b's message at a", func() bool { return a.Stats().Count(EventInvalidationReceived) > recv })
		a.l1.store("k", tok, entry[string]{val: "a-old", softExp: nowMicro() + 60e6}, false)
		if v, err := a.Get(ctx, "k"); err != nil || v != "b-new" {
			t.Fatalf("a reads %q, %v; Redis and b hold b-new", v, err)
		}

		// And under load: two instances and two goroutines each write one
		// key; once all writes returned and all messages arrived, every L1
		// agrees with Redis (or holds nothing).
		for round := range 200 {
			var wg sync.WaitGroup
			for i, c := range []*Cache[string]{a, a, b, b} {
				wg.Go(func() {
					if err := c.Set(ctx, "race", strconv.Itoa(round*10+i)); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Wait()
			waitFor(t, 10*time.Second, "every message delivered", func() bool {
				return a.Stats().Count(EventInvalidationReceived) >= b.Stats().Count(EventInvalidationSent) &&
					b.Stats().Count(EventInvalidationReceived) >= a.Stats().Count(EventInvalidationSent)
			})
			want := decodedValue(t, a, admin, "race")
			for name, c := range map[string]*Cache[string]{"a": a, "b": b} {
				if e, ok := c.l1.peek("race"); ok && e.val != want {
					t.Fatalf("round %d: %s's L1 holds %q, Redis %q", round, name, e.val, want)
				}
			}
		}
	})
}

// frame builds the stored frame of v under key, as Set would.
func (c *Cache[V]) frame(t *testing.T, key string, v V) store.Write {
	t.Helper()
	vk := c.st.Layout.Value(key)
	now := nowMicro()
	b, err := c.frameOf(vk, &entry[V]{val: v, writtenAt: now, softExp: now + 60e6}, c.st.Generation(t.Context()))
	if err != nil {
		t.Fatal(err)
	}
	return store.Write{VK: vk, Frame: b, TTL: time.Minute}
}

// Finding 6: a tag invalidated during a load, whose key then vanished
// (expired or evicted) before the load read it, was recreated at the load's
// start, and the load's value, read before the invalidation, was cached.
func TestAuditTagKeyVanishingDuringLoad(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithL1(100))
		admin := tg.NewClient(t)
		// The tag exists (a value carries it), as in production.
		if err := c.Set(ctx, "other", "x", WithTags("shelf")); err != nil {
			t.Fatal(err)
		}
		held, loading, release := firstLoadHeld("before", "after")
		load := func(ctx context.Context) (string, error) {
			LoadOptions(ctx, WithTags("shelf"))
			return held(ctx)
		}
		done := make(chan error, 1)
		go func() {
			_, err := c.GetOrLoad(context.Background(), "item", load)
			done <- err
		}()
		<-loading
		if err := c.InvalidateTags(ctx, "shelf"); err != nil {
			t.Fatal(err)
		}
		// The tag key vanishes (an eviction; or an expiry, which tag bumps
		// now rule out by keeping the key alive past every load).
		if err := admin.Del(ctx, c.st.Layout.Tag("shelf")).Err(); err != nil {
			t.Fatal(err)
		}
		close(release)
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if v, err := c.GetOrLoad(ctx, "item", load); err != nil || v != "after" {
			t.Fatalf("after the invalidation: %q, %v; the value loaded before it was cached", v, err)
		}
		// A bump keeps the tag key alive at least as long as a load can run.
		if err := c.InvalidateTags(ctx, "shelf"); err != nil {
			t.Fatal(err)
		}
		if ttl := admin.PTTL(ctx, c.st.Layout.Tag("shelf")).Val(); ttl < 2*c.cfg.loadTimeout {
			t.Fatalf("tag key TTL %v after a bump, want at least two load timeouts", ttl)
		}
	})
}

// Finding 7: one message on the invalidation channel (a tag entry whose
// length overflowed the parser's check) crashed every subscribed instance.
func TestAuditHostileMessagesDoNotStopTheSubscriber(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[string](t, tg, WithL1(100))
		admin := tg.NewClient(t)
		header := func(kind byte) []byte {
			return append([]byte{'T', 1, 1, 2, 3, 4, 5, 6, 7, 8}, kind)
		}
		overflow := binary.AppendUvarint(header('t'), math.MaxUint64-7)
		overflow = append(overflow, make([]byte, 16)...)
		payloads := [][]byte{
			overflow,
			binary.AppendUvarint(header('t'), math.MaxUint64),
			binary.AppendUvarint(header('k'), math.MaxUint64),
			append(header('k'), 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01),
			header('z'), {'T'}, {}, []byte("hello"),
		}
		for _, p := range payloads {
			if err := publishRaw(ctx, a, admin, p); err != nil {
				t.Fatal(err)
			}
		}
		// Still subscribed, and still applying real invalidations.
		if err := b.Set(ctx, "k", "old"); err != nil {
			t.Fatal(err)
		}
		if _, err := b.Get(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		recv := b.Stats().Count(EventInvalidationReceived)
		if err := a.Set(ctx, "k", "new"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "a's invalidation at b", func() bool { return b.Stats().Count(EventInvalidationReceived) > recv })
		if v, _ := b.Get(ctx, "k"); v != "new" {
			t.Fatalf("b reads %q after a's Set", v)
		}
	})
}

// Finding 8a: Close cancelled the loads in flight but left their leases
// held, so the other instances waited on those keys for the lease TTL.
func TestAuditCloseGivesBackLeases(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		c := newCache[string](t, tg, WithLease(time.Minute))
		admin := tg.NewClient(t)
		loading := make(chan struct{})
		go func() {
			_, _ = c.GetOrLoad(context.Background(), "k", func(ctx context.Context) (string, error) {
				close(loading)
				<-ctx.Done() // cancelled by Close
				return "", ctx.Err()
			})
		}()
		<-loading
		lk := leaseKey(c, "k")
		if admin.Exists(t.Context(), lk).Val() != 1 {
			t.Fatal("no lease while loading")
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if admin.Exists(t.Context(), lk).Val() != 0 {
			t.Fatal("Close returned with the cancelled load's lease still held")
		}
	})
}

// Finding 8b: Close closed the zstd decoder while reads were decoding with
// it (a data race, and a read that hung).
func TestAuditCloseDuringZstdReads(t *testing.T) {
	c := newCache[string](t, redistest.Target{NewClient: func(tb testing.TB) redis.UniversalClient {
		return redistest.SharedServer(tb).Client(tb)
	}}, WithCompression(Zstd, 0), WithL1(10))
	ctx := t.Context()
	big := string(make([]byte, 4096))
	for i := range 20 {
		if err := c.Set(ctx, strconv.Itoa(i), big); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		repeatUntil(&wg, stop, func(i int) bool {
			_, _ = c.Get(ctx, strconv.Itoa((g+i)%20))
			return true
		})
	}
	time.Sleep(20 * time.Millisecond)
	_ = c.Close()
	close(stop)
	wg.Wait()
}

// A write ends the flights of its key of every kind: a Refresh that starts
// after a Set does not join one that started before it.
func TestAuditRefreshAfterWriteStartsAnew(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg)
		load, loading, release := firstLoadHeld("old", "new")
		first := make(chan string, 1)
		go func() {
			v, _ := c.Refresh(context.Background(), "k", load)
			first <- v
		}()
		<-loading
		if err := c.Set(ctx, "k", "written"); err != nil {
			t.Fatal(err)
		}
		second := make(chan string, 1)
		go func() {
			v, _ := c.Refresh(context.Background(), "k", load)
			second <- v
		}()
		if v := <-second; v != "new" {
			t.Fatalf("a Refresh after the Set returned %q", v)
		}
		close(release)
		<-first
	})
}

// No user key shares an internal flight: a key spelled like the old
// refresh flight key of another is its own.
func TestAuditUserKeysOwnTheirFlights(t *testing.T) {
	c := newCache[string](t, redistest.Target{NewClient: func(tb testing.TB) redis.UniversalClient {
		return redistest.SharedServer(tb).Client(tb)
	}})
	loading, release := make(chan struct{}), make(chan struct{})
	go func() {
		_, _ = c.Refresh(context.Background(), "k", func(ctx context.Context) (string, error) {
			close(loading)
			<-release
			return "refresh of k", nil
		})
	}()
	<-loading
	defer close(release)
	v, err := c.GetOrLoad(t.Context(), "\x00refresh\x00k", func(ctx context.Context) (string, error) { return "mine", nil })
	if err != nil || v != "mine" {
		t.Fatalf("GetOrLoad of a key spelled like an internal flight = %q, %v", v, err)
	}
}

// A loader that panics or calls runtime.Goexit, single or batch, fails its
// waiters with a *PanicError and leaves no flight open: the next read loads.
func TestAuditLoaderGoexitAndPanicEndFlights(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg)
		aborts := map[string]func(){
			"goexit": runtime.Goexit,
			"panic":  func() { panic("boom") },
		}
		for name, abort := range aborts {
			_, err := c.GetOrLoad(ctx, name, func(ctx context.Context) (string, error) { abort(); return "", nil })
			var perr *PanicError
			if !errors.Is(err, ErrLoaderPanic) || !errors.As(err, &perr) {
				t.Fatalf("%s: GetOrLoad err = %v, want a PanicError", name, err)
			}
			_, err = c.GetOrLoadMany(ctx, []string{name + "-b"}, func(ctx context.Context, ks []string) (map[string]string, error) {
				abort()
				return nil, nil
			})
			if !errors.Is(err, ErrLoaderPanic) {
				t.Fatalf("%s: GetOrLoadMany err = %v", name, err)
			}
			for _, k := range []string{name, name + "-b"} {
				if v, err := c.GetOrLoad(ctx, k, func(ctx context.Context) (string, error) { return "ok", nil }); err != nil || v != "ok" {
					t.Fatalf("%s: the next read of %s = %q, %v", name, k, v, err)
				}
			}
		}
		if strings := (&PanicError{Value: "x", Stack: []byte("stack\nlines")}).Error(); strings != "tiercache: loader panicked: x" {
			t.Fatalf("PanicError.Error() = %q, want one line", strings)
		}
	})
}

// A value type whose decoder panics on what is stored is a counted miss,
// not a crash; an Observer that panics on the read path leaves no flight
// open.
type touchy struct{ V string }

func (t *touchy) UnmarshalJSON(b []byte) error {
	if string(b) == `"explode"` {
		panic("decoder panicked")
	}
	t.V = string(b)
	return nil
}

func (t touchy) MarshalJSON() ([]byte, error) { return []byte(strconv.Quote(t.V)), nil }

type panickyObserver struct {
	NopObserver
	oneShot
}

func (o *panickyObserver) Lookup(Tier, bool, time.Duration) { o.fire() }

func TestAuditPanicsInUserCodeLeaveNoFlightOpen(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		obs := &panickyObserver{}
		c := newCache[touchy](t, tg, WithObserver(obs))
		if err := c.Set(ctx, "k", touchy{V: "explode"}); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, "k"); !errors.Is(err, ErrMiss) || c.Stats().Count(EventCorrupt) == 0 {
			t.Fatalf("Get of bytes whose decoder panics: %v, %d corrupt", err, c.Stats().Count(EventCorrupt))
		}
		obs.arm(func() { panic("observer panicked") })
		func() {
			defer func() { _ = recover() }()
			_, _ = c.GetOrLoad(ctx, "obs", func(ctx context.Context) (touchy, error) { return touchy{V: "v"}, nil })
		}()
		v, err := c.GetOrLoad(ctx, "obs", func(ctx context.Context) (touchy, error) { return touchy{V: "v"}, nil })
		if err != nil || v.V != `"v"` && v.V != "v" {
			t.Fatalf("after an Observer panicked: %v, %v", v, err)
		}
	})
}

// blockingLookup is an Observer whose first L2 lookup, once armed, tells
// in and waits for proceed, then runs then (a panic, a Goexit).
type blockingLookup struct {
	NopObserver
	armed       atomic.Bool
	in, proceed chan struct{}
	then        func()
}

func (o *blockingLookup) Lookup(tier Tier, _ bool, _ time.Duration) {
	if tier == TierL2 && o.armed.CompareAndSwap(true, false) {
		close(o.in)
		<-o.proceed
		o.then()
	}
}

// The read that leads a flight panics (here in its Observer) or calls
// runtime.Goexit while another caller waits on the flight: the panic goes
// on up the leader's stack, and the waiter gets it as a *PanicError
// (errors.Is ErrLoaderPanic), as the Observer's doc says.
func TestAuditWaitersOfAReadThatPanicsGetAPanicError(t *testing.T) {
	for _, tc := range []struct {
		name  string
		then  func()
		value func(any) bool
	}{
		{"panic", func() { panic("observer boom") }, func(v any) bool { return v == "observer boom" }},
		{"Goexit", runtime.Goexit, func(v any) bool { return v == errReadAborted }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obs := &blockingLookup{in: make(chan struct{}), proceed: make(chan struct{}), then: tc.then}
			c := newCacheOn[string](t, directClient(t, redistest.SharedServer(t)), testPrefix(t), WithObserver(obs))
			waitSubscribed(t, c)    // (its subscription coming up would forget the leader's flight)
			c.odds.v.Store(oddsOne) // the read sends its GET (see readOdds)
			obs.armed.Store(true)
			leader := make(chan any, 1)
			go func() {
				defer func() { leader <- recover() }()
				_, _ = c.GetOrLoad(context.Background(), "k", constLoad("v", 0))
			}()
			<-obs.in // the leader's GET is back; its Observer holds it
			waiter := make(chan error, 1)
			go func() {
				_, err := c.GetOrLoad(context.Background(), "k", constLoad("v", 0))
				waiter <- err
			}()
			waitFor(t, 10*time.Second, "the waiter to join the flight", func() bool { return c.Stats().Count(EventCoalesced) == 1 })
			close(obs.proceed)
			p := <-leader
			if tc.name == "panic" && p != "observer boom" {
				t.Errorf("the leader's panic = %v, want it to go on up its stack", p)
			}
			err := redistest.Receive(t, waiter, 10*time.Second, "the waiter did not return")
			var perr *PanicError
			if !errors.As(err, &perr) || !errors.Is(err, ErrLoaderPanic) || !tc.value(perr.Value) {
				t.Fatalf("the waiter got %v, want a *PanicError of the leader's %s", err, tc.name)
			}
		})
	}
}

// A batch whose Observer panics when told that one of its keys joined
// another caller's load leaves none of its other keys' flights open: a
// later read of them loads instead of waiting for good.
func TestAuditBatchObserverPanicLeavesNoFlightOpen(t *testing.T) {
	obs := &eventHook{e: EventCoalesced}
	c := newCacheOn[string](t, directClient(t, redistest.SharedServer(t)), testPrefix(t), WithObserver(obs))
	waitSubscribed(t, c) // (its subscription coming up would forget the flight of "a")
	release, held := holdLoad(c, "a", "a")
	defer release()
	obs.arm(func() { panic("observer boom") })
	func() {
		defer func() {
			if p := recover(); p != "observer boom" {
				t.Errorf("GetOrLoadMany's panic = %v, want the Observer's", p)
			}
		}()
		// "b" first: claimed and led before "a" is found in flight.
		_, _ = c.GetOrLoadMany(context.Background(), []string{"b", "a"}, func(_ context.Context, ks []string) (map[string]string, error) {
			m := map[string]string{}
			for _, k := range ks {
				m[k] = k
			}
			return m, nil
		})
	}()
	release()
	if err := <-held; err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if v, err := c.GetOrLoad(ctx, "b", constLoad("b", 0)); err != nil || v != "b" {
		t.Fatalf(`GetOrLoad("b") after the batch's Observer panicked = %q, %v`, v, err)
	}
}

// Durations do not overflow: a huge TTL works (the value stays), it does
// not wrap around and expire at once.
func TestAuditHugeTTLs(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithDefaultTTL(math.MaxInt64), WithJitter(1), WithStaleIfError(math.MaxInt64), WithL1(10))
		if err := c.Set(ctx, "set", "v"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.GetOrLoad(ctx, "load", func(ctx context.Context) (string, error) { return "v", nil }); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(ctx, "ttl", "v", WithTTL(200*365*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		admin := tg.NewClient(t)
		for _, k := range []string{"set", "load", "ttl"} {
			if ttl := admin.PTTL(ctx, c.st.Layout.Value(k)).Val(); ttl < 24*time.Hour {
				t.Fatalf("%s: Redis TTL %v for a huge TTL", k, ttl)
			}
			c.l1.invalidate(k) // read from Redis
			if v, err := c.Get(ctx, k); err != nil || v != "v" {
				t.Fatalf("%s: Get = %q, %v", k, v, err)
			}
		}
	})
}

// A command that fails on one node of a cluster pipeline is an error of
// the read, not a miss of its key. Without retries or redirects the dead
// node's commands fail at once (connection refused) while the others
// answer: the old code took the pipeline's first error, a redis.Nil, for
// the read's and the dead node's keys for misses.
func TestAuditClusterPipelineErrorsAreNotMisses(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	ctx := t.Context()
	rdb := cl.Client(t, func(o *redis.ClusterOptions) {
		o.ContextTimeoutEnabled = true
		o.DialTimeout = 200 * time.Millisecond
		o.MaxRetries, o.MaxRedirects = -1, -1
	})
	c := newCacheOn[string](t, rdb, "pipe", WithoutBreaker())
	// Keys on every master; the first one absent (a redis.Nil in the
	// pipeline's first command), the others present.
	ks := make([]string, 30)
	for i := range ks {
		ks[i] = "p" + strconv.Itoa(i)
		if i > 0 {
			if err := c.Set(ctx, ks[i], "v"); err != nil {
				t.Fatal(err)
			}
		}
	}
	first := cl.MasterForKey(ctx, c.st.Layout.Value(ks[0]))
	var victim *redistest.Server
	for _, k := range ks[1:] {
		if m := cl.MasterForKey(ctx, c.st.Layout.Value(k)); m != first {
			victim = m
			break
		}
	}
	victim.Stop()
	got, err := c.GetMany(ctx, ks)
	if !errors.Is(err, ErrRedis) {
		t.Fatalf("GetMany with a dead master = %d values, %v; want ErrRedis", len(got), err)
	}
	// The live masters' keys are read all the same.
	for _, k := range ks[1:] {
		if _, ok := got[k]; !ok && cl.MasterForKey(ctx, c.st.Layout.Value(k)) != victim {
			t.Errorf("%s, on a live master, missing from %d values", k, len(got))
		}
	}
}

// With Redis down, loaded values are kept in L1 for the outage TTL: the
// loader sees about one call per key per outage TTL, not one per read; a
// write during the outage fails and drops the key from this instance's L1,
// so the next read loads again.
func TestOutageL1AbsorbsLoads(t *testing.T) {
	s := redistest.StartServer(t)
	rdb := s.Client(t, func(o *redis.Options) {
		o.ContextTimeoutEnabled = true
		o.MaxRetries = 0
		o.DialTimeout = 50 * time.Millisecond
	})
	const outageTTL = 500 * time.Millisecond
	c := newCacheOn[string](t, rdb, "outage", WithL1(1000), WithL1OutageTTL(outageTTL), WithReadTimeout(50*time.Millisecond))
	s.Stop()
	var calls atomic.Int64
	version := atomic.Int64{}
	load := func(ctx context.Context) (string, error) {
		calls.Add(1)
		return "v" + strconv.FormatInt(version.Load(), 10), nil
	}
	ctx := t.Context()
	start := time.Now()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for g := range 8 {
		wg.Go(func() {
			for i := range 500 {
				if _, err := c.GetOrLoad(ctx, "k"+strconv.Itoa((g+i)%20), load); err != nil {
					failed.Add(1)
				}
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if failed.Load() != 0 {
		t.Fatalf("%d reads failed during the outage", failed.Load())
	}
	// At most one load per key per outage TTL elapsed (plus one per key for
	// the start, and the loads that overlap an expiry).
	limit := int64(20 * (2 + int(elapsed/outageTTL)) * 2)
	t.Logf("4000 reads in %v during the outage: %d loader calls (bound %d)", elapsed, calls.Load(), limit)
	if calls.Load() > limit {
		t.Fatalf("%d loader calls for 4000 reads of 20 keys in %v; want at most %d", calls.Load(), elapsed, limit)
	}
	// A write during the outage fails and drops the key here.
	version.Store(1)
	if err := c.Set(ctx, "k0", "written"); !errors.Is(err, ErrRedis) {
		t.Fatalf("Set during the outage = %v, want ErrRedis", err)
	}
	if v, err := c.GetOrLoad(ctx, "k0", load); err != nil || v != "v1" {
		t.Fatalf("read after a failed write = %q, %v; want a fresh load", v, err)
	}
}

// Close while a miss's Acquire is on the wire (a lone lease script is not
// cut short by Close: see store.Acquire): the load calls no loader after
// Close, and the lease the acquire took is given back before Close returns.
func TestCloseDuringAcquireCallsNoLoader(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		rdb := tg.NewClient(t)
		hook := newAcquireGate(0, false)
		rdb.AddHook(hook)
		c := newCacheOn[string](t, rdb, testPrefix(t), WithLease(time.Minute))
		admin := tg.NewClient(t)
		var loads atomic.Int64
		read := make(chan error, 1)
		go func() {
			_, err := c.GetOrLoad(context.Background(), "k", func(context.Context) (string, error) {
				loads.Add(1)
				return "v", nil
			})
			read <- err
		}()
		<-hook.in // the acquire is on its way to Redis
		closed := make(chan error, 1)
		go func() { closed <- c.Close() }()
		waitFor(t, 10*time.Second, "Close to begin", func() bool { return c.life.Err() != nil })
		close(hook.proceed)
		if err := <-closed; err != nil {
			t.Fatal(err)
		}
		if err := <-read; !errors.Is(err, ErrClosed) {
			t.Errorf("the read whose load Close cancelled returned %v, want ErrClosed", err)
		}
		if n := loads.Load(); n != 0 {
			t.Errorf("the loader was called %d times after Close", n)
		}
		if admin.Exists(t.Context(), leaseKey(c, "k")).Val() != 0 {
			t.Error("Close returned with the acquire's lease still held")
		}
	})
}

package tiercache

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/msg"
	"github.com/tiercache/tiercache/internal/redistest"
)

// gatedLoad is a GetOrLoad in flight whose loader, tagged with tag (if not
// ""), has started (started closes) and returns val once proceed is closed.
type gatedLoad struct {
	started, proceed chan struct{}
	done             chan string
	once             sync.Once
}

// release closes proceed, once however often it is called.
func (g *gatedLoad) release() { g.once.Do(func() { close(g.proceed) }) }

func startGatedLoad(ctx context.Context, c *Cache[string], key, val, tag string) *gatedLoad {
	return startGated(func(load LoadFunc[string]) (string, error) { return c.GetOrLoad(ctx, key, load) }, val, tag)
}

// startGated is startGatedLoad for any read that calls load: GetOrLoad,
// Refresh, ...
func startGated(read func(load LoadFunc[string]) (string, error), val, tag string) *gatedLoad {
	g := &gatedLoad{started: make(chan struct{}), proceed: make(chan struct{}), done: make(chan string, 1)}
	go func() {
		v, err := read(func(ctx context.Context) (string, error) {
			if tag != "" {
				LoadOptions(ctx, WithTags(tag))
			}
			close(g.started)
			<-g.proceed
			return val, nil
		})
		if err != nil {
			v = "error: " + err.Error()
		}
		g.done <- v
	}()
	return g
}

// Failed while TagRead recreated a vanished tag key at the load's start
// (now it takes the server's time, newer than every load in flight). Two
// loads of keys tagged "t" are in flight (L began before L');
// the tag is invalidated and its key then vanishes (evicted). L returns
// first: its TagRead recreates the tag key at L's start, sees the floor and
// is refused, but leaves the tag key holding L's start time. L' returns: its
// TagRead finds the key present at a version older than L' began, so it is
// not stale and no floor is consulted: the value loaded before the
// invalidation is cached and served, although InvalidateTags promises that
// "loads in flight that read data before the invalidation do not cache what
// they loaded, even if a tag's key vanishes from Redis meanwhile".
func TestRedTeamTagKeyVanishingForgetsInvalidation(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg) // no L1: every read is Redis's answer
		raw := tg.NewClient(t)

		l := startGatedLoad(ctx, c, "k1", "old1", "t")
		<-l.started
		time.Sleep(2 * time.Millisecond) // L' takes its lease at a later server time
		l2 := startGatedLoad(ctx, c, "k2", "old2", "t")
		<-l2.started

		if err := c.InvalidateTags(ctx, "t"); err != nil {
			t.Fatal(err)
		}
		if err := raw.Del(ctx, c.st.Layout.Tag("t")).Err(); err != nil { // evicted
			t.Fatal(err)
		}
		close(l.proceed)
		if v := <-l.done; v != "old1" {
			t.Fatalf("L returned %q", v)
		}
		close(l2.proceed)
		if v := <-l2.done; v != "old2" {
			t.Fatalf("L' returned %q", v)
		}
		for _, k := range []string{"k1", "k2"} {
			if v, err := c.Get(ctx, k); err == nil {
				t.Errorf("Get(%s) = %q after InvalidateTags: a value loaded before the invalidation was cached "+
					"(tag key now %q; fills refused %d, want 2)", k, v, raw.Get(ctx, c.st.Layout.Tag("t")).Val(), c.Stats().Count(EventFillRefused))
			}
		}
	})
}

// (The outage interleavings found here moved to the fault suite, ./faults:
// TestOutageTaggedValueNotKeptInL1 and TestFailedTaggedSetDropsL1.)

// --- Guards that pass ---

// Every way a load can end without filling (runtime.Goexit, panic, NoCache,
// WithTTL(0), ErrNotFound with WithNegativeTTL(0), a value over the size
// limit, a loader error) gives the lease back: another instance then loads
// at once instead of waiting out a one-minute lease.
func TestRedTeamLeaseGivenBackOnEveryUnfilledEnd(t *testing.T) {
	cases := []struct {
		name string
		load LoadFunc[string]
		want func(v string, err error) bool
	}{
		{"goexit", func(context.Context) (string, error) { runtime.Goexit(); return "", nil },
			func(_ string, err error) bool { return errors.Is(err, ErrLoaderPanic) }},
		{"panic", func(context.Context) (string, error) { panic("boom") },
			func(_ string, err error) bool { return errors.Is(err, ErrLoaderPanic) }},
		{"nocache", func(ctx context.Context) (string, error) { LoadOptions(ctx, NoCache()); return "v", nil },
			func(v string, err error) bool { return err == nil && v == "v" }},
		{"ttl0", func(ctx context.Context) (string, error) { LoadOptions(ctx, WithTTL(0)); return "v", nil },
			func(v string, err error) bool { return err == nil && v == "v" }},
		{"notfound-negttl0", func(context.Context) (string, error) { return "", ErrNotFound },
			func(_ string, err error) bool { return errors.Is(err, ErrNotFound) }},
		{"too-large", func(context.Context) (string, error) { return strings.Repeat("x", 4096), nil },
			func(v string, err error) bool { return err == nil && len(v) == 4096 }},
		{"error", func(context.Context) (string, error) { return "", errors.New("db down") },
			func(_ string, err error) bool { return err != nil && err.Error() == "db down" }},
	}
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		cs := instances[string](t, tg, 2, WithL1(100), WithLease(time.Minute), WithNegativeTTL(0), WithMaxValueSize(1024))
		a, b := cs[0], cs[1]
		raw := tg.NewClient(t)
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				ctx := t.Context()
				key := "lease-" + tc.name
				if v, err := a.GetOrLoad(ctx, key, tc.load); !tc.want(v, err) {
					t.Fatalf("GetOrLoad = %q, %v", v, err)
				}
				lk := leaseKey(a, key)
				waitFor(t, 10*time.Second, "lease given back", func() bool { return raw.Exists(ctx, lk).Val() == 0 })
				if v, err := b.GetOrLoad(ctx, key, constLoad("b", 0)); err != nil || v != "b" {
					t.Fatalf("other instance = %q, %v", v, err)
				}
			})
		}
	})
}

// Two instances with L1 Set one key concurrently while a third reads it;
// once both invalidations have arrived everywhere, every L1 holds nothing
// or what Redis holds.
func TestRedTeamConcurrentSetsL1AgreesWithRedis(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := testPrefix(t)
		cs := make([]*Cache[string], 3)
		for i := range cs {
			cs[i] = newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
		}
		ref := newCacheOn[string](t, tg.NewClient(t), prefix) // no L1: Redis's view
		waitSubscribed(t, cs...)
		n := 150
		if testing.Short() {
			n = 30
		}
		for i := range n {
			var wg sync.WaitGroup
			before := make([]uint64, len(cs))
			for j, c := range cs {
				before[j] = c.Stats().Count(EventInvalidationReceived)
			}
			for j := range 2 {
				wg.Go(func() {
					if err := cs[j].Set(ctx, "k", fmt.Sprint(i, "-", j)); err != nil {
						t.Error(err)
					}
				})
			}
			wg.Go(func() { _, _ = cs[2].GetOrLoad(ctx, "k", constLoad("loaded", 0)) })
			wg.Wait()
			// a and b each get the other's message; the reader gets both.
			want := []uint64{1, 1, 2}
			for j, c := range cs {
				waitFor(t, 10*time.Second, "invalidations delivered", func() bool {
					return c.Stats().Count(EventInvalidationReceived) >= before[j]+want[j]
				})
			}
			inRedis, err := ref.Get(ctx, "k")
			if err != nil {
				t.Fatal(err)
			}
			for j, c := range cs {
				if e, ok := c.l1.peek("k"); ok && e.val != inRedis {
					t.Fatalf("iteration %d: instance %d's L1 holds %q, Redis %q", i, j, e.val, inRedis)
				}
			}
		}
	})
}

// Hostile payloads on the invalidation channel neither crash nor stall the
// subscriber, nor make it miss the real invalidation that follows them.
func TestRedTeamHostilePayloadsThenRealInvalidation(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		a, b := subscribedPair[string](t, tg, WithL1(100))
		if _, err := a.GetOrLoad(ctx, "k", constLoad("old", 0)); err != nil {
			t.Fatal(err)
		}
		hdr := func(sender [8]byte, kind msg.Kind) []byte {
			return append([]byte{'T', msg.Version}, append(sender[:], byte(kind))...)
		}
		var other [8]byte
		copy(other[:], "attacker")
		huge := binary.AppendUvarint(hdr(other, msg.KindKeys), math.MaxUint64)
		overlong := append(hdr(other, msg.KindKeys), 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01)
		tag256 := append(binary.AppendUvarint(hdr(other, msg.KindTags), 256), strings.Repeat("t", 256+8)...)
		tagShort := append(binary.AppendUvarint(hdr(other, msg.KindTags), 3), "abc1234"...)
		spoofed := hdr(a.inv.id, msg.KindKeys) // a's own id: a ignores it, as it should
		spoofed = append(binary.AppendUvarint(spoofed, 1), 'k')
		payloads := [][]byte{
			nil, []byte("T"), []byte("hello"), hdr(other, 0), huge, overlong, tag256, tagShort, spoofed,
			[]byte(strings.Repeat("\x00", 1<<20)),
			msg.Encode(other, nil, []envelope.Tag{{Name: "unrelated", Version: math.MaxUint64}}, false)[0],
		}
		raw := tg.NewClient(t)
		before := a.Stats().Count(EventInvalidationReceived)
		// The last one is a valid message from another sender: once it
		// is counted, every payload before it has been handled.
		payloads = append(payloads, msg.Encode(other, []string{"marker"}, nil, false)[0])
		for _, p := range payloads {
			if err := publishRaw(ctx, a, raw, p); err != nil {
				t.Fatal(err)
			}
		}
		waitFor(t, 10*time.Second, "hostile payloads handled", func() bool {
			return a.Stats().Count(EventInvalidationReceived) >= before+2 // the unrelated tag and the marker
		})
		if !a.inv.healthy() {
			t.Fatal("the subscription went down on hostile payloads")
		}
		// Truncated messages flush L1 (by design): fill it again.
		if _, err := a.GetOrLoad(ctx, "k", constLoad("old", 0)); err != nil {
			t.Fatal(err)
		}
		if _, ok := a.l1.peek("k"); !ok {
			t.Fatal("a's L1 does not hold k")
		}
		if err := b.Set(ctx, "k", "new"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "b's invalidation applied by a", func() bool {
			return a.Stats().Count(EventInvalidationReceived) >= before+3
		})
		if e, ok := a.l1.peek("k"); ok {
			t.Fatalf("a's L1 still holds %q after b's invalidation was applied", e.val)
		}
		if v, err := a.GetOrLoad(ctx, "k", constLoad("loaded", 0)); err != nil || v != "new" {
			t.Fatalf("a reads %q, %v after b's Set", v, err)
		}
	})
}

// Huge TTLs and stale windows saturate instead of wrapping: values written
// and loaded with them are cached, fresh, and live in Redis.
func TestRedTeamHugeTTLs(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithDefaultTTL(math.MaxInt64), WithJitter(1),
			WithStaleWhileRevalidate(math.MaxInt64), WithStaleIfError(math.MaxInt64), WithNegativeTTL(math.MaxInt64),
			WithLoadTimeout(math.MaxInt64), WithLease(math.MaxInt64))
		raw := tg.NewClient(t)
		check := func(k, want string) {
			t.Helper()
			if v, err := c.Get(ctx, k); err != nil || v != want {
				t.Fatalf("Get(%s) = %q, %v", k, v, err)
			}
			if d := raw.PTTL(ctx, c.st.Layout.Value(k)).Val(); d <= 0 {
				t.Fatalf("PTTL(%s) = %v", k, d)
			}
		}
		if err := c.Set(ctx, "s", "v", WithTags("h")); err != nil {
			t.Fatal(err)
		}
		check("s", "v")
		if err := c.Set(ctx, "s2", "v", WithTTL(200*365*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		check("s2", "v")
		if _, err := c.GetOrLoad(ctx, "l", func(ctx context.Context) (string, error) {
			LoadOptions(ctx, WithTags("h"), WithTTL(200*365*24*time.Hour))
			return "lv", nil
		}); err != nil {
			t.Fatal(err)
		}
		check("l", "lv")
		if _, err := c.GetOrLoad(ctx, "neg", func(context.Context) (string, error) { return "", ErrNotFound }); !errors.Is(err, ErrNotFound) {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, "neg"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("negative entry: %v", err)
		}
		if err := c.InvalidateTags(ctx, "h"); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Get(ctx, "l"); !errors.Is(err, ErrMiss) {
			t.Fatalf("Get after InvalidateTags = %v, want ErrMiss", err)
		}
	})
}

// A Refresh or GetOrLoad that starts after a Set never joins the Refresh
// that began before it, on the writer's instance.
func TestRedTeamRefreshAfterSetDoesNotJoin(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithL1(100))
		first := startGated(func(load LoadFunc[string]) (string, error) { return c.Refresh(ctx, "k", load) }, "old", "")
		<-first.started
		if err := c.Set(ctx, "k", "new"); err != nil {
			t.Fatal(err)
		}
		if v, err := c.GetOrLoad(ctx, "k", constLoad("loaded", 0)); err != nil || v != "new" {
			t.Fatalf("GetOrLoad after Set = %q, %v", v, err)
		}
		if v, err := c.Refresh(ctx, "k", constLoad("new2", 0)); err != nil || v != "new2" {
			t.Fatalf("Refresh after Set = %q, %v: it joined the Refresh that began before", v, err)
		}
		first.release()
		if v := <-first.done; v != "old" {
			t.Fatalf("first Refresh = %q", v)
		}
		raw := tg.NewClient(t)
		b, err := raw.Get(ctx, c.st.Layout.Value("k")).Bytes()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		var e entry[string]
		if err := decode(c.vc, b, c.keyHash(c.st.Layout.Value("k")), &e); err != nil || e.val != "new2" {
			t.Fatalf("Redis holds %q (%v), want new2", e.val, err)
		}
	})
}

// Regression tests for races the demo found (stale reads on the writer's
// own instance, a read joining a load older than a write, an orphaned lease).

// A Delete racing reads on the same instance: once Delete returns, the
// writer's L1 must not hold the old value (a read between the L1 drop and
// the DEL used to put it back, and the writer ignores its own messages).
func TestDeleteRacingReadsLeavesNoOldValueInL1(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[int](t, tg, WithL1(100))
		for i := range 200 {
			if err := c.Set(ctx, "k", i); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 2 {
				repeatUntil(&wg, stop, func(int) bool {
					_, _ = c.Get(ctx, "k")
					return true
				})
			}
			if err := c.Delete(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			close(stop)
			wg.Wait()
			if v, err := c.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
				t.Fatalf("iteration %d: Get after Delete = %d, %v; want ErrMiss", i, v, err)
			}
		}
	})
}

// A read that begins after a Delete must not join a load that began before
// it: it would get the old row.
func TestReadAfterWriteDoesNotJoinOlderLoad(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		// No load timeout to end the older load: a read that joins it (or
		// waits for its lease) waits until the test lets it go.
		c := newCache[string](t, tg, WithLoadTimeout(time.Hour))
		var row atomic.Value
		row.Store("old")
		loaded, proceed := make(chan struct{}), make(chan struct{})
		var once sync.Once
		go func() {
			_, _ = c.GetOrLoad(ctx, "k", func(ctx context.Context) (string, error) {
				v := row.Load().(string)
				once.Do(func() { close(loaded) })
				select {
				case <-proceed:
				case <-ctx.Done(): // Close, if the test failed before proceed
				}
				return v, nil
			})
		}()
		<-loaded
		defer close(proceed)
		row.Store("new")
		if err := c.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		go func() {
			v, _ := c.GetOrLoad(ctx, "k", func(context.Context) (string, error) { return row.Load().(string), nil })
			got <- v
		}()
		if v := redistest.Receive(t, got, 20*time.Second, "the read after Delete waited for the load that began before it"); v != "new" {
			t.Fatalf("read after Delete = %q, want new", v)
		}
	})
}

// replyDelayProxy forwards to target and holds back the server's array
// replies (the lease script's) by d: the script runs, its reply is late.
func replyDelayProxy(t *testing.T, target string, d time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, client, server)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(server, client); server.Close() })
			wg.Go(func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := server.Read(buf)
					if n > 0 {
						if buf[0] == '*' {
							time.Sleep(d)
						}
						if _, err := client.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						client.Close()
						return
					}
				}
			})
		}
	})
	return ln.Addr().String()
}

// An Acquire whose reply times out may still have taken the lease: the
// instance gives it back, so that another instance does not wait for a
// load nobody does, and reads never fail for waiting.
func TestTimedOutAcquireReleasesLease(t *testing.T) {
	srv := redistest.SharedServer(t)
	slow := redis.NewClient(&redis.Options{Addr: replyDelayProxy(t, srv.Addr, 150*time.Millisecond), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = slow.Close() })
	fast := srv.Client(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
	prefix := redistest.UniquePrefix(t)
	prefix = prefix[:len(prefix)-1]
	a := newCacheOn[string](t, slow, prefix, WithoutBreaker())
	b := newCacheOn[string](t, fast, prefix)
	ctx := t.Context()
	load := func(context.Context) (string, error) { return "v", nil }
	// Load the scripts into the server, as any earlier miss would have.
	if _, err := b.GetOrLoad(ctx, "warm", load); err != nil {
		t.Fatal(err)
	}
	if v, err := a.GetOrLoad(ctx, "k", load); err != nil || v != "v" {
		t.Fatalf("A = %q, %v", v, err)
	}
	start := time.Now()
	if v, err := b.GetOrLoad(ctx, "k", load); err != nil || v != "v" {
		t.Fatalf("B = %q, %v", v, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("B waited %v for a lease A had lost track of", d)
	}
}

package tiercache

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/keys"
	"github.com/tiercache/tiercache/internal/redistest"
)

type user struct {
	ID   int    `json:"id" msgpack:"id"`
	Name string `json:"name" msgpack:"name"`
}

func TestGetSetDelete(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[user](t, tg)
		if _, err := c.Get(ctx, "u1"); !errors.Is(err, ErrMiss) {
			t.Fatalf("Get of a missing key = %v, want ErrMiss", err)
		}
		want := user{ID: 1, Name: "ada"}
		if err := c.Set(ctx, "u1", want); err != nil {
			t.Fatal(err)
		}
		got, err := c.Get(ctx, "u1")
		if err != nil || got != want {
			t.Fatalf("Get = %+v, %v; want %+v", got, err, want)
		}
		// Keys spread over every slot of the cluster, including keys with
		// braces (their own hash tags) and '}' (hashed).
		for i := range 200 {
			k := fmt.Sprintf("k%d", i)
			if i%3 == 1 {
				k = fmt.Sprintf("{tag%d}x", i)
			} else if i%3 == 2 {
				k = fmt.Sprintf("a}b{%d", i)
			}
			if err := c.Set(ctx, k, user{ID: i}); err != nil {
				t.Fatal(err)
			}
			if got, err := c.Get(ctx, k); err != nil || got.ID != i {
				t.Fatalf("Get(%q) = %+v, %v", k, got, err)
			}
		}
		if err := c.Delete(ctx, "u1", "k0", "k3"); err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"u1", "k0", "k3"} {
			if _, err := c.Get(ctx, k); !errors.Is(err, ErrMiss) {
				t.Fatalf("Get(%q) after Delete = %v, want ErrMiss", k, err)
			}
		}
		if got, err := c.Get(ctx, "k6"); err != nil || got.ID != 6 {
			t.Fatalf("Delete removed an unrelated key: %+v, %v", got, err)
		}
	})
}

func TestSetTTL(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithJitter(0))
		if err := c.Set(ctx, "short", "v", WithTTL(50*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if v, err := c.Get(ctx, "short"); err != nil || v != "v" {
			t.Fatalf("Get right after Set = %q, %v", v, err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for {
			_, err := c.Get(ctx, "short")
			if errors.Is(err, ErrMiss) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("value with a 50ms TTL still readable after 2s (err %v)", err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if err := c.Set(ctx, "bad", "v", WithTTL(-time.Second)); !errors.Is(err, ErrInvalidOption) {
			t.Fatalf("Set with a negative TTL = %v, want ErrInvalidOption", err)
		}
	})
}

// TTL jitter: keys written together get Redis TTLs spread over
// [ttl, ttl*(1+jitter)), not one instant.
func TestJitterSpreadsExpiry(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c, rdb := newCacheAndClient[int](t, tg, WithJitter(0.5))
		ttl := 100 * time.Second
		lo, hi := time.Duration(math.MaxInt64), time.Duration(0)
		for i := range 100 {
			k := fmt.Sprint(i)
			if err := c.Set(ctx, k, i, WithTTL(ttl)); err != nil {
				t.Fatal(err)
			}
			d, err := rdb.PTTL(ctx, c.st.Layout.Value(k)).Result()
			if err != nil {
				t.Fatal(err)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		if lo < ttl-time.Second || hi > ttl*3/2 {
			t.Fatalf("TTLs in [%v, %v], want within [%v, %v]", lo, hi, ttl, ttl*3/2)
		}
		if hi-lo < ttl/5 {
			t.Fatalf("TTLs in [%v, %v]: jitter of 50%% spread them over less than 20%%", lo, hi)
		}
	})
}

func TestCodecsAndCompression(t *testing.T) {
	big := make([]byte, 64<<10)
	for i := range big {
		big[i] = byte('a' + i%7)
	}
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		for _, tc := range []struct {
			name string
			opts []Option
		}{
			{"json", nil},
			{"msgpack", []Option{WithCodec(Msgpack)}},
			{"json+s2", []Option{WithCompression(S2, 100)}},
			{"msgpack+zstd", []Option{WithCodec(Msgpack), WithCompression(Zstd, 100)}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c := newCache[user](t, tg, tc.opts...)
				want := user{ID: 7, Name: string(big)}
				if err := c.Set(ctx, "big", want); err != nil {
					t.Fatal(err)
				}
				if got, err := c.Get(ctx, "big"); err != nil || got != want {
					t.Fatalf("round trip failed: %v (equal: %v)", err, got == want)
				}
			})
		}
		t.Run("raw", func(t *testing.T) {
			c := newCache[[]byte](t, tg, WithCodec(Raw), WithCompression(Zstd, 10))
			if err := c.Set(ctx, "b", big); err != nil {
				t.Fatal(err)
			}
			got, err := c.Get(ctx, "b")
			if err != nil || string(got) != string(big) {
				t.Fatalf("raw []byte round trip: %v", err)
			}
			s := newCache[string](t, tg, WithCodec(Raw))
			if err := s.Set(ctx, "s", "hello"); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Get(ctx, "s"); err != nil || got != "hello" {
				t.Fatalf("raw string round trip = %q, %v", got, err)
			}
			bad := newCache[user](t, tg, WithCodec(Raw))
			if err := bad.Set(ctx, "u", user{}); !errors.Is(err, ErrCodec) {
				t.Fatalf("raw codec with a struct = %v, want ErrCodec", err)
			}
		})
		t.Run("other codec is a miss", func(t *testing.T) {
			rdb := tg.NewClient(t)
			prefix := testPrefix(t)
			j := newCacheOn[user](t, rdb, prefix)
			m := newCacheOn[user](t, rdb, prefix, WithCodec(Msgpack))
			if err := j.Set(ctx, "k", user{ID: 1}); err != nil {
				t.Fatal(err)
			}
			if _, err := m.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
				t.Fatalf("msgpack cache reading a JSON value = %v, want ErrMiss", err)
			}
			if m.Stats().Count(EventCorrupt) != 1 {
				t.Fatalf("corrupt count = %d, want 1", m.Stats().Count(EventCorrupt))
			}
		})
	})
}

func TestValueTooLarge(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		small, rdb := newCacheAndClient[string](t, tg, WithMaxValueSize(1000))
		if err := small.Set(ctx, "k", string(make([]byte, 2000))); !errors.Is(err, ErrValueTooLarge) {
			t.Fatalf("Set over the limit = %v, want ErrValueTooLarge", err)
		}
		// A value written by a cache with a larger limit is a miss for this
		// one: rejected before it is decoded.
		large := newCacheOn[string](t, rdb, small.cfg.prefix)
		if err := large.Set(ctx, "k", string(make([]byte, 2000))); err != nil {
			t.Fatal(err)
		}
		if _, err := small.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
			t.Fatalf("Get of an oversized stored value = %v, want ErrMiss", err)
		}
		// A loaded value too large to cache is still returned.
		v, err := small.GetOrLoad(ctx, "loaded", func(context.Context) (string, error) { return string(make([]byte, 5000)), nil })
		if err != nil || len(v) != 5000 {
			t.Fatalf("GetOrLoad of an uncacheable value = %d bytes, %v", len(v), err)
		}
	})
}

// WithMaxValueSize (options.go) bounds an encoded value "before and after
// compression": a value that compresses under the bound but is over it
// before is refused on write (a reader would not decompress it), where it
// used to be written and then missed on every read; a value of the bound
// itself, compressed, is written and read back.
func TestValueTooLargeBeforeCompression(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		for _, alg := range []Compression{S2, Zstd} {
			ctx := t.Context()
			const limit = 64 << 10
			c := newCache[string](t, tg, WithMaxValueSize(limit), WithCompression(alg, 1024))
			big := strings.Repeat("0123456789", 2*limit/10) // compresses to a few hundred bytes
			if err := c.Set(ctx, "big", big); !errors.Is(err, ErrValueTooLarge) {
				t.Fatalf("compression %v: Set of %d bytes that compress under the limit = %v, want ErrValueTooLarge", alg, len(big), err)
			}
			loads := 0
			for range 2 {
				v, err := c.GetOrLoad(ctx, "loaded", func(context.Context) (string, error) { loads++; return big, nil })
				if err != nil || v != big {
					t.Fatalf("compression %v: GetOrLoad = %d bytes, %v", alg, len(v), err)
				}
			}
			if loads != 2 || c.Stats().Count(EventNotCached) != 2 || c.Stats().Count(EventCorrupt) != 0 {
				t.Fatalf("compression %v: %d loads, %d not cached, %d corrupt; want 2, 2, 0", alg, loads,
					c.Stats().Count(EventNotCached), c.Stats().Count(EventCorrupt))
			}
			// At the bound: the JSON string's quotes count, so limit-2 characters.
			edge := strings.Repeat("x", limit-2)
			mustSet(t, c, "edge", edge)
			if v, err := c.Get(ctx, "edge"); err != nil || v != edge {
				t.Fatalf("compression %v: a value of the limit itself read back as %d bytes, %v (%d corrupt)", alg, len(v), err, c.Stats().Count(EventCorrupt))
			}
		}
		// Small limits: zstd gives a payload of up to 1 KiB a window of up
		// to 2 KiB, which the reader's bound must allow; a payload over the
		// limit (written by a cache with a larger one) is still refused.
		for _, limit := range []int{900, 1024, 1500, 2047} {
			c, rdb := newCacheAndClient[string](t, tg, WithMaxValueSize(limit), WithCompression(Zstd, 100))
			larger := newCacheOn[string](t, rdb, c.cfg.prefix, WithMaxValueSize(4096), WithCompression(Zstd, 100))
			mustSet(t, larger, "over", strings.Repeat("z", limit))
			if _, err := c.Get(t.Context(), "over"); !errors.Is(err, ErrMiss) {
				t.Fatalf("zstd, limit %d: a stored payload over the limit = %v, want ErrMiss", limit, err)
			}
			for _, n := range []int{200, 798, 1022, limit - 2} { // JSON adds two quotes
				if n+2 > limit {
					continue
				}
				v := strings.Repeat("ab", n/2) + strings.Repeat("c", n%2)
				mustSet(t, c, "k", v)
				if got, err := c.Get(t.Context(), "k"); err != nil || got != v {
					t.Fatalf("zstd, limit %d: a %d-byte payload read back as %d bytes, %v (%d corrupt)", limit, n+2, len(got), err, c.Stats().Count(EventCorrupt))
				}
			}
		}
	})
}

// Corrupt, truncated or foreign bytes are a counted miss, and the next load
// overwrites them.
func TestCorruptIsMiss(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c, rdb := newCacheAndClient[user](t, tg)
		if err := c.Set(ctx, "good", user{ID: 1}); err != nil {
			t.Fatal(err)
		}
		good, err := rdb.Get(ctx, c.st.Layout.Value("good")).Bytes()
		if err != nil {
			t.Fatal(err)
		}
		for i, b := range [][]byte{
			[]byte("foreign"),
			good[:len(good)-3],
			append(append([]byte{}, good[:20]...), good[21:]...),
			good, // whole, but written under another key: the key check fails
		} {
			k := fmt.Sprintf("bad%d", i)
			if err := rdb.Set(ctx, c.st.Layout.Value(k), b, time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			if _, err := c.Get(ctx, k); !errors.Is(err, ErrMiss) {
				t.Fatalf("case %d: Get = %v, want ErrMiss", i, err)
			}
			v, err := c.GetOrLoad(ctx, k, func(context.Context) (user, error) { return user{ID: 100 + i}, nil })
			if err != nil || v.ID != 100+i {
				t.Fatalf("case %d: GetOrLoad = %+v, %v", i, v, err)
			}
			if v, err := c.Get(ctx, k); err != nil || v.ID != 100+i {
				t.Fatalf("case %d: the load did not overwrite the corrupt value: %+v, %v", i, v, err)
			}
		}
		if n := c.Stats().Count(EventCorrupt); n < 4 {
			t.Fatalf("corrupt count = %d, want at least 4", n)
		}
	})
}

func TestVersionedNamespace(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		rdb := tg.NewClient(t)
		prefix := testPrefix(t)
		v1 := newCacheOn[string](t, rdb, prefix, WithSchemaVersion(1))
		v2 := newCacheOn[string](t, rdb, prefix, WithSchemaVersion(2))
		if err := v1.Set(ctx, "k", "old shape"); err != nil {
			t.Fatal(err)
		}
		if _, err := v2.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
			t.Fatalf("version 2 sees version 1's key: %v", err)
		}
		other := newCacheOn[string](t, rdb, prefix+"x")
		if _, err := other.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
			t.Fatalf("another prefix sees the key: %v", err)
		}
	})
}

func TestNegativeCaching(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[user](t, tg, WithNegativeTTL(200*time.Millisecond), WithJitter(0))
		calls := 0
		load := func(context.Context) (user, error) {
			calls++
			return user{}, fmt.Errorf("row 9: %w", ErrNotFound)
		}
		for range 3 {
			if _, err := c.GetOrLoad(ctx, "missing", load); !errors.Is(err, ErrNotFound) {
				t.Fatalf("GetOrLoad = %v, want ErrNotFound", err)
			}
		}
		if calls != 1 {
			t.Fatalf("loader called %d times, want 1 (negative entry cached)", calls)
		}
		if _, err := c.Get(ctx, "missing"); !errors.Is(err, ErrNotFound) {
			t.Fatalf("Get of a negative entry = %v, want ErrNotFound", err)
		}
		if n := c.Stats().Count(EventNegativeHit); n < 3 {
			t.Fatalf("negative hits = %d, want 3", n)
		}
		time.Sleep(250 * time.Millisecond)
		if _, err := c.GetOrLoad(ctx, "missing", load); !errors.Is(err, ErrNotFound) || calls != 2 {
			t.Fatalf("after the negative TTL: err %v, loader calls %d; want ErrNotFound, 2", err, calls)
		}
		// Negative caching off: every read loads.
		off := newCache[user](t, tg, WithNegativeTTL(0))
		calls = 0
		for range 2 {
			_, _ = off.GetOrLoad(ctx, "missing", load)
		}
		if calls != 2 {
			t.Fatalf("with negative caching off, loader called %d times, want 2", calls)
		}
	})
}

func TestLoadOptions(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c, rdb := newCacheAndClient[string](t, tg, WithJitter(0))
		v, err := c.GetOrLoad(ctx, "partial", func(ctx context.Context) (string, error) {
			LoadOptions(ctx, NoCache())
			return "partial result", nil
		})
		if err != nil || v != "partial result" {
			t.Fatalf("GetOrLoad = %q, %v", v, err)
		}
		if _, err := c.Get(ctx, "partial"); !errors.Is(err, ErrMiss) {
			t.Fatalf("a NoCache result was cached: %v", err)
		}
		if _, err := c.GetOrLoad(ctx, "long", func(ctx context.Context) (string, error) {
			LoadOptions(ctx, WithTTL(time.Hour))
			return "v", nil
		}); err != nil {
			t.Fatal(err)
		}
		if d := rdb.PTTL(ctx, c.st.Layout.Value("long")).Val(); d < 59*time.Minute {
			t.Fatalf("loader's TTL not applied: PTTL %v", d)
		}
		LoadOptions(ctx, NoCache()) // outside a loader: does nothing, no panic
	})
}

func TestBadInput(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[int](t, tg)
		// In this order: the last two calls come after the Closes.
		for _, call := range []struct {
			what string
			do   func() error
			want error // nil: no error
		}{
			{`Get("")`, func() error { _, err := c.Get(ctx, ""); return err }, ErrInvalidKey},
			{`Set("")`, func() error { return c.Set(ctx, "", 1) }, ErrInvalidKey},
			{"Delete with an empty key", func() error { return c.Delete(ctx, "a", "") }, ErrInvalidKey},
			{"GetOrLoad(nil)", func() error { _, err := c.GetOrLoad(ctx, "k", nil); return err }, ErrNilLoader},
			{"Close", c.Close, nil},
			{"second Close", c.Close, nil},
			{"Get after Close", func() error { _, err := c.Get(ctx, "k"); return err }, ErrClosed},
			{"GetOrLoad after Close", func() error {
				_, err := c.GetOrLoad(ctx, "k", func(context.Context) (int, error) { return 1, nil })
				return err
			}, ErrClosed},
		} {
			if err := call.do(); !errors.Is(err, call.want) {
				t.Fatalf("%s = %v, want %v", call.what, err, call.want)
			}
		}
	})
}

// A nil context is refused by every call with ErrNilContext, before
// anything is done: no panic (a load's would be on a background goroutine,
// out of the caller's reach), no loader call, nothing deleted or cleared,
// even for a key that L1 could answer.
func TestNilContext(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		c := newCache[string](t, tg, WithL1(100))
		mustSet(t, c, "k", "v")
		var nilCtx context.Context
		loads := 0
		load := func(context.Context) (string, error) { loads++; return "loaded", nil }
		loadMany := func(context.Context, []string) (map[string]string, error) { loads++; return nil, nil }
		for _, call := range []struct {
			what string
			do   func() error
		}{
			{"Get", func() error { _, err := c.Get(nilCtx, "k"); return err }},
			{"GetMany", func() error { _, err := c.GetMany(nilCtx, []string{"k"}); return err }},
			{"GetOrLoad", func() error { _, err := c.GetOrLoad(nilCtx, "cold", load); return err }},
			{"GetOrLoadMany", func() error { _, err := c.GetOrLoadMany(nilCtx, []string{"cold"}, loadMany); return err }},
			{"Refresh", func() error { _, err := c.Refresh(nilCtx, "k", load); return err }},
			{"Set", func() error { return c.Set(nilCtx, "k", "other") }},
			{"SetMany", func() error { return c.SetMany(nilCtx, map[string]string{"k": "other"}) }},
			{"Delete", func() error { return c.Delete(nilCtx, "k") }},
			{"Delete of no keys", func() error { return c.Delete(nilCtx) }},
			{"InvalidateTags", func() error { return c.InvalidateTags(nilCtx, "t") }},
			{"Invalidate", func() error { return c.Invalidate(nilCtx, Invalidation{Keys: []string{"k"}}) }},
			{"Clear", func() error { return c.Clear(nilCtx) }},
		} {
			if err := call.do(); !errors.Is(err, ErrNilContext) {
				t.Errorf("%s(nil ctx) = %v, want ErrNilContext", call.what, err)
			}
		}
		LoadOptions(nilCtx, WithTTL(time.Second))         // does nothing, does not panic
		LoadKeyOptions(nilCtx, "k", WithTTL(time.Second)) // likewise
		if loads != 0 {
			t.Errorf("the loader ran %d times for nil contexts", loads)
		}
		c.l1.flush() // the value must come from Redis: neither deleted nor cleared nor replaced
		if v, err := c.Get(t.Context(), "k"); err != nil || v != "v" {
			t.Errorf(`Get("k") after the refused calls = %q, %v; want "v"`, v, err)
		}
		c.Close()
		if _, err := c.Get(nilCtx, "k"); !errors.Is(err, ErrClosed) {
			t.Errorf("Get(nil ctx) after Close = %v, want ErrClosed", err)
		}
	})
}

// idPanics is a codec whose ID panics.
type idPanics struct{ Codec }

func (idPanics) ID() uint8 { panic("no ID") }

func TestOptionsValidation(t *testing.T) {
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:1"}) // never dialled
	defer rdb.Close()
	for _, tc := range []struct {
		name string
		opt  Option
	}{
		{"empty prefix", WithPrefix("")},
		{"prefix with a brace", WithPrefix("a{b")},
		{"negative version", WithSchemaVersion(-1)},
		{"zero TTL", WithDefaultTTL(0)},
		{"nil codec", WithCodec(nil)},
		{"a codec whose ID panics", WithCodec(idPanics{})},
		{"zero read timeout", WithReadTimeout(0)},
		{"negative load timeout", WithLoadTimeout(-1)},
		{"jitter above 1", WithJitter(1.5)},
		{"NaN jitter", WithJitter(math.NaN())},
		{"negative negative TTL", WithNegativeTTL(-1)},
		{"zero max value size", WithMaxValueSize(0)},
		{"nil logger", WithLogger(nil)},
		{"unknown compression", WithCompression(Compression(9), 0)},
		{"tiny lease", WithLease(time.Microsecond)},
		{"negative beta", WithEarlyRefresh(-1)},
		{"infinite beta", WithEarlyRefresh(math.Inf(1))},
		{"negative stale window", WithStaleWhileRevalidate(-time.Second)},
		{"negative L1", WithL1(-1)},
		{"zero L1 TTL", WithL1TTL(0)},
		{"zero health check", WithHealthCheck(0)},
		{"no background refreshes", WithMaxBackgroundRefreshes(0)},
		{"negative background refreshes", WithMaxBackgroundRefreshes(-1)},
		{"breaker with zero failures", WithBreaker(BreakerSettings{OpenFor: time.Second, Probes: 1})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New[int](rdb, tc.opt)
			if !errors.Is(err, ErrInvalidOption) {
				if c != nil {
					_ = c.Close()
				}
				t.Fatalf("New = %v, want ErrInvalidOption", err)
			}
		})
	}
	if _, err := New[int](nil); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("New(nil) = %v", err)
	}
	var noClient *redis.Client // a nil pointer in a non-nil interface
	if _, err := New[int](noClient); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("New of a nil *redis.Client = %v", err)
	}
	var noCluster *redis.ClusterClient
	if _, err := New[int](noCluster); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("New of a nil *redis.ClusterClient = %v", err)
	}
}

// The key layout keeps a value and its lease in one slot, whatever the key.
func TestKeyLayoutSharesSlot(t *testing.T) {
	l := keys.New("p", 3)
	for _, k := range []string{"plain", "{tagged}rest", "a}b", "}", "{", "{}", "x{y}z}"} {
		vk := l.Value(k)
		if s1, s2 := redisSlot(vk), redisSlot(keys.Lease(vk)); s1 != s2 {
			t.Errorf("key %q: value %q in slot %d, lease in slot %d", k, vk, s1, s2)
		}
	}
	if l.Value("a}b") == l.Value("a}c") {
		t.Fatal("distinct keys with '}' share a Redis key")
	}
}

// redisSlot is Redis Cluster's key slot: CRC16 (XMODEM) of the hash tag.
func redisSlot(key string) int {
	if i := indexByte(key, '{'); i >= 0 {
		if j := indexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

func indexByte(s string, c byte) int {
	for i := 0; i < len(s); i++ {
		if s[i] == c {
			return i
		}
	}
	return -1
}

// A client whose timeouts cannot reach the socket is a misconfiguration
// that defeats every timeout of the cache: New says so, by default on
// slog.Default(), even when no logger was given.
func TestNewWarnsAboutContextTimeoutsByDefault(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(old)
	rdb := redistest.SharedServer(t).Client(t) // ContextTimeoutEnabled off
	c, err := New[string](rdb, WithPrefix(testPrefix(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !strings.Contains(buf.String(), "ContextTimeoutEnabled") {
		t.Fatalf("no warning on slog.Default: %q", buf.String())
	}
}

package subject_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache/bench/subject"
	"github.com/tiercache/tiercache/internal/redistest"
)

func TestMain(m *testing.M) { redistest.Main(m) }

// namespace turns a redistest prefix into a namespace (no trailing ':').
func namespace(tb testing.TB) string {
	return strings.TrimSuffix(redistest.UniquePrefix(tb), ":")
}

func newSubject(tb testing.TB, f subject.Factory, ns string) subject.Subject {
	tb.Helper()
	srv := redistest.SharedServer(tb)
	s, err := f.New(subject.Config{Addr: srv.Addr, Namespace: ns, TTL: time.Minute, LocalSize: 1000})
	if err != nil {
		tb.Fatalf("%s: New: %v", f.Name, err)
	}
	tb.Cleanup(func() { _ = s.Close() })
	return s
}

// eventually retries check until it passes: some libraries write to Redis
// from a background goroutine.
func eventually(t *testing.T, check func() error) {
	t.Helper()
	var err error
	for range 100 {
		if err = check(); err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal(err)
}

func TestAdapters(t *testing.T) {
	ctx := context.Background()
	for _, f := range subject.All() {
		t.Run(f.Name, func(t *testing.T) {
			ns := namespace(t)
			a := newSubject(t, f, ns)
			var loads atomic.Int64
			load := func(_ context.Context, k string) (string, error) {
				loads.Add(1)
				return "v:" + k, nil
			}

			_, err := a.Get(ctx, "k1")
			switch {
			case f.Caps.Get && !errors.Is(err, subject.ErrMiss):
				t.Fatalf("Get of a missing key: %v, want ErrMiss", err)
			case !f.Caps.Get && !errors.Is(err, subject.ErrNotSupported):
				t.Fatalf("Get without the capability: %v, want ErrNotSupported", err)
			}

			if v, err := a.GetOrLoad(ctx, "k1", load); err != nil || v != "v:k1" {
				t.Fatalf("GetOrLoad = %q, %v", v, err)
			}
			if v, err := a.GetOrLoad(ctx, "k1", load); err != nil || v != "v:k1" || loads.Load() != 1 {
				t.Fatalf("second GetOrLoad = %q, %v after %d loads; want a cached value", v, err, loads.Load())
			}

			// Another instance of the same namespace reads it from Redis.
			b := newSubject(t, f, ns)
			eventually(t, func() error {
				v, err := b.GetOrLoad(ctx, "k1", func(context.Context, string) (string, error) {
					return "", errors.New("loaded instead of reading Redis")
				})
				if err != nil || v != "v:k1" {
					return fmt.Errorf("other instance: %q, %v", v, err)
				}
				return nil
			})
			if f.Caps.Get {
				if v, err := b.Get(ctx, "k1"); err != nil || v != "v:k1" {
					t.Fatalf("other instance Get = %q, %v", v, err)
				}
			}

			// A write: the next read of this instance gets the new value,
			// from the cache (write-through) or from the loader.
			w, ok := a.(subject.Writer)
			if !ok || f.Caps.Write == "" {
				t.Fatalf("implements Writer: %v, Caps.Write: %q", ok, f.Caps.Write)
			}
			if err := w.Write(ctx, "k1", "v2:k1"); err != nil {
				t.Fatalf("Write: %v", err)
			}
			eventually(t, func() error {
				v, err := a.GetOrLoad(ctx, "k1", func(context.Context, string) (string, error) { return "v2:k1", nil })
				if err != nil || v != "v2:k1" {
					return fmt.Errorf("read after Write = %q, %v", v, err)
				}
				return nil
			})

			bt, ok := a.(subject.Batcher)
			if ok != f.Caps.Batch {
				t.Fatalf("implements Batcher: %v, Caps.Batch: %v", ok, f.Caps.Batch)
			}
			if !ok {
				return
			}
			var calls atomic.Int64
			bload := func(_ context.Context, missing []string) (map[string]string, error) {
				calls.Add(1)
				out := map[string]string{}
				for _, k := range missing {
					out[k] = "v:" + k
				}
				return out, nil
			}
			keys := []string{"b1", "b2", "b3"}
			got, err := bt.GetOrLoadMany(ctx, keys, bload)
			if err != nil || len(got) != 3 || got["b2"] != "v:b2" || calls.Load() != 1 {
				t.Fatalf("GetOrLoadMany = %v, %v after %d loader calls", got, err, calls.Load())
			}
			bb := newSubject(t, f, ns).(subject.Batcher)
			eventually(t, func() error {
				got, err := bb.GetOrLoadMany(ctx, keys, func(context.Context, []string) (map[string]string, error) {
					return nil, errors.New("loaded instead of reading Redis")
				})
				if err != nil || len(got) != 3 {
					return fmt.Errorf("other instance GetOrLoadMany = %v, %v", got, err)
				}
				return nil
			})
		})
	}
}

// BenchmarkL2Hit reads keys that are in Redis through subjects without a
// local tier, cycling over 1,000 keys: the Redis hit path.
func BenchmarkL2Hit(b *testing.B) {
	benchRead(b, func(f subject.Factory) bool { return f.Caps.Local == "" })
}

// BenchmarkLocalHit reads 1,000 keys through subjects with a local tier,
// after one read of each: the local hit path.
func BenchmarkLocalHit(b *testing.B) {
	benchRead(b, func(f subject.Factory) bool { return f.Caps.Local != "" || f.Name == subject.Baseline })
}

func benchRead(b *testing.B, want func(subject.Factory) bool) {
	ctx := context.Background()
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("key:%04d", i)
	}
	load := func(_ context.Context, k string) (string, error) { return k + strings.Repeat("x", 240), nil }
	for _, f := range subject.All() {
		if !want(f) {
			continue
		}
		b.Run(f.Name, func(b *testing.B) {
			s := newSubject(b, f, namespace(b))
			for _, k := range keys {
				if _, err := s.GetOrLoad(ctx, k, load); err != nil {
					b.Fatal(err)
				}
			}
			time.Sleep(100 * time.Millisecond) // background writes
			i := 0
			b.ReportAllocs()
			for b.Loop() {
				if _, err := s.GetOrLoad(ctx, keys[i%len(keys)], load); err != nil {
					b.Fatal(err)
				}
				i++
			}
		})
	}
}

package tiercacheotel_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercacheotel"
)

// newBenchObserver returns an observer recording into an SDK MeterProvider
// with a manual reader (never read), and the global, no-op, tracer.
func newBenchObserver(b *testing.B) *tiercacheotel.Observer {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	o, err := tiercacheotel.New("bench", tiercacheotel.WithMeterProvider(mp))
	if err != nil {
		b.Fatal(err)
	}
	return o
}

// BenchmarkObserver is the observer alone, called as the cache calls it,
// against tiercache.NopObserver: what this package and the SDK add,
// without the cache's clock reads around it.
func BenchmarkObserver(b *testing.B) {
	for _, o := range []struct {
		name string
		obs  tiercache.Observer
	}{{"nop", tiercache.NopObserver{}}, {"otel", newBenchObserver(b)}} {
		b.Run("lookup/"+o.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				o.obs.Lookup(tiercache.TierL1, true, 150*time.Nanosecond)
			}
		})
		b.Run("lookup-parallel/"+o.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					o.obs.Lookup(tiercache.TierL1, true, 150*time.Nanosecond)
				}
			})
		})
		b.Run("redis/"+o.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				o.obs.Redis("get", 30*time.Microsecond, nil)
			}
		})
	}
}

// BenchmarkGetOverhead measures a Get that hits L1 (WithL1) or Redis (no
// L1) on three caches interleaved, a block of Gets on each in turn, so that
// a neighbour's load weighs on all three alike: off (no observer), nop
// (tiercache.NopObserver: the cost of the cache timing lookups for an
// observer) and otel (this package). It reports each one's ns/op and what
// otel adds to off.
func BenchmarkGetOverhead(b *testing.B) {
	const block = 32
	tiers := []struct {
		name string
		opts []tiercache.Option
	}{
		// Invalidation off: the hit path does not use it, and its
		// subscription coming up would flush L1 during the run.
		{"l1-hit", []tiercache.Option{tiercache.WithL1(1000), tiercache.WithoutInvalidation()}},
		{"l2-hit", nil},
	}
	for _, tier := range tiers {
		b.Run(tier.name, func(b *testing.B) {
			names := []string{"off", "nop", "otel"}
			caches := []*tiercache.Cache[string]{
				benchCache(b, nil, tier.opts...),
				benchCache(b, tiercache.NopObserver{}, tier.opts...),
				benchCache(b, newBenchObserver(b), tier.opts...),
			}
			spent := make([]time.Duration, len(caches))
			ctx := b.Context()
			round := 0
			for b.Loop() {
				for j := range caches {
					i := (round + j) % len(caches) // no cache always first
					start := time.Now()
					for range block {
						if _, err := caches[i].Get(ctx, "k"); err != nil {
							b.Fatal(err)
						}
					}
					spent[i] += time.Since(start)
				}
				round++
			}
			perOp := func(i int) float64 { return float64(spent[i]) / float64(round*block) }
			for i, n := range names {
				b.ReportMetric(perOp(i), n+"-ns/op")
			}
			off, otel := perOp(0), perOp(2)
			b.ReportMetric(otel-off, "overhead-ns/op")
			b.ReportMetric(100*(otel-off)/off, "overhead-%")
			b.ReportMetric(0, "ns/op")
		})
	}
}

// benchCache returns a cache over a new client of the shared server,
// reporting to obs (nil: no observer), with the key "k" set and read once.
func benchCache(b *testing.B, obs tiercache.Observer, opts ...tiercache.Option) *tiercache.Cache[string] {
	b.Helper()
	if obs != nil {
		opts = append(opts[:len(opts):len(opts)], tiercache.WithObserver(obs))
	}
	rdb := redistest.SharedServer(b).Client(b, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
	prefix := strings.TrimSuffix(redistest.UniquePrefix(b), ":")
	// A generous read timeout: on a loaded machine a GET can stall past
	// the default 100ms, which would fail the run rather than measure it.
	c, err := tiercache.New[string](rdb, append([]tiercache.Option{
		tiercache.WithPrefix(prefix), tiercache.WithReadTimeout(5 * time.Second),
	}, opts...)...)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	if err := c.Set(b.Context(), "k", "a value of a few bytes"); err != nil {
		b.Fatal(err)
	}
	if _, err := c.Get(b.Context(), "k"); err != nil {
		b.Fatal(err)
	}
	return c
}

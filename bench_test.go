package tiercache

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/redistest"
)

// Each benchmark here measures tiercache and its baseline in the same run,
// alternating between them in rounds, and reports the baseline's ns/op
// beside its own and their ratio ("x-baseline"): a figure that holds on any
// machine, unlike an absolute time.

// compare runs subject and baseline alternately, rounds times chunk ops
// each, and reports both and the ratio. It calls b.ReportAllocs for the
// subject only (allocs/op is the subject's).
func compare(b *testing.B, subject, baseline func(i int)) {
	b.Helper()
	const rounds = 10
	chunk := max(b.N/rounds, 1)
	var subj, base time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for r := range rounds {
		b.StopTimer()
		t0 := time.Now()
		for i := range chunk {
			baseline(r*chunk + i)
		}
		base += time.Since(t0)
		b.StartTimer()
		t0 = time.Now()
		for i := range chunk {
			subject(r*chunk + i)
		}
		subj += time.Since(t0)
	}
	n := float64(rounds * chunk)
	b.ReportMetric(float64(base.Nanoseconds())/n, "baseline-ns/op")
	b.ReportMetric(float64(subj.Nanoseconds())/n/(float64(base.Nanoseconds())/n), "x-baseline")
}

func benchClient(b testing.TB) *redis.Client {
	return redistest.SharedServer(b).Client(b, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
}

// An L2 hit (Get, no L1) from one goroutine against plain go-redis GET +
// json.Unmarshal of the same value: the cost of the envelope, the key check
// and the breaker, and by default the read coalescer's bookkeeping for a
// lone caller. The goal is at most 1.1x.
func BenchmarkGetL2Hit(b *testing.B) {
	b.Run("coalesced", func(b *testing.B) { benchGetL2Hit(b) })
	b.Run("uncoalesced", func(b *testing.B) { benchGetL2Hit(b, WithoutReadCoalescing()) })
}

func benchGetL2Hit(b *testing.B, opts ...Option) {
	ctx := context.Background()
	rdb := benchClient(b)
	c := newCacheOn[user](b, rdb, "benchl2", append(opts, WithReadTimeout(time.Second))...)
	const keys = 100
	u := user{ID: 42, Name: "Ada Lovelace"}
	raw, _ := json.Marshal(u)
	for i := range keys {
		k := strconv.Itoa(i)
		if err := c.Set(ctx, k, u); err != nil {
			b.Fatal(err)
		}
		rdb.Set(ctx, "plain:"+k, raw, time.Hour)
	}
	plainKeys := make([]string, keys)
	for i := range plainKeys {
		plainKeys[i] = "plain:" + strconv.Itoa(i)
	}
	cacheKeys := make([]string, keys)
	for i := range cacheKeys {
		cacheKeys[i] = strconv.Itoa(i)
	}
	compare(b, func(i int) {
		if _, err := c.Get(ctx, cacheKeys[i%keys]); err != nil {
			b.Fatal(err)
		}
	}, func(i int) {
		bs, err := rdb.Get(ctx, plainKeys[i%keys]).Bytes()
		if err != nil {
			b.Fatal(err)
		}
		var v user
		if err := json.Unmarshal(bs, &v); err != nil {
			b.Fatal(err)
		}
	})
}

// An L1 hit against a plain otter GetIfPresent on a cache of the same
// size: the goal is at most 2x, and no allocation for a pointer or small
// value type.
func BenchmarkL1Hit(b *testing.B) {
	ctx := context.Background()
	rdb := benchClient(b)
	c := newCacheOn[*user](b, rdb, "benchl1", WithL1(10_000), WithEarlyRefresh(0), WithL1TTL(time.Hour), WithoutInvalidation())
	// Two baselines: otter with nothing but the size bound, and otter as a
	// user would set it up for values that expire (a per-entry TTL).
	plain := otter.Must(&otter.Options[string, *user]{MaximumSize: 10_000})
	defer plain.StopAllGoroutines()
	expiring := otter.Must(&otter.Options[string, *user]{
		MaximumSize:      10_000,
		ExpiryCalculator: otter.ExpiryWriting[string, *user](time.Hour),
	})
	defer expiring.StopAllGoroutines()
	const keys = 1000
	ks := make([]string, keys)
	for i := range ks {
		ks[i] = strconv.Itoa(i)
		if err := c.Set(ctx, ks[i], &user{ID: i}, WithTTL(time.Hour)); err != nil {
			b.Fatal(err)
		}
		plain.Set(ks[i], &user{ID: i})
		expiring.Set(ks[i], &user{ID: i})
	}
	load := func(context.Context) (*user, error) { b.Fatal("loader called on an L1 hit"); return nil, nil }
	for _, base := range []struct {
		name string
		o    *otter.Cache[string, *user]
	}{{"get", plain}, {"get-vs-expiring-otter", expiring}} {
		b.Run(base.name, func(b *testing.B) {
			compare(b, func(i int) {
				if _, err := c.Get(ctx, ks[i%keys]); err != nil {
					b.Fatal(err)
				}
			}, func(i int) {
				if _, ok := base.o.GetIfPresent(ks[i%keys]); !ok {
					b.Fatal("miss")
				}
			})
		})
	}
	b.Run("getorload", func(b *testing.B) {
		compare(b, func(i int) {
			if _, err := c.GetOrLoad(ctx, ks[i%keys], load); err != nil {
				b.Fatal(err)
			}
		}, func(i int) {
			if _, ok := plain.GetIfPresent(ks[i%keys]); !ok {
				b.Fatal("miss")
			}
		})
	})
	// Parallel: the two sides run as separate sub-benchmarks (RunParallel
	// cannot alternate); compare their ns/op.
	for _, base := range []struct {
		name string
		o    *otter.Cache[string, *user]
	}{{"parallel/otter", plain}, {"parallel/expiring-otter", expiring}} {
		b.Run(base.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					base.o.GetIfPresent(ks[i%keys])
					i++
				}
			})
		})
	}
	b.Run("parallel/tiercache", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, err := c.Get(ctx, ks[i%keys]); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}

// Encoding and decoding a value with its frame, against bare JSON.
func BenchmarkCodec(b *testing.B) {
	cfg := defaultConfig()
	vc, err := newValueCodec(&cfg)
	if err != nil {
		b.Fatal(err)
	}
	u := user{ID: 42, Name: "Ada Lovelace"}
	now := nowMicro()
	env := envelope.Envelope{KeyHash: 7, WrittenAt: now, SoftExpiry: now + 60e6, Delta: 1000}
	frame, _ := vc.encode(u, env)
	raw, _ := json.Marshal(u)
	b.Run("encode", func(b *testing.B) {
		compare(b, func(int) {
			_, _ = vc.encode(u, env)
		}, func(int) { _, _ = json.Marshal(u) })
	})
	b.Run("decode", func(b *testing.B) {
		compare(b, func(int) {
			var e entry[user]
			if err := decode(vc, frame, 7, &e); err != nil {
				b.Fatal(err)
			}
		}, func(int) {
			var v user
			_ = json.Unmarshal(raw, &v)
		})
	})
}

// Single-key Get (L2 hit, no L1) from 64 goroutines against plain go-redis
// GET + json.Unmarshal from 64 goroutines, alternating in rounds like
// compare: the throughput that coalescing round trips buys. x-baseline is
// the ratio of time per op (below 1 is faster); speedup is its inverse. The
// goal is a speedup of at least 3 with coalescing (the default). go-redis's
// own auto-pipeliner, with nothing of the cache around it, is measured the
// same way for comparison.
func BenchmarkGetThroughput64(b *testing.B) {
	for _, topo := range []string{"single", "cluster"} {
		b.Run(topo, func(b *testing.B) {
			benchThroughput(b, topo == "cluster")
		})
	}
}

func benchThroughput(b *testing.B, cluster bool) {
	ctx := context.Background()
	rdb := topoClient(b, cluster)
	coalesced := newCacheOn[user](b, rdb, "tput", WithReadTimeout(time.Second))
	uncoalesced := newCacheOn[user](b, rdb, "tput", WithReadTimeout(time.Second), WithoutReadCoalescing())
	ks, plainGet := readFixture(b, coalesced, rdb, "tput-plain:")
	keys := len(ks)
	plain := plainGet(rdb)
	b.Run("tiercache", func(b *testing.B) {
		compareParallel(b, 64, func(i int) error { _, err := coalesced.Get(ctx, ks[i%keys]); return err }, plain)
	})
	b.Run("tiercache-uncoalesced", func(b *testing.B) {
		compareParallel(b, 64, func(i int) error { _, err := uncoalesced.Get(ctx, ks[i%keys]); return err }, plain)
	})
	b.Run("go-redis-autopipeline", func(b *testing.B) {
		var ap *redis.AutoPipeliner
		var err error
		switch r := topoClient(b, cluster).(type) {
		case *redis.Client:
			ap, err = r.AutoPipeline()
		case *redis.ClusterClient:
			ap, err = r.AutoPipeline()
		}
		if err != nil {
			b.Fatal(err)
		}
		compareParallel(b, 64, plainGet(ap), plain)
	})
}

// Single-key Get (L2 hit, no L1, coalescing on) against plain go-redis GET
// + json.Unmarshal at 2 to 64 goroutines, alternating in rounds: where
// coalescing starts to pay, and what it costs below that. Few readers go
// out at once, as without coalescing; past the 4 round-trip slots reads
// queue into shared round trips.
func BenchmarkGetConcurrency(b *testing.B) {
	for _, topo := range []string{"single", "cluster"} {
		b.Run(topo, func(b *testing.B) {
			ctx := context.Background()
			rdb := topoClient(b, topo == "cluster")
			c := newCacheOn[user](b, rdb, "conc", WithReadTimeout(time.Second))
			ks, plainGet := readFixture(b, c, rdb, "conc-plain:")
			for _, g := range []int{2, 4, 8, 16, 64} {
				b.Run(strconv.Itoa(g), func(b *testing.B) {
					compareParallel(b, g, func(i int) error { _, err := c.Get(ctx, ks[i%len(ks)]); return err }, plainGet(rdb))
				})
			}
		})
	}
}

// topoClient returns a new client to the shared server, or to the shared
// cluster, with context deadlines reaching the socket.
func topoClient(b *testing.B, cluster bool) redis.UniversalClient {
	if cluster {
		return redistest.SharedCluster(b).Client(b, func(o *redis.ClusterOptions) { o.ContextTimeoutEnabled = true })
	}
	return benchClient(b)
}

// readFixture caches one user under 1,000 keys through c, and stores the
// same user as plain JSON under plainPrefix+key through rdb. It returns the
// cache's keys and plainGet, whose result reads key i%1000 the plain way
// (GET + json.Unmarshal) through the client given: the baseline of the
// read benchmarks.
func readFixture(b *testing.B, c *Cache[user], rdb redis.UniversalClient, plainPrefix string) (ks []string, plainGet func(redis.Cmdable) func(i int) error) {
	ctx := context.Background()
	const keys = 1000
	u := user{ID: 1, Name: "Ada"}
	raw, _ := json.Marshal(u)
	ks = make([]string, keys)
	plainKeys := make([]string, keys)
	for i := range ks {
		ks[i] = strconv.Itoa(i)
		plainKeys[i] = plainPrefix + ks[i]
		if err := c.Set(ctx, ks[i], u, WithTTL(time.Hour)); err != nil {
			b.Fatal(err)
		}
		if err := rdb.Set(ctx, plainKeys[i], raw, time.Hour).Err(); err != nil {
			b.Fatal(err)
		}
	}
	return ks, func(rc redis.Cmdable) func(int) error {
		return func(i int) error {
			bs, err := rc.Get(ctx, plainKeys[i%keys]).Bytes()
			if err != nil {
				return err
			}
			var v user
			return json.Unmarshal(bs, &v)
		}
	}
}

// compareParallel is compare for throughput: each round runs the baseline
// and then the subject from the same number of goroutines, which share the
// round's ops, and the wall times are summed per side.
func compareParallel(b *testing.B, goroutines int, subject, baseline func(i int) error) {
	b.Helper()
	const rounds = 10
	chunk := max(b.N/rounds, goroutines)
	run := func(op func(int) error, round int) time.Duration {
		var next atomic.Int64
		var wg sync.WaitGroup
		t0 := time.Now()
		for range goroutines {
			wg.Go(func() {
				for {
					i := int(next.Add(1)) - 1
					if i >= chunk {
						return
					}
					if err := op(round*chunk + i*7919); err != nil {
						b.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		return time.Since(t0)
	}
	var subj, base time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for r := range rounds {
		b.StopTimer()
		base += run(baseline, r)
		b.StartTimer()
		subj += run(subject, r)
	}
	n := float64(rounds * chunk)
	b.ReportMetric(float64(base.Nanoseconds())/n, "baseline-ns/op")
	b.ReportMetric(float64(subj)/float64(base), "x-baseline")
	b.ReportMetric(float64(base)/float64(subj), "speedup")
}

// GetMany of 100 keys against 100 sequential Gets of the same keys, in the
// same run: the goal is at least 20x. Both sides decode 100 JSON values,
// which on a cluster is about half of GetMany's CPU time; the raw variant
// (Raw codec, string values) shows the round trips' ratio without it.
func BenchmarkGetMany100(b *testing.B) {
	for _, topo := range []string{"single", "cluster"} {
		b.Run(topo, func(b *testing.B) {
			c := newManyCache[user](b, topo == "cluster")
			benchGetMany(b, c, func(i int) user { return user{ID: i} })
		})
	}
	b.Run("cluster-raw", func(b *testing.B) {
		c := newManyCache[string](b, true, WithCodec(Raw), WithPrefix("many-raw"))
		benchGetMany(b, c, func(i int) string { return "value-" + strconv.Itoa(i) })
	})
}

func newManyCache[V any](b *testing.B, cluster bool, opts ...Option) *Cache[V] {
	return newCacheOn[V](b, topoClient(b, cluster), "many", append(opts, WithReadTimeout(time.Second))...)
}

func benchGetMany[V any](b *testing.B, c *Cache[V], value func(i int) V) {
	ctx := context.Background()
	ks := make([]string, 100)
	items := map[string]V{}
	for i := range ks {
		ks[i] = "m" + strconv.Itoa(i)
		items[ks[i]] = value(i)
	}
	if err := c.SetMany(ctx, items, WithTTL(time.Hour)); err != nil {
		b.Fatal(err)
	}
	compare(b, func(int) {
		got, err := c.GetMany(ctx, ks)
		if err != nil || len(got) != len(ks) {
			b.Fatal(len(got), err)
		}
	}, func(int) {
		for _, k := range ks {
			if _, err := c.Get(ctx, k); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// Reads of keys that are in Redis but not in L1, with a full 1,000-entry
// L1 against no L1, alternating in rounds: the cost of L1 fills (and the
// evictions they cause) on top of a Get and of a 100-key GetMany.
func BenchmarkL1Fill(b *testing.B) {
	ctx := context.Background()
	rdb := benchClient(b)
	w := newCacheOn[string](b, rdb, "l1fill", WithCodec(Raw))
	const n = 100_000
	ks := make([]string, n)
	items := map[string]string{}
	for i := range ks {
		ks[i] = "k" + strconv.Itoa(i)
		items[ks[i]] = "value-" + ks[i]
	}
	if err := w.SetMany(ctx, items, WithTTL(time.Hour)); err != nil {
		b.Fatal(err)
	}
	withL1 := newCacheOn[string](b, rdb, "l1fill", WithCodec(Raw), WithL1(1000))
	noL1 := newCacheOn[string](b, rdb, "l1fill", WithCodec(Raw))
	// Keys go on from one run of a sub-benchmark to the next, so that a
	// key comes back only after 100,000 others, long evicted from L1.
	next := 0
	b.Run("get", func(b *testing.B) {
		get := func(c *Cache[string]) {
			if _, err := c.Get(ctx, ks[next%n]); err != nil {
				b.Fatal(err)
			}
			next++
		}
		compare(b, func(int) { get(withL1) }, func(int) { get(noL1) })
	})
	b.Run("getmany100", func(b *testing.B) {
		getMany := func(c *Cache[string]) {
			lo := next % (n - 100)
			if got, err := c.GetMany(ctx, ks[lo:lo+100]); err != nil || len(got) != 100 {
				b.Fatal(len(got), err)
			}
			next += 100
		}
		compare(b, func(int) { getMany(withL1) }, func(int) { getMany(noL1) })
	})
}

// A miss (GetOrLoad of a key no tier has; the loader returns at once) from
// one goroutine against plain cache-aside: go-redis GET, then
// json.Marshal and SET of the loaded value. What a miss costs tiercache
// beyond it is the lease (an Acquire and a compare-and-set Fill where
// cache-aside has its SET), the flight and the detached load. With L1 on,
// one instance's L1 misses rarely find the value in Redis, and the read
// goes straight to the Acquire (see readOdds).
func BenchmarkMiss(b *testing.B) {
	b.Run("no-l1", func(b *testing.B) { benchMiss(b) })
	b.Run("l1", func(b *testing.B) { benchMiss(b, WithL1(10_000)) })
}

func benchMiss(b *testing.B, opts ...Option) {
	ctx := context.Background()
	rdb := benchClient(b)
	prefix := "benchmiss-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	c := newCacheOn[user](b, rdb, prefix, opts...)
	u := user{ID: 42, Name: "Ada Lovelace"}
	load := func(context.Context) (user, error) { return u, nil }
	compare(b, func(i int) {
		if _, err := c.GetOrLoad(ctx, strconv.Itoa(i), load); err != nil {
			b.Fatal(err)
		}
	}, func(i int) {
		k := prefix + ":plain:" + strconv.Itoa(i)
		if err := rdb.Get(ctx, k).Err(); err != redis.Nil {
			b.Fatalf("plain GET of a new key: %v", err)
		}
		raw, _ := json.Marshal(u)
		if err := rdb.Set(ctx, k, raw, time.Minute).Err(); err != nil {
			b.Fatal(err)
		}
	})
}

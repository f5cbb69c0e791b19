package tiercacheprom_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercacheprom"
)

// newCollector returns a collector registered with a registry of its own.
func newCollector(t *testing.T, opts ...tiercacheprom.Option) (*tiercacheprom.Collector, *prometheus.Registry) {
	t.Helper()
	col, err := tiercacheprom.New(opts...)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(col)
	return col, reg
}

// newCache returns a cache over a client of the shared server, under a
// prefix of its own, reporting to col as name, closed when the test ends.
func newCache(t *testing.T, col *tiercacheprom.Collector, name string, opts ...tiercache.Option) *tiercache.Cache[string] {
	t.Helper()
	rdb := redistest.SharedServer(t).Client(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
	prefix := strings.TrimSuffix(redistest.UniquePrefix(t), ":")
	c, err := tiercache.New[string](rdb, append([]tiercache.Option{
		tiercache.WithPrefix(prefix),
		tiercache.WithObserver(col.Observer(name)),
		tiercache.WithEarlyRefresh(0), // no background loads: the counts are exact
		// Timeouts that a loaded machine under -race does not reach: a
		// timed-out call would be one more error in the counts.
		tiercache.WithReadTimeout(5 * time.Second), tiercache.WithWriteTimeout(5 * time.Second),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	col.Track(name, c.Stats)
	return c
}

// scrape gathers g and returns every sample by name{label="value",...},
// labels sorted: the value of a counter or gauge, and for a histogram its
// sample count under name_count.
func scrape(t *testing.T, g prometheus.Gatherer) map[string]float64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name, v := mf.GetName(), 0.0
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				v = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				v = m.GetGauge().GetValue()
			case dto.MetricType_HISTOGRAM:
				name += "_count"
				v = float64(m.GetHistogram().GetSampleCount())
			default:
				t.Fatalf("unexpected metric type %v of %s", mf.GetType(), name)
			}
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			slices.Sort(labels)
			out[name+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

// nonZero returns the samples of got that are not zero.
func nonZero(got map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range got {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

// diff describes how got differs from want, or is "".
func diff(got, want map[string]float64) string {
	var b strings.Builder
	for _, k := range slices.Sorted(maps.Keys(want)) {
		if g, ok := got[k]; !ok || g != want[k] {
			fmt.Fprintf(&b, "  %s = %v, want %v\n", k, g, want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(got)) {
		if _, ok := want[k]; !ok {
			fmt.Fprintf(&b, "  %s = %v, not expected\n", k, got[k])
		}
	}
	return b.String()
}

// workload runs the script that TestWorkload counts: Set 3 keys, Get them
// (3 hits) and 2 missing keys, GetOrLoad 2 keys (2 loads) twice, one
// failing load, one "not found" load and a Get of it (a negative hit).
func workload(t *testing.T, c *tiercache.Cache[string]) {
	t.Helper()
	ctx := t.Context()
	for _, k := range []string{"k1", "k2", "k3"} {
		if err := c.Set(ctx, k, "v-"+k); err != nil {
			t.Fatal(err)
		}
	}
	for _, k := range []string{"k1", "k2", "k3"} {
		if v, err := c.Get(ctx, k); err != nil || v != "v-"+k {
			t.Fatalf("Get(%s) = %q, %v", k, v, err)
		}
	}
	for _, k := range []string{"m1", "m2"} {
		if _, err := c.Get(ctx, k); !errors.Is(err, tiercache.ErrMiss) {
			t.Fatalf("Get(%s) = %v, want ErrMiss", k, err)
		}
	}
	loads := 0
	for range 2 {
		for _, k := range []string{"n1", "n2"} {
			v, err := c.GetOrLoad(ctx, k, func(context.Context) (string, error) {
				loads++
				return "loaded-" + k, nil
			})
			if err != nil || v != "loaded-"+k {
				t.Fatalf("GetOrLoad(%s) = %q, %v", k, v, err)
			}
		}
	}
	if loads != 2 {
		t.Fatalf("the loader ran %d times, want 2", loads)
	}
	errDB := errors.New("database down")
	if _, err := c.GetOrLoad(ctx, "f1", func(context.Context) (string, error) { return "", errDB }); !errors.Is(err, errDB) {
		t.Fatalf("GetOrLoad with a failing loader = %v, want %v", err, errDB)
	}
	if _, err := c.GetOrLoad(ctx, "nf", func(context.Context) (string, error) { return "", tiercache.ErrNotFound }); !errors.Is(err, tiercache.ErrNotFound) {
		t.Fatalf("GetOrLoad with a not-found loader = %v, want ErrNotFound", err)
	}
	if _, err := c.Get(ctx, "nf"); !errors.Is(err, tiercache.ErrNotFound) {
		t.Fatalf("Get of a cached not-found = %v, want ErrNotFound", err)
	}
}

// counted are the metric families whose every non-zero sample a test
// states: counters and histogram counts.
var counted = []string{
	"tiercache_requests_total", "tiercache_lookup_duration_seconds_count",
	"tiercache_loads_total", "tiercache_load_duration_seconds_count",
	"tiercache_redis_duration_seconds_count", "tiercache_redis_errors_total",
	"tiercache_events_total", "tiercache_breaker_transitions_total",
}

// tracked are the metric families read from the Stats of a tracked cache;
// the histogram by its count.
var tracked = []string{
	"tiercache_breaker_state", "tiercache_breaker_node_state", "tiercache_l1_entries",
	"tiercache_l1_weight_bytes", "tiercache_subscribed", "tiercache_invalidation_delay_seconds_count",
}

// foreground drops the samples of the Redis operations that the cache runs
// on its own schedule rather than a test's calls: the read of the
// namespace's generation (see tiercache.Cache.Clear), once and then once
// per health interval, from whichever call comes first.
func foreground(got map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range got {
		if !strings.Contains(k, `op="generation"`) {
			out[k] = v
		}
	}
	return out
}

// only keeps the samples of got in the families of names.
func only(got map[string]float64, names ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range got {
		if slices.Contains(names, k[:strings.IndexByte(k, '{')]) {
			out[k] = v
		}
	}
	return out
}

// settleL1 waits until L1's weight stops changing. otter applies writes to
// its eviction policy, which keeps the weight, from a buffer that its
// maintenance drains, possibly after the write returned; two reads of the
// weight in a row may differ until then.
func settleL1(t *testing.T, c *tiercache.Cache[string]) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for prev := c.Stats().L1Weight; ; {
		time.Sleep(time.Millisecond)
		w := c.Stats().L1Weight
		if w == prev {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("L1's weight still changes 5s after the last write (%d, then %d)", prev, w)
		}
		prev = w
	}
}

func TestWorkload(t *testing.T) {
	// Without L1 every read is a Redis GET. Per step:
	//   Set k1..k3               set ×3
	//   Get k1..k3               get ×3, l2 hit ×3
	//   Get m1, m2               get ×2, l2 miss ×2
	//   GetOrLoad n1, n2         get ×2, l2 miss ×2, acquire ×2, load ok ×2, fill ×2
	//   GetOrLoad n1, n2 again   get ×2, l2 hit ×2
	//   GetOrLoad f1 (fails)     get, l2 miss, acquire, load error, release
	//   GetOrLoad nf (not found) get, l2 miss, acquire, load ok, fill
	//   Get nf                   get, l2 hit, negative_hit
	l2Only := map[string]float64{
		`tiercache_requests_total{cache="c",result="hit",tier="l2"}`:     6,
		`tiercache_requests_total{cache="c",result="miss",tier="l2"}`:    6,
		`tiercache_lookup_duration_seconds_count{cache="c",tier="l2"}`:   12,
		`tiercache_loads_total{cache="c",result="ok"}`:                   3,
		`tiercache_loads_total{cache="c",result="error"}`:                1,
		`tiercache_load_duration_seconds_count{cache="c"}`:               4,
		`tiercache_redis_duration_seconds_count{cache="c",op="set"}`:     3,
		`tiercache_redis_duration_seconds_count{cache="c",op="get"}`:     12,
		`tiercache_redis_duration_seconds_count{cache="c",op="acquire"}`: 4,
		`tiercache_redis_duration_seconds_count{cache="c",op="fill"}`:    3,
		`tiercache_redis_duration_seconds_count{cache="c",op="release"}`: 1,
		`tiercache_events_total{cache="c",event="negative_hit"}`:         1,
		// Every instance publishes its writes, L1 or not: a Set is one
		// invalidation message.
		`tiercache_redis_duration_seconds_count{cache="c",op="publish"}`: 3,
		`tiercache_events_total{cache="c",event="invalidation_sent"}`:    3,
	}
	// With L1, Set fills it, and so do the loads: what was set or loaded
	// is an L1 hit, and only L1 misses go to Redis.
	//   Set k1..k3               set ×3
	//   Get k1..k3               l1 hit ×3
	//   Get m1, m2               l1 miss ×2, get ×2, l2 miss ×2
	//   GetOrLoad n1, n2         l1 miss ×2, get ×2, l2 miss ×2, acquire ×2, load ok ×2, fill ×2
	//   GetOrLoad n1, n2 again   l1 hit ×2
	//   GetOrLoad f1 (fails)     l1 miss, get, l2 miss, acquire, load error, release
	//   GetOrLoad nf (not found) l1 miss, get, l2 miss, acquire, load ok, fill
	//   Get nf                   l1 hit, negative_hit
	withL1 := map[string]float64{
		`tiercache_requests_total{cache="c",result="hit",tier="l1"}`:     6,
		`tiercache_requests_total{cache="c",result="miss",tier="l1"}`:    6,
		`tiercache_requests_total{cache="c",result="miss",tier="l2"}`:    6,
		`tiercache_lookup_duration_seconds_count{cache="c",tier="l2"}`:   6, // L1 lookups are not timed
		`tiercache_loads_total{cache="c",result="ok"}`:                   3,
		`tiercache_loads_total{cache="c",result="error"}`:                1,
		`tiercache_load_duration_seconds_count{cache="c"}`:               4,
		`tiercache_redis_duration_seconds_count{cache="c",op="set"}`:     3,
		`tiercache_redis_duration_seconds_count{cache="c",op="get"}`:     6,
		`tiercache_redis_duration_seconds_count{cache="c",op="acquire"}`: 4,
		`tiercache_redis_duration_seconds_count{cache="c",op="fill"}`:    3,
		`tiercache_redis_duration_seconds_count{cache="c",op="release"}`: 1,
		`tiercache_events_total{cache="c",event="negative_hit"}`:         1,
	}
	tests := []struct {
		name       string
		opts       []tiercache.Option
		want       map[string]float64
		l1Entries  float64
		subscribed float64
	}{
		// Without L1 the instance subscribes all the same (for its lease
		// flights); the test waits for it.
		// (Its health check is pushed past the test, so that no echo is
		// published: the publishes counted are the writes'.)
		{"l2", []tiercache.Option{tiercache.WithHealthCheck(time.Hour)}, l2Only, 0, 1},
		// Invalidation off: the subscriber flushes L1 when its subscription
		// comes up, at a moment the test does not control.
		{"l1", []tiercache.Option{tiercache.WithL1Bytes(1 << 20), tiercache.WithoutInvalidation()}, withL1, 6, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			col, reg := newCollector(t)
			c := newCache(t, col, "c", tt.opts...)
			for deadline := time.Now().Add(time.Minute); tt.subscribed == 1 && !c.Stats().Subscribed; time.Sleep(time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatal("the subscription did not come up")
				}
			}
			workload(t, c)
			settleL1(t, c)

			// The failed load gives its lease back in the background: wait
			// for the release to be counted.
			got := scrape(t, reg)
			for deadline := time.Now().Add(2 * time.Second); diff(foreground(nonZero(only(got, counted...))), tt.want) != "" && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
				got = scrape(t, reg)
			}
			if d := diff(foreground(nonZero(only(got, counted...))), tt.want); d != "" {
				t.Errorf("counters after the workload:\n%s", d)
			}

			// The same counts, as the cache's own Stats has them.
			s := c.Stats()
			for key, want := range map[string]uint64{
				`tiercache_requests_total{cache="c",result="hit",tier="l1"}`:  s.L1Hits,
				`tiercache_requests_total{cache="c",result="miss",tier="l1"}`: s.L1Misses,
				`tiercache_requests_total{cache="c",result="hit",tier="l2"}`:  s.L2Hits,
				`tiercache_requests_total{cache="c",result="miss",tier="l2"}`: s.L2Misses,
				`tiercache_load_duration_seconds_count{cache="c"}`:            s.Loads,
				`tiercache_loads_total{cache="c",result="error"}`:             s.LoadErrors,
			} {
				if got[key] != float64(want) {
					t.Errorf("%s = %v, but Stats says %d", key, got[key], want)
				}
			}
			for e := range tiercache.Event(len(s.Events)) {
				key := fmt.Sprintf(`tiercache_events_total{cache="c",event=%q}`, e)
				if got[key] != float64(s.Count(e)) {
					t.Errorf("%s = %v, but Stats says %d", key, got[key], s.Count(e))
				}
			}

			// The gauges are read from Stats at the scrape: one breaker, of
			// the one node; the subscription as the case says, and no
			// invalidation delays (no other instance writes).
			if s.L1Entries != int(tt.l1Entries) {
				t.Errorf("Stats().L1Entries = %d, want %v", s.L1Entries, tt.l1Entries)
			}
			node := redistest.SharedServer(t).Addr
			if d := diff(only(got, tracked...), map[string]float64{
				`tiercache_breaker_state{cache="c"}`:                          0,
				`tiercache_breaker_node_state{cache="c",node="` + node + `"}`: 0,
				`tiercache_l1_entries{cache="c"}`:                             tt.l1Entries,
				`tiercache_l1_weight_bytes{cache="c"}`:                        float64(s.L1Weight),
				`tiercache_subscribed{cache="c"}`:                             tt.subscribed,
				`tiercache_invalidation_delay_seconds_count{cache="c"}`:       0,
			}); d != "" {
				t.Errorf("gauges after the workload:\n%s", d)
			}
			if tt.l1Entries > 0 && s.L1Weight == 0 {
				t.Errorf("Stats().L1Weight = 0 with %v entries in an L1 bounded by bytes", tt.l1Entries)
			}
		})
	}
}

// TestExposition checks the text that Prometheus scrapes, HELP and TYPE
// included, for the counters of a few reads.
func TestExposition(t *testing.T) {
	col, reg := newCollector(t, tiercacheprom.WithConstLabels(prometheus.Labels{"service": "shop"}))
	c := newCache(t, col, "users")
	ctx := t.Context()
	if err := c.Set(ctx, "a", "1"); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "a", "b"} {
		_, _ = c.Get(ctx, k)
	}
	_, _ = c.GetOrLoad(ctx, "b", func(context.Context) (string, error) { return "2", nil })

	const want = `
# HELP tiercache_loads_total Loader calls, by result (ok, error); a loader's ErrNotFound is ok.
# TYPE tiercache_loads_total counter
tiercache_loads_total{cache="users",result="error",service="shop"} 0
tiercache_loads_total{cache="users",result="ok",service="shop"} 1
# HELP tiercache_requests_total Lookups of a cache tier (l1, l2), by result (hit, miss).
# TYPE tiercache_requests_total counter
tiercache_requests_total{cache="users",result="hit",service="shop",tier="l1"} 0
tiercache_requests_total{cache="users",result="hit",service="shop",tier="l2"} 2
tiercache_requests_total{cache="users",result="miss",service="shop",tier="l1"} 0
tiercache_requests_total{cache="users",result="miss",service="shop",tier="l2"} 2
# HELP tiercache_breaker_state State of the Redis circuit breaker: 0 closed, 1 half-open, 2 open.
# TYPE tiercache_breaker_state gauge
tiercache_breaker_state{cache="users",service="shop"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"tiercache_requests_total", "tiercache_loads_total", "tiercache_breaker_state"); err != nil {
		t.Error(err)
	}
	// Every event has its series from the start, at zero.
	if n, want := testutil.CollectAndCount(col, "tiercache_events_total"), len(tiercache.Stats{}.Events); n != want {
		t.Errorf("tiercache_events_total has %d series, want %d", n, want)
	}
}

// TestBreaker stops Redis under a cache: the failed calls, the breaker
// opening, the calls it rejects, and, once Redis is back, its closing.
func TestBreaker(t *testing.T) {
	srv := redistest.StartServer(t)
	rdb := srv.Client(t, func(o *redis.Options) {
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1 // one failed call per Get, not four
	})
	col, reg := newCollector(t)
	c, err := tiercache.New[string](rdb,
		tiercache.WithObserver(col.Observer("flaky")),
		tiercache.WithBreaker(tiercache.BreakerSettings{ConsecutiveFailures: 3, OpenFor: 50 * time.Millisecond, Probes: 1}),
		// The Set must succeed however loaded the machine (a failed call before
		// Redis stops would count towards the breaker); with Redis down the
		// calls fail at once, refused.
		tiercache.WithReadTimeout(5*time.Second), tiercache.WithWriteTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	col.Track("flaky", c.Stats)
	ctx := t.Context()
	if err := c.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	// The subscription's first confirmation reads the generation, a Redis
	// call under the same breaker: let it land before Redis stops, or on a
	// loaded machine it can fail after the Stop, one of the three failures
	// that open the breaker, and one Get fewer reaches Redis.
	waitUntil(t, "the subscription up", func() bool { return c.Stats().Subscribed })

	srv.Stop()
	// Three failures open the breaker; the next two Gets are not sent.
	for i := range 5 {
		if _, err := c.Get(ctx, "k"); !errors.Is(err, tiercache.ErrRedis) || !errors.Is(err, tiercache.ErrMiss) {
			t.Fatalf("Get %d with Redis down = %v, want ErrRedis and ErrMiss", i, err)
		}
	}
	s := c.Stats()
	got := scrape(t, reg)
	want := map[string]float64{
		`tiercache_redis_duration_seconds_count{cache="flaky",op="set"}`: 1,
		// The Set's invalidation message, before Redis went away.
		`tiercache_redis_duration_seconds_count{cache="flaky",op="publish"}`: 1,
		`tiercache_events_total{cache="flaky",event="invalidation_sent"}`:    1,
		`tiercache_redis_duration_seconds_count{cache="flaky",op="get"}`:     3,
		`tiercache_redis_errors_total{cache="flaky",op="get"}`:               3,
		// 3 reads failed; the breaker kept the other 2 from Redis, which
		// are no lookups (breaker_reject counts them).
		`tiercache_requests_total{cache="flaky",result="miss",tier="l2"}`:  3,
		`tiercache_lookup_duration_seconds_count{cache="flaky",tier="l2"}`: 3,
		`tiercache_events_total{cache="flaky",event="redis_error"}`:        3,
		`tiercache_events_total{cache="flaky",event="breaker_reject"}`:     2,
		`tiercache_breaker_transitions_total{cache="flaky",to="open"}`:     1,
	}
	// Whether a refused connection counts as a timeout too is go-redis's
	// business; the Stats say.
	if n := s.Count(tiercache.EventRedisTimeout); n > 0 {
		want[`tiercache_events_total{cache="flaky",event="redis_timeout"}`] = float64(n)
	}
	// The subscription (for lease waiters' wake-ups) reads the generation
	// in the background once it is up; if that read came after the Stop,
	// it was one of the three failures that opened the breaker, and one
	// more Get was refused.
	if g := got[`tiercache_redis_errors_total{cache="flaky",op="generation"}`]; g > 0 {
		for _, k := range []string{`tiercache_redis_duration_seconds_count{cache="flaky",op="get"}`, `tiercache_redis_errors_total{cache="flaky",op="get"}`,
			`tiercache_requests_total{cache="flaky",result="miss",tier="l2"}`, `tiercache_lookup_duration_seconds_count{cache="flaky",tier="l2"}`} {
			want[k] -= g
		}
		want[`tiercache_events_total{cache="flaky",event="breaker_reject"}`] += g
	}
	if d := diff(foreground(nonZero(only(got, counted...))), want); d != "" {
		t.Errorf("counters with Redis down:\n%s", d)
	}
	if s.BreakerState != tiercache.BreakerOpen {
		t.Errorf("Stats().BreakerState = %v, want open", s.BreakerState)
	}
	if g := got[`tiercache_breaker_state{cache="flaky"}`]; g != 2 {
		t.Errorf("tiercache_breaker_state = %v, want 2 (open)", g)
	}
	// The breaker of the one node, by its address.
	nodeKey := `tiercache_breaker_node_state{cache="flaky",node="` + srv.Addr + `"}`
	if d := diff(only(got, "tiercache_breaker_node_state"), map[string]float64{nodeKey: 2}); d != "" {
		t.Errorf("node breaker gauges with Redis down:\n%s", d)
	}
	if s.Breakers[srv.Addr] != tiercache.BreakerOpen {
		t.Errorf("Stats().Breakers = %v, want %s open", s.Breakers, srv.Addr)
	}

	// Once Redis is back, a read after OpenFor is the probe that closes
	// the breaker (the restarted server is empty: a miss).
	srv.Restart(t)
	deadline := time.Now().Add(5 * time.Second)
	for c.Stats().BreakerState != tiercache.BreakerClosed {
		if time.Now().After(deadline) {
			t.Fatalf("the breaker is still %v 5s after Redis came back", c.Stats().BreakerState)
		}
		_, _ = c.Get(ctx, "k")
		time.Sleep(10 * time.Millisecond)
	}
	got = scrape(t, reg)
	// A probe that fails opens the breaker again: however many times that
	// happened, it was half-open as often as it opened, and closed once.
	open := got[`tiercache_breaker_transitions_total{cache="flaky",to="open"}`]
	halfOpen := got[`tiercache_breaker_transitions_total{cache="flaky",to="half-open"}`]
	closed := got[`tiercache_breaker_transitions_total{cache="flaky",to="closed"}`]
	if open < 1 || halfOpen != open || closed != 1 {
		t.Errorf("transitions: open %v, half-open %v, closed %v; want open = half-open >= 1, closed 1", open, halfOpen, closed)
	}
	if g := got[`tiercache_breaker_state{cache="flaky"}`]; g != 0 {
		t.Errorf("tiercache_breaker_state = %v, want 0 (closed)", g)
	}
	if g, ok := got[nodeKey]; !ok || g != 0 {
		t.Errorf("%s = %v (present: %v), want 0 (closed)", nodeKey, g, ok)
	}
	s = c.Stats()
	for _, e := range []tiercache.Event{tiercache.EventRedisError, tiercache.EventBreakerReject} {
		key := fmt.Sprintf(`tiercache_events_total{cache="flaky",event=%q}`, e)
		if got[key] != float64(s.Count(e)) {
			t.Errorf("%s = %v, but Stats says %d", key, got[key], s.Count(e))
		}
	}
}

func TestTrack(t *testing.T) {
	col, reg := newCollector(t)
	c := newCache(t, col, "a", tiercache.WithL1(10), tiercache.WithoutInvalidation())
	if err := c.Set(t.Context(), "k", "v"); err != nil {
		t.Fatal(err)
	}
	gauges := func() map[string]float64 { return only(scrape(t, reg), tracked...) }
	node := redistest.SharedServer(t).Addr
	if d := diff(gauges(), map[string]float64{
		`tiercache_breaker_state{cache="a"}`:                          0,
		`tiercache_breaker_node_state{cache="a",node="` + node + `"}`: 0,
		`tiercache_l1_entries{cache="a"}`:                             1,
		`tiercache_l1_weight_bytes{cache="a"}`:                        0, // L1 bounded by entries
		`tiercache_subscribed{cache="a"}`:                             0, // invalidation off
		`tiercache_invalidation_delay_seconds_count{cache="a"}`:       0,
	}); d != "" {
		t.Errorf("gauges of a tracked cache:\n%s", d)
	}

	// Tracking a name again replaces its function. The node label is a
	// valid label value whatever the address.
	col.Track("a", func() tiercache.Stats {
		return tiercache.Stats{
			BreakerState: tiercache.BreakerOpen, L1Entries: 7, Subscribed: true,
			Breakers: map[string]tiercache.BreakerState{
				"10.0.0.1:6379": tiercache.BreakerClosed, "10.0.0.2:6379": tiercache.BreakerOpen, "bad\xff": tiercache.BreakerHalfOpen,
			},
		}
	})
	if d := diff(gauges(), map[string]float64{
		`tiercache_breaker_state{cache="a"}`:                           2,
		`tiercache_breaker_node_state{cache="a",node="10.0.0.1:6379"}`: 0,
		`tiercache_breaker_node_state{cache="a",node="10.0.0.2:6379"}`: 2,
		"tiercache_breaker_node_state{cache=\"a\",node=\"bad\uFFFD\"}": 1,
		`tiercache_l1_entries{cache="a"}`:                              7,
		`tiercache_l1_weight_bytes{cache="a"}`:                         0,
		`tiercache_subscribed{cache="a"}`:                              1,
		`tiercache_invalidation_delay_seconds_count{cache="a"}`:        0,
	}); d != "" {
		t.Errorf("gauges after Track again:\n%s", d)
	}

	col.Untrack("a")
	if g := gauges(); len(g) != 0 {
		t.Errorf("gauges after Untrack: %v, want none", g)
	}
	// The pushed counters stay.
	if n := testutil.CollectAndCount(col, "tiercache_redis_duration_seconds"); n == 0 {
		t.Error("Untrack removed the histograms")
	}
}

func TestNewInvalidOption(t *testing.T) {
	tests := []struct {
		name string
		opt  tiercacheprom.Option
	}{
		{"no buckets", tiercacheprom.WithBuckets()},
		{"buckets not increasing", tiercacheprom.WithBuckets(0.1, 0.01)},
		{"equal buckets", tiercacheprom.WithBuckets(0.1, 0.1)},
		{"infinite bucket", tiercacheprom.WithBuckets(0.1, math.Inf(1))},
		{"NaN bucket", tiercacheprom.WithBuckets(math.NaN())},
		{"const label clashes", tiercacheprom.WithConstLabels(prometheus.Labels{"cache": "x"})},
		{"const label clashes with a follower's", tiercacheprom.WithConstLabels(prometheus.Labels{"follower": "x"})},
		{"const label clashes with an unmapped table's", tiercacheprom.WithConstLabels(prometheus.Labels{"table": "x"})},
		{"const label without a name", tiercacheprom.WithConstLabels(prometheus.Labels{"": "x"})},
		{"const label value not UTF-8", tiercacheprom.WithConstLabels(prometheus.Labels{"a": "\xff"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			col, err := tiercacheprom.New(tt.opt)
			if !errors.Is(err, tiercacheprom.ErrInvalidOption) || col != nil {
				t.Fatalf("New = %v, %v; want nil, ErrInvalidOption", col, err)
			}
		})
	}
}

func TestBuckets(t *testing.T) {
	col, reg := newCollector(t, tiercacheprom.WithBuckets(0.001, 0.01))
	o := col.Observer("b")
	o.Load(5*time.Millisecond, nil)
	o.Load(time.Second, nil)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tiercache_load_duration_seconds" {
			continue
		}
		var got []string
		for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
			got = append(got, fmt.Sprintf("%v:%d", b.GetUpperBound(), b.GetCumulativeCount()))
		}
		if want := []string{"0.001:0", "0.01:1"}; !slices.Equal(got, want) {
			t.Errorf("buckets = %v, want %v", got, want)
		}
		return
	}
	t.Fatal("no tiercache_load_duration_seconds")
}

// TestObserverNames: one observer per name, and names Prometheus would
// refuse as label values are mended instead of panicking.
func TestObserverNames(t *testing.T) {
	col, reg := newCollector(t)
	if col.Observer("x") != col.Observer("x") {
		t.Error("two observers for one name")
	}
	col.Observer("bad\xff").Event(tiercache.EventCoalesced)
	if got := scrape(t, reg)["tiercache_events_total{cache=\"bad\uFFFD\",event=\"coalesced\"}"]; got != 1 {
		t.Errorf("events of a name with a bad byte = %v, want 1", got)
	}
}

package tiercacheotel_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercacheotel"
)

// sdk is an in-memory OpenTelemetry SDK: a manual metric reader and a span
// recorder.
type sdk struct {
	reader *sdkmetric.ManualReader
	spans  *tracetest.SpanRecorder
	mp     *sdkmetric.MeterProvider
	tp     *sdktrace.TracerProvider
}

func newSDK(t *testing.T) *sdk {
	t.Helper()
	s := &sdk{reader: sdkmetric.NewManualReader(), spans: tracetest.NewSpanRecorder()}
	s.mp = sdkmetric.NewMeterProvider(sdkmetric.WithReader(s.reader))
	s.tp = sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(s.spans))
	t.Cleanup(func() {
		_ = s.mp.Shutdown(context.Background())
		_ = s.tp.Shutdown(context.Background())
	})
	return s
}

// points collects the metrics and returns every data point by
// name{key=value,...}, attributes sorted: a sum's value, a gauge's value, a
// histogram's count.
func (s *sdk) points(t *testing.T) map[string]float64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := s.reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	key := func(name string, set attribute.Set) string {
		var kvs []string
		for _, kv := range set.ToSlice() {
			if kv.Key == "tiercache.cache" && kv.Value.AsString() == "c" {
				continue // the cache of every test; any other shows
			}
			kvs = append(kvs, string(kv.Key)+"="+kv.Value.Emit())
		}
		return name + "{" + strings.Join(kvs, ",") + "}"
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					out[key(m.Name, p.Attributes)] = float64(p.Value)
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					out[key(m.Name, p.Attributes)] = float64(p.Value)
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					out[key(m.Name+".count", p.Attributes)] = float64(p.Count)
				}
			default:
				t.Fatalf("unexpected data %T of %s", m.Data, m.Name)
			}
		}
	}
	return out
}

// foreground drops the points of the Redis operations that the cache runs
// on its own schedule rather than a test's calls: the read of the
// namespace's generation (see tiercache.Cache.Clear), once and then once
// per health interval, from whichever call comes first.
func foreground(got map[string]float64) map[string]float64 {
	out := map[string]float64{}
	for k, v := range got {
		if !strings.Contains(k, "tiercache.redis.op=generation") {
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

// newCache returns a cache named "c" over a client of the shared server,
// under a prefix of its own, reporting to a new observer on s, closed when
// the test ends.
func newCache(t *testing.T, s *sdk, opts ...tiercache.Option) (*tiercache.Cache[string], *tiercacheotel.Observer) {
	t.Helper()
	obs, err := tiercacheotel.New("c", tiercacheotel.WithMeterProvider(s.mp), tiercacheotel.WithTracerProvider(s.tp))
	if err != nil {
		t.Fatal(err)
	}
	rdb := redistest.SharedServer(t).Client(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
	prefix := strings.TrimSuffix(redistest.UniquePrefix(t), ":")
	c, err := tiercache.New[string](rdb, append([]tiercache.Option{
		tiercache.WithPrefix(prefix),
		tiercache.WithObserver(obs),
		tiercache.WithEarlyRefresh(0), // no background loads: the counts are exact
		// Timeouts that a loaded machine under -race does not reach: a
		// timed-out call would be one more error in the counts.
		tiercache.WithReadTimeout(5 * time.Second), tiercache.WithWriteTimeout(5 * time.Second),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, obs
}

var errDB = errors.New("database down")

// workload runs the script that TestWorkload counts: Set 3 keys, Get them
// (3 hits) and 2 missing keys, GetOrLoad 2 keys (2 loads) twice, one
// failing load, one "not found" load and a Get of it (a negative hit).
func workload(t *testing.T, ctx context.Context, c *tiercache.Cache[string]) {
	t.Helper()
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

func TestWorkload(t *testing.T) {
	s := newSDK(t)
	c, obs := newCache(t, s)
	reg, err := obs.Track(c.Stats)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	workload(t, t.Context(), c)

	// Without L1 every read is a Redis GET. Per step:
	//   Set k1..k3               set ×3
	//   Get k1..k3               get ×3, l2 hit ×3
	//   Get m1, m2               get ×2, l2 miss ×2
	//   GetOrLoad n1, n2         get ×2, l2 miss ×2, acquire ×2, load ok ×2, fill ×2
	//   GetOrLoad n1, n2 again   get ×2, l2 hit ×2
	//   GetOrLoad f1 (fails)     get, l2 miss, acquire, load error, release
	//   GetOrLoad nf (not found) get, l2 miss, acquire, load ok, fill
	//   Get nf                   get, l2 hit, negative_hit
	want := map[string]float64{
		"tiercache.requests{tiercache.result=hit,tiercache.tier=l2}":                     3 + 2 + 1,
		"tiercache.requests{tiercache.result=miss,tiercache.tier=l2}":                    2 + 2 + 1 + 1,
		"tiercache.lookup.duration.count{tiercache.tier=l2}":                             12,
		"tiercache.loads{tiercache.result=ok}":                                           3,
		"tiercache.loads{tiercache.result=error}":                                        1,
		"tiercache.load.duration.count{}":                                                4,
		"tiercache.redis.duration.count{tiercache.redis.op=set,tiercache.result=ok}":     3,
		"tiercache.redis.duration.count{tiercache.redis.op=get,tiercache.result=ok}":     12,
		"tiercache.redis.duration.count{tiercache.redis.op=acquire,tiercache.result=ok}": 4,
		"tiercache.redis.duration.count{tiercache.redis.op=fill,tiercache.result=ok}":    3,
		"tiercache.redis.duration.count{tiercache.redis.op=release,tiercache.result=ok}": 1,
		"tiercache.events{tiercache.event=negative_hit}":                                 1,
		// Every instance publishes its writes, L1 or not: a Set is one
		// invalidation message.
		"tiercache.redis.duration.count{tiercache.redis.op=publish,tiercache.result=ok}":            3,
		"tiercache.events{tiercache.event=invalidation_sent}":                                       3,
		"tiercache.breaker.state{}":                                                                 0,
		"tiercache.breaker.node.state{tiercache.redis.node=" + redistest.SharedServer(t).Addr + "}": 0,
		"tiercache.l1.entries{}":                                                                    0,
		"tiercache.l1.weight{}":                                                                     0,
	}
	// The failed load gives its lease back in the background: wait for it.
	got := foreground(s.points(t))
	for deadline := time.Now().Add(2 * time.Second); diff(got, want) != "" && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
		got = foreground(s.points(t))
	}
	if d := diff(got, want); d != "" {
		t.Errorf("metrics after the workload:\n%s", d)
	}

	// The same counts, as the cache's own Stats has them.
	st := c.Stats()
	for key, want := range map[string]uint64{
		"tiercache.requests{tiercache.result=hit,tiercache.tier=l2}":  st.L2Hits,
		"tiercache.requests{tiercache.result=miss,tiercache.tier=l2}": st.L2Misses,
		"tiercache.load.duration.count{}":                             st.Loads,
		"tiercache.loads{tiercache.result=error}":                     st.LoadErrors,
	} {
		if got[key] != float64(want) {
			t.Errorf("%s = %v, but Stats says %d", key, got[key], want)
		}
	}
	for e := range tiercache.Event(len(st.Events)) {
		key := fmt.Sprintf("tiercache.events{tiercache.event=%s}", e)
		if got[key] != float64(st.Count(e)) {
			t.Errorf("%s = %v, but Stats says %d", key, got[key], st.Count(e))
		}
	}

	// One span per load: n1, n2, f1 (failed), nf (not found).
	var names []string
	var failed, notFound []sdktrace.ReadOnlySpan
	for _, sp := range s.spans.Ended() {
		names = append(names, sp.Name())
		if sp.Status().Code == codes.Error {
			failed = append(failed, sp)
		}
		if slices.Contains(sp.Attributes(), attribute.Bool("tiercache.not_found", true)) {
			notFound = append(notFound, sp)
		}
		if !slices.Contains(sp.Attributes(), attribute.String("tiercache.cache", "c")) {
			t.Errorf("span %s has attributes %v, without tiercache.cache=c", sp.Name(), sp.Attributes())
		}
	}
	var loads []string
	for _, n := range names {
		if strings.HasPrefix(n, "tiercache.load") {
			loads = append(loads, n)
		} else if !strings.HasPrefix(n, "tiercache.redis.") {
			t.Errorf("span %q is neither a load nor a Redis round trip", n)
		}
	}
	if want := []string{"tiercache.load", "tiercache.load", "tiercache.load", "tiercache.load"}; !slices.Equal(loads, want) {
		t.Errorf("ended load spans %v, want %v", loads, want)
	}
	if !slices.Contains(names, "tiercache.redis.get") || !slices.Contains(names, "tiercache.redis.fill") {
		t.Errorf("no spans of Redis round trips in %v", names)
	}
	if len(failed) != 1 {
		t.Fatalf("%d spans with an error status, want 1 (the failed load)", len(failed))
	}
	if st := failed[0].Status(); st.Description != errDB.Error() {
		t.Errorf("status of the failed load: %+v, want the loader's error %q", st, errDB)
	}
	if ev := failed[0].Events(); len(ev) != 1 || ev[0].Name != "exception" {
		t.Errorf("events of the failed load: %+v, want one exception", ev)
	}
	if len(notFound) != 1 || notFound[0].Status().Code != codes.Unset {
		t.Errorf("not-found load spans: %d, want 1 without an error status", len(notFound))
	}
}

// TestLoadSpanContext: the loader runs in the load span, so that its own
// spans (the database query) are the load span's children.
func TestLoadSpanContext(t *testing.T) {
	s := newSDK(t)
	c, _ := newCache(t, s)
	var inLoad trace.SpanContext
	_, err := c.GetOrLoad(t.Context(), "k", func(ctx context.Context) (string, error) {
		inLoad = trace.SpanContextFromContext(ctx)
		return "v", nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var ended []sdktrace.ReadOnlySpan
	for _, sp := range s.spans.Ended() {
		if sp.Name() == "tiercache.load" {
			ended = append(ended, sp)
		}
	}
	if len(ended) != 1 {
		t.Fatalf("%d load spans, want 1", len(ended))
	}
	if got := ended[0].SpanContext(); !inLoad.Equal(got) {
		t.Errorf("the loader ran in span %v, want the load span %v", inLoad.SpanID(), got.SpanID())
	}
}

// TestBreaker: failed Redis calls are recorded with result=error, and the
// breaker's transitions and state are reported.
func TestBreaker(t *testing.T) {
	s := newSDK(t)
	obs, err := tiercacheotel.New("c", tiercacheotel.WithMeterProvider(s.mp), tiercacheotel.WithTracerProvider(s.tp))
	if err != nil {
		t.Fatal(err)
	}
	srv := redistest.StartServer(t)
	rdb := srv.Client(t, func(o *redis.Options) {
		o.ContextTimeoutEnabled = true
		o.MaxRetries = -1 // one failed call per Get, not four
	})
	c, err := tiercache.New[string](rdb, tiercache.WithObserver(obs),
		tiercache.WithBreaker(tiercache.BreakerSettings{ConsecutiveFailures: 3, OpenFor: time.Hour, Probes: 1}),
		// Timeouts that a loaded machine does not reach; with Redis down the
		// calls fail at once, refused.
		tiercache.WithReadTimeout(5*time.Second), tiercache.WithWriteTimeout(5*time.Second),
		// No silence ping (and its generation read) during the test either.
		tiercache.WithHealthCheck(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	reg, err := obs.Track(c.Stats)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	// The subscription's first confirmation reads the generation, a Redis
	// call under the same breaker: let it land before Redis stops, or on a
	// loaded machine it can fail after the Stop, one of the three failures
	// that open the breaker, and one Get fewer reaches Redis.
	waitUntil(t, "the subscription up", func() bool { return c.Stats().Subscribed })

	srv.Stop()
	for i := range 5 {
		if _, err := c.Get(t.Context(), "k"); !errors.Is(err, tiercache.ErrRedis) {
			t.Fatalf("Get %d with Redis down = %v, want ErrRedis", i, err)
		}
	}
	st := c.Stats()
	want := map[string]float64{
		// 3 reads failed; the breaker kept the other 2 from Redis, which
		// are no lookups (breaker_reject counts them).
		"tiercache.requests{tiercache.result=miss,tiercache.tier=l2}":                   3,
		"tiercache.lookup.duration.count{tiercache.tier=l2}":                            3,
		"tiercache.redis.duration.count{tiercache.redis.op=get,tiercache.result=error}": 3,
		"tiercache.events{tiercache.event=redis_error}":                                 3,
		"tiercache.events{tiercache.event=breaker_reject}":                              2,
		"tiercache.breaker.transitions{tiercache.breaker.state=open}":                   1,
		"tiercache.breaker.state{}":                                                     2,
		"tiercache.breaker.node.state{tiercache.redis.node=" + srv.Addr + "}":           2,
		"tiercache.l1.entries{}":                                                        0,
		"tiercache.l1.weight{}":                                                         0,
	}
	// Whether a refused connection counts as a timeout too is go-redis's
	// business; the Stats say.
	if n := st.Count(tiercache.EventRedisTimeout); n > 0 {
		want["tiercache.events{tiercache.event=redis_timeout}"] = float64(n)
	}
	if d := diff(foreground(s.points(t)), want); d != "" {
		t.Errorf("metrics with Redis down:\n%s", d)
	}
}

func TestNewInvalidOption(t *testing.T) {
	for _, opt := range []tiercacheotel.Option{
		tiercacheotel.WithMeterProvider(nil),
		tiercacheotel.WithTracerProvider(nil),
	} {
		if obs, err := tiercacheotel.New("c", opt); !errors.Is(err, tiercacheotel.ErrInvalidOption) || obs != nil {
			t.Errorf("New with a nil provider = %v, %v; want nil, ErrInvalidOption", obs, err)
		}
	}
	obs, err := tiercacheotel.New("c")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := obs.Track(nil); !errors.Is(err, tiercacheotel.ErrInvalidOption) {
		t.Errorf("Track(nil) = %v, want ErrInvalidOption", err)
	}
}

func TestSpanNames(t *testing.T) {
	s := newSDK(t)
	obs, err := tiercacheotel.New("c", tiercacheotel.WithTracerProvider(s.tp))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		op   string
		name string
		kind trace.SpanKind
	}{
		{"load", "tiercache.load", trace.SpanKindInternal},
		{"load_many", "tiercache.load_many", trace.SpanKindInternal},
		{"get", "tiercache.redis.get", trace.SpanKindClient},
		{"acquire", "tiercache.redis.acquire", trace.SpanKindClient},
		{"mget", "tiercache.redis.mget", trace.SpanKindClient},
		{"refresh", "tiercache.refresh", trace.SpanKindInternal},
	}
	for _, tt := range tests {
		t.Run(tt.op, func(t *testing.T) {
			s.spans.Reset()
			_, end := obs.Start(t.Context(), tt.op)
			end(nil)
			ended := s.spans.Ended()
			if len(ended) != 1 {
				t.Fatalf("%d spans, want 1", len(ended))
			}
			if sp := ended[0]; sp.Name() != tt.name || sp.SpanKind() != tt.kind || sp.Status().Code != codes.Unset {
				t.Errorf("span %q of kind %v, status %v; want %q of kind %v, unset", sp.Name(), sp.SpanKind(), sp.Status(), tt.name, tt.kind)
			}
		})
	}
}

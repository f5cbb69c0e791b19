package tiercacheotel_test

import (
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/keys"
	"github.com/tiercache/tiercache/internal/msg"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercacheotel"
)

// waitUntil is the harness's WaitUntil.
func waitUntil(t *testing.T, what string, cond func() bool) { redistest.WaitUntil(t, what, cond) }

// histogram collects s and returns the data point of histogram name, or
// false if it has none.
func (s *sdk) histogram(t *testing.T, name string) (metricdata.HistogramDataPoint[float64], bool) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := s.reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			h, ok := m.Data.(metricdata.Histogram[float64])
			if !ok {
				t.Fatalf("%s is a %T, want a histogram", name, m.Data)
			}
			if m.Unit != "s" {
				t.Errorf("%s has the unit %q, want s", name, m.Unit)
			}
			if len(h.DataPoints) != 1 {
				t.Fatalf("%s has %d points, want 1", name, len(h.DataPoints))
			}
			return h.DataPoints[0], true
		}
	}
	return metricdata.HistogramDataPoint[float64]{}, false
}

// checkDelayPoint checks a point of tiercache.invalidation.delay against
// the cache's own histogram: tiercache's bucket bounds, and the same count,
// sum and maximum. (The buckets themselves may differ by one for a delay
// right on a bound: OpenTelemetry's include their upper bound,
// tiercache's do not.)
func checkDelayPoint(t *testing.T, p metricdata.HistogramDataPoint[float64], h tiercache.DelayHistogram) {
	t.Helper()
	var want []float64
	for i := range tiercache.DelayBuckets - 1 {
		want = append(want, tiercache.DelayBucketBound(i).Seconds())
	}
	if !slices.Equal(p.Bounds, want) {
		t.Errorf("bounds %v, want tiercache's %v", p.Bounds, want)
	}
	if p.Count != h.Count {
		t.Errorf("count %d, Stats says %d", p.Count, h.Count)
	}
	if math.Abs(p.Sum-h.Sum.Seconds()) > 1e-9 {
		t.Errorf("sum %vs, Stats says %v", p.Sum, h.Sum)
	}
	if m, ok := p.Max.Value(); !ok || m != h.Max.Seconds() {
		t.Errorf("max %v (%v), Stats says %v", m, ok, h.Max)
	}
	if p.Attributes.Len() != 1 {
		t.Errorf("attributes %v, want tiercache.cache alone", p.Attributes.ToSlice())
	}
}

// TestInvalidationDelay: a write on instance a, and a message that says it
// was sent 700ms ago, reach instance b, whose observer records each delay
// into tiercache.invalidation.delay as it applies the message: the same
// figures as b's Stats, and the late one above 700ms.
func TestInvalidationDelay(t *testing.T) {
	s := newSDK(t)
	srv := redistest.SharedServer(t)
	prefix := strings.TrimSuffix(redistest.UniquePrefix(t), ":")
	instance := func(obs tiercache.Observer) *tiercache.Cache[string] {
		rdb := srv.Client(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
		c, err := tiercache.New[string](rdb, tiercache.WithPrefix(prefix), tiercache.WithL1(100),
			// Timeouts that a loaded machine under -race does not reach.
			tiercache.WithReadTimeout(5*time.Second), tiercache.WithWriteTimeout(5*time.Second), tiercache.WithObserver(obs))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		return c
	}
	obs, err := tiercacheotel.New("c", tiercacheotel.WithMeterProvider(s.mp), tiercacheotel.WithTracerProvider(s.tp))
	if err != nil {
		t.Fatal(err)
	}
	a, b := instance(tiercache.NopObserver{}), instance(obs)
	waitUntil(t, "both subscriptions up", func() bool { return a.Stats().Subscribed && b.Stats().Subscribed })
	if _, ok := s.histogram(t, "tiercache.invalidation.delay"); ok {
		t.Error("a delay recorded before any write")
	}
	count := func() uint64 {
		p, _ := s.histogram(t, "tiercache.invalidation.delay")
		return p.Count
	}

	ctx := t.Context()
	if err := a.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a's message recorded at b", func() bool { return count() == 1 })
	late := msg.EncodeAt([8]byte{9, 9, 9}, time.Now().UnixMicro()-700_000, []string{"k"}, nil, false)[0]
	if err := srv.Client(t).Publish(ctx, keys.New(prefix, 1).Channel(), late).Err(); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "the late message recorded at b", func() bool { return count() == 2 })

	p, _ := s.histogram(t, "tiercache.invalidation.delay")
	checkDelayPoint(t, p, b.Stats().InvalidationDelay)
	var belowLate uint64
	for i, bound := range p.Bounds {
		if bound < 0.7 {
			belowLate += p.BucketCounts[i]
		}
	}
	if belowLate != 1 {
		t.Errorf("%d delays in the buckets below 700ms, want 1 (a's write; the late message is above)", belowLate)
	}
	if m, _ := p.Max.Value(); m < 0.7 {
		t.Errorf("max %vs, want at least the late message's 0.7s", m)
	}
}

// TestNodeStates: tiercache.breaker.node.state has a point per node of
// Stats.Breakers, with the node's address, and none without breakers.
func TestNodeStates(t *testing.T) {
	s := newSDK(t)
	obs, err := tiercacheotel.New("c", tiercacheotel.WithMeterProvider(s.mp), tiercacheotel.WithTracerProvider(s.tp))
	if err != nil {
		t.Fatal(err)
	}
	stats := tiercache.Stats{
		BreakerState: tiercache.BreakerOpen,
		Breakers: map[string]tiercache.BreakerState{
			"10.0.0.1:6379": tiercache.BreakerClosed, "10.0.0.2:6379": tiercache.BreakerHalfOpen, "10.0.0.3:6379": tiercache.BreakerOpen,
		},
	}
	reg, err := obs.Track(func() tiercache.Stats { return stats })
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Unregister() }()
	want := map[string]float64{
		"tiercache.breaker.state{}":                                        2,
		"tiercache.breaker.node.state{tiercache.redis.node=10.0.0.1:6379}": 0,
		"tiercache.breaker.node.state{tiercache.redis.node=10.0.0.2:6379}": 1,
		"tiercache.breaker.node.state{tiercache.redis.node=10.0.0.3:6379}": 2,
		"tiercache.l1.entries{}":                                           0,
		"tiercache.l1.weight{}":                                            0,
	}
	for range 2 { // the second collection reuses the nodes' attribute sets
		if d := diff(s.points(t), want); d != "" {
			t.Errorf("gauges of three nodes:\n%s", d)
		}
	}

	stats = tiercache.Stats{} // WithoutBreaker: no nodes
	if d := diff(s.points(t), map[string]float64{
		"tiercache.breaker.state{}": 0, "tiercache.l1.entries{}": 0, "tiercache.l1.weight{}": 0,
	}); d != "" {
		t.Errorf("gauges without breakers:\n%s", d)
	}
}

package tiercacheotel

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/tiercache/tiercache"
)

func TestRedisOpIndex(t *testing.T) {
	for i, op := range redisOps {
		if got := redisOpIndex(op); got != i {
			t.Errorf("redisOpIndex(%q) = %d, want %d", op, got, i)
		}
	}
	if got := redisOpIndex("scan"); got != -1 {
		t.Errorf("redisOpIndex of an unknown op = %d, want -1", got)
	}
}

// TestObserverAllocs: recording into the SDK allocates nothing once each
// attribute set has been seen.
func TestObserverAllocs(t *testing.T) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	o, err := New("a", WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	errX := errors.New("x")
	round := func() {
		o.Lookup(tiercache.TierL1, true, time.Microsecond)
		o.Lookup(tiercache.TierL2, false, time.Millisecond)
		o.Load(time.Millisecond, nil)
		o.Load(time.Millisecond, errX)
		o.Redis("get", time.Millisecond, nil)
		o.Redis("fill", time.Millisecond, errX)
		o.Event(tiercache.EventCoalesced)
		o.BreakerChanged(tiercache.BreakerClosed, tiercache.BreakerOpen)
		o.InvalidationDelay(300 * time.Microsecond)
	}
	round() // the SDK makes each series' aggregator on first use
	if allocs := testing.AllocsPerRun(100, round); allocs != 0 {
		t.Errorf("the observer allocates %v times per round, want 0", allocs)
	}
}

// TestInvalidationDelayBuckets: InvalidationDelay records seconds into
// tiercache's buckets, the last unbounded.
func TestInvalidationDelayBuckets(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	o, err := New("a", WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range []time.Duration{10 * time.Microsecond, 700 * time.Millisecond, 100 * time.Second} {
		o.InvalidationDelay(d)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name != "tiercache.invalidation.delay" {
			continue
		}
		p := m.Data.(metricdata.Histogram[float64]).DataPoints[0]
		if len(p.Bounds) != tiercache.DelayBuckets-1 || p.Bounds[0] != 16e-6 || p.Bounds[16] != 1.048576 {
			t.Errorf("bounds %v, want tiercache's", p.Bounds)
		}
		var nonZero []int
		for i, n := range p.BucketCounts {
			if n > 0 {
				nonZero = append(nonZero, i)
			}
		}
		// 10µs below 16µs; 700ms in (524ms, 1.05s]; 100s above the last bound.
		if want := []int{0, 16, tiercache.DelayBuckets - 1}; !slices.Equal(nonZero, want) {
			t.Errorf("buckets with a delay %v, want %v", nonZero, want)
		}
		if p.Count != 3 || p.Sum != 100.70001 {
			t.Errorf("count %d, sum %v; want 3, 100.70001", p.Count, p.Sum)
		}
		return
	}
	t.Fatal("no tiercache.invalidation.delay")
}

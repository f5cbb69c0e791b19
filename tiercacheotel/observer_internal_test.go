package tiercacheotel

import (
	"context"
	"errors"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

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
	}
	round() // the SDK makes each series' aggregator on first use
	if allocs := testing.AllocsPerRun(100, round); allocs != 0 {
		t.Errorf("the observer allocates %v times per round, want 0", allocs)
	}
}

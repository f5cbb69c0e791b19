package tiercacheprom

import (
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

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

// TestObserverAllocs: reporting allocates nothing, for the operations
// known in advance and for one made on first use alike.
func TestObserverAllocs(t *testing.T) {
	c, err := New()
	if err != nil {
		t.Fatal(err)
	}
	o := c.Observer("a")
	errX := errors.New("x")
	o.Redis("scan", time.Millisecond, nil) // made here, on first use
	allocs := testing.AllocsPerRun(100, func() {
		o.Lookup(tiercache.TierL1, true, time.Microsecond)
		o.Lookup(tiercache.TierL2, false, time.Millisecond)
		o.Load(time.Millisecond, nil)
		o.Load(time.Millisecond, errX)
		o.Redis("get", time.Millisecond, nil)
		o.Redis("fill", time.Millisecond, errX)
		o.Redis("scan", time.Millisecond, errX)
		o.Event(tiercache.EventCoalesced)
		o.BreakerChanged(tiercache.BreakerClosed, tiercache.BreakerOpen)
	})
	if allocs != 0 {
		t.Errorf("the observer allocates %v times per round, want 0", allocs)
	}
}

// TestObserverUnknown: tiers, events, states and operations the package
// has no slot for are counted under their String, not dropped.
func TestObserverUnknown(t *testing.T) {
	c, err := New()
	if err != nil {
		t.Fatal(err)
	}
	o := c.Observer("a")
	o.Lookup(tiercache.TierLoader, true, time.Millisecond)
	o.Event(tiercache.Event(200))
	o.BreakerChanged(tiercache.BreakerOpen, tiercache.BreakerState(9))
	for range 2 {
		o.Redis("scan", time.Millisecond, errors.New("x"))
	}
	for _, tt := range []struct {
		name string
		got  float64
		want float64
	}{
		{"requests loader hit", testutil.ToFloat64(c.requests.WithLabelValues("a", "loader", "hit")), 1},
		{"events unknown", testutil.ToFloat64(c.events.WithLabelValues("a", "unknown")), 1},
		{"transitions unknown", testutil.ToFloat64(c.transitions.WithLabelValues("a", "unknown")), 1},
		{"redis errors scan", testutil.ToFloat64(c.redisErrors.WithLabelValues("a", "scan")), 2},
	} {
		if tt.got != tt.want {
			t.Errorf("%s = %v, want %v", tt.name, tt.got, tt.want)
		}
	}
}

package tiercacheotel_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/tiercache/tiercache/tiercacheotel"
)

// followerObserver mirrors tiercachepg.Observer, which this module cannot
// import (it would pull pgx into every service that exports metrics): keep
// the two identical. tiercachepg's TestObserverMirrors reads this
// declaration and fails when it no longer matches.
type followerObserver interface {
	Applied(changes int, delay time.Duration)
	Failed(err error)
	Unmapped(table string)
	SlotLag(bytes int64, exceeded bool)
}

var _ followerObserver = (*tiercacheotel.FollowerObserver)(nil)

func newFollower(t *testing.T, s *sdk, name string) *tiercacheotel.FollowerObserver {
	t.Helper()
	o, err := tiercacheotel.NewFollower(name, tiercacheotel.WithMeterProvider(s.mp))
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// TestFollower: what the follower reports through its observer, as the
// SDK collects it.
func TestFollower(t *testing.T) {
	s := newSDK(t)
	o := newFollower(t, s, "orders")
	if got := s.points(t); len(got) != 0 {
		t.Errorf("points before any report: %v", got)
	}

	o.Applied(3, 300*time.Microsecond)
	o.Applied(1, 700*time.Millisecond) // a late one
	o.Applied(0, 20*time.Second)       // past the last bound
	o.Failed(errors.New("redis down"))
	o.Failed(errors.New("redis down"))
	o.Unmapped("public.orders")
	o.Unmapped("public.orders")
	o.Unmapped("")
	o.SlotLag(4096, false)
	if d := diff(s.points(t), map[string]float64{
		"tiercache.follower.invalidation.delay.count{tiercache.follower=orders}":                        3,
		"tiercache.follower.transactions{tiercache.follower=orders}":                                    3,
		"tiercache.follower.changes{tiercache.follower=orders}":                                         4,
		"tiercache.follower.invalidate.failures{tiercache.follower=orders}":                             2,
		"tiercache.follower.unmapped{tiercache.follower=orders,tiercache.follower.table=public.orders}": 2,
		"tiercache.follower.unmapped{tiercache.follower=orders,tiercache.follower.table=}":              1,
		"tiercache.follower.slot.lag{tiercache.follower=orders}":                                        4096,
		"tiercache.follower.lag.exceeded{tiercache.follower=orders}":                                    0,
	}); d != "" {
		t.Errorf("after the follower's reports:\n%s", d)
	}

	// 300µs is in (250µs, 500µs], 700ms in (500ms, 1s], 20s above 10s.
	p, ok := s.histogram(t, "tiercache.follower.invalidation.delay")
	if !ok {
		t.Fatal("no tiercache.follower.invalidation.delay")
	}
	if len(p.Bounds) != 16 || p.Bounds[0] != 0.0001 || p.Bounds[15] != 10 {
		t.Errorf("bounds %v, want 16 from 0.1ms to 10s", p.Bounds)
	}
	var nonZero []float64
	for i, n := range p.BucketCounts {
		if n > 0 {
			bound := 1e9 // the unbounded bucket
			if i < len(p.Bounds) {
				bound = p.Bounds[i]
			}
			nonZero = append(nonZero, bound)
		}
	}
	if want := []float64{0.0005, 1, 1e9}; !slices.Equal(nonZero, want) {
		t.Errorf("buckets with a delay, by bound: %v, want %v", nonZero, want)
	}
	if p.Sum < 20.7 || p.Sum > 20.7004 {
		t.Errorf("sum %v, want 20.7003", p.Sum)
	}

	// The lag crosses MaxLag and comes back.
	for _, tt := range []struct {
		bytes    int64
		exceeded bool
	}{{1 << 30, true}, {512, false}} {
		o.SlotLag(tt.bytes, tt.exceeded)
		got := s.points(t)
		g, e := got["tiercache.follower.slot.lag{tiercache.follower=orders}"], got["tiercache.follower.lag.exceeded{tiercache.follower=orders}"]
		if g != float64(tt.bytes) || e != map[bool]float64{false: 0, true: 1}[tt.exceeded] {
			t.Errorf("SlotLag(%d, %v): gauges %v and %v", tt.bytes, tt.exceeded, g, e)
		}
	}

	// Another follower has points of its own.
	newFollower(t, s, "users").Applied(2, time.Millisecond)
	got := s.points(t)
	if got["tiercache.follower.changes{tiercache.follower=users}"] != 2 || got["tiercache.follower.changes{tiercache.follower=orders}"] != 4 {
		t.Errorf("changes of two followers: %v", got)
	}
}

// TestFollowerAllocs: a transaction's report allocates nothing once each
// series has been seen.
func TestFollowerAllocs(t *testing.T) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	o, err := tiercacheotel.NewFollower("f", tiercacheotel.WithMeterProvider(mp))
	if err != nil {
		t.Fatal(err)
	}
	errX := errors.New("x")
	round := func() {
		o.Applied(3, time.Millisecond)
		o.Failed(errX)
		o.SlotLag(4096, true)
	}
	round() // the SDK makes each series' aggregator on first use
	if allocs := testing.AllocsPerRun(100, round); allocs != 0 {
		t.Errorf("the follower observer allocates %v times per round, want 0", allocs)
	}
}

func TestNewFollowerInvalidOption(t *testing.T) {
	if o, err := tiercacheotel.NewFollower("f", tiercacheotel.WithMeterProvider(nil)); !errors.Is(err, tiercacheotel.ErrInvalidOption) || o != nil {
		t.Errorf("NewFollower with a nil provider = %v, %v; want nil, ErrInvalidOption", o, err)
	}
}

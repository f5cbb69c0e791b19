package tiercacheprom_test

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/keys"
	"github.com/tiercache/tiercache/internal/msg"
	"github.com/tiercache/tiercache/internal/redistest"
)

// waitUntil is the harness's WaitUntil.
func waitUntil(t *testing.T, what string, cond func() bool) { redistest.WaitUntil(t, what, cond) }

// histogramOf returns the sample of histogram family name with the label
// cache=cache.
func histogramOf(t *testing.T, reg prometheus.Gatherer, name, cache string) *dto.Histogram {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		if mf.GetType() != dto.MetricType_HISTOGRAM {
			t.Fatalf("%s is a %v, want a histogram", name, mf.GetType())
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "cache" && l.GetValue() == cache {
					return m.GetHistogram()
				}
			}
		}
	}
	t.Fatalf("no %s{cache=%q}", name, cache)
	return nil
}

// checkDelayHistogram checks that got is h: tiercache's bucket bounds in
// seconds (the last bucket is +Inf, implied), the cumulative counts, the
// count and the sum.
func checkDelayHistogram(t *testing.T, cache string, got *dto.Histogram, h tiercache.DelayHistogram) {
	t.Helper()
	if got.GetSampleCount() != h.Count {
		t.Errorf("%s: sample count %d, Stats says %d", cache, got.GetSampleCount(), h.Count)
	}
	if got.GetSampleSum() != h.Sum.Seconds() {
		t.Errorf("%s: sample sum %v, Stats says %v", cache, got.GetSampleSum(), h.Sum.Seconds())
	}
	buckets := got.GetBucket()
	if len(buckets) != tiercache.DelayBuckets-1 {
		t.Fatalf("%s: %d buckets, want %d (tiercache's but the unbounded last)", cache, len(buckets), tiercache.DelayBuckets-1)
	}
	var n uint64
	for i, b := range buckets {
		n += h.Buckets[i]
		if want := tiercache.DelayBucketBound(i).Seconds(); b.GetUpperBound() != want {
			t.Errorf("%s: bucket %d bound %v, want %v", cache, i, b.GetUpperBound(), want)
		}
		if b.GetCumulativeCount() != n {
			t.Errorf("%s: bucket %d (le %v) counts %d, Stats says %d", cache, i, b.GetUpperBound(), b.GetCumulativeCount(), n)
		}
	}
}

// below returns the cumulative count of the largest bucket bound below d.
func below(h *dto.Histogram, d time.Duration) uint64 {
	var n uint64
	for _, b := range h.GetBucket() {
		if b.GetUpperBound() >= d.Seconds() {
			break
		}
		n = b.GetCumulativeCount()
	}
	return n
}

// TestInvalidationDelay: two instances of one namespace, with L1. The
// subscription gauge says each is up; a write on a reaches b, and a message
// that says it was sent 700ms ago reaches both: each cache's invalidation
// delays are exported as a histogram equal to its Stats, and the late
// message is in a bucket above 700ms.
func TestInvalidationDelay(t *testing.T) {
	col, reg := newCollector(t)
	srv := redistest.SharedServer(t)
	prefix := strings.TrimSuffix(redistest.UniquePrefix(t), ":")
	instance := func(name string) *tiercache.Cache[string] {
		rdb := srv.Client(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
		c, err := tiercache.New[string](rdb, tiercache.WithPrefix(prefix), tiercache.WithL1(100),
			// Timeouts that a loaded machine under -race does not reach.
			tiercache.WithReadTimeout(5*time.Second), tiercache.WithWriteTimeout(5*time.Second),
			tiercache.WithObserver(col.Observer(name)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		col.Track(name, c.Stats)
		return c
	}
	a, b := instance("a"), instance("b")
	waitUntil(t, "both subscriptions up", func() bool { return a.Stats().Subscribed && b.Stats().Subscribed })
	if d := diff(only(scrape(t, reg), "tiercache_subscribed", "tiercache_invalidation_delay_seconds_count"), map[string]float64{
		`tiercache_subscribed{cache="a"}`:                       1,
		`tiercache_subscribed{cache="b"}`:                       1,
		`tiercache_invalidation_delay_seconds_count{cache="a"}`: 0,
		`tiercache_invalidation_delay_seconds_count{cache="b"}`: 0,
	}); d != "" {
		t.Errorf("before any write:\n%s", d)
	}

	ctx := t.Context()
	if err := a.Set(ctx, "k", "v"); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "a's message applied at b", func() bool { return b.Stats().InvalidationDelay.Count == 1 })
	late := msg.EncodeAt([8]byte{9, 9, 9}, time.Now().UnixMicro()-700_000, []string{"k"}, nil, false)[0]
	if err := srv.Client(t).Publish(ctx, keys.New(prefix, 1).Channel(), late).Err(); err != nil {
		t.Fatal(err)
	}
	// a skips its own message, not the foreign one.
	waitUntil(t, "the late message applied at a and b", func() bool {
		return a.Stats().InvalidationDelay.Count == 1 && b.Stats().InvalidationDelay.Count == 2
	})

	for _, tt := range []struct {
		cache string
		c     *tiercache.Cache[string]
		n     uint64
	}{{"a", a, 1}, {"b", b, 2}} {
		h := tt.c.Stats().InvalidationDelay
		got := histogramOf(t, reg, "tiercache_invalidation_delay_seconds", tt.cache)
		checkDelayHistogram(t, tt.cache, got, h)
		// The late message took at least 700ms: it is above every bucket
		// below that, and in the sum.
		if n := below(got, 700*time.Millisecond); n != tt.n-1 {
			t.Errorf("%s: %d delays in the buckets below 700ms, want %d", tt.cache, n, tt.n-1)
		}
		if got.GetSampleSum() < 0.7 {
			t.Errorf("%s: sum of the delays %vs, want at least the late message's 0.7s", tt.cache, got.GetSampleSum())
		}
	}
	if d := diff(only(scrape(t, reg), "tiercache_subscribed"), map[string]float64{
		`tiercache_subscribed{cache="a"}`: 1,
		`tiercache_subscribed{cache="b"}`: 1,
	}); d != "" {
		t.Errorf("after the messages:\n%s", d)
	}
}

// TestInvalidationDelayBuckets: the histogram of a tracked Stats function,
// with a delay in the first bucket, one in the middle and one above every
// bound (the +Inf bucket).
func TestInvalidationDelayBuckets(t *testing.T) {
	col, reg := newCollector(t)
	var h tiercache.DelayHistogram
	h.Buckets[0], h.Buckets[10], h.Buckets[tiercache.DelayBuckets-1] = 1, 2, 1
	h.Count, h.Sum, h.Max = 4, 90*time.Second, 80*time.Second
	col.Track("x", func() tiercache.Stats { return tiercache.Stats{InvalidationDelay: h} })
	got := histogramOf(t, reg, "tiercache_invalidation_delay_seconds", "x")
	checkDelayHistogram(t, "x", got, h)
	if n := got.GetBucket()[tiercache.DelayBuckets-2].GetCumulativeCount(); n != 3 {
		t.Errorf("the last bounded bucket counts %d, want 3 (the 4th delay is in +Inf)", n)
	}
}

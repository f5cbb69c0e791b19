package tiercacheprom_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/tiercache/tiercache/tiercacheprom"
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

var _ followerObserver = (*tiercacheprom.FollowerObserver)(nil)

// follower are the follower's metric families; the histogram by its count.
var follower = []string{
	"tiercache_follower_invalidation_delay_seconds_count", "tiercache_follower_transactions_total",
	"tiercache_follower_changes_total", "tiercache_follower_invalidate_failures_total",
	"tiercache_follower_unmapped_total", "tiercache_follower_slot_lag_bytes", "tiercache_follower_lag_exceeded",
}

// delayBuckets returns the cumulative counts of the follower delay
// histogram of follower, by upper bound.
func delayBuckets(t *testing.T, g prometheus.Gatherer, follower string) map[float64]uint64 {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "tiercache_follower_invalidation_delay_seconds" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !slices.ContainsFunc(m.GetLabel(), func(l *dto.LabelPair) bool {
				return l.GetName() == "follower" && l.GetValue() == follower
			}) {
				continue
			}
			out := map[float64]uint64{}
			for _, b := range m.GetHistogram().GetBucket() {
				out[b.GetUpperBound()] = b.GetCumulativeCount()
			}
			return out
		}
	}
	t.Fatalf("no tiercache_follower_invalidation_delay_seconds of follower %q", follower)
	return nil
}

// TestFollower: what the follower reports through its observer, as
// Prometheus gathers it.
func TestFollower(t *testing.T) {
	col, reg := newCollector(t)
	o := col.Follower("orders")
	if col.Follower("orders") != o {
		t.Error("two observers for one follower name")
	}
	// The counters and the histogram exist from the start; the lag, which
	// the follower has not read yet, does not.
	if d := diff(only(scrape(t, reg), follower...), map[string]float64{
		`tiercache_follower_invalidation_delay_seconds_count{follower="orders"}`: 0,
		`tiercache_follower_transactions_total{follower="orders"}`:               0,
		`tiercache_follower_changes_total{follower="orders"}`:                    0,
		`tiercache_follower_invalidate_failures_total{follower="orders"}`:        0,
	}); d != "" {
		t.Errorf("a new follower's metrics:\n%s", d)
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
	if d := diff(only(scrape(t, reg), follower...), map[string]float64{
		`tiercache_follower_invalidation_delay_seconds_count{follower="orders"}`:     3,
		`tiercache_follower_transactions_total{follower="orders"}`:                   3,
		`tiercache_follower_changes_total{follower="orders"}`:                        4,
		`tiercache_follower_invalidate_failures_total{follower="orders"}`:            2,
		`tiercache_follower_unmapped_total{follower="orders",table="public.orders"}`: 2,
		`tiercache_follower_unmapped_total{follower="orders",table=""}`:              1,
		`tiercache_follower_slot_lag_bytes{follower="orders"}`:                       4096,
		`tiercache_follower_lag_exceeded{follower="orders"}`:                         0,
	}); d != "" {
		t.Errorf("after the follower's reports:\n%s", d)
	}

	// 300µs is in (250µs, 500µs], 700ms in (500ms, 1s], 20s above 10s.
	b := delayBuckets(t, reg, "orders")
	for bound, want := range map[float64]uint64{
		0.0001: 0, 0.00025: 0, 0.0005: 1, 0.25: 1, 0.5: 1, 1: 2, 10: 2,
	} {
		if b[bound] != want {
			t.Errorf("bucket le=%v holds %d, want %d (buckets %v)", bound, b[bound], want, b)
		}
	}
	if len(b) != 16 {
		t.Errorf("%d buckets %v, want 16 from 0.1ms to 10s", len(b), b)
	}

	// The lag crosses MaxLag and comes back.
	for _, tt := range []struct {
		bytes    int64
		exceeded bool
	}{{1 << 30, true}, {512, false}} {
		o.SlotLag(tt.bytes, tt.exceeded)
		got := scrape(t, reg)
		if g, e := got[`tiercache_follower_slot_lag_bytes{follower="orders"}`], got[`tiercache_follower_lag_exceeded{follower="orders"}`]; g != float64(tt.bytes) || e != map[bool]float64{false: 0, true: 1}[tt.exceeded] {
			t.Errorf("SlotLag(%d, %v): gauges %v and %v", tt.bytes, tt.exceeded, g, e)
		}
	}

	// Another follower has series of its own.
	col.Follower("users").Applied(2, time.Millisecond)
	got := scrape(t, reg)
	if got[`tiercache_follower_changes_total{follower="users"}`] != 2 || got[`tiercache_follower_changes_total{follower="orders"}`] != 4 {
		t.Errorf("changes of two followers: %v", only(got, "tiercache_follower_changes_total"))
	}
}

// TestFollowerExposition checks the text that Prometheus scrapes, HELP and
// TYPE included, with constant labels, and that names Prometheus would
// refuse as label values are mended instead of panicking.
func TestFollowerExposition(t *testing.T) {
	col, reg := newCollector(t, tiercacheprom.WithConstLabels(prometheus.Labels{"service": "shop"}))
	o := col.Follower("orders")
	o.Applied(2, time.Millisecond)
	o.SlotLag(1<<20, true)
	col.Follower("bad\xff").Unmapped("public.t\xfe")

	const want = `
# HELP tiercache_follower_changes_total Row changes of the followed tables in those transactions.
# TYPE tiercache_follower_changes_total counter
tiercache_follower_changes_total{follower="bad` + "\uFFFD" + `",service="shop"} 0
tiercache_follower_changes_total{follower="orders",service="shop"} 2
# HELP tiercache_follower_lag_exceeded Whether the slot's lag is above the follower's MaxLag: 1 above, 0 not (or no MaxLag).
# TYPE tiercache_follower_lag_exceeded gauge
tiercache_follower_lag_exceeded{follower="orders",service="shop"} 1
# HELP tiercache_follower_slot_lag_bytes How far the replication slot's confirmed position is behind the server's WAL position, as last read.
# TYPE tiercache_follower_slot_lag_bytes gauge
tiercache_follower_slot_lag_bytes{follower="orders",service="shop"} 1.048576e+06
# HELP tiercache_follower_unmapped_total Changes that could not be mapped to an invalidation and went to the dead-letter policy, by table (schema.name).
# TYPE tiercache_follower_unmapped_total counter
tiercache_follower_unmapped_total{follower="bad` + "\uFFFD" + `",service="shop",table="public.t` + "\uFFFD" + `"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"tiercache_follower_changes_total", "tiercache_follower_lag_exceeded",
		"tiercache_follower_slot_lag_bytes", "tiercache_follower_unmapped_total"); err != nil {
		t.Error(err)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v, %v", problems, err)
	}
}

// TestFollowerAllocs: a transaction's report allocates nothing.
func TestFollowerAllocs(t *testing.T) {
	col, _ := newCollector(t)
	o := col.Follower("f")
	errX := errors.New("x")
	if allocs := testing.AllocsPerRun(100, func() {
		o.Applied(3, time.Millisecond)
		o.Failed(errX)
	}); allocs != 0 {
		t.Errorf("Applied and Failed allocate %v times per round, want 0", allocs)
	}
}

package tiercacheprom

import (
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// followerBuckets are the upper bounds, in seconds, of the follower's
// commit-to-invalidation delay histogram: 0.1ms to 10s in steps of 1, 2.5
// and 5. A follower that keeps up invalidates a commit in a few tenths of a
// millisecond; one catching up after an outage, in seconds.
var followerBuckets = []float64{
	0.0001, 0.00025, 0.0005,
	0.001, 0.0025, 0.005,
	0.01, 0.025, 0.05,
	0.1, 0.25, 0.5,
	1, 2.5, 5,
	10,
}

// followerMetrics are the metrics of the commit-log followers, by the
// label follower.
type followerMetrics struct {
	delay    *prometheus.HistogramVec // follower
	txns     *prometheus.CounterVec   // follower
	changes  *prometheus.CounterVec   // follower
	failures *prometheus.CounterVec   // follower
	unmapped *prometheus.CounterVec   // follower, table
	lag      *prometheus.GaugeVec     // follower
	exceeded *prometheus.GaugeVec     // follower
}

func newFollowerMetrics(cfg *config) followerMetrics {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: namespace, Subsystem: "follower", Name: name, Help: help, ConstLabels: cfg.constLabels}
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts(opts(name, help)), append([]string{"follower"}, labels...))
	}
	gauge := func(name, help string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts(opts(name, help)), []string{"follower"})
	}
	return followerMetrics{
		delay: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Subsystem: "follower", Name: "invalidation_delay_seconds",
			Help:        "Delay of each committed transaction's invalidation, from the commit (the database's clock) to the return of the Invalidate call that covered it.",
			ConstLabels: cfg.constLabels, Buckets: followerBuckets,
		}, []string{"follower"}),
		txns: counter("transactions_total",
			"Committed transactions whose invalidation returned nil (a transaction replayed after a restart counts again)."),
		changes: counter("changes_total",
			"Row changes of the followed tables in those transactions."),
		failures: counter("invalidate_failures_total",
			"Invalidate calls that returned an error; each is retried."),
		unmapped: counter("unmapped_total",
			"Changes that could not be mapped to an invalidation and went to the dead-letter policy, by table (schema.name).", "table"),
		lag: gauge("slot_lag_bytes",
			"How far the replication slot's confirmed position is behind the server's WAL position, as last read."),
		exceeded: gauge("lag_exceeded",
			"Whether the slot's lag is above the follower's MaxLag: 1 above, 0 not (or no MaxLag)."),
	}
}

func (m *followerMetrics) describe(ch chan<- *prometheus.Desc) {
	m.delay.Describe(ch)
	m.txns.Describe(ch)
	m.changes.Describe(ch)
	m.failures.Describe(ch)
	m.unmapped.Describe(ch)
	m.lag.Describe(ch)
	m.exceeded.Describe(ch)
}

func (m *followerMetrics) collect(ch chan<- prometheus.Metric) {
	m.delay.Collect(ch)
	m.txns.Collect(ch)
	m.changes.Collect(ch)
	m.failures.Collect(ch)
	m.unmapped.Collect(ch)
	m.lag.Collect(ch)
	m.exceeded.Collect(ch)
}

// FollowerObserver reports the figures of a tiercachepg follower to its
// [Collector]: set it as the follower's Options.Observer. Its method set is
// tiercachepg.Observer's, which it implements without this module
// importing tiercachepg (and pgx with it). Get it from
// [Collector.Follower]; it is safe for concurrent use, and its methods
// are quick and do not allocate (but for the first unmapped change of a
// table), as the follower asks of an observer.
type FollowerObserver struct {
	m    *followerMetrics
	name string

	// The series of the name, resolved in Collector.Follower; those of the
	// slot's lag appear at its first read, so that a follower that has not
	// read it yet exports no lag rather than a lag of zero.
	delay                   prometheus.Observer
	txns, changes, failures prometheus.Counter
}

// Follower returns the observer of the tiercachepg follower named
// follower, for its Options.Observer:
//
//	f, err := tiercachepg.New(dsn, tiercachepg.Options{
//		...
//		Observer: col.Follower("orders"),
//	})
//
// Its metrics (see the package doc) carry the label follower=<follower>
// and the constant labels of [WithConstLabels]. Every call with one name
// returns the same observer. A name that is not valid UTF-8 has its bad
// bytes replaced by U+FFFD, since Prometheus refuses such a label value.
//
// The counters and the delay histogram exist, at zero, from this call; the
// gauges of the slot's lag from the follower's first read of it.
func (c *Collector) Follower(follower string) *FollowerObserver {
	follower = strings.ToValidUTF8(follower, "\uFFFD")
	c.mu.Lock()
	defer c.mu.Unlock()
	o, ok := c.followers[follower]
	if !ok {
		m := &c.follower
		o = &FollowerObserver{
			m: m, name: follower,
			delay:    m.delay.WithLabelValues(follower),
			txns:     m.txns.WithLabelValues(follower),
			changes:  m.changes.WithLabelValues(follower),
			failures: m.failures.WithLabelValues(follower),
		}
		c.followers[follower] = o
	}
	return o
}

// Applied counts a committed transaction whose invalidation returned nil
// and its changes, and observes its commit-to-invalidation delay.
func (o *FollowerObserver) Applied(changes int, delay time.Duration) {
	o.txns.Inc()
	o.changes.Add(float64(max(changes, 0)))
	o.delay.Observe(delay.Seconds())
}

// Failed counts a failed Invalidate call.
func (o *FollowerObserver) Failed(error) { o.failures.Inc() }

// Unmapped counts a change of table that went to the dead-letter policy.
func (o *FollowerObserver) Unmapped(table string) {
	o.m.unmapped.WithLabelValues(o.name, strings.ToValidUTF8(table, "\uFFFD")).Inc()
}

// SlotLag sets the gauges of the slot's lag: bytes, and 1 or 0 for
// whether it is above the follower's MaxLag.
func (o *FollowerObserver) SlotLag(bytes int64, exceeded bool) {
	o.m.lag.WithLabelValues(o.name).Set(float64(bytes))
	o.m.exceeded.WithLabelValues(o.name).Set(b2f(exceeded))
}

package tiercacheprom

import (
	"fmt"
	"maps"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tiercache/tiercache"
)

const namespace = "tiercache"

// Collector is a [prometheus.Collector] of the metrics of any number of
// caches and of tiercachepg followers (see the package doc for the list),
// and the source of their observers. Create it with [New], register it
// once, and give each cache [Collector.Observer] and, for the gauges,
// [Collector.Track], and each follower [Collector.Follower]. It is safe
// for concurrent use.
type Collector struct {
	requests    *prometheus.CounterVec   // cache, tier, result
	lookupDur   *prometheus.HistogramVec // cache, tier
	loads       *prometheus.CounterVec   // cache, result
	loadDur     *prometheus.HistogramVec // cache
	redisDur    *prometheus.HistogramVec // cache, op
	redisErrors *prometheus.CounterVec   // cache, op
	events      *prometheus.CounterVec   // cache, event
	transitions *prometheus.CounterVec   // cache, to

	breakerState *prometheus.Desc // cache
	nodeState    *prometheus.Desc // cache, node
	l1Entries    *prometheus.Desc // cache
	l1Weight     *prometheus.Desc // cache
	subscribed   *prometheus.Desc // cache
	invDelay     *prometheus.Desc // cache; a histogram

	follower followerMetrics // of the commit-log followers

	mu        sync.Mutex
	observers map[string]*observer              // by cache name; guarded by mu
	tracked   map[string]func() tiercache.Stats // by cache name; guarded by mu
	followers map[string]*FollowerObserver      // by follower name; guarded by mu
}

// New returns a Collector; register it with a [prometheus.Registerer].
// An option that makes no sense is an error wrapping [ErrInvalidOption].
func New(opts ...Option) (*Collector, error) {
	cfg := config{buckets: defaultBuckets()}
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: name, Help: help, ConstLabels: cfg.constLabels,
		}, labels)
	}
	histogram := func(name, help string, labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: name, Help: help, ConstLabels: cfg.constLabels,
			Buckets: cfg.buckets,
		}, labels)
	}
	desc := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName(namespace, "", name), help, labels, cfg.constLabels)
	}
	gauge := func(name, help string) *prometheus.Desc { return desc(name, help, "cache") }
	c := &Collector{
		requests: counter("requests_total",
			"Lookups of a cache tier (l1, l2), by result (hit, miss).", "cache", "tier", "result"),
		lookupDur: histogram("lookup_duration_seconds",
			"How long a lookup of a cache tier took.", "cache", "tier"),
		loads: counter("loads_total",
			"Loader calls, by result (ok, error); a loader's ErrNotFound is ok.", "cache", "result"),
		loadDur: histogram("load_duration_seconds",
			"How long a loader call took.", "cache"),
		redisDur: histogram("redis_duration_seconds",
			"How long a Redis round trip took, by operation.", "cache", "op"),
		redisErrors: counter("redis_errors_total",
			"Redis round trips that failed, by operation.", "cache", "op"),
		events: counter("events_total",
			"Notable things the cache did (coalesced reads, lease waits, stale values served, ...).", "cache", "event"),
		transitions: counter("breaker_transitions_total",
			"Changes of the Redis circuit breaker, by the new state (closed, half-open, open).", "cache", "to"),
		breakerState: gauge("breaker_state",
			"State of the Redis circuit breaker: 0 closed, 1 half-open, 2 open."),
		nodeState: desc("breaker_node_state",
			"State of the circuit breaker of each Redis node, by address: 0 closed, 1 half-open, 2 open.", "cache", "node"),
		l1Entries: gauge("l1_entries",
			"Entries in the in-process tier (L1)."),
		l1Weight: gauge("l1_weight_bytes",
			"Encoded size of the values in L1, when L1 is bounded by bytes."),
		subscribed: gauge("subscribed",
			"Whether the invalidation subscription is up: 1 up, 0 down (or neither L1 nor the lease on, or invalidation off)."),
		invDelay: gauge("invalidation_delay_seconds",
			"Delay of the applied invalidation messages, from the sender's acknowledged write to this instance's L1 drop."),
		follower:  newFollowerMetrics(&cfg),
		observers: make(map[string]*observer),
		tracked:   make(map[string]func() tiercache.Stats),
		followers: make(map[string]*FollowerObserver),
	}
	// Let Prometheus judge the names: a bad constant label (an invalid
	// name, or one that clashes with cache, tier, ...) fails here rather
	// than when the collector is registered or, worse, in a panic of
	// WithLabelValues on the read path.
	if err := prometheus.NewPedanticRegistry().Register(c); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	return c, nil
}

// Describe sends the descriptors of every metric of the collector.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	c.requests.Describe(ch)
	c.lookupDur.Describe(ch)
	c.loads.Describe(ch)
	c.loadDur.Describe(ch)
	c.redisDur.Describe(ch)
	c.redisErrors.Describe(ch)
	c.events.Describe(ch)
	c.transitions.Describe(ch)
	ch <- c.breakerState
	ch <- c.nodeState
	ch <- c.l1Entries
	ch <- c.l1Weight
	ch <- c.subscribed
	ch <- c.invDelay
	c.follower.describe(ch)
}

// Collect sends the current value of every metric: the counters,
// histograms and follower gauges that the observers have pushed, and the
// gauges read now from the Stats of the tracked caches.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	c.requests.Collect(ch)
	c.lookupDur.Collect(ch)
	c.loads.Collect(ch)
	c.loadDur.Collect(ch)
	c.redisDur.Collect(ch)
	c.redisErrors.Collect(ch)
	c.events.Collect(ch)
	c.transitions.Collect(ch)
	c.follower.collect(ch)

	// Read the stats outside the lock, so that a slow Stats never holds up
	// Track or Observer.
	c.mu.Lock()
	tracked := maps.Clone(c.tracked)
	c.mu.Unlock()
	for name, stats := range tracked {
		s := stats()
		gauge(ch, c.breakerState, float64(s.BreakerState), name)
		for node, st := range s.Breakers {
			gauge(ch, c.nodeState, float64(st), name, strings.ToValidUTF8(node, "\uFFFD"))
		}
		gauge(ch, c.l1Entries, float64(s.L1Entries), name)
		gauge(ch, c.l1Weight, float64(s.L1Weight), name)
		gauge(ch, c.subscribed, b2f(s.Subscribed), name)
		ch <- delayHistogram(c.invDelay, &s.InvalidationDelay, name)
	}
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	m, err := prometheus.NewConstMetric(d, prometheus.GaugeValue, v, labels...)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	ch <- m
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// delayBounds are the upper bounds, in seconds, of the buckets of
// tiercache.DelayHistogram but the last, which has none (the +Inf bucket).
var delayBounds = func() []float64 {
	b := make([]float64, tiercache.DelayBuckets-1)
	for i := range b {
		b[i] = tiercache.DelayBucketBound(i).Seconds()
	}
	return b
}()

// delayHistogram is h as a Prometheus histogram, with tiercache's buckets.
// Its count is the sum of the buckets rather than h.Count: the Stats
// snapshot reads them one after the other, and a message applied meanwhile
// could otherwise make the +Inf bucket disagree with the others.
func delayHistogram(d *prometheus.Desc, h *tiercache.DelayHistogram, cache string) prometheus.Metric {
	cumulative := make(map[float64]uint64, len(delayBounds))
	var n uint64
	for i, c := range h.Buckets {
		n += c
		if i < len(delayBounds) {
			cumulative[delayBounds[i]] = n
		}
	}
	m, err := prometheus.NewConstHistogram(d, n, h.Sum.Seconds(), cumulative, cache)
	if err != nil {
		m = prometheus.NewInvalidMetric(d, err)
	}
	return m
}

// Observer returns the observer of the cache named cache, for
// [tiercache.WithObserver]. Its metrics carry the label cache=<cache>.
// Every call with one name returns the same observer, so two caches given
// one name share their counters.
//
// The observer resolves each labelled series once (those of a Redis
// operation on its first use, the others when it is created), so that
// reporting costs no lookup, no label string and no allocation. A name that
// is not valid UTF-8 has its bad bytes replaced by U+FFFD, since Prometheus
// refuses such a label value.
func (c *Collector) Observer(cache string) tiercache.Observer {
	cache = strings.ToValidUTF8(cache, "\uFFFD")
	c.mu.Lock()
	defer c.mu.Unlock()
	o, ok := c.observers[cache]
	if !ok {
		o = newObserver(c, cache)
		c.observers[cache] = o
	}
	return o
}

// Track makes the collector read the gauges of the cache named cache
// (breaker states, L1 entries and weight, the subscription) and its
// invalidation delay histogram from stats at every scrape;
// pass the cache's [tiercache.Cache.Stats] method. Tracking a name again
// replaces its stats function.
//
// NOTE: the collector keeps stats, and the cache it belongs to, until
// [Collector.Untrack]: untrack a cache when you close it.
func (c *Collector) Track(cache string, stats func() tiercache.Stats) {
	if stats == nil {
		c.Untrack(cache)
		return
	}
	cache = strings.ToValidUTF8(cache, "\uFFFD")
	c.mu.Lock()
	defer c.mu.Unlock()
	c.tracked[cache] = stats
}

// Untrack stops reading the gauges of the cache named cache; they are no
// longer exported. Its counters and histograms stay.
func (c *Collector) Untrack(cache string) {
	cache = strings.ToValidUTF8(cache, "\uFFFD")
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.tracked, cache)
}

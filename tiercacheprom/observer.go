package tiercacheprom

import (
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tiercache/tiercache"
)

// numEvents is how many events tiercache reports: the length of
// Stats.Events, which is a constant, so this follows the root package when
// it adds events.
const numEvents = len(tiercache.Stats{}.Events)

// redisOps are the Redis operations the cache reports, in tiercache's
// order; redisOpIndex is their index (tiercache.RedisOpIndex). An operation
// that is not in the list still works, a little slower.
var redisOps = func() (ops [tiercache.NumRedisOps]string) {
	for i := range ops {
		ops[i] = tiercache.RedisOpName(i)
	}
	return ops
}()

func redisOpIndex(op string) int { return tiercache.RedisOpIndex(op) }

// resultLabel is the result label of a lookup.
func resultLabel(hit bool) string {
	if hit {
		return "hit"
	}
	return "miss"
}

type tierMetrics struct {
	hit, miss prometheus.Counter
	duration  prometheus.Observer
}

type redisMetrics struct {
	duration prometheus.Observer
	errors   prometheus.Counter
}

// observer is the tiercache.Observer of one cache name. The child metrics
// it reports to are resolved once, so that its methods read plain fields:
// no lock, no map, no label strings. Those of tiers, events and breaker
// states are made in newObserver, so that every such series exists from
// the start; those of a Redis operation on its first use, since a cache
// that never uses batches or tags would otherwise export a histogram per
// operation that stays empty. Tiers, events, states and operations that
// the root package did not have when this package was written take a slower
// path instead of being lost.
type observer struct {
	c     *Collector
	cache string

	tiers       [tiercache.TierL2 + 1]tierMetrics // by Tier
	loadOK      prometheus.Counter
	loadErr     prometheus.Counter
	loadDur     prometheus.Observer
	redis       [len(redisOps)]atomic.Pointer[redisMetrics]   // by redisOpIndex; nil until first use
	events      [numEvents]prometheus.Counter                 // by Event
	transitions [tiercache.BreakerOpen + 1]prometheus.Counter // by BreakerState

	// otherOps holds the metrics of operations not in redisOps, made on
	// first use. It is copied on write: readers load the pointer and read
	// the map without a lock; writers hold otherMu, copy, add, and store.
	otherOps atomic.Pointer[map[string]*redisMetrics]
	otherMu  sync.Mutex
}

var _ tiercache.Observer = (*observer)(nil)

func newObserver(c *Collector, cache string) *observer {
	o := &observer{c: c, cache: cache}
	for t := range o.tiers {
		tier := tiercache.Tier(t).String()
		o.tiers[t] = tierMetrics{
			hit:      c.requests.WithLabelValues(cache, tier, "hit"),
			miss:     c.requests.WithLabelValues(cache, tier, "miss"),
			duration: c.lookupDur.WithLabelValues(cache, tier),
		}
	}
	o.loadOK = c.loads.WithLabelValues(cache, "ok")
	o.loadErr = c.loads.WithLabelValues(cache, "error")
	o.loadDur = c.loadDur.WithLabelValues(cache)
	for e := range o.events {
		o.events[e] = c.events.WithLabelValues(cache, tiercache.Event(e).String())
	}
	for s := range o.transitions {
		o.transitions[s] = c.transitions.WithLabelValues(cache, tiercache.BreakerState(s).String())
	}
	return o
}

// Lookup counts a lookup of tier and observes its duration.
func (o *observer) Lookup(tier tiercache.Tier, hit bool, d time.Duration) {
	if int(tier) >= len(o.tiers) {
		o.c.requests.WithLabelValues(o.cache, tier.String(), resultLabel(hit)).Inc()
		o.c.lookupDur.WithLabelValues(o.cache, tier.String()).Observe(d.Seconds())
		return
	}
	t := &o.tiers[tier]
	if hit {
		t.hit.Inc()
	} else {
		t.miss.Inc()
	}
	if tier != tiercache.TierL1 { // L1 lookups are not timed (d is 0)
		t.duration.Observe(d.Seconds())
	}
}

// Load counts a loader call and observes its duration.
func (o *observer) Load(d time.Duration, err error) {
	if err != nil {
		o.loadErr.Inc()
	} else {
		o.loadOK.Inc()
	}
	o.loadDur.Observe(d.Seconds())
}

// Redis observes the duration of a round trip and counts it if it failed.
func (o *observer) Redis(op string, d time.Duration, err error) {
	var m *redisMetrics
	if i := redisOpIndex(op); i < 0 {
		m = o.otherOp(op)
	} else if m = o.redis[i].Load(); m == nil {
		// Two goroutines may both get here: the vectors give them the same
		// children, so either Store will do.
		m = o.newRedisMetrics(op)
		o.redis[i].Store(m)
	}
	m.duration.Observe(d.Seconds())
	if err != nil {
		m.errors.Inc()
	}
}

// otherOp returns the metrics of an operation that is not in redisOps,
// making them on first use.
func (o *observer) otherOp(op string) *redisMetrics {
	if p := o.otherOps.Load(); p != nil {
		if m, ok := (*p)[op]; ok {
			return m
		}
	}
	o.otherMu.Lock()
	defer o.otherMu.Unlock()
	// Another goroutine may have added op since the lookup above.
	old := o.otherOps.Load()
	if old != nil {
		if m, ok := (*old)[op]; ok {
			return m
		}
	}
	m := o.newRedisMetrics(op)
	next := map[string]*redisMetrics{}
	if old != nil {
		next = maps.Clone(*old)
	}
	next[op] = m
	o.otherOps.Store(&next)
	return m
}

// newRedisMetrics returns the children of operation op.
func (o *observer) newRedisMetrics(op string) *redisMetrics {
	label := strings.ToValidUTF8(op, "\uFFFD") // or WithLabelValues panics
	return &redisMetrics{
		duration: o.c.redisDur.WithLabelValues(o.cache, label),
		errors:   o.c.redisErrors.WithLabelValues(o.cache, label),
	}
}

// Event counts e.
func (o *observer) Event(e tiercache.Event) {
	if int(e) >= len(o.events) {
		o.c.events.WithLabelValues(o.cache, e.String()).Inc()
		return
	}
	o.events[e].Inc()
}

// BreakerChanged counts a transition of the breaker to to.
func (o *observer) BreakerChanged(_, to tiercache.BreakerState) {
	if int(to) >= len(o.transitions) {
		o.c.transitions.WithLabelValues(o.cache, to.String()).Inc()
		return
	}
	o.transitions[to].Inc()
}

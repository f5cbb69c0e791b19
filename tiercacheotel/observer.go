package tiercacheotel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"

	"github.com/tiercache/tiercache"
)

// scope is the instrumentation scope of the meter and the tracer.
const scope = "github.com/tiercache/tiercache/tiercacheotel"

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

// Attribute keys.
const (
	keyCache   = attribute.Key("tiercache.cache")
	keyTier    = attribute.Key("tiercache.tier")
	keyResult  = attribute.Key("tiercache.result")
	keyEvent   = attribute.Key("tiercache.event")
	keyState   = attribute.Key("tiercache.breaker.state")
	keyRedisOp = attribute.Key("tiercache.redis.op")
	keyNode    = attribute.Key("tiercache.redis.node")
)

// durationBuckets are the advised bucket bounds of the duration
// histograms, in seconds: 1µs to about 4s in steps of 4.
var durationBuckets = []float64{1e-6, 4e-6, 16e-6, 64e-6, 256e-6, 1.024e-3, 4.096e-3, 16.384e-3, 65.536e-3, 0.262144, 1.048576, 4.194304}

// delayBuckets are the advised bucket bounds of the invalidation delay
// histogram, in seconds: those of tiercache.DelayHistogram (16µs to about
// 67s, doubling), so that it agrees with the cache's Stats.
var delayBuckets = func() []float64 {
	b := make([]float64, tiercache.DelayBuckets-1) // the last has no bound
	for i := range b {
		b[i] = tiercache.DelayBucketBound(i).Seconds()
	}
	return b
}()

// Observer reports one cache's metrics and spans to OpenTelemetry. It
// implements [tiercache.Observer] and [tiercache.Tracer]: pass it to
// [tiercache.WithObserver]. Create it with [New]; it is safe for concurrent
// use.
type Observer struct {
	meter  metric.Meter
	tracer trace.Tracer
	cache  attribute.KeyValue

	requests    metric.Int64Counter
	lookupDur   metric.Float64Histogram
	loads       metric.Int64Counter
	loadDur     metric.Float64Histogram
	redisDur    metric.Float64Histogram
	events      metric.Int64Counter
	transitions metric.Int64Counter
	invDelay    metric.Float64Histogram

	breakerState metric.Int64ObservableGauge
	nodeState    metric.Int64ObservableGauge
	l1Entries    metric.Int64ObservableGauge
	l1Weight     metric.Int64ObservableGauge

	// The measurement options of every attribute set the observer can
	// report, made in New and only read afterwards, so that recording
	// builds no set and allocates nothing.
	requestOpts [tiercache.TierL2 + 1][2][]metric.AddOption   // [tier][hit]
	lookupOpts  [tiercache.TierL2 + 1][]metric.RecordOption   // [tier]
	loadOpts    [2][]metric.AddOption                         // [failed]
	cacheRecord []metric.RecordOption                         // the cache alone
	cacheObs    []metric.ObserveOption                        // the cache alone
	redisOpts   [len(redisOps)][2][]metric.RecordOption       // [redisOpIndex][failed]
	eventOpts   [numEvents][]metric.AddOption                 // [Event]
	stateOpts   [tiercache.BreakerOpen + 1][]metric.AddOption // [BreakerState]
	loadSpans   [len(loadOps)]spanSpec                        // [loadOps index]
	redisSpans  [len(redisOps)]spanSpec                       // [redisOpIndex]
}

var (
	_ tiercache.Observer      = (*Observer)(nil)
	_ tiercache.Tracer        = (*Observer)(nil)
	_ tiercache.DelayObserver = (*Observer)(nil)
)

// New returns the observer of the cache named cache, which every
// measurement and span carries as the attribute tiercache.cache. It makes
// the instruments; their errors (and options that make no sense, wrapping
// [ErrInvalidOption]) are returned.
func New(cache string, opts ...Option) (*Observer, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	o := &Observer{
		meter:  cfg.meterProvider.Meter(scope),
		tracer: cfg.tracerProvider.Tracer(scope),
		cache:  keyCache.String(cache),
	}
	if err := o.instruments(); err != nil {
		return nil, fmt.Errorf("tiercacheotel: %w", err)
	}
	o.attributeSets()
	o.spanSpecs()
	return o, nil
}

// instruments makes the instruments.
func (o *Observer) instruments() error {
	m := o.meter
	var err, e error
	counter := func(name, unit, desc string) metric.Int64Counter {
		var c metric.Int64Counter
		c, e = m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		err = errors.Join(err, e)
		return c
	}
	histogram := func(name, desc string, buckets ...float64) metric.Float64Histogram {
		if buckets == nil {
			buckets = durationBuckets
		}
		var h metric.Float64Histogram
		h, e = m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc),
			metric.WithExplicitBucketBoundaries(buckets...))
		err = errors.Join(err, e)
		return h
	}
	gauge := func(name, unit, desc string) metric.Int64ObservableGauge {
		var g metric.Int64ObservableGauge
		g, e = m.Int64ObservableGauge(name, metric.WithUnit(unit), metric.WithDescription(desc))
		err = errors.Join(err, e)
		return g
	}
	o.requests = counter("tiercache.requests", "{request}",
		"Lookups of a cache tier (l1, l2), by result (hit, miss).")
	o.lookupDur = histogram("tiercache.lookup.duration",
		"How long a lookup of a cache tier took.")
	o.loads = counter("tiercache.loads", "{load}",
		"Loader calls, by result (ok, error); a loader's ErrNotFound is ok.")
	o.loadDur = histogram("tiercache.load.duration",
		"How long a loader call took.")
	o.redisDur = histogram("tiercache.redis.duration",
		"How long a Redis round trip took, by operation and result (ok, error).")
	o.events = counter("tiercache.events", "{event}",
		"Notable things the cache did (coalesced reads, lease waits, stale values served, ...).")
	o.transitions = counter("tiercache.breaker.transitions", "{transition}",
		"Changes of the Redis circuit breaker, by the new state (closed, half-open, open).")
	o.invDelay = histogram("tiercache.invalidation.delay",
		"Delay of the applied invalidation messages, from the sender's acknowledged write to this instance's L1 drop.",
		delayBuckets...)
	o.breakerState = gauge("tiercache.breaker.state", "1",
		"State of the Redis circuit breaker: 0 closed, 1 half-open, 2 open.")
	o.nodeState = gauge("tiercache.breaker.node.state", "1",
		"State of the circuit breaker of each Redis node, by address: 0 closed, 1 half-open, 2 open.")
	o.l1Entries = gauge("tiercache.l1.entries", "{entry}",
		"Entries in the in-process tier (L1).")
	o.l1Weight = gauge("tiercache.l1.weight", "By",
		"Encoded size of the values in L1, when L1 is bounded by bytes.")
	return err
}

// attrs is one precomputed attribute set, as the options of each kind of
// measurement.
type attrs struct{ opt metric.MeasurementOption }

func newAttrs(kvs ...attribute.KeyValue) attrs {
	return attrs{metric.WithAttributeSet(attribute.NewSet(kvs...))}
}

func (a attrs) add() []metric.AddOption         { return []metric.AddOption{a.opt} }
func (a attrs) record() []metric.RecordOption   { return []metric.RecordOption{a.opt} }
func (a attrs) observe() []metric.ObserveOption { return []metric.ObserveOption{a.opt} }

// result is the tiercache.result of a call that failed or not.
func result(failed bool) attribute.KeyValue {
	if failed {
		return keyResult.String("error")
	}
	return keyResult.String("ok")
}

// lookupResult is the tiercache.result of a lookup.
func lookupResult(hit bool) attribute.KeyValue {
	if hit {
		return keyResult.String("hit")
	}
	return keyResult.String("miss")
}

// attributeSets makes the attribute set of every measurement the observer
// can report.
func (o *Observer) attributeSets() {
	for t := range o.requestOpts {
		tier := keyTier.String(tiercache.Tier(t).String())
		for h := range o.requestOpts[t] {
			o.requestOpts[t][h] = newAttrs(o.cache, tier, lookupResult(h == 1)).add()
		}
		o.lookupOpts[t] = newAttrs(o.cache, tier).record()
	}
	for f := range o.loadOpts {
		o.loadOpts[f] = newAttrs(o.cache, result(f == 1)).add()
	}
	o.cacheRecord = newAttrs(o.cache).record()
	o.cacheObs = newAttrs(o.cache).observe()
	for i, op := range redisOps {
		for f := range o.redisOpts[i] {
			o.redisOpts[i][f] = newAttrs(o.cache, keyRedisOp.String(op), result(f == 1)).record()
		}
	}
	for e := range o.eventOpts {
		o.eventOpts[e] = newAttrs(o.cache, keyEvent.String(tiercache.Event(e).String())).add()
	}
	for s := range o.stateOpts {
		o.stateOpts[s] = newAttrs(o.cache, keyState.String(tiercache.BreakerState(s).String())).add()
	}
}

// b2i is 1 for true.
func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Lookup counts a lookup of tier and records its duration.
func (o *Observer) Lookup(tier tiercache.Tier, hit bool, d time.Duration) {
	ctx := context.Background()
	if int(tier) >= len(o.requestOpts) {
		t := keyTier.String(tier.String())
		o.requests.Add(ctx, 1, metric.WithAttributes(o.cache, t, lookupResult(hit)))
		o.lookupDur.Record(ctx, d.Seconds(), metric.WithAttributes(o.cache, t))
		return
	}
	o.requests.Add(ctx, 1, o.requestOpts[tier][b2i(hit)]...)
	o.lookupDur.Record(ctx, d.Seconds(), o.lookupOpts[tier]...)
}

// Load counts a loader call and records its duration.
func (o *Observer) Load(d time.Duration, err error) {
	ctx := context.Background()
	o.loads.Add(ctx, 1, o.loadOpts[b2i(err != nil)]...)
	o.loadDur.Record(ctx, d.Seconds(), o.cacheRecord...)
}

// Redis records the duration of a round trip, by operation and result.
func (o *Observer) Redis(op string, d time.Duration, err error) {
	ctx := context.Background()
	i := redisOpIndex(op)
	if i < 0 {
		o.redisDur.Record(ctx, d.Seconds(), metric.WithAttributes(o.cache, keyRedisOp.String(op), result(err != nil)))
		return
	}
	o.redisDur.Record(ctx, d.Seconds(), o.redisOpts[i][b2i(err != nil)]...)
}

// Event counts e.
func (o *Observer) Event(e tiercache.Event) {
	ctx := context.Background()
	if int(e) >= len(o.eventOpts) {
		o.events.Add(ctx, 1, metric.WithAttributes(o.cache, keyEvent.String(e.String())))
		return
	}
	o.events.Add(ctx, 1, o.eventOpts[e]...)
}

// BreakerChanged counts a transition of the breaker to to.
func (o *Observer) BreakerChanged(_, to tiercache.BreakerState) {
	ctx := context.Background()
	if int(to) >= len(o.stateOpts) {
		o.transitions.Add(ctx, 1, metric.WithAttributes(o.cache, keyState.String(to.String())))
		return
	}
	o.transitions.Add(ctx, 1, o.stateOpts[to]...)
}

// InvalidationDelay records the delay of an invalidation message the cache
// applied, in seconds, into tiercache.invalidation.delay. It implements
// [tiercache.DelayObserver]: the cache calls it as it applies the message.
func (o *Observer) InvalidationDelay(d time.Duration) {
	o.invDelay.Record(context.Background(), d.Seconds(), o.cacheRecord...)
}

// Track reports the gauges tiercache.breaker.state,
// tiercache.breaker.node.state (one point per Redis node),
// tiercache.l1.entries and tiercache.l1.weight of the cache, read from
// stats each time the metrics are collected; pass the cache's
// [tiercache.Cache.Stats] method.
//
// NOTE: the meter keeps stats, and the cache it belongs to, until the
// returned registration is unregistered: do so when you close the cache.
func (o *Observer) Track(stats func() tiercache.Stats) (metric.Registration, error) {
	if stats == nil {
		return nil, fmt.Errorf("%w: nil stats function", ErrInvalidOption)
	}
	nodes := &nodeAttrs{cache: o.cache, m: map[string][]metric.ObserveOption{}}
	return o.meter.RegisterCallback(func(_ context.Context, m metric.Observer) error {
		s := stats()
		m.ObserveInt64(o.breakerState, int64(s.BreakerState), o.cacheObs...)
		for node, st := range s.Breakers {
			m.ObserveInt64(o.nodeState, int64(st), nodes.of(node)...)
		}
		m.ObserveInt64(o.l1Entries, int64(s.L1Entries), o.cacheObs...)
		m.ObserveInt64(o.l1Weight, int64(min(s.L1Weight, 1<<63-1)), o.cacheObs...)
		return nil
	}, o.breakerState, o.nodeState, o.l1Entries, o.l1Weight)
}

// nodeAttrs keeps the attribute set of each Redis node a tracked cache has
// reported, so that a collection builds none for a node seen before. The
// nodes are the cache's masters: a bounded set.
type nodeAttrs struct {
	cache attribute.KeyValue
	mu    sync.Mutex // collections may run concurrently (one per reader)
	m     map[string][]metric.ObserveOption
}

func (n *nodeAttrs) of(node string) []metric.ObserveOption {
	n.mu.Lock()
	defer n.mu.Unlock()
	opts, ok := n.m[node]
	if !ok {
		opts = newAttrs(n.cache, keyNode.String(node)).observe()
		n.m[node] = opts
	}
	return opts
}

package tiercache

import (
	"context"
	"encoding/json"
	"math"
	"slices"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/internal/store"
	"github.com/tiercache/tiercache/internal/stripe"
)

// Tier names where a read was answered.
type Tier uint8

const (
	// TierL1 is the in-process tier.
	TierL1 Tier = iota
	// TierL2 is Redis.
	TierL2
	// TierLoader is the user's loader (the database), for an observer's own
	// labels: the cache reports loads through Observer.Load, never Lookup.
	TierLoader
)

func (t Tier) String() string { return nameOf(t, "l1", "l2", "loader") }

// nameOf is names[i], the name of constant i, or "unknown" past them.
func nameOf[I ~uint8](i I, names ...string) string {
	if int(i) < len(names) {
		return names[i]
	}
	return "unknown"
}

// Event is a notable thing the cache did, reported to [Observer.Event] and
// counted in [Stats].
type Event uint8

// Events.
const (
	EventCoalesced            Event = iota // a read shared another caller's load in this process
	EventLeaseWait                         // a read waited for another instance's load instead of loading
	EventFillRefused                       // a loaded value was not cached: the key changed during the load
	EventEarlyRefresh                      // a background refresh started before expiry (XFetch)
	EventStaleServed                       // a stale value was served while it is refreshed
	EventStaleOnError                      // a stale value was served because the loader failed
	EventNegativeHit                       // a cached "not found" answered a read
	EventCorrupt                           // stored bytes could not be decoded and counted as a miss
	EventRedisError                        // a Redis call failed
	EventRedisTimeout                      // a Redis call timed out
	EventBreakerReject                     // a Redis call was skipped because the breaker is open
	EventInvalidationSent                  // an invalidation message was published
	EventInvalidationReceived              // an invalidation message from another instance was applied
	EventL1Flush                           // L1 was flushed (subscription lost or regained)
	EventReadBatched                       // a single-key read shared its Redis round trip with other reads
	EventWriteRefused                      // a versioned write was refused: Redis holds a newer version
	EventNotCached                         // a loaded value was returned but not cached: too large, not encodable or an invalid tag (logged)
	// NumEvents is the number of events: Stats.Events has one counter each.
	NumEvents
)

var eventNames = [NumEvents]string{
	"coalesced", "lease_wait", "fill_refused", "early_refresh", "stale_served",
	"stale_on_error", "negative_hit", "corrupt", "redis_error", "redis_timeout",
	"breaker_reject", "invalidation_sent", "invalidation_received", "l1_flush",
	"read_batched", "write_refused", "not_cached",
}

func (e Event) String() string { return nameOf(e, eventNames[:]...) }

// Observer receives what the cache does, as it does it: the hook for
// metrics and tracing (see the tiercacheprom and tiercacheotel modules).
// Its methods run on the read path, so they must be fast and safe for
// concurrent use. They may read [Cache.Stats] (BreakerChanged, and the
// Events of a breaker's change, are told after the breaker has changed and
// released its lock, in the order the changes happened), but must not
// otherwise call the cache: Redis (like the Tracer's span) runs inside a
// round trip that other calls may be waiting to share, and a read from
// there could wait for that round trip itself.
// A panic in one leaves no round trip, flight or breaker probe held (in a
// load, or a read that others wait for, its waiters get it as a
// [PanicError]). On the cache's own goroutines, where no caller could take
// it, a panic (or runtime.Goexit) does not end the process: in the
// invalidation subscriber it ends the subscription, which comes back with
// L1 flushed meanwhile; in the publisher, writers publish their own
// invalidations from then on; around a lease release, the leases expire
// with their TTL. Embed [NopObserver] to implement only some of them.
type Observer interface {
	// Lookup is called for each read of a tier: hit or miss, and how long
	// the lookup took. L1 lookups are not timed (d is 0): reading the clock
	// would cost more than the lookup. A read that the circuit breaker
	// keeps from Redis is not a lookup (see EventBreakerReject), nor is one
	// that was not sent because its deadline passed while it queued behind
	// other round trips (it fails over to the loader as a Redis error).
	Lookup(tier Tier, hit bool, d time.Duration)
	// Load is called after each call of a loader.
	Load(d time.Duration, err error)
	// Redis is called after each Redis round trip the cache makes, with the
	// operation ("get", "acquire", "fill", "set", "del", "publish", ...;
	// "mget", "acquire_many", "fill_many" for a round trip of several keys,
	// which concurrent single-key reads and misses share: see
	// [WithoutReadCoalescing]), once per node on a cluster.
	Redis(op string, d time.Duration, err error)
	// Event is called for each [Event].
	Event(e Event)
	// BreakerChanged is called when the Redis circuit breaker changes state.
	BreakerChanged(from, to BreakerState)
}

// Tracer is an optional interface of an [Observer]: when the observer
// implements it, the cache wraps loads and Redis round trips in spans.
type Tracer interface {
	// Start begins a span and returns the context to run it in and the
	// function that ends it. op is "load" or "load_many" for a loader call,
	// or the name of a Redis operation ("get", "mget", "acquire", "fill",
	// "set", "del", "publish", "tag_read", ...) for a round trip. A load
	// runs in the context of the caller that started it, without its
	// cancellation, so its span joins that caller's trace; a round trip
	// that several callers share joins the trace of the one that led it.
	Start(ctx context.Context, op string) (context.Context, func(err error))
}

// DelayObserver is an optional interface of an [Observer]: when the
// observer implements it, the cache reports the delay of each invalidation
// message it applies (from the sender's acknowledged write to this
// instance's L1 drop; see [Stats].InvalidationDelay).
type DelayObserver interface {
	InvalidationDelay(d time.Duration)
}

// NopObserver implements [Observer] and does nothing.
type NopObserver struct{}

func (NopObserver) Lookup(Tier, bool, time.Duration)     {}
func (NopObserver) Load(time.Duration, error)            {}
func (NopObserver) Redis(string, time.Duration, error)   {}
func (NopObserver) Event(Event)                          {}
func (NopObserver) BreakerChanged(from, to BreakerState) {}

// Stats is a snapshot of a cache's counters since [New].
type Stats struct {
	L1Hits, L1Misses uint64 // L1 lookups (zero when L1 is off)
	L2Hits, L2Misses uint64 // Redis lookups (NewLocal, no Redis: each L1 miss is an L2 miss, for HitRatio)
	Loads            uint64 // loader calls
	LoadErrors       uint64 // loader calls that failed (ErrNotFound is not a failure)
	// Events counts each [Event] by its value: Events[EventCoalesced] is how
	// many reads shared another caller's load, and so on.
	Events [NumEvents]uint64
	// BreakerState is the worst state of the breakers; Breakers has each
	// node's, by address (one entry on a single node, one per master seen
	// on a cluster; nil with WithoutBreaker).
	BreakerState BreakerState
	Breakers     map[string]BreakerState
	L1Entries    int    // entries in L1 now
	L1Weight     uint64 // L1's weight as WithL1Bytes bounds it (0 with WithL1); it may lag writes a little
	// InvalidationDelay is the distribution of the delays of the
	// invalidation messages this instance applied, from the moment the
	// sending instance's write was acknowledged by Redis to the moment this
	// instance dropped the keys from L1. It includes the clock difference
	// between the two hosts (none between processes of one host).
	InvalidationDelay DelayHistogram
	// Subscribed is whether the invalidation subscription is up: while it
	// is not, L1 entries live at most the L1 outage TTL, and lease waiters
	// poll. An instance subscribes when it has L1 or the lease; Subscribed
	// is false without either, or with WithoutInvalidation.
	Subscribed bool
}

// HitRatio is the share of reads answered by a cache tier (L1 or Redis)
// rather than by a load: hits / (hits + Redis misses). It is 0 before any read.
func (s Stats) HitRatio() float64 {
	hits := s.L1Hits + s.L2Hits
	if hits+s.L2Misses == 0 {
		return 0
	}
	return float64(hits) / float64(hits+s.L2Misses)
}

// Count returns the counter of event e.
func (s Stats) Count(e Event) uint64 {
	if e < NumEvents {
		return s.Events[e]
	}
	return 0
}

// DelayBuckets is the number of buckets of a [DelayHistogram].
const DelayBuckets = 24

// DelayHistogram counts durations in buckets whose bounds double from 16µs:
// Buckets[i] counts the durations below [DelayBucketBound](i) and at least
// the bound before; the last bucket has no upper bound.
type DelayHistogram struct {
	Buckets [DelayBuckets]uint64 `json:"buckets"`
	Count   uint64               `json:"count"`
	Sum     time.Duration        `json:"sum_ns"`
	Max     time.Duration        `json:"max_ns"`
}

// DelayBucketBound is the upper bound of bucket i: 16µs * 2^i (the last
// bucket's is math.MaxInt64).
func DelayBucketBound(i int) time.Duration {
	if i >= DelayBuckets-1 {
		return math.MaxInt64
	}
	return 16 * time.Microsecond << i
}

// Quantile returns the upper bound of the bucket that holds the q-th
// quantile (q in [0, 1]), capped at Max: an upper bound of the true one.
// It is 0 for an empty histogram.
func (h DelayHistogram) Quantile(q float64) time.Duration {
	if h.Count == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.Count)))
	var n uint64
	for i, c := range h.Buckets {
		if n += c; n >= max(rank, 1) {
			return min(DelayBucketBound(i), h.Max)
		}
	}
	return h.Max
}

// delays is the live histogram behind DelayHistogram.
type delays struct {
	buckets  [DelayBuckets]atomic.Uint64
	count    atomic.Uint64
	sum, max atomic.Int64
}

func (d *delays) observe(v time.Duration) {
	v = max(v, 0)
	i := 0
	for i < DelayBuckets-1 && v >= DelayBucketBound(i) {
		i++
	}
	d.buckets[i].Add(1)
	d.count.Add(1)
	d.sum.Add(int64(v))
	for m := d.max.Load(); int64(v) > m && !d.max.CompareAndSwap(m, int64(v)); m = d.max.Load() {
	}
}

func (d *delays) snapshot() DelayHistogram {
	h := DelayHistogram{Count: d.count.Load(), Sum: time.Duration(d.sum.Load()), Max: time.Duration(d.max.Load())}
	for i := range h.Buckets {
		h.Buckets[i] = d.buckets[i].Load()
	}
	return h
}

// counters are the live counters behind Stats: atomics, no lock.
type counters struct {
	l2Hits, l2Misses  stripe.Counter // every Redis read counts one
	loads, loadErrors atomic.Uint64
	events            [NumEvents]atomic.Uint64
	delays            delays
}

// recorder counts and forwards to the observer. All methods are cheap when
// the observer is a NopObserver.
type recorder struct {
	n      counters
	obs    Observer
	tracer Tracer        // nil unless obs implements Tracer
	delay  DelayObserver // nil unless obs implements DelayObserver
	timed  bool          // whether obs wants durations (false for NopObserver)
}

func newRecorder(obs Observer) *recorder {
	r := &recorder{obs: obs}
	if obs == nil {
		r.obs = NopObserver{}
	} else {
		r.timed = true
		r.tracer, _ = obs.(Tracer)
		r.delay, _ = obs.(DelayObserver)
	}
	return r
}

// Now returns the time for a duration measurement, or the zero time when
// nobody wants durations, saving the clock read on the hot path.
func (r *recorder) Now() time.Time {
	if r.timed {
		return time.Now()
	}
	return time.Time{}
}

// lookupL2 counts a Redis lookup that began at start and tells the
// observer. (L1 lookups are counted by local's striped counters.)
func (r *recorder) lookupL2(hit bool, start time.Time) {
	if hit {
		r.n.l2Hits.Add()
	} else {
		r.n.l2Misses.Add()
	}
	if r.timed {
		r.obs.Lookup(TierL2, hit, time.Since(start))
	}
}

func (r *recorder) load(d time.Duration, err error) {
	r.n.loads.Add(1)
	if err != nil {
		r.n.loadErrors.Add(1)
	}
	r.obs.Load(d, err)
}

func (r *recorder) event(e Event) {
	r.n.events[e].Add(1)
	r.obs.Event(e)
}

// eventN counts n occurrences of e at once.
func (r *recorder) eventN(e Event, n int) {
	r.n.events[e].Add(uint64(n))
	for range n {
		r.obs.Event(e)
	}
}

// invalidationDelay records the delay of one applied invalidation.
func (r *recorder) invalidationDelay(d time.Duration) {
	r.n.delays.observe(d)
	if r.delay != nil {
		r.delay.InvalidationDelay(d)
	}
}

// The recorder is the store's (store.Recorder): Now, Span, Redis,
// Rejected and Batched.

// Redis is told of one round trip that ran.
func (r *recorder) Redis(op string, start time.Time, err error) {
	if r.timed {
		r.obs.Redis(op, time.Since(start), err)
	}
	if err != nil {
		if store.IsTimeout(err) {
			r.event(EventRedisTimeout)
		}
		r.event(EventRedisError)
	}
}

// Rejected counts a call the breaker refused.
func (r *recorder) Rejected() { r.event(EventBreakerReject) }

// Batched counts n reads that shared a coalesced round trip.
func (r *recorder) Batched(n int) { r.eventN(EventReadBatched, n) }

// Span starts a span when the observer traces.
func (r *recorder) Span(ctx context.Context, op string) (context.Context, func(error)) {
	if r.tracer == nil {
		return ctx, func(error) {}
	}
	return r.tracer.Start(ctx, op)
}

func (r *recorder) snapshot() Stats {
	s := Stats{
		L2Hits: r.n.l2Hits.Load(), L2Misses: r.n.l2Misses.Load(),
		Loads: r.n.loads.Load(), LoadErrors: r.n.loadErrors.Load(),
	}
	for i := range s.Events {
		s.Events[i] = r.n.events[i].Load()
	}
	s.InvalidationDelay = r.n.delays.snapshot()
	return s
}

// MarshalText makes tiers readable in JSON and logs ("l1", "l2", "loader").
func (t Tier) MarshalText() ([]byte, error) { return []byte(t.String()), nil }

// MarshalText makes events readable in JSON and logs ("coalesced", ...).
func (e Event) MarshalText() ([]byte, error) { return []byte(e.String()), nil }

// MarshalText makes breaker states readable ("closed", "half-open", "open").
func (s BreakerState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// EventCounts returns the event counters by name, for reports and JSON.
func (s Stats) EventCounts() map[string]uint64 {
	m := make(map[string]uint64, len(s.Events))
	for i, n := range s.Events {
		m[Event(i).String()] = n
	}
	return m
}

// MarshalJSON writes the counters with names: events as an object keyed by
// event name, the breaker state as text, the hit ratio, and the
// invalidation delay's histogram (durations in nanoseconds).
func (s Stats) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		L1Hits       uint64                  `json:"l1_hits"`
		L1Misses     uint64                  `json:"l1_misses"`
		L2Hits       uint64                  `json:"l2_hits"`
		L2Misses     uint64                  `json:"l2_misses"`
		Loads        uint64                  `json:"loads"`
		LoadErrors   uint64                  `json:"load_errors"`
		HitRatio     float64                 `json:"hit_ratio"`
		Events       map[string]uint64       `json:"events"`
		BreakerState BreakerState            `json:"breaker_state"`
		Breakers     map[string]BreakerState `json:"breakers,omitempty"`
		L1Entries    int                     `json:"l1_entries"`
		L1Weight     uint64                  `json:"l1_weight"`
		Subscribed   bool                    `json:"subscribed"`
		Delay        DelayHistogram          `json:"invalidation_delay"`
	}{s.L1Hits, s.L1Misses, s.L2Hits, s.L2Misses, s.Loads, s.LoadErrors, s.HitRatio(), s.EventCounts(), s.BreakerState, s.Breakers, s.L1Entries, s.L1Weight, s.Subscribed, s.InvalidationDelay})
}

// redisOpNames are the Redis operations the cache reports to
// [Observer.Redis] and [Tracer.Start], in a fixed order.
var redisOpNames = [...]string{
	"get", "set", "del", "acquire", "fill", "release", "publish",
	"mget", "set_many", "fill_many", "acquire_many", "release_many",
	"tag_read", "tag_bump", "tag_get", "command_info", "clear", "generation",
}

// NumRedisOps is how many Redis operations the cache reports: an observer
// can keep its per-operation metrics in an array this long, indexed by
// [RedisOpIndex], instead of looking the name up on every call.
const NumRedisOps = len(redisOpNames)

// RedisOpName returns the name of operation i, for i in [0, NumRedisOps).
func RedisOpName(i int) string { return redisOpNames[i] }

// RedisOpIndex returns the index of the Redis operation named op, or -1 for
// a name the cache does not report.
func RedisOpIndex(op string) int { return slices.Index(redisOpNames[:], op) }

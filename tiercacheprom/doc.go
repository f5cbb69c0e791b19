// Package tiercacheprom exports the metrics of tiercache caches to
// Prometheus.
//
// A [Collector] is a [prometheus.Collector] that serves any number of caches,
// told apart by the cache label. Register it once, and give each cache the
// observer that [Collector.Observer] returns for its name:
//
//	col, err := tiercacheprom.New()
//	...
//	prometheus.MustRegister(col)
//	users, err := tiercache.New[User](rdb, tiercache.WithObserver(col.Observer("users")))
//	...
//	col.Track("users", users.Stats)
//
// Counters and histograms are pushed by the observer as the cache works; an
// observer resolves each labelled series once, so that the read path pays
// for a few atomic additions and nothing else. The values that are
// states rather than counts (the breaker state, the size of L1) are read from
// [tiercache.Cache.Stats] when Prometheus scrapes, for the caches given to
// [Collector.Track].
//
// # Metrics
//
// Every metric has the label cache, the name given to [Collector.Observer] or
// [Collector.Track], and the constant labels of [WithConstLabels].
//
//	tiercache_requests_total{tier,result}         counter: tier lookups; tier is l1 or l2, result hit or miss
//	tiercache_lookup_duration_seconds{tier}       histogram: how long a tier lookup took
//	tiercache_loads_total{result}                 counter: loader calls; result is ok or error (a "not found" is ok)
//	tiercache_load_duration_seconds               histogram: how long a loader call took
//	tiercache_redis_duration_seconds{op}          histogram: Redis round trips by operation (get, set, del, acquire, fill, mget, ...)
//	tiercache_redis_errors_total{op}              counter: Redis round trips that failed
//	tiercache_events_total{event}                 counter: each tiercache.Event, by its String (coalesced, lease_wait, ...)
//	tiercache_breaker_transitions_total{to}       counter: circuit breaker changes, by new state (closed, half-open, open)
//	tiercache_breaker_state                       gauge (Track): 0 closed, 1 half-open, 2 open
//	tiercache_l1_entries                          gauge (Track): entries in L1
//	tiercache_l1_weight_bytes                     gauge (Track): encoded size of L1's values, when L1 is bounded by bytes
//
// The hit ratio of a cache over five minutes, for example, is
//
//	sum by (cache) (rate(tiercache_requests_total{result="hit"}[5m]))
//	  / (sum by (cache) (rate(tiercache_requests_total{result="hit"}[5m]))
//	     + sum by (cache) (rate(tiercache_requests_total{tier="l2",result="miss"}[5m])))
//
// which is [tiercache.Stats.HitRatio].
//
// The op label is the name the cache gives the operation: get, set, del,
// acquire, fill, release and publish for single keys, mget, set_many,
// fill_many, acquire_many and release_many for batches, tag_read, tag_bump
// and tag_get for tags.
//
// NOTE: the series of every event, tier, result and breaker state are made
// when the observer is, so that each exists (at zero) from the start and a
// rate() over it is defined; a cache without L1 thus has l1 series that stay
// at zero. The series of a Redis operation appear when the cache first uses
// it.
package tiercacheprom

// Package tiercacheprom exports the metrics of tiercache caches, and of
// tiercachepg's commit-log followers, to Prometheus.
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
// states rather than counts (the breaker states, the size of L1, the
// subscription), and the invalidation delay histogram, which the cache
// keeps itself, are read from [tiercache.Cache.Stats] when Prometheus
// scrapes, for the caches given to [Collector.Track].
//
// # Metrics
//
// Every metric of a cache has the label cache, the name given to
// [Collector.Observer] or [Collector.Track], and the constant labels of
// [WithConstLabels].
//
//	tiercache_requests_total{tier,result}         counter: tier lookups; tier is l1 or l2, result hit or miss
//	tiercache_lookup_duration_seconds{tier}       histogram: how long a tier lookup took
//	tiercache_loads_total{result}                 counter: loader calls; result is ok or error (a "not found" is ok)
//	tiercache_load_duration_seconds               histogram: how long a loader call took
//	tiercache_redis_duration_seconds{op}          histogram: Redis round trips by operation (get, set, del, acquire, fill, mget, ...)
//	tiercache_redis_errors_total{op}              counter: Redis round trips that failed
//	tiercache_events_total{event}                 counter: each tiercache.Event, by its String (coalesced, lease_wait, ...)
//	tiercache_breaker_transitions_total{to}       counter: circuit breaker changes, by new state (closed, half-open, open)
//	tiercache_breaker_state                       gauge (Track): 0 closed, 1 half-open, 2 open; the worst of the nodes'
//	tiercache_breaker_node_state{node}            gauge (Track): the breaker of each Redis node, by address (host:port)
//	tiercache_l1_entries                          gauge (Track): entries in L1
//	tiercache_l1_weight_bytes                     gauge (Track): encoded size of L1's values, when L1 is bounded by bytes
//	tiercache_subscribed                          gauge (Track): 1 while the invalidation subscription is up, else 0 (see Stats.Subscribed)
//	tiercache_invalidation_delay_seconds          histogram (Track): from a write acknowledged on another instance to this one's L1 drop
//
// The invalidation delay histogram has tiercache's own buckets
// ([tiercache.DelayBucketBound]: 16µs, 32µs, ... about 67s, then +Inf),
// whatever [WithBuckets] says, since the cache counts into them itself. It
// includes the clock difference between the hosts of the two instances. Its
// p99 over five minutes, over the instances of a service, is
//
//	histogram_quantile(0.99, sum by (le) (rate(tiercache_invalidation_delay_seconds_bucket[5m])))
//
// tiercache_breaker_node_state has a series per Redis node the cache has
// used (one on a single server, one per master on a cluster); none with
// tiercache.WithoutBreaker.
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
//
// # Followers
//
// A tiercachepg follower (invalidation from PostgreSQL's commit log)
// reports to the collector through the observer that [Collector.Follower]
// returns for its name, set as its Options.Observer:
//
//	f, err := tiercachepg.New(dsn, tiercachepg.Options{..., Observer: col.Follower("orders")})
//
// [FollowerObserver] has the methods of tiercachepg.Observer without this
// module importing tiercachepg, so that a service that exports metrics
// does not get pgx with them. Every follower metric has the label
// follower, the name given to Collector.Follower, and the constant labels
// of [WithConstLabels]:
//
//	tiercache_follower_invalidation_delay_seconds histogram: from a transaction's commit (the database's clock) to the return of the Invalidate call that covered it
//	tiercache_follower_transactions_total         counter: committed transactions whose invalidation returned nil (a replay after a restart counts again)
//	tiercache_follower_changes_total              counter: row changes of the followed tables in them
//	tiercache_follower_invalidate_failures_total  counter: Invalidate calls that failed (each is retried)
//	tiercache_follower_unmapped_total{table}      counter: changes handed to the dead-letter policy, by table (schema.name; "" when the stream did not say)
//	tiercache_follower_slot_lag_bytes             gauge: the slot's confirmed position behind the server's WAL position, read every LagInterval
//	tiercache_follower_lag_exceeded               gauge: 1 while that lag is above the follower's MaxLag, else 0
//
// The delay histogram has buckets of its own, from 0.1ms to 10s in steps
// of 1, 2.5 and 5, whatever [WithBuckets] says: a follower that keeps up
// takes a few tenths of a millisecond, one catching up after an outage
// seconds. Its p99 over five minutes is
//
//	histogram_quantile(0.99, sum by (le) (rate(tiercache_follower_invalidation_delay_seconds_bucket[5m])))
//
// and an alert on a slot falling behind, for example,
//
//	max by (follower) (tiercache_follower_lag_exceeded) == 1
//
// The counters and the histogram exist (at zero) from the call of
// Collector.Follower; the two lag gauges from the follower's first read of
// the slot's lag, so that a follower that has not read it yet shows no lag
// rather than a lag of zero. Like [tiercache.Cache.Stats] for a cache,
// tiercachepg's Follower.Stats has the same figures for a program to read.
package tiercacheprom

// Package tiercacheotel reports what a tiercache cache does to
// OpenTelemetry: metrics through a [metric.MeterProvider], and a span around
// each load through a [trace.TracerProvider]; and the figures of
// tiercachepg's commit-log followers (see Followers below).
//
// Make one [Observer] per cache and pass it to [tiercache.WithObserver]; it
// is both the cache's [tiercache.Observer] and its [tiercache.Tracer]:
//
//	obs, err := tiercacheotel.New("users")
//	...
//	users, err := tiercache.New[User](rdb, tiercache.WithObserver(obs))
//	...
//	reg, err := obs.Track(users.Stats) // the gauges; reg.Unregister() when the cache is closed
//
// Without [WithMeterProvider] and [WithTracerProvider] the global providers
// of go.opentelemetry.io/otel are used, as they are when [New] is called:
// set them first.
//
// # Metrics
//
// Every measurement of a cache has the attribute tiercache.cache, the name
// given to [New]. Instruments and their attribute sets are made once, in
// New, so that the read path records into precomputed sets and allocates
// nothing.
//
//	tiercache.requests            counter {request}: tier lookups; tiercache.tier (l1, l2), tiercache.result (hit, miss)
//	tiercache.lookup.duration     histogram, s: how long a tier lookup took; tiercache.tier
//	tiercache.loads               counter {load}: loader calls; tiercache.result (ok, error; a "not found" is ok)
//	tiercache.load.duration       histogram, s: how long a loader call took
//	tiercache.redis.duration      histogram, s: Redis round trips; tiercache.redis.op (get, set, del, acquire, fill, mget, ...), tiercache.result (ok, error)
//	tiercache.events              counter {event}: each tiercache.Event; tiercache.event (its String: coalesced, lease_wait, ...)
//	tiercache.breaker.transitions counter {transition}: circuit breaker changes; tiercache.breaker.state (the new state: closed, half-open, open)
//	tiercache.invalidation.delay  histogram, s: from a write acknowledged on another instance to this one's L1 drop
//	tiercache.breaker.state       gauge (Track): 0 closed, 1 half-open, 2 open; the worst of the nodes'
//	tiercache.breaker.node.state  gauge (Track): the breaker of each Redis node; tiercache.redis.node (its address, host:port)
//	tiercache.l1.entries          gauge (Track) {entry}: entries in L1
//	tiercache.l1.weight           gauge (Track), By: encoded size of L1's values, when L1 is bounded by bytes
//
// The tiercache.redis.op attribute is the name the cache gives the
// operation: get, set, del, acquire, fill, release and publish for single
// keys, mget, set_many, fill_many, acquire_many and release_many for
// batches, tag_read, tag_bump and tag_get for tags.
//
// The duration histograms advise buckets from 1µs to about 4s in steps of
// 4, and tiercache.invalidation.delay those of [tiercache.DelayHistogram]
// (16µs to about 67s, doubling); a view of the MeterProvider can replace
// them. The observer records each invalidation delay as the cache applies
// the message (it is a [tiercache.DelayObserver]); the delay includes the
// clock difference between the hosts of the two instances.
//
// tiercache.breaker.node.state has a point per Redis node the cache has
// used: one on a single server, one per master on a cluster, none with
// tiercache.WithoutBreaker.
//
// # Spans
//
// The cache calls [Observer.Start] around each call of a loader: the span is
// named tiercache.load (tiercache.load_many for a batch loader), the loader runs in it (so that its own spans, the
// database query, are its children), and it ends with an error status when
// the loader fails ([tiercache.ErrNotFound] is not a failure: it sets
// tiercache.not_found instead). Should the cache start spans for Redis
// round trips, under the operation names it gives [tiercache.Observer]'s
// Redis method, they are named tiercache.redis.<op>, of kind client.
//
// NOTE: the cache runs a load on a context detached from the read that
// started it (so that one caller leaving does not fail the others), and
// that context carries no span: a load span starts a trace of its own
// rather than joining the trace of the read.
//
// NOTE: the observer's metric methods get no context from the cache, so
// measurements are recorded with context.Background(): exemplars cannot
// link them to the trace of the read.
//
// # Followers
//
// A tiercachepg follower (invalidation from PostgreSQL's commit log)
// reports through the [FollowerObserver] that [NewFollower] returns, set
// as its Options.Observer:
//
//	obs, err := tiercacheotel.NewFollower("orders")
//	...
//	f, err := tiercachepg.New(dsn, tiercachepg.Options{..., Observer: obs})
//
// FollowerObserver has the methods of tiercachepg.Observer without this
// module importing tiercachepg, so that a service that exports metrics
// does not get pgx with them. Every measurement has the attribute
// tiercache.follower, the name given to NewFollower:
//
//	tiercache.follower.invalidation.delay   histogram, s: from a transaction's commit (the database's clock) to the return of the Invalidate call that covered it
//	tiercache.follower.transactions         counter {transaction}: committed transactions whose invalidation returned nil (a replay after a restart counts again)
//	tiercache.follower.changes              counter {change}: row changes of the followed tables in them
//	tiercache.follower.invalidate.failures  counter {call}: Invalidate calls that failed (each is retried)
//	tiercache.follower.unmapped             counter {change}: changes handed to the dead-letter policy; tiercache.follower.table (schema.name, "" when the stream did not say)
//	tiercache.follower.slot.lag             gauge, By: the slot's confirmed position behind the server's WAL position, recorded at each read (every LagInterval)
//	tiercache.follower.lag.exceeded         gauge, 1: 1 while that lag is above the follower's MaxLag, else 0
//
// The delay histogram advises buckets from 0.1ms to 10s in steps of 1, 2.5
// and 5: a follower that keeps up takes a few tenths of a millisecond, one
// catching up after an outage seconds. The two gauges are synchronous: they
// have no point until the follower's first read of the slot's lag, rather
// than a lag of zero. tiercachepg's Follower.Stats has the same figures for
// a program to read.
package tiercacheotel

// Package tiercache is a cache-aside layer for Go services in three tiers:
// an optional in-process L1, Redis as the shared L2 (one node, Sentinel or
// Cluster, through a go-redis v9 client the caller owns), and the caller's
// loader (the database) behind them.
//
// # The read path
//
// [Cache.GetOrLoad] looks in L1, then in Redis, then calls the loader, and
// fills each tier on the way back:
//
//   - L1 holds decoded values: a hit is a map lookup. An L1 entry never
//     outlives the value's logical expiry nor the L1 max TTL (30s by
//     default), and every instance drops the keys that another instance
//     writes, through Redis pub/sub.
//   - A Redis hit is one GET. Values are stored in a small versioned frame
//     (docs/FORMAT.md) that carries the logical expiry, the time the load
//     took and a check of the key; bytes that fail to decode are a miss.
//     Under concurrency, reads that arrive while others are on the wire
//     share a round trip (one MGET, or a pipeline per node on a cluster),
//     with no timer to delay a lone read (see [WithoutReadCoalescing]).
//     When Redis rarely has what this instance reads through (one instance
//     with L1: its L1 and Redis expire together), the GET is skipped and the
//     lease's Acquire, which returns a fresh value instead of a lease, is
//     the read: a miss then costs two round trips, not three.
//   - On a miss, callers in one process share one load (coalescing), and
//     across processes the first instance takes a lease in Redis and loads
//     while the others wait for its value, for as long as the holder may
//     take: N instances load a cold key once. The fill is a compare-and-set
//     on the lease, and writes remove the lease, so a value loaded before a
//     Set, Delete or tag invalidation never lands after it, in Redis or in
//     any L1. A Delete while others wait for a load (or just after its
//     fill) does not make them wait for a second one: their reads overlapped
//     it, and they get the value loaded before it, which is cached nowhere;
//     a read that begins once its instance sees the Delete (see
//     Consistency below) loads anew. A single key and a batch go through
//     the same load code.
//
// Values are refreshed in the background before they expire (XFetch early
// refresh), may be served stale while they are refreshed or when the loader
// fails (stale-while-revalidate, stale-if-error), and a loader's
// [ErrNotFound] is cached as a negative entry.
//
// # Failures
//
// A cache failure never fails a read that the loader can serve: when Redis
// is slow or down, reads go to L1 and the loader, and a circuit breaker
// stops calling Redis until it recovers. A value loaded while Redis cannot
// take it is kept in L1 (when L1 is on) for the L1 outage TTL, so that an
// outage costs the database about one load per key per instance per outage
// TTL; without L1 only the callers of one process share a load. Writes
// ([Cache.Set], [Cache.Delete]) do return Redis errors, since a lost
// invalidation would leave stale data, and drop the key from this
// instance's L1; retry them. Every error is a sentinel value of this
// package (see errors.go), wrapped with detail: test with [errors.Is].
// Bad input is an error too, never a panic: an empty key
// ([ErrInvalidKey]), a nil loader ([ErrNilLoader]), a nil context
// ([ErrNilContext]).
// (go-redis reports failed dials through its own global logger, which this
// package leaves alone: redirect or silence it with redis.SetLogger.) A
// panic in a value's codec is an error; a loader's panic or
// runtime.Goexit is a [*PanicError] for every waiter.
//
// # Consistency, in plain words
//
// Within one instance, a read that starts after a Set or Delete returned
// sees its effect (or something newer). Another instance sees it as soon as
// the invalidation message reaches it; every instance publishes its
// writes, with L1 or without. How soon is measured, not promised: each
// instance records the delay from a write's acknowledgement to its L1
// drop in [Stats].InvalidationDelay; in the demo on a loaded 2-core
// machine it was p50 0.5 ms, p99 2 to 16 ms, max 24 ms on a 3-master
// cluster, and p50 1 to 2 ms, p99 11 to 33 ms, max 38 ms on one (embedded)
// Redis (docs/PERFORMANCE.md); CPU starvation raises it, and so would
// classic pub/sub's cluster bus hop, which sharded pub/sub avoids. The
// backstops hold whatever the delay: if that message is lost, the other
// instance sees the write no later than the L1 max TTL, and if its
// subscription is known to be down, no later than the L1 outage TTL (1s),
// after which L1 is flushed. After concurrent writes of a key (Refresh
// included: it publishes as a Set does) have returned and their messages
// arrived, no L1 holds a value Redis does not. Redis itself is never left
// holding a value loaded before the last Set, Delete or tag invalidation of
// its key.
//
// # Concurrency and lifetime
//
// A [Cache] is safe for concurrent use. [Cache.Close] stops its goroutines
// (the invalidation subscriber and publisher, background refreshes, loads
// in flight) and waits for them; it does not close the Redis client.
package tiercache

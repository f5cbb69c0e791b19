// Package tiercachepg invalidates a tiercache from PostgreSQL's commit
// log, so that no committed change is lost between the commit and the
// cache: not when the writer crashes after its COMMIT, not when a deploy
// kills it, not when Redis is down at that moment.
//
// A [Follower] tails a logical replication slot (pgoutput, through
// jackc/pglogrepl and pgx) over a publication of the tables you name. It
// maps each committed row change to a [tiercache.Invalidation] with a
// function you supply ([Options.Map]; [KeyPattern] builds one from key and
// tag patterns), and applies it through [Options.Invalidate], normally
// [tiercache.Cache.Invalidate]: the keys are deleted in Redis with their
// leases (so a fill that was loading the old row is refused), tags are
// invalidated, and every instance's L1 follows through pub/sub.
//
// # Guarantees
//
//   - At least once, in commit order: the slot's confirmed position
//     advances only past transactions whose invalidations all returned
//     nil. A change may be invalidated twice (after a restart, the slot
//     replays from its confirmed position); none is skipped.
//   - Nothing lost: a follower that restarts resumes from the slot; while
//     Redis is down it retries with backoff and holds its position (the
//     database keeps the WAL meanwhile), answering the server so the
//     connection stays up.
//   - A change that cannot be mapped is logged, counted and handed to a
//     dead-letter policy ([Options.DeadLetter]); it never blocks the
//     stream.
//   - Invalidations are unversioned: a Version that Map returns is
//     ignored (and logged), since row versions do not follow commit order
//     (see [MapFunc]). What Map returns is checked as tiercache checks it;
//     an Invalidation tiercache would refuse is an unmapped change.
//   - A gap is never silent: with [Options.Create] the slot is created
//     only before the first stream, so a slot dropped while following (or
//     lost in a failover) ends Run with [ErrSlotNotFound]. Publications
//     that would hide changes are refused ([ErrPublication]): a followed
//     partitioned table without publish_via_partition_root (Create sets
//     it), a row filter, a followed table whose INHERITS children are not
//     followed too (their rows come under their own names); so is a
//     publication dropped under the live slot, and, checked again every
//     [Options.LagInterval] while streaming, a publication changed under
//     the stream so that it hides changes. One case cannot be refused
//     and is warned of at start (docs/COMMITLOG.md, "Known gaps"): under
//     publish_via_partition_root, PostgreSQL does not send a TRUNCATE of
//     one partition of a followed partitioned table.
//   - Lag is observable: the commit-to-invalidation delay and the slot's
//     lag in bytes, with an alarm past [Options.MaxLag], in
//     [Follower.Stats] and, as they happen, through [Options.Observer] to
//     Prometheus or OpenTelemetry (see Metrics below).
//
// Transactions that queue up while an invalidation is in flight are merged
// into one Invalidate call (one round trip per Redis node), which is how
// the follower keeps up with a busy database.
//
// docs/COMMITLOG.md in the repository covers the set-up (slot,
// publication, permissions), a primary failover, where this sits next to
// write-through and Delete, and how to do the same from Debezium, Kafka or
// NATS.
//
// # Metrics
//
// [Follower.Stats] has the follower's figures for a program to read. For
// metrics, set [Options.Observer] to the follower observer of the
// repository's metrics modules, which implement [Observer] without
// importing this package (so a service that exports metrics does not get
// pgx with them):
//
//	col, err := tiercacheprom.New() // registered once, as for the caches
//	f, err := tiercachepg.New(dsn, tiercachepg.Options{..., Observer: col.Follower("orders")})
//
//	obs, err := tiercacheotel.NewFollower("orders")
//	f, err := tiercachepg.New(dsn, tiercachepg.Options{..., Observer: obs})
//
// Prometheus gets, by the label follower,
// tiercache_follower_invalidation_delay_seconds (a histogram of the
// commit-to-invalidation delay, 0.1ms to 10s),
// tiercache_follower_transactions_total, tiercache_follower_changes_total,
// tiercache_follower_invalidate_failures_total,
// tiercache_follower_unmapped_total{table},
// tiercache_follower_slot_lag_bytes and tiercache_follower_lag_exceeded
// (0 or 1); OpenTelemetry the same as tiercache.follower.invalidation.delay,
// tiercache.follower.transactions, tiercache.follower.changes,
// tiercache.follower.invalidate.failures, tiercache.follower.unmapped,
// tiercache.follower.slot.lag and tiercache.follower.lag.exceeded. An
// observer of your own implements the four methods of [Observer]; they run
// on the follower's goroutines and must be quick.
//
// # Lifetime
//
// [Follower.Run] blocks until its context ends or [Follower.Close] is
// called; every goroutine it starts has ended when it returns. A follower
// is safe for concurrent use.
package tiercachepg

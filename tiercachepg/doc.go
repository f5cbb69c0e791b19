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
//   - Lag is observable ([Follower.Stats]): the commit-to-invalidation
//     delay and the slot's lag in bytes, with an alarm past
//     [Options.MaxLag].
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
// # Lifetime
//
// [Follower.Run] blocks until its context ends or [Follower.Close] is
// called; every goroutine it starts has ended when it returns. A follower
// is safe for concurrent use.
package tiercachepg

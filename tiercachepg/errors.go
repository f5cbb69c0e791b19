package tiercachepg

import "errors"

// Errors of the follower. Each is a sentinel value: test for it with
// [errors.Is], since the follower wraps it with detail.
var (
	// ErrInvalidOption is returned by [New] and [KeyPattern] for an option
	// that makes no sense (a missing slot name, no tables, a nil Map, a
	// pattern with an unclosed brace, MaxBatchTags over 64, ...), and by
	// Run when the server refuses a setting the DSN names.
	ErrInvalidOption = errors.New("tiercachepg: invalid option")

	// ErrClosed is returned by [Follower.Run] after [Follower.Close].
	ErrClosed = errors.New("tiercachepg: follower closed")

	// ErrRunning is returned by a second concurrent call of [Follower.Run]:
	// one follower reads one stream.
	ErrRunning = errors.New("tiercachepg: follower already running")

	// ErrSlotNotFound is returned by Run when the replication slot does not
	// exist and [Options.Create] is off, or when it disappeared after the
	// follower first streamed from it (Create never makes it anew then:
	// the new slot would start after a gap). After a primary failover this is
	// what a follower sees: the slot stays behind on the old primary (see
	// docs/COMMITLOG.md for what to do).
	ErrSlotNotFound = errors.New("tiercachepg: replication slot not found")

	// ErrSlotUnusable is returned by Run for a slot that exists but cannot
	// be followed: not a logical slot, another output plugin than pgoutput,
	// another database, or invalidated by the server (wal_status "lost",
	// after max_slot_wal_keep_size), and when the server has no logical
	// decoding (wal_level below logical).
	ErrSlotUnusable = errors.New("tiercachepg: replication slot unusable")

	// ErrPublication is returned by Run when the publication is missing
	// (and [Options.Create] is off), does not include every table of
	// [Options.Tables], or does not publish inserts, updates and deletes,
	// or would hide changes of a followed table: a partitioned table
	// published without publish_via_partition_root, a row filter, INHERITS
	// children not in Options.Tables (with Create too); and when
	// the stream finds the publication missing for changes written while
	// it was dropped (re-creating it does not help those: see fatal).
	ErrPublication = errors.New("tiercachepg: publication missing or incomplete")

	// ErrPermission is returned by Run when PostgreSQL refuses the login
	// or an operation for want of a privilege (docs/COMMITLOG.md lists what
	// the follower's role needs).
	ErrPermission = errors.New("tiercachepg: permission denied")

	// ErrUnmapped is wrapped by the errors of [KeyPattern]'s map function
	// and by the error the follower hands to the dead-letter policy for a
	// change it could not map: an unknown table, a missing column, an empty
	// key or tag, more tags than tiercache takes, a Map that panicked.
	ErrUnmapped = errors.New("tiercachepg: change not mapped")
)

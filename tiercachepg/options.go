package tiercachepg

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/tiercache/tiercache"
)

// MapFunc maps one committed row change to what it makes stale in the
// cache. It runs on the follower's stream goroutine, in commit order, and
// should be quick and free of I/O.
//
// An error sends the change to the dead-letter policy ([Options.DeadLetter]);
// an Invalidation returned along with the error is applied all the same,
// so a mapping that knows part of the answer (the key but not a tag, say)
// should return that part. A panic is an error (wrapping [ErrUnmapped]).
//
// The Invalidation is checked as tiercache checks it: an empty key, an
// empty tag or one over 255 bytes is left out, and it or more than 64
// distinct tags sends the change to the dead-letter policy like an error
// (counted in Stats.Unmapped), with the rest applied. So a mapping bug
// never becomes a call that tiercache refuses on every retry.
//
// NOTE: the follower's invalidations are unversioned. A Version in the
// returned Invalidation is ignored (and logged, as a warning at most once
// a minute): a row's version (an updated_at, a counter) does not follow
// commit order across rows and transactions, so a versioned delete could
// be refused by tiercache and leave a stale value behind. Invalidation in
// commit order needs no version.
type MapFunc func(Change) (tiercache.Invalidation, error)

// InvalidateFunc applies an invalidation; typically [tiercache.Cache.Invalidate]
// of the cache the table's rows are kept in, or a function that calls it
// on several caches. It must return nil only once the invalidation is
// done: the follower confirms nothing to the slot before.
type InvalidateFunc func(ctx context.Context, inv tiercache.Invalidation) error

// DeadLetterFunc is the dead-letter policy: what to do with a change that
// Map failed on (err wraps the Map's error). It may store the change for
// a person to look at, and returns what to invalidate instead (nothing, or
// something broader, see [InvalidateInstead]). An error is logged and
// counted (Stats.DeadLetterErrors) and the change is passed over: a dead
// letter never holds up the stream. It runs on the follower's invalidation
// goroutine, before the invalidation of the change's transaction.
type DeadLetterFunc func(ctx context.Context, c Change, err error) (tiercache.Invalidation, error)

// InvalidateInstead returns a dead-letter policy that invalidates inv in
// place of any change that could not be mapped, for example a tag that
// every cached value of the followed tables carries: broad, but never
// stale.
func InvalidateInstead(inv tiercache.Invalidation) DeadLetterFunc {
	return func(context.Context, Change, error) (tiercache.Invalidation, error) { return inv, nil }
}

// Lag is the report of a slot whose lag crossed [Options.MaxLag].
type Lag struct {
	// Bytes is how far the slot's confirmed position is behind the
	// server's current WAL position.
	Bytes int64
	// Limit is Options.MaxLag.
	Limit int64
	// Exceeded is true when the lag went above the limit, false when it
	// came back under it.
	Exceeded bool
}

// Options configure a [Follower]. Slot, Publication, Tables, Map and
// Invalidate are required.
type Options struct {
	// Slot is the name of the logical replication slot (lower-case
	// letters, digits and underscores, at most 63). Each follower needs a
	// slot of its own: two followers of one slot take turns, the second
	// waiting until the first lets go (a hot standby).
	Slot string
	// Publication is the name of the publication of Tables (same rules as
	// Slot).
	Publication string
	// Tables are the tables followed, "name" (in schema public) or
	// "schema.name", as PostgreSQL stores the names (a name with a dot in
	// it cannot be followed). Changes of other tables in the publication
	// are passed over (Stats.Ignored).
	Tables []string
	// Create creates the publication (FOR TABLE Tables WITH
	// (publish_via_partition_root = true), so that a partitioned table's
	// changes come under its own name) and the slot when they do not
	// exist. Off, a missing one is an error of Run ([ErrPublication],
	// [ErrSlotNotFound]). A new slot starts at the current WAL position:
	// changes committed before are not followed. The slot is created only
	// before the follower first streams: a slot that disappears after
	// (dropped, or a failover) is ErrSlotNotFound, never silently made
	// anew after a gap.
	// Leave it off once the slot exists, so that a follower pointed at a
	// new primary after a failover stops with ErrSlotNotFound instead of
	// silently starting after a gap (docs/COMMITLOG.md).
	Create bool

	// Map maps a change to its invalidation; [KeyPattern] builds one for
	// the common case.
	Map MapFunc
	// Invalidate applies invalidations, typically cache.Invalidate.
	Invalidate InvalidateFunc
	// DeadLetter is what happens to a change Map failed on; nil logs it
	// (at level Error) and counts it (Stats.Unmapped), and goes on.
	DeadLetter DeadLetterFunc

	// MaxLag, if positive, is the slot lag in bytes above which the
	// follower reports a slot falling behind: a warning in the log, a
	// count in Stats.LagAlarms, and OnLag. An abandoned or stuck slot keeps
	// the WAL on the database's disk.
	MaxLag int64
	// OnLag, if set, is called when the slot's lag goes above MaxLag and
	// when it comes back under it, from the follower's lag goroutine.
	OnLag func(Lag)
	// LagInterval is how often the slot's lag is read from
	// pg_replication_slots (on a connection of its own), and the
	// publication checked again (see Run); 10s by default.
	LagInterval time.Duration
	// StatusInterval is how often the follower reports its position to the
	// server (and asks for the server's); 1s by default, and at most a
	// third of the server's wal_sender_timeout.
	StatusInterval time.Duration

	// MaxBatchKeys and MaxBatchTags bound one Invalidate call: changes of
	// several transactions that queued up meanwhile are merged into one
	// call up to these sizes, and larger transactions are split over
	// several calls. 1000 keys and 64 tags by default. MaxBatchTags may not
	// exceed 64, tiercache's limit per call ([ErrInvalidOption]).
	MaxBatchKeys int
	MaxBatchTags int
	// MaxPending bounds the committed transactions read from the stream
	// and waiting for their invalidation; 1024 by default. When it is
	// reached the follower stops reading (the server keeps the WAL) and
	// goes on answering the server, so the connection stays up through an
	// outage of the cache.
	MaxPending int
	// MaxBackoff is the longest wait between retries of a failed
	// Invalidate or a failed connection; 5s by default. Retries start at
	// 50ms (or MaxBackoff if shorter) and double.
	MaxBackoff time.Duration

	// Observer receives the follower's figures as they happen (each
	// transaction's commit-to-invalidation delay, failed Invalidate calls,
	// unmapped changes, each read of the slot's lag), for metrics; none by
	// default. See [Observer] for the rules its methods must keep.
	Observer Observer
	// Logger receives the follower's logs; a discard logger by default.
	Logger *slog.Logger
}

// Defaults of [Options].
const (
	DefaultLagInterval    = 10 * time.Second
	DefaultStatusInterval = time.Second
	DefaultMaxBatchKeys   = 1000
	DefaultMaxBatchTags   = 64
	DefaultMaxPending     = 1024
	DefaultMaxBackoff     = 5 * time.Second

	minBackoff = 50 * time.Millisecond
	// maxNameLen is PostgreSQL's NAMEDATALEN-1.
	maxNameLen = 63
	// maxTagLen is tiercache's longest tag name, and maxTags the most
	// distinct tags of one tiercache value, to which the follower keeps
	// each call too (tiercache's internal/envelope.MaxTags and MaxTagLen,
	// which it does not export).
	// tiercache has no limit on the keys of a call beyond non-empty.
	maxTagLen = 255
	maxTags   = 64
)

// validTag reports whether tiercache takes tag: 1 to maxTagLen bytes, not
// starting with '}' (tiercache.ErrInvalidTag).
func validTag(tag string) bool { return tag != "" && len(tag) <= maxTagLen && tag[0] != '}' }

// table is a followed table's qualified name.
type table struct{ schema, name string }

func (t table) String() string { return t.schema + "." + t.name }

// config is Options validated, with defaults applied.
type config struct {
	Options
	tables []table
	follow map[table]bool
}

func newConfig(o Options) (*config, error) {
	c := &config{Options: o, follow: make(map[table]bool)}
	bad := func(format string, args ...any) (*config, error) {
		return nil, fmt.Errorf("%w: %s", ErrInvalidOption, fmt.Sprintf(format, args...))
	}
	if err := checkName("Slot", o.Slot); err != nil {
		return nil, err
	}
	if err := checkName("Publication", o.Publication); err != nil {
		return nil, err
	}
	if len(o.Tables) == 0 {
		return bad("Tables is empty: name the tables to follow")
	}
	for _, s := range o.Tables {
		t, err := parseTable(s)
		if err != nil {
			return nil, err
		}
		if !c.follow[t] {
			c.follow[t] = true
			c.tables = append(c.tables, t)
		}
	}
	switch {
	case o.Map == nil:
		return bad("Map is nil")
	case o.Invalidate == nil:
		return bad("Invalidate is nil (typically cache.Invalidate)")
	case o.MaxLag < 0:
		return bad("MaxLag %d is negative", o.MaxLag)
	case o.LagInterval < 0, o.StatusInterval < 0, o.MaxBackoff < 0:
		return bad("LagInterval, StatusInterval and MaxBackoff must not be negative")
	case o.MaxBatchKeys < 0, o.MaxBatchTags < 0, o.MaxPending < 0:
		return bad("MaxBatchKeys, MaxBatchTags and MaxPending must not be negative")
	case o.MaxBatchTags > maxTags:
		// tiercache refuses a call of more tags, and apply retries every
		// failed call: the stream would stop for good on the first batch
		// that large.
		return bad("MaxBatchTags %d is over %d, the most tags of one tiercache value, to which the follower keeps its calls", o.MaxBatchTags, maxTags)
	}
	c.LagInterval = orDefault(o.LagInterval, DefaultLagInterval)
	c.StatusInterval = orDefault(o.StatusInterval, DefaultStatusInterval)
	c.MaxBackoff = orDefault(o.MaxBackoff, DefaultMaxBackoff)
	c.MaxBatchKeys = orDefault(o.MaxBatchKeys, DefaultMaxBatchKeys)
	c.MaxBatchTags = orDefault(o.MaxBatchTags, DefaultMaxBatchTags)
	c.MaxPending = orDefault(o.MaxPending, DefaultMaxPending)
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return c, nil
}

func orDefault[T comparable](v, def T) T {
	var zero T
	if v == zero {
		return def
	}
	return v
}

// checkName accepts what PostgreSQL accepts as a slot name: lower-case
// letters, digits and underscores. Publications get the same rule, so that
// both can be written into replication commands without quoting.
func checkName(what, s string) error {
	if s == "" || len(s) > maxNameLen {
		return fmt.Errorf("%w: %s %q: want 1 to %d characters", ErrInvalidOption, what, s, maxNameLen)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_') {
			return fmt.Errorf("%w: %s %q: only lower-case letters, digits and underscores", ErrInvalidOption, what, s)
		}
	}
	return nil
}

// parseTable splits "schema.name" or "name" (schema public).
func parseTable(s string) (table, error) {
	schema, name, ok := strings.Cut(s, ".")
	if !ok {
		schema, name = "public", s
	}
	for _, part := range []string{schema, name} {
		if part == "" || len(part) > maxNameLen || strings.ContainsAny(part, ".\x00") {
			return table{}, fmt.Errorf("%w: table %q: want \"name\" or \"schema.name\", each part 1 to %d bytes",
				ErrInvalidOption, s, maxNameLen)
		}
	}
	return table{schema: schema, name: name}, nil
}

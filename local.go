package tiercache

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/maypok86/otter/v2"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/stripe"
)

// local is the L1 tier: decoded values in an otter cache (W-TinyLFU,
// per-entry expiry, synchronous writes).
//
// The race it must survive: a goroutine reads key k from Redis (old value),
// another instance writes k and publishes an invalidation, this instance
// applies it (L1 has nothing for k yet), and then the first goroutine puts
// the old value into L1, where it would stay until its L1 TTL. Redis's own
// client-side caching has the same race and fixes it with a placeholder per
// key; here each key has a generation (a striped counter) and an epoch
// (bumped by a flush):
//
//	reader:  tok := l.token(k)        writer/invalidation: gens[k]++
//	         v := GET k from Redis                         otter.Invalidate(k)
//	         otter.Compute(k): store v only if gens[k], epoch still == tok
//
// Compute holds k's bucket lock while it compares and stores. If the
// invalidation's increment comes before the compare, the fill is dropped;
// if it comes after, the invalidation's Invalidate, which needs the same
// lock, runs after the store and removes it. Either way no value read
// before an invalidation outlives it. A collision of two keys on one stripe
// only drops a fill that was in fact safe.
//
// L1 reads its time from a coarse clock (one read per millisecond in a
// goroutine of its own) and counts hits and misses in striped
// counters: a precise clock read or a shared atomic counter would each cost
// more than the lookup itself. An entry may therefore be served up to about
// a millisecond past its deadline.
type local[V any] struct {
	c      *otter.Cache[string, *entry[V]] // entries are immutable once stored
	clock  *otter.CoarseClock
	hits   stripe.Counter
	misses stripe.Counter
	gens   [1024]atomic.Uint64
	epoch  atomic.Uint64
	maxTTL time.Duration
	// outageTTL caps an entry's life while invalidations cannot arrive
	// (healthy reports false), and that of a value Redis did not take.
	outageTTL time.Duration
	bytes     bool
	tags      *tagVersions // the tag versions this instance has seen
	// healthy reports whether invalidations can arrive (the subscription is
	// up); nil when invalidation is off, which counts as healthy.
	healthy func() bool
}

// fillToken is what a reader remembers before it reads Redis.
type fillToken struct{ gen, epoch uint64 }

// newLocal returns the L1 tier, or nil when L1 is off. Every method of a
// nil *local is a no-op that misses, so that callers need no checks.
func newLocal[V any](cfg *config) (*local[V], error) {
	if cfg.l1Entries == 0 && cfg.l1Bytes == 0 {
		return nil, nil
	}
	l := &local[V]{maxTTL: cfg.l1TTL, outageTTL: cfg.l1OutageTTL, clock: otter.NewCoarseClock(time.Millisecond)}
	opts := &otter.Options[string, *entry[V]]{
		// The entry carries its own deadline, set by fill and set.
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, *entry[V]]) time.Duration {
			// l1Until is at most the L1 max TTL away; min keeps a huge one
			// from overflowing the nanoseconds.
			return time.Duration(min(e.Value.l1Until-l.now(), math.MaxInt64/1000)) * time.Microsecond
		}),
		Clock: l.clock,
	}
	if cfg.l1Bytes > 0 {
		l.bytes = true
		opts.MaximumWeight = uint64(cfg.l1Bytes)
		opts.Weigher = func(k string, e *entry[V]) uint32 {
			return uint32(min(len(k)+e.size+64, math.MaxUint32))
		}
	} else {
		opts.MaximumSize = cfg.l1Entries
	}
	c, err := otter.New(opts)
	if err != nil {
		l.clock.Stop()
		return nil, err
	}
	l.c = c
	tags, err := otter.New(&otter.Options[string, uint64]{MaximumSize: 100_000})
	if err != nil {
		l.close() // l.tags is still nil: close skips it
		return nil, err
	}
	l.tags = &tagVersions{m: tags}
	return l, nil
}

// now is L1's time in Unix µs (the precise clock when L1 is off).
func (l *local[V]) now() int64 {
	if l == nil {
		return nowMicro()
	}
	return l.clock.NowNano() / 1000
}

// limit is the cap on a new L1 entry's life: the L1 max TTL, or the
// outage TTL while invalidations cannot arrive.
func (l *local[V]) limit() time.Duration {
	if l == nil {
		return 0
	}
	if l.healthy != nil && !l.healthy() {
		return l.outageTTL
	}
	return l.maxTTL
}

func (l *local[V]) stripe(k string) *atomic.Uint64 {
	return &l.gens[xxhash.Sum64String(k)&uint64(len(l.gens)-1)]
}

// get returns the fresh L1 entry of k, counting the lookup. The caller
// has checked that L1 is on: this is the hot path, kept to one call into
// otter (peek is the same look without the count).
func (l *local[V]) get(k string) (*entry[V], bool) {
	e, ok := l.c.GetIfPresent(k)
	if !ok || !l.usable(e) {
		l.misses.Add()
		return nil, false
	}
	l.hits.Add()
	return e, true
}

// peek is get without counting: a second look within one read.
func (l *local[V]) peek(k string) (*entry[V], bool) {
	if l == nil {
		return nil, false
	}
	e, ok := l.c.GetIfPresent(k)
	if !ok || !l.usable(e) {
		return nil, false
	}
	return e, true
}

// usable reports whether the L1 entry e may be served: fresh, and each of
// its tags at the version it was loaded with.
func (l *local[V]) usable(e *entry[V]) bool {
	return l.clock.NowNano()/1000 < e.softExp && (len(e.tags) == 0 || l.tags.current(e.tags))
}

// token must be taken before the Redis call whose result may fill L1.
func (l *local[V]) token(k string) fillToken {
	if l == nil {
		return fillToken{}
	}
	return fillToken{gen: l.stripe(k).Load(), epoch: l.epoch.Load()}
}

// deadline is when an L1 copy of e must go: never after its logical expiry,
// never later than the L1 max TTL (or cap, while invalidations cannot arrive).
func (l *local[V]) deadline(e *entry[V], now int64, limit time.Duration) int64 {
	return min(e.softExp, now+min(l.maxTTL, limit).Microseconds())
}

// fill stores e, read or loaded after tok was taken, for k if nothing
// invalidated k since, for at most limit (see deadline). Its tags become
// versions this instance has seen.
func (l *local[V]) fill(k string, tok fillToken, e entry[V], limit time.Duration) {
	if l == nil {
		return
	}
	now := l.now()
	e.l1Until = l.deadline(&e, now, limit)
	if e.l1Until <= now {
		return
	}
	l.tags.observe(e.tags)
	g := l.stripe(k)
	p := new(entry[V]) // not &e: e would go to the heap on every call, L1 or not
	*p = e
	l.c.Compute(k, func(*entry[V], bool) (*entry[V], otter.ComputeOp) {
		if g.Load() != tok.gen || l.epoch.Load() != tok.epoch {
			return nil, otter.CancelOp
		}
		return p, otter.WriteOp
	})
}

// store keeps e, a value this instance has just written to Redis, for k,
// with tok taken before the Redis write. Redis's order of two writes of k
// cannot be seen from here, so store keeps e only if nothing touched k since
// tok, and otherwise drops k; either way it moves k's generation on.
//
//	writer A: tok=g          writer B (here or elsewhere): ...
//	          SET k=a                                      SET k=b
//	          store: gen still g? keep a, gen=g+1           store or message: gen!=tok, drop k
//
// Whichever of A and B stores second finds the generation moved and drops
// k, so L1 never keeps the write that Redis did not keep: after both return
// (and B's message arrives), L1 holds nothing older than Redis.
//
// With only (NewLocal: L1 is the only copy), store judges a versioned write
// as Redis would: one not newer than L1's is refused, and reported.
func (l *local[V]) store(k string, tok fillToken, e entry[V], only bool) (refused bool) {
	if l == nil {
		return false
	}
	now := l.now()
	e.l1Until = l.deadline(&e, now, l.limit())
	l.tags.observe(e.tags)
	g := l.stripe(k)
	p := new(entry[V]) // see fill
	*p = e
	l.c.Compute(k, func(old *entry[V], found bool) (*entry[V], otter.ComputeOp) {
		if found && p.version > 0 && (old.version > p.version || only && old.version == p.version) {
			refused = only
			return old, otter.CancelOp // a newer row version is here already
		}
		if !g.CompareAndSwap(tok.gen, tok.gen+1) || l.epoch.Load() != tok.epoch || p.l1Until <= now {
			g.Add(1)
			return nil, otter.InvalidateOp
		}
		return p, otter.WriteOp
	})
	return refused
}

// invalidate drops k and refuses fills of reads that started before.
func (l *local[V]) invalidate(k string) {
	if l == nil {
		return
	}
	l.stripe(k).Add(1)
	l.c.Invalidate(k)
}

// flush drops everything and refuses every fill in flight.
func (l *local[V]) flush() {
	if l == nil {
		return
	}
	l.epoch.Add(1)
	l.c.InvalidateAll()
}

// observeTags records tag versions seen in Redis or in a message.
func (l *local[V]) observeTags(tags []envelope.Tag) {
	if l != nil {
		l.tags.observe(tags)
	}
}

func (l *local[V]) close() {
	if l == nil {
		return
	}
	l.c.StopAllGoroutines()
	l.clock.Stop()
	if l.tags != nil {
		l.tags.close()
	}
}

// tagVersions is this instance's view of tag versions, for L1 hits: the
// newest version it has seen for each tag, from Redis reads, its own
// invalidations and other instances' messages. Versions only grow, so
// updates keep the maximum and a late, older observation cannot undo an
// invalidation. A tagged L1 entry is valid only if every tag is known at
// exactly its version; a tag evicted from this bounded table makes its
// entries L1 misses, which is safe.
type tagVersions struct {
	m *otter.Cache[string, uint64]
}

func (tv *tagVersions) observe(tags []envelope.Tag) {
	for _, t := range tags {
		tv.m.Compute(t.Name, func(old uint64, found bool) (uint64, otter.ComputeOp) {
			if found && old >= t.Version {
				return old, otter.CancelOp
			}
			return t.Version, otter.WriteOp
		})
	}
}

// current reports whether every tag of tags is known at its version.
func (tv *tagVersions) current(tags []envelope.Tag) bool {
	for _, t := range tags {
		if v, ok := tv.m.GetIfPresent(t.Name); !ok || v != t.Version {
			return false
		}
	}
	return true
}

func (tv *tagVersions) close() { tv.m.StopAllGoroutines() }

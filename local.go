package tiercache

import (
	"math"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/maypok86/otter/v2"
	"github.com/maypok86/otter/v2/stats"

	"github.com/tiercache/tiercache/internal/envelope"
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
// goroutine of its own) and counts hits and misses in otter's striped
// counters: a precise clock read or a shared atomic counter would each cost
// more than the lookup itself. An entry may therefore be served up to about
// a millisecond past its deadline.
type local[V any] struct {
	c      *otter.Cache[string, *entry[V]] // entries are immutable once stored
	clock  *otter.CoarseClock
	counts *stats.Counter
	hits   stripedCounter
	misses stripedCounter
	gens   [1024]atomic.Uint64
	epoch  atomic.Uint64
	maxTTL time.Duration
	bytes  bool
	// tagsCurrent reports whether an entry's tags are still at its versions
	// (set by the cache; see tagVersions).
	tagsCurrent func([]envelope.Tag) bool
}

// fillToken is what a reader remembers before it reads Redis.
type fillToken struct{ gen, epoch uint64 }

func newLocal[V any](cfg *config) (*local[V], error) {
	l := &local[V]{maxTTL: cfg.l1TTL, clock: otter.NewCoarseClock(time.Millisecond), counts: stats.NewCounter()}
	opts := &otter.Options[string, *entry[V]]{
		// The entry carries its own deadline, set by fill and set.
		ExpiryCalculator: otter.ExpiryWritingFunc(func(e otter.Entry[string, *entry[V]]) time.Duration {
			return time.Duration(e.Value.l1Until-l.now()) * time.Microsecond
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
	return l, nil
}

// now is L1's time in Unix µs.
func (l *local[V]) now() int64 { return l.clock.NowNano() / 1000 }

func (l *local[V]) stripe(k string) *atomic.Uint64 {
	return &l.gens[xxhash.Sum64String(k)&uint64(len(l.gens)-1)]
}

// get returns the fresh L1 entry of k. now is in Unix µs.
func (l *local[V]) get(k string, now int64) (*entry[V], bool) {
	e, ok := l.c.GetIfPresent(k)
	if !ok || !e.fresh(now) || (len(e.tags) > 0 && !l.tagsCurrent(e.tags)) {
		l.misses.add()
		return nil, false
	}
	l.hits.add()
	return e, true
}

// peek is get without counting: a second look within one read.
func (l *local[V]) peek(k string, now int64) (*entry[V], bool) {
	e, ok := l.c.GetIfPresent(k)
	if !ok || !e.fresh(now) || (len(e.tags) > 0 && !l.tagsCurrent(e.tags)) {
		return nil, false
	}
	return e, true
}

// token must be taken before the Redis read whose result may fill L1.
func (l *local[V]) token(k string) fillToken {
	return fillToken{gen: l.stripe(k).Load(), epoch: l.epoch.Load()}
}

// deadline is when an L1 copy of e must go: never after its logical expiry,
// never later than the L1 max TTL (or cap, while invalidations cannot arrive).
func (l *local[V]) deadline(e *entry[V], now int64, limit time.Duration) int64 {
	return min(e.softExp, now+min(l.maxTTL, limit).Microseconds())
}

// fill stores e for k if nothing invalidated k since tok was taken.
func (l *local[V]) fill(k string, tok fillToken, e entry[V], now int64, limit time.Duration) {
	e.l1Until = l.deadline(&e, now, limit)
	if e.l1Until <= now {
		return
	}
	g := l.stripe(k)
	l.c.Compute(k, func(*entry[V], bool) (*entry[V], otter.ComputeOp) {
		if g.Load() != tok.gen || l.epoch.Load() != tok.epoch {
			return nil, otter.CancelOp
		}
		return &e, otter.WriteOp
	})
}

// set replaces k's entry with a value this instance wrote (write-through).
// Bumping the generation first refuses any fill of an older read in flight.
func (l *local[V]) set(k string, e entry[V], now int64, limit time.Duration) {
	l.stripe(k).Add(1)
	e.l1Until = l.deadline(&e, now, limit)
	if e.l1Until <= now {
		l.c.Invalidate(k)
		return
	}
	l.c.Set(k, &e)
}

// invalidate drops k and refuses fills of reads that started before.
func (l *local[V]) invalidate(k string) {
	l.stripe(k).Add(1)
	l.c.Invalidate(k)
}

// flush drops everything and refuses every fill in flight.
func (l *local[V]) flush() {
	l.epoch.Add(1)
	l.c.InvalidateAll()
}

func (l *local[V]) close() {
	l.c.StopAllGoroutines()
	l.clock.Stop()
}

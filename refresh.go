package tiercache

import (
	"context"
	"math"

	"github.com/tiercache/tiercache/internal/flight"
)

// Early refresh (XFetch; Vattani, Chierichetti and Lowenstein, "Optimal
// Probabilistic Cache Stampede Prevention", VLDB 2015). On a hit with t
// left before the logical expiry, a value whose load took delta is
// refreshed in the background with probability exp(-t/(beta*delta)):
// almost never while t is many deltas, almost surely in the last delta.
// Spread this way over the readers of a hot key, about one of them
// refreshes it shortly before it expires, and nobody waits for a load.

// shouldRefreshEarly is XFetch's test: -delta*beta*ln(u) >= t for uniform
// u in (0, 1], which is u <= exp(-t/(beta*delta)).
func shouldRefreshEarly(u float64, t, delta int64, beta float64) bool {
	if beta == 0 || delta <= 0 {
		return false
	}
	if t <= 0 {
		return true
	}
	return u <= math.Exp(-float64(t)/(beta*float64(delta)))
}

// maybeEarlyRefresh starts a background refresh of a fresh hit when XFetch
// says so. The loader is adapted only then: a hit allocates nothing for it.
func (c *Cache[V]) maybeEarlyRefresh(key string, e *entry[V], now int64, load LoadFunc[V]) {
	if c.wantEarlyRefresh(e, now) {
		c.refreshAsync([]due{{key, e.writtenAt, true}}, single(load))
	}
}

// wantEarlyRefresh draws XFetch's dice for a fresh hit e.
func (c *Cache[V]) wantEarlyRefresh(e *entry[V], now int64) bool {
	t, delta := e.softExp-now, float64(e.delta)
	// Far from expiry the probability is below e^-40: skip the random draw
	// and the exponential, which would cost more than an L1 hit.
	if e.neg || c.cfg.beta == 0 || float64(t) > 40*c.cfg.beta*delta {
		return false
	}
	return shouldRefreshEarly(c.random(), t, int64(e.delta), c.cfg.beta)
}

// due is a key to refresh in the background: early (XFetch) or stale
// (within the stale-while-revalidate window), with the write time of the
// value served.
type due struct {
	key       string
	writtenAt int64
	early     bool
}

// maxRefreshBatch bounds the keys of one background refresh of a batch.
const maxRefreshBatch = 256

// refreshAsync reloads keys in the background, through the load core: a
// batch read's due keys with one call of its batch loader (per
// maxRefreshBatch keys), not one call per key. A key is skipped when this
// process already refreshes it, when writtenAt is no longer its latest
// write (someone refreshed it), or when another instance holds its lease;
// the whole refresh is skipped when WithMaxBackgroundRefreshes refreshes
// already run. Keys refreshed early count as EventEarlyRefresh once the
// loader is called.
func (c *Cache[V]) refreshAsync(keys []due, fn loader[V]) {
	for len(keys) > maxRefreshBatch {
		c.refreshAsync(keys[:maxRefreshBatch], fn)
		keys = keys[maxRefreshBatch:]
	}
	select {
	case c.refreshQ <- struct{}{}:
	default:
		return
	}
	var ks []*keyLoad[V]
	var calls []*flight.Call[entry[V]]
	early := 0
	for _, d := range keys {
		call, lead := c.flight.Begin(flightKey{flightBackground, d.key})
		if !lead {
			continue
		}
		ks = append(ks, &keyLoad[V]{key: d.key, vk: c.st.Layout.Value(d.key), notBefore: d.writtenAt})
		calls = append(calls, call)
		if d.early {
			early++
		}
	}
	if early > 0 {
		inner := fn.fn
		fn.fn = func(ctx context.Context, ks []string, out []loaded[V]) error {
			c.rec.eventN(EventEarlyRefresh, early)
			return inner(ctx, ks, out)
		}
	}
	if len(ks) == 0 || !c.goBackground(func() {
		defer func() { <-c.refreshQ }()
		c.runLoad(context.Background(), flightBackground, ks, calls, loadBackground, 0, fn)
	}) {
		for i, k := range ks {
			c.flight.End(flightKey{flightBackground, k.key}, calls[i], entry[V]{}, ErrClosed)
		}
		<-c.refreshQ
	}
}

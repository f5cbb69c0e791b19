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
// says so, with load or, for a batch read, bload. The loader is adapted only
// then: a hit allocates nothing for it.
func (c *Cache[V]) maybeEarlyRefresh(key string, e *entry[V], now int64, load LoadFunc[V], bload BatchLoadFunc[V]) {
	if !c.wantEarlyRefresh(e, now) {
		return
	}
	if load != nil {
		c.refreshAsync(key, e.writtenAt, true, single(load))
	} else {
		c.refreshAsync(key, e.writtenAt, true, batch(bload))
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

// refreshAsync reloads key in the background, through the load core. The
// refresh is skipped when writtenAt is no longer the latest write (someone
// refreshed it), when another instance holds the lease, when this process
// already refreshes the key, or when WithMaxBackgroundRefreshes refreshes
// already run. An early refresh that does call the loader counts as
// EventEarlyRefresh.
func (c *Cache[V]) refreshAsync(key string, writtenAt int64, early bool, fn loader[V]) {
	select {
	case c.refreshQ <- struct{}{}:
	default:
		return
	}
	fk := flightKey{flightBackground, key}
	call, lead := c.flight.Begin(fk)
	if !lead {
		<-c.refreshQ
		return
	}
	if !c.goBackground() {
		c.flight.End(fk, call, entry[V]{}, ErrClosed)
		<-c.refreshQ
		return
	}
	if early {
		inner := fn.fn
		fn.fn = func(ctx context.Context, ks []string, out []loaded[V]) error {
			c.rec.event(EventEarlyRefresh)
			return inner(ctx, ks, out)
		}
	}
	go func() {
		defer c.bg.Done()
		defer func() { <-c.refreshQ }()
		kl := &keyLoad[V]{key: key, vk: c.st.layout.Value(key)}
		c.runLoad(context.Background(), flightBackground, []*keyLoad[V]{kl}, []*flight.Call[entry[V]]{call}, loadBackground, writtenAt, fn)
	}()
}

package tiercache

import (
	"context"
	"math"
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
// says so.
func (c *Cache[V]) maybeEarlyRefresh(key string, e *entry[V], now int64, load LoadFunc[V]) {
	if c.wantEarlyRefresh(e, now) {
		c.refreshAsync(key, load, e.writtenAt, true)
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

// refreshAsync reloads key in the background, through the per-process
// flight and the lease. The refresh is skipped when writtenAt is no longer
// the latest write (someone refreshed it), when another instance holds the
// lease, or when WithMaxBackgroundRefreshes refreshes already run. An early
// refresh that does call the loader counts as EventEarlyRefresh.
func (c *Cache[V]) refreshAsync(key string, load LoadFunc[V], writtenAt int64, early bool) {
	select {
	case c.refreshQ <- struct{}{}:
	default:
		return
	}
	if !c.goBackground() {
		<-c.refreshQ
		return
	}
	go func() {
		defer c.bg.Done()
		defer func() { <-c.refreshQ }()
		// The flight key differs from reads', so that a read never waits
		// for a refresh it did not ask for; two refreshes of one key in one
		// process still share one load.
		counted := load
		if early {
			counted = func(ctx context.Context) (V, error) {
				c.rec.event(EventEarlyRefresh)
				return load(ctx)
			}
		}
		_, _ = c.shared(context.Background(), "\x00bg\x00"+key, func(ctx context.Context) (entry[V], error) {
			if !c.cfg.lease {
				return c.loadUnleased(ctx, key, counted, true)
			}
			return c.loadLeased(ctx, key, counted, leaseBackground, writtenAt)
		})
	}()
}

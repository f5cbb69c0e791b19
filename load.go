package tiercache

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/tiercache/tiercache/internal/flight"
	"github.com/tiercache/tiercache/internal/keys"
)

// LoadFunc loads the value of one key from the source of truth. It returns
// [ErrNotFound] (or an error wrapping it) when the record does not exist.
// It runs on a context detached from the callers that wait for it, bounded
// by [WithLoadTimeout] and by [Cache.Close].
type LoadFunc[V any] func(ctx context.Context) (V, error)

// GetOrLoad returns the value of key from L1, Redis, or, when neither has a
// fresh one, from load, and caches what load returns.
//
// Concurrent callers of one key in one process share one call of load; a
// caller whose ctx ends returns ctx.Err() at once while the load goes on
// for the others. Across processes, the instance that misses first takes a
// lease in Redis and loads; the others wait for its value instead of
// loading too. Only the loader's own errors are returned: when Redis fails,
// the read goes to load and nothing is cached.
//
// When load returns [ErrNotFound], the key is cached as not found for the
// negative TTL and GetOrLoad returns ErrNotFound. A loader that panics makes
// every waiter get a *[PanicError] (errors.Is [ErrLoaderPanic]).
func (c *Cache[V]) GetOrLoad(ctx context.Context, key string, load LoadFunc[V]) (V, error) {
	var zero V
	if err := c.check(key); err != nil {
		return zero, err
	}
	if load == nil {
		return zero, ErrNilLoader
	}
	if e, ok := c.getL1(key); ok {
		c.maybeEarlyRefresh(key, e, c.l1.now(), load)
		return e.result()
	}
	e, err := c.readThrough(ctx, key, load)
	if err != nil {
		return zero, err
	}
	if now := nowMicro(); e.fresh(now) {
		c.maybeEarlyRefresh(key, &e, now, load)
	}
	return e.result()
}

// readThrough reads key from Redis and, on a miss, loads it, coalescing
// both per key in this process: a hot key that misses L1 costs one GET per
// process, not one per caller.
//
// The leader of the flight reads Redis on its own goroutine, with its own
// context (bounded by the read timeout): a hit, the common case, costs no
// goroutine and no detached context. Only a miss hands the flight to a
// detached goroutine for the lease and the loader, so that the load goes on
// for the waiters if the leader leaves. If the leader's context ended during
// the read, the detached goroutine reads again for the others.
func (c *Cache[V]) readThrough(ctx context.Context, key string, load LoadFunc[V]) (entry[V], error) {
	call, lead := c.flight.Begin(key)
	if !lead {
		c.rec.event(EventCoalesced)
		return call.Wait(ctx)
	}
	e, found, err := c.getL2(ctx, key)
	if err == nil && found {
		now := nowMicro()
		switch {
		case e.fresh(now):
			c.flight.End(key, call, e, nil)
			return e, nil
		case c.withinSWR(&e, now):
			c.rec.event(EventStaleServed)
			c.refreshAsync(key, load, e.writtenAt, false)
			c.flight.End(key, call, e, nil)
			return e, nil
		}
	}
	reread := ctx.Err() != nil
	// Redis failed the read (not the caller, whose context is live): load
	// without the lease and without caching, rather than spend more
	// timeouts on a sick Redis.
	sick := err != nil && !reread
	return c.runFlight(ctx, key, call, func(ctx context.Context) (entry[V], error) {
		if reread {
			if e, found, err := c.getL2(ctx, key); err == nil && found && e.fresh(nowMicro()) {
				return e, nil
			}
		}
		if sick {
			return c.loadAndFill(ctx, key, load, "-", nil, 0)
		}
		return c.loadKey(ctx, key, load, false)
	})
}

// shared runs fn once per key in this process for all concurrent callers
// (internal/flight), on a context detached from every caller: each caller
// waits with its own ctx, and one leaving does not cancel the load of the
// others. A panic in fn reaches every waiter as a *PanicError, and nothing
// stays locked: the flight ends either way.
func (c *Cache[V]) shared(ctx context.Context, flightKey string, fn func(context.Context) (entry[V], error)) (entry[V], error) {
	call, lead := c.flight.Begin(flightKey)
	if !lead {
		c.rec.event(EventCoalesced)
		return call.Wait(ctx)
	}
	return c.runFlight(ctx, flightKey, call, fn)
}

// runFlight runs fn in the background for call, the flight of flightKey
// that the caller leads, ends the flight with its result, and waits for it
// with the caller's ctx.
func (c *Cache[V]) runFlight(ctx context.Context, flightKey string, call *flight.Call[entry[V]], fn func(context.Context) (entry[V], error)) (entry[V], error) {
	if !c.goBackground() {
		c.flight.End(flightKey, call, entry[V]{}, ErrClosed)
		return entry[V]{}, ErrClosed
	}
	go func() {
		defer c.bg.Done()
		e, err := c.runDetached(ctx, fn)
		c.flight.End(flightKey, call, e, err)
	}()
	return call.Wait(ctx)
}

// runDetached runs fn on a context detached from the leader's parent (see
// detached) and turns a panic into a *PanicError that keeps the value and
// the stack.
func (c *Cache[V]) runDetached(parent context.Context, fn func(context.Context) (entry[V], error)) (e entry[V], err error) {
	ctx, cancel := c.detached(parent)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			perr, ok := p.(*PanicError) // re-raised by callLoader
			if !ok {
				perr = &PanicError{Value: p, Stack: stack()}
			}
			e, err = entry[V]{}, perr
		}
	}()
	return fn(ctx)
}

// detached returns the context a load runs on: the values of parent (the
// leading caller's trace, say) without its cancellation, the load timeout,
// and cancelled by Close.
func (c *Cache[V]) detached(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(parent), c.cfg.loadTimeout)
	stop := context.AfterFunc(c.life, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

func (c *Cache[V]) withinSWR(e *entry[V], now int64) bool {
	return c.cfg.swr > 0 && now < e.softExp+c.cfg.swr.Microseconds()
}

func (c *Cache[V]) withinSIE(e *entry[V], now int64) bool {
	return c.cfg.sie > 0 && now < e.softExp+c.cfg.sie.Microseconds()
}

// loadKey is the body of a coalesced load. With force (Refresh) it
// reloads even when a fresh value exists.
//
// Why L1 is checked again: caller A misses L1 and Redis, and is about to
// enter the flight; meanwhile caller B's flight for the same key loads,
// fills and ends. A then starts a new flight and, without this check,
// would load a second time a value that is already cached. Redis is checked
// again too, by the Acquire script, which returns a fresh value instead of
// a lease.
func (c *Cache[V]) loadKey(ctx context.Context, key string, load LoadFunc[V], force bool) (entry[V], error) {
	now := nowMicro()
	if !force && c.l1 != nil {
		if e, ok := c.l1.peek(key, now); ok {
			return *e, nil
		}
	}
	if !c.cfg.lease {
		return c.loadUnleased(ctx, key, load, force)
	}
	mode := leaseRead
	if force {
		mode = leaseRefresh
	}
	return c.loadLeased(ctx, key, load, mode, 0)
}

// loadUnleased loads and writes the value without a lease: plain
// cache-aside, for WithoutLease.
func (c *Cache[V]) loadUnleased(ctx context.Context, key string, load LoadFunc[V], force bool) (entry[V], error) {
	var stale *entry[V]
	if !force {
		e, found, err := c.getL2(ctx, key)
		if err == nil && found {
			if e.fresh(nowMicro()) {
				return e, nil
			}
			stale = &e
		}
	}
	return c.loadAndFill(ctx, key, load, "", stale, nowMicro())
}

// loadLeased is the leased read-through: take the key's lease in Redis, or
// wait for whoever holds it. Redis failures end the lease protocol and fall
// back to calling the loader without caching, so that a sick Redis never
// fails a read.
//
// In the refresh modes the value is reloaded even when fresh, unless it was
// written after notBefore (someone else refreshed it meanwhile); a
// background refresh gives up when another instance holds the lease.
func (c *Cache[V]) loadLeased(ctx context.Context, key string, load LoadFunc[V], mode leaseMode, notBefore int64) (entry[V], error) {
	force := mode != leaseRead
	vk := c.layout.Value(key)
	lk := keys.Lease(vk)
	token := newToken()
	wait := leaseBackoff{}
	var tok fillToken
	for attempt := 0; ; attempt++ {
		if c.l1 != nil {
			tok = c.l1.token(key)
		}
		res, err := c.acquire(ctx, vk, lk, token, force, notBefore)
		if err != nil {
			// The script may have run and taken the lease although its
			// reply was lost (a timeout): give it back, or the other
			// instances would wait for a load nobody does.
			c.release(vk, token)
			if ctx.Err() != nil {
				return entry[V]{}, ctx.Err()
			}
			// Redis is sick: serve the read from the loader, cache nothing.
			return c.loadAndFill(ctx, key, load, "-", nil, 0)
		}
		var e entry[V]
		found := c.decodeStored(key, vk, res.value, &e)
		if found && len(e.tags) > 0 {
			found = c.validTags(ctx, []*entry[V]{&e})[0]
		}
		now := nowMicro()
		if res.state == acquireFresh && !found {
			// The script judged the bytes fresh by their header, but they do
			// not decode (corrupt, foreign, another codec) or one of their
			// tags was invalidated. Take the lease regardless of freshness
			// (and of the header's write time, which may be garbage too),
			// after a pause, so that this cannot spin.
			force, notBefore = true, 0
			if err := wait.sleep(ctx, 0); err != nil {
				return entry[V]{}, err
			}
			continue
		}
		switch {
		case res.state == acquireFresh && found:
			if attempt > 0 {
				c.rec.event(EventLeaseWait)
			}
			if c.l1 != nil {
				c.l1.fill(key, tok, e, now, c.limitL1())
			}
			return e, nil
		case res.state == acquireOwned:
			var stale *entry[V]
			if found {
				stale = &e
			}
			return c.loadAndFill(ctx, key, load, token, stale, res.at)
		case found && !force && c.withinSWR(&e, now):
			// Someone else is refreshing it; the stale value will do.
			c.rec.event(EventStaleServed)
			return e, nil
		}
		if mode == leaseBackground {
			return entry[V]{}, errLeaseBusy
		}
		if c.waitedTooLong(ctx) {
			// The holder is slow or gone and half the load budget is spent:
			// load without caching rather than fail the read.
			return c.loadAndFill(ctx, key, load, "-", nil, 0)
		}
		// Another instance holds the lease: wait for its value. If it dies,
		// its lease expires and the next acquire takes it over.
		if err := wait.sleep(ctx, res.leaseTTL); err != nil {
			return entry[V]{}, err
		}
	}
}

// waitedTooLong reports whether a waiter for another instance's lease has
// used half of its load budget: then it loads itself, without caching, so
// that its read cannot fail for waiting (the holder still fills).
func (c *Cache[V]) waitedTooLong(ctx context.Context) bool {
	deadline, ok := ctx.Deadline()
	return ok && time.Until(deadline) < c.cfg.loadTimeout/2
}

// loadAndFill calls the loader and caches its result. token is the lease
// token of a leased fill, "" for an unleased write, "-" for no write at
// all (Redis failed). stale is the value already stored, if any, to serve
// when the loader fails within the stale-if-error window. since is when the
// load began (Unix µs, the server's clock when leased): a tag invalidated
// after it refuses the fill.
func (c *Cache[V]) loadAndFill(ctx context.Context, key string, load LoadFunc[V], token string, stale *entry[V], since int64) (entry[V], error) {
	leased := token != "" && token != "-"
	meta := &loadMeta{cfg: setConfig{ttl: c.cfg.ttl}}
	vk := c.layout.Value(key)
	v, delta, err := callLoader(c, ctx, meta, "load", load, func() {
		if leased {
			c.release(vk, token)
		}
	})
	notFound := errors.Is(err, ErrNotFound)
	if err != nil && !notFound {
		if leased {
			c.release(vk, token)
		}
		if stale != nil && c.withinSIE(stale, nowMicro()) {
			c.rec.event(EventStaleOnError)
			c.log.Warn("tiercache: loader failed; serving a stale value", "key", key, "err", err)
			return *stale, nil
		}
		return entry[V]{}, err
	}
	sc := meta.get()
	now := time.Now()
	ttl := sc.ttl
	if notFound {
		ttl = c.cfg.negativeTTL
	}
	e := entry[V]{val: v, neg: notFound, writtenAt: now.UnixMicro(), delta: uint32(min(delta.Microseconds(), 1<<32-1))}
	e.softExp = now.UnixMicro() // until cached: returned, never reused
	tagNames, tagErr := checkTags(sc.tags)
	if tagErr != nil {
		c.log.Warn("tiercache: loaded value not cached", "key", key, "err", tagErr)
	}
	if ttl <= 0 || sc.noCache || token == "-" || tagErr != nil {
		if leased {
			c.release(vk, token)
		}
		return e, nil
	}
	softExp := now.Add(c.jitter(ttl))
	redisTTL := c.redisTTL(softExp.Sub(now))
	tags, staleTags, err := c.readTagVersions(ctx, tagNames, since, redisTTL)
	if err != nil || staleTags {
		// A tag was invalidated while the loader ran (or cannot be read):
		// what it loaded may predate the change. Return it, cache nothing.
		if staleTags {
			c.rec.event(EventFillRefused)
		}
		if leased {
			c.release(vk, token)
		}
		return e, nil
	}
	b, err := c.vc.encode(v, notFound, keys.Hash(vk), now, softExp, delta, tags)
	if err != nil {
		// Too large or not encodable: the caller still gets the value.
		c.log.Warn("tiercache: loaded value not cached", "key", key, "err", err)
		if leased {
			c.release(vk, token)
		}
		return e, nil
	}
	e.softExp = softExp.UnixMicro()
	e.tags = tags
	e.size = len(b)
	var tok fillToken
	if c.l1 != nil {
		tok = c.l1.token(key)
	}
	written, err := c.fill(ctx, vk, token, b, redisTTL)
	if err == nil && !written {
		c.rec.event(EventFillRefused)
	}
	if written && c.l1 != nil {
		c.tagv.observe(tags)
		c.l1.fill(key, tok, e, now.UnixMicro(), c.limitL1())
	}
	return e, nil
}

// callLoader calls a loader in a span, times and counts it. If the loader
// panics, the span ends, the load is counted as failed and onPanic runs
// (to give the lease back) before the panic goes on to runDetached.
func callLoader[V, R any](c *Cache[V], ctx context.Context, meta *loadMeta, op string, load func(context.Context) (R, error), onPanic func()) (v R, delta time.Duration, err error) {
	lctx, end := c.rec.span(context.WithValue(ctx, loadMetaKey{}, meta), op)
	start := time.Now()
	defer func() {
		if p := recover(); p != nil {
			perr := &PanicError{Value: p, Stack: stack()}
			end(perr)
			c.rec.load(time.Since(start), perr)
			onPanic()
			panic(perr)
		}
	}()
	v, err = load(lctx)
	delta = time.Since(start)
	end(err)
	if errors.Is(err, ErrNotFound) {
		c.rec.load(delta, nil)
	} else {
		c.rec.load(delta, err)
	}
	return v, delta, err
}

// loadMeta carries what a loader says about its result through [LoadOptions].
type loadMeta struct {
	mu  sync.Mutex
	cfg setConfig
}

type loadMetaKey struct{}

func (m *loadMeta) get() setConfig {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg
}

// LoadOptions lets a loader set how its result is cached: [WithTTL] for
// its own TTL, [NoCache] to return a value without caching it. Call it
// with the ctx the loader was given; elsewhere it does nothing.
func LoadOptions(ctx context.Context, opts ...SetOption) {
	m, ok := ctx.Value(loadMetaKey{}).(*loadMeta)
	if !ok {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range opts {
		o(&m.cfg)
	}
}

// Refresh reloads key now, through the lease, whether or not it is cached
// and fresh, and returns the new value. When another instance is already
// loading the key, Refresh waits for that load's value instead.
func (c *Cache[V]) Refresh(ctx context.Context, key string, load LoadFunc[V]) (V, error) {
	var zero V
	if err := c.check(key); err != nil {
		return zero, err
	}
	if load == nil {
		return zero, ErrNilLoader
	}
	started := nowMicro()
	r, err := c.shared(ctx, "\x00refresh\x00"+key, func(ctx context.Context) (entry[V], error) {
		if !c.cfg.lease {
			return c.loadUnleased(ctx, key, load, true)
		}
		return c.loadLeased(ctx, key, load, leaseRefresh, started)
	})
	if err != nil {
		return zero, err
	}
	return r.result()
}

package tiercache

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/flight"
	"github.com/tiercache/tiercache/internal/keys"
	"github.com/tiercache/tiercache/internal/store"
)

// LoadFunc loads the value of one key from the source of truth. It returns
// [ErrNotFound] (or an error wrapping it) when the record does not exist.
// It runs on a context detached from the callers that wait for it, bounded
// by [WithLoadTimeout] and by [Cache.Close]. It must not call Close, which
// waits for it.
type LoadFunc[V any] func(ctx context.Context) (V, error)

// BatchLoadFunc loads the values of keys from the source of truth, in one
// call. It returns the values it found; a key it does not return is cached
// as not found (for the negative TTL), also when it returns [ErrNotFound]
// (wrapped or not: none of the keys it did not return exists, which is a
// result, not an error). Keys it returns that were not asked for are
// ignored. keys is the loader's own: it may sort it, change it or keep it.
// Like [LoadFunc], it runs on a context detached from the callers, bounded
// by the load timeout, and may call [LoadOptions].
type BatchLoadFunc[V any] func(ctx context.Context, keys []string) (map[string]V, error)

// GetOrLoad returns the value of key from L1, Redis, or, when neither has a
// fresh one, from load, and caches what load returns.
//
// Concurrent callers of one key in one process share one call of load; a
// caller whose ctx ends returns ctx.Err() at once while the load goes on
// for the others. Across processes, the instance that misses first takes a
// lease in Redis and loads; the others wait for its value, for as long as
// the holder may take (its lease TTL and a load timeout), instead of
// loading too. Only the loader's own errors are returned: when Redis fails,
// the read goes to load, and the value is kept in L1 (when L1 is on) for
// the L1 outage TTL only.
//
// When load returns [ErrNotFound], the key is cached as not found for the
// negative TTL and GetOrLoad returns ErrNotFound. A loader that panics (or
// calls runtime.Goexit) makes every waiter get a *[PanicError] (errors.Is
// [ErrLoaderPanic]); nothing is cached and nothing stays locked. A value
// that cannot be cached (too large, an invalid tag) is returned, logged
// and counted as [EventNotCached].
func (c *Cache[V]) GetOrLoad(ctx context.Context, key string, load LoadFunc[V]) (V, error) {
	var zero V
	if err := c.checkLoad(ctx, key, load); err != nil {
		return zero, err
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
// context: a hit, the common case, costs no goroutine and no detached
// context. Only a miss hands the flight to the load core in the
// background, so that the load goes on for the waiters if the leader
// leaves. (If the leader's context ended during the read, the core's
// acquire reads Redis again for the others.)
func (c *Cache[V]) readThrough(ctx context.Context, key string, load LoadFunc[V]) (entry[V], error) {
	fk := flightKey{flightRead, key}
	heard := c.inv.hearing() // before the flight can take in callers
	call, lead := c.flight.Begin(fk)
	if !lead {
		c.rec.event(EventCoalesced)
		return call.Wait(ctx)
	}
	if c.cfg.lease && c.cfg.swr == 0 && c.odds.low() {
		// Redis rarely has what this instance reads through: skip the GET,
		// the load core's Acquire returns the value if it is fresh (see
		// readOdds). (With stale-while-revalidate on, the GET's stale value
		// is served at once while it refreshes, which Acquire cannot do.
		// Without the lease there is no Acquire: the GET is the only look.)
		kl := &keyLoad[V]{key: key, vk: c.st.Layout.Value(key), countL2: true, heard: heard}
		c.lead(ctx, flightRead, []*keyLoad[V]{kl}, []*flight.Call[entry[V]]{call}, loadRead, 0, single(load))
		return call.Wait(ctx)
	}
	ended := false
	defer func() {
		if ended {
			return
		}
		// The read panicked (an Observer, a codec) or called
		// runtime.Goexit: end the flight all the same, with the panic as
		// its waiters' *PanicError, and let the panic go on up this
		// caller's stack.
		p := recover()
		perr := &PanicError{Value: errReadAborted, Stack: debug.Stack()}
		if p != nil {
			perr = asPanicError(p)
		}
		c.flight.End(fk, call, entry[V]{}, perr)
		if p != nil {
			panic(p)
		}
	}()
	e, found, err := c.getL2(ctx, key)
	now := nowMicro()
	if err == nil {
		c.odds.observe(found && e.fresh(now))
	}
	if err == nil && found && (e.fresh(now) || within(&e, now, c.cfg.swr)) {
		if !e.fresh(now) {
			c.rec.event(EventStaleServed)
			c.refreshAsync([]due{{key, e.writtenAt, false}}, single(load))
		}
		ended = true
		c.flight.End(fk, call, e, nil)
		return e, nil
	}
	kl := &keyLoad[V]{key: key, vk: c.st.Layout.Value(key), heard: heard}
	if err == nil && found {
		kl.stale = &e
	}
	mode := loadRead
	if err != nil && ctx.Err() == nil {
		// Redis failed the read (not the caller, whose context is live):
		// load without the lease rather than spend more timeouts on a sick
		// Redis, and keep the value in L1 only.
		mode = loadOutage
	}
	ended = true
	c.lead(ctx, flightRead, []*keyLoad[V]{kl}, []*flight.Call[entry[V]]{call}, mode, 0, single(load))
	return call.Wait(ctx)
}

// readOdds estimates how often Redis has a fresh value for a key that
// readThrough asks it for: an exponentially weighted average of those
// reads (and of the acquires that stand in for them), in 1/oddsOne. When
// the odds are low, readThrough skips the GET and goes straight to the
// load core, whose Acquire returns the value if it is fresh: a miss costs
// two round trips (Acquire, Fill) instead of three, a hit one script
// instead of one GET. Low odds are the rule for a single instance with
// L1: L1 and Redis hold a value for the same TTL, so they expire together
// (3-12 % of its L1 misses found a value in Redis on the realistic
// workload, docs/PERFORMANCE.md); instances sharing Redis find the values
// the others loaded, and keep their GETs. Updates may be lost under
// contention (a load and a store, not a compare-and-swap): an estimate
// needs no more.
type readOdds struct{ v atomic.Int64 }

const oddsOne = 1024

// low reports odds under one half: a GET then more often costs a round
// trip than saves a script.
func (o *readOdds) low() bool { return o.v.Load() < oddsOne/2 }

func (o *readOdds) observe(hit bool) {
	var x int64
	if hit {
		x = oddsOne
	}
	old := o.v.Load()
	o.v.Store(old + (x-old)/16)
}

// GetOrLoadMany returns the values of keys: from L1, then from Redis in one
// round trip per node, then from one call of load with only the keys still
// missing, whose results are written back in one round trip per node
// (through the lease, as [Cache.GetOrLoad] does for one key). Keys that
// load does not return are cached as not found and are absent from the
// map, as are keys already cached as not found.
//
// Keys that another call in this process is loading (a GetOrLoad or another
// batch) are waited for, not loaded again. A loader error is returned with
// the values found so far; nothing from the failed load is cached.
func (c *Cache[V]) GetOrLoadMany(ctx context.Context, keys []string, load BatchLoadFunc[V]) (map[string]V, error) {
	if load == nil {
		return nil, ErrNilLoader
	}
	var refresh []due
	defer func() {
		if len(refresh) > 0 {
			c.refreshAsync(refresh, batch(load))
		}
	}()
	out, rest, err := c.manyFromL1(ctx, keys, &refresh)
	if err != nil || len(rest) == 0 {
		return out, err
	}
	// Keys whose node failed the read are loaded as in an outage (see
	// readThrough); the others as usual.
	var missing, outage []*keyLoad[V]
	es, found, errs, err := c.getManyL2(ctx, rest)
	if err != nil && ctx.Err() != nil {
		return out, ctx.Err()
	}
	now := nowMicro()
	for i, k := range rest {
		failed := errs != nil && errs[i] != nil
		if !failed && found[i] {
			e := &es[i]
			fresh := e.fresh(now)
			if fresh || within(e, now, c.cfg.swr) {
				if !e.neg {
					out[k] = e.val
				}
				if !fresh {
					c.rec.event(EventStaleServed)
					refresh = append(refresh, due{k, e.writtenAt, false})
				} else if c.wantEarlyRefresh(e, now) {
					refresh = append(refresh, due{k, e.writtenAt, true})
				}
				continue
			}
		}
		kl := &keyLoad[V]{key: k, vk: c.st.Layout.Value(k), outage: failed}
		switch {
		case failed:
			outage = append(outage, kl)
		case found[i]:
			kl.stale = &es[i]
			fallthrough
		default:
			missing = append(missing, kl)
		}
	}
	missing = append(missing, outage...)
	if len(missing) == 0 {
		return out, nil
	}
	// Claim the read flights of the missing keys: lead those nobody in this
	// process is loading, in one background load, and wait for all.
	calls := make([]*flight.Call[entry[V]], len(missing))
	var lead []*keyLoad[V]
	var leadCalls []*flight.Call[entry[V]]
	heard := c.inv.hearing()
	coalesced := 0
	for i, k := range missing {
		k.heard = heard
		call, leader := c.flight.Begin(flightKey{flightRead, k.key})
		if calls[i] = call; leader {
			lead, leadCalls = append(lead, k), append(leadCalls, call)
		} else {
			coalesced++
		}
	}
	// Two loads at most: the keys read as usual, and those of failed nodes
	// (missing lists them last, so lead does too).
	n := len(lead)
	for n > 0 && lead[n-1].outage {
		n--
	}
	if n > 0 {
		c.lead(ctx, flightRead, lead[:n], leadCalls[:n], loadRead, 0, batch(load))
	}
	if n < len(lead) {
		c.lead(ctx, flightRead, lead[n:], leadCalls[n:], loadOutage, 0, batch(load))
	}
	// Told only now that the flights it leads are the load core's: an
	// Observer that panicked while some were claimed and not yet led would
	// leave them open for good.
	c.rec.eventN(EventCoalesced, coalesced)
	var firstErr error
	for i, k := range missing {
		e, err := calls[i].Wait(ctx)
		switch {
		case err == nil:
			if !e.neg {
				out[k.key] = e.val
			}
		case errors.Is(err, ErrNotFound):
		case ctx.Err() != nil:
			return out, ctx.Err()
		case firstErr == nil:
			firstErr = err
		}
	}
	return out, firstErr
}

// Refresh reloads key now, through the lease, whether or not it is cached
// and fresh, and returns the new value. When the value is written to Redis,
// the other instances are told to drop their L1 copies, as by a Set,
// before Refresh returns; a value that cannot be cached, or one kept in L1
// only while Redis fails, leaves them as they are. When another instance
// is already loading the key, Refresh waits for that load's value instead
// (whose fill tells no one). A Refresh that starts after a write of key
// never joins one that started before.
func (c *Cache[V]) Refresh(ctx context.Context, key string, load LoadFunc[V]) (V, error) {
	var zero V
	if err := c.checkLoad(ctx, key, load); err != nil {
		return zero, err
	}
	started := nowMicro()
	fk := flightKey{flightRefresh, key}
	heard := c.inv.hearing()
	call, lead := c.flight.Begin(fk)
	if lead {
		kl := &keyLoad[V]{key: key, vk: c.st.Layout.Value(key), heard: heard, announce: true}
		c.lead(ctx, flightRefresh, []*keyLoad[V]{kl}, []*flight.Call[entry[V]]{call}, loadRefresh, started, single(load))
	} else {
		c.rec.event(EventCoalesced)
	}
	e, err := call.Wait(ctx)
	if err != nil {
		return zero, err
	}
	return e.result()
}

func (c *Cache[V]) checkLoad(ctx context.Context, key string, load LoadFunc[V]) error {
	if load == nil {
		return ErrNilLoader
	}
	return c.check(ctx, key)
}

// --- Flights ---

// flightKind keeps apart the flights of one key that must not be shared: a
// read never waits for a background refresh it did not ask for, nor a
// Refresh for a read's load. Being part of the key (rather than a prefix
// of a string) no user key can share another's flight.
type flightKind uint8

const (
	flightRead flightKind = iota
	flightRefresh
	flightBackground
)

type flightKey struct {
	kind flightKind
	key  string
}

// forget makes the next load of key, of every kind, start anew: a read that
// begins after a write must not get the result of a load that began before.
func (c *Cache[V]) forget(key string) {
	for kind := flightRead; kind <= flightBackground; kind++ {
		c.flight.Forget(flightKey{kind, key})
	}
}

// lead runs the load of ks, whose flights of kind the caller leads, in the
// background, on a context detached from parent, and ends every flight.
func (c *Cache[V]) lead(parent context.Context, kind flightKind, ks []*keyLoad[V], calls []*flight.Call[entry[V]], mode loadMode, notBefore int64, fn loader[V]) {
	if !c.goBackground(func() { c.runLoad(parent, kind, ks, calls, mode, notBefore, fn) }) {
		for i, k := range ks {
			c.flight.End(flightKey{kind, k.key}, calls[i], entry[V]{}, ErrClosed)
		}
	}
}

// runLoad runs the load core and then ends the flights of ks with their
// results, whatever happened: a loader (or a decoder, an Observer) that
// panicked or called runtime.Goexit must not leave a key's flight open for
// good. As in x/sync/singleflight, two defers tell the two apart: a panic
// is recovered by the inner one, a Goexit runs both without returning.
func (c *Cache[V]) runLoad(parent context.Context, kind flightKind, ks []*keyLoad[V], calls []*flight.Call[entry[V]], mode loadMode, notBefore int64, fn loader[V]) {
	ctx, cancel := c.detached(parent)
	// The worker may come from an earlier load: take the leader's profiler
	// labels (pprof.Do), not that load's.
	pprof.SetGoroutineLabels(ctx)
	var abort error = &PanicError{Value: errGoexit}
	defer func() {
		cancel()
		for i, k := range ks {
			if !k.settled {
				k.e, k.err = entry[V]{}, abort
			}
			c.flight.End(flightKey{kind, k.key}, calls[i], k.e, k.err)
		}
	}()
	func() {
		defer func() {
			if p := recover(); p != nil {
				abort = asPanicError(p)
			}
		}()
		c.load(ctx, ks, mode, notBefore, fn)
		abort = errUnsettled // no key should be left unsettled on return
	}()
}

// detached returns the context a load runs on: the values of parent (the
// leading caller's trace, say) without its cancellation, and cancelled by
// Close, with ErrClosed as the cause: what the load's waiters get (see
// closing). The loader's call gets its own timeout (see callLoader); the
// wait for another instance's lease has its own bound (see leaseWait).
func (c *Cache[V]) detached(parent context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancelCause(context.WithoutCancel(parent))
	stop := context.AfterFunc(c.life, func() { cancel(ErrClosed) })
	return ctx, func() {
		stop()
		cancel(nil)
	}
}

// closing returns the error of a load that ctx's end cut short: ErrClosed,
// the cause Close gave it, rather than a bare context.Canceled that a
// caller could not tell from its own.
func closing(ctx context.Context) error { return context.Cause(ctx) }

var (
	// errGoexit is the Value of the PanicError of a loader that called
	// runtime.Goexit.
	errGoexit    = errors.New("tiercache: the loader called runtime.Goexit")
	errUnsettled = errors.New("tiercache: internal error: a load left a key unsettled")
	// errReadAborted is the Value of the PanicError of a read that led a
	// flight and called runtime.Goexit.
	errReadAborted = errors.New("tiercache: the read that led this load called runtime.Goexit")
	// errLeaseBusy ends a background refresh whose lease another instance holds.
	errLeaseBusy = errors.New("tiercache: lease held by another instance")
)

// --- The load core ---

// keyLoad is one key's part in a load, and its result.
type keyLoad[V any] struct {
	key, vk string
	// stale is the stored value, served if the loader fails within the
	// stale-if-error window.
	stale *entry[V]
	tok   fillToken // L1's token, taken before the Redis call that may fill it
	token string    // our lease token (made on the first acquire, kept for retries)
	lks   []string  // the keys of its lease scripts, made with the token
	owned bool      // the lease is ours and not yet filled or given back
	// awaited is the token of the other instance's lease it waits for:
	// once that lease ends (filled, or ended by a Delete), what its holder
	// loaded is handed to this read if no fresh value is there (see
	// keys.Acquire), provided the flight has heard every write since it
	// began: heard is the subscription's epoch then (see hearing).
	awaited string
	heard   uint64
	force   bool // lease it even if it looks fresh: its bytes do not decode
	// notBefore, for a background refresh: a value written after it (Unix
	// µs) was refreshed by someone else already.
	notBefore int64
	// outage: its node failed the read; it is loaded for L1 only.
	outage bool
	// countL2: no GET was sent for it (see readOdds), so its acquire is
	// its Redis lookup, counted as one.
	countL2 bool
	// announce: a Refresh, which replaces a value other L1s may hold: once
	// filled, it tells them to drop it, as a Set does.
	announce bool

	e       entry[V]
	err     error
	settled bool
}

func (k *keyLoad[V]) settle(e entry[V], err error) {
	k.e, k.err, k.settled = e, err, true
}

// fail settles each of ks with err.
func fail[V any](ks []*keyLoad[V], err error) {
	for _, k := range ks {
		k.settle(entry[V]{}, err)
	}
}

// loadMode is what a load is for.
type loadMode uint8

const (
	loadRead       loadMode = iota // a read: load if missing or stale; wait for a holder
	loadRefresh                    // Refresh: load even if fresh; wait for a holder
	loadBackground                 // an early or stale refresh: load even if fresh; never wait
	loadOutage                     // Redis failed the read: load, keep the value in L1 only
)

// fillMode is where a loaded value goes.
type fillMode uint8

const (
	fillLeased fillMode = iota // Redis, by compare-and-set on our lease (Fill); then L1
	fillPlain                  // Redis by SET (WithoutLease); then L1
	fillOutage                 // L1 only, for the outage TTL: Redis failed
	fillNone                   // nowhere: a waiter that gave up on a slow holder
)

// load is the one load core, for one key or many: a single-key miss is a
// batch of one. It settles every key of ks.
//
// With the lease (the default), each round takes the leases of the keys
// still pending in one round trip per node (Acquire returns a value that
// became fresh instead); the keys it owns are loaded with one loader call
// and filled in one round trip; keys another instance holds are waited for
// until filled, or taken over when their lease expires. Redis failing ends
// the protocol: the keys are loaded all the same and kept in L1 only.
func (c *Cache[V]) load(ctx context.Context, ks []*keyLoad[V], mode loadMode, notBefore int64, fn loader[V]) {
	if mode == loadRead && c.l1 != nil {
		// Why L1 is checked again: caller A misses L1 and Redis, and is
		// about to enter the flight; meanwhile caller B's flight for the
		// same key loads, fills and ends. A then starts a new flight and,
		// without this check, would load a second time a value already
		// cached. (Redis is checked again too, by Acquire, which returns a
		// fresh value instead of a lease.)
		rest := ks[:0:0]
		for _, k := range ks {
			if e, ok := c.l1.peek(k.key); ok {
				k.settle(*e, nil)
			} else {
				rest = append(rest, k)
			}
		}
		ks = rest
	}
	switch {
	case len(ks) == 0:
		return
	case mode == loadOutage:
		c.loadAndFill(ctx, ks, fillOutage, fn, 0)
		return
	case !c.cfg.lease:
		c.loadAndFill(ctx, ks, fillPlain, fn, nowMicro())
		return
	}
	// Whatever happens below (a loader error, a panic, runtime.Goexit),
	// leases still held are given back, so that other instances do not wait
	// for a load nobody does.
	defer c.release(ks)

	wait := leaseWait{until: time.Now().Add(satAdd(c.cfg.leaseTTL, c.cfg.loadTimeout))}
	unwatch := func() {}
	defer func() { unwatch() }()
	pending := ks
	for len(pending) > 0 {
		if ctx.Err() != nil {
			// Closed (before this round's acquire): ask Redis for nothing
			// more. (Leases of earlier rounds are given back by the
			// deferred release.)
			fail(pending, closing(ctx))
			return
		}
		// A waiter is woken by the holder's fill (see wake.Waits) while the
		// subscription is up, and polls otherwise. It watches before its
		// acquire: a fill between the acquire's reply and the wait wakes it.
		var woken <-chan struct{}
		notified := mode != loadBackground && c.inv != nil && c.inv.fills != nil && c.inv.healthy()
		// A handed-off value (see keys.Acquire) is asked for only by a
		// flight that has heard every write of its key since it began
		// (its instance applies the others' writes to its flights, and its
		// subscription has been up all along): one that did not could hold
		// a caller that joined after a Delete it never heard of, and hand
		// it the value loaded before the Delete.
		hearing := c.inv.hearing()
		reqs := make([]store.AcquireReq, len(pending))
		for i, k := range pending {
			if k.token == "" {
				k.token = store.NewToken()
				k.lks = keys.LeaseScript(k.vk) // for every acquire and the fill
			}
			k.tok = c.l1.token(k.key)
			reqs[i] = store.AcquireReq{VK: k.vk, Token: k.token, Keys: k.lks, Force: k.force || mode != loadRead, Wait: notified}
			if notified && k.heard != 0 && k.heard == hearing {
				reqs[i].Awaited = k.awaited
			}
			if !k.force {
				reqs[i].NotBefore = max(notBefore, k.notBefore)
			}
		}
		if notified {
			vks := make([]string, len(pending))
			for i, k := range pending {
				vks[i] = k.vk
			}
			woken, unwatch = c.inv.fills.Watch(vks)
		}
		start := c.rec.Now()
		res, errs := c.st.Acquire(ctx, reqs)
		if ctx.Err() != nil {
			// Close began while the acquire was on the wire (a lone one is
			// not cut short: see store.Acquire): give back what it took
			// (the deferred release), and call no loader after Close.
			// (A failed acquire may have taken its lease all the same: its
			// reply was lost. Releasing it is harmless either way.)
			for i, k := range pending {
				if (errs != nil && errs[i] != nil) || res[i].State == store.AcquireOwned {
					k.owned = true
				}
				k.settle(entry[V]{}, closing(ctx))
			}
			return
		}
		if errs != nil {
			// A node failed: its keys are loaded for L1 only (Redis is sick:
			// no lease, no more timeouts), the others go on. The script may
			// have run and taken their leases although its reply was lost
			// (a timeout): give them back.
			var failed []*keyLoad[V]
			ok, okRes := pending[:0:0], res[:0:0]
			for i, k := range pending {
				if errs[i] != nil {
					if k.countL2 && !notAsked(errs[i]) {
						k.countL2 = false
						c.rec.lookupL2(false, start)
					}
					k.owned = true
					failed = append(failed, k)
				} else {
					ok, okRes = append(ok, k), append(okRes, res[i])
				}
			}
			c.release(failed)
			c.loadAndFill(ctx, failed, fillOutage, fn, 0)
			if pending, res = ok, okRes; len(pending) == 0 {
				return
			}
		}
		names, vks, raw := make([]string, len(pending)), make([]string, len(pending)), make([][]byte, len(pending))
		for i, k := range pending {
			names[i], vks[i], raw[i] = k.key, k.vk, res[i].Value
		}
		es, found := make([]entry[V], len(pending)), make([]bool, len(pending))
		now := nowMicro()
		_ = c.decodeChecked(ctx, now, names, vks, raw, es, found, nil) // a tag read failed: not found, loaded
		for i, k := range pending {
			if k.countL2 {
				k.countL2 = false
				hit := res[i].State == store.AcquireFresh && found[i]
				c.rec.lookupL2(hit, start)
				c.odds.observe(hit)
				if hit && es[i].neg {
					c.rec.event(EventNegativeHit)
				}
			}
		}
		// busy: another instance holds the lease; again: acquired again at
		// once, forced (see below).
		var owned, busy, again []*keyLoad[V]
		var since int64 // when the earliest lease of this round was taken
		var leaseLeft time.Duration
		for i, k := range pending {
			switch r := res[i]; {
			case r.State == store.AcquireFresh && !found[i]:
				// Fresh by its header, but it does not decode (corrupt,
				// foreign, another codec) or a tag was invalidated: lease it
				// regardless of freshness, and of the header's write time,
				// which may be garbage too. A value written meanwhile ends it.
				// Nobody holds a lease on it, so no fill will wake a wait:
				// acquire it again now. (Forced without a write time, an
				// acquire never answers "fresh", so this happens once.)
				k.force = true
				again = append(again, k)
			case r.State == store.AcquireFresh:
				if wait.rounds > 0 {
					c.rec.event(EventLeaseWait)
				}
				c.l1.fill(k.key, k.tok, es[i], c.l1.limit())
				k.settle(es[i], nil)
			case r.State == store.AcquireHandedOff && found[i]:
				// The lease this read waited for ended, and what its holder
				// loaded is not there fresh: a Delete came after the fill,
				// or during the load. The read overlapped that Delete: the
				// value is the read's to return, and nobody else's. Not kept
				// in L1, where a read after the Delete would find it; the
				// next reader loads anew.
				//
				//	W: acquire: busy, holder T     Delete: lease T gone,
				//	   (woken) acquire: busy on T           handoff = T
				//	   (woken) acquire: handed off  <-  T's fill, refused,
				//	   return T's value                 leaves its value
				//
				//	W: acquire: busy, holder T     T's fill: value, handoff
				//	   (woken)                     Delete: value gone
				//	   acquire: handed off, return T's value
				c.rec.event(EventLeaseWait)
				es[i].softExp = now
				k.settle(es[i], nil)
			case r.State == store.AcquireHandedOff:
				// It does not decode (or a tag of it was invalidated since):
				// acquire the lease at once, as any reader would.
				k.awaited = ""
				again = append(again, k)
			case r.State == store.AcquireOwned:
				k.owned = true
				if found[i] {
					k.stale = &es[i]
				}
				if since == 0 || r.At < since {
					since = r.At
				}
				owned = append(owned, k)
			case found[i] && mode == loadRead && within(&es[i], now, c.cfg.swr):
				// Someone else is refreshing it; the stale value will do.
				c.rec.event(EventStaleServed)
				k.settle(es[i], nil)
			default:
				k.awaited = r.Holder
				busy = append(busy, k)
				leaseLeft = max(leaseLeft, r.LeaseTTL)
			}
		}
		if len(owned) > 0 {
			c.loadAndFill(ctx, owned, fillLeased, fn, since)
			c.release(owned)
		}
		if len(again) > 0 {
			// (The busy keys too: one more acquire for them, not a wait.)
			unwatch()
			pending = append(again, busy...)
			continue
		}
		if len(busy) == 0 {
			return
		}
		switch {
		case mode == loadBackground:
			fail(busy, errLeaseBusy)
			return
		case !wait.more():
			// Holders have had a lease TTL and a load timeout and not
			// filled: load without caching rather than fail the read.
			c.loadAndFill(ctx, busy, fillNone, fn, 0)
			return
		}
		// Another instance holds the lease: wait for its value. If it
		// dies, its lease expires and the next acquire takes it over.
		err := wait.sleep(ctx, leaseLeft, woken)
		unwatch()
		if err != nil {
			fail(busy, err)
			return
		}
		pending = busy
	}
}

// release gives back the leases of ks that are still ours.
func (c *Cache[V]) release(ks []*keyLoad[V]) {
	var ls []store.Lease
	for _, k := range ks {
		if k.owned {
			k.owned = false
			ls = append(ls, store.Lease{VK: k.vk, Token: k.token})
		}
	}
	c.st.Release(ls)
}

// loadAndFill calls the loader once for ks, caches what it returns as mode
// says, and settles each key. since is when the load began (Unix µs, the
// server's clock when leased): a tag invalidated after it refuses the fill.
// A key whose lease a fill used up is no longer owned; the others the
// caller releases.
func (c *Cache[V]) loadAndFill(ctx context.Context, ks []*keyLoad[V], mode fillMode, fn loader[V], since int64) {
	if mode != fillLeased {
		// No lease protects these values: L1's tokens do, taken before the
		// loader reads the source, so that an invalidation that arrives
		// during the load refuses the L1 fill. (A leased load took its
		// tokens before the acquire.)
		for _, k := range ks {
			k.tok = c.l1.token(k.key)
		}
	}
	names := make([]string, len(ks))
	for i, k := range ks {
		names[i] = k.key
	}
	out := make([]loaded[V], len(ks))
	meta := &loadMeta{cfg: setConfig{ttl: c.cfg.ttl}}
	// The generation before the loader reads the source: a Clear during
	// the load moves it on, and the loaded value, read before the Clear,
	// is stored in the old one, a miss for every reader.
	//
	//	load: gen=g, loader reads the old row      Clear: generation g+1
	//	      fill, frame of generation g     ->   readers: g < g+1, a miss
	//
	// (Not read for a value that goes to L1 only, or nowhere: with Redis
	// failing, a due read of the generation would cost the load a timeout.)
	var gen uint64
	if mode == fillLeased || mode == fillPlain {
		gen = c.st.Generation(ctx)
	}
	delta, err := c.callLoader(ctx, meta, fn, names, out)
	if err != nil {
		switch {
		case ctx.Err() == nil || errors.Is(err, ErrClosed):
		case errors.Is(err, ctx.Err()):
			// Close cut the load short, and the loader returned the
			// cancellation: ErrClosed alone, or a caller would take it for
			// its own (its text kept).
			err = fmt.Errorf("%w (the loader returned: %v)", closing(ctx), err)
		default:
			// Close ended the load while the loader failed otherwise: both.
			err = fmt.Errorf("%w: %w", closing(ctx), err)
		}
		now := nowMicro()
		for _, k := range ks {
			if k.stale != nil && within(k.stale, now, c.cfg.sie) {
				c.rec.event(EventStaleOnError)
				k.settle(*k.stale, nil)
				continue
			}
			k.settle(entry[V]{}, err)
		}
		if c.cfg.sie > 0 {
			c.log.Warn("tiercache: loader failed; stale values served where there were any", "keys", len(ks), "err", err)
		}
		return
	}
	now := time.Now()
	nowU := now.UnixMicro()
	// Each key's own options: the loader's for the call, then its
	// LoadKeyOptions for that key. Their tags' versions are read once.
	scs := make([]setConfig, len(ks))
	keyTags := make([][]string, len(ks))
	var allTags []string
	seenTag := map[string]bool{}
	es := make([]entry[V], len(ks))
	keep := make([]bool, len(ks)) // es[i] is to be cached
	var longest time.Duration
	for i, k := range ks {
		scs[i] = meta.forKey(k.key)
		ttl := scs[i].ttl
		if out[i].notFound {
			ttl = c.cfg.negativeTTL
		}
		// Until it is cached, a value is returned but never reused.
		es[i] = entry[V]{val: out[i].val, neg: out[i].notFound, version: scs[i].version, writtenAt: nowU, softExp: nowU, delta: micros32(delta)}
		names, err := checkTags(scs[i].tags, envelope.MaxTags)
		if err != nil {
			c.rec.event(EventNotCached)
			c.log.Warn("tiercache: loaded value not cached", "key", k.key, "err", err)
		}
		if keep[i] = mode != fillNone && !scs[i].noCache && ttl > 0 && err == nil; keep[i] {
			ttl = c.jitter(ttl)
			es[i].softExp = satAddMicros(nowU, ttl)
			longest = max(longest, ttl)
			keyTags[i] = names
			for _, n := range names {
				if !seenTag[n] {
					seenTag[n] = true
					allTags = append(allTags, n)
				}
			}
		}
	}
	if len(allTags) > 0 && mode == fillOutage {
		// Not kept through an outage: with no tag versions to check it
		// against, InvalidateTags could not reach it.
		for i := range ks {
			if len(keyTags[i]) > 0 {
				keep[i] = false
			}
		}
	} else if len(allTags) > 0 {
		versions, rowVers, stale, err := c.st.TagRead(ctx, allTags, since, c.redisTTL(longest))
		byName := make(map[string]envelope.Tag, len(versions))
		rowVer := make(map[string]string, len(versions))
		for i, t := range versions {
			byName[t.Name], rowVer[t.Name] = t, rowVers[i]
		}
		for i := range ks {
			if len(keyTags[i]) == 0 {
				continue
			}
			if err != nil || stale {
				// A tag was invalidated while the loader ran (or cannot be
				// read): what it loaded may predate the change. Return it,
				// cache nothing tagged.
				if stale && keep[i] {
					c.rec.event(EventFillRefused)
				}
				keep[i] = false
				continue
			}
			es[i].tags = make([]envelope.Tag, len(keyTags[i]))
			mine := make([]string, len(keyTags[i]))
			for j, n := range keyTags[i] {
				es[i].tags[j], mine[j] = byName[n], rowVer[n]
			}
			if olderThanTags(es[i].version, mine, false) {
				c.rec.event(EventFillRefused) // a versioned invalidation of a tag is newer
				keep[i] = false
			}
		}
	}
	var ws []store.Write
	var wk []int // ws[j] is ks[wk[j]]
	for i, k := range ks {
		if !keep[i] {
			es[i].softExp = nowU
			continue
		}
		if mode == fillOutage {
			continue
		}
		b, err := c.frameOf(k.vk, &es[i], gen)
		if err != nil {
			// Too large or not encodable: the caller still gets the value.
			c.rec.event(EventNotCached)
			c.log.Warn("tiercache: loaded value not cached", "key", k.key, "err", err)
			keep[i], es[i].softExp = false, nowU
			continue
		}
		es[i].size = len(b)
		token := k.token
		if mode == fillPlain {
			token = ""
		}
		ws = append(ws, store.Write{VK: k.vk, Token: token, Keys: k.lks, Frame: b, TTL: c.redisTTL(time.Duration(es[i].softExp-nowU) * time.Microsecond), Version: es[i].version})
		wk = append(wk, i)
	}
	outage := mode == fillOutage
	if len(ws) > 0 {
		written, refused, err := c.st.Fill(ctx, ws)
		outage = err != nil
		var announced []string
		for j, i := range wk {
			k := ks[i]
			switch {
			case written[j]:
				k.owned = false // Fill used the lease up
				c.l1.fill(k.key, k.tok, es[i], c.l1.limit())
				keep[i] = false // done
				if k.announce {
					announced = append(announced, k.key)
				}
			case refused[j]:
				// Refused: the lease is gone (a write or an invalidation
				// since it was taken), so the value may predate the change.
				k.owned = false
				c.rec.event(EventFillRefused)
				keep[i], es[i].softExp = false, nowU
			}
		}
		if len(announced) > 0 {
			// Before the Refresh returns, as a Set's; not cut short by Close
			// (ctx is the load's): the value is in Redis, the message must go.
			_ = c.inv.send(context.WithoutCancel(ctx), announced, nil, false)
		}
	}
	if outage {
		// Redis did not take the values: L1 keeps them for the outage TTL,
		// so that an outage costs the source one load per key per instance
		// per outage TTL rather than one per read. Not a tagged value: with
		// no tag versions to check it against, InvalidateTags could not
		// reach it.
		for i, k := range ks {
			if keep[i] && len(es[i].tags) == 0 && len(keyTags[i]) == 0 {
				c.l1.fill(k.key, k.tok, es[i], c.cfg.l1OutageTTL)
			}
		}
	}
	for i, k := range ks {
		if !k.settled {
			k.settle(es[i], nil)
		}
	}
}

// loader is what the core calls: fn loads ks into out, in order; an error
// fails them all. op names its span ("load" or "load_many").
type loader[V any] struct {
	op string
	fn func(ctx context.Context, ks []string, out []loaded[V]) error
}

type loaded[V any] struct {
	val      V
	notFound bool
}

// single adapts a LoadFunc, which the core only ever calls for one key.
func single[V any](load LoadFunc[V]) loader[V] {
	return loader[V]{op: "load", fn: func(ctx context.Context, _ []string, out []loaded[V]) error {
		v, err := load(ctx)
		// ErrNotFound is returned as it is, for the load's span and count;
		// callLoader takes it, with notFound set, as a result.
		out[0].val, out[0].notFound = v, errors.Is(err, ErrNotFound)
		return err
	}}
}

// batch adapts a BatchLoadFunc: a key it does not return is not found.
func batch[V any](load BatchLoadFunc[V]) loader[V] {
	return loader[V]{op: "load_many", fn: func(ctx context.Context, ks []string, out []loaded[V]) error {
		// A copy: the loader may sort its keys, or reuse the slice, and the
		// results are matched to ks by position.
		m, err := load(ctx, slices.Clone(ks))
		if err != nil && !errors.Is(err, ErrNotFound) { // ErrNotFound: none of the rest exists
			return err
		}
		for i, k := range ks {
			v, ok := m[k]
			out[i] = loaded[V]{val: v, notFound: !ok}
		}
		return nil
	}}
}

// callLoader calls fn for ks under the load timeout, in a span, and times
// and counts it. A loader that panics or calls runtime.Goexit is counted as
// failed and its span ended before the panic goes on to runLoad.
func (c *Cache[V]) callLoader(ctx context.Context, meta *loadMeta, fn loader[V], ks []string, out []loaded[V]) (delta time.Duration, err error) {
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, loadMetaKey{}, meta), c.cfg.loadTimeout)
	defer cancel()
	ctx, end := c.rec.Span(ctx, fn.op)
	start := time.Now()
	returned := false
	defer func() {
		if returned {
			return
		}
		p := recover()
		var perr error = &PanicError{Value: errGoexit}
		if p != nil {
			perr = asPanicError(p)
		}
		end(perr)
		c.rec.load(time.Since(start), perr)
		if p != nil {
			panic(perr)
		}
	}()
	err = fn.fn(ctx, ks, out)
	returned = true
	delta = time.Since(start)
	end(err)
	if errors.Is(err, ErrNotFound) && len(out) == 1 && out[0].notFound {
		err = nil // a single loader's "no such record": a result, not a failure
	}
	c.rec.load(delta, err)
	return delta, err
}

// loadMeta carries what a loader says about its result through
// [LoadOptions] and [LoadKeyOptions].
type loadMeta struct {
	mu      sync.Mutex
	cfg     setConfig
	keyOpts map[string][]SetOption
}

type loadMetaKey struct{}

// forKey is key's configuration: the call's, then the key's own options.
func (m *loadMeta) forKey(key string) setConfig {
	m.mu.Lock()
	defer m.mu.Unlock()
	sc := m.cfg
	sc.tags = slices.Clone(sc.tags)
	apply(&sc, m.keyOpts[key])
	return sc
}

// LoadOptions lets a loader set how its result is cached: [WithTTL] for
// its own TTL, [WithTags] to tag it, [WithVersion] for its row's version,
// [NoCache] to return a value without caching it. For a batch loader they
// apply to every value of the call (see [LoadKeyOptions] for one key's).
// Call it with the ctx the loader was given; elsewhere it does nothing.
func LoadOptions(ctx context.Context, opts ...SetOption) {
	if ctx == nil {
		return
	}
	if m, ok := ctx.Value(loadMetaKey{}).(*loadMeta); ok {
		m.mu.Lock()
		defer m.mu.Unlock()
		apply(&m.cfg, opts)
	}
}

// LoadKeyOptions is [LoadOptions] for one key of a [BatchLoadFunc]'s call:
// that key's TTL, tags ([WithTags] adds to the call's), row version, or
// [NoCache], applied after the call's own options. (A key the loader does
// not return is its "not found".) Call it with the ctx the loader was
// given; elsewhere it does nothing.
func LoadKeyOptions(ctx context.Context, key string, opts ...SetOption) {
	if ctx == nil {
		return
	}
	if m, ok := ctx.Value(loadMetaKey{}).(*loadMeta); ok {
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.keyOpts == nil {
			m.keyOpts = map[string][]SetOption{}
		}
		m.keyOpts[key] = append(m.keyOpts[key], opts...) // nil ones are skipped by forKey
	}
}

// leaseWait paces a waiter for another instance's lease. Woken by fills
// (woken not nil), it sleeps until a wake-up, the lease's expiry (when a
// takeover becomes possible) or half a second, whichever comes first: it
// costs Redis no polls while it waits, and a lost message costs it at most
// that long. Without wake-ups (the subscription is down) it polls: 2ms
// doubling to 10ms, with jitter so that waiters do not poll in step, never
// past the lease's expiry. A waiter waits until its bound (a lease TTL and
// a load timeout: as long as a holder can take); a read is never failed
// for waiting.
type leaseWait struct {
	d      time.Duration
	rounds int
	until  time.Time
}

func (w *leaseWait) more() bool { return time.Now().Before(w.until) }

func (w *leaseWait) sleep(ctx context.Context, leaseLeft time.Duration, woken <-chan struct{}) error {
	w.rounds++
	var d time.Duration
	if woken != nil {
		d = 500 * time.Millisecond
	} else {
		w.d = min(max(2*w.d, 2*time.Millisecond), 10*time.Millisecond)
		d = w.d/2 + time.Duration(rand.Int64N(int64(w.d/2)+1))
	}
	if leaseLeft > 0 {
		d = min(d, leaseLeft+time.Millisecond)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-woken:
		return nil
	case <-ctx.Done():
		return closing(ctx)
	}
}

// within reports now (Unix µs) inside the stale window (stale-while-
// revalidate or stale-if-error) past e's logical expiry.
func within[V any](e *entry[V], now int64, window time.Duration) bool {
	return window > 0 && now < satAddMicros(e.softExp, window)
}

// jitter stretches ttl by a random fraction in [0, cfg.jitter), without
// overflowing.
func (c *Cache[V]) jitter(ttl time.Duration) time.Duration {
	if c.cfg.jitter == 0 {
		return ttl
	}
	return satAdd(ttl, time.Duration(float64(ttl)*c.cfg.jitter*rand.Float64()))
}

// redisTTL is how long Redis keeps a value of logical TTL ttl: the logical
// TTL plus the larger stale window, so that stale values are there to serve.
func (c *Cache[V]) redisTTL(ttl time.Duration) time.Duration {
	return max(satAdd(ttl, max(c.cfg.swr, c.cfg.sie)), time.Millisecond)
}

// satAdd is a+b for non-negative durations, saturating instead of
// overflowing: a huge TTL must work, not wrap around and expire at once.
func satAdd(a, b time.Duration) time.Duration {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// satAddMicros is t (Unix µs) plus d, saturating.
func satAddMicros(t int64, d time.Duration) int64 {
	us := d.Microseconds()
	if t > math.MaxInt64-us {
		return math.MaxInt64
	}
	return t + us
}

func micros32(d time.Duration) uint32 { return uint32(min(max(d.Microseconds(), 0), math.MaxUint32)) }

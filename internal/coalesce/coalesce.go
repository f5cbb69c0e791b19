// Package coalesce sends concurrent single-key Redis calls together: reads,
// and the lease scripts of concurrent misses.
package coalesce

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Coalescer sends single-key calls (requests Q, each answered by an R) that
// arrive while earlier ones are on the wire together, as one round trip (for
// reads an MGET on one node, a pipeline of GETs grouped by node on a
// cluster; for scripts a pipeline), instead of one command each. There is
// no timer on the way out: a call that finds a round trip slot free goes out
// at once, alone if nobody else is waiting, so a lone caller never waits.
// Only when every slot is busy do calls queue, and the queue goes out whole
// when a slot frees. Under load that is what turns 64 concurrent Gets into a
// few deep round trips. Under heavy load (see narrowAt) it narrows to one
// round trip at a time: calls queue behind the one in flight even with slots
// free, and the queue goes out when the youngest in flight ends, or on a
// free slot once it has waited a quarter of the timeout (a reply stuck on
// one connection, a TCP retransmit, must not hold every read up).
//
// It is ours rather than go-redis's auto-pipeliner because the pipeliner
// runs commands on its own context (a read's deadline would not cut a slow
// Redis short) and because one MGET costs Redis and the client less than the
// same keys as pipelined GETs; docs/DESIGN.md has the figures.
type Coalescer[Q, R any] struct {
	// fetch runs one round trip (per node) for qs into rs and errs (the
	// error of each, nil when done), to be done by deadline; ctx carries the
	// leading caller's values.
	fetch func(ctx context.Context, deadline time.Time, qs []Q, rs []R, errs []error)
	// timeout bounds a call's wait, counted from when it was queued.
	timeout time.Duration
	slots   int // round trips that may be in flight at once

	mu       sync.Mutex
	queue    []*req[Q, R]
	since    time.Time // when the oldest queued call was queued
	inFlight int
	// sent counts the calls in the round trips in flight (those whose
	// callers left included). narrow is set when a round trip ends with at
	// least narrowAt calls on the wire and queued, and judged again at the
	// end of each: then no call goes out alone while a round trip is in
	// flight, and a round trip that ends while a younger one is in flight
	// frees its slot rather than take the queue, which waits for that one.
	sent     int
	narrow   bool
	narrowAt int
	// trips holds the numbers of the round trips in flight (0 for a free
	// slot), from seq, which numbers them in the order they went out: what
	// tells an ending round trip whether a younger one is in flight.
	trips []uint64
	seq   uint64
	// patience is how long a queue waits, narrowed, for the round trip in
	// flight before unstick sends it on a free slot; unsticker is its
	// timer, made on first use and armed whenever a queue is left waiting
	// with a slot free: when it forms behind a round trip that left slots
	// free, and when a round trip that ends leaves it to a younger one.
	patience  time.Duration
	unsticker *time.Timer

	reqs    sync.Pool // *req[Q, R], for calls that were not abandoned
	scratch sync.Pool // *scratch[Q, R]
}

// How many round trips a Coalescer lets run at once. Enough that a few
// concurrent readers go out at once, as they would without coalescing (with
// 2 slots, 4 readers measured 1.8x slower than plain go-redis; with 4, level
// within noise), and few enough that under load reads pile up into deep
// batches: Redis runs commands on one thread, so more round trips in flight
// do not make it faster, while deeper batches do (at 64 readers on one node,
// 4 slots measured 3.6x plain go-redis and 8 slots 2.9x). See
// BenchmarkGetConcurrency and docs/DESIGN.md. (The store's lease scripts
// use fewer: see store.New.)
const Slots = 4

// narrowAt is, per slot, how many calls on the wire and queued make a
// Coalescer send one round trip at a time (see Coalescer.narrow). Under
// that many, the slots are what keeps a few readers from waiting on each
// other (with 1 slot, 2 to 8 readers measured 1.2x to 2x slower than plain
// go-redis); past it every call waits about one round trip either way, and
// one deep round trip costs Redis and the client less than several shallow
// ones (64 readers on one node: 3.1x plain go-redis with 4 slots, 4.5x
// this way; narrowing at 2 per slot slowed 8 readers by 1.3x).
// BenchmarkGetConcurrency measures it; docs/DESIGN.md has the figures.
const narrowAt = 4

// patienceOf is how much of a call's timeout it may spend queued, narrowed,
// behind a round trip that has not come back while slots are free.
func patienceOf(timeout time.Duration) time.Duration { return timeout / 4 }

// The states of a req.
const (
	reqWaiting   int32 = iota
	reqAbandoned       // its caller left; nobody reads the result
	reqLeading         // it was handed a slot and must run the next batch
)

type req[Q, R any] struct {
	q     Q
	ctx   context.Context
	r     R
	err   error
	state atomic.Int32
	done  chan struct{} // one signal: the result is in, or lead
	// batch and since are what a call made leader is to run (itself among
	// them), and when the oldest of them was queued; seq numbers the round
	// trip it leads.
	batch []*req[Q, R]
	since time.Time
	seq   uint64
	// Room for a lone call's round trip, kept with the pooled request so
	// that a call nobody shares allocates nothing here.
	alone [1]*req[Q, R]
	qs    [1]Q
	rs    [1]R
	errs  [1]error
}

// scratch is the room for a shared batch's round trip. At most Slots
// batches run at once, so a pool of them (not one per request, which would
// keep room in proportion to the readers) is all a warm coalescer needs.
type scratch[Q, R any] struct {
	qs   []Q
	rs   []R
	errs []error
}

// maxPooledBatch bounds the room a pooled scratch keeps.
const maxPooledBatch = 1024

// New returns a Coalescer that lets slots round trips run at once, bounds
// each call's wait by timeout and runs round trips with fetch.
func New[Q, R any](timeout time.Duration, slots int, fetch func(context.Context, time.Time, []Q, []R, []error)) *Coalescer[Q, R] {
	slots = max(slots, 1)
	co := &Coalescer[Q, R]{fetch: fetch, timeout: timeout, slots: slots, narrowAt: narrowAt * slots,
		trips: make([]uint64, slots), patience: patienceOf(timeout)}
	if slots == 1 || co.patience <= 0 {
		co.narrowAt = math.MaxInt // one slot is narrow already; no timeout, no patience
	}
	return co
}

// Do returns q's answer. If ctx ends first it returns ctx's error; the call
// still goes out with its batch.
func (co *Coalescer[Q, R]) Do(ctx context.Context, q Q) (R, error) {
	r, _ := co.reqs.Get().(*req[Q, R])
	if r == nil {
		r = &req[Q, R]{done: make(chan struct{}, 1)}
	}
	r.q, r.ctx = q, ctx
	r.state.Store(reqWaiting)

	co.mu.Lock()
	if co.inFlight < co.slots && len(co.queue) == 0 && (co.inFlight == 0 || !co.narrow) {
		// A free slot, nobody waiting and no reason to wait for the round
		// trip in flight: go out alone, now.
		r.seq = co.startTrip()
		co.sent++
		co.mu.Unlock()
		r.alone[0] = r
		co.run(r, r.alone[:], time.Now())
		return co.finish(r)
	}
	if len(co.queue) == 0 {
		co.since = time.Now()
		if co.inFlight < co.slots {
			// Queued for narrowing with slots free: should the round trip in
			// flight not come back, unstick sends the queue on one.
			co.armUnstick(co.patience)
		}
	}
	co.queue = append(co.queue, r)
	co.mu.Unlock()

	select {
	case <-r.done:
	case <-ctx.Done():
		if r.state.CompareAndSwap(reqWaiting, reqAbandoned) {
			var zero R
			return zero, ctx.Err() // r is dropped, not pooled: its batch may still write it
		}
		<-r.done // it was made the leader of the next batch: it must run it
	}
	if r.state.Load() == reqLeading {
		co.run(r, r.batch, r.since)
	}
	return co.finish(r)
}

// finish takes r's result and recycles r.
func (co *Coalescer[Q, R]) finish(r *req[Q, R]) (R, error) {
	var zq Q
	var zr R
	val, err := r.r, r.err
	r.q, r.r, r.err, r.ctx, r.batch = zq, zr, nil, nil, nil
	r.alone[0], r.qs[0], r.rs[0], r.errs[0] = nil, zq, zr, nil
	co.reqs.Put(r)
	return val, err
}

// run does one round trip for batch, which lead belongs to, then passes its
// slot on to the oldest waiting call, if any, or frees it.
func (co *Coalescer[Q, R]) run(lead *req[Q, R], batch []*req[Q, R], since time.Time) {
	qs, rs, errs := lead.qs[:], lead.rs[:], lead.errs[:]
	if n := len(batch); n > 1 {
		sc, _ := co.scratch.Get().(*scratch[Q, R])
		if sc == nil || cap(sc.qs) < n {
			sc = &scratch[Q, R]{qs: make([]Q, n), rs: make([]R, n), errs: make([]error, n)}
		}
		qs, rs, errs = sc.qs[:n], sc.rs[:n], sc.errs[:n]
		defer func() {
			clear(qs)
			clear(rs)
			clear(errs)
			if n <= maxPooledBatch {
				co.scratch.Put(sc)
			}
		}()
	}
	for i, r := range batch {
		qs[i] = r.q
	}
	// A shared batch belongs to every caller in it, so the leader's
	// cancellation must not end it (its values, a trace, are kept); a lone
	// read is its caller's alone.
	ctx := lead.ctx
	if len(batch) > 1 {
		ctx = context.WithoutCancel(ctx)
	}
	returned := false
	defer func() {
		if returned {
			return
		}
		// fetch panicked or called runtime.Goexit (it runs the cache's
		// Observer and Tracer, user code): the others in the batch get
		// ErrAborted and the slot is passed on, or every call queued after
		// would wait for good; the panic goes on up the leader's stack.
		for _, r := range batch {
			if r != lead {
				var zero R
				r.r, r.err = zero, ErrAborted
				r.done <- struct{}{}
			}
		}
		co.handOff(len(batch), lead.seq)
	}()
	co.fetch(ctx, since.Add(co.timeout), qs, rs, errs)
	returned = true
	for i, r := range batch {
		r.r, r.err = rs[i], errs[i]
		if r != lead {
			r.done <- struct{}{}
		}
	}
	co.handOff(len(batch), lead.seq)
}

// ErrAborted is the answer of the calls whose shared round trip ended in
// a panic of its leader.
var ErrAborted = errors.New("coalesce: the round trip's leader panicked")

// handOff ends round trip seq, of n calls: it passes the slot, with the
// whole queue as its batch, to the oldest call still waiting in it, or frees
// it.
//
// Narrowed, a round trip that ends while a younger one is in flight frees
// its slot and leaves the queue to that one: the queue never waits without
// a round trip in flight that will take it, since the youngest always does.
// Left to an older one, it could wait for one whose reply is stuck.
func (co *Coalescer[Q, R]) handOff(n int, seq uint64) {
	co.mu.Lock()
	co.narrow = co.sent+len(co.queue) >= co.narrowAt
	co.sent -= n
	co.endTrip(seq)
	if co.narrow && co.youngerInFlight(seq) {
		if len(co.queue) > 0 {
			// The queue may have formed while every slot was busy, with no
			// timer armed; now a slot is free, and the younger round trip
			// it waits for may be the one that is stuck.
			co.armUnstick(co.patience - time.Since(co.since))
		}
		co.mu.Unlock()
		return
	}
	co.sendQueue()
}

// armUnstick, with mu held, has unstick run in wait (at once if wait is not
// positive).
func (co *Coalescer[Q, R]) armUnstick(wait time.Duration) {
	if co.unsticker == nil {
		co.unsticker = time.AfterFunc(wait, co.unstick)
	} else {
		co.unsticker.Reset(wait)
	}
}

// unstick sends the queue on a free slot if it has waited, narrowed, for
// patience; a queue that formed since it was armed gets it armed again.
func (co *Coalescer[Q, R]) unstick() {
	co.mu.Lock()
	if len(co.queue) == 0 || co.inFlight >= co.slots {
		// Taken already, or every slot is busy: the round trip that frees
		// one either takes the queue or, leaving it to a younger one, arms
		// this timer again (handOff).
		co.mu.Unlock()
		return
	}
	if wait := co.patience - time.Since(co.since); wait > 0 {
		co.armUnstick(wait)
		co.mu.Unlock()
		return
	}
	co.sendQueue()
}

// sendQueue, with mu held and a slot free, sends the whole queue as one
// round trip, led by the oldest call still waiting in it, and unlocks.
// Calls that left are sent anyway (their results are dropped); a queue of
// nothing but those is dropped.
func (co *Coalescer[Q, R]) sendQueue() {
	for {
		next, since := co.queue, co.since
		if len(next) == 0 {
			co.mu.Unlock()
			return
		}
		co.queue = nil
		co.sent += len(next)
		seq := co.startTrip()
		co.mu.Unlock()
		for _, r := range next {
			if r.state.CompareAndSwap(reqWaiting, reqLeading) {
				r.batch, r.since, r.seq = next, since, seq
				r.done <- struct{}{}
				return
			}
		}
		co.mu.Lock()
		co.sent -= len(next) // every one of them left: not sent
		co.endTrip(seq)
	}
}

// startTrip, with mu held and a slot free, takes the slot for a new round
// trip and returns its number.
func (co *Coalescer[Q, R]) startTrip() uint64 {
	co.inFlight++
	co.seq++
	for i, t := range co.trips {
		if t == 0 {
			co.trips[i] = co.seq
			break
		}
	}
	return co.seq
}

// endTrip, with mu held, frees round trip seq's slot.
func (co *Coalescer[Q, R]) endTrip(seq uint64) {
	co.inFlight--
	for i, t := range co.trips {
		if t == seq {
			co.trips[i] = 0
			return
		}
	}
}

// youngerInFlight reports, with mu held, whether a round trip that went out
// after seq is in flight.
func (co *Coalescer[Q, R]) youngerInFlight(seq uint64) bool {
	for _, t := range co.trips {
		if t > seq {
			return true
		}
	}
	return false
}

// Package coalesce sends concurrent single-key Redis calls together: reads,
// and the lease scripts of concurrent misses.
package coalesce

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"
)

// Coalescer sends single-key calls (requests Q, each answered by an R) that
// arrive while earlier ones are on the wire together, as one round trip (for
// reads an MGET on one node, a pipeline of GETs grouped by node on a
// cluster; for scripts a pipeline), instead of one command each. There is
// no timer: a call that finds a round trip slot free goes out at once, alone
// if nobody else is waiting, so a lone caller never waits. Only when every
// slot is busy do calls queue, and the queue goes out whole when a slot
// frees. Under load that is what turns 64 concurrent Gets into a few deep
// round trips.
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
	// them), and when the oldest of them was queued.
	batch []*req[Q, R]
	since time.Time
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
	return &Coalescer[Q, R]{fetch: fetch, timeout: timeout, slots: max(slots, 1)}
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
	if co.inFlight < co.slots && len(co.queue) == 0 {
		// A free slot and nobody waiting: go out alone, now.
		co.inFlight++
		co.mu.Unlock()
		r.alone[0] = r
		co.run(r, r.alone[:], time.Now())
		return co.finish(r)
	}
	if len(co.queue) == 0 {
		co.since = time.Now()
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
		co.handOff()
	}()
	co.fetch(ctx, since.Add(co.timeout), qs, rs, errs)
	returned = true
	for i, r := range batch {
		r.r, r.err = rs[i], errs[i]
		if r != lead {
			r.done <- struct{}{}
		}
	}
	co.handOff()
}

// ErrAborted is the answer of the calls whose shared round trip ended in
// a panic of its leader.
var ErrAborted = errors.New("coalesce: the round trip's leader panicked")

// handOff passes a round trip slot, with the whole queue as its batch, to
// the oldest call still waiting in it, or frees it. Calls that left are
// sent anyway (their results are dropped); a queue of nothing but those is
// dropped.
func (co *Coalescer[Q, R]) handOff() {
	for {
		co.mu.Lock()
		next, since := co.queue, co.since
		co.queue = nil
		if len(next) == 0 {
			co.inFlight--
			co.mu.Unlock()
			return
		}
		co.mu.Unlock()
		for _, r := range next {
			if r.state.CompareAndSwap(reqWaiting, reqLeading) {
				r.batch, r.since = next, since
				r.done <- struct{}{}
				return
			}
		}
	}
}

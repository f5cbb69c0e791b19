// Package coalesce sends concurrent single-key reads to Redis together.
package coalesce

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// Coalescer sends single-key reads that arrive while earlier ones are on
// the wire together, as one round trip (an MGET on one node, a pipeline of
// GETs grouped by node on a cluster), instead of one command each. There is
// no timer: a read that finds a round trip slot free goes out at once, alone
// if nobody else is waiting, so a lone caller never waits. Only when every
// slot is busy do reads queue, and the queue goes out whole when a slot
// frees. Under load that is what turns 64 concurrent Gets into a few deep
// round trips.
//
// It is ours rather than go-redis's auto-pipeliner because the pipeliner
// runs commands on its own context (a read's deadline would not cut a slow
// Redis short) and because one MGET costs Redis and the client less than the
// same keys as pipelined GETs; docs/DESIGN.md has the figures.
type Coalescer struct {
	// fetch runs one round trip (per node) for vks into raw (nil for an
	// absent key) and errs (the error of each key, nil when read), to be
	// done by deadline; ctx carries the leading caller's values.
	fetch func(ctx context.Context, deadline time.Time, vks []string, raw [][]byte, errs []error)
	// timeout bounds a read's wait, counted from when it was queued.
	timeout time.Duration
	slots   int // round trips that may be in flight at once

	mu       sync.Mutex
	queue    []*getReq
	since    time.Time // when the oldest queued read was queued
	inFlight int

	reqs    sync.Pool // *getReq, for reads that were not abandoned
	scratch sync.Pool // *scratch
}

// How many round trips a Coalescer lets run at once. Enough that a few
// concurrent readers go out at once, as they would without coalescing (with
// 2 slots, 4 readers measured 1.8x slower than plain go-redis; with 4, level
// within noise), and few enough that under load reads pile up into deep
// batches: Redis runs commands on one thread, so more round trips in flight
// do not make it faster, while deeper batches do (at 64 readers on one node,
// 4 slots measured 3.6x plain go-redis and 8 slots 2.9x). See
// BenchmarkGetConcurrency and docs/DESIGN.md.
const Slots = 4

// The states of a getReq.
const (
	reqWaiting   int32 = iota
	reqAbandoned       // its caller left; nobody reads the result
	reqLeading         // it was handed a slot and must run the next batch
)

type getReq struct {
	vk    string
	ctx   context.Context
	val   []byte
	err   error
	state atomic.Int32
	done  chan struct{} // one signal: the result is in, or lead
	// batch and since are what a read made leader is to run (itself among
	// them), and when the oldest of them was queued.
	batch []*getReq
	since time.Time
	// Room for a lone read's round trip, kept with the pooled request so
	// that a read nobody shares allocates nothing here.
	alone [1]*getReq
	vks   [1]string
	raw   [1][]byte
	errs  [1]error
}

// scratch is the room for a shared batch's round trip. At most Slots
// batches run at once, so a pool of them (not one per request, which would
// keep room in proportion to the readers) is all a warm coalescer needs.
type scratch struct {
	vks  []string
	raw  [][]byte
	errs []error
}

// maxPooledBatch bounds the room a pooled scratch keeps.
const maxPooledBatch = 1024

// New returns a Coalescer that bounds each read's wait by timeout and runs
// round trips with fetch.
func New(timeout time.Duration, fetch func(context.Context, time.Time, []string, [][]byte, []error)) *Coalescer {
	return &Coalescer{fetch: fetch, timeout: timeout, slots: Slots}
}

// Get returns the raw value of vk (nil when absent). If ctx ends first it
// returns ctx's error; the read still goes out with its batch.
func (co *Coalescer) Get(ctx context.Context, vk string) ([]byte, error) {
	r, _ := co.reqs.Get().(*getReq)
	if r == nil {
		r = &getReq{done: make(chan struct{}, 1)}
	}
	r.vk, r.ctx = vk, ctx
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
			return nil, ctx.Err() // r is dropped, not pooled: its batch may still write it
		}
		<-r.done // it was made the leader of the next batch: it must run it
	}
	if r.state.Load() == reqLeading {
		co.run(r, r.batch, r.since)
	}
	return co.finish(r)
}

// finish takes r's result and recycles r.
func (co *Coalescer) finish(r *getReq) ([]byte, error) {
	val, err := r.val, r.err
	r.vk, r.val, r.err, r.ctx, r.batch = "", nil, nil, nil, nil
	r.alone[0], r.vks[0], r.raw[0], r.errs[0] = nil, "", nil, nil
	co.reqs.Put(r)
	return val, err
}

// run does one round trip for batch, which lead belongs to, then passes its
// slot on to the oldest waiting read, if any, or frees it.
func (co *Coalescer) run(lead *getReq, batch []*getReq, since time.Time) {
	vks, raw, errs := lead.vks[:], lead.raw[:], lead.errs[:]
	if n := len(batch); n > 1 {
		sc, _ := co.scratch.Get().(*scratch)
		if sc == nil || cap(sc.vks) < n {
			sc = &scratch{vks: make([]string, n), raw: make([][]byte, n), errs: make([]error, n)}
		}
		vks, raw, errs = sc.vks[:n], sc.raw[:n], sc.errs[:n]
		defer func() {
			clear(vks)
			clear(raw)
			clear(errs)
			if n <= maxPooledBatch {
				co.scratch.Put(sc)
			}
		}()
	}
	for i, r := range batch {
		vks[i] = r.vk
	}
	// A shared batch belongs to every caller in it, so the leader's
	// cancellation must not end it (its values, a trace, are kept); a lone
	// read is its caller's alone.
	ctx := lead.ctx
	if len(batch) > 1 {
		ctx = context.WithoutCancel(ctx)
	}
	co.fetch(ctx, since.Add(co.timeout), vks, raw, errs)
	for i, r := range batch {
		r.val, r.err = raw[i], errs[i]
		if r != lead {
			r.done <- struct{}{}
		}
	}

	// Hand the slot, with the whole queue as its batch, to the oldest read
	// still waiting in it. Reads that left are sent anyway (their results
	// are dropped); a queue of nothing but those is dropped.
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

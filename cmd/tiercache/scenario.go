package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// scenarioParams is what one scenario run needs.
type scenarioParams struct {
	name     string
	cfg      config
	backend  *backend
	prefix   string
	progress *progress
	metrics  *metrics
	fresh    *freshness // nil unless the scenario's stale reads are judged
}

// opTimeout bounds one request. The scenario's end does not cancel the
// requests in flight (they finish and count); the run's ctx does.
const opTimeout = 10 * time.Second

// windowWidth is the width of the loader-call windows.
const windowWidth = 100 * time.Millisecond

// maxStaleSamples bounds the stale reads described in the report.
const maxStaleSamples = 8

// testWrapService, when set (by tests only), wraps each scenario's
// service, so that a test can make reads return what it likes.
var testWrapService func(service) service

// subscriptions is a service whose instances have an invalidation
// subscription.
type subscriptions interface {
	// subscribed reports whether instance inst's subscription is up.
	subscribed(inst int) bool
}

// runScenario runs one scenario for cfg.Duration and returns its figures.
func runScenario(ctx context.Context, p scenarioParams) (*scenarioResult, error) {
	cfg := &p.cfg
	setupStart := time.Now()
	// The windows start with the workers; the database is made first so
	// that the services can hold it.
	db := newDatabase(cfg.Keys, cfg.LoadLatency, cfg.LoadJitter, nil)
	if judgedScenario(p.name) {
		p.fresh = newFreshness(cfg.Instances, cfg.Duration)
	}
	defer p.fresh.stop() // on the error paths; after the instances are closed otherwise
	svc, err := newService(p, db)
	if err != nil {
		return nil, err
	}
	if sub, ok := svc.(subscriptions); ok {
		p.fresh.watch(sub.subscribed)
	}
	if cfg.slow != nil {
		defer cfg.slow.watchFills(ctx, p.backend.newClient(), p.prefix)()
	}
	if testWrapService != nil {
		svc = testWrapService(svc)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = p.backend.clean(cctx, p.prefix)
	}()
	closed := false
	defer func() {
		if !closed {
			_ = svc.close()
		}
	}()

	perm := keyPermutation(cfg)
	stop := make(chan struct{})
	var live liveCounters
	workers := make([]*workerStats, cfg.Workers)
	start := time.Now()
	db.windows = newWindows(start, windowWidth, cfg.Duration)
	staleWin := newWindows(start, windowWidth, cfg.Duration)
	p.progress.start(p.name, cfg.Duration, func() progressSnapshot {
		return progressSnapshot{reads: live.reads.Load(), loads: db.calls.Load(), errors: live.errors.Load()}
	})

	p.metrics.scenario(p.name, db.calls.Load, live.reads.Load, live.errors.Load)

	var wg sync.WaitGroup
	for w := range cfg.Workers {
		ws := &workerStats{}
		workers[w] = ws
		wg.Go(func() {
			runWorker(ctx, worker{
				scenario: p.name, id: w, inst: w % cfg.Instances, cfg: cfg, db: db, svc: svc,
				ops: newOpSource(cfg, w, perm), pace: newPacer(cfg.Rate, cfg.Workers, w, start),
				stop: stop, stats: ws, live: &live, fresh: p.fresh, staleWin: staleWin,
			})
		})
	}
	timer := time.NewTimer(cfg.Duration)
	select {
	case <-timer.C:
	case <-ctx.Done():
		timer.Stop()
	}
	close(stop)
	wg.Wait()
	elapsed := time.Since(start)
	loaderCalls := db.calls.Load()
	defer func() { _ = cfg.slow.flush(start) }() // once the instances are closed
	cs := svc.cacheStats()
	p.progress.finish()

	closed = true
	if err := svc.close(); err != nil {
		return nil, fmt.Errorf("closing: %w", err)
	}
	// The instances are closed: no message is applied any more, and the
	// stale reads can be judged.
	p.fresh.stop()
	windows, stale := db.windows.counts(), staleWin.counts()
	if ctx.Err() != nil {
		// Interrupted: only the windows that passed.
		n := min(len(windows), int(elapsed/windowWidth))
		windows, stale = windows[:n], stale[:n]
	}
	beyond := make([]uint64, len(windows))
	if p.fresh != nil {
		for _, w := range workers {
			for i := range w.staleReads {
				r := &w.staleReads[i]
				p.fresh.judge(r)
				if wi := (r.start - start.UnixNano()) / int64(windowWidth); r.verdict.beyond() && wi >= 0 && wi < int64(len(beyond)) {
					beyond[wi]++
				}
			}
		}
	}
	res := summarize(p.name, cfg, elapsed, loaderCalls, timeSeries{loads: windows, stale: stale, beyond: beyond}, workers, cs)
	res.Interrupted = ctx.Err() != nil
	res.SetupMS = float64(start.Sub(setupStart).Microseconds()) / 1000
	return res, nil
}

// liveCounters feed the progress display while the workers run.
type liveCounters struct {
	reads  atomic.Uint64
	errors atomic.Uint64
}

// workerStats is what one worker measured; only that worker writes it,
// and it is read after the workers are done.
type workerStats struct {
	reads, writes        uint64
	readErrs, writeErrs  uint64
	firstErr             error
	stale, staleSameInst uint64
	staleMaxLag          time.Duration
	// staleReads are the stale reads kept: in a judged scenario for
	// judging (up to maxJudged over the workers; staleUnkept counts the
	// others), else the first maxStaleSamples, as samples.
	staleReads  []staleRead
	staleUnkept uint64
	hist        histogram
	wrongKey    uint64
}

// staleSample describes one stale read.
type staleSample struct {
	Key          string  `json:"key"`
	Got          uint64  `json:"got_version"`
	Acked        uint64  `json:"acked_version"`
	ReaderInst   int     `json:"reader_instance"`
	WriterInst   int     `json:"writer_instance"`
	LagAfterAck  float64 `json:"started_ms_after_ack"`
	ReadDuration float64 `json:"read_ms"`
	// Judged scenarios only: whether the read broke the bound, and why.
	BeyondBound bool   `json:"beyond_bound,omitempty"`
	Verdict     string `json:"verdict,omitempty"`
}

func newStaleSample(r *staleRead) staleSample {
	return staleSample{
		Key: keyName(r.key), Got: r.got, Acked: r.acked, ReaderInst: r.reader, WriterInst: r.writer,
		LagAfterAck:  float64(r.lag().Microseconds()) / 1000,
		ReadDuration: float64(r.took.Microseconds()) / 1000,
		BeyondBound:  r.verdict.beyond(), Verdict: r.why(),
	}
}

type worker struct {
	scenario string
	id, inst int
	cfg      *config
	db       *database
	svc      service
	ops      *opSource
	pace     *pacer
	stop     <-chan struct{}
	stats    *workerStats
	live     *liveCounters
	fresh    *freshness // nil unless the stale reads are judged
	staleWin *windows   // stale reads per window
}

func runWorker(ctx context.Context, w worker) {
	for {
		w.pace.wait(w.stop)
		select {
		case <-w.stop:
			return
		default:
		}
		if ctx.Err() != nil {
			return
		}
		o := w.ops.next()
		octx, cancel := context.WithTimeout(ctx, opTimeout)
		if o.write {
			w.doWrite(octx, o.key)
		} else {
			w.doRead(octx, o.key)
		}
		cancel()
	}
}

// interrupted reports whether err only says that the run was stopped
// (Ctrl-C): such a request is not counted as failed.
func interrupted(ctx context.Context, err error) bool {
	return errors.Is(err, context.Canceled) && ctx.Err() == context.Canceled
}

func (w *worker) doRead(ctx context.Context, k int) {
	acked := w.db.lastAck(k)
	start := time.Now()
	ctx, rt := w.cfg.slow.begin(ctx, w.scenario, w.inst, k, start)
	got, err := w.svc.read(ctx, w.inst, k)
	d := time.Since(start)
	w.cfg.slow.end(rt, d, err)
	st := w.stats
	st.reads++
	w.live.reads.Add(1)
	st.hist.record(d)
	if err != nil {
		if !interrupted(ctx, err) {
			st.readErrs++
			w.fail(err)
		}
		return
	}
	if got.Key != keyName(k) {
		st.wrongKey++
		st.readErrs++
		w.fail(fmt.Errorf("read of %s returned the row of %q", keyName(k), got.Key))
		return
	}
	if got.Version >= acked.version {
		return
	}
	st.stale++
	w.staleWin.add(start)
	sr := staleRead{
		key: k, got: got.Version, acked: acked.version, reader: w.inst, writer: acked.by,
		start: start.UnixNano(), ack: acked.at, took: d,
	}
	if sr.writer == w.inst {
		st.staleSameInst++
	}
	st.staleMaxLag = max(st.staleMaxLag, sr.lag())
	switch {
	case w.fresh != nil:
		if w.fresh.keep() {
			st.staleReads = append(st.staleReads, sr)
		} else {
			st.staleUnkept++
		}
	case len(st.staleReads) < maxStaleSamples:
		st.staleReads = append(st.staleReads, sr)
	}
}

func (w *worker) doWrite(ctx context.Context, k int) {
	r := &w.db.rows[k]
	if w.cfg.WriteMode == writeSet {
		r.mu.Lock()
	}
	v := w.db.update(k)
	began := time.Now()
	err := w.svc.write(ctx, w.inst, k, row{Key: keyName(k), Version: v, Data: rowData})
	w.cfg.slow.event("write", keyName(k), w.inst, began, time.Since(began))
	if w.cfg.WriteMode == writeSet {
		r.mu.Unlock()
	}
	w.stats.writes++
	if err != nil {
		// Not acknowledged: the service would retry or fail the request.
		if !interrupted(ctx, err) {
			w.stats.writeErrs++
			w.fail(err)
		}
		return
	}
	w.db.ack(k, v, w.inst)
}

func (w *worker) fail(err error) {
	w.live.errors.Add(1)
	if w.stats.firstErr == nil {
		w.stats.firstErr = err
	}
}

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
}

// opTimeout bounds one request. The scenario's end does not cancel the
// requests in flight (they finish and count); the run's ctx does.
const opTimeout = 10 * time.Second

// windowWidth is the width of the loader-call windows.
const windowWidth = 100 * time.Millisecond

// maxStaleSamples bounds the stale reads described in the report.
const maxStaleSamples = 8

// invalidationWindow is how long after a write the demo lets a read on
// another instance still see the old value without calling it late:
// tiercache drops other instances' L1 copies when its pub/sub message
// reaches them, "normally within a millisecond or two of the write
// returning". Reads on the writer's own instance get no such window.
const invalidationWindow = 10 * time.Millisecond

// runScenario runs one scenario for cfg.Duration and returns its figures.
func runScenario(ctx context.Context, p scenarioParams) (*scenarioResult, error) {
	cfg := &p.cfg
	setupStart := time.Now()
	// The windows start with the workers; the database is made first so
	// that the services can hold it.
	db := newDatabase(cfg.Keys, cfg.LoadLatency, cfg.LoadJitter, nil)
	svc, err := newService(p, db)
	if err != nil {
		return nil, err
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
				id: w, inst: w % cfg.Instances, cfg: cfg, db: db, svc: svc,
				ops: newOpSource(cfg, w, perm), pace: newPacer(cfg.Rate, cfg.Workers, w, start),
				stop: stop, stats: ws, live: &live,
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
	cs := svc.cacheStats()
	p.progress.finish()

	closed = true
	if err := svc.close(); err != nil {
		return nil, fmt.Errorf("closing: %w", err)
	}
	windows := db.windows.counts()
	if ctx.Err() != nil {
		// Interrupted: only the windows that passed.
		windows = windows[:min(len(windows), int(elapsed/windowWidth))]
	}
	res := summarize(p.name, cfg, elapsed, loaderCalls, windows, workers, cs)
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
	staleLate            uint64 // on another instance, after invalidationWindow
	staleMaxLag          time.Duration
	staleSamples         []staleSample
	hist                 histogram
	wrongKey             uint64
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
}

type worker struct {
	id, inst int
	cfg      *config
	db       *database
	svc      service
	ops      *opSource
	pace     *pacer
	stop     <-chan struct{}
	stats    *workerStats
	live     *liveCounters
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
	r := &w.db.rows[k]
	ackedBefore := r.acked.Load()
	start := time.Now()
	got, err := w.svc.read(ctx, w.inst, k)
	d := time.Since(start)
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
	if got.Version >= ackedBefore {
		return
	}
	st.stale++
	writer := int(r.ackedBy.Load())
	lag := start.Sub(time.Unix(0, r.ackedAt.Load()))
	switch {
	case writer == w.inst:
		st.staleSameInst++
	case lag > invalidationWindow:
		st.staleLate++
	}
	st.staleMaxLag = max(st.staleMaxLag, lag)
	if len(st.staleSamples) < maxStaleSamples {
		st.staleSamples = append(st.staleSamples, staleSample{
			Key: keyName(k), Got: got.Version, Acked: ackedBefore,
			ReaderInst: w.inst, WriterInst: writer,
			LagAfterAck:  float64(lag.Microseconds()) / 1000,
			ReadDuration: float64(d.Microseconds()) / 1000,
		})
	}
}

func (w *worker) doWrite(ctx context.Context, k int) {
	r := &w.db.rows[k]
	if w.cfg.WriteMode == writeSet {
		r.mu.Lock()
	}
	v := w.db.update(k)
	err := w.svc.write(ctx, w.inst, k, row{Key: keyName(k), Version: v, Data: rowData})
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

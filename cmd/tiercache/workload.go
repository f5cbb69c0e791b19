package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// row is a database row as the service reads it: the cached value.
type row struct {
	Key     string `json:"k"`
	Version uint64 `json:"v"`
	Data    string `json:"d"`
}

// rowData pads every row to a realistic size (about 100 bytes of JSON).
var rowData = strings.Repeat("x", 64)

// database is the simulated slow database: one version counter per key,
// bumped by every write, and a load function that takes a configurable
// time and counts its calls.
//
// It also keeps, per key, the last write version the service acknowledged
// (the database was updated and the cache invalidated or written through):
// a read that starts after that acknowledgement and returns an older
// version is a stale read.
type database struct {
	rows    []dbRow
	latency time.Duration
	jitter  time.Duration
	calls   atomic.Uint64
	windows *windows
}

type dbRow struct {
	version atomic.Uint64
	// acked is the acknowledgement of the highest acknowledged write
	// version (nil: none yet): the version, when and by which instance, in
	// one record, so that a reader never pairs a version with another
	// write's time.
	acked atomic.Pointer[ack]
	// mu serializes the writers of the key in write-through (set) mode, as
	// a row lock held until the cache is written would: without it two
	// writers could write the cache in the opposite order of the database,
	// a race of the writers, not of the cache.
	mu sync.Mutex
}

func newDatabase(keys int, latency, jitter time.Duration, w *windows) *database {
	return &database{rows: make([]dbRow, keys), latency: latency, jitter: jitter, windows: w}
}

// load reads key i. The version is read when the query starts and the
// row returned after the latency, as a real query's snapshot would: a
// write during the load is not in the row, which is what makes the stale
// set of cache-aside possible.
func (db *database) load(ctx context.Context, i int) (row, error) {
	db.calls.Add(1)
	db.windows.add(time.Now())
	v := db.rows[i].version.Load()
	d := db.latency
	if db.jitter > 0 {
		d += time.Duration(rand.Int64N(int64(2*db.jitter)+1)) - db.jitter
	}
	if d > 0 {
		began := time.Now()
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return row{}, ctx.Err()
		}
		recordLoad(ctx, began, d, time.Since(began))
	}
	return row{Key: keyName(i), Version: v, Data: rowData}, nil
}

// update writes key i in the database and returns its new version.
func (db *database) update(i int) uint64 { return db.rows[i].version.Add(1) }

// ack is the acknowledgement of a write.
type ack struct {
	version uint64
	at      int64 // Unix ns, taken once the write returned
	by      int   // the instance that made the write
}

// ack records that write version v of key i, made by instance inst, is
// acknowledged: from now on a read must not return an older version.
func (db *database) ack(i int, v uint64, inst int) {
	r := &db.rows[i]
	a := &ack{version: v, at: time.Now().UnixNano(), by: inst}
	for {
		cur := r.acked.Load()
		if cur != nil && cur.version >= v {
			return
		}
		if r.acked.CompareAndSwap(cur, a) {
			return
		}
	}
}

// lastAck returns row i's latest acknowledgement (the zero ack if none).
func (db *database) lastAck(i int) ack {
	if a := db.rows[i].acked.Load(); a != nil {
		return *a
	}
	return ack{}
}

func keyName(i int) string { return fmt.Sprintf("k%06d", i) }

// windows counts events (loader calls) per fixed window of time since
// start. Events after the last window are counted in an extra tail slot,
// which the statistics leave out.
type windows struct {
	start time.Time
	width time.Duration
	n     []atomic.Uint64
}

func newWindows(start time.Time, width, total time.Duration) *windows {
	k := int((total + width - 1) / width)
	return &windows{start: start, width: width, n: make([]atomic.Uint64, k+1)}
}

func (w *windows) add(t time.Time) {
	i := int(t.Sub(w.start) / w.width)
	i = min(max(i, 0), len(w.n)-1)
	w.n[i].Add(1)
}

// counts returns the counts of the full windows.
func (w *windows) counts() []uint64 {
	c := make([]uint64, len(w.n)-1)
	for i := range c {
		c[i] = w.n[i].Load()
	}
	return c
}

// op is one request: a read or a write of a key.
type op struct {
	key   int
	write bool
}

// opSource draws the requests of one worker: keys from a Zipf popularity
// (rank 0 the most popular), writes with the write ratio. Every scenario
// draws the same sequence for the same seed and worker.
type opSource struct {
	rng        *rand.Rand
	zipf       *rand.Zipf
	perm       []int
	writeRatio float64
}

func newOpSource(cfg *config, worker int, perm []int) *opSource {
	rng := rand.New(rand.NewPCG(cfg.Seed, uint64(worker)+1))
	return &opSource{
		rng:        rng,
		zipf:       rand.NewZipf(rng, cfg.Zipf, 1, uint64(cfg.Keys-1)),
		perm:       perm,
		writeRatio: cfg.WriteRatio,
	}
}

func (s *opSource) next() op {
	k := s.perm[s.zipf.Uint64()]
	return op{key: k, write: s.writeRatio > 0 && s.rng.Float64() < s.writeRatio}
}

// keyPermutation maps popularity ranks to keys, so that the hot keys are
// spread over the key space (and over cluster slots) rather than k000000,
// k000001, ...
func keyPermutation(cfg *config) []int {
	return rand.New(rand.NewPCG(cfg.Seed, 0)).Perm(cfg.Keys)
}

// pacer spaces one worker's requests evenly at its share of the target
// rate. A worker held up by a slow request catches up with the schedule
// (as queued requests would be served), so every scenario gets the same
// offered load as long as it can keep up on average; one more than
// maxBacklog behind gives up the missed requests and restarts from now.
const maxBacklog = 250 * time.Millisecond

type pacer struct {
	every time.Duration // 0: no pacing
	next  time.Time
}

func newPacer(rate, workers int, worker int, start time.Time) *pacer {
	if rate <= 0 {
		return &pacer{}
	}
	every := time.Duration(float64(time.Second) * float64(workers) / float64(rate))
	// Spread the workers' first requests over one interval.
	return &pacer{every: every, next: start.Add(every * time.Duration(worker) / time.Duration(workers))}
}

// wait sleeps until the next request is due, or until stop is closed.
func (p *pacer) wait(stop <-chan struct{}) {
	if p.every == 0 {
		return
	}
	now := time.Now()
	if d := p.next.Sub(now); d > 0 {
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-stop:
			t.Stop()
		}
	} else if -d > maxBacklog {
		p.next = now // hopelessly behind: drop the backlog
	}
	p.next = p.next.Add(p.every)
}

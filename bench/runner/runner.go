// Package runner puts every subject (tiercache and the libraries users pick
// instead) through the same workloads against one Redis, interleaved over
// rounds, and reports the median and range of every figure with its ratio
// to plain go-redis measured in the same run.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/bench/sim"
	"github.com/tiercache/tiercache/bench/subject"
)

// Scale sets the sizes of the workloads.
type Scale struct {
	Name      string
	ValueSize int // bytes per cached value

	L2LatencyOps    int // single-goroutine reads per round
	L2ThroughputOps int // reads per round by Goroutines goroutines
	Goroutines      int // concurrency of the throughput workloads

	HotKeys     int
	HotDuration time.Duration

	StampedeGoroutines int
	StampedeLoad       time.Duration
	StampedeInstances  []int

	ZipfKeys       int
	ZipfS          float64
	ZipfGoroutines int
	ZipfRate       int // reads per second, all goroutines together
	ZipfDuration   time.Duration
	ZipfTTL        time.Duration
	ZipfLoad       time.Duration

	BatchSize     int
	BatchOps      int // all-hit batches per round
	BatchMissOps  int // batches with BatchMissing absent keys per round
	BatchMissing  int
	MemoryEntries int
	LocalSize     int // local tier bound, entries (memory uses 2x its N)

	SyntheticRefs int
	Seed          uint64

	// The realistic mix (workload "realistic") and the read-only run on
	// the same values (workload "readonly").
	RealKeys       int
	RealS          float64       // Zipf exponent of key popularity
	RealTTL        time.Duration // every subject's TTL
	RealLoad       time.Duration // the database's latency per load
	RealWrites     float64       // share of operations that are writes
	RealGoroutines int
	RealWarmup     time.Duration // unmeasured, before each measurement
	RealDuration   time.Duration // measured, per subject per round
	// RealRounds is how many rounds the realistic and read-only
	// workloads run (0: Options.Rounds).
	RealRounds         int
	ReadOnlyGoroutines int
	ReadOnlyDuration   time.Duration
}

// FullScale is the default: every workload for every subject over 5 rounds
// in well under 10 minutes on 2 cores.
func FullScale() Scale {
	return Scale{
		Name:               "full",
		ValueSize:          256,
		L2LatencyOps:       2_000,
		L2ThroughputOps:    20_000,
		Goroutines:         64,
		HotKeys:            1_000,
		HotDuration:        time.Second,
		StampedeGoroutines: 1_000,
		StampedeLoad:       50 * time.Millisecond,
		StampedeInstances:  []int{1, 4},
		ZipfKeys:           10_000,
		ZipfS:              1.1,
		ZipfGoroutines:     16,
		ZipfRate:           4_000,
		ZipfDuration:       3 * time.Second,
		ZipfTTL:            time.Second,
		ZipfLoad:           5 * time.Millisecond,
		BatchSize:          100,
		BatchOps:           100,
		BatchMissOps:       50,
		BatchMissing:       10,
		MemoryEntries:      20_000,
		LocalSize:          10_000,
		SyntheticRefs:      1_000_000,
		Seed:               1,
		RealKeys:           100_000,
		RealS:              1.1,
		RealTTL:            2 * time.Second,
		RealLoad:           2 * time.Millisecond,
		RealWrites:         0.01,
		RealGoroutines:     32,
		RealWarmup:         2 * time.Second,
		RealDuration:       15 * time.Second,
		RealRounds:         3,
		ReadOnlyGoroutines: 64,
		ReadOnlyDuration:   5 * time.Second,
	}
}

// TinyScale runs every workload a few hundred times, for tests.
func TinyScale() Scale {
	s := FullScale()
	s.Name = "tiny"
	s.L2LatencyOps = 100
	s.L2ThroughputOps = 300
	s.Goroutines = 16
	s.HotKeys = 100
	s.HotDuration = 100 * time.Millisecond
	s.StampedeGoroutines = 100
	s.ZipfKeys = 500
	s.ZipfGoroutines = 4
	s.ZipfRate = 1_000
	s.ZipfDuration = 300 * time.Millisecond
	s.BatchOps = 4
	s.BatchMissOps = 2
	s.MemoryEntries = 300
	s.LocalSize = 1_000
	s.SyntheticRefs = 30_000
	s.RealKeys = 2_000
	s.RealGoroutines = 8
	s.RealWarmup = 50 * time.Millisecond
	s.RealDuration = 200 * time.Millisecond
	s.RealRounds = 0
	s.ReadOnlyGoroutines = 8
	s.ReadOnlyDuration = 100 * time.Millisecond
	return s
}

// Options configure a run.
type Options struct {
	// Addr is the Redis to use; empty starts a redis-server.
	Addr string
	// Rounds is how many times each subject runs each workload.
	Rounds int
	// Subjects selects subjects by name (the baseline is always in);
	// empty means all.
	Subjects []string
	// Workloads selects workloads by id; empty means all.
	Workloads []string
	Scale     Scale
	// Log receives progress lines; nil discards them.
	Log io.Writer
	// ExtraTraces are replayed after the built-in ones.
	ExtraTraces []*sim.Trace
	// ProfileSubjects names subjects whose measurement windows in the
	// realistic and read-only workloads are profiled (CPU, and allocations
	// as a before/after pair of heap profiles), into ProfileDir.
	ProfileSubjects []string
	ProfileDir      string
}

// Report is everything a run measured.
type Report struct {
	Header    Header        `json:"header"`
	Subjects  []SubjectInfo `json:"subjects"`
	Workloads []Workload    `json:"workloads"`
	Traces    []TraceInfo   `json:"traces"`
}

// SubjectInfo is what a subject is and declares.
type SubjectInfo struct {
	Name          string `json:"name"`
	Module        string `json:"module"`
	Local         string `json:"local,omitempty"`
	Batch         bool   `json:"batch"`
	CrossInstance bool   `json:"cross_instance"`
	Write         string `json:"write,omitempty"`
	Notes         string `json:"notes"`
}

// Workload is the result table of one workload.
type Workload struct {
	ID          string      `json:"id"`
	Title       string      `json:"title"`
	Description string      `json:"description"`
	Metrics     []MetricDef `json:"metrics"`
	Rows        []Row       `json:"rows"`
	Rounds      int         `json:"rounds"`
}

// MetricDef describes one column.
type MetricDef struct {
	Key   string `json:"key"`
	Label string `json:"label"`
	// NoRatio marks a figure that is not compared with the baseline.
	NoRatio bool `json:"no_ratio,omitempty"`
}

// Row is one subject's results in a workload.
type Row struct {
	Subject string `json:"subject"`
	// Status is "ok", "n/a", "not supported", "pending" or "error".
	Status string             `json:"status"`
	Note   string             `json:"note,omitempty"`
	Values map[string]Summary `json:"values,omitempty"`
	// Diagnostics are the library's own counters, summed over the
	// instances of each round, for subjects that report them.
	Diagnostics []map[string]uint64 `json:"diagnostics,omitempty"`
}

// TraceInfo is the L1 hit-ratio replay of one trace.
type TraceInfo struct {
	Name     string       `json:"name"`
	Source   string       `json:"source"`
	Refs     int          `json:"refs"`
	Distinct int          `json:"distinct"`
	Policies []string     `json:"policies"`
	Results  []sim.Result `json:"results"`
}

// env is what workloads share.
type env struct {
	addr  string
	sc    Scale
	admin *redis.Client
	log   io.Writer
	pad   string

	popMu     sync.Mutex
	populated map[string]bool // namespace+range already filled

	trackMu sync.Mutex
	tracked []subject.Subject // instances of the current measurement
	extra   map[string]uint64 // counters a workload adds to the diagnostics

	profile    []string // subjects to profile
	profileDir string

	realState
}

// addDiagnostics adds counters measured by the workload itself (Redis
// commands, operations) to the diagnostics of the current measurement.
func (e *env) addDiagnostics(d map[string]uint64) {
	e.trackMu.Lock()
	defer e.trackMu.Unlock()
	if e.extra == nil {
		e.extra = map[string]uint64{}
	}
	for k, v := range d {
		e.extra[k] += v
	}
}

// track remembers s so that its diagnostics are collected after the run.
func (e *env) track(s subject.Subject) {
	e.trackMu.Lock()
	e.tracked = append(e.tracked, s)
	e.trackMu.Unlock()
}

// diagnostics sums the counters of the instances tracked since the last
// call (they may be closed by now; counters survive Close), nil when none
// reports any.
func (e *env) diagnostics() map[string]uint64 {
	e.trackMu.Lock()
	ss := e.tracked
	e.tracked = nil
	out := e.extra
	e.extra = nil
	e.trackMu.Unlock()
	for _, s := range ss {
		d, ok := s.(subject.Diagnoser)
		if !ok {
			continue
		}
		if out == nil {
			out = map[string]uint64{}
		}
		for k, v := range d.Diagnostics() {
			out[k] += v
		}
	}
	return out
}

// payload is the value the loader returns for key: ValueSize bytes.
func (e *env) payload(key string) string {
	n := e.sc.ValueSize - len(key)
	if n < 0 {
		n = 0
	}
	return key + e.pad[:n]
}

func (e *env) logf(format string, args ...any) {
	if e.log != nil {
		fmt.Fprintf(e.log, format+"\n", args...)
	}
}

// workload is one benchmark that every applicable subject runs in turn.
type workload struct {
	id, title, desc string
	metrics         []MetricDef
	// applies returns "" when the subject can run it, or the status and
	// note of its row.
	applies func(f subject.Factory) (status, note string)
	// setup runs once per subject before the rounds (filling Redis).
	setup func(ctx context.Context, e *env, f subject.Factory) error
	run   func(ctx context.Context, e *env, f subject.Factory, round int) (map[string]float64, error)
	// rounds, when positive, overrides Options.Rounds.
	rounds int
	// sameRound lists metrics that are also divided by the baseline's
	// figure of the same round; the median of those ratios is the metric
	// key+"_rx".
	sameRound []string
}

// Run runs the benchmark.
func Run(ctx context.Context, opts Options) (*Report, error) {
	start := time.Now()
	if opts.Rounds <= 0 {
		opts.Rounds = 1
	}
	if opts.Scale.Name == "" {
		opts.Scale = FullScale()
	}
	addr := opts.Addr
	if addr == "" {
		srv, err := StartRedis(ctx)
		if err != nil {
			return nil, err
		}
		defer srv.Stop()
		addr = srv.Addr
	}
	e := &env{
		addr:       addr,
		sc:         opts.Scale,
		admin:      redis.NewClient(&redis.Options{Addr: addr}),
		log:        opts.Log,
		pad:        strings.Repeat("x", opts.Scale.ValueSize),
		populated:  map[string]bool{},
		profile:    opts.ProfileSubjects,
		profileDir: opts.ProfileDir,
	}
	defer e.admin.Close()
	if err := e.admin.Ping(ctx).Err(); err != nil {
		return nil, fmt.Errorf("runner: redis at %s: %w", addr, err)
	}

	rep := &Report{Header: newHeader()}
	rep.Header.RedisVersion = redisVersion(ctx, e.admin)
	rep.Header.Mode = opts.Scale.Name
	rep.Header.Rounds = opts.Rounds
	rep.Header.Modules = map[string]string{}
	mods := subject.Modules()

	factories, err := selectSubjects(subject.All(), opts.Subjects)
	if err != nil {
		return nil, err
	}
	for _, n := range opts.ProfileSubjects {
		if !slices.ContainsFunc(factories, func(f subject.Factory) bool { return f.Name == n }) {
			return nil, fmt.Errorf("runner: profiled subject %q is not run", n)
		}
	}
	for _, f := range factories {
		rep.Subjects = append(rep.Subjects, SubjectInfo{
			Name: f.Name, Module: f.Module, Local: f.Caps.Local, Batch: f.Caps.Batch,
			CrossInstance: f.Caps.CrossInstance, Write: f.Caps.Write, Notes: f.Notes,
		})
		path, _, _ := strings.Cut(f.Module, "@")
		path, _, _ = strings.Cut(path, " ")
		if v, ok := mods[path]; ok {
			rep.Header.Modules[path] = v
		}
	}
	for _, p := range []string{"github.com/redis/go-redis/v9", "github.com/redis/rueidis", "github.com/maypok86/otter/v2",
		"golang.org/x/sync", "github.com/eko/gocache/store/redis/v4", "github.com/eko/gocache/store/go_cache/v4"} {
		if v, ok := mods[p]; ok {
			rep.Header.Modules[p] = v
		}
	}

	for _, w := range workloads(opts.Scale) {
		if len(opts.Workloads) > 0 && !slices.Contains(opts.Workloads, w.id) {
			continue
		}
		rep.Workloads = append(rep.Workloads, runWorkload(ctx, e, w, factories, opts.Rounds))
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
	}
	if len(opts.Workloads) == 0 || slices.Contains(opts.Workloads, "trace") {
		tr, err := replayTraces(e, opts.ExtraTraces, opts.Rounds)
		if err != nil {
			return nil, err
		}
		rep.Traces = tr
	}
	rep.Header.WallTime = time.Since(start).Round(time.Second).String()
	return rep, nil
}

// WorkloadIDs lists the workloads a run can select.
func WorkloadIDs() []string {
	var ids []string
	for _, w := range workloads(FullScale()) {
		ids = append(ids, w.id)
	}
	return append(ids, "trace")
}

func selectSubjects(all []subject.Factory, names []string) ([]subject.Factory, error) {
	if len(names) == 0 {
		return all, nil
	}
	var out []subject.Factory
	for _, f := range all {
		if f.Name == subject.Baseline || slices.Contains(names, f.Name) {
			out = append(out, f)
		}
	}
	for _, n := range names {
		if !slices.ContainsFunc(all, func(f subject.Factory) bool { return f.Name == n }) {
			return nil, fmt.Errorf("runner: no subject %q", n)
		}
	}
	return out, nil
}

// runWorkload runs w for every subject, interleaved: round 1 of every
// subject, then round 2 of every subject, and so on. Each round starts one
// subject further down the list, so that no subject always runs right
// after the same other one (or first, on a quiet machine).
func runWorkload(ctx context.Context, e *env, w workload, fs []subject.Factory, rounds int) Workload {
	if w.rounds > 0 {
		rounds = w.rounds
	}
	res := Workload{ID: w.id, Title: w.title, Description: w.desc, Metrics: w.metrics, Rounds: rounds}
	rows := make([]Row, len(fs))
	samples := make([]map[string][]float64, len(fs))
	active := make([]bool, len(fs))
	for i, f := range fs {
		rows[i] = Row{Subject: f.Name}
		if st, note := w.applies(f); st != "" {
			rows[i].Status, rows[i].Note = st, note
			continue
		}
		if w.setup != nil {
			t0 := time.Now()
			if err := w.setup(ctx, e, f); err != nil {
				rows[i].Status, rows[i].Note = "error", "setup: "+err.Error()
				e.logf("[%s] %s setup failed: %v", w.id, f.Name, err)
				continue
			}
			e.logf("[%s] %s setup %s", w.id, f.Name, time.Since(t0).Round(time.Millisecond))
		}
		active[i] = true
		samples[i] = map[string][]float64{}
	}
	baseIdx := slices.IndexFunc(fs, func(f subject.Factory) bool { return f.Name == subject.Baseline })
	for r := range rounds {
		got := make([]map[string]float64, len(fs)) // this round's figures
		for j := range fs {
			i := (j + r) % len(fs)
			f := fs[i]
			if !active[i] || ctx.Err() != nil {
				continue
			}
			t0 := time.Now()
			m, err := w.run(ctx, e, f, r)
			if d := e.diagnostics(); d != nil {
				rows[i].Diagnostics = append(rows[i].Diagnostics, d)
				if notable := notableDiagnostics(d); notable != "" {
					e.logf("[%s] round %d/%d %s: %s", w.id, r+1, rounds, f.Name, notable)
				}
			}
			if err != nil {
				e.logf("[%s] round %d/%d %s: error: %v", w.id, r+1, rounds, f.Name, err)
				active[i] = false
				rows[i].Status, rows[i].Note = "error", err.Error()
				continue
			}
			got[i] = m
			for k, v := range m {
				samples[i][k] = append(samples[i][k], v)
			}
			e.logf("[%s] round %d/%d %-24s %s", w.id, r+1, rounds, f.Name, time.Since(t0).Round(time.Millisecond))
		}
		if baseIdx < 0 || got[baseIdx] == nil {
			continue
		}
		for i := range fs {
			for _, k := range w.sameRound {
				v, ok := got[i][k]
				b := got[baseIdx][k]
				if ok && b != 0 {
					samples[i][k+"_rx"] = append(samples[i][k+"_rx"], v/b)
				}
			}
		}
	}
	baseline := -1
	for i, f := range fs {
		if f.Name == subject.Baseline && active[i] {
			baseline = i
		}
	}
	for i := range fs {
		if !active[i] {
			continue
		}
		rows[i].Status = "ok"
		rows[i].Values = map[string]Summary{}
		for k, xs := range samples[i] {
			rows[i].Values[k] = summarize(xs)
		}
	}
	if baseline >= 0 {
		for i := range fs {
			if rows[i].Values == nil {
				continue
			}
			for _, md := range w.metrics {
				s, ok := rows[i].Values[md.Key]
				b, bok := rows[baseline].Values[md.Key]
				if md.NoRatio || !ok || !bok || b.Median == 0 {
					continue
				}
				r := s.Median / b.Median
				s.Ratio = &r
				rows[i].Values[md.Key] = s
			}
		}
	}
	res.Rows = rows
	return res
}

// notable lists the counters that mean something went wrong or was
// worked around.
var notable = []string{"redis_error", "redis_timeout", "breaker_reject", "fill_refused", "corrupt", "read_errors", "write_errors"}

// notableDiagnostics formats the notable non-zero counters of d.
func notableDiagnostics(d map[string]uint64) string {
	var parts []string
	for _, k := range notable {
		if v := d[k]; v > 0 {
			parts = append(parts, fmt.Sprintf("%s=%d", k, v))
		}
	}
	return strings.Join(parts, " ")
}

// runParallel runs n goroutines of fn and waits for them.
func runParallel(n int, fn func(g int)) {
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() { fn(g) })
	}
	wg.Wait()
}

// opErrors counts the failed reads of a measurement and keeps the first.
type opErrors struct {
	n     atomic.Int64
	mu    sync.Mutex
	first error
}

func (o *opErrors) add(err error) {
	if o.n.Add(1) == 1 {
		o.mu.Lock()
		o.first = err
		o.mu.Unlock()
	}
}

func (o *opErrors) err() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.first == nil {
		return nil
	}
	return fmt.Errorf("%d failed reads, first: %w", o.n.Load(), o.first)
}

// populate fills Redis with keys in f's format, through f itself, unless
// its family already did. It waits until every key is in Redis (some
// libraries write from a background goroutine) before it closes f.
func (e *env) populate(ctx context.Context, f subject.Factory, ns string, keys []string, batch bool) error {
	return e.populateWith(ctx, f, ns, keys, batch, e.payload)
}

// populateWith is populate with the values val returns.
func (e *env) populateWith(ctx context.Context, f subject.Factory, ns string, keys []string, batch bool, val func(key string) string) error {
	id := ns + fmt.Sprintf("|%d|%s|%v", len(keys), keys[0], batch)
	e.popMu.Lock()
	done := e.populated[id]
	e.popMu.Unlock()
	if done {
		return nil
	}
	s, err := f.New(subject.Config{Addr: e.addr, Namespace: ns, TTL: time.Hour, LocalSize: e.sc.LocalSize})
	if err != nil {
		return err
	}
	defer s.Close()
	// A library may read a loaded value without writing it to Redis (on a
	// busy machine tiercache's Redis timeouts open its breaker, and a value
	// loaded meanwhile stays out of Redis): passes are repeated, reading
	// again the keys that did not make it, until every key is there.
	for pass := 1; ; pass++ {
		var errs opErrors
		const workers = 32
		if batch {
			b, ok := s.(subject.Batcher)
			if !ok {
				return errors.New("runner: populate: subject has no batch API")
			}
			chunks := slices.Collect(slices.Chunk(keys, e.sc.BatchSize))
			var next atomic.Int64
			runParallel(workers, func(int) {
				for i := int(next.Add(1) - 1); i < len(chunks); i = int(next.Add(1) - 1) {
					_, err := b.GetOrLoadMany(ctx, chunks[i], func(_ context.Context, missing []string) (map[string]string, error) {
						out := make(map[string]string, len(missing))
						for _, k := range missing {
							out[k] = val(k)
						}
						return out, nil
					})
					if err != nil {
						errs.add(err)
					}
				}
			})
		} else {
			var next atomic.Int64
			runParallel(workers, func(int) {
				for i := int(next.Add(1) - 1); i < len(keys); i = int(next.Add(1) - 1) {
					if _, err := s.GetOrLoad(ctx, keys[i], func(_ context.Context, k string) (string, error) {
						return val(k), nil
					}); err != nil {
						errs.add(err)
					}
				}
			})
		}
		if err := errs.err(); err != nil {
			return err
		}
		if err = e.waitForKeys(ctx, ns, len(keys)); err == nil || pass == 3 || ctx.Err() != nil {
			break
		}
		e.logf("populate %s (%s): pass %d: %v; again", ns, f.Name, pass, err)
	}
	if err != nil {
		return err
	}
	e.popMu.Lock()
	e.populated[id] = true
	e.popMu.Unlock()
	return nil
}

// waitForKeys waits until Redis holds at least n keys under ns, or until
// the count stops growing for a second.
func (e *env) waitForKeys(ctx context.Context, ns string, n int) error {
	last, still := -1, 0
	for {
		c, err := e.countKeys(ctx, ns)
		if err != nil {
			return err
		}
		if c >= n {
			return nil
		}
		if c == last {
			still++
			if still >= 10 {
				return fmt.Errorf("runner: only %d of %d keys reached Redis under %q", c, n, ns)
			}
		} else {
			still = 0
		}
		last = c
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (e *env) countKeys(ctx context.Context, ns string) (int, error) {
	n := 0
	iter := e.admin.Scan(ctx, 0, ns+":*", 5000).Iterator()
	for iter.Next(ctx) {
		n++
	}
	return n, iter.Err()
}

package runner

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/bench/subject"
)

// ---------------------------------------------------------------- the database

// record is what the database returns for a key: a user profile, about
// 1 KB of JSON. Each load builds and marshals it anew, as a service does
// with the rows it reads.
type record struct {
	ID        string    `json:"id"`
	Version   uint32    `json:"version"`
	Name      string    `json:"name"`
	Email     string    `json:"email"`
	Status    string    `json:"status"`
	Plan      string    `json:"plan"`
	Locale    string    `json:"locale"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	Address   struct {
		Street  string `json:"street"`
		City    string `json:"city"`
		Zip     string `json:"zip"`
		Country string `json:"country"`
	} `json:"address"`
	Tags   []string `json:"tags"`
	Scores []int    `json:"scores"`
	Bio    string   `json:"bio"`
}

// recordSize is about how many bytes of JSON a record marshals to.
const recordSize = 1024

const lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor " +
	"incididunt ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation " +
	"ullamco laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit " +
	"in voluptate velit esse cillum dolore eu fugiat nulla pariatur. Excepteur sint occaecat cupidatat " +
	"non proident, sunt in culpa qui officia deserunt mollit anim id est laborum. Sed ut perspiciatis " +
	"unde omnis iste natus error sit voluptatem accusantium doloremque laudantium, totam rem aperiam, " +
	"eaque ipsa quae ab illo inventore veritatis et quasi architecto beatae vitae dicta sunt explicabo."

var epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// database is the source of truth the realistic workloads share: each
// load sleeps for its latency (time.Sleep: the database's time, not this
// process's CPU) and returns the key's record at its current version; a
// write bumps the version (the database's own cost of a write is not
// modelled). Loads are counted.
type database struct {
	delay    time.Duration
	keys     []string
	prefix   string
	versions []atomic.Uint32
	bio      string
	loads    atomic.Int64
}

func newDatabase(keys []string, prefix string, delay time.Duration) *database {
	d := &database{delay: delay, keys: keys, prefix: prefix, versions: make([]atomic.Uint32, len(keys))}
	d.bio = lorem
	if n := len(d.value(len(keys) - 1)); n < recordSize {
		d.bio = strings.Repeat(lorem, recordSize/len(lorem)+1)[:len(lorem)+recordSize-n]
	}
	return d
}

func (d *database) record(i int) record {
	v := d.versions[i].Load()
	r := record{
		ID:        d.keys[i],
		Version:   v,
		Name:      "User " + strconv.Itoa(i),
		Email:     "user" + strconv.Itoa(i) + "@example.com",
		Status:    "active",
		Plan:      [...]string{"free", "pro", "team"}[i%3],
		Locale:    "en-GB",
		CreatedAt: epoch.Add(time.Duration(i) * time.Minute),
		UpdatedAt: epoch.Add(time.Duration(i)*time.Minute + time.Duration(v)*time.Second),
		Tags:      []string{"newsletter", "beta", "mobile", "eu"},
		Scores:    []int{i % 97, i % 89, i % 83, i % 79, i % 73, i % 71, i % 67, i % 61},
		Bio:       d.bio,
	}
	r.Address.Street = strconv.Itoa(i%500+1) + " Market Street"
	r.Address.City = "Springfield"
	r.Address.Zip = strconv.Itoa(10000 + i%89999)
	r.Address.Country = "GB"
	return r
}

// value is the JSON of record i at its current version.
func (d *database) value(i int) string {
	b, err := json.Marshal(d.record(i))
	if err != nil {
		panic(err) // a plain struct always marshals
	}
	return string(b)
}

func (d *database) index(key string) (int, error) {
	i, err := strconv.Atoi(strings.TrimPrefix(key, d.prefix))
	if err != nil || i < 0 || i >= len(d.keys) {
		return 0, fmt.Errorf("database: no record %q", key)
	}
	return i, nil
}

// load is one read of the database.
func (d *database) load(key string) (string, error) {
	d.loads.Add(1)
	i, err := d.index(key)
	if err != nil {
		return "", err
	}
	time.Sleep(d.delay)
	return d.value(i), nil
}

// write changes record i and returns its new value.
func (d *database) write(i int) string {
	d.versions[i].Add(1)
	return d.value(i)
}

// checkRecord is a cheap check that v is a record's JSON.
func checkRecord(v string) error {
	if len(v) < recordSize/2 || !strings.HasPrefix(v, `{"id":"`) {
		return fmt.Errorf("not a record: %d bytes", len(v))
	}
	return nil
}

// realKeys returns the keys of the realistic workloads, made once.
func (e *env) realKeys() []string {
	e.realOnce.Do(func() { e.realKeyList = keyRange("r:", 0, e.sc.RealKeys) })
	return e.realKeyList
}

// ---------------------------------------------------------------- one measurement

// instance is a subject instance created for one measurement, with its
// request counter; its diagnostics are taken over the measured window
// only (not tracked for the whole instance's life).
type instance struct {
	s   subject.Subject
	req *subject.Requests
}

func (e *env) newInstance(f subject.Factory, cfg subject.Config) (*instance, error) {
	cfg.Addr = e.addr
	if cfg.LocalSize == 0 {
		cfg.LocalSize = e.sc.LocalSize
	}
	cfg.Requests = &subject.Requests{}
	s, err := f.New(cfg)
	if err != nil {
		return nil, err
	}
	return &instance{s: s, req: cfg.Requests}, nil
}

// counters is what an instance has counted so far: its library's own
// counters, and its Redis requests as "redis:<command>".
func (in *instance) counters() map[string]uint64 {
	out := map[string]uint64{}
	if d, ok := in.s.(subject.Diagnoser); ok {
		for k, v := range d.Diagnostics() {
			out[k] = v
		}
	}
	by, cmds := in.req.Snapshot()
	for k, v := range by {
		out["redis:"+k] = uint64(v)
	}
	out["redis_commands"] = uint64(cmds)
	return out
}

// window is one measured interval of an instance: allocations, requests,
// the library's counters and, for profiled subjects, profiles.
type window struct {
	e       *env
	in      *instance
	c0      map[string]uint64
	am      allocMeter
	t0      time.Time
	profile func() error
}

// startWindow collects garbage, starts the profiles if f is profiled, and
// takes the first readings.
func (e *env) startWindow(ctx context.Context, wl string, f subject.Factory, round int, in *instance) (*window, error) {
	w := &window{e: e, in: in}
	runtime.GC()
	stop, err := e.startProfile(wl, f, round)
	if err != nil {
		return nil, err
	}
	w.profile = stop
	w.c0 = in.counters()
	maps.Copy(w.c0, e.serverStats(ctx))
	w.am.start()
	w.t0 = time.Now()
	return w, nil
}

// windowResult is what a window measured besides the workload's own
// figures.
type windowResult struct {
	elapsed  time.Duration
	allocsOp float64
	requests float64 // sent by the instance's clients
	commands float64 // run by Redis, inside scripts too
	cpuUs    float64 // Redis's CPU time (user and system), µs
}

// stop ends the window: allocations per op over ops, the request count,
// Redis's commands and CPU time, and the diagnostics of the window
// (counters' differences; gauges as they are at the end) handed to the
// runner.
func (w *window) stop(ctx context.Context, ops int64, extra map[string]uint64) (windowResult, error) {
	var r windowResult
	r.elapsed = time.Since(w.t0)
	r.allocsOp, _ = w.am.stop(int(ops))
	c1 := w.in.counters()
	maps.Copy(c1, w.e.serverStats(ctx))
	err := w.profile()
	d := map[string]uint64{}
	for k, v := range c1 {
		switch {
		case k == "l1_entries":
			d[k] = v
		case v > w.c0[k]:
			d[k] = v - w.c0[k]
			switch {
			case strings.HasPrefix(k, "redis:"):
				r.requests += float64(d[k])
			case strings.HasPrefix(k, "server:"):
				r.commands += float64(d[k])
			case k == "redis_cpu_us":
				r.cpuUs = float64(d[k])
			}
		}
	}
	for k, v := range extra {
		d[k] = v
	}
	w.e.addDiagnostics(d)
	return r, err
}

// serverStats reads Redis's counters: the calls of each command, as
// "server:<command>" (commands that scripts run included, INFO excluded),
// and its CPU time as "redis_cpu_us". Redis serves only the subject under
// measurement (and this admin client) meanwhile, so the differences over a
// window are that subject's. Nil when INFO fails.
func (e *env) serverStats(ctx context.Context) map[string]uint64 {
	info, err := e.admin.Info(ctx, "cpu", "commandstats").Result()
	if err != nil {
		return nil
	}
	out := map[string]uint64{}
	var cpu float64
	for line := range strings.SplitSeq(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch {
		case k == "used_cpu_sys" || k == "used_cpu_user":
			x, _ := strconv.ParseFloat(v, 64)
			cpu += x
		case strings.HasPrefix(k, "cmdstat_") && k != "cmdstat_info":
			calls, _, _ := strings.Cut(strings.TrimPrefix(v, "calls="), ",")
			n, _ := strconv.ParseUint(calls, 10, 64)
			out["server:"+strings.TrimPrefix(k, "cmdstat_")] = n
		}
	}
	out["redis_cpu_us"] = uint64(cpu * 1e6)
	return out
}

// startProfile starts a CPU profile and writes a heap profile (for its
// allocation counts) when f is a profiled subject; stop ends the CPU
// profile and writes the heap profile again, so that
// `go tool pprof -sample_index=alloc_space -base <allocs0> <allocs1>`
// shows what the window allocated.
func (e *env) startProfile(wl string, f subject.Factory, round int) (stop func() error, err error) {
	if !slices.Contains(e.profile, f.Name) {
		return func() error { return nil }, nil
	}
	if err := os.MkdirAll(e.profileDir, 0o755); err != nil {
		return nil, err
	}
	base := filepath.Join(e.profileDir, fmt.Sprintf("%s-%s-r%d", wl, slug(f.Name), round+1))
	writeHeap := func(path string) error {
		runtime.GC() // the heap profile is as of the last collection
		hf, err := os.Create(path)
		if err != nil {
			return err
		}
		if err := pprof.Lookup("allocs").WriteTo(hf, 0); err != nil {
			hf.Close()
			return err
		}
		return hf.Close()
	}
	if err := writeHeap(base + ".allocs0.pprof"); err != nil {
		return nil, err
	}
	cf, err := os.Create(base + ".cpu.pprof")
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(cf); err != nil {
		cf.Close()
		return nil, fmt.Errorf("runner: CPU profile (is -cpuprofile on too?): %w", err)
	}
	e.logf("[%s] profiling %s round %d into %s.*", wl, f.Name, round+1, base)
	return func() error {
		pprof.StopCPUProfile()
		if err := cf.Close(); err != nil {
			return err
		}
		return writeHeap(base + ".allocs1.pprof")
	}, nil
}

// ---------------------------------------------------------------- realistic

func realistic(sc Scale) workload {
	w := workload{
		id:    "realistic",
		title: "Realistic mix: Zipf keys, expiries, misses, writes",
		desc: fmt.Sprintf("%d goroutines run for %s (after %s of the same, not measured) on one fresh instance "+
			"(fresh namespace, starting cold): each operation is a write with probability %.0f%%, else a read "+
			"(GetOrLoad) of a key drawn from Zipf(s=%.2f) over %d keys (writes pick their key the same way). "+
			"The TTL is %s for every subject (in Redis and in local tiers); local tiers hold %d entries. The "+
			"loader is a shared database that sleeps %s and returns the key's record as about %d B of JSON, "+
			"which every subject caches as an opaque string (nobody decodes it on a read). A write bumps the "+
			"record's version and calls the subject's write (see the subjects table: write-through Set, or "+
			"Delete after which the next read loads). "+
			"`×base` is ops/s divided by %s's in the same round (median over rounds); `hit ratio` is the share of "+
			"reads whose own loader did not run while they waited (reads that waited for another read's load "+
			"count as hits, as with singleflight); `loader calls` counts every call in the window, `of which background` "+
			"those that started after the read that passed the loader had returned (early refreshes). "+
			"The loop is closed: how often keys expire, hence the loads per second, is set by the TTL, so a "+
			"subject that completes more reads per second also has a higher hit ratio; `loader calls` (same "+
			"window for every subject) is the load on the database. "+
			"Latencies are of reads only. `allocs/op`: runtime.MemStats Mallocs over the window divided by "+
			"operations (every goroutine counted, the database's JSON encoding and one loader closure per "+
			"read of the harness included). `Redis req/op`: requests sent to Redis per operation (a command, "+
			"a pipeline or an MGET is one; see the breakdown below the table); `Redis cmds/op`: commands "+
			"Redis ran per operation, those run by scripts included (INFO commandstats); `Redis CPU µs/op`: "+
			"redis-server's CPU time (INFO cpu, user and system) per operation: Redis shares the 2 cores.",
			sc.RealGoroutines, sc.RealDuration, sc.RealWarmup, 100*sc.RealWrites, sc.RealS, sc.RealKeys,
			sc.RealTTL, sc.LocalSize, sc.RealLoad, recordSize, subject.Baseline),
		metrics: []MetricDef{
			{Key: "tput_ops", Label: "ops/s"},
			{Key: "tput_ops_rx", Label: "×base (same round)", NoRatio: true},
			{Key: "hit", Label: "hit ratio"},
			{Key: "loads", Label: "loader calls"},
			{Key: "bg_loads", Label: "of which background", NoRatio: true},
			{Key: "p50_us", Label: "p50 µs"},
			{Key: "p99_us", Label: "p99 µs"},
			{Key: "p999_us", Label: "p99.9 µs"},
			{Key: "allocs_op", Label: "allocs/op"},
			{Key: "req_op", Label: "Redis req/op"},
			{Key: "cmd_op", Label: "Redis cmds/op"},
			{Key: "redis_cpu_op", Label: "Redis CPU µs/op"},
		},
		applies: func(f subject.Factory) (string, string) {
			if f.Caps.Write == "" {
				return "not supported", "no write"
			}
			return "", ""
		},
		rounds:    sc.RealRounds,
		sameRound: []string{"tput_ops"},
	}
	w.run = func(ctx context.Context, e *env, f subject.Factory, round int) (map[string]float64, error) {
		sc := e.sc
		keys := e.realKeys()
		db := newDatabase(keys, "r:", sc.RealLoad)
		ns := fmt.Sprintf("rl:%s:r%d", slug(f.Name), round)
		in, err := e.newInstance(f, subject.Config{Namespace: ns, TTL: sc.RealTTL})
		if err != nil {
			return nil, err
		}
		defer in.s.Close()
		wr, ok := in.s.(subject.Writer)
		if !ok {
			return nil, fmt.Errorf("%s does not implement subject.Writer", f.Name)
		}

		type worker struct {
			cur                      atomic.Uint64
			seq                      uint64
			r                        *rand.Rand
			z                        *rand.Zipf
			lat                      hist
			reads, writes, errs, wer int64
			firstErr                 error
		}
		ws := make([]*worker, sc.RealGoroutines)
		for g := range ws {
			r := rand.New(rand.NewPCG(uint64(round)+1, uint64(g)))
			ws[g] = &worker{r: r, z: rand.NewZipf(r, sc.RealS, 1, uint64(len(keys)-1))}
		}
		var fg, bg atomic.Int64
		phase := func(d time.Duration, record bool) {
			end := time.Now().Add(d)
			runParallel(len(ws), func(g int) {
				w := ws[g]
				for {
					i := int(w.z.Uint64())
					if w.r.Float64() < sc.RealWrites {
						// A failed write is the library's answer (tiercache
						// returns Redis errors from writes, for the caller to
						// retry): counted, not fatal.
						if err := wr.Write(ctx, keys[i], db.write(i)); err != nil {
							w.wer++
						}
						w.writes++
						if !time.Now().Before(end) {
							return
						}
						continue
					}
					// The read's loader tells its own loads (the read is
					// still waiting: foreground) from those that start after
					// it returned (background: an early refresh).
					w.seq++
					id := w.seq
					w.cur.Store(id)
					load := func(_ context.Context, key string) (string, error) {
						if w.cur.Load() == id {
							fg.Add(1)
						} else {
							bg.Add(1)
						}
						return db.load(key)
					}
					t1 := timedRead(ctx, in.s, keys[i], load, record, &w.lat, &w.errs, &w.firstErr, func() { w.cur.Store(0) })
					w.reads++
					if !t1.Before(end) {
						return
					}
				}
			})
		}
		phase(sc.RealWarmup, false)
		for _, wk := range ws {
			wk.reads, wk.writes, wk.errs, wk.wer, wk.firstErr = 0, 0, 0, 0, nil
		}
		fg.Store(0)
		bg.Store(0)
		db.loads.Store(0)

		win, err := e.startWindow(ctx, w.id, f, round, in)
		if err != nil {
			return nil, err
		}
		phase(sc.RealDuration, true)
		var lat hist
		var reads, writes, errs, wer int64
		var firstErr error
		for _, wk := range ws {
			lat.merge(&wk.lat)
			reads, writes, errs, wer = reads+wk.reads, writes+wk.writes, errs+wk.errs, wer+wk.wer
			firstErr = cmpOr(firstErr, wk.firstErr)
		}
		ops := reads + writes
		loads := db.loads.Load()
		res, err := win.stop(ctx, ops, map[string]uint64{
			"ops": uint64(ops), "reads": uint64(reads), "writes": uint64(writes),
			"read_errors": uint64(errs), "write_errors": uint64(wer),
			"loader_calls": uint64(loads), "fg_loads": uint64(fg.Load()), "bg_loads": uint64(bg.Load()),
		})
		if err != nil {
			return nil, err
		}
		// A library may fail an odd read under this load (a timeout); more
		// than one in a thousand is not a figure to report.
		if errs*1000 > reads {
			return nil, fmt.Errorf("%d of %d reads failed, first: %w", errs, reads, firstErr)
		}
		return map[string]float64{
			"tput_ops":     float64(ops) / res.elapsed.Seconds(),
			"hit":          1 - float64(fg.Load())/float64(reads),
			"loads":        float64(loads),
			"bg_loads":     float64(bg.Load()),
			"p50_us":       us(lat.quantile(0.50)),
			"p99_us":       us(lat.quantile(0.99)),
			"p999_us":      us(lat.quantile(0.999)),
			"allocs_op":    res.allocsOp,
			"req_op":       res.requests / float64(ops),
			"cmd_op":       res.commands / float64(ops),
			"redis_cpu_op": res.cpuUs / float64(ops),
		}, nil
	}
	return w
}

// timedRead is one measured read of both workloads: it reads key through
// s, runs done (if any) as soon as the read returned, records the latency
// when record, and counts a failed or wrong read in errs and firstErr. It
// returns when the read finished.
func timedRead(ctx context.Context, s subject.Subject, key string, load subject.Loader, record bool, lat *hist, errs *int64, firstErr *error, done func()) time.Time {
	t0 := time.Now()
	v, err := s.GetOrLoad(ctx, key, load)
	t1 := time.Now()
	if done != nil {
		done()
	}
	if record {
		lat.add(t1.Sub(t0))
	}
	if err == nil {
		err = checkRecord(v)
	}
	if err != nil {
		*errs++
		*firstErr = cmpOr(*firstErr, err)
	}
	return t1
}

func cmpOr(a, b error) error {
	if a != nil {
		return a
	}
	return b
}

// ---------------------------------------------------------------- read-only

func readOnly(sc Scale) workload {
	w := workload{
		id:    "readonly",
		title: "Read-only on present values",
		desc: fmt.Sprintf("%d goroutines read for %s (after %s of the same, not measured) on one fresh instance, "+
			"keys drawn from Zipf(s=%.2f) over %d keys that are all in Redis (written beforehand by the same "+
			"library, TTL 1 h), values the same records of about %d B of JSON: what a read costs when nothing "+
			"misses Redis (local tiers, %d entries, start empty and fill as they go). `×base` is ops/s divided "+
			"by %s's (a GET per read) in the same round. `loads` must be 0. Other columns as in the realistic mix.",
			sc.ReadOnlyGoroutines, sc.ReadOnlyDuration, sc.RealWarmup, sc.RealS, sc.RealKeys, recordSize,
			sc.LocalSize, subject.Baseline),
		metrics: []MetricDef{
			{Key: "tput_ops", Label: "ops/s"},
			{Key: "tput_ops_rx", Label: "×base (same round)", NoRatio: true},
			{Key: "p50_us", Label: "p50 µs"},
			{Key: "p99_us", Label: "p99 µs"},
			{Key: "p999_us", Label: "p99.9 µs"},
			{Key: "allocs_op", Label: "allocs/op"},
			{Key: "req_op", Label: "Redis req/op"},
			{Key: "cmd_op", Label: "Redis cmds/op"},
			{Key: "redis_cpu_op", Label: "Redis CPU µs/op"},
			{Key: "loads", Label: "loads", NoRatio: true},
		},
		applies:   all,
		rounds:    sc.RealRounds,
		sameRound: []string{"tput_ops"},
	}
	w.setup = func(ctx context.Context, e *env, f subject.Factory) error {
		keys := e.realKeys()
		db := newDatabase(keys, "r:", 0)
		return e.populateWith(ctx, f, f.Family+":ro", keys, false, func(k string) string {
			v, err := db.load(k)
			if err != nil {
				panic(err)
			}
			return v
		})
	}
	w.run = func(ctx context.Context, e *env, f subject.Factory, round int) (map[string]float64, error) {
		sc := e.sc
		keys := e.realKeys()
		db := newDatabase(keys, "r:", sc.RealLoad)
		in, err := e.newInstance(f, subject.Config{Namespace: f.Family + ":ro", TTL: time.Hour})
		if err != nil {
			return nil, err
		}
		defer in.s.Close()
		load := func(_ context.Context, k string) (string, error) { return db.load(k) }
		type worker struct {
			r        *rand.Rand
			z        *rand.Zipf
			lat      hist
			n, errs  int64
			firstErr error
		}
		ws := make([]*worker, sc.ReadOnlyGoroutines)
		for g := range ws {
			r := rand.New(rand.NewPCG(uint64(round)+1, uint64(g)))
			ws[g] = &worker{r: r, z: rand.NewZipf(r, sc.RealS, 1, uint64(len(keys)-1))}
		}
		phase := func(d time.Duration, record bool) {
			end := time.Now().Add(d)
			runParallel(len(ws), func(g int) {
				w := ws[g]
				for {
					t1 := timedRead(ctx, in.s, keys[w.z.Uint64()], load, record, &w.lat, &w.errs, &w.firstErr, nil)
					w.n++
					if !t1.Before(end) {
						return
					}
				}
			})
		}
		phase(sc.RealWarmup, false)
		for _, wk := range ws {
			wk.n, wk.errs, wk.firstErr = 0, 0, nil
		}
		db.loads.Store(0)
		win, err := e.startWindow(ctx, w.id, f, round, in)
		if err != nil {
			return nil, err
		}
		phase(sc.ReadOnlyDuration, true)
		var lat hist
		var ops, errs int64
		var firstErr error
		for _, wk := range ws {
			lat.merge(&wk.lat)
			ops, errs = ops+wk.n, errs+wk.errs
			firstErr = cmpOr(firstErr, wk.firstErr)
		}
		res, err := win.stop(ctx, ops, map[string]uint64{
			"ops": uint64(ops), "reads": uint64(ops), "read_errors": uint64(errs), "loader_calls": uint64(db.loads.Load()),
		})
		if err != nil {
			return nil, err
		}
		if errs > 0 {
			return nil, fmt.Errorf("%d of %d reads failed, first: %w", errs, ops, firstErr)
		}
		return map[string]float64{
			"tput_ops":     float64(ops) / res.elapsed.Seconds(),
			"p50_us":       us(lat.quantile(0.50)),
			"p99_us":       us(lat.quantile(0.99)),
			"p999_us":      us(lat.quantile(0.999)),
			"allocs_op":    res.allocsOp,
			"req_op":       res.requests / float64(ops),
			"cmd_op":       res.commands / float64(ops),
			"redis_cpu_op": res.cpuUs / float64(ops),
			"loads":        float64(db.loads.Load()),
		}, nil
	}
	return w
}

// realState is what the realistic workloads keep in the env.
type realState struct {
	realOnce    sync.Once
	realKeyList []string
}

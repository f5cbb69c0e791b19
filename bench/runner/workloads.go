package runner

import (
	"context"
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/bench/subject"
)

func workloads(sc Scale) []workload {
	return []workload{l2Hit(sc), hotKeys(sc), stampede(sc), zipfTTL(sc), batch(sc), memory(sc), realistic(sc), readOnly(sc)}
}

func keyRange(prefix string, from, to int) []string {
	ks := make([]string, 0, to-from)
	for i := from; i < to; i++ {
		ks = append(ks, fmt.Sprintf("%s%07d", prefix, i))
	}
	return ks
}

// slug turns a subject name into a string fit for a Redis key and a
// tiercache prefix: lower-case letters, digits and '-'.
func slug(name string) string {
	b := []byte(strings.ToLower(name))
	for i, c := range b {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') {
			b[i] = '-'
		}
	}
	return string(b)
}

func all(subject.Factory) (string, string) { return "", "" }

func needsLocal(f subject.Factory) (string, string) {
	if f.Caps.Local == "" && f.Name != subject.Baseline {
		return "n/a", "no local tier in this configuration"
	}
	return "", ""
}

// newSubject creates an instance and warms its connections with conc
// concurrent reads of warm keys (which the caller has populated).
func (e *env) newSubject(ctx context.Context, f subject.Factory, cfg subject.Config, warm []string, conc int) (subject.Subject, error) {
	cfg.Addr = e.addr
	if cfg.LocalSize == 0 {
		cfg.LocalSize = e.sc.LocalSize
	}
	s, err := f.New(cfg)
	if err != nil {
		return nil, err
	}
	e.track(s)
	if len(warm) > 0 {
		var errs opErrors
		runParallel(conc, func(g int) {
			if _, err := s.GetOrLoad(ctx, warm[g%len(warm)], e.loadPayload); err != nil {
				errs.add(err)
			}
		})
		if err := errs.err(); err != nil {
			s.Close()
			return nil, fmt.Errorf("warm-up: %w", err)
		}
	}
	return s, nil
}

func (e *env) loadPayload(_ context.Context, k string) (string, error) { return e.payload(k), nil }

// ---------------------------------------------------------------- L2 hit

func l2Hit(sc Scale) workload {
	w := workload{
		id:    "l2hit",
		title: "L2 hit: the key is in Redis, not in this process",
		desc: fmt.Sprintf("Each read is of a key that is in Redis (written by the same library) and that this instance "+
			"has not read before, so a local tier cannot answer it: the cost of one Redis hit, local fill included. "+
			"Latency: one goroutine, sequential reads. Throughput: %d goroutines on one instance. Allocations: "+
			"runtime.MemStats over the single-goroutine reads, every goroutine of the process counted. "+
			"`loads` must be 0 (a read that reached the loader is a miss).", sc.Goroutines),
		metrics: []MetricDef{
			{Key: "p50_us", Label: "p50 µs"},
			{Key: "p99_us", Label: "p99 µs"},
			{Key: "allocs_op", Label: "allocs/op"},
			{Key: "bytes_op", Label: "B/op"},
			{Key: "tput_ops", Label: fmt.Sprintf("ops/s (%d gor.)", sc.Goroutines)},
			{Key: "tput_p99_us", Label: fmt.Sprintf("p99 µs (%d gor.)", sc.Goroutines)},
			{Key: "loads", Label: "loads", NoRatio: true},
		},
		applies: all,
	}
	keys := func(e *env) (lat, tput, warm []string) {
		n := e.sc.L2LatencyOps + e.sc.L2ThroughputOps
		ks := keyRange("l2:", 0, n+e.sc.Goroutines)
		return ks[:e.sc.L2LatencyOps], ks[e.sc.L2LatencyOps:n], ks[n:]
	}
	w.setup = func(ctx context.Context, e *env, f subject.Factory) error {
		lat, tput, warm := keys(e)
		return e.populate(ctx, f, f.Family+":l2", slices.Concat(lat, tput, warm), false)
	}
	w.run = func(ctx context.Context, e *env, f subject.Factory, _ int) (map[string]float64, error) {
		lat, tput, warm := keys(e)
		s, err := e.newSubject(ctx, f, subject.Config{Namespace: f.Family + ":l2", TTL: time.Hour}, warm, e.sc.Goroutines)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		var loads atomic.Int64
		load := func(_ context.Context, k string) (string, error) {
			loads.Add(1)
			return e.payload(k), nil
		}
		var errs opErrors
		check := func(v string, err error) {
			if err == nil && len(v) != e.sc.ValueSize {
				err = fmt.Errorf("value of %d bytes, want %d", len(v), e.sc.ValueSize)
			}
			if err != nil {
				errs.add(err)
			}
		}

		ds := make([]time.Duration, len(lat))
		var am allocMeter
		runtime.GC()
		am.start()
		for i, k := range lat {
			t0 := time.Now()
			v, err := s.GetOrLoad(ctx, k, load)
			ds[i] = time.Since(t0)
			check(v, err)
		}
		allocs, bytes := am.stop(len(lat))

		var next atomic.Int64
		per := make([][]time.Duration, e.sc.Goroutines)
		t0 := time.Now()
		runParallel(e.sc.Goroutines, func(g int) {
			for i := int(next.Add(1) - 1); i < len(tput); i = int(next.Add(1) - 1) {
				t := time.Now()
				v, err := s.GetOrLoad(ctx, tput[i], load)
				per[g] = append(per[g], time.Since(t))
				check(v, err)
			}
		})
		elapsed := time.Since(t0)
		if err := errs.err(); err != nil {
			return nil, err
		}
		tds := slices.Concat(per...)
		return map[string]float64{
			"p50_us":      us(percentile(ds, 0.50)),
			"p99_us":      us(percentile(ds, 0.99)),
			"allocs_op":   allocs,
			"bytes_op":    bytes,
			"tput_ops":    float64(len(tput)) / elapsed.Seconds(),
			"tput_p99_us": us(percentile(tds, 0.99)),
			"loads":       float64(loads.Load()),
		}, nil
	}
	return w
}

// ---------------------------------------------------------------- hot keys

func hotKeys(sc Scale) workload {
	w := workload{
		id:    "hot",
		title: "Hot keys with a local tier",
		desc: fmt.Sprintf("%d goroutines read %d keys uniformly at random for %s, after every key was read twice so that "+
			"a local tier holds it. Subjects without a local tier are not run; the baseline is, reading Redis "+
			"every time, as the reference.", sc.Goroutines, sc.HotKeys, sc.HotDuration),
		metrics: []MetricDef{
			{Key: "tput_ops", Label: "ops/s"},
			{Key: "allocs_op", Label: "allocs/op"},
			{Key: "loads", Label: "loads", NoRatio: true},
		},
		applies: needsLocal,
	}
	w.setup = func(ctx context.Context, e *env, f subject.Factory) error {
		return e.populate(ctx, f, f.Family+":hot", keyRange("hot:", 0, e.sc.HotKeys), false)
	}
	w.run = func(ctx context.Context, e *env, f subject.Factory, round int) (map[string]float64, error) {
		keys := keyRange("hot:", 0, e.sc.HotKeys)
		s, err := e.newSubject(ctx, f, subject.Config{Namespace: f.Family + ":hot", TTL: time.Hour}, keys[:e.sc.Goroutines], e.sc.Goroutines)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		var loads atomic.Int64
		load := func(_ context.Context, k string) (string, error) {
			loads.Add(1)
			return e.payload(k), nil
		}
		var errs opErrors
		for range 2 {
			for _, k := range keys {
				if _, err := s.GetOrLoad(ctx, k, load); err != nil {
					errs.add(err)
				}
			}
		}
		// Libraries that fill their local tier from a background goroutine
		// (gocache's chain) get a moment to do it.
		time.Sleep(50 * time.Millisecond)
		loads.Store(0)

		var ops atomic.Int64
		var am allocMeter
		runtime.GC()
		am.start()
		deadline := time.Now().Add(e.sc.HotDuration)
		t0 := time.Now()
		runParallel(e.sc.Goroutines, func(g int) {
			r := rand.New(rand.NewPCG(uint64(round), uint64(g)))
			n := 0
			for {
				if n%64 == 0 && time.Now().After(deadline) {
					break
				}
				v, err := s.GetOrLoad(ctx, keys[r.IntN(len(keys))], load)
				if err == nil && len(v) != e.sc.ValueSize {
					err = fmt.Errorf("value of %d bytes", len(v))
				}
				if err != nil {
					errs.add(err)
				}
				n++
			}
			ops.Add(int64(n))
		})
		elapsed := time.Since(t0)
		allocs, _ := am.stop(int(ops.Load()))
		if err := errs.err(); err != nil {
			return nil, err
		}
		return map[string]float64{
			"tput_ops":  float64(ops.Load()) / elapsed.Seconds(),
			"allocs_op": allocs,
			"loads":     float64(loads.Load()),
		}, nil
	}
	return w
}

// ---------------------------------------------------------------- stampede

func stampede(sc Scale) workload {
	w := workload{
		id:    "stampede",
		title: "Stampede: one cold key, many readers at once",
		desc: fmt.Sprintf("%d goroutines call GetOrLoad on one key that no tier has, released together; the loader "+
			"takes %s. With N instances, N separate clients and caches in this process share one Redis "+
			"namespace (as N service instances do) and the goroutines are spread over them. `loads` is how "+
			"many times the loader ran: 1 is perfect coalescing; N means coalescing within a process only.",
			sc.StampedeGoroutines, sc.StampedeLoad),
		applies: all,
	}
	for _, n := range sc.StampedeInstances {
		w.metrics = append(w.metrics,
			MetricDef{Key: fmt.Sprintf("loads_%d", n), Label: fmt.Sprintf("loads (%d inst.)", n), NoRatio: true},
			MetricDef{Key: fmt.Sprintf("p99_ms_%d", n), Label: fmt.Sprintf("p99 ms (%d inst.)", n)},
			MetricDef{Key: fmt.Sprintf("max_ms_%d", n), Label: fmt.Sprintf("max ms (%d inst.)", n)},
		)
	}
	w.setup = func(ctx context.Context, e *env, f subject.Factory) error {
		return e.populate(ctx, f, f.Family+":st", keyRange("stwarm:", 0, 1), false)
	}
	w.run = func(ctx context.Context, e *env, f subject.Factory, round int) (map[string]float64, error) {
		out := map[string]float64{}
		warm := keyRange("stwarm:", 0, 1)
		for _, n := range e.sc.StampedeInstances {
			insts := make([]subject.Subject, 0, n)
			closeAll := func() {
				for _, s := range insts {
					s.Close()
				}
			}
			for range n {
				s, err := e.newSubject(ctx, f, subject.Config{Namespace: f.Family + ":st", TTL: time.Minute}, warm, 4)
				if err != nil {
					closeAll()
					return nil, err
				}
				insts = append(insts, s)
			}
			key := fmt.Sprintf("cold:%s:r%d:n%d", slug(f.Name), round, n)
			var loads atomic.Int64
			load := func(ctx context.Context, k string) (string, error) {
				loads.Add(1)
				select {
				case <-time.After(e.sc.StampedeLoad):
				case <-ctx.Done():
					return "", ctx.Err()
				}
				return e.payload(k), nil
			}
			ds := make([]time.Duration, e.sc.StampedeGoroutines)
			var errs opErrors
			var ready, done sync.WaitGroup
			start := make(chan struct{})
			for g := range e.sc.StampedeGoroutines {
				ready.Add(1)
				done.Add(1)
				go func() {
					defer done.Done()
					s := insts[g%n]
					ready.Done()
					<-start
					t0 := time.Now()
					v, err := s.GetOrLoad(ctx, key, load)
					ds[g] = time.Since(t0)
					if err == nil && v != e.payload(key) {
						err = fmt.Errorf("wrong value of %d bytes", len(v))
					}
					if err != nil {
						errs.add(err)
					}
				}()
			}
			ready.Wait()
			close(start)
			done.Wait()
			closeAll()
			if err := errs.err(); err != nil {
				return nil, fmt.Errorf("%d instances: %w", n, err)
			}
			out[fmt.Sprintf("loads_%d", n)] = float64(loads.Load())
			out[fmt.Sprintf("p99_ms_%d", n)] = ms(percentile(ds, 0.99))
			out[fmt.Sprintf("max_ms_%d", n)] = ms(ds[len(ds)-1])
		}
		return out, nil
	}
	return w
}

// ---------------------------------------------------------------- Zipf, short TTL

func zipfTTL(sc Scale) workload {
	w := workload{
		id:    "zipf",
		title: "Zipf reads with a short TTL",
		desc: fmt.Sprintf("%d goroutines read %d keys drawn from Zipf(s=%.2f) at a paced %d reads/s in total for %s, "+
			"TTL %s, loader %s, starting cold (a fresh namespace each round). `hit %%` is the share of reads "+
			"that did not run the loader (1 − loads/reads); loads are also counted per 100 ms window: "+
			"`peak/mean` well above 1 means loads come in bursts (keys expiring together). `reads/s` below "+
			"the paced rate means the subject could not keep up.",
			sc.ZipfGoroutines, sc.ZipfKeys, sc.ZipfS, sc.ZipfRate, sc.ZipfDuration, sc.ZipfTTL, sc.ZipfLoad),
		metrics: []MetricDef{
			{Key: "hit_pct", Label: "hit %"},
			{Key: "loads", Label: "loads"},
			{Key: "peak_100ms", Label: "peak loads/100ms"},
			{Key: "mean_100ms", Label: "mean loads/100ms"},
			{Key: "peak_mean", Label: "peak/mean"},
			{Key: "p99_ms", Label: "p99 ms"},
			{Key: "reads_s", Label: "reads/s"},
		},
		applies: all,
	}
	w.run = func(ctx context.Context, e *env, f subject.Factory, round int) (map[string]float64, error) {
		sc := e.sc
		ns := fmt.Sprintf("z:%s:r%d", slug(f.Name), round)
		// Fresh namespace, so nothing to warm with: the first reads dial.
		s, err := e.newSubject(ctx, f, subject.Config{Namespace: ns, TTL: sc.ZipfTTL}, nil, 0)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		buckets := make([]atomic.Int64, int(sc.ZipfDuration/(100*time.Millisecond))+50)
		var loads atomic.Int64
		var start time.Time
		load := func(ctx context.Context, k string) (string, error) {
			loads.Add(1)
			if b := int(time.Since(start) / (100 * time.Millisecond)); b < len(buckets) {
				buckets[b].Add(1)
			}
			select {
			case <-time.After(sc.ZipfLoad):
			case <-ctx.Done():
				return "", ctx.Err()
			}
			return e.payload(k), nil
		}
		keys := keyRange("z:", 0, sc.ZipfKeys)
		interval := time.Second / time.Duration(sc.ZipfRate)
		per := make([][]time.Duration, sc.ZipfGoroutines)
		var errs opErrors
		start = time.Now()
		end := start.Add(sc.ZipfDuration)
		runParallel(sc.ZipfGoroutines, func(g int) {
			r := rand.New(rand.NewPCG(uint64(round), uint64(g)))
			z := rand.NewZipf(r, sc.ZipfS, 1, uint64(sc.ZipfKeys-1))
			for i := 0; ; i++ {
				at := start.Add(time.Duration(i*sc.ZipfGoroutines+g) * interval)
				if at.After(end) {
					return
				}
				if d := time.Until(at); d > 0 {
					time.Sleep(d)
				}
				k := keys[z.Uint64()]
				t0 := time.Now()
				v, err := s.GetOrLoad(ctx, k, load)
				per[g] = append(per[g], time.Since(t0))
				if err == nil && len(v) != sc.ValueSize {
					err = fmt.Errorf("value of %d bytes", len(v))
				}
				if err != nil {
					errs.add(err)
				}
			}
		})
		elapsed := time.Since(start)
		if err := errs.err(); err != nil {
			return nil, err
		}
		ds := slices.Concat(per...)
		n := float64(len(ds))
		l := float64(loads.Load())
		windows := int(sc.ZipfDuration / (100 * time.Millisecond))
		var peak int64
		for i := range min(windows, len(buckets)) {
			peak = max(peak, buckets[i].Load())
		}
		mean := l / float64(windows)
		pm := 0.0
		if mean > 0 {
			pm = float64(peak) / mean
		}
		return map[string]float64{
			"hit_pct":    100 * (1 - l/n),
			"loads":      l,
			"peak_100ms": float64(peak),
			"mean_100ms": mean,
			"peak_mean":  pm,
			"p99_ms":     ms(percentile(ds, 0.99)),
			"reads_s":    n / elapsed.Seconds(),
		}, nil
	}
	return w
}

// ---------------------------------------------------------------- batch

func batch(sc Scale) workload {
	w := workload{
		id:    "batch",
		title: fmt.Sprintf("Batch reads of %d keys", sc.BatchSize),
		desc: fmt.Sprintf("One goroutine reads batches of %d keys with the library's batch call and a loader for the "+
			"missing keys. All-hit: every key is in Redis and new to this instance. With misses: %d of the "+
			"keys are in no tier; `loader calls/batch` should be 1 (one call for all the missing keys).",
			sc.BatchSize, sc.BatchMissing),
		metrics: []MetricDef{
			{Key: "p50_us", Label: "all-hit p50 µs"},
			{Key: "p99_us", Label: "all-hit p99 µs"},
			{Key: "allocs_batch", Label: "allocs/batch"},
			{Key: "miss_p50_us", Label: "with misses p50 µs"},
			{Key: "miss_calls", Label: "loader calls/batch", NoRatio: true},
		},
		applies: func(f subject.Factory) (string, string) {
			if f.Caps.Batch {
				return "", ""
			}
			return "not supported", "no batch read with a loader for the missing keys"
		},
	}
	keys := func(e *env) (hit []string, present [][]string) {
		nh := e.sc.BatchOps * e.sc.BatchSize
		np := e.sc.BatchSize - e.sc.BatchMissing
		all := keyRange("b:", 0, nh+e.sc.BatchMissOps*np)
		return all[:nh], slices.Collect(slices.Chunk(all[nh:], np))
	}
	w.setup = func(ctx context.Context, e *env, f subject.Factory) error {
		hit, present := keys(e)
		return e.populate(ctx, f, f.Family+":b", slices.Concat(append([][]string{hit}, present...)...), true)
	}
	w.run = func(ctx context.Context, e *env, f subject.Factory, round int) (map[string]float64, error) {
		hit, present := keys(e)
		s, err := e.newSubject(ctx, f, subject.Config{Namespace: f.Family + ":b", TTL: time.Hour}, nil, 0)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		b := s.(subject.Batcher)
		var calls, loaded atomic.Int64
		load := func(_ context.Context, missing []string) (map[string]string, error) {
			calls.Add(1)
			loaded.Add(int64(len(missing)))
			out := make(map[string]string, len(missing))
			for _, k := range missing {
				out[k] = e.payload(k)
			}
			return out, nil
		}
		// Warm the connection with one batch that is not measured.
		if _, err := b.GetOrLoadMany(ctx, hit[:e.sc.BatchSize], load); err != nil {
			return nil, fmt.Errorf("warm-up: %w", err)
		}
		calls.Store(0)
		chunks := slices.Collect(slices.Chunk(hit[e.sc.BatchSize:], e.sc.BatchSize))
		ds := make([]time.Duration, 0, len(chunks))
		var am allocMeter
		runtime.GC()
		am.start()
		for _, ks := range chunks {
			t0 := time.Now()
			m, err := b.GetOrLoadMany(ctx, ks, load)
			ds = append(ds, time.Since(t0))
			if err != nil {
				return nil, err
			}
			if len(m) != len(ks) {
				return nil, fmt.Errorf("all-hit batch returned %d of %d keys", len(m), len(ks))
			}
		}
		allocs, _ := am.stop(len(chunks))
		if c := calls.Load(); c != 0 {
			return nil, fmt.Errorf("all-hit batches called the loader %d times", c)
		}
		mds := make([]time.Duration, 0, len(present))
		for i, ks := range present {
			ks = append(slices.Clone(ks), keyRange(fmt.Sprintf("bm:%s:r%d:%d:", slug(f.Name), round, i), 0, e.sc.BatchMissing)...)
			t0 := time.Now()
			m, err := b.GetOrLoadMany(ctx, ks, load)
			mds = append(mds, time.Since(t0))
			if err != nil {
				return nil, err
			}
			if len(m) != len(ks) {
				return nil, fmt.Errorf("batch with misses returned %d of %d keys", len(m), len(ks))
			}
		}
		return map[string]float64{
			"p50_us":       us(percentile(ds, 0.50)),
			"p99_us":       us(percentile(ds, 0.99)),
			"allocs_batch": allocs,
			"miss_p50_us":  us(percentile(mds, 0.50)),
			"miss_calls":   float64(calls.Load()) / float64(len(present)),
		}, nil
	}
	return w
}

// ---------------------------------------------------------------- memory

func memory(sc Scale) workload {
	w := workload{
		id:    "memory",
		title: "Local tier memory per entry",
		desc: fmt.Sprintf("A fresh instance with a local tier bounded to 2N entries loads N=%d keys (values of %d bytes) "+
			"and then reads them all once more (so that tiers filled on a Redis read hold them too); "+
			"`B/entry` is the growth of the Go heap (HeapAlloc after runtime.GC) divided by N, the value "+
			"and key included; `overhead` subtracts the value and key bytes. Connections are opened before "+
			"the first measurement.", sc.MemoryEntries, sc.ValueSize),
		metrics: []MetricDef{
			{Key: "bytes_entry", Label: "B/entry", NoRatio: true},
			{Key: "overhead", Label: "overhead B/entry", NoRatio: true},
			{Key: "held", Label: "entries held (if reported)", NoRatio: true},
		},
		applies: func(f subject.Factory) (string, string) {
			if f.Caps.Local == "" {
				return "n/a", "no local tier in this configuration"
			}
			return "", ""
		},
	}
	w.run = func(ctx context.Context, e *env, f subject.Factory, round int) (map[string]float64, error) {
		n := e.sc.MemoryEntries
		ns := fmt.Sprintf("mem:%s:r%d", slug(f.Name), round)
		const conc = 16
		warm := keyRange("mw:", 0, conc)
		s, err := e.newSubject(ctx, f, subject.Config{Namespace: ns, TTL: time.Hour, LocalSize: 2 * n}, warm, conc)
		if err != nil {
			return nil, err
		}
		defer s.Close()
		keys := keyRange("m:", 0, n)
		var errs opErrors
		pass := func() {
			var next atomic.Int64
			runParallel(conc, func(int) {
				for i := int(next.Add(1) - 1); i < n; i = int(next.Add(1) - 1) {
					if _, err := s.GetOrLoad(ctx, keys[i], e.loadPayload); err != nil {
						errs.add(err)
					}
				}
			})
			time.Sleep(200 * time.Millisecond) // background writes
		}
		h0 := heapInUse()
		pass()
		pass()
		h1 := heapInUse()
		held := -1.0
		if d, ok := s.(subject.Diagnoser); ok {
			if v, ok := d.Diagnostics()["l1_entries"]; ok {
				held = float64(v)
			}
		}
		runtime.KeepAlive(s)
		if err := errs.err(); err != nil {
			return nil, err
		}
		per := (float64(h1) - float64(h0)) / float64(n)
		m := map[string]float64{
			"bytes_entry": per,
			"overhead":    per - float64(e.sc.ValueSize+len(keys[0])),
		}
		if held >= 0 {
			m["held"] = held
		}
		return m, nil
	}
	return w
}

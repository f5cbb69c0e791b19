// Command stampedephases splits the stampede workload of sidebyside (one
// cold key, 1000 goroutines released together over N instances, a 50 ms
// loader) into phases, to show where each subject's waiters spend the time
// that the p99 adds to the loader's:
//
//	go run ./bench/cmd/stampedephases
//	go run ./bench/cmd/stampedephases -rounds 7 -subjects tiercache,sturdyc -instances 4
//
// Per subject and instance count it prints the medians over the rounds
// (subjects interleaved in each round) of: release to the first loader
// call (the reads before the load: Redis GETs, a lease), the loader's own
// time, the last loader return to the first and to the 99th-percentile
// goroutine's return (the fill and the waking of the waiters), and the p99
// from the release, as sidebyside reports it.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tiercache/tiercache/bench/runner"
	"github.com/tiercache/tiercache/bench/subject"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "stampedephases:", err)
		os.Exit(1)
	}
}

type phases struct {
	toLoad, load, toFirst, toP99, p99 time.Duration
	loads                             int64
}

func run() error {
	var (
		rounds     = flag.Int("rounds", 5, "rounds, subjects interleaved in each")
		goroutines = flag.Int("goroutines", 1000, "readers released together")
		loadTime   = flag.Duration("load", 50*time.Millisecond, "the loader's time")
		names      = flag.String("subjects", "tiercache,tiercache+L1,sturdyc,gocache,go-redis/cache", "subjects")
		instances  = flag.String("instances", "1,4", "instance counts")
	)
	flag.Parse()
	ctx := context.Background()
	srv, err := runner.StartRedis(ctx)
	if err != nil {
		return err
	}
	defer srv.Stop()
	var fs []subject.Factory
	for _, n := range strings.Split(*names, ",") {
		i := slices.IndexFunc(subject.All(), func(f subject.Factory) bool { return f.Name == n })
		if i < 0 {
			return fmt.Errorf("no subject %q", n)
		}
		fs = append(fs, subject.All()[i])
	}
	var ns []int
	for _, s := range strings.Split(*instances, ",") {
		n, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		ns = append(ns, n)
	}
	res := map[string][]phases{}
	for r := range *rounds {
		for _, f := range fs {
			for _, n := range ns {
				p, err := once(ctx, srv.Addr, f, n, *goroutines, *loadTime, fmt.Sprintf("r%d", r))
				if err != nil {
					return fmt.Errorf("%s, %d instances: %w", f.Name, n, err)
				}
				k := f.Name + " " + strconv.Itoa(n)
				res[k] = append(res[k], p)
			}
		}
	}
	b, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("%s, load average %s", time.Now().UTC().Format(time.RFC3339), b)
	fmt.Printf("%-22s %5s %10s %10s %12s %12s %10s\n", "subject inst", "loads", "to load", "load", "→1st return", "→p99 return", "p99")
	for _, f := range fs {
		for _, n := range ns {
			ps := res[f.Name+" "+strconv.Itoa(n)]
			med := func(get func(phases) time.Duration) string {
				ds := make([]time.Duration, len(ps))
				for i, p := range ps {
					ds[i] = get(p)
				}
				slices.Sort(ds)
				return fmt.Sprintf("%.2fms", float64(ds[len(ds)/2].Microseconds())/1000)
			}
			fmt.Printf("%-22s %5d %10s %10s %12s %12s %10s\n", f.Name+" "+strconv.Itoa(n), ps[len(ps)/2].loads,
				med(func(p phases) time.Duration { return p.toLoad }), med(func(p phases) time.Duration { return p.load }),
				med(func(p phases) time.Duration { return p.toFirst }), med(func(p phases) time.Duration { return p.toP99 }),
				med(func(p phases) time.Duration { return p.p99 }))
		}
	}
	return nil
}

func once(ctx context.Context, addr string, f subject.Factory, n, goroutines int, loadTime time.Duration, tag string) (phases, error) {
	ns := "sp:" + strings.NewReplacer("/", "_", "+", "_").Replace(f.Name) + ":" + tag + ":" + strconv.Itoa(n)
	var insts []subject.Subject
	defer func() {
		for _, s := range insts {
			_ = s.Close()
		}
	}()
	payload := strings.Repeat("v", 100)
	for range n {
		s, err := f.New(subject.Config{Addr: addr, Namespace: ns, TTL: time.Minute, LocalSize: 10000})
		if err != nil {
			return phases{}, err
		}
		insts = append(insts, s)
		// Warm the connections, as sidebyside does (one warm key, 4 at once).
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				_, _ = s.GetOrLoad(ctx, "warm", func(context.Context, string) (string, error) { return payload, nil })
			})
		}
		wg.Wait()
	}
	var loads atomic.Int64
	var firstStart, lastEnd atomic.Int64
	load := func(ctx context.Context, k string) (string, error) {
		loads.Add(1)
		firstStart.CompareAndSwap(0, time.Now().UnixNano())
		time.Sleep(loadTime)
		lastEnd.Store(max(lastEnd.Load(), time.Now().UnixNano()))
		return payload, nil
	}
	ends := make([]int64, goroutines)
	var ready, done sync.WaitGroup
	start := make(chan struct{})
	var t0 time.Time
	var errs atomic.Int64
	for g := range goroutines {
		ready.Add(1)
		done.Add(1)
		go func() {
			defer done.Done()
			s := insts[g%n]
			ready.Done()
			<-start
			if _, err := s.GetOrLoad(ctx, "cold", load); err != nil {
				errs.Add(1)
			}
			ends[g] = time.Now().UnixNano()
		}()
	}
	ready.Wait()
	t0 = time.Now()
	close(start)
	done.Wait()
	if errs.Load() > 0 {
		return phases{}, fmt.Errorf("%d reads failed", errs.Load())
	}
	slices.Sort(ends)
	p99 := ends[min(len(ends)-1, int(0.99*float64(len(ends))))]
	fs, le := firstStart.Load(), lastEnd.Load()
	return phases{
		toLoad: time.Duration(fs - t0.UnixNano()), load: time.Duration(le - fs),
		toFirst: time.Duration(ends[0] - le), toP99: time.Duration(p99 - le),
		p99: time.Duration(p99 - t0.UnixNano()), loads: loads.Load(),
	}, nil
}

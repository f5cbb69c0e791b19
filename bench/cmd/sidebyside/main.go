// Command sidebyside runs tiercache and the libraries users would pick
// instead (go-redis/cache, eko/gocache, sturdyc, rueidisaside, and plain
// go-redis with singleflight as the baseline) through the same workloads
// against a redis-server it starts, and writes the tables as Markdown and
// JSON.
//
//	go run ./bench/cmd/sidebyside -out bench/results
//
// See bench/README.md for what each workload measures.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tiercache/tiercache/bench/runner"
	"github.com/tiercache/tiercache/bench/sim"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "sidebyside:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		out       = flag.String("out", "bench/results", "directory for latest.md and latest.json")
		rounds    = flag.Int("rounds", 5, "rounds: each subject runs each workload this many times, interleaved")
		tiny      = flag.Bool("tiny", false, "tiny mode: a few hundred operations per workload (for tests and smoke runs)")
		addr      = flag.String("redis", "", "use this Redis (host:port) instead of starting redis-server; it must be empty and disposable")
		subjects  = flag.String("subjects", "", "comma-separated subject names (default all; the baseline is always run)")
		wls       = flag.String("workloads", "", "comma-separated workloads (default all): "+strings.Join(runner.WorkloadIDs(), ","))
		trace     = flag.String("trace", "", "extra trace file to replay, LIRS or ARC format, optionally gzipped")
		traceFmt  = flag.String("trace-format", "arc", "format of -trace: lirs or arc")
		traceSize = flag.String("trace-sizes", "1000,10000,100000", "comma-separated cache sizes for -trace")
		timeout   = flag.Duration("timeout", 40*time.Minute, "give up after this long")
		cpuprof   = flag.String("cpuprofile", "", "write a CPU profile of the whole run to this file (use with -subjects and -workloads)")
		name      = flag.String("name", "latest", "base name of the report files in -out (name.md, name.json)")
		note      = flag.String("note", "", "a remark printed in the report's header (say, that the machine was busy)")
		realDur   = flag.Duration("realistic-duration", 0, "measured time per subject per round of the realistic workload (default 15s; 200ms with -tiny)")
		realRnds  = flag.Int("realistic-rounds", 0, "rounds of the realistic and read-only workloads (default 3; -rounds with -tiny)")
		roDur     = flag.Duration("readonly-duration", 0, "measured time per subject per round of the read-only workload (default 5s)")
		profile   = flag.String("profile", "", "comma-separated subjects to profile in the realistic and read-only workloads: "+
			"a CPU profile and a pair of heap profiles (allocations before and after) per measured window, in -profile-dir")
		profDir = flag.String("profile-dir", "bench/results/profiles", "directory for -profile's files")
	)
	flag.Parse()
	if *cpuprof != "" && *profile != "" {
		return fmt.Errorf("-cpuprofile and -profile cannot both be on (one CPU profile at a time)")
	}

	if *cpuprof != "" {
		f, err := os.Create(*cpuprof)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}

	opts := runner.Options{
		Addr:   *addr,
		Rounds: *rounds,
		Scale:  runner.FullScale(),
		Log:    os.Stderr,
	}
	if *tiny {
		opts.Scale = runner.TinyScale()
	}
	if *realDur > 0 {
		opts.Scale.RealDuration = *realDur
	}
	if *realRnds > 0 {
		opts.Scale.RealRounds = *realRnds
	}
	if *roDur > 0 {
		opts.Scale.ReadOnlyDuration = *roDur
	}
	if *profile != "" {
		opts.ProfileSubjects = strings.Split(*profile, ",")
		opts.ProfileDir = *profDir
	}
	if *subjects != "" {
		opts.Subjects = strings.Split(*subjects, ",")
	}
	if *wls != "" {
		opts.Workloads = strings.Split(*wls, ",")
	}
	if *trace != "" {
		var sizes []int
		for f := range strings.SplitSeq(*traceSize, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil {
				return fmt.Errorf("-trace-sizes: %w", err)
			}
			sizes = append(sizes, n)
		}
		t, err := runner.LoadTrace(*trace, *traceFmt, sizes)
		if err != nil {
			return err
		}
		opts.ExtraTraces = []*sim.Trace{t}
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	rep, err := runner.Run(ctx, opts)
	if err != nil {
		return err
	}
	rep.Header.Command = "go run ./bench/cmd/sidebyside" + shellArgs(os.Args[1:])
	rep.Header.Note = *note
	rep.Markdown(os.Stdout)
	md, js, err := rep.WriteFilesNamed(*out, *name)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s and %s (%s)\n", md, js, rep.Header.WallTime)
	return nil
}

// shellArgs quotes args for a shell, each after a space.
func shellArgs(args []string) string {
	var b strings.Builder
	for _, a := range args {
		b.WriteByte(' ')
		if a != "" && strings.Trim(a, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=./,:+") == "" {
			b.WriteString(a)
			continue
		}
		b.WriteString("'" + strings.ReplaceAll(a, "'", `'\''`) + "'")
	}
	return b.String()
}

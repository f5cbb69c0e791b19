package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"runtime/trace"
	"sort"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
)

// The demo's hidden debugging flags: they are parsed but not listed by
// "tiercache demo -h", being for whoever studies where a scenario's tail
// comes from rather than for a user of the demo.
//
//	-debug-cpuprofile FILE  a CPU profile of the whole run (go tool pprof)
//	-debug-trace FILE       an execution trace of the whole run (go tool trace)
//	-debug-slow FILE        every read slower than -debug-slow-over, as JSON
//	                        lines: its instance, key, start and duration, the
//	                        tiercache spans (Redis round trips, loads) run in
//	                        its context, and its database loads (the sleep
//	                        asked for and the one it got)
//	-debug-slow-over DUR    the threshold of -debug-slow (default 27ms)
type debugFlags struct {
	cpuProfile string
	traceFile  string
	slowFile   string
	slowOver   time.Duration
}

func addDebugFlags(fs *flag.FlagSet, d *debugFlags) {
	fs.StringVar(&d.cpuProfile, "debug-cpuprofile", "", "")
	fs.StringVar(&d.traceFile, "debug-trace", "", "")
	fs.StringVar(&d.slowFile, "debug-slow", "", "")
	fs.DurationVar(&d.slowOver, "debug-slow-over", 27*time.Millisecond, "")
}

// startDebug starts the profile and the trace the flags ask for; the
// function it returns stops them.
func startDebug(d debugFlags) (stop func(), err error) {
	var closers []func()
	stop = func() {
		for i := len(closers) - 1; i >= 0; i-- {
			closers[i]()
		}
	}
	if d.cpuProfile != "" {
		f, err := os.Create(d.cpuProfile)
		if err != nil {
			return stop, err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			_ = f.Close()
			return stop, err
		}
		closers = append(closers, func() { pprof.StopCPUProfile(); _ = f.Close() })
	}
	if d.traceFile != "" {
		f, err := os.Create(d.traceFile)
		if err != nil {
			stop()
			return func() {}, err
		}
		if err := trace.Start(f); err != nil {
			_ = f.Close()
			stop()
			return func() {}, err
		}
		closers = append(closers, func() { trace.Stop(); _ = f.Close() })
	}
	return stop, nil
}

// slowLog keeps the reads of one run slower than its threshold, each with
// what happened in its context, and writes them as JSON lines. A nil
// *slowLog does nothing.
type slowLog struct {
	over time.Duration
	mu   sync.Mutex
	w    io.Writer
	kept []*reqTrace
	evs  []eventRec
}

// eventRec is something else the slow log notes, to be set beside the
// reads: a write ("write", by the demo) or a fill message ("fill_msg", seen
// on tiercache's fill channel).
type eventRec struct {
	Event string  `json:"event"`
	Key   string  `json:"key"`
	Inst  int     `json:"inst"` // -1 when unknown
	At    float64 `json:"at_ms"`
	Took  float64 `json:"took_ms,omitempty"`
	at    time.Time
}

// event notes an event that happened at at and took took.
func (l *slowLog) event(kind, key string, inst int, at time.Time, took time.Duration) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.evs = append(l.evs, eventRec{Event: kind, Key: key, Inst: inst, Took: ms(took), at: at})
	l.mu.Unlock()
}

// watchFills notes every message on the fill channels of the keys under
// prefix, until ctx ends, through rdb (which it closes).
func (l *slowLog) watchFills(ctx context.Context, rdb redis.UniversalClient, prefix string) (stop func()) {
	if l == nil {
		_ = rdb.Close()
		return func() {}
	}
	ps := rdb.PSubscribe(ctx, prefix+"*__tiercache_fill")
	_, _ = ps.Receive(ctx) // the confirmation
	done := make(chan struct{})
	go func() {
		defer close(done)
		for m := range ps.Channel() {
			l.event("fill_msg", m.Payload, -1, time.Now(), 0)
		}
	}()
	return func() { _ = ps.Close(); <-done; _ = rdb.Close() }
}

func newSlowLog(w io.Writer, over time.Duration) *slowLog {
	return &slowLog{w: w, over: over}
}

// reqTrace is what one read did: the spans tiercache started in its
// context (a load runs in its leader's context) and the database loads.
// Spans may still be added after the read returned (by a load that goes
// on for other waiters), hence the lock.
type reqTrace struct {
	scenario string
	inst     int
	key      int
	start    time.Time
	took     time.Duration
	err      error

	mu    sync.Mutex
	spans []spanRec
	loads []loadRec
}

type spanRec struct {
	Op    string  `json:"op"`
	Start float64 `json:"start_ms"` // from the read's start
	End   float64 `json:"end_ms"`   // -1 if it never ended
	Err   string  `json:"err,omitempty"`
}

type loadRec struct {
	Start float64 `json:"start_ms"` // from the read's start
	Want  float64 `json:"want_ms"`  // the sleep asked for
	Got   float64 `json:"got_ms"`   // the sleep taken (the timer's lateness on top)
}

type reqTraceKey struct{}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// begin returns ctx carrying a new trace of a read, or ctx itself (and
// nil) when there is no log.
func (l *slowLog) begin(ctx context.Context, scenario string, inst, key int, start time.Time) (context.Context, *reqTrace) {
	if l == nil {
		return ctx, nil
	}
	rt := &reqTrace{scenario: scenario, inst: inst, key: key, start: start}
	return context.WithValue(ctx, reqTraceKey{}, rt), rt
}

// end keeps rt if the read was slow.
func (l *slowLog) end(rt *reqTrace, took time.Duration, err error) {
	if l == nil || rt == nil || took < l.over {
		return
	}
	rt.took, rt.err = took, err
	l.mu.Lock()
	l.kept = append(l.kept, rt)
	l.mu.Unlock()
}

// flush writes the reads kept, in the order they started, and forgets
// them. zero is the scenario's start, from which the reads' starts count.
func (l *slowLog) flush(zero time.Time) error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	kept, evs := l.kept, l.evs
	l.kept, l.evs = nil, nil
	l.mu.Unlock()
	enc0 := json.NewEncoder(l.w)
	for _, e := range evs {
		e.At = ms(e.at.Sub(zero))
		if err := enc0.Encode(e); err != nil {
			return err
		}
	}
	sort.Slice(kept, func(i, j int) bool { return kept[i].start.Before(kept[j].start) })
	enc := json.NewEncoder(l.w)
	for _, rt := range kept {
		rt.mu.Lock()
		line := struct {
			Scenario string    `json:"scenario"`
			Inst     int       `json:"inst"`
			Key      string    `json:"key"`
			Start    float64   `json:"start_ms"`
			Took     float64   `json:"took_ms"`
			Err      string    `json:"err,omitempty"`
			Spans    []spanRec `json:"spans"`
			Loads    []loadRec `json:"loads"`
		}{rt.scenario, rt.inst, keyName(rt.key), ms(rt.start.Sub(zero)), ms(rt.took), errString(rt.err), rt.spans, rt.loads}
		err := enc.Encode(line)
		rt.mu.Unlock()
		if err != nil {
			return err
		}
	}
	return nil
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

// recordLoad notes, in the trace of ctx (if any), a database load that
// began at start, asked for want and slept got.
func recordLoad(ctx context.Context, start time.Time, want, got time.Duration) {
	rt, _ := ctx.Value(reqTraceKey{}).(*reqTrace)
	if rt == nil {
		return
	}
	rt.mu.Lock()
	rt.loads = append(rt.loads, loadRec{Start: ms(start.Sub(rt.start)), Want: ms(want), Got: ms(got)})
	rt.mu.Unlock()
}

// spanObserver is a tiercache.Observer and Tracer that records the spans
// started in a traced read's context, passing everything else on.
type spanObserver struct {
	tiercache.Observer
}

func (o spanObserver) Start(ctx context.Context, op string) (context.Context, func(error)) {
	var end func(error)
	if t, ok := o.Observer.(tiercache.Tracer); ok {
		ctx, end = t.Start(ctx, op)
	}
	rt, _ := ctx.Value(reqTraceKey{}).(*reqTrace)
	if rt == nil {
		if end == nil {
			return ctx, func(error) {}
		}
		return ctx, end
	}
	rt.mu.Lock()
	i := len(rt.spans)
	rt.spans = append(rt.spans, spanRec{Op: op, Start: ms(time.Since(rt.start)), End: -1})
	rt.mu.Unlock()
	return ctx, func(err error) {
		rt.mu.Lock()
		rt.spans[i].End = ms(time.Since(rt.start))
		if err != nil {
			rt.spans[i].Err = err.Error()
		}
		rt.mu.Unlock()
		if end != nil {
			end(err)
		}
	}
}

func (o spanObserver) InvalidationDelay(d time.Duration) {
	if do, ok := o.Observer.(tiercache.DelayObserver); ok {
		do.InvalidationDelay(d)
	}
}

// debugObserver wraps o so that traced reads record their spans, when
// there is a slow log.
func (l *slowLog) observer(o tiercache.Observer) tiercache.Observer {
	if l == nil {
		return o
	}
	if o == nil {
		o = tiercache.NopObserver{}
	}
	return spanObserver{Observer: o}
}

// openSlowLog opens the file of -debug-slow, if given.
func openSlowLog(d debugFlags) (*slowLog, func() error, error) {
	if d.slowFile == "" {
		return nil, func() error { return nil }, nil
	}
	f, err := os.Create(d.slowFile)
	if err != nil {
		return nil, nil, fmt.Errorf("-debug-slow: %w", err)
	}
	return newSlowLog(f, d.slowOver), f.Close, nil
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/png"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestMain(m *testing.M) {
	// As main does: go-redis would log every failed dial of the tests that
	// expect one (TestUnreachableRedis, TestCommandLine).
	redis.SetLogger(quietLogger{})
	redistest.MainWithLeakCheck(m)
}

// shortArgs is a short run, small enough for -race on two busy cores. Its
// few, very hot keys make the difference between aside and full depend on
// the stampedes (every reader of an expired or deleted key loads it in
// aside, one load per key in full) rather than on the machine's speed: the
// loads of rarely read keys, which no cache avoids, would otherwise blur it.
// Redis timeouts are raised from tiercache's 100 and 250 ms, which a loaded
// machine under -race exceeds. It writes no files (--out "").
var shortArgs = []string{
	"--duration", "1500ms", "--keys", "20", "--zipf", "1.5", "--workers", "16", "--instances", "2",
	"--ttl", "300ms", "--load-latency", "50ms", "--rate", "3000", "--write-ratio", "0.005",
	"--read-timeout", "1s", "--write-timeout", "2s", "--out", "",
}

// runJSON runs the demo with --json and decodes its report.
func runJSON(t *testing.T, args ...string) (*report, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	args = append(append([]string{"demo", "--json"}, shortArgs...), args...)
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run %q: %v\nstderr:\n%s", args, err, stderr.String())
	}
	var rep report
	dec := json.NewDecoder(&stdout)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&rep); err != nil {
		t.Fatalf("decoding the JSON: %v\nstdout:\n%s", err, stdout.String())
	}
	if dec.More() {
		t.Fatal("stdout holds more than one JSON value")
	}
	return &rep, stderr.String()
}

func byName(t *testing.T, rep *report) map[string]*scenarioResult {
	t.Helper()
	m := map[string]*scenarioResult{}
	for _, s := range rep.Scenarios {
		m[s.Name] = s
	}
	for _, want := range allScenarios {
		if m[want] == nil {
			t.Fatalf("no scenario %q in the report", want)
		}
	}
	return m
}

// checkReport checks what must hold in any run of all four scenarios.
func checkReport(t *testing.T, rep *report) {
	t.Helper()
	s := byName(t, rep)
	for _, r := range rep.Scenarios {
		t.Logf("%-9s requests %6d  hit %5.1f%%  L1 %5.1f%%  loads %5d  peak %3d  p50 %8.0fµs  p99 %8.0fµs  errors %d  stale %d (same instance %d, beyond the bound %d)",
			r.Name, r.Requests, 100*r.HitRatio, 100*r.L1HitRatio, r.LoaderCalls, r.LoaderPeakPer100ms,
			r.P50us, r.P99us, r.Errors, r.StaleReads, r.StaleSame, r.StaleBeyond)
		if r.Errors != 0 {
			t.Errorf("%s: %d errors; first: %s", r.Name, r.Errors, r.FirstError)
		}
		if r.Reads == 0 || r.Requests != r.Reads+r.Writes {
			t.Errorf("%s: %d requests, %d reads, %d writes", r.Name, r.Requests, r.Reads, r.Writes)
		}
		if len(r.LoaderPer100ms) != 15 || len(r.StalePer100ms) != 15 {
			t.Errorf("%s: %d windows of loader calls, %d of stale reads, want 15 for 1.5s", r.Name, len(r.LoaderPer100ms), len(r.StalePer100ms))
		}
		var stale uint64
		for _, n := range r.StalePer100ms {
			stale += n
		}
		if stale > r.StaleReads {
			t.Errorf("%s: %d stale reads in the windows, %d in all", r.Name, stale, r.StaleReads)
		}
		if r.Judged != (r.Name == scenarioFull) {
			t.Errorf("%s: judged %v", r.Name, r.Judged)
		}
		if r.P50us <= 0 || r.P50us > r.P99us || r.P99us > r.P999us {
			t.Errorf("%s: percentiles out of order: p50 %v p99 %v p99.9 %v", r.Name, r.P50us, r.P99us, r.P999us)
		}
	}
	if n := s[scenarioNone]; n.LoaderCalls != n.Reads || n.HitRatio != 0 {
		t.Errorf("none: %d loader calls for %d reads, hit ratio %v: every read should load", n.LoaderCalls, n.Reads, n.HitRatio)
	}
	aside, full := s[scenarioAside], s[scenarioFull]
	// With this workload full makes about a third of aside's loads, both in
	// all and per read (full may serve more or fewer reads in the time).
	// The bounds leave room for a slow machine.
	if float64(full.LoaderCalls) > 0.5*float64(aside.LoaderCalls) {
		t.Errorf("full made %d loader calls, aside %d: want full below half of aside", full.LoaderCalls, aside.LoaderCalls)
	}
	// Per read, too, but only between runs of comparable size: a short run's
	// loads are mostly the cold start (one per key read), so a scenario the
	// loaded machine slowed to a fraction of the other's reads pays more
	// loads per read for it (seen in CI with both cores busy: full 611 reads,
	// aside 1,802). The total above holds whatever the throughput.
	if fr, ar := 1-full.HitRatio, 1-aside.HitRatio; fr > 0.5*ar && 2*full.Requests >= aside.Requests {
		t.Errorf("full made %.3f loader calls per read, aside %.3f: want full below half of aside", fr, ar)
	}
	if !full.HasL1 || full.L1HitRatio <= 0.2 {
		t.Errorf("full: L1 hit ratio %v (has L1: %v), want above 20%%", full.L1HitRatio, full.HasL1)
	}
	if aside.HasL1 || s[scenarioCoalesced].HasL1 {
		t.Error("aside or coalesced report an L1")
	}
	if full.Tiercache == nil || full.Tiercache.Loads == 0 {
		t.Errorf("full: no tiercache counters: %+v", full.Tiercache)
	}
	checkStale(t, full)
	checkDelays(t, full)
}

// checkStale checks the full scenario's stale reads against tiercache's
// bound: a read on the instance that wrote sees the write, and reads on
// other instances once that instance applied the invalidation.
func checkStale(t *testing.T, full *scenarioResult) {
	t.Helper()
	if got := full.StaleWithin + full.StaleOutage + full.StaleBeyond + full.StaleUnjudged; got != full.StaleReads {
		t.Errorf("full: %d stale reads, %d judged or not", full.StaleReads, got)
	}
	if full.StaleBeyond == 0 {
		return
	}
	t.Errorf("full: %d stale reads, %d beyond the bound (%d on the writer's instance); e.g. %+v",
		full.StaleReads, full.StaleBeyond, full.StaleSame, full.StaleSamples)
}

// checkDelays checks the full scenario's invalidation delays: its
// instances applied each other's messages, and the figures are in order.
func checkDelays(t *testing.T, full *scenarioResult) {
	t.Helper()
	d := full.InvalidationDelay
	if d == nil || d.Messages == 0 {
		t.Fatalf("full: no invalidation delays (%+v) after %d writes over %d instances",
			d, full.Writes, 2)
	}
	if !(0 < d.P50MS && d.P50MS <= d.P99MS && d.P99MS <= d.P999MS && d.P999MS <= d.MaxMS && d.MeanMS <= d.MaxMS) {
		t.Errorf("full: invalidation delays out of order: %+v", d)
	}
}

func TestDemoEmbedded(t *testing.T) {
	out := t.TempDir()
	rep, stderr := runJSON(t, "--out", out)
	if rep.Redis.Kind != "embedded" || !strings.Contains(rep.Redis.Description, "miniredis") {
		t.Errorf("redis = %+v, want the embedded miniredis", rep.Redis)
	}
	checkReport(t, rep)
	if !strings.Contains(stderr, "full       done") {
		t.Errorf("no progress line for full on stderr:\n%s", stderr)
	}
	checkOutputs(t, out, stderr)
}

// outputFiles are the files the demo writes into its --out directory.
var outputFiles = []string{"loader_calls.png", "loader_calls.svg", "read_latency.png", "read_latency.svg",
	"stale_reads.png", "stale_reads.svg", "report.html"}

// checkOutputs checks the plots and report.html in dir, and that listing
// (the demo's output) gives their paths.
func checkOutputs(t *testing.T, dir, listing string) {
	t.Helper()
	for _, name := range outputFiles {
		path := filepath.Join(dir, name)
		if !strings.Contains(listing, "\n  "+path+"\n") {
			t.Errorf("the output does not give the path %s:\n%s", path, listing)
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 1000 {
			t.Errorf("%s: only %d bytes", name, len(b))
		}
		switch filepath.Ext(name) {
		case ".png":
			img, err := png.Decode(bytes.NewReader(b))
			if err != nil {
				t.Errorf("%s: %v", name, err)
			} else if r := img.Bounds(); r.Dx() < 400 || r.Dy() < 200 {
				t.Errorf("%s: %v, too small", name, r)
			}
		case ".svg":
			if !bytes.Contains(b, []byte("<svg")) {
				t.Errorf("%s is not an SVG", name)
			}
		case ".html":
			for _, want := range []string{"<table>", `src="data:image/svg`, ">full<", ">aside<", "<h2>Freshness</h2>",
				"<h2>Stale reads over time</h2>", ">delay p50<"} {
				if !bytes.Contains(b, []byte(want)) {
					t.Errorf("report.html lacks %q", want)
				}
			}
			if regexp.MustCompile(`(src|href)="(https?:)?//`).Match(b) {
				t.Error("report.html refers to an external asset")
			}
		}
	}
}

// TestDemoDefaultOut runs the demo without --out, in a temporary working
// directory: it writes the plots and report.html into defaultOutDir and
// says where.
func TestDemoDefaultOut(t *testing.T) {
	t.Chdir(t.TempDir())
	var stdout, stderr bytes.Buffer
	args := []string{"demo", "--duration", "300ms", "--keys", "50", "--workers", "2", "--instances", "1",
		"--rate", "500", "--scenario", "aside,full"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	checkOutputs(t, defaultOutDir, stdout.String())
}

func TestDemoRealRedis(t *testing.T) {
	srv := redistest.SharedServer(t)
	rep, _ := runJSON(t, "--redis", "redis://"+srv.Addr)
	if rep.Redis.Kind != "server" || rep.Redis.Addr != srv.Addr {
		t.Errorf("redis = %+v, want the server at %s", rep.Redis, srv.Addr)
	}
	checkReport(t, rep)

	// The demo removes its keys from a server it does not own.
	rdb := srv.Client(t)
	keys, err := rdb.Keys(t.Context(), "tcdemo-*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 0 {
		t.Errorf("%d keys left behind, e.g. %q", len(keys), keys[0])
	}
}

func TestDemoCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a Redis Cluster")
	}
	c := redistest.SharedCluster(t)
	var stdout, stderr bytes.Buffer
	args := []string{"demo", "--json", "--scenario", "full", "--duration", "500ms", "--keys", "100", "--workers", "4",
		"--instances", "2", "--rate", "1000", "--out", "", "--cluster", strings.Join(c.Addrs(), ",")}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	var rep report
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	if rep.Redis.Kind != "cluster" || len(rep.Scenarios) != 1 {
		t.Fatalf("redis %+v, %d scenarios", rep.Redis, len(rep.Scenarios))
	}
	if r := rep.Scenarios[0]; r.Errors != 0 || r.Reads == 0 || r.LoaderCalls == 0 {
		t.Errorf("full on a cluster: %d reads, %d loader calls, %d errors (%s)", r.Reads, r.LoaderCalls, r.Errors, r.FirstError)
	}
	cc := c.Client(t)
	var n atomic.Int64 // ForEachMaster calls in parallel
	err := cc.ForEachMaster(t.Context(), func(ctx context.Context, m *redis.Client) error {
		keys, err := m.Keys(ctx, "tcdemo-*").Result()
		n.Add(int64(len(keys)))
		return err
	})
	if err != nil || n.Load() > 0 {
		t.Errorf("%d keys left behind (%v)", n.Load(), err)
	}
}

func TestDemoTable(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"demo", "--duration", "300ms", "--keys", "50", "--workers", "2", "--instances", "1",
		"--rate", "500", "--scenario", "aside,full", "--out", ""}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	if !strings.HasPrefix(out, "This demo sends the same requests") {
		t.Errorf("the output does not open with what it shows:\n%s", out)
	}
	for _, want := range []string{"redis:    embedded miniredis", "scenario", "hits", "p99.9", "stale", "hits: 1 - loads/reads"} {
		if !strings.Contains(out, want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
	for _, name := range []string{"aside", "full"} {
		if !regexp.MustCompile(`\n` + name + ` +[0-9]+ +[0-9.]+%`).MatchString(out) {
			t.Errorf("the table has no row for %s:\n%s", name, out)
		}
	}
	if regexp.MustCompile(`\nnone +[0-9]`).MatchString(out) {
		t.Errorf("--scenario aside,full ran none:\n%s", out)
	}
	if strings.Contains(out, "wrote") {
		t.Errorf("--out \"\" wrote files:\n%s", out)
	}
	checkWidth(t, out)
}

// checkWidth checks that no line of out is wider than lineWidth columns.
func checkWidth(t *testing.T, out string) {
	t.Helper()
	for line := range strings.Lines(out) {
		line = strings.TrimSuffix(line, "\n")
		if n := utf8.RuneCountInString(line); n > lineWidth {
			t.Errorf("a line of %d columns, more than %d:\n%s", n, lineWidth, line)
		}
	}
}

// TestTableWidth checks that the table, its header and notes fit in
// lineWidth columns with the widest figures a run can give: 6 characters
// a count, 7 a latency.
func TestTableWidth(t *testing.T) {
	cfg := defaultConfig()
	cfg.Scenarios = allScenarios
	cfg.ReadTimeout, cfg.WriteTimeout = 1500*time.Millisecond, 2500*time.Millisecond
	rep := &report{
		Redis:  redisInfo{Description: "Redis server at redis://someone:xxxxx@a-rather-long-host-name.example.com:6379/0"},
		Config: cfg, Elapsed: 40 * time.Second,
	}
	for _, name := range allScenarios {
		rep.Scenarios = append(rep.Scenarios, &scenarioResult{
			Name: name, Reads: 999_999, HitRatio: 1, HasL1: true, L1HitRatio: 1,
			LoaderCalls: 999_999, LoaderPeakPer100ms: 999_999, SteadyPeakToMean: 999.99,
			P50us: 99_949, P99us: 99_949, P999us: 99_949, // the widest: 99.9ms
			Errors: 999_999, ReadErrors: 999_999, StaleReads: 999_999, StaleSame: 1,
			Judged: true, StaleBeyond: 999_999, StaleWithin: 999_999, StaleOutage: 999_999, StaleUnjudged: 999_999,
			InvalidationDelay: &delaySummary{Messages: 999_999, MeanMS: 99.949, P50MS: 99.949, P99MS: 99.949, P999MS: 99.949, MaxMS: 99.949},
			FirstError:        "tiercache: GET k000001: redis: connection pool timeout after waiting for a connection for a long while",
			StaleSamples: []staleSample{{Key: "k000001", Got: 12345, Acked: 12346, LagAfterAck: 123.45, ReadDuration: 12.34,
				BeyondBound: true, Verdict: (&staleRead{verdict: beyondApplied, delayThen: 99 * time.Millisecond}).why()}},
		})
	}
	var out bytes.Buffer
	rep.writeHeader(&out)
	rep.writeTable(&out, false)
	checkWidth(t, out.String())
	for _, want := range []string{"\ncoalesced  999999  100.0%", "\nscenario   messages  delay p50"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the tables have no row %q", want)
		}
	}
	if t.Failed() {
		t.Logf("the output:\n%s", out.String())
	}
}

// TestBadNotes checks that a bad note stands out: a leading "!!", and red
// when colour is on.
func TestBadNotes(t *testing.T) {
	rep := &report{Config: defaultConfig(), Scenarios: []*scenarioResult{{
		Name: scenarioFull, Reads: 100, Errors: 2, ReadErrors: 2, FirstError: "redis: i/o timeout",
	}}}
	var plain, color bytes.Buffer
	rep.writeTable(&plain, false)
	rep.writeTable(&color, true)
	if want := "\n  !! 2 read errors, 0 write errors; first: redis: i/o timeout\n"; !strings.Contains(plain.String(), want) {
		t.Errorf("no %q in:\n%s", want, plain.String())
	}
	if strings.Contains(plain.String(), "\x1b[") {
		t.Errorf("colour when it is off:\n%q", plain.String())
	}
	if want := "\x1b[1;31m  !! 2 read errors"; !strings.Contains(color.String(), want) {
		t.Errorf("no %q in:\n%q", want, color.String())
	}
}

// syncBuffer is a bytes.Buffer that the test reads while run writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestDemoMetrics(t *testing.T) {
	var stderr syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(t.Context(), []string{"demo", "--scenario", "full", "--duration", "1s", "--keys", "50",
			"--workers", "2", "--instances", "2", "--rate", "500", "--metrics-addr", "127.0.0.1:0", "--out", ""},
			io.Discard, &stderr)
	}()
	re := regexp.MustCompile(`metrics on (http://\S+/metrics)`)
	var url string
	for deadline := time.Now().Add(5 * time.Second); url == "" && time.Now().Before(deadline); {
		if m := re.FindStringSubmatch(stderr.String()); m != nil {
			url = m[1]
		} else {
			time.Sleep(10 * time.Millisecond) // polling run's output; nothing to wait on
		}
	}
	if url == "" {
		t.Fatalf("no metrics address on stderr:\n%s", stderr.String())
	}
	// Scrape once the scenario has done some work.
	var body string
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		resp, err := http.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		body = string(b)
		if strings.Contains(body, `tiercache_loads_total{cache="full/0",result="ok"}`) &&
			regexp.MustCompile(`tiercache_demo_loader_calls_total\{scenario="full"\} [1-9]`).MatchString(body) {
			break
		}
	}
	for _, want := range []string{`tiercache_requests_total{cache="full/1",result="hit",tier="l1"}`,
		`tiercache_l1_entries{cache="full/0"}`, `tiercache_demo_reads_total{scenario="full"}`} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %s:\n%.2000s", want, body)
		}
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"demo", "--duration", "0s"},
		{"demo", "--duration", "banana"},
		{"demo", "--keys", "0"},
		{"demo", "--keys", "-5"},
		{"demo", "--zipf", "1"},
		{"demo", "--zipf", "NaN"},
		{"demo", "--ttl", "0"},
		{"demo", "--load-latency", "-1ms"},
		{"demo", "--workers", "0"},
		{"demo", "--instances", "0"},
		{"demo", "--instances", "64", "--workers", "8"},
		{"demo", "--write-ratio", "1.5"},
		{"demo", "--write-mode", "append"},
		{"demo", "--rate", "-1"},
		{"demo", "--scenario", "fastest"},
		{"demo", "--redis", "x", "--cluster", "a:1"},
		{"demo", "--redis", "http://nope"},
		{"demo", "--cluster", "nohostport"},
		{"demo", "--no-such-flag"},
		{"demo", "stray"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), args, &stdout, &stderr)
			var ue *usageError
			if !errors.As(err, &ue) {
				t.Fatalf("err = %v (%T), want a usage error", err, err)
			}
			if exitCode(err) != 2 {
				t.Errorf("exit code %d, want 2", exitCode(err))
			}
			if err.Error() == "" {
				t.Error("an empty error message")
			}
			if strings.Contains(stdout.String()+stderr.String(), "panic") {
				t.Errorf("a panic:\n%s", stderr.String())
			}
		})
	}
}

func TestUnreachableRedis(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err := run(ctx, []string{"demo", "--redis", "redis://127.0.0.1:1", "--out", ""}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "127.0.0.1:1") {
		t.Fatalf("err = %v, want one naming the server", err)
	}
	if exitCode(err) != 1 {
		t.Errorf("exit code %d, want 1", exitCode(err))
	}
}

func TestHelpAndVersion(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"help"}, "-duration"},
		{[]string{"--help"}, "-duration"},
		{[]string{"demo", "-h"}, "-write-ratio"},
		{[]string{"demo", "--help"}, "-write-ratio"},
		{[]string{"version"}, "tiercache "},
	} {
		var stdout, stderr bytes.Buffer
		err := run(t.Context(), tc.args, &stdout, &stderr)
		if exitCode(err) != 0 {
			t.Errorf("%v: exit code %d (%v)", tc.args, exitCode(err), err)
		}
		if !strings.Contains(stdout.String(), tc.want) {
			t.Errorf("%v: stdout lacks %q:\n%s", tc.args, tc.want, stdout.String())
		}
		if stderr.Len() > 0 {
			t.Errorf("%v: output on stderr:\n%s", tc.args, stderr.String())
		}
	}
}

// TestCommandLine runs bad and help command lines as main would, and
// checks the exit code and the first line of stdout and of stderr.
func TestCommandLine(t *testing.T) {
	// A regular file, which --out cannot make a directory under.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	// A Redis that accepts connections and never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn // touched by the accepting goroutine only until it ends
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	})
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
		for _, c := range conns {
			c.Close()
		}
	})
	defer func(d time.Duration) { pingTimeout = d }(pingTimeout)
	pingTimeout = 200 * time.Millisecond

	const usage = "tiercache shows what each layer of tiercache buys, with numbers and plots."
	const demoUsage = "Usage: tiercache demo [flags]"
	const redisWant = " (want a URL such as redis://localhost:6379/0)"
	for _, tc := range []struct {
		name           string // if not the args
		args           []string
		code           int
		stdout, stderr string // first lines
	}{
		{"", []string{"--help"}, 0, usage, ""},
		{"", []string{"help"}, 0, usage, ""},
		{"", []string{"demo", "--help"}, 0, demoUsage, ""},
		{"", []string{"demo", "-h"}, 0, demoUsage, ""},
		{"no command", []string{}, 2, "", "tiercache: no command given"},
		{"", []string{"frobnicate"}, 2, "", `tiercache: unknown command "frobnicate": want demo, help or version`},
		{"", []string{"demo", "--no-such-flag"}, 2, "", `tiercache: demo: unknown flag "--no-such-flag"`},
		{"", []string{"demo", "-no-such-flag=1"}, 2, "", `tiercache: demo: unknown flag "-no-such-flag"`},
		{"", []string{"demo", "--duration", "banana"}, 2, "",
			`tiercache: --duration "banana": want a duration such as 500ms, 10s or 2m`},
		{"", []string{"demo", "stray"}, 2, "", `tiercache: demo: unexpected argument "stray": the demo takes flags only`},
		{"", []string{"demo", "--redis", "not a url"}, 2, "",
			`tiercache: --redis "not a url": not a redis:// or rediss:// URL` + redisWant},
		{"", []string{"demo", "--redis", "localhost:6379"}, 2, "",
			`tiercache: --redis "localhost:6379": not a redis:// or rediss:// URL` + redisWant},
		{"", []string{"demo", "--redis", "redis://127.0.0.1:notaport"}, 2, "",
			`tiercache: --redis "redis://127.0.0.1:notaport": port "notaport" is not a number from 1 to 65535` + redisWant},
		{"", []string{"demo", "--redis", "redis://me:secret@127.0.0.1:notaport"}, 2, "",
			`tiercache: --redis "redis://me:xxxxx@127.0.0.1:notaport": port "notaport" is not a number from 1 to 65535` + redisWant},
		{"", []string{"demo", "--redis", "redis://127.0.0.1:6379/x"}, 2, "",
			`tiercache: --redis "redis://127.0.0.1:6379/x": invalid database number: "x"` + redisWant},
		{"", []string{"demo", "--read-timeout", "-1s"}, 2, "",
			"tiercache: --read-timeout -1s: must be positive (leave the flag out for the default)"},
		{"", []string{"demo", "--read-timeout", "0"}, 2, "",
			"tiercache: --read-timeout 0s: must be positive (leave the flag out for the default)"},
		{"", []string{"demo", "--write-timeout", "-5ms"}, 2, "",
			"tiercache: --write-timeout -5ms: must be positive (leave the flag out for the default)"},
		{"unwritable --out", []string{"demo", "--out", filepath.Join(file, "out")}, 2, "",
			fmt.Sprintf("tiercache: --out %q: cannot create the directory: mkdir %s: not a directory",
				filepath.Join(file, "out"), file)},
		{"a Redis that never answers", []string{"demo", "--redis", "redis://" + ln.Addr().String(), "--out", ""}, 1, "",
			"tiercache: redis at " + ln.Addr().String() + " did not answer PING within 200ms"},
	} {
		name := tc.name
		if name == "" {
			name = strings.Join(tc.args, " ")
		}
		t.Run(name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), tc.args, &stdout, &stderr)
			code := exitCode(err)
			if code != 0 {
				printError(&stderr, err) // as main does
			}
			if code != tc.code {
				t.Errorf("exit code %d, want %d (err %v)", code, tc.code, err)
			}
			if got := firstLine(stdout.String()); got != tc.stdout {
				t.Errorf("stdout begins\n\t%s\nwant\n\t%s", got, tc.stdout)
			}
			if got := firstLine(stderr.String()); got != tc.stderr {
				t.Errorf("stderr begins\n\t%s\nwant\n\t%s", got, tc.stderr)
			}
		})
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"image/png"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestMain(m *testing.M) {
	redis.SetLogger(quietLogger{}) // TestUnreachableRedis would log every failed dial
	redistest.MainWithLeakCheck(m)
}

// shortArgs is a short run, small enough for -race on two busy cores. Its
// few, very hot keys make the difference between aside and full depend on
// the stampedes (every reader of an expired or deleted key loads it in
// aside, one load per key in full) rather than on the machine's speed: the
// loads of rarely read keys, which no cache avoids, would otherwise blur it.
// Redis timeouts are raised from tiercache's 100 and 250 ms, which a loaded
// machine under -race exceeds.
var shortArgs = []string{
	"--duration", "1500ms", "--keys", "20", "--zipf", "1.5", "--workers", "16", "--instances", "2",
	"--ttl", "300ms", "--load-latency", "50ms", "--rate", "3000", "--write-ratio", "0.005",
	"--read-timeout", "1s", "--write-timeout", "2s",
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
		t.Logf("%-9s requests %6d  hit %5.1f%%  L1 %5.1f%%  loads %5d  peak %3d  p50 %8.0fµs  p99 %8.0fµs  errors %d  stale %d (same instance %d, late %d)",
			r.Name, r.Requests, 100*r.HitRatio, 100*r.L1HitRatio, r.LoaderCalls, r.LoaderPeakPer100ms,
			r.P50us, r.P99us, r.Errors, r.StaleReads, r.StaleSame, r.StaleLate)
		if r.Errors != 0 {
			t.Errorf("%s: %d errors; first: %s", r.Name, r.Errors, r.FirstError)
		}
		if r.Reads == 0 || r.Requests != r.Reads+r.Writes {
			t.Errorf("%s: %d requests, %d reads, %d writes", r.Name, r.Requests, r.Reads, r.Writes)
		}
		if len(r.LoaderPer100ms) != 15 {
			t.Errorf("%s: %d windows of loader calls, want 15 for 1.5s", r.Name, len(r.LoaderPer100ms))
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
	if fr, ar := 1-full.HitRatio, 1-aside.HitRatio; fr > 0.5*ar {
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
}

// checkStale checks the full scenario's stale reads. tiercache promises
// that a read on the instance that wrote sees the write, and reads on other
// instances once the invalidation reaches them (invalidationWindow).
func checkStale(t *testing.T, full *scenarioResult) {
	t.Helper()
	if full.StaleSame == 0 && full.StaleLate == 0 {
		return
	}
	t.Errorf("full: %d stale reads, %d on the writer's instance, %d on others later than %v; e.g. %+v",
		full.StaleReads, full.StaleSame, full.StaleLate, invalidationWindow, full.StaleSamples)
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
	for _, name := range []string{"loader_calls.png", "loader_calls.svg", "read_latency.png", "read_latency.svg", "report.html"} {
		b, err := os.ReadFile(filepath.Join(out, name))
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
			for _, want := range []string{"<table>", `src="data:image/svg`, ">full<", ">aside<"} {
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
		"--instances", "2", "--rate", "1000", "--cluster", strings.Join(c.Addrs(), ",")}
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
		"--rate", "500", "--scenario", "aside,full"}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	for _, want := range []string{"redis:    embedded miniredis", "scenario", "hit ratio", "p99.9", "stale reads"} {
		if !strings.Contains(out, want) {
			t.Errorf("the output lacks %q:\n%s", want, out)
		}
	}
	for _, name := range []string{"aside", "full"} {
		if !regexp.MustCompile(`\n +` + name + ` +[0-9]+ +[0-9.]+%`).MatchString(out) {
			t.Errorf("the table has no row for %s:\n%s", name, out)
		}
	}
	if regexp.MustCompile(`\n +none +[0-9]`).MatchString(out) {
		t.Errorf("--scenario aside,full ran none:\n%s", out)
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
			"--workers", "2", "--instances", "2", "--rate", "500", "--metrics-addr", "127.0.0.1:0"}, io.Discard, &stderr)
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
	err := run(ctx, []string{"demo", "--redis", "redis://127.0.0.1:1"}, io.Discard, io.Discard)
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
		{[]string{"version"}, "tiercache "},
	} {
		var stdout bytes.Buffer
		if err := run(t.Context(), tc.args, &stdout, io.Discard); err != nil {
			t.Errorf("%v: %v", tc.args, err)
		}
		if !strings.Contains(stdout.String(), strings.TrimPrefix(tc.want, "-")) {
			t.Errorf("%v: output lacks %q:\n%s", tc.args, tc.want, stdout.String())
		}
	}
	var stderr bytes.Buffer
	err := run(t.Context(), []string{"demo", "-h"}, io.Discard, &stderr)
	if !errors.Is(err, flag.ErrHelp) || exitCode(err) != 0 || !strings.Contains(stderr.String(), "-write-ratio") {
		t.Errorf("demo -h: err %v, exit %d, stderr:\n%s", err, exitCode(err), stderr.String())
	}
}

package main

import (
	"bytes"
	"context"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

// TestJudge judges stale reads against a reader's timeline: the messages it
// applied (send time, applied time) and its subscription's outages.
func TestJudge(t *testing.T) {
	ms := func(n float64) int64 { return int64(n * float64(time.Millisecond)) }
	start := time.Now()
	t0 := start.UnixNano()
	type message struct{ sent, applied float64 } // ms after t0
	tests := []struct {
		name     string
		messages []message
		down     [][2]float64 // ms after t0
		writer   int          // the reader is 0
		ack      float64      // ms after t0
		read     float64      // its start, ms after t0
		want     verdict
	}{
		{"on the writer's instance", nil, nil, 0, 100, 100.5, beyondSame},
		{"within the clock slack", nil, nil, 1, 100, 100.5, withinDelay},
		{"no message at all", nil, nil, 1, 100, 105, beyondApplied},
		{"the write's message still on its way", []message{{99.9, 160}}, nil, 1, 100, 150, withinDelay},
		{"applied just before the read, within the slack", []message{{99.9, 149.5}}, nil, 1, 100, 150, withinDelay},
		{"every message sent before the ack applied before the read",
			[]message{{99.9, 120}, {130, 200}}, nil, 1, 100, 150, beyondApplied},
		{"an older message still on its way", []message{{50, 400}}, nil, 1, 100, 150, withinDelay},
		{"the subscription down: within the outage TTL", nil, [][2]float64{{90, 300}}, 1, 100, 600, withinOutage},
		{"the subscription down: past the outage TTL", nil, [][2]float64{{90, 300}}, 1, 100, 1200, beyondTTL},
		{"down only after the read", nil, [][2]float64{{700, 800}}, 1, 100, 600, beyondApplied},
		{"past the L1 max TTL, whatever is in flight", []message{{0, 40_000}}, nil, 1, 100, 30_200, beyondTTL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFreshness(2, time.Minute)
			tl := newTimeline(start, 10*time.Second)
			f.tl[0] = tl
			for _, m := range tt.messages {
				tl.applied(t0+ms(m.applied), t0+ms(m.sent))
			}
			for _, d := range tt.down {
				tl.markDown(t0+ms(d[0]), t0+ms(d[1]))
			}
			f.stop()
			r := &staleRead{reader: 0, writer: tt.writer, ack: t0 + ms(tt.ack), start: t0 + ms(tt.read)}
			f.judge(r)
			if r.verdict != tt.want {
				t.Errorf("verdict %d (%s), want %d", r.verdict, r.why(), tt.want)
			}
			if r.why() == "" {
				t.Error("no reason given")
			}
		})
	}
}

// TestTimelineDelay: the reader's longest delay by a time, for the report.
func TestTimelineDelay(t *testing.T) {
	start := time.Now()
	t0 := start.UnixNano()
	tl := newTimeline(start, 10*time.Second)
	tl.applied(t0+int64(100*time.Millisecond), t0+int64(97*time.Millisecond)) // 3ms
	tl.applied(t0+int64(time.Second), t0+int64(time.Second-40*time.Millisecond))
	tl.seal()
	for _, tt := range []struct {
		at   time.Duration
		want time.Duration
	}{{50 * time.Millisecond, 0}, {500 * time.Millisecond, 3 * time.Millisecond}, {2 * time.Second, 40 * time.Millisecond}} {
		if got := tl.maxDelayBy(t0 + int64(tt.at)); got != tt.want {
			t.Errorf("longest delay by %v: %v, want %v", tt.at, got, tt.want)
		}
	}
}

// TestFmtLatency: 3 significant digits, at most 6 characters, which
// TestTableWidth's figures rely on.
func TestFmtLatency(t *testing.T) {
	for _, tt := range []struct {
		us   float64
		want string
	}{
		{0.5, "500ns"}, {1, "1.00µs"}, {12.34, "12.3µs"}, {123.4, "123µs"}, {999.4, "999µs"}, {999.6, "1.00ms"},
		{1234, "1.23ms"}, {12_345, "12.3ms"}, {99_949, "99.9ms"}, {123_456, "123ms"}, {999_499, "999ms"},
		{999_600, "1.00s"}, {12_345_678, "12.3s"}, {123_456_789, "123s"},
	} {
		if got := fmtLatency(tt.us); got != tt.want {
			t.Errorf("fmtLatency(%v) = %q, want %q", tt.us, got, tt.want)
		}
	}
	for us := 0.1; us < 86_400e6; us *= 1.01 {
		if got := fmtLatency(us); utf8.RuneCountInString(got) > 6 {
			t.Fatalf("fmtLatency(%v) = %q: more than 6 characters", us, got)
		}
	}
}

// staleService wraps a scenario's service so that a read of a key on the
// instance that last wrote it returns the version before that write: a
// stale read on the writer's own instance, beyond the bound whatever the
// invalidations do.
type staleService struct {
	service
	mu      sync.Mutex
	written map[[2]int]uint64 // by instance and key: the version written
}

func (s *staleService) write(ctx context.Context, inst, key int, r row) error {
	err := s.service.write(ctx, inst, key, r)
	if err == nil {
		s.mu.Lock()
		s.written[[2]int{inst, key}] = r.Version
		s.mu.Unlock()
	}
	return err
}

func (s *staleService) read(ctx context.Context, inst, key int) (row, error) {
	r, err := s.service.read(ctx, inst, key)
	s.mu.Lock()
	v, ok := s.written[[2]int{inst, key}]
	s.mu.Unlock()
	if err == nil && ok && r.Version >= v {
		r.Version = v - 1
	}
	return r, err
}

// TestStrict runs the full scenario with and without --strict, with reads
// that break the bound (through testWrapService) and without: the table
// marks the breach, and --strict makes it exit 1.
func TestStrict(t *testing.T) {
	base := []string{"demo", "--scenario", "full", "--duration", "300ms", "--keys", "5", "--workers", "2",
		"--instances", "1", "--rate", "500", "--write-ratio", "0.2", "--out", ""}
	for _, tc := range []struct {
		name   string
		strict bool
		stale  bool // wrap the service in a staleService
		code   int
	}{
		{"fresh", false, false, 0},
		{"fresh, strict", true, false, 0},
		{"beyond the bound", false, true, 0},
		{"beyond the bound, strict", true, true, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.stale {
				testWrapService = func(s service) service { return &staleService{service: s, written: map[[2]int]uint64{}} }
				defer func() { testWrapService = nil }()
			}
			args := slices.Clone(base)
			if tc.strict {
				args = append(args, "--strict")
			}
			var stdout, stderr bytes.Buffer
			err := run(t.Context(), args, &stdout, &stderr)
			code := exitCode(err)
			if code != 0 {
				printError(&stderr, err)
			}
			if code != tc.code {
				t.Errorf("exit code %d, want %d (err %v)\n%s", code, tc.code, err, stdout.String())
			}
			out := stdout.String()
			marked := regexp.MustCompile(`\nfull .*  !!\n`).FindAllString(out, -1)
			if tc.stale {
				// Both tables mark the row, and the note says why.
				if len(marked) != 2 || !strings.Contains(out, "\n  !! ") || !strings.Contains(out, "beyond the bound: on the writer's own instance") {
					t.Errorf("the breach is not marked in the table and notes:\n%s", out)
				}
			} else if len(marked) > 0 {
				t.Errorf("a row is marked without a breach:\n%s", out)
			}
			if tc.code == 1 {
				if want := regexp.MustCompile(`(^|\n)tiercache: --strict: [1-9][0-9]* stale reads broke the documented bound \(full\)\n$`); !want.MatchString(stderr.String()) {
					t.Errorf("stderr does not say why:\n%s", stderr.String())
				}
			}
			checkWidth(t, out)
		})
	}
}

// TestDelayReport: a run of the full scenario over two instances reports
// the invalidation delays it measured, in the freshness table and a note.
func TestDelayReport(t *testing.T) {
	var stdout, stderr bytes.Buffer
	args := []string{"demo", "--scenario", "full", "--duration", "500ms", "--keys", "20", "--workers", "4",
		"--instances", "2", "--rate", "1000", "--write-ratio", "0.05", "--out", ""}
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	out := stdout.String()
	lat := `[0-9.]+(ns|µs|ms|s)`
	for _, re := range []string{
		`\nscenario +messages +delay p50 +p99 +p99\.9 +max +stale +in bound +beyond\n`,
		`\nfull +[1-9][0-9]* +` + lat + ` +` + lat + ` +` + lat + ` +` + lat + ` +[0-9]+ +[0-9]+ +0\n`,
		// The note is wrapped: a space in it is any run of spaces and
		// line breaks.
		strings.ReplaceAll(`invalidation delay, write acknowledged to L1 dropped on another instance, over [1-9][0-9]* messages: p50 `+
			lat+`, p99 `+lat+`, p99\.9 `+lat+`, max `+lat, " ", `\s+`),
	} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("the output does not match %s:\n%s", re, out)
		}
	}
	checkWidth(t, out)
}

// TestStalePlot writes the outputs of a made-up report: the stale reads
// plot is written with the others, with its one-TTL marker and the reads
// beyond the bound; report.html shows it.
func TestStalePlot(t *testing.T) {
	cfg := defaultConfig()
	cfg.TTL = 300 * time.Millisecond
	rep := &report{Config: cfg}
	windows := func(f func(i int) uint64) []uint64 {
		w := make([]uint64, 15)
		for i := range w {
			w[i] = f(i)
		}
		return w
	}
	rep.Scenarios = []*scenarioResult{
		{Name: scenarioAside, StaleReads: 40, P50us: 100, P90us: 200, P99us: 300, P999us: 400, MaxUS: 500,
			LoaderPer100ms: windows(func(i int) uint64 { return uint64(10 + i%3) }),
			StalePer100ms:  windows(func(i int) uint64 { return uint64(i % 5) })},
		{Name: scenarioFull, Judged: true, StaleReads: 3, StaleBeyond: 1, P50us: 1, P90us: 2, P99us: 3, P999us: 4, MaxUS: 5,
			LoaderPer100ms:      windows(func(int) uint64 { return 1 }),
			StalePer100ms:       windows(func(i int) uint64 { return uint64(b2i(i == 4) * 3) }),
			StaleBeyondPer100ms: windows(func(i int) uint64 { return uint64(b2i(i == 4)) })},
	}
	dir := t.TempDir()
	files, err := writeOutputs(dir, rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range outputFiles {
		if !slices.Contains(files, filepath.Join(dir, name)) {
			t.Errorf("%s not written: %v", name, files)
		}
	}
	svg, err := os.ReadFile(filepath.Join(dir, stalePlot+".svg"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Stale reads per 100 ms", "one TTL (300ms)", "aside (40 stale)", "full beyond the bound (1)"} {
		if !bytes.Contains(svg, []byte(want)) {
			t.Errorf("%s.svg lacks %q", stalePlot, want)
		}
	}
	loader, err := os.ReadFile(filepath.Join(dir, loaderPlot+".svg"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(loader, []byte("one TTL (300ms)")) {
		t.Errorf("%s.svg has no one-TTL marker", loaderPlot)
	}
	html, err := os.ReadFile(filepath.Join(dir, "report.html"))
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(html, []byte(`src="data:image/svg`)); n != len(plotNames) {
		t.Errorf("report.html has %d plots, want %d", n, len(plotNames))
	}

	// A TTL past the end of the scenarios gets no marker.
	rep.Config.TTL = time.Minute
	p, err := staleReadsPlot(rep)
	if err != nil {
		t.Fatal(err)
	}
	if p.X.Max > 2 || math.IsInf(p.X.Max, 0) {
		t.Errorf("the x axis reaches %v s with the marker left out", p.X.Max)
	}
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

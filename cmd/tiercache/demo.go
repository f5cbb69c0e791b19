package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"time"
)

// usageError is a bad command line: run's caller exits with status 2.
type usageError struct {
	err  error
	hint string // printed after the error, where to read the usage; or ""
}

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// The hints of a usage error that a look at the usage would fix.
const (
	commandHint = "Run \"tiercache help\" for the commands and the demo's flags.\n"
	demoHint    = "Run \"tiercache demo -h\" for the demo's flags.\n"
)

const usageText = `tiercache shows what each layer of tiercache buys, with numbers and plots.

Usage:
  tiercache demo [flags]   simulate a service in front of a slow database
  tiercache help           show this help (and the demo's flags)
  tiercache version        print the version

Run "tiercache demo -h" for the demo's flags.
`

// run is the command: args are the arguments after the program name.
// Reports go to stdout, progress and diagnostics to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return &usageError{err: errors.New("no command given"), hint: "\n" + usageText}
	}
	switch args[0] {
	case "demo":
		cfg, err := parseDemoFlags(args[1:], stdout)
		if err != nil {
			return err
		}
		return runDemo(ctx, cfg, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usageText+"\n")
		printDemoUsage(stdout)
		return nil
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "tiercache", version())
		return nil
	default:
		return &usageError{err: fmt.Errorf("unknown command %q: want demo, help or version", args[0]), hint: commandHint}
	}
}

// version is the module version the binary was built from, or what the
// build info knows about the source ("devel" in a work tree).
func version() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, d := range bi.Deps {
		if d.Path == "github.com/tiercache/tiercache" && d.Version != "" && d.Version != "(devel)" {
			v = d.Version
		}
	}
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	return v + " (" + bi.GoVersion + ")"
}

// Scenario names, in the order they run.
const (
	scenarioNone      = "none"
	scenarioAside     = "aside"
	scenarioCoalesced = "coalesced"
	scenarioFull      = "full"
)

var allScenarios = []string{scenarioNone, scenarioAside, scenarioCoalesced, scenarioFull}

// scenarioDoc says in a few words what each scenario is, for the header.
var scenarioDoc = map[string]string{
	scenarioNone:      "no cache: every read calls the loader",
	scenarioAside:     "hand-written cache-aside with go-redis: GET, load on a miss, SET with the TTL",
	scenarioCoalesced: "tiercache, per-process coalescing only (no lease, no early refresh, no jitter, no L1)",
	scenarioFull:      "tiercache, everything on: L1, lease, early refresh, jitter, stale-while-revalidate, stale-if-error",
}

// Write modes: how a write reaches the cache after the database.
const (
	writeDelete = "delete"
	writeSet    = "set"
)

// config is the demo's command line.
type config struct {
	Duration     time.Duration `json:"duration_ns"`
	Keys         int           `json:"keys"`
	Zipf         float64       `json:"zipf_s"`
	TTL          time.Duration `json:"ttl_ns"`
	LoadLatency  time.Duration `json:"load_latency_ns"`
	LoadJitter   time.Duration `json:"load_jitter_ns"`
	Workers      int           `json:"workers"`
	Instances    int           `json:"instances"`
	WriteRatio   float64       `json:"write_ratio"`
	WriteMode    string        `json:"write_mode"`
	Rate         int           `json:"rate"`
	L1Size       int           `json:"l1_size"`
	ReadTimeout  time.Duration `json:"read_timeout_ns"`
	WriteTimeout time.Duration `json:"write_timeout_ns"`
	Seed         uint64        `json:"seed"`
	Scenarios    []string      `json:"scenarios"`

	JSON        bool   `json:"-"`
	Strict      bool   `json:"-"`
	OutDir      string `json:"-"`
	RedisURL    string `json:"-"`
	Cluster     string `json:"-"`
	MetricsAddr string `json:"-"`
	scenario    string
	given       map[string]bool // the flags given on the command line
	debug       debugFlags      // the hidden debugging flags (debug.go)
	slow        *slowLog        // -debug-slow's log, nil without it
}

// defaultOutDir is where the demo writes its plots and report.html unless
// --out says otherwise.
var defaultOutDir = "tiercache-demo-out"

func defaultConfig() config {
	return config{
		Duration:    10 * time.Second,
		Keys:        1000,
		Zipf:        1.1,
		TTL:         2 * time.Second,
		LoadLatency: 20 * time.Millisecond,
		LoadJitter:  5 * time.Millisecond,
		Workers:     32,
		Instances:   4,
		WriteRatio:  0.01,
		WriteMode:   writeDelete,
		Rate:        10000,
		L1Size:      10000,
		Seed:        1,
		OutDir:      defaultOutDir,
		scenario:    "all",
	}
}

// demoFlagSet returns the demo's flags bound to a config with the defaults.
func demoFlagSet(out io.Writer) (*flag.FlagSet, *config) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet("tiercache demo", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.DurationVar(&cfg.Duration, "duration", cfg.Duration, "how long each scenario runs")
	fs.IntVar(&cfg.Keys, "keys", cfg.Keys, "number of keys (database rows)")
	fs.Float64Var(&cfg.Zipf, "zipf", cfg.Zipf, "Zipf `s` of the key popularity (> 1; larger is more skewed)")
	fs.DurationVar(&cfg.TTL, "ttl", cfg.TTL, "cache TTL of a value")
	fs.DurationVar(&cfg.LoadLatency, "load-latency", cfg.LoadLatency, "latency of one database load")
	fs.DurationVar(&cfg.LoadJitter, "load-jitter", cfg.LoadJitter, "uniform jitter (±) added to the load latency")
	fs.IntVar(&cfg.Workers, "workers", cfg.Workers, "concurrent request loops, spread over the instances")
	fs.IntVar(&cfg.Instances, "instances", cfg.Instances, "app instances, each with its own cache, L1 and Redis client")
	fs.Float64Var(&cfg.WriteRatio, "write-ratio", cfg.WriteRatio, "share of requests that are writes (0 to 1)")
	fs.StringVar(&cfg.WriteMode, "write-mode", cfg.WriteMode, "how a write reaches the cache: delete (invalidate) or set (write-through)")
	fs.IntVar(&cfg.Rate, "rate", cfg.Rate, "target requests per second over all workers (0: as fast as they go)")
	fs.IntVar(&cfg.L1Size, "l1-size", cfg.L1Size, "L1 entries per instance in the full scenario")
	fs.DurationVar(&cfg.ReadTimeout, "read-timeout", 0,
		"tiercache's bound on one Redis read, > 0 (default 100ms, or 500ms with the embedded Redis)")
	fs.DurationVar(&cfg.WriteTimeout, "write-timeout", 0,
		"tiercache's bound on one Redis write, > 0 (default 250ms, or 1s with the embedded Redis)")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the key and write choices (the same for every scenario)")
	fs.StringVar(&cfg.scenario, "scenario", cfg.scenario, "scenario to run: "+strings.Join(allScenarios, ", ")+" or all")
	fs.BoolVar(&cfg.JSON, "json", false, "print the results as one JSON object on stdout instead of a table")
	fs.BoolVar(&cfg.Strict, "strict", false,
		"exit with status 1 if a stale read broke tiercache's documented bound (after the report)")
	fs.StringVar(&cfg.OutDir, "out", cfg.OutDir, "write the plots and report.html to this `dir` (\"\" for none)")
	fs.StringVar(&cfg.RedisURL, "redis", "", "use the Redis server at this `URL` (redis://host:port/db) instead of an embedded one")
	fs.StringVar(&cfg.Cluster, "cluster", "", "use the Redis Cluster with these seed `addrs` (host:port,...)")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on this `addr` (host:port) while running")
	return fs, &cfg
}

// parseDemoFlags parses and validates the demo's flags. Errors are usage
// errors, which main prints; -h prints the flags' usage on stdout and
// returns flag.ErrHelp.
func parseDemoFlags(args []string, stdout io.Writer) (config, error) {
	fs, cfg := demoFlagSet(io.Discard) // the flag package would print the error too
	addDebugFlags(fs, &cfg.debug)      // after demoFlagSet: not in the usage
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			printDemoUsage(stdout)
			return config{}, err
		}
		return config{}, &usageError{err: flagError(fs, args, err), hint: demoHint}
	}
	if fs.NArg() > 0 {
		return config{}, &usageError{err: fmt.Errorf("demo: unexpected argument %q: the demo takes flags only", fs.Arg(0)),
			hint: demoHint}
	}
	cfg.given = map[string]bool{}
	fs.Visit(func(f *flag.Flag) { cfg.given[f.Name] = true })
	if err := cfg.validate(); err != nil {
		return config{}, &usageError{err: err}
	}
	return *cfg, nil
}

// flagError rewrites the flag package's errors for an unknown flag and a
// value it cannot parse: they quote the flag as typed and say what the
// value should be.
func flagError(fs *flag.FlagSet, args []string, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "flag provided but not defined: -"); ok {
		return fmt.Errorf("demo: unknown flag %q", typedFlag(args, name))
	}
	// "invalid value "banana" for flag -duration: parse error"
	rest, ok := strings.CutPrefix(msg, "invalid value ")
	if !ok {
		return err
	}
	quoted, qerr := strconv.QuotedPrefix(rest)
	name, _, _ := strings.Cut(strings.TrimPrefix(rest[len(quoted):], " for flag -"), ":")
	f := fs.Lookup(name)
	if qerr != nil || f == nil {
		return err
	}
	g, ok := f.Value.(flag.Getter)
	if !ok {
		return err
	}
	var want string
	switch g.Get().(type) {
	case time.Duration:
		want = "a duration such as 500ms, 10s or 2m"
	case int, uint64:
		want = "a whole number"
	case float64:
		want = "a number"
	default:
		return err
	}
	return fmt.Errorf("%s %s: want %s", typedFlag(args, name), quoted, want)
}

// typedFlag returns flag name as the user typed it ("--keys" or "-keys").
func typedFlag(args []string, name string) string {
	for _, a := range args {
		if a == "--" {
			break
		}
		typed, _, _ := strings.Cut(a, "=")
		if strings.HasPrefix(a, "-") && strings.TrimLeft(typed, "-") == name {
			return typed
		}
	}
	return "-" + name
}

func printDemoUsage(w io.Writer) {
	fmt.Fprintln(w, "Usage: tiercache demo [flags]\n\nFlags:")
	fs, _ := demoFlagSet(w)
	fs.PrintDefaults()
}

// validate checks the flag values and resolves --scenario.
func (c *config) validate() error {
	switch {
	case c.Duration < 100*time.Millisecond || c.Duration > 24*time.Hour:
		return fmt.Errorf("--duration %v: must be between 100ms and 24h", c.Duration)
	case c.Keys < 1 || c.Keys > 1_000_000:
		return fmt.Errorf("--keys %d: must be between 1 and 1000000", c.Keys)
	case !(c.Zipf > 1) || c.Zipf > 10:
		return fmt.Errorf("--zipf %v: must be above 1 (and at most 10)", c.Zipf)
	case c.TTL < time.Millisecond:
		return fmt.Errorf("--ttl %v: must be at least 1ms", c.TTL)
	case c.LoadLatency < 0 || c.LoadLatency > time.Minute:
		return fmt.Errorf("--load-latency %v: must be between 0 and 1m", c.LoadLatency)
	case c.LoadJitter < 0 || c.LoadJitter > time.Minute:
		return fmt.Errorf("--load-jitter %v: must be between 0 and 1m", c.LoadJitter)
	case c.Workers < 1 || c.Workers > 4096:
		return fmt.Errorf("--workers %d: must be between 1 and 4096", c.Workers)
	case c.Instances < 1 || c.Instances > 256:
		return fmt.Errorf("--instances %d: must be between 1 and 256", c.Instances)
	case !(c.WriteRatio >= 0 && c.WriteRatio <= 1):
		return fmt.Errorf("--write-ratio %v: must be between 0 and 1", c.WriteRatio)
	case c.WriteMode != writeDelete && c.WriteMode != writeSet:
		return fmt.Errorf("--write-mode %q: must be %q or %q", c.WriteMode, writeDelete, writeSet)
	case c.Rate < 0:
		return fmt.Errorf("--rate %d: must not be negative", c.Rate)
	case c.L1Size < 1:
		return fmt.Errorf("--l1-size %d: must be positive", c.L1Size)
	// An absent timeout flag leaves 0, which setTimeouts turns into the
	// default; a given one must be positive.
	case c.ReadTimeout < 0 || c.ReadTimeout == 0 && c.given["read-timeout"]:
		return fmt.Errorf("--read-timeout %v: must be positive (leave the flag out for the default)", c.ReadTimeout)
	case c.WriteTimeout < 0 || c.WriteTimeout == 0 && c.given["write-timeout"]:
		return fmt.Errorf("--write-timeout %v: must be positive (leave the flag out for the default)", c.WriteTimeout)
	case c.RedisURL != "" && c.Cluster != "":
		return errors.New("--redis and --cluster: give at most one")
	}
	if c.Instances > c.Workers {
		return fmt.Errorf("--instances %d is more than --workers %d: some instances would get no traffic", c.Instances, c.Workers)
	}
	if c.scenario == "all" {
		c.Scenarios = slices.Clone(allScenarios)
	} else {
		for s := range strings.SplitSeq(c.scenario, ",") {
			s = strings.TrimSpace(s)
			if !slices.Contains(allScenarios, s) {
				return fmt.Errorf("--scenario %q: must be one of %s or all", s, strings.Join(allScenarios, ", "))
			}
			if !slices.Contains(c.Scenarios, s) {
				c.Scenarios = append(c.Scenarios, s)
			}
		}
	}
	c.setTimeouts()
	if c.RedisURL != "" {
		if _, err := parseRedisURL(c.RedisURL); err != nil {
			return err
		}
	}
	if c.Cluster != "" {
		for a := range strings.SplitSeq(c.Cluster, ",") {
			if _, _, ok := strings.Cut(strings.TrimSpace(a), ":"); !ok {
				return fmt.Errorf("--cluster %q: want host:port,host:port,...", c.Cluster)
			}
		}
	}
	return nil
}

// setTimeouts fills in the Redis timeouts not given. A real Redis gets
// tiercache's defaults. The embedded one runs in the demo's own process,
// where the workers compete with it for the CPU (on two cores, with a busy
// neighbour, a 100 ms stall is common): its timeouts are longer, so that
// they measure Redis rather than the demo's own scheduling.
func (c *config) setTimeouts() {
	read, write := 100*time.Millisecond, 250*time.Millisecond // tiercache's defaults
	if c.RedisURL == "" && c.Cluster == "" {
		read, write = 500*time.Millisecond, time.Second
	}
	if c.ReadTimeout == 0 {
		c.ReadTimeout = read
	}
	if c.WriteTimeout == 0 {
		c.WriteTimeout = write
	}
}

// runDemo runs the chosen scenarios one after another on the same
// workload and reports them.
func runDemo(ctx context.Context, cfg config, stdout, stderr io.Writer) error {
	if cfg.OutDir != "" {
		if err := checkOutDir(cfg.OutDir); err != nil {
			return err
		}
	}
	be, err := openBackend(ctx, cfg)
	if err != nil {
		return err
	}
	defer be.close()
	stopDebug, err := startDebug(cfg.debug)
	defer stopDebug()
	if err != nil {
		return err
	}
	slow, closeSlow, err := openSlowLog(cfg.debug)
	if err != nil {
		return err
	}
	defer closeSlow()
	cfg.slow = slow

	var met *metrics
	if cfg.MetricsAddr != "" {
		if met, err = serveMetrics(cfg.MetricsAddr); err != nil {
			return err
		}
		defer met.close()
		fmt.Fprintf(stderr, "serving Prometheus metrics on http://%s/metrics\n", met.addr)
	}

	rep := &report{Redis: be.info, Config: cfg, Started: time.Now()}
	// The header and the files' paths go with the table; stdout holds
	// nothing but the JSON when there is JSON.
	text := stdout
	if cfg.JSON {
		text = stderr
	}
	rep.writeHeader(text)
	prog := newProgress(stderr)
	runID := newRunID()
	for _, name := range cfg.Scenarios {
		if err := ctx.Err(); err != nil {
			break
		}
		res, err := runScenario(ctx, scenarioParams{
			name: name, cfg: cfg, backend: be, prefix: "tcdemo-" + runID + "-" + name,
			progress: prog, metrics: met,
		})
		if err != nil {
			return fmt.Errorf("scenario %s: %w", name, err)
		}
		rep.Scenarios = append(rep.Scenarios, res)
	}
	rep.Elapsed = time.Since(rep.Started)
	interrupted := ctx.Err()

	if cfg.JSON {
		if err := rep.writeJSON(stdout); err != nil {
			return err
		}
	} else {
		rep.writeTable(stdout, useColor(stdout))
	}
	if cfg.OutDir != "" && len(rep.Scenarios) > 0 {
		files, err := writeOutputs(cfg.OutDir, rep)
		if err != nil {
			return fmt.Errorf("--out %q: %w", cfg.OutDir, err)
		}
		fmt.Fprintln(text, "\nwrote the plots and the report:")
		for _, f := range files {
			fmt.Fprintf(text, "  %s\n", f)
		}
	}
	if interrupted != nil {
		return fmt.Errorf("interrupted: %w", interrupted)
	}
	if n, names := rep.beyondBound(); cfg.Strict && n > 0 {
		return fmt.Errorf("--strict: %d stale reads broke the documented bound (%s)", n, strings.Join(names, ", "))
	}
	return nil
}

// checkOutDir makes sure, before the run, that its plots can be written
// into dir: it creates dir and a file in it, which it removes.
func checkOutDir(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return usagef("--out %q: cannot create the directory: %v", dir, err)
	}
	f, err := os.CreateTemp(dir, ".tiercache-demo-check-*")
	if err != nil {
		return usagef("--out %q: cannot write a file in it: %v", dir, err)
	}
	_ = f.Close()
	return os.Remove(f.Name())
}

package runner

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/tiercache/tiercache/bench/sim"
)

// replayTraces replays the built-in traces (and extra ones) against the
// policies and Bélády's optimum, each policy reps times: OPT, LRU and the
// peers' policies give the same result every time, otter does not quite
// (its frequency sketch is seeded at random).
func replayTraces(e *env, extra []*sim.Trace, reps int) ([]TraceInfo, error) {
	gli, err := sim.Glimpse()
	if err != nil {
		return nil, err
	}
	traces := append([]*sim.Trace{gli, sim.Synthetic(e.sc.Seed, e.sc.SyntheticRefs)}, extra...)
	pols := sim.Policies()
	names := []string{sim.OPT}
	for _, p := range pols {
		names = append(names, p.Name)
	}
	var out []TraceInfo
	for _, t := range traces {
		e.logf("[trace] %s: %d refs", t.Name, len(t.Keys))
		out = append(out, TraceInfo{
			Name:     t.Name,
			Source:   t.Source,
			Refs:     len(t.Keys),
			Distinct: t.Distinct(),
			Policies: names,
			Results:  sim.Replay(t, pols, reps),
		})
	}
	return out, nil
}

// LoadTrace reads a trace file for -trace: format "lirs" (one key per
// line) or "arc" (start count _ _), optionally gzipped. sizes are the cache
// sizes to replay it at.
func LoadTrace(path, format string, sizes []int) (*sim.Trace, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r, err := maybeGunzip(f)
	if err != nil {
		return nil, err
	}
	var keys []uint64
	switch strings.ToLower(format) {
	case "lirs":
		keys, err = sim.ParseLIRS(r)
	case "arc":
		keys, err = sim.ParseARC(r)
	default:
		return nil, fmt.Errorf("runner: trace format %q: want lirs or arc", format)
	}
	if err != nil {
		return nil, err
	}
	if len(sizes) == 0 {
		return nil, fmt.Errorf("runner: trace %s: no cache sizes", path)
	}
	return &sim.Trace{
		Name:   filepath.Base(path),
		Source: "file " + path + " (" + format + " format)",
		Keys:   keys,
		Sizes:  sizes,
	}, nil
}

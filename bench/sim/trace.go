// Package sim replays cache traces against in-process eviction policies:
// otter v2 (tiercache's L1), a plain LRU, the local caches of two peers,
// and Bélády's optimum computed offline, to show how close an L1 of a
// given size comes to the best any policy could do.
package sim

import (
	"bufio"
	"bytes"
	"compress/gzip"
	_ "embed"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"strings"
)

// Trace is a sequence of key references.
type Trace struct {
	Name   string
	Source string // where it comes from, for the report
	Keys   []uint64
	Sizes  []int // cache sizes to simulate, in entries
}

// Distinct returns the number of distinct keys in t.
func (t *Trace) Distinct() int {
	seen := make(map[uint64]struct{}, len(t.Keys)/4)
	for _, k := range t.Keys {
		seen[k] = struct{}{}
	}
	return len(seen)
}

// gliTrace is the LIRS "glimpse" trace (a text-retrieval utility's block
// references, a loop-pattern trace from Jiang and Zhang's LIRS paper) as
// shipped in github.com/dgraph-io/ristretto@v0.1.0, sim/gli.lirs.gz
// (Apache-2.0). See traces/README.md.
//
//go:embed traces/gli.lirs.gz
var gliTrace []byte

// Glimpse returns the embedded LIRS glimpse trace.
func Glimpse() (*Trace, error) {
	zr, err := gzip.NewReader(bytes.NewReader(gliTrace))
	if err != nil {
		return nil, err
	}
	keys, err := ParseLIRS(zr)
	if err != nil {
		return nil, err
	}
	return &Trace{
		Name:   "gli (LIRS glimpse)",
		Source: "real: LIRS glimpse trace, shipped in github.com/dgraph-io/ristretto@v0.1.0 sim/gli.lirs.gz",
		Keys:   keys,
		Sizes:  []int{250, 500, 1000, 2000},
	}, nil
}

// ParseLIRS reads the LIRS trace format: one block number per line. Lines
// that are empty or start with '*' (LIRS's end marker) are skipped.
func ParseLIRS(r io.Reader) ([]uint64, error) {
	var keys []uint64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '*' {
			continue
		}
		k, err := strconv.ParseUint(line, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("sim: LIRS trace line %q: %w", line, err)
		}
		keys = append(keys, k)
	}
	return keys, sc.Err()
}

// ParseARC reads the ARC trace format (the OLTP, P1..P14, S1..S3 traces):
// each line is "start count ignored ignored", standing for the count
// blocks start, start+1, ...
func ParseARC(r io.Reader) ([]uint64, error) {
	var keys []uint64
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		start, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("sim: ARC trace line %q: %w", sc.Text(), err)
		}
		n, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("sim: ARC trace line %q: %w", sc.Text(), err)
		}
		for i := range n {
			keys = append(keys, start+i)
		}
	}
	return keys, sc.Err()
}

// The synthetic trace's shape. See Synthetic.
const (
	synthUniverse  = 100_000 // keys of the Zipf working set
	synthZipfS     = 1.1     // Zipf exponent (math/rand/v2 needs s > 1)
	synthZipfLen   = 20_000  // references per Zipf segment
	synthScanLen   = 5_000   // keys per scan segment, each read once
	synthLoopKeys  = 3_000   // keys of the loop block
	synthLoopPass  = 2       // passes over the loop block per loop segment
	synthScanBase  = 1 << 40 // scan keys start here and never repeat
	synthLoopBase  = 1 << 41 // loop block keys
	synthPZipf     = 0.6     // probability that a segment is Zipf ...
	synthPScan     = 0.2     // ... a scan (the rest: a loop)
	synthSeedPhase = 0x5eed
)

// Synthetic returns n references from a seeded generator in the spirit of
// the LIRS and ARC benchmark traces: a Zipf(1.1) working set of 100,000
// keys (ranked in a seeded random order), interrupted by scans (5,000 new
// keys read once each, which pollute an LRU) and loops (a fixed block of
// 3,000 keys read in order twice, which defeats an LRU smaller than the
// block). Each segment is Zipf with probability 0.6 (20,000 references),
// a scan with 0.2, a loop with 0.2. The same seed gives the same trace.
func Synthetic(seed uint64, n int) *Trace {
	r := rand.New(rand.NewPCG(seed, synthSeedPhase))
	z := rand.NewZipf(r, synthZipfS, 1, synthUniverse-1)
	rank := r.Perm(synthUniverse)
	keys := make([]uint64, 0, n)
	var scanNext uint64 = synthScanBase
	for len(keys) < n {
		switch p := r.Float64(); {
		case p < synthPZipf:
			for range synthZipfLen {
				keys = append(keys, uint64(rank[z.Uint64()]))
			}
		case p < synthPZipf+synthPScan:
			for range synthScanLen {
				keys = append(keys, scanNext)
				scanNext++
			}
		default:
			for range synthLoopPass {
				for i := range uint64(synthLoopKeys) {
					keys = append(keys, synthLoopBase+i)
				}
			}
		}
	}
	keys = keys[:n]
	return &Trace{
		Name: fmt.Sprintf("synthetic (seed %d)", seed),
		Source: fmt.Sprintf("synthetic: seeded generator (seed %d, %d refs): Zipf(%.1f) over %d keys, "+
			"scans of %d one-time keys, loops of %d keys x%d", seed, n, synthZipfS, synthUniverse,
			synthScanLen, synthLoopKeys, synthLoopPass),
		Keys:  keys,
		Sizes: []int{1_000, 4_000, 16_000},
	}
}

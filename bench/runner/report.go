package runner

import (
	"bufio"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/tiercache/tiercache/bench/sim"
	"github.com/tiercache/tiercache/bench/subject"
)

// WriteFiles writes the report as dir/latest.md and dir/latest.json.
func (r *Report) WriteFiles(dir string) (mdPath, jsonPath string, err error) {
	return r.WriteFilesNamed(dir, "latest")
}

// WriteFilesNamed writes the report as dir/name.md and dir/name.json.
func (r *Report) WriteFilesNamed(dir, name string) (mdPath, jsonPath string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", err
	}
	mdPath = filepath.Join(dir, name+".md")
	jsonPath = filepath.Join(dir, name+".json")
	var md strings.Builder
	r.Markdown(&md)
	if err := os.WriteFile(mdPath, []byte(md.String()), 0o644); err != nil {
		return "", "", err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", "", err
	}
	return mdPath, jsonPath, os.WriteFile(jsonPath, append(js, '\n'), 0o644)
}

// num formats a figure with three significant digits or so.
func num(x float64) string {
	a := math.Abs(x)
	switch {
	case a >= 1000:
		return fmt.Sprintf("%.0f", x)
	case a >= 100:
		return fmt.Sprintf("%.0f", x)
	case a >= 10:
		return fmt.Sprintf("%.1f", x)
	default:
		return fmt.Sprintf("%.2f", x)
	}
}

// cell is "median (min–max) ×ratio".
func cell(s Summary, noRatio bool) string {
	var b strings.Builder
	b.WriteString(num(s.Median))
	if len(s.Rounds) > 1 {
		fmt.Fprintf(&b, " (%s–%s)", num(s.Min), num(s.Max))
	}
	if !noRatio && s.Ratio != nil {
		fmt.Fprintf(&b, " ×%.2f", *s.Ratio)
	}
	return b.String()
}

// Markdown writes the report as Markdown tables.
func (r *Report) Markdown(w io.Writer) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	h := r.Header
	fmt.Fprintf(bw, "# tiercache side by side\n\n")
	fmt.Fprintf(bw, "| | |\n|---|---|\n")
	fmt.Fprintf(bw, "| date | %s |\n", h.Date)
	fmt.Fprintf(bw, "| machine | %s/%s, %s, %d cores (GOMAXPROCS %d) |\n", h.GOOS, h.GOARCH, h.CPU, h.Cores, h.GOMAXPROCS)
	fmt.Fprintf(bw, "| Go | %s |\n", h.GoVersion)
	fmt.Fprintf(bw, "| Redis | %s (local redis-server, loopback, no persistence) |\n", h.RedisVersion)
	fmt.Fprintf(bw, "| tiercache commit | %s |\n", h.GitCommit)
	fmt.Fprintf(bw, "| mode | %s, %d rounds unless a workload says otherwise, subjects interleaved within each round |\n", h.Mode, h.Rounds)
	fmt.Fprintf(bw, "| wall time | %s |\n", h.WallTime)
	if h.Command != "" {
		fmt.Fprintf(bw, "| command | `%s` |\n", h.Command)
	}
	bw.WriteString("\n")
	if h.Note != "" {
		fmt.Fprintf(bw, "**Note.** %s\n\n", h.Note)
	}
	fmt.Fprintf(bw, "Cells: median over rounds (min–max) ×ratio to %s in the same run "+
		"(for latencies, allocations and loads lower is better; for throughput and hit ratio higher is better).\n\n", subject.Baseline)

	fmt.Fprintf(bw, "## Subjects\n\n| subject | module | local tier | batch | cross-instance coalescing (declared) | write | configuration |\n|---|---|---|---|---|---|---|\n")
	for _, s := range r.Subjects {
		local := s.Local
		if local == "" {
			local = "none"
		}
		batch := "no"
		if s.Batch {
			batch = "yes"
		}
		cross := "no"
		if s.CrossInstance {
			cross = "yes"
		}
		write := s.Write
		if write == "" {
			write = "none"
		}
		fmt.Fprintf(bw, "| %s | %s | %s | %s | %s | %s | %s |\n", s.Name, s.Module, local, batch, cross, write, s.Notes)
	}
	if len(h.Modules) > 0 {
		fmt.Fprintf(bw, "\nModule versions: ")
		paths := make([]string, 0, len(h.Modules))
		for p := range h.Modules {
			paths = append(paths, p)
		}
		sort.Strings(paths)
		for i, p := range paths {
			if i > 0 {
				bw.WriteString(", ")
			}
			fmt.Fprintf(bw, "%s %s", p, h.Modules[p])
		}
		bw.WriteString(".\n")
	}
	bw.WriteString("\n")

	for _, wl := range r.Workloads {
		fmt.Fprintf(bw, "## %s\n\n%s\n\n", wl.Title, wl.Description)
		if wl.Rounds > 0 && wl.Rounds != h.Rounds {
			fmt.Fprintf(bw, "%d rounds.\n\n", wl.Rounds)
		}
		bw.WriteString("| subject |")
		for _, m := range wl.Metrics {
			fmt.Fprintf(bw, " %s |", m.Label)
		}
		bw.WriteString("\n|---|")
		bw.WriteString(strings.Repeat("---|", len(wl.Metrics)))
		bw.WriteString("\n")
		for _, row := range wl.Rows {
			fmt.Fprintf(bw, "| %s |", row.Subject)
			if row.Status != "ok" {
				msg := row.Status
				if row.Note != "" {
					msg += ": " + row.Note
				}
				fmt.Fprintf(bw, " %s |", strings.ReplaceAll(msg, "|", "/"))
				bw.WriteString(strings.Repeat(" |", len(wl.Metrics)-1))
				bw.WriteString("\n")
				continue
			}
			for _, m := range wl.Metrics {
				s, ok := row.Values[m.Key]
				if !ok {
					bw.WriteString(" n/a |")
					continue
				}
				fmt.Fprintf(bw, " %s |", cell(s, m.NoRatio))
			}
			bw.WriteString("\n")
		}
		bw.WriteString("\n")
		for _, row := range wl.Rows {
			var rounds []string
			for i, d := range row.Diagnostics {
				if n := notableDiagnostics(d); n != "" {
					rounds = append(rounds, fmt.Sprintf("round %d: %s", i+1, n))
				}
			}
			if len(rounds) > 0 {
				fmt.Fprintf(bw, "- %s reported: %s.\n", row.Subject, strings.Join(rounds, "; "))
			}
		}
		if slices.ContainsFunc(wl.Rows, func(row Row) bool {
			return slices.ContainsFunc(row.Diagnostics, func(d map[string]uint64) bool { return notableDiagnostics(d) != "" })
		}) {
			bw.WriteString("\n")
		}
		requestBreakdown(bw, wl)
	}

	if len(r.Traces) > 0 {
		fmt.Fprintf(bw, "## L1 hit ratio on traces\n\n")
		fmt.Fprintf(bw, "Each trace is replayed against in-process policies of the given size, each policy once "+
			"per round (a new instance each time); cells show the median, and [min–max] where replays differed "+
			"(otter seeds its sketch at random). %s is Bélády's optimum computed offline from next-use indices "+
			"(with bypass), the ceiling for any policy. Cells: hit %% (×ratio to OPT, ×ratio to LRU). "+
			"Not replayed: gocache's go-cache store (no size bound) and rueidis's client-side cache "+
			"(bounded by bytes per connection, filled by Redis tracking).\n\n", sim.OPT)
		for _, t := range r.Traces {
			fmt.Fprintf(bw, "**%s**: %s; %d references, %d distinct keys.\n\n", t.Name, t.Source, t.Refs, t.Distinct)
			bw.WriteString("| size |")
			for _, p := range t.Policies {
				fmt.Fprintf(bw, " %s |", p)
			}
			bw.WriteString("\n|---|" + strings.Repeat("---|", len(t.Policies)) + "\n")
			for _, res := range t.Results {
				fmt.Fprintf(bw, "| %d |", res.Size)
				opt, lru := res.HitRatio[sim.OPT], res.HitRatio["LRU"]
				for _, p := range t.Policies {
					hr, ok := res.HitRatio[p]
					if !ok {
						fmt.Fprintf(bw, " error: %s |", res.Errors[p])
						continue
					}
					fmt.Fprintf(bw, " %.2f", 100*hr)
					if rg, ok := res.Range[p]; ok {
						fmt.Fprintf(bw, " [%.2f–%.2f]", 100*rg[0], 100*rg[1])
					}
					if p != sim.OPT && opt > 0 {
						fmt.Fprintf(bw, " (×%.2f OPT", hr/opt)
						if p != "LRU" && lru > 0 {
							fmt.Fprintf(bw, ", ×%.2f LRU", hr/lru)
						}
						bw.WriteString(")")
					}
					bw.WriteString(" |")
				}
				bw.WriteString("\n")
			}
			bw.WriteString("\n")
		}
	}
}

// Row returns the row of subject name in workload id, for tests.
func (r *Report) Row(id, name string) (Row, bool) {
	i := slices.IndexFunc(r.Workloads, func(w Workload) bool { return w.ID == id })
	if i < 0 {
		return Row{}, false
	}
	j := slices.IndexFunc(r.Workloads[i].Rows, func(row Row) bool { return row.Subject == name })
	if j < 0 {
		return Row{}, false
	}
	return r.Workloads[i].Rows[j], true
}

// maybeGunzip returns a reader of f's contents, decompressed when it is
// gzip.
func maybeGunzip(f *os.File) (io.Reader, error) {
	br := bufio.NewReader(f)
	magic, err := br.Peek(2)
	if err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		return gzip.NewReader(br)
	}
	return br, nil
}

// requestBreakdown writes, for a workload whose rounds counted operations
// ("ops") and Redis requests ("redis:<command>"), the requests per
// operation by command, and the library's counters per operation where
// it reports them: median over rounds.
func requestBreakdown(bw *bufio.Writer, wl Workload) {
	breakdown(bw, wl, "redis:", "redis_commands", "Redis requests per operation by first command (a pipeline of several commands is `pipeline`; "+
		"`commands` counts the commands in all requests), and loader calls per operation; median over rounds:")
	breakdown(bw, wl, "server:", "", "Commands Redis ran per operation (INFO commandstats: the commands that scripts run are counted too); "+
		"median over rounds:")
}

// breakdown writes the table of requestBreakdown for the counters named
// prefix+command, with a `commands` column from total when it is not "".
func breakdown(bw *bufio.Writer, wl Workload, prefix, total, intro string) {
	var cmds []string
	totals := map[string]float64{}
	for _, row := range wl.Rows {
		for _, d := range row.Diagnostics {
			for k, v := range d {
				if name, ok := strings.CutPrefix(k, prefix); ok && d["ops"] > 0 {
					if _, seen := totals[name]; !seen {
						cmds = append(cmds, name)
					}
					totals[name] += float64(v) / float64(d["ops"])
				}
			}
		}
	}
	perOp := func(row Row, key string) (float64, bool) {
		var xs []float64
		for _, d := range row.Diagnostics {
			if d["ops"] > 0 {
				xs = append(xs, float64(d[key])/float64(d["ops"]))
			}
		}
		if len(xs) == 0 {
			return 0, false
		}
		return summarize(xs).Median, true
	}
	// Commands no subject sends once per 2,000 operations (a connection's
	// HELLO, say) are left out.
	cmds = slices.DeleteFunc(cmds, func(c string) bool {
		return !slices.ContainsFunc(wl.Rows, func(row Row) bool {
			x, ok := perOp(row, prefix+c)
			return ok && row.Status == "ok" && x >= 0.0005
		})
	})
	if len(cmds) == 0 {
		return
	}
	sort.Slice(cmds, func(i, j int) bool {
		if totals[cmds[i]] != totals[cmds[j]] {
			return totals[cmds[i]] > totals[cmds[j]]
		}
		return cmds[i] < cmds[j]
	})
	fmt.Fprintf(bw, "%s\n\n", intro)
	extra := []string{"\x00commands", "\x00loads"}
	bw.WriteString("| subject |")
	for _, c := range cmds {
		fmt.Fprintf(bw, " %s |", strings.ReplaceAll(c, "|", `\|`)) // client|caching
	}
	if total == "" {
		extra = nil
	} else {
		bw.WriteString(" commands | loader calls |")
	}
	bw.WriteString("\n|---|" + strings.Repeat("---|", len(cmds)+len(extra)) + "\n")
	for _, row := range wl.Rows {
		if row.Status != "ok" || len(row.Diagnostics) == 0 {
			continue
		}
		fmt.Fprintf(bw, "| %s |", row.Subject)
		for _, c := range append(slices.Clone(cmds), extra...) {
			key := prefix + c
			switch c {
			case "\x00commands":
				key = total
			case "\x00loads":
				key = "loader_calls"
			}
			if x, ok := perOp(row, key); ok && x > 0 {
				fmt.Fprintf(bw, " %.3f |", x)
			} else {
				bw.WriteString(" |")
			}
		}
		bw.WriteString("\n")
	}
	bw.WriteString("\n")
}

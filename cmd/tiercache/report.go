package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tiercache/tiercache"
)

// report is the whole run: what was measured, for the table, the JSON,
// the plots and report.html.
type report struct {
	Redis     redisInfo         `json:"redis"`
	Config    config            `json:"config"`
	Started   time.Time         `json:"started"`
	Elapsed   time.Duration     `json:"-"`
	Scenarios []*scenarioResult `json:"scenarios"`
}

// scenarioResult holds one scenario's figures. The fields the issue
// names come first; the others add detail.
type scenarioResult struct {
	Name               string  `json:"name"`
	Requests           uint64  `json:"requests"`
	HitRatio           float64 `json:"hit_ratio"`
	L1HitRatio         float64 `json:"l1_hit_ratio"`
	LoaderCalls        uint64  `json:"loader_calls"`
	LoaderPeakPer100ms uint64  `json:"loader_peak_per_100ms"`
	LoaderMeanPer100ms float64 `json:"loader_mean_per_100ms"`
	// SteadyPeakToMean is the peak over the mean of the loader calls per
	// 100 ms window once the first TTL has passed: the cold start, which
	// every scenario shares, left out, what remains shows expiry spikes.
	SteadyPeakToMean float64 `json:"steady_peak_to_mean"`
	P50us            float64 `json:"p50_us"`
	P99us            float64 `json:"p99_us"`
	P999us           float64 `json:"p999_us"`
	Errors           uint64  `json:"errors"`
	StaleReads       uint64  `json:"stale_reads"`

	Description  string        `json:"description"`
	Interrupted  bool          `json:"interrupted,omitempty"`
	DurationS    float64       `json:"duration_s"`
	SetupMS      float64       `json:"setup_ms"`
	Reads        uint64        `json:"reads"`
	Writes       uint64        `json:"writes"`
	ReadsPerS    float64       `json:"reads_per_s"`
	HasL1        bool          `json:"has_l1"`
	P90us        float64       `json:"p90_us"`
	MaxUS        float64       `json:"max_us"`
	ReadErrors   uint64        `json:"read_errors"`
	WriteErrors  uint64        `json:"write_errors"`
	WrongRows    uint64        `json:"wrong_rows"`
	FirstError   string        `json:"first_error,omitempty"`
	StaleSame    uint64        `json:"stale_reads_same_instance"`
	StaleMaxLag  float64       `json:"stale_max_ms_after_ack"`
	StaleSamples []staleSample `json:"stale_samples,omitempty"`
	// Judged is whether the stale reads were judged against tiercache's
	// documented bound (see freshness.go); the counts below are then the
	// judged reads by verdict, StaleUnjudged those too many to keep.
	Judged        bool   `json:"judged"`
	StaleBeyond   uint64 `json:"stale_reads_beyond_bound"`
	StaleWithin   uint64 `json:"stale_reads_within_delay"`
	StaleOutage   uint64 `json:"stale_reads_within_outage_ttl"`
	StaleUnjudged uint64 `json:"stale_reads_unjudged"`
	// InvalidationDelay is the delays of the invalidation messages the
	// instances applied, merged over them; nil without tiercache.
	InvalidationDelay *delaySummary `json:"invalidation_delay,omitempty"`
	// LoaderPer100ms is the loader calls of each 100 ms window, in order;
	// StalePer100ms the stale reads that began in it, and
	// StaleBeyondPer100ms those of them beyond the bound.
	LoaderPer100ms      []uint64 `json:"loader_per_100ms"`
	StalePer100ms       []uint64 `json:"stale_per_100ms"`
	StaleBeyondPer100ms []uint64 `json:"stale_beyond_per_100ms,omitempty"`
	// Tiercache is tiercache's own counters, summed over the instances.
	Tiercache *cacheCounters `json:"tiercache,omitempty"`

	hist histogram
}

// cacheCounters is tiercache.Stats for the JSON: events by name.
type cacheCounters struct {
	L1Hits     uint64            `json:"l1_hits"`
	L1Misses   uint64            `json:"l1_misses"`
	L2Hits     uint64            `json:"l2_hits"`
	L2Misses   uint64            `json:"l2_misses"`
	Loads      uint64            `json:"loads"`
	LoadErrors uint64            `json:"load_errors"`
	Events     map[string]uint64 `json:"events"`
	Breaker    string            `json:"breaker"`
}

func newCacheCounters(s *tiercache.Stats) *cacheCounters {
	c := &cacheCounters{
		L1Hits: s.L1Hits, L1Misses: s.L1Misses, L2Hits: s.L2Hits, L2Misses: s.L2Misses,
		Loads: s.Loads, LoadErrors: s.LoadErrors, Events: map[string]uint64{},
		Breaker: s.BreakerState.String(),
	}
	for e, n := range s.Events {
		if n > 0 {
			c.Events[tiercache.Event(e).String()] = n
		}
	}
	return c
}

// delaySummary is the distribution of the invalidation delays: from a
// write acknowledged on one instance to another's L1 drop. The percentiles
// are upper bounds, those of the buckets of tiercache.DelayHistogram
// (doubling from 16µs), capped at the maximum.
type delaySummary struct {
	Messages uint64  `json:"messages"`
	MeanMS   float64 `json:"mean_ms"`
	P50MS    float64 `json:"p50_ms"`
	P99MS    float64 `json:"p99_ms"`
	P999MS   float64 `json:"p999_ms"`
	MaxMS    float64 `json:"max_ms"`
}

func newDelaySummary(h *tiercache.DelayHistogram) *delaySummary {
	ms := func(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e6 }
	s := &delaySummary{Messages: h.Count, P50MS: ms(h.Quantile(0.5)), P99MS: ms(h.Quantile(0.99)),
		P999MS: ms(h.Quantile(0.999)), MaxMS: ms(h.Max)}
	if h.Count > 0 {
		s.MeanMS = ms(h.Sum) / float64(h.Count)
	}
	return s
}

// timeSeries are a scenario's counts per 100 ms window.
type timeSeries struct {
	loads  []uint64 // loader calls
	stale  []uint64 // stale reads, by the window they began in
	beyond []uint64 // of those, the ones beyond the bound (judged scenarios)
}

// summarize merges the workers' figures into the scenario's result.
func summarize(name string, cfg *config, elapsed time.Duration, loaderCalls uint64, ts timeSeries,
	workers []*workerStats, cs *tiercache.Stats) *scenarioResult {
	windows := ts.loads
	r := &scenarioResult{
		Name: name, Description: scenarioDoc[name], DurationS: elapsed.Seconds(),
		LoaderCalls: loaderCalls, LoaderPer100ms: windows, StalePer100ms: ts.stale,
		Judged: judgedScenario(name),
	}
	if r.Judged {
		r.StaleBeyondPer100ms = ts.beyond
	}
	var samples, beyond []staleSample
	for _, w := range workers {
		r.Reads += w.reads
		r.Writes += w.writes
		r.ReadErrors += w.readErrs
		r.WriteErrors += w.writeErrs
		r.WrongRows += w.wrongKey
		if w.firstErr != nil && r.FirstError == "" {
			r.FirstError = w.firstErr.Error()
		}
		r.StaleReads += w.stale
		r.StaleSame += w.staleSameInst
		r.StaleUnjudged += w.staleUnkept
		r.StaleMaxLag = max(r.StaleMaxLag, float64(w.staleMaxLag.Microseconds())/1000)
		for i := range w.staleReads {
			sr := &w.staleReads[i]
			switch sr.verdict {
			case withinDelay:
				r.StaleWithin++
			case withinOutage:
				r.StaleOutage++
			case unjudged: // a sample of a scenario that is not judged
			default:
				r.StaleBeyond++
			}
			if sr.verdict.beyond() && len(beyond) < maxStaleSamples {
				beyond = append(beyond, newStaleSample(sr))
			} else if !sr.verdict.beyond() && len(samples) < maxStaleSamples {
				samples = append(samples, newStaleSample(sr))
			}
		}
		r.hist.merge(&w.hist)
	}
	// The reads beyond the bound first: they are what the samples are for.
	r.StaleSamples = append(beyond, samples...)[:min(len(beyond)+len(samples), maxStaleSamples)]
	r.Requests = r.Reads + r.Writes
	r.Errors = r.ReadErrors + r.WriteErrors
	if r.Reads > 0 {
		r.HitRatio = max(0, 1-float64(loaderCalls)/float64(r.Reads))
		r.ReadsPerS = float64(r.Reads) / elapsed.Seconds()
	}
	for _, n := range windows {
		r.LoaderPeakPer100ms = max(r.LoaderPeakPer100ms, n)
		r.LoaderMeanPer100ms += float64(n)
	}
	if len(windows) > 0 {
		r.LoaderMeanPer100ms /= float64(len(windows))
	}
	if skip := int(cfg.TTL / (100 * time.Millisecond)); skip < len(windows) {
		var peak, sum uint64
		for _, n := range windows[skip:] {
			peak = max(peak, n)
			sum += n
		}
		if sum > 0 {
			r.SteadyPeakToMean = float64(peak) / (float64(sum) / float64(len(windows)-skip))
		}
	}
	us := func(q float64) float64 { return float64(r.hist.quantile(q).Nanoseconds()) / 1000 }
	r.P50us, r.P90us, r.P99us, r.P999us, r.MaxUS = us(0.5), us(0.9), us(0.99), us(0.999), us(1)
	if cs != nil {
		r.InvalidationDelay = newDelaySummary(&cs.InvalidationDelay)
		r.Tiercache = newCacheCounters(cs)
		if cfg.L1Size > 0 && cs.L1Hits+cs.L1Misses > 0 {
			r.HasL1 = true
			r.L1HitRatio = float64(cs.L1Hits) / float64(cs.L1Hits+cs.L1Misses)
		}
	}
	return r
}

func (rep *report) writeHeader(w io.Writer) {
	c := &rep.Config
	writeWrapped(w, "", "", fmt.Sprintf("This demo sends the same requests, for %v, through each cache setup below "+
		"to a simulated database whose loads take %v, and reports how often each calls the database and how long "+
		"its reads take.", c.Duration, c.LoadLatency))
	fmt.Fprintln(w)
	fmt.Fprintf(w, "tiercache demo %s\n", version())
	writeWrapped(w, "redis:    ", "          ", rep.Redis.Description)
	fmt.Fprintf(w, "workload: %d keys, Zipf s=%g, %.3g%% writes (%s), %s per scenario\n",
		c.Keys, c.Zipf, 100*c.WriteRatio, c.WriteMode, c.Duration)
	fmt.Fprintf(w, "clients:  %d workers over %d instance(s), %s\n", c.Workers, c.Instances, rateText(c.Rate))
	fmt.Fprintf(w, "database: loads take %v ± %v\n", c.LoadLatency, c.LoadJitter)
	fmt.Fprintf(w, "cache:    TTL %v; tiercache's Redis timeouts %v (read), %v (write)\n",
		c.TTL, c.ReadTimeout, c.WriteTimeout)
	for _, s := range c.Scenarios {
		writeWrapped(w, fmt.Sprintf("  %-10s ", s), strings.Repeat(" ", 13), scenarioDoc[s])
	}
	fmt.Fprintln(w)
}

func rateText(rate int) string {
	if rate == 0 {
		return "unpaced"
	}
	return fmt.Sprintf("%d req/s target", rate)
}

// tableColumns are the table's headings, short for the table to fit in
// lineWidth columns; tableLegend explains them. A row with a bad note
// (errors, stale reads beyond the bound) ends in badMark, which has no
// heading.
var tableColumns = []string{"scenario", "reads", "hits", "L1", "loads", "peak", "spike",
	"p50", "p99", "p99.9", "errors", "stale"}

const tableLegend = "reads: reads made (writes not counted). hits: 1 - loads/reads. L1: reads answered in process. " +
	"loads: loader (database) calls; peak: most in a 100 ms window; spike: peak/mean after the first TTL " +
	"(expiry waves). p50..p99.9: read latency. stale: reads that missed a write acknowledged before they began. " +
	badMark + ": errors, or stale reads beyond the bound (see below)."

// badMark marks what broke: a bad note, and its scenario's rows.
const badMark = "!!"

// freshColumns are the headings of the freshness table; freshLegend
// explains them.
var freshColumns = []string{"scenario", "messages", "delay p50", "p99", "p99.9", "max", "stale", "in bound", "beyond"}

var freshLegend = "Freshness. messages: invalidation messages the instances applied; delay: from the write's " +
	"acknowledgement on one instance to another's L1 drop (percentiles are upper bounds: tiercache's buckets double " +
	"from 16µs). A stale read on another instance than the writer's is in the bound until that instance applied the " +
	"write's invalidation, judged from the delays it measured then (+" + clockSlack.String() + " slack), and never " +
	"past the L1 TTL (the outage TTL while its subscription is down); on the writer's instance it is beyond. " +
	"Only full promises the bound."

// tableRow formats one scenario's row of the table.
func (r *scenarioResult) tableRow() []string {
	l1 := "-"
	if r.HasL1 {
		l1 = pct(r.L1HitRatio)
	}
	spike := "-" // no window after the first TTL, or no load in them
	if r.SteadyPeakToMean > 0 {
		spike = fmtRatio(r.SteadyPeakToMean)
	}
	row := []string{
		r.Name, count(r.Reads), pct(r.HitRatio), l1, count(r.LoaderCalls),
		count(r.LoaderPeakPer100ms), spike,
		fmtLatency(r.P50us), fmtLatency(r.P99us), fmtLatency(r.P999us),
		count(r.Errors), count(r.StaleReads),
	}
	if r.bad() {
		row = append(row, badMark)
	}
	return row
}

// freshRow formats one scenario's row of the freshness table.
func (r *scenarioResult) freshRow() []string {
	row := []string{r.Name, "-", "-", "-", "-", "-", count(r.StaleReads), "-", "-"}
	if d := r.InvalidationDelay; d != nil {
		row[1] = count(d.Messages)
		if d.Messages > 0 {
			ms := func(v float64) string { return fmtLatency(v * 1000) }
			row[2], row[3], row[4], row[5] = ms(d.P50MS), ms(d.P99MS), ms(d.P999MS), ms(d.MaxMS)
		}
	}
	if r.Judged {
		row[7], row[8] = count(r.StaleWithin+r.StaleOutage), count(r.StaleBeyond)
		if r.StaleBeyond > 0 {
			row = append(row, badMark)
		}
	}
	return row
}

// bad reports whether a scenario has a bad note: its rows are marked.
func (r *scenarioResult) bad() bool {
	for _, n := range r.notes() {
		if n.Bad {
			return true
		}
	}
	return false
}

// beyondBound reports the stale reads beyond the bound over the
// scenarios, and the scenarios that had some.
func (rep *report) beyondBound() (uint64, []string) {
	var n uint64
	var names []string
	for _, r := range rep.Scenarios {
		if r.StaleBeyond > 0 {
			n += r.StaleBeyond
			names = append(names, r.Name)
		}
	}
	return n, names
}

// writeTable writes the table of the scenarios, the freshness table, their
// legends and the notes; color marks the bad rows and notes in red as well.
func (rep *report) writeTable(w io.Writer, color bool) {
	table := func(head []string, row func(*scenarioResult) []string, legend string) {
		rows := [][]string{head}
		for _, r := range rep.Scenarios {
			rows = append(rows, row(r))
		}
		writeColumns(w, rows, color)
		fmt.Fprintln(w)
		writeWrapped(w, "", "", legend)
	}
	table(tableColumns, (*scenarioResult).tableRow, tableLegend)
	fmt.Fprintln(w)
	table(freshColumns, (*scenarioResult).freshRow, freshLegend)
	for _, r := range rep.Scenarios {
		rep.writeNotes(w, r, color)
	}
	fmt.Fprintf(w, "\ntotal time %.1fs\n", rep.Elapsed.Seconds())
}

// red is line in bold red, for a terminal.
func red(line string) string { return "\x1b[1;31m" + line + "\x1b[0m" }

// writeColumns writes rows as a table: the first column aligned left, the
// others right, two spaces apart. A row that ends in badMark is red if
// color is set.
func writeColumns(w io.Writer, rows [][]string, color bool) {
	var widths []int
	for _, row := range rows {
		for i, cell := range row {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	for _, row := range rows {
		var b strings.Builder
		for i, cell := range row {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell))
			if i == 0 {
				b.WriteString(cell + pad)
			} else {
				b.WriteString("  " + pad + cell)
			}
		}
		line := b.String()
		if color && len(row) > 0 && row[len(row)-1] == badMark {
			line = red(line)
		}
		fmt.Fprintln(w, line)
	}
}

// writeNotes prints what stands out in a scenario under the table. A bad
// note starts with "!!", and is red if color is set.
func (rep *report) writeNotes(w io.Writer, r *scenarioResult, color bool) {
	notes := r.notes()
	if len(notes) == 0 {
		return
	}
	fmt.Fprintf(w, "\n%s:\n", r.Name)
	for _, n := range notes {
		indent := "  "
		if n.Sample {
			indent = "    "
		}
		first, rest := indent, indent
		if n.Bad {
			first, rest = indent+badMark+" ", indent+"   "
		}
		for _, line := range wrap(first, rest, n.Text) {
			if n.Bad && color {
				line = red(line)
			}
			fmt.Fprintln(w, line)
		}
	}
}

// lineWidth is the width, in columns, that the demo's text report keeps
// within.
const lineWidth = 100

// wrap breaks text at spaces into lines of at most lineWidth columns, the
// first starting with first, the others with rest. A word too long for a
// line gets one of its own.
func wrap(first, rest, text string) []string {
	var lines []string
	line, empty := first, true
	for _, word := range strings.Fields(text) {
		if !empty && utf8.RuneCountInString(line)+1+utf8.RuneCountInString(word) > lineWidth {
			lines = append(lines, line)
			line, empty = rest, true
		}
		if !empty {
			line += " "
		}
		line += word
		empty = false
	}
	return append(lines, line)
}

// writeWrapped writes text wrapped as wrap does.
func writeWrapped(w io.Writer, first, rest, text string) {
	for _, line := range wrap(first, rest, text) {
		fmt.Fprintln(w, line)
	}
}

// note is one remark on a scenario. Bad ones are failures of the layer
// under test rather than what the scenario is known to do.
type note struct {
	Text   string
	Bad    bool
	Sample bool // an example of the note before it
}

// maxNoteSamples bounds the stale reads shown under the table (the JSON
// has up to maxStaleSamples).
const maxNoteSamples = 3

// notes explains what stands out in a scenario: errors, stale reads,
// tiercache's own counters.
func (r *scenarioResult) notes() []note {
	var notes []note
	if r.Interrupted {
		notes = append(notes, note{Text: fmt.Sprintf("interrupted after %.1fs", r.DurationS)})
	}
	if r.Errors > 0 {
		notes = append(notes, note{Bad: true, Text: fmt.Sprintf("%d read errors, %d write errors; first: %s",
			r.ReadErrors, r.WriteErrors, r.FirstError)})
	}
	if d := r.InvalidationDelay; d != nil && d.Messages > 0 {
		notes = append(notes, note{Text: fmt.Sprintf(
			"invalidation delay, write acknowledged to L1 dropped on another instance, over %d messages: "+
				"p50 %s, p99 %s, p99.9 %s, max %s (mean %s).",
			d.Messages, fmtLatency(d.P50MS*1000), fmtLatency(d.P99MS*1000), fmtLatency(d.P999MS*1000),
			fmtLatency(d.MaxMS*1000), fmtLatency(d.MeanMS*1000))})
	}
	if r.StaleReads > 0 {
		text := fmt.Sprintf("%d stale reads (%d on the instance that made the write); the latest began %.1f ms after the write was acknowledged.",
			r.StaleReads, r.StaleSame, r.StaleMaxLag)
		bad := false
		switch {
		case r.Judged:
			text += fmt.Sprintf(" %d in the bound (%d before the reader applied the write's invalidation, %d within the L1 outage TTL), %d beyond it.",
				r.StaleWithin+r.StaleOutage, r.StaleWithin, r.StaleOutage, r.StaleBeyond)
			if r.StaleUnjudged > 0 {
				text += fmt.Sprintf(" %d more were not judged (the demo keeps %d).", r.StaleUnjudged, maxJudged)
			}
			if r.StaleBeyond > 0 {
				bad = true
				text += " tiercache promises that a read on another instance returns the old value only until that instance applied the write's invalidation, on the writer's instance never, and never past the L1 TTL: these reads break that promise."
			}
		case r.Name == scenarioAside || r.Name == scenarioCoalesced:
			text += " Expected: a load that read the row before a write can store it after the write's invalidation (the stale set)."
		}
		notes = append(notes, note{Text: text, Bad: bad})
		for _, s := range r.StaleSamples[:min(len(r.StaleSamples), maxNoteSamples)] {
			text := fmt.Sprintf("e.g. %s: got v%d, v%d acknowledged by instance %d %.2f ms before instance %d's read began (the read took %.2f ms)",
				s.Key, s.Got, s.Acked, s.WriterInst, s.LagAfterAck, s.ReaderInst, s.ReadDuration)
			if s.Verdict != "" {
				text += "; " + s.Verdict
			}
			notes = append(notes, note{Sample: true, Bad: s.BeyondBound, Text: text})
		}
	}
	if t := r.Tiercache; t != nil {
		var ev []string
		for _, e := range []tiercache.Event{tiercache.EventCoalesced, tiercache.EventLeaseWait, tiercache.EventFillRefused,
			tiercache.EventEarlyRefresh, tiercache.EventStaleServed, tiercache.EventStaleOnError, tiercache.EventRedisError,
			tiercache.EventRedisTimeout, tiercache.EventBreakerReject, tiercache.EventInvalidationReceived, tiercache.EventReadBatched} {
			if n := t.Events[e.String()]; n > 0 {
				ev = append(ev, fmt.Sprintf("%s %d", e, n))
			}
		}
		if len(ev) > 0 {
			notes = append(notes, note{Text: "tiercache events: " + strings.Join(ev, ", ")})
		}
	}
	return notes
}

func (rep *report) writeJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(rep)
}

func pct(f float64) string { return fmt.Sprintf("%.1f%%", 100*f) }

// count formats n in at most 6 characters: exactly up to 999999, then in
// millions (M) or billions (G).
func count(n uint64) string {
	switch {
	case n < 1_000_000:
		return fmt.Sprint(n)
	case n < 999_950_000: // below what %.1f rounds up to 1000.0M
		return fmt.Sprintf("%.1fM", float64(n)/1e6)
	default:
		return fmt.Sprintf("%.1fG", float64(n)/1e9)
	}
}

// fmtLatency formats microseconds with a unit and 3 significant digits,
// in at most 6 characters below a day. The bounds are where a format would
// round up to one more digit.
func fmtLatency(us float64) string {
	switch {
	case us >= 99_950_000:
		return fmt.Sprintf("%.0fs", us/1e6)
	case us >= 9_995_000:
		return fmt.Sprintf("%.1fs", us/1e6)
	case us >= 999_500:
		return fmt.Sprintf("%.2fs", us/1e6)
	case us >= 99_950:
		return fmt.Sprintf("%.0fms", us/1e3)
	case us >= 9_995:
		return fmt.Sprintf("%.1fms", us/1e3)
	case us >= 999.5:
		return fmt.Sprintf("%.2fms", us/1e3)
	case us >= 99.95:
		return fmt.Sprintf("%.0fµs", us)
	case us >= 9.995:
		return fmt.Sprintf("%.1fµs", us)
	case us >= 0.9995:
		return fmt.Sprintf("%.2fµs", us)
	default:
		return fmt.Sprintf("%.0fns", us*1000)
	}
}

// fmtRatio formats a ratio with 3 significant digits (4 from 1000 on).
func fmtRatio(f float64) string {
	switch {
	case f >= 99.95:
		return fmt.Sprintf("%.0f", f)
	case f >= 9.995:
		return fmt.Sprintf("%.1f", f)
	default:
		return fmt.Sprintf("%.2f", f)
	}
}

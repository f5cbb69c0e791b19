package main

import (
	"bytes"
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// The plots' file names (without extension) and size.
const (
	loaderPlot  = "loader_calls"
	latencyPlot = "read_latency"
	stalePlot   = "stale_reads"
	plotWidth   = 9 * vg.Inch
	plotHeight  = 4.5 * vg.Inch
)

// plotNames are the plots, in the order they are written and shown.
var plotNames = []string{loaderPlot, latencyPlot, stalePlot}

// writeOutputs writes the plots (PNG and SVG) and report.html into dir and
// returns the files' paths.
func writeOutputs(dir string, rep *report) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	plots := map[string]*plot.Plot{}
	var err error
	if plots[loaderPlot], err = loaderCallsPlot(rep); err != nil {
		return nil, err
	}
	if plots[latencyPlot], err = latencyPercentilesPlot(rep); err != nil {
		return nil, err
	}
	if plots[stalePlot], err = staleReadsPlot(rep); err != nil {
		return nil, err
	}
	var files []string
	svgs := map[string][]byte{}
	for _, name := range plotNames {
		for _, format := range []string{"png", "svg"} {
			b, err := render(plots[name], format)
			if err != nil {
				return nil, fmt.Errorf("rendering %s.%s: %w", name, format, err)
			}
			path := filepath.Join(dir, name+"."+format)
			if err := os.WriteFile(path, b, 0o644); err != nil {
				return nil, err
			}
			files = append(files, path)
			if format == "svg" {
				svgs[name] = b
			}
		}
	}
	path := filepath.Join(dir, "report.html")
	if err := writeHTML(path, rep, svgs); err != nil {
		return nil, err
	}
	return append(files, path), nil
}

func render(p *plot.Plot, format string) ([]byte, error) {
	wt, err := p.WriterTo(plotWidth, plotHeight, format)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := wt.WriteTo(&buf); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// scenarioColor gives each scenario the same color in every plot.
func scenarioColor(name string) color.Color {
	for i, s := range allScenarios {
		if s == name {
			return plotutil.Color(i)
		}
	}
	return color.Black
}

// loaderCallsPlot draws the loader calls per 100 ms window over time, a
// line per scenario: the expiry waves of cache-aside against the flat
// line of tiercache.
func loaderCallsPlot(rep *report) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Loader (database) calls per 100 ms"
	p.X.Label.Text = "time since the scenario started (s)"
	p.Y.Label.Text = "loader calls per 100 ms"
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	for _, r := range rep.Scenarios {
		pts := make(plotter.XYs, len(r.LoaderPer100ms))
		for i, n := range r.LoaderPer100ms {
			pts[i] = plotter.XY{X: (float64(i) + 0.5) * windowWidth.Seconds(), Y: float64(n)}
		}
		if len(pts) == 0 {
			continue
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.Color = scenarioColor(r.Name)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (%d calls)", r.Name, r.LoaderCalls), l)
	}
	// Room above the highest line for the legend.
	p.Y.Min, p.Y.Max = 0, p.Y.Max*1.35
	p.X.Min = 0
	p.X.Tick.Marker = secondTicks{}
	return p, addTTLMarker(p, rep)
}

// addTTLMarker draws a dashed vertical line at one TTL after the start on
// a plot over time, whose Y range is set: where the values loaded at the
// start begin to expire. None when the scenarios ended before.
func addTTLMarker(p *plot.Plot, rep *report) error {
	ttl := rep.Config.TTL.Seconds()
	longest := 0
	for _, r := range rep.Scenarios {
		longest = max(longest, len(r.LoaderPer100ms))
	}
	if ttl >= float64(longest)*windowWidth.Seconds() {
		return nil
	}
	l, err := plotter.NewLine(plotter.XYs{{X: ttl, Y: p.Y.Min}, {X: ttl, Y: p.Y.Max}})
	if err != nil {
		return err
	}
	l.Color = color.Gray{Y: 96}
	l.Width = vg.Points(1)
	l.Dashes = []vg.Length{vg.Points(5), vg.Points(3)}
	p.Add(l)
	p.Legend.Add(fmt.Sprintf("one TTL (%v)", rep.Config.TTL), l)
	return nil
}

// staleReadsPlot draws the stale reads per 100 ms window over time, a line
// per scenario, and, as crosses, those beyond tiercache's documented bound
// (judged scenarios only), with the one-TTL marker: the stale set of
// cache-aside lives until the value expires.
func staleReadsPlot(rep *report) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Stale reads per 100 ms"
	p.X.Label.Text = "time since the scenario started (s)"
	p.Y.Label.Text = "stale reads per 100 ms"
	p.Legend.Top = true
	p.Add(plotter.NewGrid())
	at := func(i int) float64 { return (float64(i) + 0.5) * windowWidth.Seconds() }
	top := 1.0
	for _, r := range rep.Scenarios {
		if len(r.StalePer100ms) == 0 {
			continue
		}
		pts := make(plotter.XYs, len(r.StalePer100ms))
		for i, n := range r.StalePer100ms {
			pts[i] = plotter.XY{X: at(i), Y: float64(n)}
			top = max(top, float64(n))
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return nil, err
		}
		l.Color = scenarioColor(r.Name)
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(fmt.Sprintf("%s (%d stale)", r.Name, r.StaleReads), l)
		var beyond plotter.XYs
		for i, n := range r.StaleBeyondPer100ms {
			if n > 0 {
				beyond = append(beyond, plotter.XY{X: at(i), Y: float64(n)})
			}
		}
		if len(beyond) > 0 {
			sc, err := plotter.NewScatter(beyond)
			if err != nil {
				return nil, err
			}
			sc.Color, sc.Shape, sc.Radius = color.RGBA{R: 200, A: 255}, draw.CrossGlyph{}, vg.Points(4)
			p.Add(sc)
			p.Legend.Add(fmt.Sprintf("%s beyond the bound (%d)", r.Name, r.StaleBeyond), sc)
		}
	}
	p.Y.Min, p.Y.Max = 0, top*1.35 // room above for the legend
	p.X.Min = 0
	p.X.Tick.Marker = secondTicks{}
	return p, addTTLMarker(p, rep)
}

// secondTicks marks every second (every 5 or 10 on long runs) of the
// loader plot's time axis.
type secondTicks struct{}

func (secondTicks) Ticks(lo, hi float64) []plot.Tick {
	step := 1.0
	for _, st := range []float64{1, 2, 5, 10, 30, 60, 300, 600, 1800, 3600} {
		if step = st; (hi-lo)/step <= 20 {
			break
		}
	}
	var ts []plot.Tick
	for v := math.Ceil(lo/step) * step; v <= hi; v += step {
		ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
	}
	return ts
}

// percentiles drawn in the latency plot.
var latencyPoints = []struct {
	label string
	value func(*scenarioResult) float64
}{
	{"p50", func(r *scenarioResult) float64 { return r.P50us }},
	{"p90", func(r *scenarioResult) float64 { return r.P90us }},
	{"p99", func(r *scenarioResult) float64 { return r.P99us }},
	{"p99.9", func(r *scenarioResult) float64 { return r.P999us }},
	{"max", func(r *scenarioResult) float64 { return r.MaxUS }},
}

// latencyPercentilesPlot draws read latency percentiles, a line per
// scenario, on a log scale (L1 hits are microseconds, loads tens of ms).
func latencyPercentilesPlot(rep *report) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Read latency percentiles"
	p.X.Label.Text = "percentile"
	p.Y.Label.Text = "read latency (ms, log scale)"
	p.Y.Scale = plot.LogScale{}
	p.Legend.Top = true
	p.Legend.Left = true
	var ticks plot.ConstantTicks
	for i, lp := range latencyPoints {
		ticks = append(ticks, plot.Tick{Value: float64(i), Label: lp.label})
	}
	p.X.Tick.Marker = ticks
	p.X.Min, p.X.Max = -0.3, float64(len(latencyPoints)-1)+0.3
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, r := range rep.Scenarios {
		pts := make(plotter.XYs, len(latencyPoints))
		for i, lp := range latencyPoints {
			ms := max(lp.value(r)/1000, 0.0001) // the log scale needs > 0
			pts[i] = plotter.XY{X: float64(i), Y: ms}
			lo, hi = min(lo, ms), max(hi, ms)
		}
		l, s, err := plotter.NewLinePoints(pts)
		if err != nil {
			return nil, err
		}
		c := scenarioColor(r.Name)
		l.Color, l.Width = c, vg.Points(1.5)
		s.Color, s.Shape = c, draw.CircleGlyph{}
		p.Add(l, s)
		p.Legend.Add(r.Name, l, s)
	}
	if lo > hi {
		lo, hi = 0.001, 1
	}
	p.Y.Min = math.Pow(10, math.Floor(math.Log10(lo)))
	p.Y.Max = math.Pow(10, math.Ceil(math.Log10(hi)))
	p.Y.Tick.Marker = logTicks{}
	p.Add(plotter.NewGrid())
	return p, nil
}

// logTicks labels every power of ten (gonum's LogTicks prints 1e-02).
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ts []plot.Tick
	for e := math.Floor(math.Log10(lo)); e <= math.Ceil(math.Log10(hi)); e++ {
		v := math.Pow(10, e)
		ts = append(ts, plot.Tick{Value: v, Label: fmt.Sprintf("%g", v)})
		for m := 2.0; m < 10; m++ {
			ts = append(ts, plot.Tick{Value: m * v})
		}
	}
	return ts
}

package main

import (
	"bytes"
	"encoding/base64"
	"html/template"
	"os"
	"time"
)

// reportTemplate is report.html: the table and the plots (as data URIs,
// so the page has no external assets and can be mailed as one file).
var reportTemplate = template.Must(template.New("report").Parse(`<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tiercache demo report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; padding: 0 1em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td:first-child, th:first-child { text-align: left; }
.bad { color: #b00; font-weight: bold; }
dl.cfg { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dl.cfg dt { font-weight: bold; }
dl.cfg dd { margin: 0; }
img { max-width: 100%; border: 1px solid #eee; }
.note { color: #555; font-size: 0.9em; }
li { margin-bottom: 0.6em; }
</style>
</head>
<body>
<h1>tiercache demo</h1>
<p>Generated {{.Generated}} by tiercache {{.Version}}.</p>
<dl class="cfg">
<dt>Redis</dt><dd>{{.Rep.Redis.Description}}</dd>
<dt>Workload</dt><dd>{{.Rep.Config.Keys}} keys, Zipf s={{.Rep.Config.Zipf}}, {{.Rep.Config.Workers}} workers over {{.Rep.Config.Instances}} instances, {{.Rate}}, {{.WritePct}} writes ({{.Rep.Config.WriteMode}}), {{.Rep.Config.Duration}} per scenario</dd>
<dt>Database</dt><dd>loads take {{.Rep.Config.LoadLatency}} ± {{.Rep.Config.LoadJitter}}; cache TTL {{.Rep.Config.TTL}}; tiercache's Redis timeouts {{.Rep.Config.ReadTimeout}} (read), {{.Rep.Config.WriteTimeout}} (write)</dd>
</dl>
<h2>Results</h2>
<table>
<tr>{{range .Columns}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr{{if .Bad}} class="bad"{{end}}>{{range $c := .Cells}}<td>{{$c}}</td>{{end}}</tr>
{{end}}</table>
<p class="note">{{.Legend}}</p>
<ul>
{{range .Rows}}<li><b>{{.Name}}</b>: {{.Description}}{{range .Notes}}<br>{{if .Sample}}&emsp;{{end}}<span{{if .Bad}} class="bad"{{end}}>{{.Text}}</span>{{end}}</li>
{{end}}</ul>
<h2>Freshness</h2>
<table>
<tr>{{range .FreshColumns}}<th>{{.}}</th>{{end}}</tr>
{{range .Rows}}<tr{{if .FreshBad}} class="bad"{{end}}>{{range $c := .FreshCells}}<td>{{$c}}</td>{{end}}</tr>
{{end}}</table>
<p class="note">{{.FreshLegend}}</p>
<h2>Loader calls over time</h2>
<p><img alt="loader calls per 100 ms, a line per scenario, and a marker at one TTL" src="{{.LoaderSVG}}"></p>
<h2>Read latency</h2>
<p><img alt="read latency percentiles, a line per scenario" src="{{.LatencySVG}}"></p>
<h2>Stale reads over time</h2>
<p><img alt="stale reads per 100 ms, a line per scenario, those beyond the bound as crosses, and a marker at one TTL" src="{{.StaleSVG}}"></p>
</body>
</html>
`))

type htmlRow struct {
	Name, Description string
	Cells, FreshCells []string
	Bad, FreshBad     bool
	Notes             []note
}

// writeHTML writes report.html with the plots in svgs, by name.
func writeHTML(path string, rep *report, svgs map[string][]byte) error {
	data := struct {
		Rep                             *report
		Generated, Version              string
		Rate, WritePct                  string
		Columns, FreshColumns           []string
		Legend, FreshLegend             string
		Rows                            []htmlRow
		LoaderSVG, LatencySVG, StaleSVG template.URL
	}{
		Rep: rep, Generated: time.Now().Format(time.RFC1123), Version: version(),
		Rate: rateText(rep.Config.Rate), WritePct: pct(rep.Config.WriteRatio),
		Columns: tableColumns, FreshColumns: freshColumns,
		Legend: tableLegend, FreshLegend: freshLegend,
		LoaderSVG:  svgDataURI(svgs[loaderPlot]),
		LatencySVG: svgDataURI(svgs[latencyPlot]),
		StaleSVG:   svgDataURI(svgs[stalePlot]),
	}
	// The cells without the mark, which the row's class shows instead.
	cells := func(row []string) ([]string, bool) {
		if n := len(row); n > 0 && row[n-1] == badMark {
			return row[:n-1], true
		}
		return row, false
	}
	for _, r := range rep.Scenarios {
		hr := htmlRow{Name: r.Name, Description: r.Description, Notes: r.notes()}
		hr.Cells, hr.Bad = cells(r.tableRow())
		hr.FreshCells, hr.FreshBad = cells(r.freshRow())
		data.Rows = append(data.Rows, hr)
	}
	var buf bytes.Buffer
	if err := reportTemplate.Execute(&buf, data); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// svgDataURI embeds an SVG document in the page. The bytes come from
// gonum/plot, not from a user, so the URL is safe to mark as such.
func svgDataURI(svg []byte) template.URL {
	return template.URL("data:image/svg+xml;base64," + base64.StdEncoding.EncodeToString(svg))
}

package runner_test

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/bench/runner"
	"github.com/tiercache/tiercache/bench/subject"
	"github.com/tiercache/tiercache/internal/redistest"
)

// TestTinyRun runs every workload for every subject once at the tiny
// scale, against a redis-server the runner starts itself, and checks the
// shape of the report: what CI needs to know the runner still works.
func TestTinyRun(t *testing.T) {
	redistest.RequireServer(t) // skip, or fail in CI, without redis-server
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var log strings.Builder
	rep, err := runner.Run(ctx, runner.Options{Rounds: 1, Scale: runner.TinyScale(), Log: &log})
	if err != nil {
		t.Fatalf("Run: %v\n%s", err, log.String())
	}

	for _, id := range runner.WorkloadIDs() {
		if id == "trace" {
			continue
		}
		for _, f := range subject.All() {
			row, ok := rep.Row(id, f.Name)
			if !ok {
				t.Errorf("%s: no row for %s", id, f.Name)
				continue
			}
			if row.Status == "error" {
				t.Errorf("%s / %s: %s", id, f.Name, row.Note)
			}
		}
	}
	base, _ := rep.Row("l2hit", subject.Baseline)
	if base.Status != "ok" || base.Values["p50_us"].Ratio == nil || *base.Values["p50_us"].Ratio != 1 {
		t.Errorf("baseline L2 row: %+v", base)
	}
	// Every L2 read must be a hit: otherwise the workload measured loads.
	for _, f := range subject.All() {
		if row, _ := rep.Row("l2hit", f.Name); row.Status == "ok" && row.Values["loads"].Median != 0 {
			t.Errorf("l2hit / %s: %v loads, want 0", f.Name, row.Values["loads"].Median)
		}
	}
	// The realistic mix loads (keys expire, writes may delete), the
	// read-only run never does; every subject has a same-round ratio.
	for _, f := range subject.All() {
		row, _ := rep.Row("realistic", f.Name)
		if row.Status != "ok" {
			continue
		}
		v := row.Values
		if h := v["hit"].Median; h <= 0 || h >= 1 || v["loads"].Median == 0 || v["tput_ops_rx"].Median == 0 || v["req_op"].Median == 0 {
			t.Errorf("realistic / %s: hit %v, loads %v, ×base %v, req/op %v", f.Name, h, v["loads"].Median, v["tput_ops_rx"].Median, v["req_op"].Median)
		}
		if ro, _ := rep.Row("readonly", f.Name); ro.Status == "ok" && ro.Values["loads"].Median != 0 {
			t.Errorf("readonly / %s: %v loads, want 0", f.Name, ro.Values["loads"].Median)
		}
	}
	if row, _ := rep.Row("realistic", subject.Baseline); row.Values["tput_ops_rx"].Median != 1 {
		t.Errorf("realistic baseline ×base: %+v", row.Values["tput_ops_rx"])
	}
	if row, _ := rep.Row("memory", subject.Baseline); row.Status != "n/a" {
		t.Errorf("memory row of the baseline: %q, want n/a", row.Status)
	}
	if row, _ := rep.Row("batch", "go-redis/cache"); row.Status != "not supported" {
		t.Errorf("batch row of go-redis/cache: %q, want not supported", row.Status)
	}
	if len(rep.Traces) < 2 {
		t.Fatalf("%d traces replayed, want 2", len(rep.Traces))
	}
	for _, tr := range rep.Traces {
		for _, res := range tr.Results {
			if len(res.Errors) > 0 || len(res.HitRatio) != len(tr.Policies) {
				t.Errorf("trace %s size %d: %v, errors %v", tr.Name, res.Size, res.HitRatio, res.Errors)
			}
		}
	}

	dir := t.TempDir()
	mdPath, jsonPath, err := rep.WriteFiles(dir)
	if err != nil {
		t.Fatal(err)
	}
	md, err := os.ReadFile(mdPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"# tiercache side by side", "## L2 hit", "## Stampede", "## Realistic mix", "Redis requests per operation", "## L1 hit ratio on traces", rep.Header.RedisVersion} {
		if !strings.Contains(string(md), want) {
			t.Errorf("Markdown lacks %q", want)
		}
	}
	js, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var back runner.Report
	if err := json.Unmarshal(js, &back); err != nil || len(back.Workloads) != len(rep.Workloads) {
		t.Fatalf("JSON round trip: %v, %d workloads", err, len(back.Workloads))
	}
}

package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestDebugSlow runs a short full scenario with the hidden -debug-slow
// flag: every read (threshold 0) is written with its spans and loads, and
// the writes and fill messages as events.
func TestDebugSlow(t *testing.T) {
	dir := t.TempDir()
	slow := filepath.Join(dir, "slow.jsonl")
	prof := filepath.Join(dir, "cpu.prof")
	var stdout, stderr bytes.Buffer
	args := append(append([]string{"demo"}, shortArgs...),
		"--scenario", "full", "--write-ratio", "0.05", "-debug-slow", slow, "-debug-slow-over", "0", "-debug-cpuprofile", prof)
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("run: %v\nstderr:\n%s", err, stderr.String())
	}
	f, err := os.Open(slow)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var reads, withSpans, withLoads, writes int
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var line struct {
			Scenario string            `json:"scenario"`
			Event    string            `json:"event"`
			Spans    []json.RawMessage `json:"spans"`
			Loads    []json.RawMessage `json:"loads"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		switch {
		case line.Event == "write":
			writes++
		case line.Scenario == "full":
			reads++
			if len(line.Spans) > 0 {
				withSpans++
			}
			if len(line.Loads) > 0 {
				withLoads++
			}
		}
	}
	if reads == 0 || withSpans == 0 || withLoads == 0 || writes == 0 {
		t.Errorf("%d reads (%d with spans, %d with loads), %d writes: want some of each", reads, withSpans, withLoads, writes)
	}
	if st, err := os.Stat(prof); err != nil || st.Size() == 0 {
		t.Errorf("no CPU profile written (%v)", err)
	}
}

// TestDebugFlagsHidden checks that the debugging flags are not in the usage.
func TestDebugFlagsHidden(t *testing.T) {
	var stdout, stderr bytes.Buffer
	_ = run(t.Context(), []string{"demo", "-h"}, &stdout, &stderr)
	if strings.Contains(stdout.String(), "debug-") {
		t.Errorf("demo -h lists a debugging flag:\n%s", stdout.String())
	}
}

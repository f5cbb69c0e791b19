package runner

import (
	"context"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/tiercache/tiercache/bench/subject"
)

func TestRecordSize(t *testing.T) {
	keys := keyRange("r:", 0, 100_000)
	db := newDatabase(keys, "r:", 0)
	for _, i := range []int{0, 7, 99_999} {
		v := db.value(i)
		if len(v) < recordSize-64 || len(v) > recordSize+64 {
			t.Errorf("record %d: %d bytes, want about %d", i, len(v), recordSize)
		}
		var r record
		if err := json.Unmarshal([]byte(v), &r); err != nil || r.ID != keys[i] {
			t.Errorf("record %d: %v, id %q", i, err, r.ID)
		}
		if err := checkRecord(v); err != nil {
			t.Error(err)
		}
	}
	before := db.value(3)
	after := db.write(3)
	if before == after {
		t.Error("a write did not change the record")
	}
	if v, err := db.load(keys[3]); err != nil || v != after || db.loads.Load() != 1 {
		t.Errorf("load after write: %v, %d loads", err, db.loads.Load())
	}
}

func TestHist(t *testing.T) {
	var h hist
	for i := 1; i <= 10_000; i++ {
		h.add(time.Duration(i) * time.Microsecond)
	}
	for _, c := range []struct {
		p    float64
		want time.Duration
	}{{0.5, 5 * time.Millisecond}, {0.99, 9900 * time.Microsecond}, {0.999, 9990 * time.Microsecond}, {1, 10 * time.Millisecond}} {
		got := h.quantile(c.p)
		if d := float64(got-c.want) / float64(c.want); d < -0.02 || d > 0.02 {
			t.Errorf("quantile(%v) = %v, want %v ±2%%", c.p, got, c.want)
		}
	}
	for v := uint64(0); v < 1<<20; v += 7 {
		i := histBucket(v)
		if mid := histValue(i); float64(mid) < float64(v)*0.98-1 || float64(mid) > float64(v)*1.02+1 {
			t.Fatalf("bucket %d of %d has middle %d", i, v, mid)
		}
	}
}

// TestRunWorkloadRotates checks that each round starts one subject further
// down the list and that same-round ratios are taken against the
// baseline's figure of that round.
func TestRunWorkloadRotates(t *testing.T) {
	fs := []subject.Factory{{Name: subject.Baseline}, {Name: "a"}, {Name: "b"}}
	var order []string
	w := workload{
		id:      "fake",
		applies: all,
		metrics: []MetricDef{{Key: "x", Label: "x"}, {Key: "x_rx", Label: "x same round", NoRatio: true}},
		run: func(_ context.Context, _ *env, f subject.Factory, round int) (map[string]float64, error) {
			order = append(order, f.Name)
			x := float64(round + 1) // the baseline's figure changes per round
			if f.Name != subject.Baseline {
				x *= 2
			}
			return map[string]float64{"x": x}, nil
		},
		rounds:    3,
		sameRound: []string{"x"},
	}
	res := runWorkload(context.Background(), &env{}, w, fs, 1)
	want := []string{subject.Baseline, "a", "b", "a", "b", subject.Baseline, "b", subject.Baseline, "a"}
	if !slices.Equal(order, want) {
		t.Errorf("order %v, want %v", order, want)
	}
	for _, row := range res.Rows {
		rx := row.Values["x_rx"]
		wantRx := 2.0
		if row.Subject == subject.Baseline {
			wantRx = 1
		}
		if row.Status != "ok" || len(rx.Rounds) != 3 || rx.Median != wantRx || rx.Min != wantRx {
			t.Errorf("%s: %s, x_rx %+v, want %v in every round", row.Subject, row.Status, rx, wantRx)
		}
	}
}

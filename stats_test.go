package tiercache

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestStatsJSON(t *testing.T) {
	s := Stats{L1Hits: 3, L2Hits: 1, L2Misses: 1, BreakerState: BreakerOpen}
	s.Events[EventCoalesced] = 7
	s.InvalidationDelay.Count, s.InvalidationDelay.Max = 2, 1500*time.Microsecond
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"coalesced":7`, `"breaker_state":"open"`, `"hit_ratio":0.8`, `"l1_hits":3`, `"invalidation_delay":{"buckets":[`, `"count":2,"sum_ns":0,"max_ns":1500000}`} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("%s lacks %s", b, want)
		}
	}
}

// Stats (stats.go): without Redis (NewLocal) each L1 miss is counted as an
// L2 miss too, so that HitRatio is hits over reads there as well.
func TestStatsLocalCountsL1MissesAsL2Misses(t *testing.T) {
	c := newLocalT[string](t, WithL1(10))
	if _, err := c.Get(t.Context(), "k"); err == nil {
		t.Fatal("hit on an empty cache")
	}
	if _, err := c.GetOrLoad(t.Context(), "k", constLoad("v", 0)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Get(t.Context(), "k"); err != nil {
		t.Fatal(err)
	}
	s := c.Stats()
	if s.L1Hits != 1 || s.L1Misses != 2 || s.L2Hits != 0 || s.L2Misses != 2 || s.Loads != 1 {
		t.Fatalf("L1 %d/%d, L2 %d/%d, loads %d; want L1 1/2, L2 0/2, loads 1", s.L1Hits, s.L1Misses, s.L2Hits, s.L2Misses, s.Loads)
	}
	if got := s.HitRatio(); got < 0.33 || got > 0.34 {
		t.Fatalf("HitRatio = %v, want 1/3", got)
	}
}

// EventNotCached (stats.go): a loaded value that cannot be cached (too
// large, or tagged with an invalid tag) is returned, counted, and loaded
// again by the next read, alone or in a batch; a value that can be cached
// is not counted.
func TestEventNotCached(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg, WithL1(100), WithMaxValueSize(1024))
		bad := map[string]LoadFunc[string]{
			"too-large": constLoad(strings.Repeat("x", 4096), 0),
			"brace-tag": func(ctx context.Context) (string, error) { LoadOptions(ctx, WithTags("}t")); return "v", nil },
			"empty-tag": func(ctx context.Context) (string, error) { LoadOptions(ctx, WithTags("")); return "v", nil },
		}
		for name, load := range bad {
			before, loads := c.Stats().Count(EventNotCached), c.Stats().Loads
			for range 2 {
				if _, err := c.GetOrLoad(ctx, name, load); err != nil {
					t.Fatalf("%s: %v", name, err)
				}
			}
			if got := c.Stats().Count(EventNotCached) - before; got != 2 {
				t.Errorf("%s: %d not_cached events, want 2", name, got)
			}
			if got := c.Stats().Loads - loads; got != 2 {
				t.Errorf("%s: %d loads, want 2 (nothing cached)", name, got)
			}
		}
		before := c.Stats().Count(EventNotCached)
		m, err := c.GetOrLoadMany(ctx, []string{"b-big", "b-ok"}, func(ctx context.Context, ks []string) (map[string]string, error) {
			return map[string]string{"b-big": strings.Repeat("x", 4096), "b-ok": "v"}, nil
		})
		if err != nil || len(m) != 2 {
			t.Fatalf("batch: %d values, %v", len(m), err)
		}
		if got := c.Stats().Count(EventNotCached) - before; got != 1 {
			t.Errorf("batch: %d not_cached events, want 1 (the big value only)", got)
		}
		if v, err := c.Get(ctx, "b-ok"); err != nil || v != "v" {
			t.Errorf("the batch's good value: %q, %v", v, err)
		}
	})
}

func TestRedisOpIndex(t *testing.T) {
	for i := range NumRedisOps {
		if got := RedisOpIndex(RedisOpName(i)); got != i {
			t.Errorf("RedisOpIndex(%q) = %d, want %d", RedisOpName(i), got, i)
		}
	}
	if RedisOpIndex("load") != -1 {
		t.Error("load is not a Redis operation")
	}
}

// Stats.Subscribed is the invalidation subscription's health, which an
// instance without L1 keeps too (for its lease flights); with invalidation
// off there is none, even while the fill channel's subscription is up.
func TestStatsSubscribed(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		testStatsSubscribed(t, tg)
	})
}

func testStatsSubscribed(t *testing.T, tg redistest.Target) {
	noL1 := newCache[string](t, tg)
	waitFor(t, time.Minute, "the subscription of an instance without L1", func() bool { return noL1.Stats().Subscribed })
	off := newCache[string](t, tg, WithL1(10), WithoutInvalidation())
	waitFor(t, time.Minute, "the fill channel's subscription", off.inv.healthy)
	if off.Stats().Subscribed {
		t.Fatal("Subscribed with invalidation off")
	}
}

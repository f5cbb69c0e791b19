package tiercache

import (
	"encoding/json"
	"runtime"
	"strings"
	"sync"
	"testing"
)

func TestStatsJSON(t *testing.T) {
	s := Stats{L1Hits: 3, L2Hits: 1, L2Misses: 1, BreakerState: BreakerOpen}
	s.Events[EventCoalesced] = 7
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"coalesced":7`, `"breaker_state":"open"`, `"hit_ratio":0.8`, `"l1_hits":3`} {
		if !strings.Contains(string(b), want) {
			t.Fatalf("%s lacks %s", b, want)
		}
	}
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

// The striped counter loses no add, whichever stripes the goroutines land
// on and however often they collide and remap (run under -race).
func TestStripedCounterCountsEveryAdd(t *testing.T) {
	var c stripedCounter
	const goroutines, adds = 16, 20_000
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range adds {
				if i%1000 == g {
					runtime.Gosched() // move goroutines between threads
				}
				c.add()
			}
		}()
	}
	wg.Wait()
	if got := c.load(); got != goroutines*adds {
		t.Fatalf("counted %d adds, want %d", got, goroutines*adds)
	}
}

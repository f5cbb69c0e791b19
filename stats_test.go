package tiercache

import (
	"encoding/json"
	"strings"
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

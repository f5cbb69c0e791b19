package store

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/redistest"
)

// keySlot agrees with the cluster's own CLUSTER KEYSLOT, hash tags and
// hostile bytes included: the store files each key under the breaker of
// the node go-redis sends it to.
func TestKeySlotMatchesRedis(t *testing.T) {
	rdb := redistest.SharedCluster(t).Client(t)
	ctx := context.Background()
	ks := []string{
		"", "a", "{", "}", "{}", "{}a", "a{}", "{a}", "x{a}y", "{a}{b}", "{{a}}", "}{a}", "a{b", "a}b{c}",
		"{user:1}:v", "tc:v1:{k}:lease", "\x00", "\xff\xfe{\x00}", "é{ü}", strings.Repeat("k", 10_000),
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 300 {
		b := make([]byte, r.IntN(40))
		for i := range b {
			b[i] = "{}ab\x00\xff"[r.IntN(6)]
		}
		ks = append(ks, string(b))
	}
	for _, k := range ks {
		want, err := rdb.ClusterKeySlot(ctx, k).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := keySlot(k); int64(got) != want {
			t.Fatalf("keySlot(%q) = %d, Redis says %d", k, got, want)
		}
	}
}

// The slot memo answers as go-redis does; after a fault or a breaker's
// change (forgetSlots) it forgets what it holds and, for slotSettle,
// neither stores nor serves anything; an entry expires after slotMemoTTL.
func TestSlotMemo(t *testing.T) {
	rdb := redistest.SharedCluster(t).Client(t)
	ctx := context.Background()
	s := New(rdb, Config{})
	now := memoNow()
	for i := range 200 {
		k := "memo:" + string(rune('a'+i%26)) + strings.Repeat("x", i)
		if got, want := s.nodeOfSlotted(ctx, now, k), s.masterOf(ctx, k); got != want || want == "" {
			t.Fatalf("node of %q: memo %q, go-redis %q", k, got, want)
		}
	}
	const k = "memo:planted"
	want := s.masterOf(ctx, k)
	m := s.slots
	// plant stores "planted" for k as if stored at the memo time at.
	plant := func(at int64) {
		m.slot[keySlot(k)].Store(stamp(at/int64(slotMemoTTL), m.epoch.Load())<<8 | uint64(m.index("planted")+1))
	}
	plant(now)
	if got := s.nodeOfSlotted(ctx, now, k); got != "planted" {
		t.Fatalf("the memo was not read: %q", got)
	}
	s.forgetSlots()
	settled := memoNow() + int64(slotSettle)
	if got := s.nodeOfSlotted(ctx, memoNow(), k); got != want {
		t.Fatalf("after forgetSlots: %q, want %q", got, want)
	}
	plant(memoNow()) // as if stored in the settling window: not served in it
	if got := s.nodeOfSlotted(ctx, memoNow(), k); got != want {
		t.Fatalf("while settling: %q, want %q", got, want)
	}
	after := settled + int64(time.Millisecond)
	if got := s.nodeOfSlotted(ctx, after, k); got != want {
		t.Fatalf("settled: an entry from an earlier tick was served: %q, want %q", got, want)
	}
	plant(after)
	if got := s.nodeOfSlotted(ctx, after, k); got != "planted" {
		t.Fatalf("settled: the memo was not read: %q", got)
	}
	if got := s.nodeOfSlotted(ctx, after+int64(slotMemoTTL), k); got != want {
		t.Fatalf("past its TTL: %q, want %q", got, want)
	}
	if got := s.nodeOfSlotted(ctx, after+int64(slotMemoTTL), k); got != want {
		t.Fatalf("the answer stored past the TTL: %q, want %q", got, want)
	}
	e := m.slot[keySlot(k)].Load()
	if ns := *m.nodes.Load(); e&0xff == 0 || ns[e&0xff-1] != want {
		t.Fatalf("the answer was not stored: entry %#x, nodes %q", e, ns)
	}
	// An entry of an earlier epoch is not served, even in its tick (the
	// settling window aside: it is what keeps such entries out as well).
	at := memoNow()
	plant(at)
	m.epoch.Add(1)
	m.voidUntil.Store(0)
	if got := s.nodeOfSlotted(ctx, at, k); got != want {
		t.Fatalf("an entry of an earlier epoch was served: %q, want %q", got, want)
	}
}

// A breaker's change of state voids the memo (a failover, most likely).
func TestSlotMemoForgetsOnBreakerChange(t *testing.T) {
	rdb := redistest.SharedCluster(t).Client(t)
	s := New(rdb, Config{Breaker: &BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Hour, Probes: 1}})
	before := s.slots.epoch.Load()
	b := s.nodes.get("some:1")
	done, ok := b.begin()
	if !ok {
		t.Fatal("a new breaker refused a call")
	}
	b.end(done, context.DeadlineExceeded)
	if s.slots.epoch.Load() == before || memoNow() >= s.slots.voidUntil.Load() {
		t.Fatal("the breaker opened and the slot memo was kept")
	}
}

// A breaker's change is told outside gobreaker's lock: the callback (the
// cache's Observer) may read every breaker's state, as Cache.Stats does,
// without waiting for the lock of the breaker that is changing. Changes
// arrive in order: closed to open, then open to half-open.
func TestBreakerChangeToldOutsideItsLock(t *testing.T) {
	rdb := redistest.SharedCluster(t).Client(t)
	var s *Store
	var changes []State
	s = New(rdb, Config{
		Breaker: &BreakerSettings{ConsecutiveFailures: 1, OpenFor: 50 * time.Millisecond, Probes: 1},
		OnBreaker: func(_ string, _, to State) {
			if _, worst := s.Breakers(); worst != to && to != Closed {
				t.Errorf("told of %v while the states say %v", to, worst)
			}
			changes = append(changes, to)
		},
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		b := s.nodes.get("some:1")
		d, ok := b.begin()
		if !ok {
			t.Error("a new breaker refused a call")
			return
		}
		b.end(d, context.DeadlineExceeded) // opens it
		time.Sleep(60 * time.Millisecond)
		s.Breakers() // reading the state moves it to half-open
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("the callback waited for the changing breaker's lock: deadlock")
	}
	if len(changes) != 2 || changes[0] != Open || changes[1] != HalfOpen {
		t.Fatalf("changes told: %v, want [open half-open]", changes)
	}
}

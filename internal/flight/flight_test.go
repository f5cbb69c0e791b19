package flight

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
)

func TestOneLeaderManyWaiters(t *testing.T) {
	var g Group[string, int]
	var leaders atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	results := make(chan int, 100)
	// The leader ends the load only once every caller has begun, so that
	// no caller can come late and lead a second load, however slow the
	// machine.
	var begun sync.WaitGroup
	begun.Add(100)
	for range 100 {
		wg.Go(func() {
			<-start
			c, lead := g.Begin("k")
			begun.Done()
			if lead {
				leaders.Add(1)
				begun.Wait()
				g.End("k", c, 7, nil)
			}
			v, err := c.Wait(context.Background())
			if err != nil {
				t.Error(err)
			}
			results <- v
		})
	}
	close(start)
	wg.Wait()
	close(results)
	if leaders.Load() != 1 {
		t.Fatalf("%d leaders, want 1", leaders.Load())
	}
	for v := range results {
		if v != 7 {
			t.Fatalf("waiter got %d", v)
		}
	}
}

func TestWaiterLeavesLoadGoesOn(t *testing.T) {
	var g Group[string, string]
	c, lead := g.Begin("k")
	if !lead {
		t.Fatal("first Begin did not lead")
	}
	w, lead := g.Begin("k")
	if lead || w != c {
		t.Fatal("second Begin did not join")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := w.Wait(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled waiter got %v", err)
	}
	boom := errors.New("boom")
	g.End("k", c, "", boom)
	if _, err := c.Wait(context.Background()); !errors.Is(err, boom) {
		t.Fatalf("Wait = %v", err)
	}
	// The key is free again.
	if _, lead := g.Begin("k"); !lead {
		t.Fatal("key still in flight after End")
	}
}

// A batch claims keys some of which are already in flight: it learns at
// once which it leads.
func TestBatchClaim(t *testing.T) {
	var g Group[string, int]
	single, _ := g.Begin("b")
	lead := map[string]bool{}
	calls := map[string]*Call[int]{}
	for _, k := range []string{"a", "b", "c"} {
		calls[k], lead[k] = g.Begin(k)
	}
	if !lead["a"] || lead["b"] || !lead["c"] || calls["b"] != single {
		t.Fatalf("claims %v", lead)
	}
	g.End("a", calls["a"], 1, nil)
	g.End("c", calls["c"], 3, nil)
	g.End("b", single, 2, nil)
	for k, want := range map[string]int{"a": 1, "b": 2, "c": 3} {
		if v, _ := calls[k].Wait(context.Background()); v != want {
			t.Fatalf("%s = %d", k, v)
		}
	}
}

// After Forget, a new caller starts a new load; the old one still ends for
// its own waiters.
func TestForget(t *testing.T) {
	var g Group[string, int]
	old, _ := g.Begin("k")
	g.Forget("k")
	fresh, lead := g.Begin("k")
	if !lead || fresh == old {
		t.Fatal("Begin after Forget joined the old load")
	}
	g.End("k", old, 1, nil) // must not remove the new load
	if c, lead := g.Begin("k"); lead || c != fresh {
		t.Fatal("ending the forgotten load removed the new one")
	}
	g.End("k", fresh, 2, nil)
	if v, _ := old.Wait(context.Background()); v != 1 {
		t.Fatalf("old load's waiters got %d", v)
	}
	g.ForgetAll()
}

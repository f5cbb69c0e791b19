package faults_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/faults/internal/proxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

// coalesceSlots is how many round trips tiercache's read coalescer lets run
// at once (the unexported constant of the same name in coalesce.go). A test
// that fills every slot must follow it if it changes.
const coalesceSlots = 4

// With every Redis reply a second late and a 150ms read timeout, no read
// waits much past its timeout, counted from when it asked, even when it
// queued behind round trips that were already timing out: a read never pays
// two timeouts for sharing a round trip.
func TestFaultCoalescedReadsKeepTheirTimeout(t *testing.T) {
	const readTimeout = 150 * time.Millisecond
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	c := newCacheOn[string](t, px.Client(t), faultPrefix(t), tiercache.WithReadTimeout(readTimeout), tiercache.WithoutBreaker())
	if _, err := c.Get(t.Context(), "warm"); !errors.Is(err, tiercache.ErrMiss) {
		t.Fatalf("healthy read: %v", err)
	}
	px.Latency(t, time.Second, 0)
	var lat latencies
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 3 {
				start := time.Now()
				_, err := c.Get(t.Context(), fmt.Sprint("k", g, i))
				lat.add(time.Since(start))
				if !errors.Is(err, tiercache.ErrRedis) {
					t.Errorf("Get with Redis a second late: %v, want ErrRedis", err)
				}
			}
		})
	}
	wg.Wait()
	t.Logf("reads with a %v timeout against a Redis a second late: %v", readTimeout, &lat)
	if m := lat.max(); m > readTimeout+100*time.Millisecond {
		t.Errorf("a read took %v with a %v read timeout", m, readTimeout)
	}
	// GetOrLoad still answers from the loader.
	if v, err := c.GetOrLoad(t.Context(), "load", constLoad("db", 0)); err != nil || v != "db" {
		t.Errorf("GetOrLoad with Redis slow = %q, %v", v, err)
	}
}

// A read queued behind slow round trips returns as soon as its caller's
// context ends, with that context's error; the reads that shared its round
// trip are unaffected, and the coalescer serves reads after it.
func TestFaultCoalescedReadCanceled(t *testing.T) {
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	rdb := px.Client(t)
	c := newCacheOn[string](t, rdb, faultPrefix(t), tiercache.WithReadTimeout(5*time.Second), tiercache.WithoutBreaker())
	if err := c.Set(t.Context(), "k", "v"); err != nil {
		t.Fatal(err)
	}
	toxic := px.Latency(t, 300*time.Millisecond, 0)
	var wg sync.WaitGroup
	// Fill every round trip slot with a slow read.
	for range coalesceSlots {
		wg.Go(func() {
			if v, err := c.Get(t.Context(), "k"); err != nil || v != "v" {
				t.Errorf("slow Get = %q, %v", v, err)
			}
		})
	}
	time.Sleep(50 * time.Millisecond)
	// These queue; half give up after 30ms.
	for i := range 8 {
		wg.Go(func() {
			ctx := t.Context()
			if i%2 == 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, 30*time.Millisecond)
				defer cancel()
			}
			start := time.Now()
			v, err := c.Get(ctx, "k")
			d := time.Since(start)
			if i%2 == 0 {
				if !errors.Is(err, context.DeadlineExceeded) || d > 200*time.Millisecond {
					t.Errorf("a queued read whose context ended after 30ms returned after %v with %q, %v", d, v, err)
				}
			} else if err != nil || v != "v" {
				t.Errorf("a queued read = %q, %v", v, err)
			}
		})
	}
	if !waitDone(t, &wg, 10*time.Second) {
		t.Fatal("reads stuck")
	}
	toxic.Remove()
	start := time.Now()
	if v, err := c.Get(t.Context(), "k"); err != nil || v != "v" {
		t.Fatalf("a read after the canceled ones = %q, %v", v, err)
	}
	if d := time.Since(start); d > 100*time.Millisecond {
		t.Errorf("a read after the canceled ones took %v", d)
	}
}

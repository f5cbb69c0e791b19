package faults_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/faults/internal/proxy"
	"github.com/tiercache/tiercache/internal/redistest"
)

// A tagged value loaded while Redis is too slow to take it is not kept in
// L1: no tag version could be read for it, so InvalidateTags could not
// reach it. After the invalidation the next read loads anew.
func TestOutageTaggedValueNotKeptInL1(t *testing.T) {
	ctx := t.Context()
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	c := newCacheOn[string](t, px.Client(t), faultPrefix(t), tiercache.WithL1(100), tiercache.WithL1OutageTTL(time.Minute),
		tiercache.WithReadTimeout(50*time.Millisecond), tiercache.WithWriteTimeout(10*time.Second), tiercache.WithoutBreaker())
	waitSubscribed(t, c)

	lat := px.Latency(t, 300*time.Millisecond, 0) // reads time out; the subscription stays up
	v, err := c.GetOrLoad(ctx, "k", func(ctx context.Context) (string, error) {
		tiercache.LoadOptions(ctx, tiercache.WithTags("t"))
		return "old", nil
	})
	if err != nil || v != "old" {
		t.Fatalf("GetOrLoad during the outage = %q, %v", v, err)
	}
	lat.Remove()
	if err := c.InvalidateTags(ctx, "t"); err != nil {
		t.Fatalf("InvalidateTags once Redis answers: %v", err)
	}
	v, err = c.GetOrLoad(ctx, "k", func(ctx context.Context) (string, error) {
		tiercache.LoadOptions(ctx, tiercache.WithTags("t"))
		return "new", nil
	})
	if err != nil || v != "new" {
		t.Fatalf("GetOrLoad after InvalidateTags(t) = %q, %v; the L1 copy loaded during the outage survived the invalidation", v, err)
	}
}

// A Set whose first Redis call (the read of its tags' versions) fails
// returns ErrRedis and drops the local L1 copy, as Set documents.
func TestFailedTaggedSetDropsL1(t *testing.T) {
	ctx := t.Context()
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	c := newCacheOn[string](t, px.Client(t), faultPrefix(t), tiercache.WithL1(100), tiercache.WithWriteTimeout(50*time.Millisecond), tiercache.WithoutBreaker())
	waitSubscribed(t, c)
	if err := c.Set(ctx, "k", "old"); err != nil {
		t.Fatal(err)
	}
	if _, hit, _ := getL1(ctx, c, "k"); !hit {
		t.Fatal("a Set did not keep its value in L1")
	}
	lat := px.Latency(t, 300*time.Millisecond, 0)
	err := c.Set(ctx, "k", "new", tiercache.WithTags("t"))
	lat.Remove()
	if !errors.Is(err, tiercache.ErrRedis) {
		t.Fatalf("Set with Redis slower than the write timeout = %v, want ErrRedis", err)
	}
	if v, hit, _ := getL1(ctx, c, "k"); hit {
		t.Fatalf("after a failed Set, L1 still holds %q; Set promises to drop the local L1 copy", v)
	}
}

// The outage of the issue: Redis blackholed for 10s under 8 readers of
// 1,000 keys (Zipf), L1 on, a 1ms loader. L1 absorbs it: the loader sees at
// most about one call per distinct key read per outage TTL elapsed, not
// one per read; no read fails; and a write during the outage (which fails)
// is never followed on this instance by a read of a value older than it.
func TestOutageLoadsBoundedByL1(t *testing.T) {
	const (
		readers   = 8
		keys      = 1000
		outage    = 10 * time.Second
		outageTTL = time.Second
	)
	if testing.Short() {
		t.Skip("a 10s outage")
	}
	ctx := t.Context()
	px := proxy.Start(t, redistest.SharedServer(t).Addr)
	c := newCacheOn[string](t, px.Client(t), faultPrefix(t), tiercache.WithL1(10_000), tiercache.WithL1OutageTTL(outageTTL))
	var version atomic.Int64 // the "row" of key w0, bumped by the writes
	var loads atomic.Int64
	load := func(k string) tiercache.LoadFunc[string] {
		return func(ctx context.Context) (string, error) {
			loads.Add(1)
			time.Sleep(time.Millisecond)
			if k == "w0" {
				return strconv.FormatInt(version.Load(), 10), nil
			}
			return "db", nil
		}
	}
	zipf := rand.NewZipf(rand.New(rand.NewPCG(1, 2)), 1.1, 1, keys-1)
	var zmu sync.Mutex
	next := func() string {
		zmu.Lock()
		defer zmu.Unlock()
		return "z" + strconv.FormatUint(zipf.Uint64(), 10)
	}
	hole := px.Blackhole(t)
	start := time.Now()
	distinct := sync.Map{}
	var reads, failed, stale atomic.Int64
	var wg sync.WaitGroup
	for range readers {
		wg.Go(func() {
			for time.Since(start) < outage {
				k := next()
				distinct.Store(k, true)
				if _, err := c.GetOrLoad(ctx, k, load(k)); err != nil {
					failed.Add(1)
				}
				reads.Add(1)
			}
		})
	}
	// A writer on the same instance: each write fails (Redis is gone) and
	// must drop w0 here, so that the next read loads the new row.
	wg.Go(func() {
		for time.Since(start) < outage {
			v := version.Add(1)
			if err := c.Set(ctx, "w0", strconv.FormatInt(v, 10)); !errors.Is(err, tiercache.ErrRedis) {
				t.Errorf("Set during the outage = %v, want ErrRedis", err)
			}
			got, err := c.GetOrLoad(ctx, "w0", load("w0"))
			if err != nil {
				failed.Add(1)
			} else if n, _ := strconv.ParseInt(got, 10, 64); n < v {
				stale.Add(1)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	wg.Wait()
	elapsed := time.Since(start)
	hole.Remove()
	n := 0
	distinct.Range(func(any, any) bool { n++; return true })
	// One load per distinct key per outage TTL elapsed (plus the first),
	// the writer's loads, and an allowance of 10% for loads that straddle
	// an expiry while others wait.
	ttls := int64(elapsed/outageTTL) + 1
	bound := int64(n)*ttls + int64(elapsed/(50*time.Millisecond)) + int64(n)*ttls/10
	t.Logf("outage of %v: %d reads, %d distinct keys, %d loader calls (bound %d), %d failed, %d stale", elapsed.Round(time.Millisecond), reads.Load(), n, loads.Load(), bound, failed.Load(), stale.Load())
	if failed.Load() != 0 {
		t.Errorf("%d reads failed during the outage", failed.Load())
	}
	if stale.Load() != 0 {
		t.Errorf("%d reads after a failed write returned a value older than it", stale.Load())
	}
	if loads.Load() > bound {
		t.Errorf("%d loader calls during the outage, bound %d: the outage reached the database", loads.Load(), bound)
	}
}

package faults_test

import (
	"context"
	"errors"
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

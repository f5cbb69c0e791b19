package tiercache

import (
	"strconv"
	"testing"
	"time"

	"github.com/tiercache/tiercache/internal/msg"
	"github.com/tiercache/tiercache/internal/redistest"
)

// Each applied invalidation message records its delay, from the sender's
// acknowledged write to this instance's L1 drop: a message sent 700ms ago
// lands in the histogram's 700ms bucket, and a real write from another
// instance is counted too.
func TestInvalidationDelayHistogram(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := "dl" + strconv.FormatInt(time.Now().UnixNano(), 36)
		a := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
		b := newCacheOn[string](t, tg.NewClient(t), prefix, WithL1(100))
		waitSubscribed(t, a, b)
		if err := a.Set(ctx, "k", "v"); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "a's message at b", func() bool { return b.Stats().InvalidationDelay.Count == 1 })
		// A message that took 700ms (its send time is 700ms old).
		late := msg.EncodeAt([8]byte{9, 9, 9}, nowMicro()-700_000, []string{"k"}, nil, false)[0]
		if err := publishRaw(ctx, b, tg.NewClient(t), late); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "the late message at b", func() bool { return b.Stats().InvalidationDelay.Count == 2 })
		h := b.Stats().InvalidationDelay
		if h.Max < 700*time.Millisecond || h.Quantile(1) < 700*time.Millisecond || h.Quantile(0.5) > h.Quantile(1) {
			t.Fatalf("histogram after a 700ms message: max %v, p100 %v, p50 %v", h.Max, h.Quantile(1), h.Quantile(0.5))
		}
		var n uint64
		for i, c := range h.Buckets {
			n += c
			if c > 0 && i > 0 && DelayBucketBound(i) <= 700*time.Millisecond && DelayBucketBound(i-1) >= 700*time.Millisecond {
				t.Fatalf("bucket %d holds a delay it cannot", i)
			}
		}
		if n != 2 || h.Sum < 700*time.Millisecond {
			t.Fatalf("buckets add up to %d, sum %v", n, h.Sum)
		}
	})
}

package tiercache

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// BenchmarkTagDesigns measures the two known designs for tag invalidation
// on the same workload (n values carrying one tag, then the tag
// invalidated), for the choice written down in docs/DESIGN.md:
//
//   - version: what tiercache does; a version key per tag, checked on read.
//   - members: a set of member keys per tag (SADD on write), invalidated by
//     SSCAN in batches of 1,000 and pipelined DELs, then DEL of the set.
//
// It reports the time of the invalidation, the Redis memory the tag's
// bookkeeping takes (used_memory with the tagged values, minus the same
// values written without a tag), and the worst latency a second client saw
// during the invalidation. Run with -benchtime 1x.
func BenchmarkTagDesigns(b *testing.B) {
	for _, n := range []int{1_000, 10_000, 100_000} {
		for _, design := range []string{"version", "members"} {
			b.Run(fmt.Sprintf("%s/%d", design, n), func(b *testing.B) {
				for range b.N {
					benchTagDesign(b, design, n)
				}
			})
		}
	}
}

func usedMemory(ctx context.Context, rdb *redis.Client) int64 {
	info := rdb.Info(ctx, "memory").Val()
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return 0
}

func benchTagDesign(b *testing.B, design string, n int) {
	b.StopTimer()
	ctx := context.Background()
	rdb := benchClient(b)
	rdb.FlushAll(ctx)
	c := newCacheOn[int](b, rdb, "tagbench", WithWriteTimeout(10*time.Second))
	write := func(tagged bool) {
		batch := map[string]int{}
		for i := range n {
			batch[strconv.Itoa(i)] = i
			if len(batch) == 2000 || i == n-1 {
				var opts []SetOption
				if tagged && design == "version" {
					opts = append(opts, WithTags("t"))
				}
				if err := c.SetMany(ctx, batch, opts...); err != nil {
					b.Fatal(err)
				}
				if tagged && design == "members" {
					members := make([]any, 0, len(batch))
					for k := range batch {
						members = append(members, c.st.Layout.Value(k))
					}
					rdb.SAdd(ctx, "tagbench:members:{t}", members...)
				}
				clear(batch)
			}
		}
	}
	// The same values without a tag, for the baseline memory.
	write(false)
	base := usedMemory(ctx, rdb)
	rdb.FlushAll(ctx)
	write(true)
	bookkeeping := usedMemory(ctx, rdb) - base

	probe := benchClient(b)
	stop := make(chan struct{})
	worst := make(chan time.Duration, 1)
	go func() {
		var w time.Duration
		for {
			select {
			case <-stop:
				worst <- w
				return
			default:
			}
			t0 := time.Now()
			probe.Ping(ctx)
			w = max(w, time.Since(t0))
		}
	}()
	b.StartTimer()
	start := time.Now()
	switch design {
	case "version":
		if err := c.InvalidateTags(ctx, "t"); err != nil {
			b.Fatal(err)
		}
	case "members":
		var cursor uint64
		for {
			ks, next, err := rdb.SScan(ctx, "tagbench:members:{t}", cursor, "", 1000).Result()
			if err != nil {
				b.Fatal(err)
			}
			if len(ks) > 0 {
				if _, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
					for _, k := range ks {
						p.Del(ctx, k, k+":lease")
					}
					return nil
				}); err != nil {
					b.Fatal(err)
				}
			}
			if cursor = next; cursor == 0 {
				break
			}
		}
		rdb.Del(ctx, "tagbench:members:{t}")
	}
	took := time.Since(start)
	b.StopTimer()
	close(stop)
	b.ReportMetric(float64(took.Microseconds())/1000, "invalidate-ms")
	b.ReportMetric(float64(bookkeeping), "bookkeeping-B")
	b.ReportMetric(float64((<-worst).Microseconds())/1000, "other-client-worst-ms")
	rdb.FlushAll(ctx)
}

package tiercachepg_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg"
)

// The benchmarks of docs/COMMITLOG.md:
//
//	go test -run '^$' -bench . -benchtime 20000x ./tiercachepg/
//
// BenchmarkCatchUp measures the changes per second the follower sustains:
// b.N row changes are committed while no follower runs (the slot keeps
// them), then the timer runs from the follower's start until it has
// confirmed the last commit. Transactions that queue up meanwhile are
// merged into Invalidate calls of up to MaxBatchKeys keys (one round trip
// per step of Cache.Invalidate); the baseline is the same follower with
// MaxBatchKeys 1, one call per change, as a consumer without batching
// would do.
func BenchmarkCatchUp(b *testing.B) {
	for _, bc := range []struct {
		name      string
		perTxn    int
		batchKeys int
	}{
		{"txn=1row/batched", 1, 0},
		{"txn=10rows/batched", 10, 0},
		{"txn=1row/unbatched(baseline)", 1, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			pg := newPG(b)
			const rows = 10_000
			m := productsTable(b, pg, "items", rows)
			c := newCache(b, redistest.SharedServer(b).Client(b, ctxTimeout), prefix(b))
			opts := tiercachepg.Options{
				Slot: "bench", Publication: "bench", Tables: []string{"items"}, Create: true,
				Map: m, Invalidate: c.Invalidate, MaxBatchKeys: bc.batchKeys,
			}
			// Create the slot, then stop: the changes below wait in it.
			r := startFollower(b, pg.dsn, opts)
			waitUntil(b, "streaming", func() bool { return r.f.Stats().Streaming })
			r.stop(b)

			txns := max(b.N/bc.perTxn, 1)
			// One server-side loop of committed transactions.
			pg.exec(b, fmt.Sprintf(`DO $$ BEGIN
				FOR i IN 0..%d LOOP
					UPDATE items SET version = version + 1 WHERE id BETWEEN (i*%d) %% %d + 1 AND (i*%d) %% %d + %d;
					COMMIT;
				END LOOP; END $$`, txns-1, bc.perTxn, rows, bc.perTxn, rows, bc.perTxn))
			lsn := pg.lsn(b)

			b.ResetTimer()
			start := time.Now()
			r = startFollower(b, pg.dsn, opts)
			waitConfirmed(b, r.f, lsn)
			elapsed := time.Since(start)
			b.StopTimer()
			s := r.f.Stats()
			b.ReportMetric(float64(s.Changes)/elapsed.Seconds(), "changes/s")
			b.ReportMetric(float64(s.Changes)/float64(max(s.Calls, 1)), "changes/call")
			b.ReportMetric(0, "ns/op")
			r.stop(b)
		})
	}
}

// BenchmarkCommitToL1 measures the delay from a commit's return to the
// moment another instance's L1 no longer serves the old value: the
// follower reads the commit, invalidates it through the follower's cache
// (Redis DEL, then the pub/sub message), and the other instance drops its
// L1 copy. One commit at a time; p50 and p99 over b.N commits. The
// baseline is the writer's own Delete right after its commit, which is
// what the follower replaces when the writer survives.
func BenchmarkCommitToL1(b *testing.B) {
	for _, viaFollower := range []bool{true, false} {
		name := "follower"
		if !viaFollower {
			name = "writer-delete(baseline)"
		}
		b.Run(name, func(b *testing.B) {
			pg := newPG(b)
			m := productsTable(b, pg, "items", 1)
			srv := redistest.SharedServer(b)
			p := prefix(b)
			fc := newCache(b, srv.Client(b, ctxTimeout), p)
			reader := newCache(b, srv.Client(b, ctxTimeout), p, tiercache.WithL1(100))
			r := startFollower(b, pg.dsn, tiercachepg.Options{
				Slot: "l1", Publication: "l1", Tables: []string{"items"}, Create: true,
				Map: m, Invalidate: fc.Invalidate,
			})
			waitUntil(b, "streaming", func() bool { return r.f.Stats().Streaming })
			ctx := context.Background()
			load := func(ctx context.Context) (int, error) { return pg.version(ctx, "items", 1) }
			delays := make([]time.Duration, 0, b.N)
			b.ResetTimer()
			for range b.N {
				b.StopTimer()
				if _, err := reader.GetOrLoad(ctx, "items:1", load); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				if _, err := pg.pool.Exec(ctx, "UPDATE items SET version = version + 1 WHERE id = 1"); err != nil {
					b.Fatal(err)
				}
				t0 := time.Now()
				if !viaFollower {
					if err := fc.Delete(ctx, "items:1"); err != nil {
						b.Fatal(err)
					}
				}
				for {
					if _, err := reader.Get(ctx, "items:1"); errors.Is(err, tiercache.ErrMiss) {
						break
					}
					time.Sleep(20 * time.Microsecond) // leave the CPU to the follower and the servers
				}
				delays = append(delays, time.Since(t0))
			}
			b.StopTimer()
			slices.Sort(delays)
			q := func(p float64) float64 {
				return float64(delays[int(p*float64(len(delays)-1))].Microseconds()) / 1000
			}
			b.ReportMetric(q(0.50), "p50-ms")
			b.ReportMetric(q(0.99), "p99-ms")
			if viaFollower {
				d := r.f.Stats().Delay
				b.ReportMetric(float64(d.P50.Microseconds())/1000, "commit-to-invalidate-p50-ms")
			}
			b.ReportMetric(0, "ns/op")
		})
	}
}

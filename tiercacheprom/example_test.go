package tiercacheprom_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/prometheus/common/expfmt"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/tiercacheprom"
)

func ExampleCollector() {
	col, err := tiercacheprom.New()
	if err != nil {
		log.Fatal(err)
	}
	// A service would register with prometheus.DefaultRegisterer and serve
	// promhttp.Handler() on /metrics.
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)

	rdb := redis.NewClient(&redis.Options{Addr: redisAddr(), ContextTimeoutEnabled: true})
	defer rdb.Close()
	users, err := tiercache.New[string](rdb, tiercache.WithPrefix("example"),
		tiercache.WithObserver(col.Observer("users")))
	if err != nil {
		log.Fatal(err)
	}
	defer users.Close()
	col.Track("users", users.Stats) // the breaker and L1 gauges, read at each scrape
	defer col.Untrack("users")

	ctx := context.Background()
	load := func(context.Context) (string, error) { return "Ada", nil }
	for range 2 { // a miss that loads, then a hit in Redis
		if _, err := users.GetOrLoad(ctx, "user:42", load); err != nil {
			log.Fatal(err)
		}
	}

	text, err := testutil.GatherAndFormat(reg, expfmt.TypeTextPlain,
		"tiercache_requests_total", "tiercache_loads_total", "tiercache_breaker_state")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(text))
	// Output:
	// # HELP tiercache_breaker_state State of the Redis circuit breaker: 0 closed, 1 half-open, 2 open.
	// # TYPE tiercache_breaker_state gauge
	// tiercache_breaker_state{cache="users"} 0
	// # HELP tiercache_loads_total Loader calls, by result (ok, error); a loader's ErrNotFound is ok.
	// # TYPE tiercache_loads_total counter
	// tiercache_loads_total{cache="users",result="error"} 0
	// tiercache_loads_total{cache="users",result="ok"} 1
	// # HELP tiercache_requests_total Lookups of a cache tier (l1, l2), by result (hit, miss).
	// # TYPE tiercache_requests_total counter
	// tiercache_requests_total{cache="users",result="hit",tier="l1"} 0
	// tiercache_requests_total{cache="users",result="hit",tier="l2"} 1
	// tiercache_requests_total{cache="users",result="miss",tier="l1"} 0
	// tiercache_requests_total{cache="users",result="miss",tier="l2"} 1
}

// A tiercachepg follower reports to the collector through the observer of
// its name. This module does not import tiercachepg (that would pull pgx
// into every service that exports metrics), so the example stands in for
// the follower, which a service sets up like this:
//
//	f, err := tiercachepg.New(os.Getenv("DATABASE_URL"), tiercachepg.Options{
//		Slot: "orders", Publication: "orders", Tables: []string{"orders"},
//		Map: m, Invalidate: orders.Invalidate,
//		MaxLag:   1 << 30,
//		Observer: col.Follower("orders"),
//	})
func ExampleCollector_Follower() {
	col, err := tiercacheprom.New()
	if err != nil {
		log.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(col)

	obs := col.Follower("orders")
	// What the follower calls: a transaction of 3 row changes invalidated
	// 2ms after its commit, and a read of the slot's lag.
	obs.Applied(3, 2*time.Millisecond)
	obs.SlotLag(4096, false)

	text, err := testutil.GatherAndFormat(reg, expfmt.TypeTextPlain,
		"tiercache_follower_transactions_total", "tiercache_follower_changes_total",
		"tiercache_follower_slot_lag_bytes", "tiercache_follower_lag_exceeded")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(string(text))
	// Output:
	// # HELP tiercache_follower_changes_total Row changes of the followed tables in those transactions.
	// # TYPE tiercache_follower_changes_total counter
	// tiercache_follower_changes_total{follower="orders"} 3
	// # HELP tiercache_follower_lag_exceeded Whether the slot's lag is above the follower's MaxLag: 1 above, 0 not (or no MaxLag).
	// # TYPE tiercache_follower_lag_exceeded gauge
	// tiercache_follower_lag_exceeded{follower="orders"} 0
	// # HELP tiercache_follower_slot_lag_bytes How far the replication slot's confirmed position is behind the server's WAL position, as last read.
	// # TYPE tiercache_follower_slot_lag_bytes gauge
	// tiercache_follower_slot_lag_bytes{follower="orders"} 4096
	// # HELP tiercache_follower_transactions_total Committed transactions whose invalidation returned nil (a transaction replayed after a restart counts again).
	// # TYPE tiercache_follower_transactions_total counter
	// tiercache_follower_transactions_total{follower="orders"} 1
}

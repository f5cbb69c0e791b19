package tiercachetest_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/tiercachetest"
)

// Start runs a private redis-server where there is no testing.TB, here in
// an Example; in a test function, tiercachetest.Redis(t) does all of this
// and cleans up by itself.
func Example() {
	addr, stop, err := tiercachetest.Start()
	if err != nil {
		log.Fatal(err)
	}
	defer stop()

	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer rdb.Close()

	users, err := tiercache.New[string](rdb,
		tiercache.WithPrefix("users"),
		// Generous timeouts for a busy test machine: see "Timeouts" in the package doc.
		tiercache.WithReadTimeout(time.Second),
		tiercache.WithWriteTimeout(time.Second),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer users.Close()

	ctx := context.Background()
	loads := 0
	loadUser := func(context.Context) (string, error) {
		loads++ // SELECT name FROM users WHERE id = 1
		return "Ada", nil
	}
	for range 2 {
		name, err := users.GetOrLoad(ctx, "user:1", loadUser)
		fmt.Println(name, err)
	}
	fmt.Println("loads:", loads)
	// Output:
	// Ada <nil>
	// Ada <nil>
	// loads: 1
}

package tiercache_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
)

type Product struct {
	ID    int
	Name  string
	Price int
}

// exampleRedis is the examples' Redis: a real redis-server that the test
// harness starts. In your program it is your own client.
func exampleRedis() *redis.Client {
	addr, err := redistest.SharedServerAddr()
	if err != nil {
		log.Fatal(err)
	}
	return redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
}

// uniquePrefix keeps runs of the examples apart on the shared server.
func uniquePrefix(name string) string {
	return fmt.Sprint("example-", name, "-", time.Now().UnixNano())
}

// The read path: L1, then Redis, then the loader, which runs once however
// many callers ask for the key at once.
func Example() {
	ctx := context.Background()
	rdb := exampleRedis()
	defer rdb.Close()

	products, err := tiercache.New[Product](rdb,
		tiercache.WithPrefix(uniquePrefix("products")),
		tiercache.WithDefaultTTL(10*time.Minute),
		tiercache.WithL1(10_000), // in-process tier, kept coherent across instances
	)
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()

	loadProduct := func(ctx context.Context) (Product, error) {
		// SELECT ... FROM products WHERE id = 42
		return Product{ID: 42, Name: "Lamp", Price: 1999}, nil
	}
	p, err := products.GetOrLoad(ctx, "product:42", loadProduct)
	fmt.Println(p.Name, err)

	// Write-through after an update: Redis, this L1, and the other
	// instances' L1s (through pub/sub).
	p.Price = 1499
	if err := products.Set(ctx, "product:42", p); err != nil {
		log.Fatal(err)
	}
	p, _ = products.Get(ctx, "product:42")
	fmt.Println(p.Price)

	// A record that does not exist is cached as such.
	_, err = products.GetOrLoad(ctx, "product:0", func(context.Context) (Product, error) {
		return Product{}, tiercache.ErrNotFound
	})
	fmt.Println(errors.Is(err, tiercache.ErrNotFound))

	_ = products.Delete(ctx, "product:42")
	_, err = products.Get(ctx, "product:42")
	fmt.Println(errors.Is(err, tiercache.ErrMiss))
	// Output:
	// Lamp <nil>
	// 1499
	// true
	// true
}

// A batch read: one Redis round trip per node for all keys, one loader
// call for the ones still missing.
func ExampleCache_GetOrLoadMany() {
	ctx := context.Background()
	rdb := exampleRedis()
	defer rdb.Close()
	products, err := tiercache.New[Product](rdb, tiercache.WithPrefix(uniquePrefix("many")))
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()
	_ = products.Set(ctx, "1", Product{ID: 1, Name: "cached"})

	got, err := products.GetOrLoadMany(ctx, []string{"1", "2", "3"}, func(ctx context.Context, missing []string) (map[string]Product, error) {
		fmt.Println("loading", missing)
		// SELECT ... WHERE id = ANY($1); id 3 does not exist.
		return map[string]Product{"2": {ID: 2, Name: "loaded"}}, nil
	})
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range got {
			if !yield(k) {
				return
			}
		}
	})
	for _, k := range keys {
		fmt.Println(k, got[k].Name)
	}
	fmt.Println(err)
	// Output:
	// loading [2 3]
	// 1 cached
	// 2 loaded
	// <nil>
}

// Tags group keys for invalidation; a loader attaches them to what it loads.
func ExampleLoadOptions() {
	ctx := context.Background()
	rdb := exampleRedis()
	defer rdb.Close()
	orders, err := tiercache.New[[]string](rdb, tiercache.WithPrefix(uniquePrefix("orders")))
	if err != nil {
		log.Fatal(err)
	}
	defer orders.Close()

	loads := 0
	load := func(ctx context.Context) ([]string, error) {
		loads++
		tiercache.LoadOptions(ctx, tiercache.WithTags("customer:7"), tiercache.WithTTL(time.Hour))
		return []string{"order-1", "order-2"}, nil
	}
	_, _ = orders.GetOrLoad(ctx, "orders-of:7", load)
	_, _ = orders.GetOrLoad(ctx, "orders-of:7", load)
	fmt.Println("loads:", loads)

	_ = orders.InvalidateTags(ctx, "customer:7") // the customer changed
	_, _ = orders.GetOrLoad(ctx, "orders-of:7", load)
	fmt.Println("loads:", loads)
	// Output:
	// loads: 1
	// loads: 2
}

// Drive invalidation from your own change events: call Invalidate from the
// consumer, and acknowledge the event only when it returns nil.
func ExampleCache_Invalidate() {
	ctx := context.Background()
	rdb := exampleRedis()
	defer rdb.Close()
	products, err := tiercache.New[Product](rdb, tiercache.WithPrefix(uniquePrefix("events")), tiercache.WithL1(1000))
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()
	_ = products.Set(ctx, "product:7", Product{ID: 7}, tiercache.WithTags("category:lamps"))

	type changeEvent struct { // what your Kafka or NATS consumer receives
		ProductID int
		Category  string
	}
	onChange := func(ev changeEvent) error {
		return products.Invalidate(ctx, tiercache.Invalidation{
			Keys: []string{fmt.Sprint("product:", ev.ProductID)},
			Tags: []string{"category:" + ev.Category},
		})
	}
	if err := onChange(changeEvent{ProductID: 7, Category: "lamps"}); err != nil {
		log.Fatal(err) // do not acknowledge; the consumer retries
	}
	_, err = products.Get(ctx, "product:7")
	fmt.Println(errors.Is(err, tiercache.ErrMiss))
	// Output:
	// true
}

// An L1-only cache: no Redis, the same API. For a single-instance service,
// or for the tests of code that takes a *tiercache.Cache.
func ExampleNewLocal() {
	ctx := context.Background()
	products, err := tiercache.NewLocal[Product](tiercache.WithL1(10_000), tiercache.WithDefaultTTL(time.Minute))
	if err != nil {
		log.Fatal(err)
	}
	defer products.Close()

	loads := 0
	load := func(ctx context.Context) (Product, error) {
		loads++
		tiercache.LoadOptions(ctx, tiercache.WithTags("category:lamps"))
		return Product{ID: 7, Name: "lamp", Price: 30}, nil
	}
	p, _ := products.GetOrLoad(ctx, "product:7", load)
	p, _ = products.GetOrLoad(ctx, "product:7", load)
	fmt.Println(p.Name, "loads:", loads)

	_ = products.InvalidateTags(ctx, "category:lamps")
	_, _ = products.GetOrLoad(ctx, "product:7", load)
	fmt.Println("after the tag's invalidation, loads:", loads)

	_ = products.Set(ctx, "product:7", Product{ID: 7, Name: "lamp", Price: 25}, tiercache.WithVersion(2))
	_ = products.Set(ctx, "product:7", Product{ID: 7, Name: "lamp", Price: 30}, tiercache.WithVersion(1)) // late, older
	p, _ = products.Get(ctx, "product:7")
	fmt.Println("price:", p.Price)
	// Output:
	// lamp loads: 1
	// after the tag's invalidation, loads: 2
	// price: 25
}

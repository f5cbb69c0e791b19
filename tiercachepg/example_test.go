package tiercachepg_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg"
	"github.com/tiercache/tiercache/tiercachepg/pgtest"
)

// examplePostgres starts a private PostgreSQL server (wal_level=logical)
// with a products table; in your program this is your database.
func examplePostgres() (dsn string, stop func()) {
	bins, err := pgtest.FindBinaries()
	if err != nil {
		log.Fatal(err)
	}
	srv, err := pgtest.Launch(bins)
	if err != nil {
		log.Fatal(err)
	}
	if err := srv.ExecErr(`CREATE TABLE products (id int PRIMARY KEY, name text, price int, category text);
		INSERT INTO products VALUES (42, 'Lamp', 1999, 'lamps')`); err != nil {
		log.Fatal(err)
	}
	return srv.DSN(""), srv.Stop
}

// The follower keeps the cache in step with the database: a writer that
// commits and then crashes before its Delete leaves nothing stale.
func ExampleNew() {
	dsn, stopPostgres := examplePostgres()
	defer stopPostgres()
	addr, err := redistest.SharedServerAddr()
	if err != nil {
		log.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, ContextTimeoutEnabled: true})
	defer rdb.Close()
	prices, err := tiercache.New[int](rdb, tiercache.WithPrefix(fmt.Sprint("example-prices-", time.Now().UnixNano())))
	if err != nil {
		log.Fatal(err)
	}
	defer prices.Close()

	// Rows of products are cached under "product:<id>", and lists of a
	// category carry the tag "category:<category>".
	m, err := tiercachepg.KeyPattern(tiercachepg.Table{
		Name: "products", Key: "product:{id}", Tags: []string{"category:{category}"},
	})
	if err != nil {
		log.Fatal(err)
	}
	f, err := tiercachepg.New(dsn, tiercachepg.Options{
		Slot:        "tiercache_products",
		Publication: "tiercache_products",
		Tables:      []string{"products"},
		Create:      true, // the first time; see docs/COMMITLOG.md
		Map:         m,
		Invalidate:  prices.Invalidate,
	})
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	for !f.Stats().Streaming { // a service just runs it; the example waits for the slot
		time.Sleep(10 * time.Millisecond)
	}

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close(context.Background())
	load := func(ctx context.Context) (int, error) {
		var price int
		err := conn.QueryRow(ctx, "SELECT price FROM products WHERE id = 42").Scan(&price)
		return price, err
	}
	price, err := prices.GetOrLoad(ctx, "product:42", load)
	fmt.Println(price, err)

	// The writer commits, and never gets to prices.Delete.
	if _, err := conn.Exec(ctx, "UPDATE products SET price = 1499 WHERE id = 42"); err != nil {
		log.Fatal(err)
	}
	var lsn tiercachepg.LSN
	if err := conn.QueryRow(ctx, "SELECT pg_current_wal_lsn()").Scan(&lsn); err != nil {
		log.Fatal(err)
	}
	for f.Stats().ConfirmedLSN < lsn { // the follower has invalidated everything up to the commit
		time.Sleep(10 * time.Millisecond)
	}
	_, err = prices.Get(ctx, "product:42")
	fmt.Println(errors.Is(err, tiercache.ErrMiss))
	price, err = prices.GetOrLoad(ctx, "product:42", load)
	fmt.Println(price, err)

	cancel()
	fmt.Println(<-done)
	// Output:
	// 1999 <nil>
	// true
	// 1499 <nil>
	// <nil>
}

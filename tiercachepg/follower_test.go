package tiercachepg_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg"
)

// TestInvalidatesEachKindOfChange commits inserts, updates (of a column, of
// the primary key), deletes and a TRUNCATE, none followed by a Delete of
// the writer, and checks that the follower invalidated exactly what each
// made stale, in both of two instances (one through pub/sub).
func TestInvalidatesEachKindOfChange(t *testing.T) {
	pg := newPG(t)
	pg.exec(t, `CREATE TABLE products (id int PRIMARY KEY, version int NOT NULL, category int NOT NULL)`)
	pg.exec(t, `ALTER TABLE products REPLICA IDENTITY FULL`)
	pg.exec(t, `INSERT INTO products SELECT g, 1, g % 3 FROM generate_series(1, 10) g`)

	srv := redistest.SharedServer(t)
	p := prefix(t)
	writer := newCache(t, srv.Client(t, ctxTimeout), p)
	other := newCache(t, srv.Client(t, ctxTimeout), p, tiercache.WithL1(1000))

	m, err := tiercachepg.KeyPattern(tiercachepg.Table{
		Name: "products", Key: "product:{id}", Tags: []string{"category:{category}"},
		TruncateTags: []string{"products"},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "s1", Publication: "p1", Tables: []string{"products"}, Create: true,
		Map: m, Invalidate: writer.Invalidate, StatusInterval: 50 * time.Millisecond,
	})
	waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })

	ctx := context.Background()
	load := func(id int) func(context.Context) (int, error) {
		return func(ctx context.Context) (int, error) { return pg.version(ctx, "products", id) }
	}
	fill := func(ids ...int) {
		for _, id := range ids {
			if _, err := other.GetOrLoad(ctx, fmt.Sprint("product:", id), load(id)); err != nil && err != tiercache.ErrNotFound {
				t.Fatal(err)
			}
		}
	}
	// A tagged value: a list of category 1.
	setList := func() {
		if err := other.Set(ctx, "list:cat1", 100, tiercache.WithTags("category:1")); err != nil {
			t.Fatal(err)
		}
	}
	check := func(key string, wantCached bool) {
		t.Helper()
		if _, found := cached(t, other, key); found != wantCached {
			t.Errorf("%s cached = %v, want %v", key, found, wantCached)
		}
	}
	commit := func(sql string) {
		t.Helper()
		pg.exec(t, sql)
		waitConfirmed(t, r.f, pg.lsn(t))
		// The other instance drops its L1 copies when the message arrives;
		// Redis is already deleted. Wait for the message with a key of
		// our own, published after the follower's.
		if err := other.Set(ctx, "sentinel", 1); err != nil {
			t.Fatal(err)
		}
		if err := writer.Delete(ctx, "sentinel"); err != nil {
			t.Fatal(err)
		}
		waitUntil(t, "sentinel invalidation", func() bool { _, found := cached(t, other, "sentinel"); return !found })
	}

	fill(1, 2, 3, 11) // 11 does not exist: a cached "not found"
	setList()
	check("product:11", true)

	commit(`INSERT INTO products VALUES (11, 1, 2)`)
	check("product:11", false)
	check("product:1", true)

	fill(11)
	commit(`UPDATE products SET version = 2 WHERE id = 2`)
	check("product:2", false)
	check("product:1", true)
	check("list:cat1", true) // product 2 is in category 2

	commit(`UPDATE products SET category = 1, version = 3 WHERE id = 3`) // 0 → 1
	check("product:3", false)
	check("list:cat1", false)

	fill(1, 2, 3)
	setList()
	commit(`UPDATE products SET id = 12 WHERE id = 1`) // the key changes
	check("product:1", false)
	check("list:cat1", false) // product 1 is in category 1

	fill(2, 3, 12)
	setList()
	commit(`BEGIN; DELETE FROM products WHERE id = 2; UPDATE products SET version = 9 WHERE id = 12; COMMIT`)
	check("product:2", false)
	check("product:12", false)
	check("product:3", true)
	check("list:cat1", false)

	fill(3)
	if err := other.Set(ctx, "all", 1, tiercache.WithTags("products")); err != nil {
		t.Fatal(err)
	}
	commit(`TRUNCATE products`)
	check("all", false)

	st := r.f.Stats()
	if st.Unmapped != 0 || st.Failures != 0 || st.Transactions < 6 {
		t.Errorf("stats %+v: want no unmapped change, no failure, at least 6 transactions", st)
	}
}

// TestCrashBeforeDelete is the failure this package exists for: the writer
// commits and is "killed" before its Delete (it never calls it). A reader
// that was loading the row when the commit happened read the old version.
// Once the follower has confirmed the commit's position, no instance
// serves the old row, and the load in flight is not cached.
func TestCrashBeforeDelete(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		pg := newPG(t)
		pg.exec(t, `CREATE TABLE products (id int PRIMARY KEY, version int NOT NULL)`)
		pg.exec(t, `INSERT INTO products VALUES (1, 1), (2, 1)`)
		p := prefix(t)
		app := newCache(t, tg.NewClient(t), p, tiercache.WithL1(100))   // the writer's instance
		other := newCache(t, tg.NewClient(t), p, tiercache.WithL1(100)) // another instance
		fc := newCache(t, tg.NewClient(t), p)                           // the follower's
		direct := newCache(t, tg.NewClient(t), p)                       // what Redis holds

		m, err := tiercachepg.KeyPattern(tiercachepg.Table{Name: "products", Key: "product:{id}"})
		if err != nil {
			t.Fatal(err)
		}
		r := startFollower(t, pg.dsn, tiercachepg.Options{
			Slot: "crash", Publication: "crash", Tables: []string{"products"}, Create: true,
			Map: m, Invalidate: fc.Invalidate, StatusInterval: 50 * time.Millisecond,
		})
		waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })

		ctx := context.Background()
		load := func(id int) func(context.Context) (int, error) {
			return func(ctx context.Context) (int, error) { return pg.version(ctx, "products", id) }
		}
		for _, c := range []*tiercache.Cache[int]{app, other} {
			if v, err := c.GetOrLoad(ctx, "product:1", load(1)); err != nil || v != 1 {
				t.Fatalf("GetOrLoad = %d, %v", v, err)
			}
		}
		// A load of product 2 on the other instance reads version 1 and is
		// held until after the commit and its invalidation.
		loaded, release := make(chan struct{}), make(chan struct{})
		inflight := make(chan int, 1)
		go func() {
			v, _ := other.GetOrLoad(ctx, "product:2", func(ctx context.Context) (int, error) {
				v, err := pg.version(ctx, "products", 2)
				close(loaded)
				<-release
				return v, err
			})
			inflight <- v
		}()
		<-loaded

		pg.exec(t, `UPDATE products SET version = 2 WHERE id IN (1, 2)`) // and the writer dies here
		waitConfirmed(t, r.f, pg.lsn(t))
		close(release)
		if v := <-inflight; v != 1 {
			t.Fatalf("the load in flight returned %d, want the old version 1", v)
		}
		waitDelivered(t, fc, app, other)

		for i, c := range []*tiercache.Cache[int]{app, other, direct} {
			for _, k := range []string{"product:1", "product:2"} {
				if v, found := cached(t, c, k); found && v != 2 {
					t.Errorf("instance %d serves %s = %d after the follower confirmed the commit", i, k, v)
				}
			}
		}
		if v, err := other.GetOrLoad(ctx, "product:2", load(2)); err != nil || v != 2 {
			t.Errorf("GetOrLoad product:2 = %d, %v; want 2", v, err)
		}
	})
}

// waitDelivered waits until every instance in readers has applied the
// invalidation messages that pub published before the call: a sentinel key
// each reader holds in L1, deleted through pub, is gone from all of them.
func waitDelivered(t testing.TB, pub *tiercache.Cache[int], readers ...*tiercache.Cache[int]) {
	t.Helper()
	ctx := context.Background()
	for _, c := range readers {
		waitUntil(t, "sentinel set", func() bool { return c.Set(ctx, "sentinel", 1) == nil })
	}
	waitUntil(t, "sentinel delete", func() bool { return pub.Delete(ctx, "sentinel") == nil })
	for _, c := range readers {
		waitUntil(t, "sentinel invalidation", func() bool { _, found := cached(t, c, "sentinel"); return !found })
	}
}

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg"

	"github.com/tiercache/tiercache/examples/catalog/internal/api"
	"github.com/tiercache/tiercache/examples/catalog/internal/catalog"
)

// waitFor is how long a test waits for something that must happen (a
// follower streaming, an invalidation arriving) before it gives up: long,
// since the machine may be busy; these waits end as soon as the condition
// holds.
const waitFor = 2 * time.Minute

// getJSON GETs path from the service at addr and decodes a JSON answer
// into out; it returns the status.
func getJSON(t *testing.T, addr, path string, out any) int {
	t.Helper()
	return doJSON(t, "GET", addr, path, "", out)
}

func doJSON(t *testing.T, method, addr, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, "http://"+addr+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Timeout: 30 * time.Second}
	defer c.CloseIdleConnections()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if out != nil && resp.StatusCode < 300 {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %v in %q", method, path, err, data)
		}
	}
	return resp.StatusCode
}

// productAt GETs product id from the service at addr.
func productAt(t *testing.T, addr string, id int64) catalog.Product {
	t.Helper()
	var p catalog.Product
	if got := getJSON(t, addr, fmt.Sprintf("/products/%d", id), &p); got != http.StatusOK {
		t.Fatalf("GET %s/products/%d: status %d", addr, id, got)
	}
	return p
}

// followerAt GETs /stats/follower from the service at addr.
func followerAt(t *testing.T, addr string) api.FollowerResponse {
	t.Helper()
	var fr api.FollowerResponse
	if got := getJSON(t, addr, "/stats/follower", &fr); got != http.StatusOK {
		t.Fatalf("GET %s/stats/follower: status %d", addr, got)
	}
	return fr
}

// confirmedAt is the follower's confirmed position at addr.
func confirmedAt(t *testing.T, addr string) tiercachepg.LSN {
	t.Helper()
	var l tiercachepg.LSN
	if err := l.Scan(followerAt(t, addr).ConfirmedLSN); err != nil {
		t.Fatal(err)
	}
	return l
}

// probeCache is a cache of products under prefix, as the service's
// instances have it (same prefix and schema version), without L1: what it
// reads is what Redis holds.
func probeCache(t *testing.T, rs *redistest.Server, prefix string) *tiercache.Cache[catalog.Product] {
	t.Helper()
	rdb := rs.Client(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	c, err := newProductCache(rdb, cacheConfig{prefix: prefix, coalesce: true}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// followerLagBound bounds, in the tests, the time from a commit until no
// instance and not Redis serves the row it replaced: the follower's
// confirmed position has passed the commit, and every instance has
// applied the invalidation messages. Measured, it is milliseconds for a
// follower that streams, and a few seconds for a standby that takes the
// slot over (it retries every MaxBackoff, 5 s, and the server lets go of
// the slot once it has seen the holder's connection close). 30 s holds on
// a 2-core machine with both cores busy, under -race: slower than that is
// a bug, not load.
const followerLagBound = 30 * time.Second

// TestWriterDiesBeforeDelete is the case the follower exists for: a
// writer commits a product's change and dies before its Delete, and
// before anything of its own could invalidate the change: the writer
// instance runs without a follower (-follow=false) and with -write none,
// so its PUT commits and touches nothing else, which is what a writer
// killed between its COMMIT and its Delete leaves behind. A writer outside
// the service (psql, a migration) changes a second product in SQL. Another
// instance's follower is the only thing that can invalidate them; its
// transaction count shows it did. From the commits, within
// followerLagBound: the follower's confirmed position passes them, and
// then neither Redis nor any instance's L1 serves an old product.
//
// The control runs the same with no follower anywhere and checks that the
// old products are still served, by both instances and Redis: nothing else
// removes them before their TTL, which is what makes the other cases a
// test of the follower.
func TestWriterDiesBeforeDelete(t *testing.T) {
	// The writer stays up: its L1 copies go through the follower's
	// invalidation messages.
	t.Run("follower on another instance", func(t *testing.T) { testWriterDies(t, followerElsewhere) })
	// The instance holding the slot stops before the commits, and the
	// writer dies right after its own: the other instance's follower,
	// waiting as a standby, takes the slot over and invalidates both.
	t.Run("standby takes over, writer dies", func(t *testing.T) { testWriterDies(t, standbyTakesOver) })
	t.Run("no follower (control)", func(t *testing.T) { testWriterDies(t, noFollower) })
}

// followMode is where the follower of testWriterDies runs.
type followMode int

const (
	followerElsewhere followMode = iota // the reader instance follows, holding the slot
	standbyTakesOver                    // a third instance holds the slot and stops before the commits; the reader's standby takes over
	noFollower                          // the control
)

func testWriterDies(t *testing.T, mode followMode) {
	dsn, pool := testPG(t)
	rs := redistest.SharedServer(t)
	prefix := cachePrefix(t)
	args := func(extra ...string) []string {
		return append([]string{"-addr", "127.0.0.1:0", "-pg", dsn, "-redis", "redis://" + rs.Addr + "/0",
			"-prefix", prefix, "-seed", "5"}, extra...)
	}
	// The first follower creates the slot: changes committed before are
	// not followed, so nothing is written until it streams.
	var reader string
	stopHolder := func() error { return nil }
	switch mode {
	case followerElsewhere:
		reader, _ = runService(t, args()...)
		waitUntil(t, "the reader's follower streams", func() bool { return followerAt(t, reader).Streaming })
	case standbyTakesOver:
		var holder string
		holder, stopHolder = runService(t, args()...)
		waitUntil(t, "the holder's follower streams", func() bool { return followerAt(t, holder).Streaming })
		reader, _ = runService(t, args()...) // its follower waits for the slot
	case noFollower:
		reader, _ = runService(t, args("-follow=false")...)
	}
	writer, stopWriter := runService(t, args("-write", "none", "-follow=false")...)
	if got := getJSON(t, writer, "/stats/follower", nil); got != http.StatusNotFound {
		t.Fatalf("GET %s/stats/follower: status %d; want 404: the writer must have no follower of its own", writer, got)
	}
	instances := []string{writer, reader}

	// Both instances hold products 1 and 2 in L1, and Redis holds them,
	// then product 5, the sentinel of waitApplied.
	old := map[int64]catalog.Product{1: productAt(t, writer, 1), 2: productAt(t, writer, 2)}
	for _, in := range instances {
		for _, id := range []int64{1, 2, 5} {
			if p := productAt(t, in, id); p.ID != id {
				t.Fatalf("GET %s/products/%d = %+v", in, id, p)
			}
		}
	}
	if mode == standbyTakesOver {
		// Before any commit: the holder's follower cannot be the one that
		// invalidates them. The reader's waits for the slot until then.
		if fr := followerAt(t, reader); !fr.Running || fr.Streaming {
			t.Fatalf("the reader's follower: running %v, streaming %v; want it waiting for the slot", fr.Running, fr.Streaming)
		}
		if err := stopHolder(); err != nil {
			t.Fatalf("stopping the slot's holder: %v", err)
		}
	}
	var before api.FollowerResponse
	if mode != noFollower {
		before = followerAt(t, reader)
	}

	// The writer commits, and the cache hears nothing from it.
	var saved catalog.Product
	if got := doJSON(t, "PUT", writer, "/products/1", `{"name":"Espresso cup, renamed","price_cents":1}`, &saved); got != http.StatusOK {
		t.Fatalf("PUT /products/1: status %d", got)
	}
	committed := time.Now()
	if mode == standbyTakesOver {
		if err := stopWriter(); err != nil {
			t.Fatalf("stopping the writer: %v", err)
		}
		instances = []string{reader}
	}
	const renamed2 = "Pour-over kettle, from SQL"
	if _, err := pool.Exec(t.Context(), "UPDATE catalog_products SET name = $1, updated_at = now() WHERE id = 2", renamed2); err != nil {
		t.Fatal(err)
	}
	want := map[int64]string{1: saved.Name, 2: renamed2}
	commit := currentLSN(t, pool) // both commits are behind it
	probe := probeCache(t, rs, prefix)
	ctx := t.Context()

	if mode != noFollower {
		waitConfirmed(t, reader, commit)
		confirmed := time.Since(committed)
		fr := followerAt(t, reader)
		if fr.Transactions < before.Transactions+2 {
			t.Errorf("the reader's follower invalidated %d transactions since before the commits, want at least 2 (the PUT and the UPDATE)",
				fr.Transactions-before.Transactions)
		}
		// Redis and the follower's own L1 are clean as soon as the
		// position has passed the commits: Invalidate returned before it
		// moved.
		for _, id := range []int64{1, 2} {
			if inRedis, err := probe.Get(ctx, catalog.CacheKey(id)); err == nil && inRedis.Name != want[id] {
				t.Errorf("Redis holds %+v once the follower confirmed the commit of name %q", inRedis, want[id])
			} else if err != nil && !errors.Is(err, tiercache.ErrMiss) {
				t.Errorf("reading Redis: %v", err)
			}
			if got := productAt(t, reader, id); got.Name != want[id] {
				t.Errorf("the follower's instance serves %+v once it confirmed the commit of name %q", got, want[id])
			}
		}
		t.Logf("the follower confirmed the commits %v after them (bound %v); transactions %d, commit-to-invalidation delay p50 %.2f ms, max %.2f ms",
			confirmed.Round(time.Millisecond), followerLagBound, fr.Transactions, fr.DelayP50Ms, fr.DelayMaxMs)
	}

	within := waitFor
	if mode != noFollower {
		within = followerLagBound - time.Since(committed)
	}
	waitApplied(t, probe, instances, 5, "sentinel", within)
	if mode != noFollower {
		lag := time.Since(committed)
		t.Logf("every instance had applied the invalidations %v after the commits", lag.Round(time.Millisecond))
		if lag > followerLagBound {
			t.Errorf("the invalidations took %v from the commits to every instance, over the bound %v", lag, followerLagBound)
		}
	}

	for _, id := range []int64{1, 2} {
		for _, in := range instances {
			got := productAt(t, in, id)
			switch {
			case mode != noFollower && got.Name != want[id]:
				t.Errorf("%s serves %+v after the follower confirmed the commit of name %q", in, got, want[id])
			case mode == noFollower && !sameProduct(got, old[id]):
				t.Errorf("control: %s serves %+v without a follower; want the old %+v still cached, or the test would not show the follower's effect", in, got, old[id])
			}
		}
		if mode == noFollower {
			if inRedis, err := probe.Get(ctx, catalog.CacheKey(id)); err != nil || !sameProduct(inRedis, old[id]) {
				t.Errorf("control: Redis holds %+v, %v; want the old %+v", inRedis, err, old[id])
			}
		}
	}

	if mode == followerElsewhere {
		// The fast path beside the follower: a PUT on an instance that
		// deletes the key itself is read back at once there, and seen by
		// the other instance.
		productAt(t, writer, 3)
		var p3 catalog.Product
		if got := doJSON(t, "PUT", reader, "/products/3", `{"name":"Burr grinder, fast path","price_cents":2}`, &p3); got != http.StatusOK {
			t.Fatalf("PUT /products/3: status %d", got)
		}
		if got := productAt(t, reader, 3); got.Name != p3.Name {
			t.Errorf("the writing instance serves %+v after its PUT of %+v", got, p3)
		}
		eventually(t, waitFor, "the other instance serves the PUT", func() bool { return productAt(t, writer, 3).Name == p3.Name })
	}
}

// currentLSN is the database's current WAL position: every commit that
// returned is behind it.
func currentLSN(t *testing.T, pool *pgxpool.Pool) tiercachepg.LSN {
	t.Helper()
	var l tiercachepg.LSN
	if err := pool.QueryRow(t.Context(), "SELECT pg_current_wal_lsn()").Scan(&l); err != nil {
		t.Fatal(err)
	}
	return l
}

// waitConfirmed waits, for up to followerLagBound, until the follower of
// the instance at addr has confirmed the position lsn: the invalidations
// of every change committed before it have returned (Redis DEL with the
// lease, tag versions bumped, the L1 messages published).
func waitConfirmed(t *testing.T, addr string, lsn tiercachepg.LSN) {
	t.Helper()
	eventually(t, followerLagBound, fmt.Sprintf("the follower at %s confirms %s", addr, lsn), func() bool {
		return confirmedAt(t, addr) >= lsn
	})
}

// waitApplied waits, for up to within, until every instance has applied
// the invalidation messages published so far. Pub/sub delivers them in
// order: once an instance no longer serves its L1 copy of product id,
// which the probe overwrites in Redis now with a product named name (a Set
// publishes an invalidation), it has applied the earlier ones too. (Were
// its copy to expire from L1 first (the L1 TTL is 30 s), so would the
// copies read before it.) Every instance must hold product id in L1, read
// after the products the caller goes on to check.
func waitApplied(t *testing.T, probe *tiercache.Cache[catalog.Product], instances []string, id int64, name string, within time.Duration) {
	t.Helper()
	if err := probe.Set(t.Context(), catalog.CacheKey(id), catalog.Product{ID: id, Name: name}); err != nil {
		t.Fatal(err)
	}
	for _, in := range instances {
		eventually(t, within, in+" applies the invalidation of "+name, func() bool {
			return productAt(t, in, id).Name == name
		})
	}
}

// TestTruncateInvalidatesEveryProduct: a change that names no row the
// follower can map to a key invalidates every cached product, through the
// tag they all carry (catalog.ProductsTag): a TRUNCATE (the map's
// TruncateTags), and a change the map fails on (the dead-letter policy),
// here a delete that carries no id because a migration made another
// unique index the table's replica identity. Both are made in SQL: the
// service's own Delete is never called. Two instances with L1 share one
// Redis; one follows, the other (-follow=false) hears the invalidation
// messages only. Once the follower has confirmed the change, neither
// serves a product it removed, and Redis holds none.
func TestTruncateInvalidatesEveryProduct(t *testing.T) {
	dsn, pool := testPG(t)
	rs := redistest.SharedServer(t)
	prefix := cachePrefix(t)
	args := func(extra ...string) []string {
		return append([]string{"-addr", "127.0.0.1:0", "-pg", dsn, "-redis", "redis://" + rs.Addr + "/0",
			"-prefix", prefix, "-seed", "7"}, extra...)
	}
	follower, _ := runService(t, args()...)
	waitUntil(t, "the follower streams", func() bool { return followerAt(t, follower).Streaming })
	other, _ := runService(t, args("-follow=false")...)
	instances := []string{follower, other}
	probe := probeCache(t, rs, prefix)
	ctx := t.Context()

	// cache has every instance read ids, so that L1 and Redis hold them.
	cache := func(ids ...int64) {
		t.Helper()
		for _, in := range instances {
			for _, id := range ids {
				productAt(t, in, id)
			}
		}
	}
	// commit runs sql and waits until the follower has passed it.
	commit := func(what, sql string) api.FollowerResponse {
		t.Helper()
		if _, err := pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		committed := time.Now()
		waitConfirmed(t, follower, currentLSN(t, pool))
		fr := followerAt(t, follower)
		t.Logf("%s: confirmed by the follower %v after its commit (bound %v)", what, time.Since(committed).Round(time.Millisecond), followerLagBound)
		return fr
	}
	// gone checks that no instance serves products ids and Redis holds
	// none (Redis first: the instances' reads cache a "not found").
	gone := func(what string, ids ...int64) {
		t.Helper()
		for _, id := range ids {
			if p, err := probe.Get(ctx, catalog.CacheKey(id)); err == nil {
				t.Errorf("after %s, Redis holds %+v", what, p)
			} else if !errors.Is(err, tiercache.ErrMiss) && !errors.Is(err, tiercache.ErrNotFound) {
				t.Errorf("reading Redis: %v", err)
			}
		}
		for _, in := range instances {
			for _, id := range ids {
				var p catalog.Product
				if got := getJSON(t, in, fmt.Sprintf("/products/%d", id), &p); got != http.StatusNotFound {
					t.Errorf("after %s, GET %s/products/%d: status %d, %+v; want 404", what, in, id, got, p)
				}
			}
		}
	}

	// A migration adds a unique sku and makes its index the replica
	// identity: a delete carries the sku from then on, not the id. Its
	// UPDATE invalidates every row by id, as any update.
	commit("the migration", `ALTER TABLE catalog_products ADD COLUMN sku text;
UPDATE catalog_products SET sku = 'sku-' || id;
ALTER TABLE catalog_products ALTER COLUMN sku SET NOT NULL;
CREATE UNIQUE INDEX catalog_products_sku ON catalog_products (sku);
ALTER TABLE catalog_products REPLICA IDENTITY USING INDEX catalog_products_sku`)
	cache(1, 2, 3, 4, 5, 7, 6) // 6 last: the sentinel
	before := followerAt(t, follower)
	fr := commit("a delete that carries no id", "DELETE FROM catalog_products WHERE id = 1")
	if fr.Unmapped != before.Unmapped+1 {
		t.Errorf("the follower counted %d unmapped changes for the delete, want 1: the case is not the one meant", fr.Unmapped-before.Unmapped)
	}
	waitApplied(t, probe, instances, 6, "sentinel 1", followerLagBound)
	gone("a delete that carries no id", 1)

	cache(2, 3, 4, 5, 7) // 7 last: the sentinel
	before = followerAt(t, follower)
	fr = commit("TRUNCATE", "TRUNCATE catalog_products")
	if fr.Unmapped != before.Unmapped {
		// The dead-letter policy invalidates the same tag: had the map
		// failed on the TRUNCATE, the test would pass without the map's
		// TruncateTags.
		t.Errorf("the follower counted %d unmapped changes for the TRUNCATE, want 0: the map's TruncateTags did not invalidate it", fr.Unmapped-before.Unmapped)
	}
	waitApplied(t, probe, instances, 7, "sentinel 2", followerLagBound)
	gone("TRUNCATE", 2, 3, 4, 5)
}

// The repository's table is the one the connection's search_path names
// first, not necessarily public, and the follower follows that one. Here
// the DSN sets search_path=shop,public, and public holds a table of the
// same name, empty: a follower of public.catalog_products would follow it
// without complaint, and leave shop's products stale.
func TestRunFollowerSchema(t *testing.T) {
	dsn, pool := testPG(t)
	ctx := t.Context()
	if _, err := pool.Exec(ctx, `CREATE SCHEMA shop;
CREATE TABLE public.catalog_products (id bigint PRIMARY KEY, name text NOT NULL, price_cents bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		t.Fatal(err)
	}
	addr, stop := runService(t, "-addr", "127.0.0.1:0", "-pg", dsn+"&search_path=shop,public",
		"-redis", "redis://"+redistest.SharedServer(t).Addr+"/0", "-prefix", cachePrefix(t), "-seed", "3")
	waitUntil(t, "the follower streams", func() bool { return followerAt(t, addr).Streaming })

	var inShop, inPublic int
	if err := pool.QueryRow(ctx, "SELECT (SELECT count(*) FROM shop.catalog_products), (SELECT count(*) FROM public.catalog_products)").Scan(&inShop, &inPublic); err != nil || inShop != 3 || inPublic != 0 {
		t.Fatalf("shop.catalog_products has %d rows, public.catalog_products %d, %v; want the 3 seeded in shop", inShop, inPublic, err)
	}
	var published []string
	rows, err := pool.Query(ctx, "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = 'tiercache_catalog'")
	if err == nil {
		published, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil || !slices.Equal(published, []string{"shop.catalog_products"}) {
		t.Errorf("the publication has %q, %v; want shop.catalog_products", published, err)
	}

	productAt(t, addr, 1)
	productAt(t, addr, 1) // from L1
	const renamed = "Espresso cup, from SQL in shop"
	if _, err := pool.Exec(ctx, "UPDATE shop.catalog_products SET name = $1, updated_at = now() WHERE id = 1", renamed); err != nil {
		t.Fatal(err)
	}
	waitConfirmed(t, addr, currentLSN(t, pool))
	if got := productAt(t, addr, 1); got.Name != renamed {
		t.Errorf("the service serves %+v once its follower confirmed the update of shop.catalog_products to %q", got, renamed)
	}
	if err := stop(); err != nil {
		t.Errorf("run returned %v after the cancel, want nil", err)
	}
}

// A stop right after the start, before the follower's goroutine has
// called Run, is a clean stop: Run returns tiercachepg.ErrClosed then,
// which stop does not report. With GOMAXPROCS(1) that is the likely
// order: the goroutine startFollower starts runs only once this one
// blocks, in stop, after Close. The database is never reached (the DSN's
// port is closed), and need not be.
func TestFollowerStopRightAfterStart(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	cache, err := tiercache.NewLocal[catalog.Product](tiercache.WithL1(10))
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	fc := followConfig{on: true, slot: "tiercache_catalog", publication: "tiercache_catalog"}
	for i := range 20 {
		fl, err := startFollower("postgres://postgres@127.0.0.1:1/none?connect_timeout=1", "public.catalog_products", fc, cache, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		if err := fl.stop(); err != nil {
			t.Fatalf("stop %d right after the start: %v, want nil", i, err)
		}
	}
}

// sameProduct compares products field by field, times as instants (the
// cache's codec and JSON may give them different locations).
func sameProduct(a, b catalog.Product) bool {
	return a.ID == b.ID && a.Name == b.Name && a.PriceCents == b.PriceCents && a.UpdatedAt.Equal(b.UpdatedAt)
}

// waitUntil polls cond until it holds, for up to waitFor.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	eventually(t, waitFor, what, cond)
}

// syncBuffer is a bytes.Buffer that the service's log may write to while
// the test reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// The service runs the follower by default on PostgreSQL, creating the
// slot (its cache namespace's, defaultSlot) and the publication; at shutdown the follower's Run has returned
// before the cache is closed, the slot is let go (and kept: a restart
// resumes from it), and no goroutine is left (TestMain's leak check).
func TestRunFollowerLifecycle(t *testing.T) {
	dsn, pool := testPG(t)
	prefix := cachePrefix(t)
	slot := defaultSlot(prefix, cacheSchemaVersion) // the namespace's, as no -pg-slot is given
	var log syncBuffer
	addr, stop := runServiceTo(t, io.MultiWriter(&log, t.Output()), "-addr", "127.0.0.1:0", "-pg", dsn,
		"-redis", "redis://"+redistest.SharedServer(t).Addr+"/0", "-prefix", prefix, "-seed", "5")
	checkServes(t, addr)
	waitUntil(t, "the follower streams", func() bool { return followerAt(t, addr).Streaming })
	if err := stop(); err != nil {
		t.Fatalf("run returned %v after the cancel, want nil", err)
	}
	out := log.String()
	stopped, closed := strings.Index(out, "commit-log follower stopped"), strings.Index(out, "cache closed")
	if stopped < 0 || closed < 0 || stopped > closed {
		t.Errorf("log: the follower stopped at %d, the cache closed at %d; want the follower first:\n%s", stopped, closed, out)
	}

	// The slot outlives the service, and nobody holds it: the walsender
	// lets go once it sees the follower's connection closed.
	var active bool
	waitUntil(t, "the slot is let go", func() bool {
		err := pool.QueryRow(t.Context(), "SELECT active FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&active)
		if err != nil {
			t.Fatalf("the slot %s after the shutdown: %v", slot, err)
		}
		return !active
	})
	var pubs int
	if err := pool.QueryRow(t.Context(), "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'tiercache_catalog' AND tablename = 'catalog_products'").Scan(&pubs); err != nil || pubs != 1 {
		t.Errorf("publication tiercache_catalog of catalog_products: %d, %v; want it kept", pubs, err)
	}

	// A second start of the namespace finds both and follows again,
	// without -pg-create.
	addr, stop = runService(t, "-addr", "127.0.0.1:0", "-pg", dsn, "-pg-create=false",
		"-redis", "redis://"+redistest.SharedServer(t).Addr+"/0", "-prefix", prefix, "-seed", "0")
	waitUntil(t, "the follower streams again", func() bool { return followerAt(t, addr).Streaming })
	if err := stop(); err != nil {
		t.Fatalf("second run returned %v after the cancel, want nil", err)
	}
}

// A follower that cannot go on stops the service with its error: here
// neither the publication nor the slot exists (the publication is checked
// first) and -pg-create=false forbids creating them. A bad slot name is
// refused before anything is connected to.
func TestRunFollowerErrors(t *testing.T) {
	dsn, pool := testPG(t)
	redisURL := "redis://" + redistest.SharedServer(t).Addr + "/0"
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	noenv := func(string) string { return "" }

	err := run(ctx, []string{"-addr", "127.0.0.1:0", "-pg", dsn, "-redis", redisURL, "-prefix", cachePrefix(t), "-pg-create=false"},
		noenv, t.Output(), nil)
	if !errors.Is(err, tiercachepg.ErrPublication) {
		t.Errorf("run without a publication and -pg-create=false = %v, want ErrPublication", err)
	}

	// Refused before the store is opened: the table is neither created
	// nor seeded.
	served := false
	err = run(ctx, []string{"-addr", "127.0.0.1:0", "-pg", dsn, "-redis", redisURL, "-prefix", cachePrefix(t), "-pg-slot", "Not-A-Slot-Name", "-pg-table", "bad_slot_products"},
		noenv, t.Output(), func(net.Addr) { served = true })
	if !errors.Is(err, tiercachepg.ErrInvalidOption) || !errors.Is(err, errBadFlags) || served {
		t.Errorf("run -pg-slot Not-A-Slot-Name = %v (served %v), want ErrInvalidOption and errBadFlags before serving", err, served)
	}
	var created bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('bad_slot_products') IS NOT NULL`).Scan(&created); err != nil {
		t.Fatal(err)
	}
	if created {
		t.Errorf("run -pg-slot Not-A-Slot-Name created its table: the flags were checked after the store was opened")
	}
}

// On a database without logical decoding (wal_level below logical, as a
// PostgreSQL is by default) the follower cannot create its slot: the
// service stops with ErrSlotUnusable, and -follow=false is the way to run
// it there.
func TestRunFollowerWithoutLogicalWAL(t *testing.T) {
	dsn, _ := testPG(t, "wal_level=replica")
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	args := []string{"-addr", "127.0.0.1:0", "-pg", dsn, "-redis", "redis://" + redistest.SharedServer(t).Addr + "/0", "-prefix", cachePrefix(t)}
	err := run(ctx, args, func(string) string { return "" }, t.Output(), nil)
	if !errors.Is(err, tiercachepg.ErrSlotUnusable) {
		t.Errorf("run on wal_level=replica = %v, want ErrSlotUnusable", err)
	}
	addr, stop := runService(t, append(args, "-follow=false")...)
	checkServes(t, addr)
	if err := stop(); err != nil {
		t.Errorf("run -follow=false on wal_level=replica returned %v after the cancel, want nil", err)
	}
}

// -pg-table with a schema is refused, with the follower on or off: the
// repository takes the name as one identifier (it would create a table
// literally named "public.products"), the follower as schema.name (the
// schema is the connection's search_path). It is checked before anything
// is connected to.
func TestRunFollowerTableName(t *testing.T) {
	for _, extra := range [][]string{nil, {"-follow=false"}} {
		args := append([]string{"-pg", "postgres://127.0.0.1:1/none", "-pg-table", "public.products"}, extra...)
		err := run(t.Context(), args, func(string) string { return "" }, io.Discard, nil)
		if !errors.Is(err, errBadFlags) || !strings.Contains(err.Error(), "-pg-table") {
			t.Errorf("run %q = %v, want errBadFlags naming the flag", args, err)
		}
	}
}

// The follower's mapping gives the key the repository caches a product
// under, for each kind of change, old and new ids alike.
func TestProductMap(t *testing.T) {
	m, err := productMap("public.catalog_products")
	if err != nil {
		t.Fatal(err)
	}
	row := func(id string) tiercachepg.Row { return tiercachepg.Row{"id": id, "name": "x", "price_cents": "1"} }
	tests := []struct {
		name string
		c    tiercachepg.Change
		want []string
	}{
		{"insert", tiercachepg.Change{Op: tiercachepg.OpInsert, New: row("42")}, []string{catalog.CacheKey(42)}},
		{"update", tiercachepg.Change{Op: tiercachepg.OpUpdate, New: row("42")}, []string{catalog.CacheKey(42)}},
		{"update of the id", tiercachepg.Change{Op: tiercachepg.OpUpdate, New: row("43"), Old: tiercachepg.Row{"id": "42"}, OldKeyOnly: true},
			[]string{catalog.CacheKey(43), catalog.CacheKey(42)}},
		{"delete", tiercachepg.Change{Op: tiercachepg.OpDelete, Old: tiercachepg.Row{"id": "7"}, OldKeyOnly: true}, []string{catalog.CacheKey(7)}},
	}
	for _, tt := range tests {
		tt.c.Schema, tt.c.Table = "public", "catalog_products"
		inv, err := m(tt.c)
		if err != nil || !slices.Equal(inv.Keys, tt.want) || len(inv.Tags) != 0 {
			t.Errorf("%s: %+v, %v; want keys %q", tt.name, inv, err, tt.want)
		}
	}
	// No invalidation is versioned, not even of a row that carries its
	// updated_at: the follower would drop the version, and updated_at (the
	// writing transaction's start) is not commit order, so a versioned
	// delete could be refused and leave a stale row cached.
	r := row("42")
	r["updated_at"] = "2026-12-01 14:28:17.123456+00"
	for _, c := range []tiercachepg.Change{
		{Op: tiercachepg.OpInsert, New: r},
		{Op: tiercachepg.OpUpdate, New: r, Old: tiercachepg.Row{"id": "41"}, OldKeyOnly: true},
		{Op: tiercachepg.OpDelete, Old: r},
		{Op: tiercachepg.OpTruncate},
	} {
		c.Schema, c.Table = "public", "catalog_products"
		if inv, err := m(c); err != nil || inv.Version != 0 {
			t.Errorf("%v: version %d, %v; want an unversioned invalidation", c.Op, inv.Version, err)
		}
	}
	// A TRUNCATE invalidates the tag every cached product carries,
	// unversioned.
	all := tiercache.Invalidation{Tags: []string{catalog.ProductsTag}}
	if inv, err := m(tiercachepg.Change{Schema: "public", Table: "catalog_products", Op: tiercachepg.OpTruncate}); err != nil || !reflect.DeepEqual(inv, all) {
		t.Errorf("truncate: %+v, %v; want %+v", inv, err, all)
	}
	// A change the map fails on (here a delete without the id) goes to the
	// dead-letter policy, which invalidates that tag too.
	c := tiercachepg.Change{Schema: "public", Table: "catalog_products", Op: tiercachepg.OpDelete, Old: tiercachepg.Row{"sku": "x"}, OldKeyOnly: true}
	_, err = m(c)
	if !errors.Is(err, tiercachepg.ErrUnmapped) {
		t.Fatalf("delete without the id: %v, want ErrUnmapped", err)
	}
	if inv, err := unmappedProducts()(t.Context(), c, err); err != nil || !reflect.DeepEqual(inv, all) {
		t.Errorf("the dead-letter policy: %+v, %v; want %+v", inv, err, all)
	}
	// The map is of the table named, in its schema.
	if _, err := m(tiercachepg.Change{Schema: "shop", Table: "catalog_products", Op: tiercachepg.OpInsert, New: row("1")}); !errors.Is(err, tiercachepg.ErrUnmapped) {
		t.Errorf("a change of shop.catalog_products: %v, want ErrUnmapped", err)
	}
}

// Each cache namespace (prefix and schema version) has a slot of its own
// by default: a follower invalidates only its own namespace, so instances
// of two namespaces sharing a slot would leave one of them stale. The
// name is a valid slot name whatever the prefix, and prefixes that the
// cleaning would make alike stay apart.
func TestDefaultSlot(t *testing.T) {
	valid := regexp.MustCompile(`^[a-z0-9_]{1,63}$`)
	long := strings.Repeat("catalog-product-", 5)
	tests := []struct {
		prefix  string
		version int
		want    string // "" for: valid, and unlike every other
	}{
		{"catalog-product", 2, "tiercache_catalog_catalog_product_v2"},
		{"catalog-product", 1, "tiercache_catalog_catalog_product_v1"},
		{"shop", 2, "tiercache_catalog_shop_v2"},
		{"catalog_product", 2, ""}, // not catalog-product's
		{"Catalog-Product", 2, ""},
		{"a-b", 2, "tiercache_catalog_a_b_v2"},
		{"a_b", 2, ""},
		{"ünïcode/prefix:1", 2, ""},
		{long, 2, ""},
		{long + "x", 2, ""}, // cut alike, kept apart by the hash
		{long + "x", 3, ""},
		{"", 2, "tiercache_catalog__v2"},
	}
	seen := make(map[string]string)
	for _, tt := range tests {
		got := defaultSlot(tt.prefix, tt.version)
		if !valid.MatchString(got) {
			t.Errorf("defaultSlot(%q, %d) = %q: not a slot name", tt.prefix, tt.version, got)
		}
		if tt.want != "" && got != tt.want {
			t.Errorf("defaultSlot(%q, %d) = %q, want %q", tt.prefix, tt.version, got, tt.want)
		}
		if !strings.HasSuffix(got, fmt.Sprintf("_v%d", tt.version)) {
			t.Errorf("defaultSlot(%q, %d) = %q: the version is not at its end", tt.prefix, tt.version, got)
		}
		key := fmt.Sprintf("%q v%d", tt.prefix, tt.version)
		if other, ok := seen[got]; ok {
			t.Errorf("%s and %s share the slot %q", key, other, got)
		}
		seen[got] = key
	}

	// The flags: two prefixes, two slots; an explicit -pg-slot is kept.
	const dsn = "postgres://postgres@127.0.0.1:1/none" // never connected to
	slot := func(args ...string) string {
		t.Helper()
		cfg, err := parseFlags(append([]string{"-pg", dsn}, args...), func(string) string { return "" }, io.Discard)
		if err != nil {
			t.Fatalf("parseFlags(%q): %v", args, err)
		}
		return cfg.follow.slot
	}
	if a, b := slot("-prefix", "shop-a"), slot("-prefix", "shop-b"); a == b || a != defaultSlot("shop-a", cacheSchemaVersion) {
		t.Errorf("-prefix shop-a follows %q, -prefix shop-b %q: want two slots, the first %q", a, b, defaultSlot("shop-a", cacheSchemaVersion))
	}
	if got, want := slot(), fmt.Sprintf("tiercache_catalog_catalog_product_v%d", cacheSchemaVersion); got != want {
		t.Errorf("the default slot is %q, want %q", got, want)
	}
	if got := slot("-pg-slot", "mine"); got != "mine" {
		t.Errorf("-pg-slot mine follows %q", got)
	}
}

// Without a follower (the in-memory store) GET /stats/follower says so.
func TestFollowerStatsWithoutFollower(t *testing.T) {
	store := catalog.NewMemoryRepository(0)
	in := startInstance(t, redistest.SharedServer(t), store, cachePrefix(t), catalog.Invalidate)
	if got := in.do(t, "GET", "/stats/follower", "", nil); got != http.StatusNotFound {
		t.Errorf("GET /stats/follower without a follower: status %d, want 404", got)
	}
}

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
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

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

// TestWriterDiesBeforeDelete is the case the follower exists for: a
// writer commits a product's change and its cache update never happens.
// Two service instances with L1 share one Redis and one PostgreSQL, both
// holding the old products in L1 (and Redis holding them too). Two writers
// lose their cache update: the writer instance (it runs with -write none,
// which is what a writer killed between its commit and its Delete leaves
// behind) updates product 1 through the API, and a writer outside the
// service (psql, a migration) updates product 2 in SQL. Once a follower
// has confirmed the commits' position, neither instance nor Redis serves
// an old product.
//
// The control runs the same with -follow=false and checks that the old
// product is still served then, by both instances: without the follower
// nothing removes it before its TTL, which is what makes the first two
// cases a test of the follower.
func TestWriterDiesBeforeDelete(t *testing.T) {
	t.Run("follower", func(t *testing.T) { testWriterDies(t, true, false) })
	// The writer's instance, whose follower holds the slot, is stopped
	// right after its commit, and the SQL update is made after that: the
	// other instance's follower, waiting as a standby, takes the slot over
	// and invalidates what was left.
	t.Run("follower, writer's instance stopped after the commit", func(t *testing.T) { testWriterDies(t, true, true) })
	t.Run("no follower (control)", func(t *testing.T) { testWriterDies(t, false, false) })
}

func testWriterDies(t *testing.T, follow, stopWriter bool) {
	dsn, pool := testPG(t)
	rs := redistest.SharedServer(t)
	prefix := cachePrefix(t)
	args := func(extra ...string) []string {
		return append([]string{"-addr", "127.0.0.1:0", "-pg", dsn, "-redis", "redis://" + rs.Addr + "/0",
			"-prefix", prefix, "-seed", "5", fmt.Sprintf("-follow=%v", follow)}, extra...)
	}
	writer, stopW := runService(t, args("-write", "none")...)
	if follow {
		// The writer's follower creates the slot: changes committed before
		// are not followed, so nothing is written until it streams. It
		// holds the slot from then on; the reader's follower waits.
		waitUntil(t, "the writer's follower streams", func() bool { return followerAt(t, writer).Streaming })
	}
	reader, _ := runService(t, args()...)
	instances := []string{writer, reader}

	// Both instances hold products 1 and 2 in L1, and Redis holds them,
	// then product 5, the sentinel below.
	old := map[int64]catalog.Product{1: productAt(t, writer, 1), 2: productAt(t, writer, 2)}
	for _, in := range instances {
		for _, id := range []int64{1, 2, 5} {
			if p := productAt(t, in, id); p.ID != id {
				t.Fatalf("GET %s/products/%d = %+v", in, id, p)
			}
		}
	}

	// The writer commits, and the cache hears nothing from it.
	var saved catalog.Product
	if got := doJSON(t, "PUT", writer, "/products/1", `{"name":"Espresso cup, renamed","price_cents":1}`, &saved); got != http.StatusOK {
		t.Fatalf("PUT /products/1: status %d", got)
	}
	if stopWriter {
		if err := stopW(); err != nil {
			t.Fatalf("stopping the writer: %v", err)
		}
		instances = []string{reader}
	}
	const renamed2 = "Pour-over kettle, from SQL"
	if _, err := pool.Exec(t.Context(), "UPDATE catalog_products SET name = $1, updated_at = now() WHERE id = 2", renamed2); err != nil {
		t.Fatal(err)
	}
	want := map[int64]string{1: saved.Name, 2: renamed2}
	var commit tiercachepg.LSN // every commit that returned is behind it
	if err := pool.QueryRow(t.Context(), "SELECT pg_current_wal_lsn()").Scan(&commit); err != nil {
		t.Fatal(err)
	}

	if follow {
		// The follower's measured lag has passed once its confirmed
		// position is past the commit: the commit's invalidation returned
		// (Redis DEL with the lease, the L1 message published). A
		// follower waiting for the slot reads its position from the slot,
		// so either instance's figure will do.
		start := time.Now()
		waitUntil(t, fmt.Sprintf("a follower confirms %s", commit), func() bool {
			return slices.ContainsFunc(instances, func(in string) bool { return confirmedAt(t, in) >= commit })
		})
		for _, in := range instances {
			fr := followerAt(t, in)
			t.Logf("%s: confirmed %s %v after the commit; streaming %v, commit-to-invalidation delay p50 %.2f ms, max %.2f ms",
				in, fr.ConfirmedLSN, time.Since(start).Round(time.Millisecond), fr.Streaming, fr.DelayP50Ms, fr.DelayMaxMs)
		}
	}

	// Wait until every instance has applied the invalidation messages
	// published so far. Pub/sub delivers them in order: once an instance
	// no longer serves its L1 copy of product 5, which the probe
	// overwrites in Redis now (a Set publishes an invalidation), it has
	// applied the follower's earlier ones of products 1 and 2. (Were its
	// copy of product 5 to expire from L1 first (the L1 TTL is 30 s), so
	// would its copies of products 1 and 2, read just before.)
	probe := probeCache(t, rs, prefix)
	ctx := t.Context()
	if err := probe.Set(ctx, catalog.CacheKey(5), catalog.Product{ID: 5, Name: "sentinel"}); err != nil {
		t.Fatal(err)
	}
	for _, in := range instances {
		eventually(t, waitFor, in+" applies the sentinel's invalidation", func() bool {
			return productAt(t, in, 5).Name == "sentinel"
		})
	}

	for _, id := range []int64{1, 2} {
		for _, in := range instances {
			got := productAt(t, in, id)
			switch {
			case follow && got.Name != want[id]:
				t.Errorf("%s serves %+v after the follower confirmed the commit of name %q", in, got, want[id])
			case !follow && !sameProduct(got, old[id]):
				t.Errorf("control: %s serves %+v without a follower; want the old %+v still cached, or the test would not show the follower's effect", in, got, old[id])
			}
		}
		inRedis, err := probe.Get(ctx, catalog.CacheKey(id))
		switch {
		case follow && err == nil && inRedis.Name != want[id]:
			t.Errorf("Redis holds %+v after the follower confirmed the commit of name %q", inRedis, want[id])
		case follow && err != nil && !errors.Is(err, tiercache.ErrMiss):
			t.Errorf("reading Redis: %v", err)
		case !follow && (err != nil || !sameProduct(inRedis, old[id])):
			t.Errorf("control: Redis holds %+v, %v; want the old %+v", inRedis, err, old[id])
		}
	}

	if follow && !stopWriter {
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
// slot and the publication; at shutdown the follower's Run has returned
// before the cache is closed, the slot is let go (and kept: a restart
// resumes from it), and no goroutine is left (TestMain's leak check).
func TestRunFollowerLifecycle(t *testing.T) {
	dsn, pool := testPG(t)
	var log syncBuffer
	addr, stop := runServiceTo(t, io.MultiWriter(&log, t.Output()), "-addr", "127.0.0.1:0", "-pg", dsn,
		"-redis", "redis://"+redistest.SharedServer(t).Addr+"/0", "-prefix", cachePrefix(t), "-seed", "5")
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
		err := pool.QueryRow(t.Context(), "SELECT active FROM pg_replication_slots WHERE slot_name = 'tiercache_catalog'").Scan(&active)
		if err != nil {
			t.Fatalf("the slot after the shutdown: %v", err)
		}
		return !active
	})
	var pubs int
	if err := pool.QueryRow(t.Context(), "SELECT count(*) FROM pg_publication_tables WHERE pubname = 'tiercache_catalog' AND tablename = 'catalog_products'").Scan(&pubs); err != nil || pubs != 1 {
		t.Errorf("publication tiercache_catalog of catalog_products: %d, %v; want it kept", pubs, err)
	}

	// A second start finds both and follows again, without -pg-create.
	addr, stop = runService(t, "-addr", "127.0.0.1:0", "-pg", dsn, "-pg-create=false",
		"-redis", "redis://"+redistest.SharedServer(t).Addr+"/0", "-prefix", cachePrefix(t), "-seed", "0")
	waitUntil(t, "the follower streams again", func() bool { return followerAt(t, addr).Streaming })
	if err := stop(); err != nil {
		t.Fatalf("second run returned %v after the cancel, want nil", err)
	}
}

// A follower that cannot go on stops the service with its error: here
// neither the publication nor the slot exists (the publication is checked
// first) and -pg-create=false forbids creating them. A bad slot name is
// refused before anything is served.
func TestRunFollowerErrors(t *testing.T) {
	dsn, _ := testPG(t)
	redisURL := "redis://" + redistest.SharedServer(t).Addr + "/0"
	ctx, cancel := context.WithTimeout(t.Context(), waitFor)
	defer cancel()
	noenv := func(string) string { return "" }

	err := run(ctx, []string{"-addr", "127.0.0.1:0", "-pg", dsn, "-redis", redisURL, "-prefix", cachePrefix(t), "-pg-create=false"},
		noenv, t.Output(), nil)
	if !errors.Is(err, tiercachepg.ErrPublication) {
		t.Errorf("run without a publication and -pg-create=false = %v, want ErrPublication", err)
	}

	served := false
	err = run(ctx, []string{"-addr", "127.0.0.1:0", "-pg", dsn, "-redis", redisURL, "-prefix", cachePrefix(t), "-pg-slot", "Not-A-Slot-Name"},
		noenv, t.Output(), func(net.Addr) { served = true })
	if !errors.Is(err, tiercachepg.ErrInvalidOption) || served {
		t.Errorf("run -pg-slot Not-A-Slot-Name = %v (served %v), want ErrInvalidOption before serving", err, served)
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

// -pg-table with a schema is refused with the follower on: the repository
// and the follower would read the name differently. It is checked before
// anything is connected to.
func TestRunFollowerTableName(t *testing.T) {
	err := run(t.Context(), []string{"-pg", "postgres://127.0.0.1:1/none", "-pg-table", "public.products"},
		func(string) string { return "" }, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "-pg-table") {
		t.Errorf("run -pg-table public.products = %v, want the flag refused", err)
	}
}

// The follower's mapping gives the key the repository caches a product
// under, for each kind of change, old and new ids alike.
func TestProductMap(t *testing.T) {
	m, err := productMap("catalog_products")
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
	// An insert or update is versioned by the new row's updated_at, as the
	// repository's writes are; a delete is not.
	at := time.Date(2026, 12, 1, 14, 28, 17, 123456000, time.UTC)
	for _, text := range []string{"2026-12-01 14:28:17.123456+00", "2026-12-01 15:28:17.123456+01", "2026-12-01 20:13:17.123456+05:45"} {
		r := row("42")
		r["updated_at"] = text
		inv, err := m(tiercachepg.Change{Schema: "public", Table: "catalog_products", Op: tiercachepg.OpUpdate, New: r})
		if err != nil || inv.Version != catalog.RowVersionAt(at) {
			t.Errorf("update at %q: version %d, %v; want %d", text, inv.Version, err, catalog.RowVersionAt(at))
		}
	}
	if inv, _ := m(tiercachepg.Change{Schema: "public", Table: "catalog_products", Op: tiercachepg.OpDelete, Old: tiercachepg.Row{"id": "7"}, OldKeyOnly: true}); inv.Version != 0 {
		t.Errorf("a delete is versioned: %d", inv.Version)
	}
	// A TRUNCATE cannot be mapped (no tag covers every product): it goes
	// to the follower's dead-letter policy, which logs and counts it.
	if _, err := m(tiercachepg.Change{Schema: "public", Table: "catalog_products", Op: tiercachepg.OpTruncate}); !errors.Is(err, tiercachepg.ErrUnmapped) {
		t.Errorf("truncate: %v, want ErrUnmapped", err)
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

package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"

	"github.com/tiercache/tiercache/examples/catalog/internal/api"
	"github.com/tiercache/tiercache/examples/catalog/internal/catalog"
)

// The tests run against a real redis-server that the harness starts (they
// are skipped if there is none, and fail under CI); goroutine leaks, such as
// a cache or client left open by the shutdown, fail the run.
//
// The one goroutine let through is go-redis's redial probe: once a dial has
// failed (TestRedisDown stops its server), the client's pool probes the
// address once a second in the background, and the probe sees that the
// client was closed only when it wakes up, up to a second after the tests.
func TestMain(m *testing.M) {
	redistest.MainWithLeakCheck(m,
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
}

// countingRepo counts the calls that reach the store behind the cache.
type countingRepo struct {
	catalog.ProductRepository

	mu      sync.Mutex
	gets    map[int64]int
	batches [][]int64 // the ids of each GetMany call, sorted
}

func newCountingRepo(store catalog.ProductRepository) *countingRepo {
	return &countingRepo{ProductRepository: store, gets: make(map[int64]int)}
}

func (r *countingRepo) Get(ctx context.Context, id int64) (catalog.Product, error) {
	r.mu.Lock()
	r.gets[id]++
	r.mu.Unlock()
	return r.ProductRepository.Get(ctx, id)
}

func (r *countingRepo) GetMany(ctx context.Context, ids []int64) (map[int64]catalog.Product, error) {
	r.mu.Lock()
	r.batches = append(r.batches, slices.Sorted(slices.Values(ids)))
	r.mu.Unlock()
	return r.ProductRepository.GetMany(ctx, ids)
}

func (r *countingRepo) getsOf(id int64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.gets[id]
}

func (r *countingRepo) getManyCalls() [][]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.batches)
}

// instance is one running copy of the service, as a deployment has many.
type instance struct {
	srv   *httptest.Server
	cache *tiercache.Cache[catalog.Product]
}

// startInstance starts the service over store with a Redis client of its
// own to rdbServer, its cache under prefix, with L1 and read coalescing on
// as the command's defaults are. Instances that share prefix and Redis share
// the cache, as the copies of one service do.
func startInstance(t *testing.T, rdbServer *redistest.Server, store catalog.ProductRepository, prefix string, mode catalog.WriteMode) *instance {
	t.Helper()
	return startInstanceWith(t, rdbServer, store, cacheConfig{prefix: prefix, l1: 1000, coalesce: true}, mode)
}

func startInstanceWith(t *testing.T, rdbServer *redistest.Server, store catalog.ProductRepository, cc cacheConfig, mode catalog.WriteMode) *instance {
	t.Helper()
	rdb := rdbServer.Client(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	cache, err := newProductCache(rdb, cc, log)
	if err != nil {
		t.Fatal(err)
	}
	// Cleanups run last-in, first-out: the server, then the cache, then
	// the client (whose cleanup Client registered first).
	t.Cleanup(func() {
		if err := cache.Close(); err != nil {
			t.Error(err)
		}
	})
	srv := httptest.NewServer(api.New(catalog.NewCachedRepository(store, cache, mode), cache.Stats, nil, log))
	t.Cleanup(srv.Close)
	return &instance{srv: srv, cache: cache}
}

// do sends a request and decodes a JSON answer into out (if not nil).
func (in *instance) do(t *testing.T, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, in.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := in.srv.Client().Do(req)
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

// getProduct GETs /products/{id}, failing the test unless the status is want.
func (in *instance) getProduct(t *testing.T, id int64, want int) catalog.Product {
	t.Helper()
	var p catalog.Product
	if got := in.do(t, "GET", fmt.Sprintf("/products/%d", id), "", &p); got != want {
		t.Fatalf("GET /products/%d: status %d, want %d", id, got, want)
	}
	return p
}

// eventually polls cond until it holds or within has passed.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
		<-tick.C
	}
}

func cachePrefix(t *testing.T) string { return strings.TrimSuffix(redistest.UniquePrefix(t), ":") }

// testFlow runs the service's cache behaviour over store, which the flow
// fills with products 1 to 5, with two instances sharing one Redis.
func testFlow(t *testing.T, store catalog.ProductRepository, mode catalog.WriteMode) {
	for _, p := range catalog.SampleProducts(5) {
		if _, _, err := store.Put(t.Context(), p); err != nil {
			t.Fatal(err)
		}
	}
	repo := newCountingRepo(store)
	rs := redistest.SharedServer(t)
	prefix := cachePrefix(t)
	a := startInstance(t, rs, repo, prefix, mode)
	b := startInstance(t, rs, repo, prefix, mode)

	t.Run("second GET does not reach the store", func(t *testing.T) {
		first := a.getProduct(t, 1, http.StatusOK)
		if first.ID != 1 || first.Name == "" {
			t.Fatalf("GET /products/1 = %+v", first)
		}
		if again := a.getProduct(t, 1, http.StatusOK); again != first {
			t.Errorf("second GET = %+v, want %+v", again, first)
		}
		// The other instance finds it in Redis.
		if other := b.getProduct(t, 1, http.StatusOK); other.Name != first.Name {
			t.Errorf("GET on the other instance = %+v, want %+v", other, first)
		}
		if n := repo.getsOf(1); n != 1 {
			t.Errorf("store.Get(1) called %d times, want 1", n)
		}
	})

	t.Run("PUT then GET returns the new value on both instances", func(t *testing.T) {
		// Both instances hold product 2 in their L1.
		old := a.getProduct(t, 2, http.StatusOK)
		b.getProduct(t, 2, http.StatusOK)

		var saved catalog.Product
		if got := a.do(t, "PUT", "/products/2", `{"name":"Kettle, gooseneck","price_cents":4200}`, &saved); got != http.StatusOK {
			t.Fatalf("PUT /products/2: status %d, want 200", got)
		}
		if saved.Name != "Kettle, gooseneck" || saved.PriceCents != 4200 || !saved.UpdatedAt.After(old.UpdatedAt) {
			t.Fatalf("PUT /products/2 = %+v, old %+v", saved, old)
		}
		// The writer reads its own write at once.
		if got := a.getProduct(t, 2, http.StatusOK); got.Name != saved.Name || got.PriceCents != saved.PriceCents {
			t.Errorf("GET after PUT on the same instance = %+v, want %+v", got, saved)
		}
		// The other instance's L1 copy is dropped by the invalidation
		// message, which arrives asynchronously.
		eventually(t, time.Second, "the other instance serves the new value", func() bool {
			return b.getProduct(t, 2, http.StatusOK).Name == saved.Name
		})
	})

	t.Run("unknown id is 404 and cached", func(t *testing.T) {
		a.getProduct(t, 999, http.StatusNotFound)
		a.getProduct(t, 999, http.StatusNotFound)
		b.getProduct(t, 999, http.StatusNotFound) // from the negative entry in Redis
		if n := repo.getsOf(999); n != 1 {
			t.Errorf("store.Get(999) called %d times for three requests, want 1", n)
		}
		if s := a.cache.Stats(); s.Count(tiercache.EventNegativeHit) == 0 {
			t.Errorf("no negative hit counted: %+v", s)
		}

		// Creating the product clears the negative entry, everywhere.
		if got := b.do(t, "PUT", "/products/999", `{"name":"Gift card","price_cents":2500}`, nil); got != http.StatusCreated {
			t.Fatalf("PUT /products/999: status %d, want 201", got)
		}
		b.getProduct(t, 999, http.StatusOK)
		eventually(t, time.Second, "the other instance finds the new product", func() bool {
			var p catalog.Product
			return a.do(t, "GET", "/products/999", "", &p) == http.StatusOK && p.Name == "Gift card"
		})
	})

	t.Run("list loads only the missing ids, once", func(t *testing.T) {
		a.getProduct(t, 3, http.StatusOK)
		before := len(repo.getManyCalls())
		var list api.ListResponse
		if got := a.do(t, "GET", "/products?ids=3,4,5,998,4", "", &list); got != http.StatusOK {
			t.Fatalf("GET /products: status %d", got)
		}
		var ids []int64
		for _, p := range list.Products {
			ids = append(ids, p.ID)
		}
		if !slices.Equal(ids, []int64{3, 4, 5}) || !slices.Equal(list.NotFound, []int64{998}) {
			t.Errorf("GET /products?ids=3,4,5,998,4 = products %v, not found %v; want [3 4 5], [998]", ids, list.NotFound)
		}
		calls := repo.getManyCalls()[before:]
		if len(calls) != 1 || !slices.Equal(calls[0], []int64{4, 5, 998}) {
			t.Errorf("store.GetMany calls = %v, want one, for [4 5 998]", calls)
		}

		// Again, on either instance: all cached, 998 as not found.
		a.do(t, "GET", "/products?ids=3,4,5,998", "", nil)
		var fromB api.ListResponse
		b.do(t, "GET", "/products?ids=5,998,3", "", &fromB)
		if len(fromB.Products) != 2 || !slices.Equal(fromB.NotFound, []int64{998}) {
			t.Errorf("GET /products on the other instance = %+v", fromB)
		}
		if calls := repo.getManyCalls()[before:]; len(calls) != 1 {
			t.Errorf("store.GetMany calls = %v, want still one", calls)
		}
		if n := repo.getsOf(3); n != 1 {
			t.Errorf("store.Get(3) called %d times, want 1", n)
		}
	})

	t.Run("stats", func(t *testing.T) {
		var st api.StatsResponse
		if got := a.do(t, "GET", "/stats", "", &st); got != http.StatusOK {
			t.Fatalf("GET /stats: status %d", got)
		}
		if st.L1Hits == 0 || st.Loads == 0 || st.Breaker != "closed" || st.Events["invalidation_sent"] == 0 {
			t.Errorf("GET /stats = %+v", st)
		}
	})
}

func TestFlowInMemory(t *testing.T) {
	for _, mode := range []catalog.WriteMode{catalog.Invalidate, catalog.WriteThrough} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			testFlow(t, catalog.NewMemoryRepository(time.Millisecond), mode)
		})
	}
}

func TestBadRequests(t *testing.T) {
	store := catalog.NewMemoryRepository(0)
	store.Seed(catalog.SampleProducts(3)...)
	in := startInstance(t, redistest.SharedServer(t), store, cachePrefix(t), catalog.Invalidate)
	many := strings.Repeat("1,", api.MaxListIDs) + "1"
	var tooMany strings.Builder
	for i := range api.MaxListIDs + 1 {
		fmt.Fprintf(&tooMany, "%d,", i+1)
	}
	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"id not a number", "GET", "/products/abc", "", 400},
		{"id zero", "GET", "/products/0", "", 400},
		{"list without ids", "GET", "/products", "", 400},
		{"list with a bad id", "GET", "/products?ids=1,x", "", 400},
		{"list with too many ids", "GET", "/products?ids=" + strings.TrimSuffix(tooMany.String(), ","), "", 400},
		{"list with duplicates is fine", "GET", "/products?ids=" + many, "", 200},
		{"put bad JSON", "PUT", "/products/1", `{"name":`, 400},
		{"put unknown field", "PUT", "/products/1", `{"name":"x","price_cents":1,"colour":"red"}`, 400},
		{"put two values", "PUT", "/products/1", `{"name":"x","price_cents":1} {}`, 400},
		{"put empty name", "PUT", "/products/1", `{"name":" ","price_cents":1}`, 400},
		{"put negative price", "PUT", "/products/1", `{"name":"x","price_cents":-1}`, 400},
		{"wrong method", "DELETE", "/products/1", "", 405},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := in.do(t, tt.method, tt.path, tt.body, nil); got != tt.want {
				t.Errorf("%s %s: status %d, want %d", tt.method, tt.path, got, tt.want)
			}
		})
	}
	// Nothing invalid was saved.
	if p := in.getProduct(t, 1, http.StatusOK); p.Name != catalog.SampleProducts(1)[0].Name {
		t.Errorf("product 1 changed: %+v", p)
	}
}

// Every product the repository caches carries catalog.ProductsTag, which
// the commit-log follower invalidates for a TRUNCATE and for a change it
// cannot map: loaded by Get or by GetMany, or set by a write-through PUT,
// and every "not found" of Get and GetMany. Once the tag is invalidated,
// each of them is read from the store again: the products, and the ids
// that were missing and have been inserted since, behind the cache's back
// (as an insert the follower could not map would be).
func TestProductsTag(t *testing.T) {
	mem := catalog.NewMemoryRepository(0)
	mem.Seed(catalog.SampleProducts(3)...)
	store := newCountingRepo(mem)
	in := startInstance(t, redistest.SharedServer(t), store, cachePrefix(t), catalog.WriteThrough)
	in.getProduct(t, 1, http.StatusOK) // Get
	if got := in.do(t, "GET", "/products?ids=2", "", nil); got != http.StatusOK {
		t.Fatalf("GET /products?ids=2: status %d", got)
	}
	in.getProduct(t, 4, http.StatusNotFound) // a "not found" of Get
	if got := in.do(t, "GET", "/products?ids=5", "", nil); got != http.StatusOK {
		t.Fatalf("GET /products?ids=5: status %d", got) // a "not found" of GetMany
	}
	mem.Seed(catalog.SampleProducts(5)[3:]...) // 4 and 5, not through the cache
	in.getProduct(t, 4, http.StatusNotFound)
	in.getProduct(t, 5, http.StatusNotFound) // both still cached as not found
	if got := in.do(t, "PUT", "/products/3", `{"name":"Burr grinder, set","price_cents":3}`, nil); got != http.StatusOK {
		t.Fatalf("PUT /products/3: status %d", got)
	}
	for id := int64(1); id <= 3; id++ {
		in.getProduct(t, id, http.StatusOK)
	}
	if g1, g2, g3 := store.getsOf(1), store.getsOf(2), store.getsOf(3); g1 != 1 || g2 != 0 || g3 != 0 {
		t.Fatalf("store.Get calls before the invalidation: %d, %d, %d; want 1, 0, 0 (all cached)", g1, g2, g3)
	}
	if err := in.cache.InvalidateTags(t.Context(), catalog.ProductsTag); err != nil {
		t.Fatal(err)
	}
	for id := int64(1); id <= 5; id++ {
		in.getProduct(t, id, http.StatusOK)
	}
	if g1, g2, g3 := store.getsOf(1), store.getsOf(2), store.getsOf(3); g1 != 2 || g2 != 1 || g3 != 1 {
		t.Errorf("store.Get calls after invalidating %q: %d, %d, %d; want 2, 1, 1 (none still cached)", catalog.ProductsTag, g1, g2, g3)
	}
}

// With Redis gone, reads are served by the store, and a write that cannot
// reach the cache says so (503, retry) after saving.
func TestRedisDown(t *testing.T) {
	tests := []struct {
		coalesce bool
		// readBound bounds a read while Redis refuses connections: the
		// cache's read timeout (100ms) and lease timeout plus the store,
		// whether or not reads share round trips.
		readBound time.Duration
	}{
		{coalesce: false, readBound: time.Second},
		{coalesce: true, readBound: time.Second},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("coalesce=%v", tt.coalesce), func(t *testing.T) {
			t.Parallel()
			rs := redistest.StartServer(t)
			store := catalog.NewMemoryRepository(0)
			store.Seed(catalog.SampleProducts(3)...)
			cc := cacheConfig{prefix: cachePrefix(t), l1: 1000, coalesce: tt.coalesce}
			in := startInstanceWith(t, rs, store, cc, catalog.WriteThrough)
			in.getProduct(t, 1, http.StatusOK)
			rs.Stop()

			read := func(id int64, want int) {
				t.Helper()
				start := time.Now()
				if p := in.getProduct(t, id, want); want == http.StatusOK && p.ID != id {
					t.Errorf("GET /products/%d with Redis down = %+v", id, p)
				}
				d := time.Since(start)
				if d > tt.readBound {
					t.Errorf("GET /products/%d with Redis down took %v, want at most %v", id, d, tt.readBound)
				}
				t.Logf("GET /products/%d with Redis down: %v", id, d)
			}
			read(2, http.StatusOK)
			read(404, http.StatusNotFound)

			if got := in.do(t, "PUT", "/products/1", `{"name":"Cup","price_cents":1}`, nil); got != http.StatusServiceUnavailable {
				t.Errorf("PUT with Redis down: status %d, want 503", got)
			}
			// The store has the write, and this instance does not serve its
			// stale L1 copy: a failed Set or Delete drops it.
			if p, err := store.Get(t.Context(), 1); err != nil || p.Name != "Cup" {
				t.Errorf("store has %+v, %v; want the new name", p, err)
			}
			if p := in.getProduct(t, 1, http.StatusOK); p.Name != "Cup" {
				t.Errorf("GET after the PUT = %+v, want the new name", p)
			}
		})
	}
}

// runService starts run in a goroutine with args and no environment, and
// returns its address and a function that stops it and returns run's error.
func runService(t *testing.T, args ...string) (addr string, stop func() error) {
	t.Helper()
	return runServiceTo(t, t.Output(), args...)
}

// runServiceTo is runService with the service's log written to stderr.
func runServiceTo(t *testing.T, stderr io.Writer, args ...string) (addr string, stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, args, func(string) string { return "" }, stderr, func(a net.Addr) { ready <- a })
	}()
	select {
	case a := <-ready:
		addr = a.String()
	case err := <-done:
		cancel()
		t.Fatalf("run(%q) = %v before serving", args, err)
	case <-time.After(time.Minute):
		cancel()
		t.Fatal("run did not start serving within a minute")
	}
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(time.Minute):
				// Generous: shutting down waits for requests, the follower
				// and the clients, on a machine that may be busy.
				err = fmt.Errorf("run did not return within a minute of the cancel")
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return addr, stop
}

// checkServes GETs /products/1 from the service at addr.
func checkServes(t *testing.T, addr string) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	defer c.CloseIdleConnections()
	for range 2 {
		resp, err := c.Get("http://" + addr + "/products/1")
		if err != nil {
			t.Fatal(err)
		}
		var p catalog.Product
		err = json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || err != nil || p.ID != 1 {
			t.Fatalf("GET /products/1: status %d, %+v, %v", resp.StatusCode, p, err)
		}
	}
}

// run starts, serves, and shuts down cleanly (the leak check in TestMain
// catches a cache, client or embedded Redis left running).
func TestRun(t *testing.T) {
	tests := []struct {
		name string
		args func(t *testing.T) []string
	}{
		{"embedded redis", func(*testing.T) []string { return nil }},
		{"redis URL", func(t *testing.T) []string {
			return []string{"-redis", "redis://" + redistest.SharedServer(t).Addr + "/0", "-prefix", cachePrefix(t)}
		}},
		{"write-through, no L1, no read coalescing", func(*testing.T) []string {
			return []string{"-write", "write-through", "-l1", "0", "-coalesce=false"}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"-addr", "127.0.0.1:0", "-latency", "0"}, tt.args(t)...)
			addr, stop := runService(t, args...)
			checkServes(t, addr)
			if err := stop(); err != nil {
				t.Fatalf("run returned %v after the cancel, want nil", err)
			}
		})
	}
}

// Flags that do not parse, and flags that make no sense together, are
// refused before anything is connected to, with an error that wraps
// errBadFlags and names the flags.
func TestRunBadFlags(t *testing.T) {
	const dsn = "postgres://postgres@127.0.0.1:1/none" // never connected to
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want []string // in the message
	}{
		{"unknown write mode", []string{"-write", "sometimes"}, nil, []string{"-write"}},
		{"negative l1", []string{"-l1", "-1"}, nil, []string{"-l1"}},
		{"unknown flag", []string{"-colour", "red"}, nil, []string{"-colour"}},
		{"redis URL", []string{"-redis", "ftp://nowhere"}, nil, []string{"-redis"}},
		{"redis URL from the environment", nil, map[string]string{"REDIS_URL": "ftp://nowhere"}, []string{"$REDIS_URL"}},
		{"PostgreSQL DSN", []string{"-pg", "postgres://127.0.0.1:notaport/x"}, nil, []string{"-pg"}},
		{"arguments", []string{"extra"}, nil, []string{"extra"}},
		{"follow in memory", []string{"-follow"}, nil, []string{"-follow"}},
		{"write none in memory", []string{"-write", "none"}, nil, []string{"-write none"}},
		{"pg flags in memory", []string{"-pg-slot", "s", "-pg-create=false", "-pg-table", "t"}, nil, []string{"-pg-table", "-pg-slot", "-pg-create"}},
		{"follower flags with -follow=false", []string{"-pg", dsn, "-follow=false", "-pg-publication", "p", "-pg-create=false"}, nil,
			[]string{"-pg-publication", "-pg-create", "-follow=false"}},
		{"follower flags with -follow=false, DSN from the environment", []string{"-follow=false", "-pg-slot", "s"}, map[string]string{"DATABASE_URL": dsn},
			[]string{"-pg-slot", "-follow=false"}},
		{"latency with PostgreSQL", []string{"-pg", dsn, "-latency", "1ms"}, nil, []string{"-latency"}},
		{"table with a schema", []string{"-pg", dsn, "-pg-table", "shop.products"}, nil, []string{"-pg-table"}},
		{"table with a schema, -follow=false", []string{"-pg", dsn, "-follow=false", "-pg-table", "shop.products"}, nil, []string{"-pg-table"}},
		{"empty table", []string{"-pg", dsn, "-pg-table", ""}, nil, []string{"-pg-table"}},
		{"empty table, -follow=false", []string{"-pg", dsn, "-follow=false", "-pg-table", ""}, nil, []string{"-pg-table"}},
		// What the follower would refuse, refused before anything is
		// connected to (the DSN's port 1 answers nothing): the migration
		// and the seeding must not run for a service that cannot start.
		{"bad slot", []string{"-pg", dsn, "-pg-slot", "Not-A-Slot"}, nil, []string{"-pg-slot", "Not-A-Slot"}},
		{"long slot", []string{"-pg", dsn, "-pg-slot", strings.Repeat("s", 64)}, nil, []string{"-pg-slot"}},
		{"bad publication", []string{"-pg", dsn, "-pg-publication", "pub-lication"}, nil, []string{"-pg-publication", "pub-lication"}},
		{"table name too long for the follower", []string{"-pg", dsn, "-pg-table", strings.Repeat("t", 64)}, nil, []string{"-pg-table"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Bounded: were the flags accepted, the in-memory service would
			// serve until the context ends (and run return nil).
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			err := run(ctx, append([]string{"-addr", "127.0.0.1:0"}, tt.args...), func(k string) string { return tt.env[k] }, io.Discard, nil)
			if !errors.Is(err, errBadFlags) {
				t.Fatalf("run(%q) = %v, want errBadFlags", tt.args, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("run(%q) = %v, want it to name %s", tt.args, err, w)
				}
			}
		})
	}
	// -h is not an error of the flags: main exits 0 on it.
	if err := run(t.Context(), []string{"-h"}, func(string) string { return "" }, io.Discard, nil); !errors.Is(err, flag.ErrHelp) || errors.Is(err, errBadFlags) {
		t.Errorf("run -h = %v, want flag.ErrHelp alone", err)
	}
	// What makes sense is accepted: -write none on PostgreSQL without a
	// follower of its own (another instance's follows), -follow=false in
	// memory (it is off there anyway).
	for _, args := range [][]string{
		{"-pg", dsn, "-write", "none", "-follow=false"},
		{"-pg", dsn, "-pg-slot", "s", "-pg-create=false"},
		{"-pg", dsn, "-prefix", "Shop/Products: ünïcode, and a prefix far longer than a slot name may be"}, // its derived slot is valid
		{"-pg", dsn, "-follow=false", "-pg-table", "Products"},
		{"-follow=false", "-latency", "1ms"},
	} {
		if _, err := parseFlags(args, func(string) string { return "" }, io.Discard); err != nil {
			t.Errorf("parseFlags(%q) = %v, want it accepted", args, err)
		}
	}
}

func isNotFound(err error) bool { return errors.Is(err, catalog.ErrNotFound) }

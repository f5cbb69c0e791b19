package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) { MainWithLeakCheck(m) }

func TestServer(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := StartServer(t, "--maxmemory", "12345678")
	if want := "127.0.0.1:" + strconv.Itoa(s.Port); s.Addr != want {
		t.Fatalf("Addr = %q, want %q", s.Addr, want)
	}
	if !s.Alive() {
		t.Fatal("Alive() = false after start")
	}
	c := s.Client(t)

	// Extra arguments override the defaults.
	cfg, err := c.ConfigGet(ctx, "maxmemory").Result()
	if err != nil || cfg["maxmemory"] != "12345678" {
		t.Fatalf("CONFIG GET maxmemory = %v, %v; want 12345678", cfg, err)
	}

	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := c.Get(ctx, "k").Result(); err != nil || got != "v" {
		t.Fatalf("GET k = %q, %v; want v", got, err)
	}
	if err := c.Save(ctx).Err(); err != nil { // Restart must discard even saved data
		t.Fatal(err)
	}

	port := s.Port
	s.Restart(t)
	if s.Port != port || !s.Alive() {
		t.Fatalf("after Restart: port %d (want %d), alive %v", s.Port, port, s.Alive())
	}
	// The old client reconnects to the new process.
	if got, err := c.Get(ctx, "k").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after Restart = %q, %v; want redis.Nil", got, err)
	}
	if n, err := c.DBSize(ctx).Result(); err != nil || n != 0 {
		t.Fatalf("DBSIZE after Restart = %d, %v; want 0", n, err)
	}

	s.Stop()
	s.Stop() // idempotent
	if s.Alive() {
		t.Fatal("Alive() = true after Stop")
	}
	noRetry := s.Client(t, func(o *redis.Options) { o.MaxRetries, o.DialerRetries = -1, 1 })
	if err := noRetry.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded on a stopped server")
	}
	if !strings.Contains(s.LogTail(), "Ready to accept connections") {
		t.Fatalf("log tail lacks the startup line:\n%s", s.LogTail())
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	c := StartCluster(t, 3, 1)
	if len(c.Masters) != 3 || len(c.Replicas) != 3 || len(c.Addrs()) != 6 {
		t.Fatalf("got %d masters, %d replicas, %d addrs", len(c.Masters), len(c.Replicas), len(c.Addrs()))
	}
	cc := c.Client(t)

	const n = 1000
	key := func(i int) string { return "key:" + strconv.Itoa(i) }
	for i := range n {
		if err := cc.Set(ctx, key(i), i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key(i), err)
		}
	}
	for i := range n {
		got, err := cc.Get(ctx, key(i)).Int()
		if err != nil || got != i {
			t.Fatalf("GET %s = %d, %v; want %d", key(i), got, err, i)
		}
	}

	// The keys are spread over all masters, which hold them all.
	var total int64
	for _, m := range c.Masters {
		size, err := m.Client(t).DBSize(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if size == 0 {
			t.Errorf("master %s holds no keys", m.Addr)
		}
		total += size
	}
	if total != n {
		t.Errorf("masters hold %d keys in all, want %d", total, n)
	}

	// MasterForKey names the master that serves the key; the others
	// redirect to it.
	plain := make(map[*Server]*redis.Client)
	for _, m := range c.Masters {
		plain[m] = m.Client(t)
	}
	for i := range n {
		owner := c.MasterForKey(ctx, key(i))
		if plain[owner] == nil {
			t.Fatalf("MasterForKey(%s) = %v, not one of the masters", key(i), owner)
		}
		if got, err := plain[owner].Get(ctx, key(i)).Int(); err != nil || got != i {
			t.Fatalf("GET %s on its master %s = %d, %v; want %d", key(i), owner.Addr, got, err, i)
		}
		if i%10 != 0 {
			continue
		}
		for m, cl := range plain {
			if m == owner {
				continue
			}
			err := cl.Get(ctx, key(i)).Err()
			if addr, ok := redis.IsMovedError(err); !ok || addr != owner.Addr {
				t.Fatalf("GET %s on %s: err %v; want MOVED to %s", key(i), m.Addr, err, owner.Addr)
			}
		}
	}

	// Each replica receives its master's keys.
	for i, r := range c.Replicas {
		m := c.Masters[i]
		want, err := plain[m].DBSize(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		rc := r.Client(t)
		for {
			got, err := rc.DBSize(ctx).Result()
			if err == nil && got == want {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("replica %s has %d keys (%v), master %s has %d", r.Addr, got, err, m.Addr, want)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}

	if err := c.FlushAll(ctx); err != nil {
		t.Fatal(err)
	}
	for m, cl := range plain {
		if size, err := cl.DBSize(ctx).Result(); err != nil || size != 0 {
			t.Errorf("DBSIZE on %s after FlushAll = %d, %v; want 0", m.Addr, size, err)
		}
	}
}

func TestForEach(t *testing.T) {
	t.Parallel()
	var names []string
	ForEach(t, func(t *testing.T, tg Target) {
		names = append(names, tg.Name) // subtests run in order before any t.Parallel
		t.Parallel()
		switch tg.Name {
		case "single":
			if tg.Single == nil || tg.Cluster != nil || tg.Single != SharedServer(t) {
				t.Fatalf("single target: %+v", tg)
			}
		case "cluster":
			if tg.Cluster == nil || tg.Single != nil || tg.Cluster != SharedCluster(t) {
				t.Fatalf("cluster target: %+v", tg)
			}
		default:
			t.Fatalf("unexpected target %q", tg.Name)
		}

		ctx := context.Background()
		cl := tg.NewClient(t)
		p := UniquePrefix(t)
		for i := range 100 {
			if err := cl.Set(ctx, p+strconv.Itoa(i), i, 0).Err(); err != nil {
				t.Fatal(err)
			}
		}
		for i := range 100 {
			if got, err := cl.Get(ctx, p+strconv.Itoa(i)).Int(); err != nil || got != i {
				t.Fatalf("GET %s%d = %d, %v", p, i, got, err)
			}
		}
	})
	if fmt.Sprint(names) != "[single cluster]" {
		t.Errorf("ForEach ran %v, want [single cluster]", names)
	}
}

func TestUniquePrefix(t *testing.T) {
	t.Parallel()
	seen := make(map[string]bool)
	for range 1000 {
		p := UniquePrefix(t)
		if seen[p] || strings.ContainsAny(p, "{}") || !strings.HasSuffix(p, ":") || len(p) > 24 {
			t.Fatalf("bad or repeated prefix %q", p)
		}
		seen[p] = true
	}
}

func TestRequireServer(t *testing.T) {
	t.Parallel()
	if bin := RequireServer(t); !strings.HasSuffix(bin, "redis-server") {
		t.Fatalf("RequireServer = %q", bin)
	}
}

// TestStartPortTaken checks that a start on a taken port is reported as
// errAddrInUse (which launch retries on) with the server's log.
func TestStartPortTaken(t *testing.T) {
	t.Parallel()
	bin := RequireServer(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	s := &Server{Addr: l.Addr().String(), Port: port, bin: bin, dir: t.TempDir()}
	s.mu.Lock()
	err = s.startLocked()
	s.mu.Unlock()
	if !errors.Is(err, errAddrInUse) || !strings.Contains(err.Error(), "--- log:") {
		t.Fatalf("start on a taken port: %v; want errAddrInUse with the log", err)
	}
	if s.Alive() {
		t.Fatal("Alive() after a failed start")
	}
}

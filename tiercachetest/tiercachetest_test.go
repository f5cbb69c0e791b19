package tiercachetest

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
)

// MainWithLeakCheck also skips the examples when redis-server is missing
// (outside CI), since an Example cannot skip itself.
func TestMain(m *testing.M) { redistest.MainWithLeakCheck(m) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// getOrLoad checks that a cache over rdb loads a key once and then serves
// it from Redis, to another cache instance too.
func getOrLoad(t *testing.T, rdb redis.UniversalClient) {
	t.Helper()
	ctx := testCtx(t)
	loads := 0
	load := func(context.Context) (string, error) { loads++; return "v", nil }
	for i := range 2 {
		c, err := tiercache.New[string](rdb, tiercache.WithPrefix("t"),
			tiercache.WithReadTimeout(5*time.Second), tiercache.WithWriteTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for _, key := range []string{"a", "b", "c", "d"} {
			if v, err := c.GetOrLoad(ctx, key, load); err != nil || v != "v" {
				t.Fatalf("instance %d: GetOrLoad(%q) = %q, %v; want v", i, key, v, err)
			}
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if loads != 4 {
		t.Fatalf("loader ran %d times, want 4 (once per key)", loads)
	}
}

func TestRedis(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	rdb := Redis(t, func(o *redis.Options) { o.DB = 2 })
	if o := rdb.Options(); !o.ContextTimeoutEnabled || o.DB != 2 {
		t.Fatalf("options: ContextTimeoutEnabled %v, DB %d; want true, 2", o.ContextTimeoutEnabled, o.DB)
	}
	// The server is private: it starts empty, in every database.
	info, err := rdb.Info(ctx, "keyspace").Result()
	if err != nil || strings.Contains(info, "keys=") {
		t.Fatalf("INFO keyspace of a new server = %q, %v; want no keys", info, err)
	}
	getOrLoad(t, rdb)

	// Two calls start two servers.
	other := Redis(t)
	if other.Options().Addr == rdb.Options().Addr {
		t.Fatalf("two Redis calls share %s", rdb.Options().Addr)
	}
}

func TestCluster(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	rdb := Cluster(t, 3, func(o *redis.ClusterOptions) { o.MaxRedirects = 7 })
	if o := rdb.Options(); !o.ContextTimeoutEnabled || o.MaxRedirects != 7 || len(o.Addrs) != 3 {
		t.Fatalf("options: ContextTimeoutEnabled %v, MaxRedirects %d, %d addrs; want true, 7, 3",
			o.ContextTimeoutEnabled, o.MaxRedirects, len(o.Addrs))
	}
	slots, err := rdb.ClusterSlots(ctx).Result()
	if err != nil || len(slots) != 3 {
		t.Fatalf("CLUSTER SLOTS = %v, %v; want 3 ranges", slots, err)
	}
	getOrLoad(t, rdb)
}

func TestServerStopRestart(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	s := StartServer(t)
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") {
		t.Fatalf("Addr() = %q", s.Addr())
	}
	rdb := s.Client(t, func(o *redis.Options) { o.MaxRetries, o.DialerRetries = -1, 1 })
	if !rdb.Options().ContextTimeoutEnabled {
		t.Fatal("ContextTimeoutEnabled is off")
	}
	if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}

	s.Stop()
	s.Stop() // idempotent
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded on a stopped server")
	}

	addr := s.Addr()
	s.Restart(t)
	if s.Addr() != addr {
		t.Fatalf("Addr() after Restart = %q, want %q", s.Addr(), addr)
	}
	// The client reconnects; the data is gone.
	if v, err := rdb.Get(ctx, "k").Result(); !errors.Is(err, redis.Nil) {
		t.Fatalf("GET k after Restart = %q, %v; want redis.Nil", v, err)
	}
}

func TestStart(t *testing.T) {
	t.Parallel()
	requireServer(t) // Start itself does not skip
	ctx := testCtx(t)
	addr, stop, err := Start()
	if err != nil {
		t.Fatal(err)
	}
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialerRetries: 1})
	defer rdb.Close()
	cfg, err := rdb.ConfigGet(ctx, "dir").Result()
	if err != nil {
		t.Fatal(err)
	}
	dir := cfg["dir"]
	if _, err := os.Stat(dir); err != nil {
		t.Fatalf("server directory: %v", err)
	}

	stop()
	stop() // idempotent
	if err := rdb.Ping(ctx).Err(); err == nil {
		t.Fatal("PING succeeded after stop")
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("server directory %s after stop: %v; want it removed", dir, err)
	}
}

// TestNoServer checks what happens without redis-server on PATH. It sets
// environment variables, so it cannot run in parallel.
func TestNoServer(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	starters := map[string]func(testing.TB){
		"Redis":       func(tb testing.TB) { Redis(tb) },
		"Cluster":     func(tb testing.TB) { Cluster(tb, 1) },
		"StartServer": func(tb testing.TB) { StartServer(tb) },
	}
	for name, start := range starters {
		t.Setenv("CI", "")
		tb := newBareTB(name)
		err := tb.do(func() { start(tb) })
		if !tb.Skipped() || tb.Failed() || err == nil ||
			!strings.Contains(err.Error(), "not on PATH") ||
			!strings.Contains(err.Error(), "apt-get install redis-server") {
			t.Errorf("%s without CI: skipped %v, failed %v, message %v; want a skip saying how to install redis-server",
				name, tb.Skipped(), tb.Failed(), err)
		}
		tb.finish()

		t.Setenv("CI", "true")
		tb = newBareTB(name)
		err = tb.do(func() { start(tb) })
		if tb.Skipped() || !tb.Failed() || err == nil || !strings.Contains(err.Error(), "CI is set") {
			t.Errorf("%s with CI: skipped %v, failed %v, message %v; want a failure", name, tb.Skipped(), tb.Failed(), err)
		}
		tb.finish()
	}

	addr, stop, err := Start()
	if !errors.Is(err, exec.ErrNotFound) || addr != "" || stop != nil {
		t.Errorf("Start() = %q, %v, %v; want an error wrapping exec.ErrNotFound", addr, stop != nil, err)
	}
}

// TestBrokenServer checks that a redis-server that fails to start is an
// error of Start, and leaves no temporary directory behind.
func TestBrokenServer(t *testing.T) {
	bin := t.TempDir()
	script := "#!/bin/sh\necho 'broken on purpose'\nexit 1\n"
	if err := os.WriteFile(filepath.Join(bin, "redis-server"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)

	addr, stop, err := Start()
	if err == nil || addr != "" || stop != nil || !strings.Contains(err.Error(), "broken on purpose") {
		t.Errorf("Start() = %q, %v, %v; want an error with the server's log", addr, stop != nil, err)
	}
	if left, _ := os.ReadDir(tmp); len(left) != 0 {
		t.Errorf("Start left %v in TMPDIR", left)
	}
}

// TestBareTBMethods calls every exported method of testing.TB on a bareTB:
// none may reach the embedded nil interface (a Go release adding a method
// to testing.TB would need bareTB to define it).
func TestBareTBMethods(t *testing.T) {
	tbType := reflect.TypeFor[testing.TB]()
	tb := newBareTB("methods")
	defer tb.finish()
	v := reflect.ValueOf(tb)
	for i := range tbType.NumMethod() {
		m := tbType.Method(i)
		if !m.IsExported() {
			continue
		}
		args := make([]reflect.Value, 0, m.Type.NumIn())
		for j := range m.Type.NumIn() {
			in := m.Type.In(j)
			if m.Type.IsVariadic() && j == m.Type.NumIn()-1 {
				break
			}
			if in.Kind() == reflect.Func {
				args = append(args, reflect.MakeFunc(in, func([]reflect.Value) []reflect.Value { return nil }))
				continue
			}
			args = append(args, reflect.Zero(in))
		}
		func() {
			defer func() {
				if r := recover(); r != nil && r != errAbort {
					t.Errorf("%s panicked: %v", m.Name, r)
				}
			}()
			v.MethodByName(m.Name).Call(args)
		}()
	}
}

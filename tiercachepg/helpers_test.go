package tiercachepg_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg"
	"github.com/tiercache/tiercache/tiercachepg/pgtest"
)

// pgEnv is a private PostgreSQL server and a pool of connections to it.
type pgEnv struct {
	srv  *pgtest.Server
	dsn  string
	pool *pgxpool.Pool
}

func newPG(t testing.TB, settings ...string) *pgEnv {
	t.Helper()
	srv := pgtest.Start(t, settings...)
	pool, err := pgxpool.New(context.Background(), srv.DSN("")+"&pool_max_conns=16")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return &pgEnv{srv: srv, dsn: srv.DSN(""), pool: pool}
}

func (e *pgEnv) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// lsn is the server's current WAL position: every commit that returned
// before the call is behind it.
func (e *pgEnv) lsn(t testing.TB) tiercachepg.LSN {
	t.Helper()
	var s string
	if err := e.pool.QueryRow(context.Background(), "SELECT pg_current_wal_lsn()::text").Scan(&s); err != nil {
		t.Fatal(err)
	}
	l, err := pglogrepl.ParseLSN(s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// slotConfirmed is the slot's confirmed_flush_lsn as the server has it.
func (e *pgEnv) slotConfirmed(t testing.TB, slot string) tiercachepg.LSN {
	t.Helper()
	var s *string
	err := e.pool.QueryRow(context.Background(),
		"SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&s)
	if err != nil || s == nil {
		t.Fatalf("slot %s: %v", slot, err)
	}
	l, err := pglogrepl.ParseLSN(*s)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// version reads a row's version column; tiercache.ErrNotFound if none.
func (e *pgEnv) version(ctx context.Context, tbl string, id int) (int, error) {
	var v int
	err := e.pool.QueryRow(ctx, "SELECT version FROM "+tbl+" WHERE id = $1", id).Scan(&v)
	if err != nil && strings.Contains(err.Error(), "no rows") {
		return 0, tiercache.ErrNotFound
	}
	return v, err
}

// testLogger logs to the test when TIERCACHEPG_LOG is set.
func testLogger(t testing.TB) *slog.Logger {
	if os.Getenv("TIERCACHEPG_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// running is a follower whose Run is in a goroutine of the test.
type running struct {
	f    *tiercachepg.Follower
	errc chan error
}

// startFollower creates and runs a follower; it is stopped when the test
// ends unless stopped before.
func startFollower(t testing.TB, dsn string, opts tiercachepg.Options) *running {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	f, err := tiercachepg.New(dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	r := &running{f: f, errc: make(chan error, 1)}
	go func() { r.errc <- f.Run(context.Background()) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop closes the follower and checks that Run returned nil.
func (r *running) stop(t testing.TB) {
	t.Helper()
	if r.errc == nil {
		return
	}
	_ = r.f.Close()
	if err := <-r.errc; err != nil {
		t.Errorf("Run: %v", err)
	}
	r.errc = nil
}

// waitUntil polls cond until it holds. It has no deadline of its own: the
// test binary's -timeout is the only bound, so a slow machine is never a
// failure.
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	start := time.Now()
	next := 30 * time.Second
	for !cond() {
		if time.Since(start) > next {
			t.Logf("still waiting for %s after %v", what, time.Since(start).Round(time.Second))
			next *= 2
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitConfirmed waits until the follower's confirmed position reaches lsn.
func waitConfirmed(t testing.TB, f *tiercachepg.Follower, lsn tiercachepg.LSN) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("confirmed LSN %s", lsn), func() bool { return f.Stats().ConfirmedLSN >= lsn })
}

// newCache returns a cache of ints over rdb under prefix, closed when the
// test ends.
func newCache(t testing.TB, rdb redis.UniversalClient, prefix string, opts ...tiercache.Option) *tiercache.Cache[int] {
	t.Helper()
	c, err := tiercache.New[int](rdb, append([]tiercache.Option{
		tiercache.WithPrefix(prefix), tiercache.WithDefaultTTL(time.Hour),
	}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// prefix is a cache prefix unique to this test on a shared Redis.
func prefix(t testing.TB) string { return strings.TrimSuffix(redistest.UniquePrefix(t), ":") }

// cached reports what c holds for key without loading: the value, or
// found false on a miss.
func cached(t testing.TB, c *tiercache.Cache[int], key string) (v int, found bool) {
	t.Helper()
	v, err := c.Get(context.Background(), key)
	switch {
	case err == nil:
		return v, true
	case errors.Is(err, tiercache.ErrNotFound):
		return -1, true // a cached "not found"
	case errors.Is(err, tiercache.ErrMiss):
		return 0, false
	}
	t.Fatalf("Get %s: %v", key, err)
	return 0, false
}

// ctxTimeout sets ContextTimeoutEnabled on a go-redis client, as tiercache
// asks.
func ctxTimeout(o *redis.Options) { o.ContextTimeoutEnabled = true }

// logCount is a slog handler that counts the records whose message
// contains a string, and passes every record on to the test's logger.
type logCount struct {
	sub  string
	n    *atomic.Int64
	next slog.Handler
}

// countLogs returns a logger for Options.Logger and the count of its
// records whose message contains sub.
func countLogs(t testing.TB, sub string) (*slog.Logger, *atomic.Int64) {
	n := new(atomic.Int64)
	next := slog.DiscardHandler
	if l := testLogger(t); l != nil {
		next = l.Handler()
	}
	return slog.New(logCount{sub: sub, n: n, next: next}), n
}

func (h logCount) Enabled(context.Context, slog.Level) bool { return true }

func (h logCount) Handle(ctx context.Context, r slog.Record) error {
	if strings.Contains(r.Message, h.sub) {
		h.n.Add(1)
	}
	if h.next.Enabled(ctx, r.Level) {
		return h.next.Handle(ctx, r)
	}
	return nil
}

func (h logCount) WithAttrs(as []slog.Attr) slog.Handler {
	return logCount{sub: h.sub, n: h.n, next: h.next.WithAttrs(as)}
}

func (h logCount) WithGroup(name string) slog.Handler {
	return logCount{sub: h.sub, n: h.n, next: h.next.WithGroup(name)}
}

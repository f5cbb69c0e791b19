package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/tiercache/tiercache/tiercachepg/pgtest"

	"github.com/tiercache/tiercache/examples/catalog/internal/catalog"
	"github.com/tiercache/tiercache/internal/redistest"
)

// testPG starts a private PostgreSQL server for the test (pgtest: initdb
// and postgres from the machine's packages, wal_level=logical, a free
// loopback port, removed when the test ends), with the extra server
// settings given, and returns its DSN and a pool to it, closed when the
// test ends. Without PostgreSQL the test is
// skipped, or fails when CI is set.
func testPG(t *testing.T, settings ...string) (string, *pgxpool.Pool) {
	t.Helper()
	srv := pgtest.Start(t, settings...)
	dsn := srv.DSN("")
	pool, err := pgxpool.New(t.Context(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close) // before the server stops: cleanups run last-in, first-out
	return dsn, pool
}

// testTable returns a table name of the test's own, dropped when the test
// ends (before the pool is closed: cleanups run last-in, first-out).
func testTable(t *testing.T, pool *pgxpool.Pool) string {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	name := "catalog_test_" + hex.EncodeToString(b[:])
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := pool.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
			t.Errorf("dropping %s: %v", name, err)
		}
	})
	return name
}

// The cache flow of TestFlowInMemory, over a real PostgreSQL table.
func TestFlowPostgres(t *testing.T) {
	_, pool := testPG(t)
	repo := catalog.NewPostgresRepository(pool, testTable(t, pool))
	if err := repo.Migrate(t.Context()); err != nil {
		t.Fatal(err)
	}
	testFlow(t, repo, catalog.Invalidate)
}

// The repository's own contract, which the flow does not pin down.
func TestPostgresRepository(t *testing.T) {
	_, pool := testPG(t)
	repo := catalog.NewPostgresRepository(pool, testTable(t, pool))
	ctx := t.Context()
	// Instances that start together migrate together.
	errs := make(chan error, 4)
	for range cap(errs) {
		go func() { errs <- repo.Migrate(ctx) }()
	}
	for range cap(errs) {
		if err := <-errs; err != nil {
			t.Fatalf("concurrent Migrate: %v", err)
		}
	}
	if err := repo.Seed(ctx, catalog.SampleProducts(3)...); err != nil {
		t.Fatal(err)
	}

	saved, created, err := repo.Put(ctx, catalog.Product{ID: 2, Name: "Kettle", PriceCents: 10})
	if err != nil || created || saved.Name != "Kettle" || saved.UpdatedAt.IsZero() {
		t.Fatalf("Put(existing) = %+v, created %v, %v", saved, created, err)
	}
	// Seeding again keeps what is there.
	if err := repo.Seed(ctx, catalog.SampleProducts(3)...); err != nil {
		t.Fatal(err)
	}
	if got, err := repo.Get(ctx, 2); err != nil || got != saved {
		t.Errorf("Get(2) = %+v, %v; want %+v", got, err, saved)
	}
	if _, created, err := repo.Put(ctx, catalog.Product{ID: 7, Name: "New", PriceCents: 1}); err != nil || !created {
		t.Errorf("Put(new) created = %v, %v; want true", created, err)
	}
	if _, err := repo.Get(ctx, 8); !isNotFound(err) {
		t.Errorf("Get(8) error = %v, want ErrNotFound", err)
	}
	got, err := repo.GetMany(ctx, []int64{1, 2, 7, 8})
	if err != nil || len(got) != 3 || got[2] != saved || got[7].Name != "New" {
		t.Errorf("GetMany = %+v, %v", got, err)
	}
	if _, _, err := repo.Put(ctx, catalog.Product{ID: 9, Name: "x", PriceCents: -1}); err == nil {
		t.Error("Put with a negative price succeeded")
	}

	// The row version only grows, in commit order: an update sets it above
	// the version it replaces, even one stamped later than this
	// transaction's start (a transaction that started after ours and
	// committed first, forced here with a stamp in the future).
	ahead := saved.UpdatedAt.Add(time.Hour)
	schema, table, err := repo.Table(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "UPDATE "+pgx.Identifier{schema, table}.Sanitize()+" SET updated_at = $1 WHERE id = 2", ahead); err != nil {
		t.Fatal(err)
	}
	if next, _, err := repo.Put(ctx, catalog.Product{ID: 2, Name: "Kettle 2", PriceCents: 11}); err != nil || !next.UpdatedAt.After(ahead) {
		t.Errorf("Put after a version stamped %v: version %v, %v; want a later one", ahead, next.UpdatedAt, err)
	}
}

// The command starts on PostgreSQL, creates and seeds its table, and
// serves; without -follow=false it follows the commit log, and the
// follow_test.go tests cover that.
func TestRunPostgres(t *testing.T) {
	dsn, pool := testPG(t)
	table := testTable(t, pool)
	addr, stop := runService(t, "-addr", "127.0.0.1:0", "-pg", dsn, "-pg-table", table, "-seed", "5",
		"-redis", "redis://"+redistest.SharedServer(t).Addr+"/0", "-prefix", cachePrefix(t), "-follow=false")
	checkServes(t, addr)
	if err := stop(); err != nil {
		t.Fatalf("run returned %v after the cancel, want nil", err)
	}
	var n int
	if err := pool.QueryRow(t.Context(), "SELECT count(*) FROM "+pgx.Identifier{table}.Sanitize()).Scan(&n); err != nil || n != 5 {
		t.Errorf("table has %d rows, %v; want the 5 seeded", n, err)
	}
}

package tiercachepg_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg"
)

// TestSetupErrors: a slot or publication that is missing or wrong, and a
// role without the REPLICATION attribute, make Run return at once with the
// matching sentinel error, instead of following nothing.
func TestSetupErrors(t *testing.T) {
	pg := newPG(t)
	m := productsTable(t, pg, "items", 1)
	pg.exec(t, `CREATE TABLE other (id int PRIMARY KEY)`)
	pg.exec(t, `CREATE PUBLICATION pub FOR TABLE items`)
	pg.exec(t, `CREATE PUBLICATION nodelete FOR TABLE items WITH (publish = 'insert, update')`)
	pg.exec(t, `SELECT pg_create_logical_replication_slot('slot', 'pgoutput')`)
	pg.exec(t, `SELECT pg_create_logical_replication_slot('decoding', 'test_decoding')`)
	pg.exec(t, `CREATE ROLE plain LOGIN`)
	pg.exec(t, `CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id)`)
	pg.exec(t, `CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (1000)`)
	pg.exec(t, `CREATE PUBLICATION byleaf FOR TABLE parted`)
	pg.exec(t, `CREATE PUBLICATION filtered FOR TABLE items WHERE (id < 5)`)
	noop := func(context.Context, tiercache.Invalidation) error { return nil }

	for _, tc := range []struct {
		name  string
		dsn   string
		opts  tiercachepg.Options
		want  error
		words string
	}{
		{"slot missing", pg.dsn, tiercachepg.Options{Slot: "nope", Publication: "pub", Tables: []string{"items"}},
			tiercachepg.ErrSlotNotFound, "pg_create_logical_replication_slot"},
		{"publication missing", pg.dsn, tiercachepg.Options{Slot: "slot", Publication: "nope", Tables: []string{"items"}},
			tiercachepg.ErrPublication, "CREATE PUBLICATION nope FOR TABLE"},
		{"table not published", pg.dsn, tiercachepg.Options{Slot: "slot", Publication: "pub", Tables: []string{"items", "other"}},
			tiercachepg.ErrPublication, `ALTER PUBLICATION pub ADD TABLE "public"."other"`},
		{"deletes not published", pg.dsn, tiercachepg.Options{Slot: "slot", Publication: "nodelete", Tables: []string{"items"}},
			tiercachepg.ErrPublication, "deletes"},
		{"not a pgoutput slot", pg.dsn, tiercachepg.Options{Slot: "decoding", Publication: "pub", Tables: []string{"items"}},
			tiercachepg.ErrSlotUnusable, "test_decoding"},
		{"no such table to create a publication of", pg.dsn,
			tiercachepg.Options{Slot: "slot", Publication: "fresh", Tables: []string{"missing"}, Create: true},
			tiercachepg.ErrPublication, "missing"},
		{"partitioned table published by partition", pg.dsn,
			tiercachepg.Options{Slot: "slot", Publication: "byleaf", Tables: []string{"parted"}},
			tiercachepg.ErrPublication, "ALTER PUBLICATION byleaf SET (publish_via_partition_root = true)"},
		{"row filter", pg.dsn, tiercachepg.Options{Slot: "slot", Publication: "filtered", Tables: []string{"items"}},
			tiercachepg.ErrPublication, "row filter"},
		{"a setting the server does not know in the DSN", pg.dsn + "&no_such_setting=1",
			tiercachepg.Options{Slot: "slot", Publication: "pub", Tables: []string{"items"}},
			tiercachepg.ErrInvalidOption, "no_such_setting"},
		{"role without REPLICATION", pg.srv.DSN("plain"), tiercachepg.Options{Slot: "slot", Publication: "pub", Tables: []string{"items"}},
			tiercachepg.ErrPermission, "replication"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Map, tc.opts.Invalidate, tc.opts.Logger = m, noop, testLogger(t)
			f, err := tiercachepg.New(tc.dsn, tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			// Bounded: a set-up that is wrongly accepted follows for ever.
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			err = f.Run(ctx)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("Run = %v; want %v mentioning %q", err, tc.want, tc.words)
			}
		})
	}
}

// TestMinimalRole: the privileges docs/COMMITLOG.md lists are enough: a
// role with LOGIN REPLICATION and nothing else follows a slot and a
// publication made by the tables' owner, and reads the slot's lag.
func TestMinimalRole(t *testing.T) {
	pg := newPG(t)
	m := productsTable(t, pg, "items", 3)
	pg.exec(t, `CREATE PUBLICATION pub FOR TABLE items`)
	pg.exec(t, `SELECT pg_create_logical_replication_slot('slot', 'pgoutput')`)
	pg.exec(t, `CREATE ROLE follower LOGIN REPLICATION`)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	ctx := context.Background()
	if err := c.Set(ctx, "items:2", 0); err != nil {
		t.Fatal(err)
	}
	r := startFollower(t, pg.srv.DSN("follower"), tiercachepg.Options{
		Slot: "slot", Publication: "pub", Tables: []string{"items"},
		Map: m, Invalidate: c.Invalidate, StatusInterval: 20 * time.Millisecond, LagInterval: 20 * time.Millisecond,
	})
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 2`)
	waitConfirmed(t, r.f, pg.lsn(t))
	if _, found := cached(t, c, "items:2"); found {
		t.Error("items:2 still cached")
	}
	waitUntil(t, "the slot's lag read", func() bool { return r.f.Stats().SlotLagBytes >= 0 })
}

// TestLifecycle: Run twice at once, Run after Close, Close twice, and a
// Run stopped by its context, with a database that cannot be reached
// (Run retries the connection until stopped).
func TestLifecycle(t *testing.T) {
	m, err := tiercachepg.KeyPattern(tiercachepg.Table{Name: "items", Key: "items:{id}"})
	if err != nil {
		t.Fatal(err)
	}
	opts := tiercachepg.Options{
		Slot: "slot", Publication: "pub", Tables: []string{"items"}, Map: m,
		Invalidate: func(context.Context, tiercache.Invalidation) error { return nil },
		MaxBackoff: 10 * time.Millisecond,
	}
	dsn := "postgres://nobody@127.0.0.1:1/db?connect_timeout=1"

	f, err := tiercachepg.New(dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() { errc <- f.Run(context.Background()) }()
	waitUntil(t, "Run to retry", func() bool { return f.Stats().StreamErrors > 0 })
	if err := f.Run(context.Background()); !errors.Is(err, tiercachepg.ErrRunning) {
		t.Errorf("second Run = %v, want ErrRunning", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if err := <-errc; err != nil {
		t.Errorf("Run after Close = %v, want nil", err)
	}
	if s := f.Stats(); s.Running || s.Streaming {
		t.Errorf("stats after Close: %+v", s)
	}
	if err := f.Run(context.Background()); !errors.Is(err, tiercachepg.ErrClosed) {
		t.Errorf("Run after Close = %v, want ErrClosed", err)
	}
	if err := f.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}

	// Stopped by its context, Run returns nil and may be called again.
	f2, err := tiercachepg.New(dsn, opts)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		ctx, cancel := context.WithCancel(context.Background())
		go func() { errc <- f2.Run(ctx) }()
		waitUntil(t, "Run to start", func() bool { return f2.Stats().Running })
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Run with its context cancelled = %v, want nil", err)
		}
	}
	_ = f2.Close()
}

// TestPoolDSN: the DSN of a pgxpool, with parameters of pgx and pgxpool
// in it, will do for the follower; they are not sent to the server.
func TestPoolDSN(t *testing.T) {
	pg := newPG(t)
	m := productsTable(t, pg, "items", 3)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	if err := c.Set(context.Background(), "items:2", 0); err != nil {
		t.Fatal(err)
	}
	dsn := pg.dsn + "&pool_max_conns=4&default_query_exec_mode=exec&statement_cache_capacity=10"
	r := startFollower(t, dsn, tiercachepg.Options{
		Slot: "slot", Publication: "pub", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: c.Invalidate, StatusInterval: 20 * time.Millisecond,
	})
	waitUntilStreaming(t, r)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 2`)
	waitConfirmed(t, r.f, pg.lsn(t))
	if _, found := cached(t, c, "items:2"); found {
		t.Error("items:2 still cached")
	}
}

// TestPartitionedTable: with Create, a partitioned table's changes come
// under its own name (publish_via_partition_root) and are invalidated,
// not passed over as changes of a partition nobody follows.
func TestPartitionedTable(t *testing.T) {
	pg := newPG(t)
	pg.exec(t, `CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL) PARTITION BY RANGE (id)`)
	pg.exec(t, `CREATE TABLE items_1 PARTITION OF items FOR VALUES FROM (0) TO (1000)`)
	pg.exec(t, `INSERT INTO items VALUES (1, 0)`)
	m, err := tiercachepg.KeyPattern(tiercachepg.Table{Name: "items", Key: "items:{id}"})
	if err != nil {
		t.Fatal(err)
	}
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	if err := c.Set(context.Background(), "items:1", 0); err != nil {
		t.Fatal(err)
	}
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "slot", Publication: "pub", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: c.Invalidate, StatusInterval: 20 * time.Millisecond,
	})
	waitUntilStreaming(t, r)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 1`)
	waitConfirmed(t, r.f, pg.lsn(t))
	if _, found := cached(t, c, "items:1"); found {
		t.Errorf("items:1 still cached (ignored changes %d)", r.f.Stats().Ignored)
	}
}

// TestSlotDroppedWhileFollowing: with Create, the slot is created only
// before the first stream; one that is dropped after (here by hand, as a
// failover would lose it) ends Run with ErrSlotNotFound instead of being
// made anew, silently after the changes committed meanwhile.
func TestSlotDroppedWhileFollowing(t *testing.T) {
	pg := newPG(t)
	m := productsTable(t, pg, "items", 3)
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "slot", Publication: "pub", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: func(context.Context, tiercache.Invalidation) error { return nil },
		StatusInterval: 20 * time.Millisecond,
	})
	waitUntilStreaming(t, r)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 2`)
	waitConfirmed(t, r.f, pg.lsn(t))
	// The follower reconnects 50ms after its walsender ends: drop the slot
	// in such a gap.
	waitUntil(t, "the slot dropped", func() bool {
		pg.exec(t, `SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = 'slot' AND active_pid IS NOT NULL`)
		_, err := pg.pool.Exec(context.Background(), `SELECT pg_drop_replication_slot('slot')`)
		return err == nil
	})
	select {
	case err := <-r.errc:
		r.errc = nil
		if !errors.Is(err, tiercachepg.ErrSlotNotFound) {
			t.Fatalf("Run = %v, want ErrSlotNotFound", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Run still running 30s after its slot was dropped (slot recreated: %v)", slotExists(t, pg, "slot"))
	}
}

// Run "returns an error only when it cannot go on: ... the publication is
// missing" (follower.go). A publication dropped under a live slot and then
// re-created, as ErrPublication's message tells the operator, is still
// missing for the changes written while it was gone: the walsender fails
// with 42704 on every attempt. Run used to retry for ever (never returning,
// confirming nothing, the WAL piling up); it now returns ErrPublication.
func TestPublicationRecreatedUnderTheSlot(t *testing.T) {
	pg := newPG(t)
	m := productsTable(t, pg, "items", 3)
	pg.exec(t, `CREATE PUBLICATION pub FOR TABLE items`)
	pg.exec(t, `SELECT pg_create_logical_replication_slot('slot', 'pgoutput')`)
	opts := tiercachepg.Options{
		Slot: "slot", Publication: "pub", Tables: []string{"items"},
		Map: m, Invalidate: func(context.Context, tiercache.Invalidation) error { return nil },
		StatusInterval: 20 * time.Millisecond, MaxBackoff: 50 * time.Millisecond,
	}
	r := startFollower(t, pg.dsn, opts)
	waitUntilStreaming(t, r)
	pg.exec(t, `DROP PUBLICATION pub`)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 2`)
	err := redistest.Receive(t, r.errc, 30*time.Second, "the first follower's Run to return after its publication was dropped")
	r.errc = nil
	if !errors.Is(err, tiercachepg.ErrPublication) {
		t.Fatalf("first follower: Run = %v, want ErrPublication", err)
	}
	pg.exec(t, `CREATE PUBLICATION pub FOR TABLE items`)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 3`)
	r2 := startFollower(t, pg.dsn, opts)
	returned, err := returnedOr(t, r2, "Run to return, or 20 failed streams", func() bool { return r2.f.Stats().StreamErrors >= 20 })
	if !returned {
		t.Fatalf("Run retried %d failed streams for a publication the slot cannot see, instead of returning", r2.f.Stats().StreamErrors)
	}
	if !errors.Is(err, tiercachepg.ErrPublication) {
		t.Fatalf("second follower: Run = %v, want ErrPublication", err)
	}
}

// waitUntilStreaming waits until r streams, failing the test if Run
// returns first.
func waitUntilStreaming(t testing.TB, r *running) {
	t.Helper()
	if returned, err := returnedOr(t, r, "streaming", func() bool { return r.f.Stats().Streaming }); returned {
		t.Fatalf("Run = %v before streaming", err)
	}
}

// returnedOr waits until r's Run returns (true, and its error) or cond
// holds (false).
func returnedOr(t testing.TB, r *running, what string, cond func() bool) (returned bool, err error) {
	t.Helper()
	waitUntil(t, what, func() bool {
		select {
		case err = <-r.errc:
			r.errc, returned = nil, true
			return true
		default:
			return cond()
		}
	})
	return returned, err
}

func slotExists(t testing.TB, pg *pgEnv, slot string) bool {
	var n int
	if err := pg.pool.QueryRow(context.Background(), `SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1`, slot).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n > 0
}

// TestColumnListWarns: a publication with a column list on a followed
// table is accepted, with a warning: Map sees only the listed columns.
func TestColumnListWarns(t *testing.T) {
	pg := newPG(t)
	pg.exec(t, `CREATE TABLE items (id int PRIMARY KEY, version int NOT NULL, note text)`)
	pg.exec(t, `CREATE PUBLICATION pub FOR TABLE items (id, version)`)
	m, err := tiercachepg.KeyPattern(tiercachepg.Table{Name: "items", Key: "items:{id}"})
	if err != nil {
		t.Fatal(err)
	}
	logger, warnings := countLogs(t, "column list")
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "slot", Publication: "pub", Tables: []string{"items"}, Create: true, Logger: logger,
		Map: m, Invalidate: func(context.Context, tiercache.Invalidation) error { return nil },
	})
	waitUntilStreaming(t, r)
	if warnings.Load() == 0 {
		t.Error("no warning about the column list")
	}
}

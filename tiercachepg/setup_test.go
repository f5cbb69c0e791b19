package tiercachepg_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
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
	pg.exec(t, `CREATE TABLE base (id int PRIMARY KEY)`)
	pg.exec(t, `CREATE TABLE derived (extra int) INHERITS (base)`)
	pg.exec(t, `CREATE TABLE derived2 () INHERITS (derived)`)
	pg.exec(t, `CREATE PUBLICATION inherited FOR TABLE base`)
	pg.exec(t, `CREATE TABLE ubase (id int PRIMARY KEY)`)
	pg.exec(t, `CREATE UNLOGGED TABLE uchild () INHERITS (ubase)`)
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
		// The rows of INHERITS children come under the children's names.
		{"an INHERITS child not followed", pg.dsn, tiercachepg.Options{Slot: "slot", Publication: "inherited", Tables: []string{"base"}},
			tiercachepg.ErrPublication, `"public"."derived" INHERITS from the followed "public"."base"`},
		{"an INHERITS grandchild not followed", pg.dsn, tiercachepg.Options{Slot: "slot", Publication: "inherited", Tables: []string{"base", "derived"}},
			tiercachepg.ErrPublication, `"public"."derived2" INHERITS`},
		{"an INHERITS child not followed, with Create", pg.dsn,
			tiercachepg.Options{Slot: "slot", Publication: "inhfresh", Tables: []string{"base"}, Create: true},
			tiercachepg.ErrPublication, `"public"."derived" INHERITS`},
		{"an unlogged INHERITS child, followed or not", pg.dsn, tiercachepg.Options{Slot: "slot", Publication: "pub", Tables: []string{"ubase", "uchild"}},
			tiercachepg.ErrPublication, `"public"."uchild" INHERITS from the followed "public"."ubase" and is unlogged`},
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

// TestLifecycle: Run with a nil context, Run twice at once, Run after
// Close, Close twice, and a Run stopped by its context, with a database that cannot be reached
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
	var nilCtx context.Context
	if err := f.Run(nilCtx); !errors.Is(err, tiercache.ErrNilContext) {
		t.Errorf("Run(nil ctx) = %v, want tiercache.ErrNilContext", err)
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
	// A TRUNCATE of one partition is not sent under
	// publish_via_partition_root: the follower says so when it starts.
	log, warned := countLogs(t, "TRUNCATE of one partition")
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "slot", Publication: "pub", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: c.Invalidate, StatusInterval: 20 * time.Millisecond, Logger: log,
	})
	waitUntilStreaming(t, r)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 1`)
	waitConfirmed(t, r.f, pg.lsn(t))
	if _, found := cached(t, c, "items:1"); found {
		t.Errorf("items:1 still cached (ignored changes %d)", r.f.Stats().Ignored)
	}
	if warned.Load() == 0 {
		t.Error("no warning that a partition's TRUNCATE is not sent")
	}
}

// TestInheritedTables: a followed table's INHERITS children, followed too,
// have their rows' changes invalidated under their own names (a follower
// of the parent alone is refused: TestSetupErrors).
func TestInheritedTables(t *testing.T) {
	pg := newPG(t)
	pg.exec(t, `CREATE TABLE base (id int PRIMARY KEY, version int NOT NULL)`)
	pg.exec(t, `CREATE TABLE derived (extra int, PRIMARY KEY (id)) INHERITS (base)`) // a child does not inherit the key
	pg.exec(t, `INSERT INTO base VALUES (1, 0)`)
	pg.exec(t, `INSERT INTO derived VALUES (2, 0, 0)`)
	m, err := tiercachepg.KeyPattern(
		tiercachepg.Table{Name: "base", Key: "items:{id}"},
		tiercachepg.Table{Name: "derived", Key: "items:{id}"},
	)
	if err != nil {
		t.Fatal(err)
	}
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	for _, k := range []string{"items:1", "items:2"} {
		if err := c.Set(context.Background(), k, 0); err != nil {
			t.Fatal(err)
		}
	}
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "slot", Publication: "pub", Tables: []string{"base", "derived"}, Create: true,
		Map: m, Invalidate: c.Invalidate, StatusInterval: 20 * time.Millisecond, LagInterval: 20 * time.Millisecond,
	})
	waitUntilStreaming(t, r)
	// Another session's temporary child (which would have made CREATE
	// PUBLICATION fail): never decoded, not to be followed. Polled
	// meanwhile, it ends nothing.
	temp, err := pg.pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer temp.Release()
	if _, err := temp.Exec(context.Background(), `CREATE TEMP TABLE scratch () INHERITS (base)`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)        // a few polls (fewer on a busy machine: a weaker test, never a false failure)
	pg.exec(t, `UPDATE base SET version = 1`) // both rows: the child's through its parent
	waitConfirmed(t, r.f, pg.lsn(t))
	for _, k := range []string{"items:1", "items:2"} {
		if _, found := cached(t, c, k); found {
			t.Errorf("%s still cached (ignored changes %d)", k, r.f.Stats().Ignored)
		}
	}
	if n := r.f.Stats().Ignored; n != 0 {
		t.Errorf("%d changes ignored", n)
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

// What the setup check refuses, done while the follower streams, ends Run
// with ErrPublication within a poll (LagInterval): the setup check runs
// only at each (re)connect, and the server stops sending the changes the
// publication no longer covers, so the follower would go on confirming a
// gap. A table taken out and put back between two polls is caught too, by
// its new membership row.
func TestPublicationChangedWhileStreaming(t *testing.T) {
	pg := newPG(t)
	for i, tc := range []struct {
		name  string
		sql   []string      // %[1]s is the table, %[2]s the publication; one statement each
		lag   time.Duration // the LagInterval
		words []string      // the error mentions one of them
	}{
		{"table taken out", []string{`ALTER PUBLICATION %[2]s DROP TABLE %[1]s`}, 0, []string{"lacks"}},
		// Within one poll, almost always (a poll between the statements
		// sees the table missing).
		{"table taken out and put back", []string{
			`ALTER PUBLICATION %[2]s DROP TABLE %[1]s`, `UPDATE %[1]s SET version = 1 WHERE id = 2`, `ALTER PUBLICATION %[2]s ADD TABLE %[1]s`,
		}, time.Second, []string{"was replaced", "lacks"}},
		{"updates no longer published", []string{`ALTER PUBLICATION %[2]s SET (publish = 'insert')`}, 0, []string{"does not publish inserts, updates and deletes"}},
		{"a row filter added", []string{`ALTER PUBLICATION %[2]s SET TABLE %[1]s WHERE (id < 2)`}, 0, []string{"row filter"}},
		{"a new INHERITS child", []string{`CREATE TABLE %[1]s_child () INHERITS (%[1]s)`}, 0, []string{"_child\" INHERITS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tbl, pub := fmt.Sprintf("items%d", i), fmt.Sprintf("pub%d", i)
			m := productsTable(t, pg, tbl, 3)
			r := startFollower(t, pg.dsn, tiercachepg.Options{
				Slot: fmt.Sprintf("slot%d", i), Publication: pub, Tables: []string{tbl}, Create: true,
				Map: m, Invalidate: func(context.Context, tiercache.Invalidation) error { return nil },
				StatusInterval: 20 * time.Millisecond, LagInterval: cmp.Or(tc.lag, 50*time.Millisecond),
			})
			waitUntilStreaming(t, r)
			for _, q := range tc.sql {
				pg.exec(t, fmt.Sprintf(q, tbl, pub))
			}
			deadline := time.Now().Add(time.Minute) // a generous bound: it is seen within a LagInterval
			returned, err := returnedOr(t, r, "Run to return", func() bool { return time.Now().After(deadline) })
			if !returned {
				t.Fatal("Run still streaming a minute after the publication stopped covering the table")
			}
			if !errors.Is(err, tiercachepg.ErrPublication) || !slices.ContainsFunc(tc.words, func(w string) bool { return strings.Contains(err.Error(), w) }) {
				t.Fatalf("Run = %v, want ErrPublication mentioning one of %q", err, tc.words)
			}
		})
	}
}

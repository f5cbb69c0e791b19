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
			err = f.Run(context.Background())
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

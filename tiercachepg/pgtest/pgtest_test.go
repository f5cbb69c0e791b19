package pgtest

import (
	"context"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// TestStart checks that a server starts with logical decoding enabled,
// accepts a replication connection, and is gone after Stop.
func TestStart(t *testing.T) {
	s := Start(t)
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, s.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	res, err := conn.Exec(ctx, "SHOW wal_level").ReadAll()
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "logical" {
		t.Fatalf("wal_level = %q, want logical", got)
	}
	repl, err := pgconn.Connect(ctx, s.DSN("")+"&replication=database")
	if err != nil {
		t.Fatalf("replication connection: %v", err)
	}
	if _, err := repl.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatalf("IDENTIFY_SYSTEM: %v", err)
	}
	repl.Close(ctx)

	s.Stop()
	if c, err := pgconn.Connect(ctx, s.DSN("")); err == nil {
		c.Close(ctx)
		t.Fatal("server still answers after Stop")
	}
	s.Stop() // twice is fine
}

// TestSettings checks that extra settings override the defaults.
func TestSettings(t *testing.T) {
	s := Start(t, "wal_sender_timeout=2s")
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, s.DSN(""))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "SHOW wal_sender_timeout").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := string(res[0].Rows[0][0]); got != "2s" {
		t.Fatalf("wal_sender_timeout = %q, want 2s", got)
	}
}

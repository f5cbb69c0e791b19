package tiercachepg

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// setup checks, on a plain session, that the publication publishes every
// followed table's inserts, updates and deletes, and that the slot is a
// pgoutput slot of this database that the server has not invalidated;
// with Options.Create it creates what is missing. It raises the confirmed
// position to the slot's.
func (r *run) setup(ctx context.Context) error {
	conn, err := pgconn.ConnectConfig(ctx, r.f.sqlConn)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = conn.Close(cctx)
		cancel()
	}()
	if err := r.setupPublication(ctx, conn); err != nil {
		return err
	}
	return r.setupSlot(ctx, conn)
}

func (r *run) setupPublication(ctx context.Context, conn *pgconn.PgConn) error {
	pub := r.cfg.Publication
	rows, err := query(ctx, conn,
		"SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1", pub)
	if err != nil {
		return fmt.Errorf("reading publication %s: %w", pub, err)
	}
	if len(rows) == 0 {
		if !r.cfg.Create {
			return fmt.Errorf("%w: publication %s does not exist: create it (%s) or set Options.Create",
				ErrPublication, pub, r.createPublicationSQL())
		}
		if _, err := conn.Exec(ctx, r.createPublicationSQL()).ReadAll(); err != nil {
			if isPgCode(err, "42P01") { // undefined_table
				return fmt.Errorf("%w: %s: %w", ErrPublication, r.createPublicationSQL(), err)
			}
			return fmt.Errorf("%s: %w", r.createPublicationSQL(), err)
		}
		r.log.Info("tiercachepg: created the publication", "publication", pub, "tables", r.cfg.Tables)
		return nil
	}
	ins, upd, del, trunc := rows[0][0] == "t", rows[0][1] == "t", rows[0][2] == "t", rows[0][3] == "t"
	if !ins || !upd || !del {
		return fmt.Errorf("%w: publication %s does not publish inserts, updates and deletes (publish = 'insert, update, delete, truncate'): changes would be missed",
			ErrPublication, pub)
	}
	if !trunc {
		r.log.Warn("tiercachepg: the publication does not publish TRUNCATE: a truncated table's cached rows stay until their TTL",
			"publication", pub)
	}
	rows, err = query(ctx, conn, "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1", pub)
	if err != nil {
		return fmt.Errorf("reading the tables of publication %s: %w", pub, err)
	}
	have := make(map[table]bool, len(rows))
	for _, row := range rows {
		have[table{schema: row[0], name: row[1]}] = true
	}
	var missing []string
	for _, t := range r.cfg.tables {
		if !have[t] {
			missing = append(missing, pgx.Identifier{t.schema, t.name}.Sanitize())
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: publication %s lacks %s: ALTER PUBLICATION %s ADD TABLE %s",
			ErrPublication, pub, strings.Join(missing, ", "), pub, strings.Join(missing, ", "))
	}
	return nil
}

func (r *run) createPublicationSQL() string {
	names := make([]string, len(r.cfg.tables))
	for i, t := range r.cfg.tables {
		names[i] = pgx.Identifier{t.schema, t.name}.Sanitize()
	}
	return fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s", r.cfg.Publication, strings.Join(names, ", "))
}

func (r *run) setupSlot(ctx context.Context, conn *pgconn.PgConn) error {
	slot := r.cfg.Slot
	rows, err := query(ctx, conn, `SELECT coalesce(plugin, ''), slot_type, database = current_database(),
		coalesce(confirmed_flush_lsn::text, ''), coalesce(wal_status, '')
		FROM pg_replication_slots WHERE slot_name = $1`, slot)
	if err != nil {
		return fmt.Errorf("reading slot %s: %w", slot, err)
	}
	if len(rows) == 0 {
		if !r.cfg.Create {
			return fmt.Errorf("%w: slot %s does not exist on this server: create it (SELECT pg_create_logical_replication_slot('%s', 'pgoutput')) or set Options.Create; after a failover see docs/COMMITLOG.md",
				ErrSlotNotFound, slot, slot)
		}
		rows, err := query(ctx, conn, "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')", slot)
		if err != nil {
			return fmt.Errorf("creating slot %s: %w", slot, err)
		}
		if len(rows) == 1 {
			if lsn, err := pglogrepl.ParseLSN(rows[0][0]); err == nil {
				advance(&r.f.c.confirmed, uint64(lsn))
			}
			r.log.Warn("tiercachepg: created the replication slot; changes committed before it are not followed",
				"slot", slot, "lsn", rows[0][0])
		}
		return nil
	}
	plugin, typ, sameDB, confirmed, walStatus := rows[0][0], rows[0][1], rows[0][2], rows[0][3], rows[0][4]
	switch {
	case typ != "logical" || plugin != "pgoutput":
		return fmt.Errorf("%w: slot %s is a %s slot of plugin %q; want a logical pgoutput slot", ErrSlotUnusable, slot, typ, plugin)
	case sameDB != "t":
		return fmt.Errorf("%w: slot %s belongs to another database", ErrSlotUnusable, slot)
	case walStatus == "lost":
		return fmt.Errorf("%w: slot %s was invalidated by the server (wal_status lost, max_slot_wal_keep_size): drop and recreate it, then flush the cache (docs/COMMITLOG.md)",
			ErrSlotUnusable, slot)
	}
	if lsn, err := pglogrepl.ParseLSN(confirmed); err == nil {
		advance(&r.f.c.confirmed, uint64(lsn))
	}
	return nil
}

// query runs a parameterised query and returns its rows as text (NULL as
// the empty string).
func query(ctx context.Context, conn *pgconn.PgConn, sql string, args ...string) ([][]string, error) {
	params := make([][]byte, len(args))
	for i, a := range args {
		params[i] = []byte(a)
	}
	res := conn.ExecParams(ctx, sql, params, nil, nil, nil).Read()
	if res.Err != nil {
		return nil, res.Err
	}
	out := make([][]string, len(res.Rows))
	for i, row := range res.Rows {
		out[i] = make([]string, len(row))
		for j, v := range row {
			out[i][j] = string(v)
		}
	}
	return out, nil
}

func isPgCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == code
}

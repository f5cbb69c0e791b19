package tiercachepg

import (
	"context"
	"errors"
	"fmt"
	"strconv"
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
		return connectErr(err)
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
	if err := r.checkPublication(ctx, conn); err != nil {
		return err
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
	return fmt.Sprintf("CREATE PUBLICATION %s FOR TABLE %s WITH (publish_via_partition_root = true)",
		r.cfg.Publication, strings.Join(names, ", "))
}

// checkPublication refuses an existing publication that would hide changes
// of a followed table: a partitioned table published without
// publish_via_partition_root (its changes come under the partitions'
// names, which are not followed) and, from PostgreSQL 15, a row filter
// (a change to a row outside it, or one that moves a row out of it, is
// never sent). A column list only warns: the invalidation needs only the
// columns Map reads, which the list must keep.
func (r *run) checkPublication(ctx context.Context, conn *pgconn.PgConn) error {
	pub := r.cfg.Publication
	rows, err := query(ctx, conn, "SELECT current_setting('server_version_num')")
	if err != nil {
		return fmt.Errorf("reading server_version_num: %w", err)
	}
	version := 0
	if len(rows) == 1 {
		version, _ = strconv.Atoi(rows[0][0])
	}
	if version >= 130000 { // pubviaroot is PostgreSQL 13's
		rows, err := query(ctx, conn, `SELECT n.nspname, c.relname FROM pg_class c
			JOIN pg_namespace n ON n.oid = c.relnamespace
			WHERE c.relkind = 'p' AND NOT (SELECT pubviaroot FROM pg_publication WHERE pubname = $1)`, pub)
		if err != nil {
			return fmt.Errorf("reading publication %s: %w", pub, err)
		}
		for _, row := range rows {
			if t := (table{schema: row[0], name: row[1]}); r.cfg.follow[t] {
				return fmt.Errorf("%w: %s is partitioned and publication %s publishes its changes under the partitions' names, which are not followed: ALTER PUBLICATION %s SET (publish_via_partition_root = true)",
					ErrPublication, pgx.Identifier{t.schema, t.name}.Sanitize(), pub, pub)
			}
		}
	}
	if version < 150000 { // row filters and column lists are PostgreSQL 15's
		return nil
	}
	rows, err = query(ctx, conn, `SELECT pt.schemaname, pt.tablename, pt.rowfilter IS NOT NULL,
		coalesce(cardinality(pt.attnames), 0) < (SELECT count(*) FROM pg_attribute a
			WHERE a.attrelid = format('%I.%I', pt.schemaname, pt.tablename)::regclass
			AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '')
		FROM pg_publication_tables pt WHERE pt.pubname = $1`, pub)
	if err != nil {
		return fmt.Errorf("reading the tables of publication %s: %w", pub, err)
	}
	for _, row := range rows {
		t := table{schema: row[0], name: row[1]}
		if !r.cfg.follow[t] {
			continue
		}
		name := pgx.Identifier{t.schema, t.name}.Sanitize()
		if row[2] == "t" {
			return fmt.Errorf("%w: publication %s has a row filter (WHERE) on %s: changes to rows outside it would never be invalidated; publish the table without one (ALTER PUBLICATION %s DROP TABLE %s; ALTER PUBLICATION %s ADD TABLE %s)",
				ErrPublication, pub, name, pub, name, pub, name)
		}
		if row[3] == "t" {
			r.log.Warn("tiercachepg: the publication has a column list on a followed table: Map sees only those columns, which must include every column the keys and tags are made of",
				"publication", pub, "table", name)
		}
	}
	return nil
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
		if r.f.streamed.Load() {
			// Created again now, the slot would start after whatever was
			// committed since it went: a gap, silently.
			return fmt.Errorf("%w: slot %s was dropped while the follower followed it: recreate it and flush the cache (docs/COMMITLOG.md)",
				ErrSlotNotFound, slot)
		}
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

package tiercachepg

import (
	"context"
	"errors"
	"fmt"
	"maps"
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
	if err := r.readVersion(ctx, conn); err != nil {
		return err
	}
	if err := r.checkInheritance(ctx, conn); err != nil {
		return err
	}
	rows, err := query(ctx, conn, "SELECT 1 FROM pg_publication WHERE pubname = $1", pub)
	if err != nil {
		return fmt.Errorf("reading publication %s: %w", pub, err)
	}
	if len(rows) == 0 {
		if !r.cfg.Create {
			return fmt.Errorf("%w: publication %s does not exist: create it (%s) or set Options.Create",
				ErrPublication, pub, r.createPublicationSQL())
		}
		if _, err := conn.Exec(ctx, r.createPublicationSQL()).ReadAll(); err != nil {
			if isPgCode(err, "42P01") || isPgCode(err, "22023") { // undefined_table; a table that cannot be published
				return fmt.Errorf("%w: %s: %w", ErrPublication, r.createPublicationSQL(), err)
			}
			return fmt.Errorf("%s: %w", r.createPublicationSQL(), err)
		}
		r.log.Info("tiercachepg: created the publication", "publication", pub, "tables", r.cfg.Tables)
	} else if err := r.checkExisting(ctx, conn); err != nil {
		return err
	}
	rows, err = query(ctx, conn, `SELECT n.nspname, c.relname FROM pg_class c
		JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'p'`)
	if err != nil {
		return fmt.Errorf("reading the partitioned tables: %w", err)
	}
	for _, row := range rows {
		if t := (table{schema: row[0], name: row[1]}); r.cfg.follow[t] {
			r.log.Warn("tiercachepg: a TRUNCATE of one partition of a followed partitioned table is not sent (publish_via_partition_root): truncate the table itself, or invalidate its keys and tags yourself",
				"table", pgx.Identifier{t.schema, t.name}.Sanitize())
		}
	}
	return r.notePublication(ctx, conn)
}

// checkExisting checks an existing publication: it publishes inserts,
// updates and deletes of every followed table and hides none of their
// changes (see checkPublication). It warns when TRUNCATE is not published.
func (r *run) checkExisting(ctx context.Context, conn *pgconn.PgConn) error {
	pub := r.cfg.Publication
	rows, err := query(ctx, conn,
		"SELECT pubinsert, pubupdate, pubdelete, pubtruncate FROM pg_publication WHERE pubname = $1", pub)
	if err != nil {
		return fmt.Errorf("reading publication %s: %w", pub, err)
	}
	if len(rows) == 0 {
		return fmt.Errorf("%w: publication %s does not exist", ErrPublication, pub)
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
		list := strings.Join(missing, ", ")
		return fmt.Errorf("%w: publication %s lacks %s: ALTER PUBLICATION %s ADD TABLE %s (if it was published and followed before, the changes made while it was not are lost: Clear the cache too)",
			ErrPublication, pub, list, pub, list)
	}
	return nil
}

// readVersion reads the server's version number once per run.
func (r *run) readVersion(ctx context.Context, conn *pgconn.PgConn) error {
	if r.pgVersion != 0 {
		return nil
	}
	rows, err := query(ctx, conn, "SELECT current_setting('server_version_num')")
	if err != nil {
		return fmt.Errorf("reading server_version_num: %w", err)
	}
	if len(rows) == 1 {
		r.pgVersion, _ = strconv.Atoi(rows[0][0])
	}
	return nil
}

// pubState is what the publication was when last checked: the
// pg_publication row's xmin (an ALTER PUBLICATION of its settings writes a
// new row version), and the oid of the membership row (pg_publication_rel,
// and pg_publication_namespace from PostgreSQL 15) of each table and
// schema it names. A table taken out and put back gets a new membership
// row: the changes made in between are never sent.
type pubState struct {
	xmin    string
	members map[string]string // relation (or "n" and schema) oid -> membership row oid
}

func (a *pubState) equal(b *pubState) bool {
	return a.xmin == b.xmin && maps.Equal(a.members, b.members)
}

// reAdded reports whether a member of old has a new membership row in st.
func (a *pubState) reAdded(st *pubState) bool {
	for rel, was := range a.members {
		if now, ok := st.members[rel]; ok && now != was {
			return true
		}
	}
	return false
}

// readPublication reads the publication's state; nil when it does not exist.
func (r *run) readPublication(ctx context.Context, conn *pgconn.PgConn) (*pubState, error) {
	sql := `SELECT p.xmin::text, coalesce(pr.prrelid::text, ''), coalesce(pr.oid::text, '')
		FROM pg_publication p LEFT JOIN pg_publication_rel pr ON pr.prpubid = p.oid WHERE p.pubname = $1`
	if r.pgVersion >= 150000 {
		sql += ` UNION ALL SELECT p.xmin::text, 'n' || pn.pnnspid::text, pn.oid::text
			FROM pg_publication p JOIN pg_publication_namespace pn ON pn.pnpubid = p.oid WHERE p.pubname = $1`
	}
	rows, err := query(ctx, conn, sql, r.cfg.Publication)
	if err != nil || len(rows) == 0 {
		return nil, err
	}
	st := &pubState{xmin: rows[0][0], members: make(map[string]string, len(rows))}
	for _, row := range rows {
		if row[1] != "" {
			st.members[row[1]] = row[2]
		}
	}
	return st, nil
}

// notePublication records the publication's state after a check, and
// refuses a membership row that changed since the last check of this Run:
// a table taken out and put back between two streams (see pubState).
func (r *run) notePublication(ctx context.Context, conn *pgconn.PgConn) error {
	st, err := r.readPublication(ctx, conn)
	if err != nil {
		return fmt.Errorf("reading publication %s: %w", r.cfg.Publication, err)
	}
	if st == nil {
		return nil
	}
	r.pubMu.Lock()
	defer r.pubMu.Unlock()
	if r.pub != nil && r.pub.reAdded(st) {
		return r.reAddedErr()
	}
	r.pub = st
	return nil
}

// reAddedErr is the error for a membership row replaced. It cannot tell a
// gap from none (SET TABLE of the same tables, or a table taken out and put
// back in one transaction, replace the row too and lose nothing), so it
// errs on the side of the cache.
func (r *run) reAddedErr() error {
	return fmt.Errorf("%w: a table's membership of publication %s was replaced (taken out and put back, or SET TABLE) while the follower followed it: changes made while it was out, if any, are never sent; Clear the cache, then run again",
		ErrPublication, r.cfg.Publication)
}

// recheck, run from the lag poll while the follower streams, checks again
// what setup checked at the (re)connect and can change under the stream: a
// new INHERITS child of a followed table and, when the publication's state
// moved (see pubState), the whole publication. The poll is a sample: a
// table taken out and put back between two polls is still caught, by its
// new membership row, but a setting changed and changed back between two
// polls is not. A publication gone altogether is the stream's to report
// (its next change fails to decode); a failed query is left to the next
// poll.
func (r *run) recheck(ctx context.Context, conn *pgconn.PgConn) error {
	if err := r.checkInheritance(ctx, conn); errors.Is(err, ErrPublication) {
		return err
	}
	st, err := r.readPublication(ctx, conn)
	if err != nil || st == nil {
		return nil
	}
	r.pubMu.Lock()
	old := r.pub
	r.pubMu.Unlock()
	if old == nil || old.equal(st) {
		return nil
	}
	if err := r.checkExisting(ctx, conn); err != nil {
		if errors.Is(err, ErrPublication) {
			return fmt.Errorf("%w (changed while the follower streamed: the changes it hid are never sent, even once it is put right; Clear the cache after)", err)
		}
		return nil
	}
	if old.reAdded(st) {
		return r.reAddedErr()
	}
	r.pubMu.Lock()
	r.pub = st
	r.pubMu.Unlock()
	return nil
}

// checkInheritance refuses a followed table whose INHERITS descendants are
// not followed: a publication of a table publishes the descendants it has
// then too (not with FOR TABLE ONLY), under their own names, so their rows'
// changes would be passed over as changes of tables nobody follows. A
// temporary child is passed over (its rows are never decoded, and are one
// session's); an unlogged or foreign one cannot be published at all, so a
// change made through the parent to its rows is never sent.
func (r *run) checkInheritance(ctx context.Context, conn *pgconn.PgConn) error {
	rows, err := query(ctx, conn, `WITH RECURSIVE d(parent, child) AS (
			SELECT i.inhparent, i.inhrelid FROM pg_inherits i
			JOIN pg_class p ON p.oid = i.inhparent WHERE p.relkind = 'r'
			UNION SELECT d.parent, i.inhrelid FROM d JOIN pg_inherits i ON i.inhparent = d.child)
		SELECT pn.nspname, pc.relname, cn.nspname, cc.relname,
			cc.relpersistence = 'u' OR cc.relkind = 'f' FROM d
		JOIN pg_class pc ON pc.oid = d.parent JOIN pg_namespace pn ON pn.oid = pc.relnamespace
		JOIN pg_class cc ON cc.oid = d.child JOIN pg_namespace cn ON cn.oid = cc.relnamespace
		WHERE cc.relpersistence <> 't'
		ORDER BY 1, 2, 3, 4`)
	if err != nil {
		return fmt.Errorf("reading the inheritance children of the followed tables: %w", err)
	}
	for _, row := range rows {
		parent, child := table{schema: row[0], name: row[1]}, table{schema: row[2], name: row[3]}
		unreplicated := row[4] == "t"
		if !r.cfg.follow[parent] || (r.cfg.follow[child] && !unreplicated) {
			continue
		}
		name, pname := pgx.Identifier{child.schema, child.name}.Sanitize(), pgx.Identifier{parent.schema, parent.name}.Sanitize()
		if unreplicated {
			return fmt.Errorf("%w: %s INHERITS from the followed %s and is unlogged or foreign, which PostgreSQL does not replicate: changes to its rows are never sent; make it a logged table (ALTER TABLE %s SET LOGGED) or detach it (ALTER TABLE %s NO INHERIT %s)",
				ErrPublication, name, pname, name, name, pname)
		}
		return fmt.Errorf("%w: %s INHERITS from the followed %s: its rows' changes come under its own name, which is not followed; add it to Tables (Map sees its changes under that name; it needs a replica identity of its own, such as a primary key)",
			ErrPublication, name, pname)
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
	version := r.pgVersion
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
	rows, err := query(ctx, conn, `SELECT pt.schemaname, pt.tablename, pt.rowfilter IS NOT NULL,
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

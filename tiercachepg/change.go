package tiercachepg

import (
	"fmt"
	"time"

	"github.com/jackc/pglogrepl"
)

// LSN is a position in PostgreSQL's write-ahead log ("16/B374D848" in
// text). It is pglogrepl's type; [pglogrepl.ParseLSN] parses the text form
// that pg_current_wal_lsn() returns.
type LSN = pglogrepl.LSN

// Op is the kind of a row change.
type Op uint8

// The operations of a [Change].
const (
	OpInsert Op = iota + 1
	OpUpdate
	OpDelete
	OpTruncate
)

// String returns "insert", "update", "delete" or "truncate".
func (o Op) String() string {
	switch o {
	case OpInsert:
		return "insert"
	case OpUpdate:
		return "update"
	case OpDelete:
		return "delete"
	case OpTruncate:
		return "truncate"
	}
	return fmt.Sprintf("Op(%d)", uint8(o))
}

// Row is a row's columns in PostgreSQL's text output format ("42",
// "2024-05-01 10:00:00+00", "t"), by column name. A NULL column is absent,
// and so is a TOASTed column that an update left unchanged (PostgreSQL
// does not send its value).
type Row map[string]string

// Change is one committed row change, as the follower hands it to
// [Options.Map].
type Change struct {
	// Schema and Table name the table, as PostgreSQL stores them (lower
	// case unless created quoted).
	Schema, Table string
	// Op is what happened to the row.
	Op Op
	// New is the row after an insert or update; nil for a delete or
	// truncate.
	New Row
	// Old is the row before an update or delete, as far as the table's
	// replica identity gives it: with REPLICA IDENTITY FULL the whole old
	// row (updates and deletes); with DEFAULT (the primary key) or USING
	// INDEX only the key columns, always on a delete and on an update only
	// when it changed the key (OldKeyOnly is then true); nil otherwise.
	Old Row
	// OldKeyOnly reports that Old holds only the replica identity's key
	// columns: the others are absent, not NULL.
	OldKeyOnly bool
	// CommitLSN is the LSN of the transaction's commit record, CommitTime
	// its commit time (the server's clock) and Xid its transaction id.
	CommitLSN  LSN
	CommitTime time.Time
	Xid        uint32
}

// relation is what a pgoutput Relation message says about a table, kept
// per stream (the server sends one before a table's first change in each
// session, and again after its schema changes).
type relation struct {
	schema, table string
	identity      byte // 'd' default, 'n' nothing, 'f' full, 'i' index
	cols          []string
	key           []bool // the column is part of the replica identity
	followed      bool
}

func newRelation(m *pglogrepl.RelationMessage, followed bool) *relation {
	r := &relation{
		schema:   m.Namespace,
		table:    m.RelationName,
		identity: m.ReplicaIdentity,
		cols:     make([]string, len(m.Columns)),
		key:      make([]bool, len(m.Columns)),
		followed: followed,
	}
	for i, c := range m.Columns {
		if c != nil {
			r.cols[i] = c.Name
			r.key[i] = c.Flags&1 != 0
		}
	}
	return r
}

// row decodes a tuple. keyOnly keeps only the replica identity's columns
// (a 'K' tuple carries the others as NULLs that are not NULL).
func (r *relation) row(t *pglogrepl.TupleData, keyOnly bool) (Row, error) {
	if t == nil {
		return nil, nil
	}
	if len(t.Columns) != len(r.cols) {
		return nil, fmt.Errorf("%w: %s.%s: tuple has %d columns, the relation %d",
			ErrUnmapped, r.schema, r.table, len(t.Columns), len(r.cols))
	}
	row := make(Row, len(t.Columns))
	for i, c := range t.Columns {
		if c == nil || (keyOnly && !r.key[i]) {
			continue
		}
		switch c.DataType {
		case pglogrepl.TupleDataTypeText, pglogrepl.TupleDataTypeBinary:
			row[r.cols[i]] = string(c.Data)
		}
	}
	return row, nil
}

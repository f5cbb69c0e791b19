package tiercachepg

import (
	"errors"
	"fmt"
	"strings"

	"github.com/tiercache/tiercache"
)

// Table says how the rows of one table are cached, for [KeyPattern].
//
// Patterns are text with column names in braces: "product:{id}",
// "price:{sku}:{region}"; "{{" and "}}" stand for literal braces (a Redis
// Cluster hash tag is "{{user:{id}}}:profile"). A column's value is its
// PostgreSQL text form.
type Table struct {
	// Name is the table, "name" (schema public) or "schema.name".
	Name string
	// Key is the pattern of the cache key of a row; it should use the
	// columns of the table's replica identity (its primary key by
	// default), which PostgreSQL sends for deletes and key changes.
	// Empty if rows are cached under tags only.
	Key string
	// Tags are patterns of tags to invalidate with a row, from its new
	// values and, where PostgreSQL sends them, its old ones (a product
	// moved from one category to another leaves both lists stale). Old
	// values of columns outside the replica identity come only with
	// REPLICA IDENTITY FULL: without it, the tags of a deleted row cannot
	// be computed (the change then goes to the dead-letter policy, its key
	// still invalidated), and an update that changes a tag's column
	// invalidates only the new tag.
	Tags []string
	// TruncateTags are the tags to invalidate when the table is truncated
	// (no row is known then): typically a tag that every value cached from
	// this table carries. Without them a TRUNCATE goes to the dead-letter
	// policy.
	TruncateTags []string
}

// KeyPattern returns a [MapFunc] for tables whose rows are cached under
// keys (and tags) made from their columns, the common case:
//
//	m, err := tiercachepg.KeyPattern(
//		tiercachepg.Table{Name: "products", Key: "product:{id}", Tags: []string{"category:{category_id}"}},
//		tiercachepg.Table{Name: "users", Key: "user:{id}"},
//	)
//
// An insert invalidates the new row's key (which may hold a cached "not
// found") and tags, an update those of the new and the old row, a delete
// those of the old row. A change of another table, or one without the
// columns a key needs, is an error wrapping [ErrUnmapped]. The patterns
// are checked here: a bad one is an error wrapping [ErrInvalidOption].
func KeyPattern(tables ...Table) (MapFunc, error) {
	if len(tables) == 0 {
		return nil, fmt.Errorf("%w: KeyPattern needs at least one table", ErrInvalidOption)
	}
	byTable := make(map[table]*tableMap, len(tables))
	for _, t := range tables {
		name, err := parseTable(t.Name)
		if err != nil {
			return nil, err
		}
		if byTable[name] != nil {
			return nil, fmt.Errorf("%w: KeyPattern: table %s given twice", ErrInvalidOption, name)
		}
		if t.Key == "" && len(t.Tags) == 0 && len(t.TruncateTags) == 0 {
			return nil, fmt.Errorf("%w: KeyPattern: table %s has no key, tag or truncate tag", ErrInvalidOption, name)
		}
		tm := &tableMap{name: name, truncate: t.TruncateTags}
		if t.Key != "" {
			if tm.key, err = parsePattern(t.Key); err != nil {
				return nil, err
			}
		}
		for _, p := range t.Tags {
			pp, err := parsePattern(p)
			if err != nil {
				return nil, err
			}
			tm.tags = append(tm.tags, pp)
		}
		for _, tag := range t.TruncateTags {
			if !validTag(tag) {
				return nil, fmt.Errorf("%w: KeyPattern: table %s: truncate tag %q: want 1 to %d bytes, not starting with '}'", ErrInvalidOption, name, tag, maxTagLen)
			}
		}
		byTable[name] = tm
	}
	return func(c Change) (tiercache.Invalidation, error) {
		tm := byTable[table{schema: c.Schema, name: c.Table}]
		if tm == nil {
			return tiercache.Invalidation{}, fmt.Errorf("%w: KeyPattern has no table %s.%s", ErrUnmapped, c.Schema, c.Table)
		}
		return tm.mapChange(c)
	}, nil
}

type tableMap struct {
	name     table
	key      pattern // nil: no key
	tags     []pattern
	truncate []string
}

func (tm *tableMap) mapChange(c Change) (tiercache.Invalidation, error) {
	var inv tiercache.Invalidation
	if c.Op == OpTruncate {
		if len(tm.truncate) == 0 {
			return inv, fmt.Errorf("%w: TRUNCATE of %s, which has no TruncateTags", ErrUnmapped, tm.name)
		}
		inv.Tags = append(inv.Tags, tm.truncate...)
		return inv, nil
	}
	var errs []error
	// The row the change is about must give the key: the new row of an
	// insert or update, the old one of a delete. The old row of an update
	// adds the old key, when PostgreSQL sent it (the key changed).
	var main, other Row
	switch c.Op {
	case OpInsert, OpUpdate:
		main, other = c.New, c.Old
	case OpDelete:
		main = c.Old
	default:
		return inv, fmt.Errorf("%w: %s of %s", ErrUnmapped, c.Op, tm.name)
	}
	if main == nil {
		return inv, fmt.Errorf("%w: %s of %s without its row", ErrUnmapped, c.Op, tm.name)
	}
	if tm.key != nil {
		k, missing := tm.key.render(main)
		if missing != "" {
			errs = append(errs, fmt.Errorf("%w: %s of %s: key %s needs column %q, which the change does not carry%s",
				ErrUnmapped, c.Op, tm.name, tm.key, missing, identityHint(c)))
		} else {
			inv.Keys = append(inv.Keys, k)
		}
		if other != nil {
			if k2, missing := tm.key.render(other); missing == "" && k2 != k {
				inv.Keys = append(inv.Keys, k2)
			}
		}
	}
	for _, p := range tm.tags {
		for i, row := range []Row{main, other} {
			if row == nil {
				continue
			}
			tag, missing := p.render(row)
			switch {
			case missing == "":
				if !contains(inv.Tags, tag) {
					inv.Tags = append(inv.Tags, tag)
				}
			case c.Op == OpDelete && i == 0 && c.OldKeyOnly:
				errs = append(errs, fmt.Errorf("%w: delete of %s: tag %s needs column %q, which a delete carries only under REPLICA IDENTITY FULL",
					ErrUnmapped, tm.name, p, missing))
			}
			// Otherwise the column is NULL (no tag), an unchanged TOASTed
			// value, or outside a key-only old row: nothing to invalidate
			// that can be known.
		}
	}
	return inv, errors.Join(errs...)
}

func identityHint(c Change) string {
	if c.Op == OpDelete && c.OldKeyOnly {
		return " (a delete carries only the replica identity's columns; use them in the key, or set REPLICA IDENTITY FULL)"
	}
	return ""
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// pattern is a parsed key or tag pattern: literal text and column names,
// alternating, starting with text.
type pattern []segment

type segment struct {
	text   string
	column bool
}

func parsePattern(p string) (pattern, error) {
	bad := func(why string) (pattern, error) {
		return nil, fmt.Errorf("%w: pattern %q: %s", ErrInvalidOption, p, why)
	}
	var out pattern
	var lit strings.Builder
	for i := 0; i < len(p); i++ {
		switch ch := p[i]; {
		case ch == '{' && i+1 < len(p) && p[i+1] == '{':
			lit.WriteByte('{')
			i++
		case ch == '}' && i+1 < len(p) && p[i+1] == '}':
			lit.WriteByte('}')
			i++
		case ch == '{':
			end := strings.IndexByte(p[i+1:], '}')
			if end < 0 {
				return bad("unclosed '{'")
			}
			col := p[i+1 : i+1+end]
			if col == "" || strings.ContainsAny(col, "{") {
				return bad("empty or nested column name")
			}
			if lit.Len() > 0 {
				out = append(out, segment{text: lit.String()})
				lit.Reset()
			}
			out = append(out, segment{text: col, column: true})
			i += end + 1
		case ch == '}':
			return bad("'}' without '{' (write '}}' for a brace)")
		default:
			lit.WriteByte(ch)
		}
	}
	if lit.Len() > 0 {
		out = append(out, segment{text: lit.String()})
	}
	if len(out) == 0 {
		return bad("empty")
	}
	return out, nil
}

// render fills the pattern from row; missing names the first column the
// row lacks (then the result is not usable).
func (p pattern) render(row Row) (s string, missing string) {
	var b strings.Builder
	for _, seg := range p {
		if !seg.column {
			b.WriteString(seg.text)
			continue
		}
		v, ok := row[seg.text]
		if !ok {
			return "", seg.text
		}
		b.WriteString(v)
	}
	return b.String(), ""
}

func (p pattern) String() string {
	var b strings.Builder
	for _, seg := range p {
		if seg.column {
			b.WriteString("{" + seg.text + "}")
		} else {
			b.WriteString(strings.NewReplacer("{", "{{", "}", "}}").Replace(seg.text))
		}
	}
	return b.String()
}

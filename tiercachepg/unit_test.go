package tiercachepg

import (
	"context"
	"errors"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"go/types"
	"io/fs"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tiercache/tiercache"
)

func validOptions() Options {
	return Options{
		Slot: "s", Publication: "p", Tables: []string{"t"},
		Map:        func(Change) (tiercache.Invalidation, error) { return tiercache.Invalidation{}, nil },
		Invalidate: func(context.Context, tiercache.Invalidation) error { return nil },
	}
}

// TestOptionsValidated: every nonsensical option is an ErrInvalidOption
// from New, never a panic; the defaults fill the zero values.
func TestOptionsValidated(t *testing.T) {
	for _, tc := range []struct {
		name string
		mod  func(*Options)
	}{
		{"no slot", func(o *Options) { o.Slot = "" }},
		{"slot with capitals", func(o *Options) { o.Slot = "Slot" }},
		{"slot with a quote", func(o *Options) { o.Slot = "s'; DROP" }},
		{"slot too long", func(o *Options) { o.Slot = strings.Repeat("s", 64) }},
		{"no publication", func(o *Options) { o.Publication = "" }},
		{"publication with a space", func(o *Options) { o.Publication = "p q" }},
		{"no tables", func(o *Options) { o.Tables = nil }},
		{"empty table", func(o *Options) { o.Tables = []string{""} }},
		{"two dots", func(o *Options) { o.Tables = []string{"a.b.c"} }},
		{"empty schema", func(o *Options) { o.Tables = []string{".t"} }},
		{"nil Map", func(o *Options) { o.Map = nil }},
		{"nil Invalidate", func(o *Options) { o.Invalidate = nil }},
		{"negative MaxLag", func(o *Options) { o.MaxLag = -1 }},
		{"negative interval", func(o *Options) { o.StatusInterval = -time.Second }},
		{"negative batch", func(o *Options) { o.MaxBatchKeys = -1 }},
		{"MaxBatchTags over tiercache's 64", func(o *Options) { o.MaxBatchTags = 65 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := validOptions()
			tc.mod(&o)
			if _, err := New("postgres://localhost/db", o); !errors.Is(err, ErrInvalidOption) {
				t.Fatalf("New = %v, want ErrInvalidOption", err)
			}
		})
	}
	if _, err := New("postgres://localhost:notaport/db", validOptions()); !errors.Is(err, ErrInvalidOption) {
		t.Fatalf("New with a bad DSN = %v, want ErrInvalidOption", err)
	}
	f, err := New("postgres://u@localhost/db?replication=database", validOptions())
	if err != nil {
		t.Fatal(err)
	}
	c := f.cfg
	if c.StatusInterval != DefaultStatusInterval || c.LagInterval != DefaultLagInterval ||
		c.MaxBatchKeys != DefaultMaxBatchKeys || c.MaxBatchTags != DefaultMaxBatchTags ||
		c.MaxPending != DefaultMaxPending || c.MaxBackoff != DefaultMaxBackoff || c.Logger == nil {
		t.Errorf("defaults not applied: %+v", c.Options)
	}
	if !c.follow[table{"public", "t"}] {
		t.Error("an unqualified table is not in schema public")
	}
	if f.replConn.RuntimeParams["replication"] != "database" || f.sqlConn.RuntimeParams["replication"] != "" {
		t.Errorf("replication param: stream %q, plain %q", f.replConn.RuntimeParams["replication"], f.sqlConn.RuntimeParams["replication"])
	}
	f, err = New("postgres://u@localhost/db?pool_max_conns=4&pool_min_conns=1&default_query_exec_mode=exec&statement_cache_capacity=10&application_name=x", validOptions())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []map[string]string{f.replConn.RuntimeParams, f.sqlConn.RuntimeParams} {
		if len(p) > 2 || p["application_name"] != "x" {
			t.Errorf("server settings %v: want application_name only (and replication)", p)
		}
	}
	if s := f.Stats(); s.SlotLagBytes != -1 {
		t.Errorf("SlotLagBytes before any poll = %d, want -1", s.SlotLagBytes)
	}
}

// TestKeyPattern maps each kind of change of the common case.
func TestKeyPattern(t *testing.T) {
	m, err := KeyPattern(
		Table{Name: "products", Key: "product:{id}", Tags: []string{"cat:{category}", "all"}, TruncateTags: []string{"products"}},
		Table{Name: "shop.prices", Key: "{{price}}:{sku}:{region}"},
		Table{Name: "tagsonly", Tags: []string{"t:{k}"}},
	)
	if err != nil {
		t.Fatal(err)
	}
	ch := func(schema, tbl string, op Op, newRow, oldRow Row, keyOnly bool) Change {
		return Change{Schema: schema, Table: tbl, Op: op, New: newRow, Old: oldRow, OldKeyOnly: keyOnly}
	}
	for _, tc := range []struct {
		name       string
		c          Change
		keys, tags []string
		err        string // substring; "" for none
	}{
		{"insert", ch("public", "products", OpInsert, Row{"id": "1", "category": "lamps"}, nil, false),
			[]string{"product:1"}, []string{"cat:lamps", "all"}, ""},
		{"update, identity default", ch("public", "products", OpUpdate, Row{"id": "1", "category": "chairs"}, nil, false),
			[]string{"product:1"}, []string{"cat:chairs", "all"}, ""},
		{"update, identity full, category moved", ch("public", "products", OpUpdate,
			Row{"id": "1", "category": "chairs"}, Row{"id": "1", "category": "lamps"}, false),
			[]string{"product:1"}, []string{"cat:chairs", "cat:lamps", "all"}, ""},
		{"update of the key", ch("public", "products", OpUpdate, Row{"id": "2", "category": "lamps"}, Row{"id": "1"}, true),
			[]string{"product:2", "product:1"}, []string{"cat:lamps", "all"}, ""},
		{"NULL tag column", ch("public", "products", OpInsert, Row{"id": "1"}, nil, false),
			[]string{"product:1"}, []string{"all"}, ""},
		{"delete, identity full", ch("public", "products", OpDelete, nil, Row{"id": "1", "category": "lamps"}, false),
			[]string{"product:1"}, []string{"cat:lamps", "all"}, ""},
		{"delete, identity default: the key, and an error for the tag", ch("public", "products", OpDelete, nil, Row{"id": "1"}, true),
			[]string{"product:1"}, []string{"all"}, "REPLICA IDENTITY FULL"},
		{"truncate", ch("public", "products", OpTruncate, nil, nil, false), nil, []string{"products"}, ""},
		{"truncate without tags", ch("shop", "prices", OpTruncate, nil, nil, false), nil, nil, "TruncateTags"},
		{"schema and braces", ch("shop", "prices", OpInsert, Row{"sku": "a", "region": "eu"}, nil, false),
			[]string{"{price}:a:eu"}, nil, ""},
		{"key column missing", ch("shop", "prices", OpInsert, Row{"sku": "a"}, nil, false), nil, nil, `column "region"`},
		{"tags only", ch("public", "tagsonly", OpUpdate, Row{"k": "x"}, nil, false), nil, []string{"t:x"}, ""},
		{"unknown table", ch("public", "users", OpInsert, Row{"id": "1"}, nil, false), nil, nil, "no table public.users"},
		{"wrong schema", ch("public", "prices", OpInsert, Row{"sku": "a", "region": "b"}, nil, false), nil, nil, "no table"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			inv, err := m(tc.c)
			if !slices.Equal(inv.Keys, tc.keys) || !slices.Equal(inv.Tags, tc.tags) {
				t.Errorf("got keys %q tags %q, want %q %q", inv.Keys, inv.Tags, tc.keys, tc.tags)
			}
			switch {
			case tc.err == "" && err != nil:
				t.Errorf("error %v, want none", err)
			case tc.err != "" && (err == nil || !errors.Is(err, ErrUnmapped) || !strings.Contains(err.Error(), tc.err)):
				t.Errorf("error %v, want ErrUnmapped mentioning %q", err, tc.err)
			}
		})
	}
}

// TestKeyPatternRejects bad tables and patterns with ErrInvalidOption.
func TestKeyPatternRejects(t *testing.T) {
	for _, tables := range [][]Table{
		nil,
		{{Name: "", Key: "k:{id}"}},
		{{Name: "t"}},
		{{Name: "t", Key: "k:{id}"}, {Name: "public.t", Key: "k:{id}"}},
		{{Name: "t", Key: "k:{id"}},
		{{Name: "t", Key: "k:{}"}},
		{{Name: "t", Key: "k:}"}},
		{{Name: "t", Key: "k:{a{b}"}},
		{{Name: "t", Tags: []string{""}}},
		{{Name: "t", TruncateTags: []string{strings.Repeat("x", 256)}}},
	} {
		if _, err := KeyPattern(tables...); !errors.Is(err, ErrInvalidOption) {
			t.Errorf("KeyPattern(%+v) = %v, want ErrInvalidOption", tables, err)
		}
	}
}

// TestPatternRoundTrip: a parsed pattern prints as written.
func TestPatternRoundTrip(t *testing.T) {
	for _, s := range []string{"product:{id}", "{{user:{id}}}:profile", "a{b}c{d}", "{x}", "plain"} {
		p, err := parsePattern(s)
		if err != nil {
			t.Fatal(err)
		}
		if p.String() != s {
			t.Errorf("parsePattern(%q).String() = %q", s, p.String())
		}
	}
}

func TestParsePGDuration(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"1min": time.Minute, "60s": time.Minute, "500ms": 500 * time.Millisecond, "0": 0, "250": 250 * time.Millisecond,
		"2h": 2 * time.Hour, "1d": 24 * time.Hour,
	} {
		if got, ok := parsePGDuration(in); !ok || got != want {
			t.Errorf("parsePGDuration(%q) = %v, %v; want %v", in, got, ok, want)
		}
	}
	for _, in := range []string{"", "s", "-1s", "1 fortnight", "99999999999999999999d"} {
		if _, ok := parsePGDuration(in); ok {
			t.Errorf("parsePGDuration(%q) accepted", in)
		}
	}
}

// TestRelationRows: tuples decode by the relation's columns; a key-only
// old tuple keeps only the identity's columns; NULL and unchanged TOAST
// values are absent; a tuple of the wrong width is an error.
func TestRelationRows(t *testing.T) {
	rel := newRelation(&pglogrepl.RelationMessage{
		Namespace: "public", RelationName: "t", ReplicaIdentity: 'd',
		Columns: []*pglogrepl.RelationMessageColumn{{Name: "id", Flags: 1}, {Name: "a"}, {Name: "b"}},
	}, true)
	text := func(s string) *pglogrepl.TupleDataColumn {
		return &pglogrepl.TupleDataColumn{DataType: pglogrepl.TupleDataTypeText, Data: []byte(s)}
	}
	tuple := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{
		text("7"), {DataType: pglogrepl.TupleDataTypeNull}, {DataType: pglogrepl.TupleDataTypeToast},
	}}
	row, err := rel.row(tuple, false)
	if err != nil || len(row) != 1 || row["id"] != "7" {
		t.Errorf("row = %v, %v; want only id 7", row, err)
	}
	full := &pglogrepl.TupleData{Columns: []*pglogrepl.TupleDataColumn{text("7"), text("x"), text("y")}}
	if row, _ := rel.row(full, true); len(row) != 1 || row["id"] != "7" {
		t.Errorf("key-only row = %v; want only id", row)
	}
	if _, err := rel.row(&pglogrepl.TupleData{Columns: full.Columns[:2]}, false); !errors.Is(err, ErrUnmapped) {
		t.Errorf("short tuple: %v, want ErrUnmapped", err)
	}
	if row, err := rel.row(nil, false); row != nil || err != nil {
		t.Errorf("nil tuple: %v, %v", row, err)
	}
}

// FuzzParseMessage: no bytes make the decoder of pgoutput messages panic.
func FuzzParseMessage(f *testing.F) {
	for _, seed := range [][]byte{
		{'B', 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5},
		{'C', 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0},
		{'R', 0, 0, 0, 1, 'p', 0, 't', 0, 'd', 0, 1, 1, 'i', 'd', 0, 0, 0, 0, 23, 0, 0, 0, 0},
		{'I', 0, 0, 0, 1, 'N', 0, 1, 't', 0, 0, 0, 1, '7'},
		{'U', 0, 0, 0, 1, 'K', 0, 1, 't', 0, 0, 0, 1, '7', 'N', 0, 1, 't', 0, 0, 0, 1, '8'},
		{'D', 0, 0, 0, 1, 'O', 0, 1, 'n'},
		{'T', 0, 0, 0, 1, 0, 0, 0, 0, 1},
		{'I', 0, 0, 0, 1, 'N', 0xff, 0xff},
		{'Z'},
		{},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseMessage(b)
		if err == nil && m == nil {
			t.Fatal("no message and no error")
		}
	})
}

// TestDelayWindow: quantiles of the last delays; negative delays (clock
// skew) count as zero.
func TestDelayWindow(t *testing.T) {
	var w delayWindow
	if s := w.stats(); s.Count != 0 || s.P99 != 0 {
		t.Errorf("empty: %+v", s)
	}
	for i := 1; i <= 100; i++ {
		w.add(time.Duration(i) * time.Millisecond)
	}
	w.add(-time.Second)
	s := w.stats()
	if s.Count != 101 || s.P50 != 50*time.Millisecond || s.P99 != 99*time.Millisecond || s.Max != 100*time.Millisecond {
		t.Errorf("stats %+v", s)
	}
	for range 5000 {
		w.add(time.Second)
	}
	if s := w.stats(); s.P50 != time.Second || s.Count != 5101 {
		t.Errorf("after the window turned over: %+v", s)
	}
}

// TestFatal: which errors end Run and which are retried.
func TestFatal(t *testing.T) {
	pgErr := func(code string) error { return fmt.Errorf("wrapped: %w", &pgconn.PgError{Code: code}) }
	for _, tc := range []struct {
		err  error
		want error // nil: retried
	}{
		{pgErr("42501"), ErrPermission},
		{pgErr("28P01"), ErrPermission},
		{pgErr("42704"), nil}, // only START_REPLICATION's is a missing slot, and connect's a bad DSN
		{connectErr(pgErr("42704")), ErrInvalidOption},
		{pgErr("55000"), ErrSlotUnusable},
		{pgErr("55006"), nil}, // slot in use by another follower: wait for it
		{pgErr("57P01"), nil}, // admin shutdown
		{errors.New("connection refused"), nil},
		{fmt.Errorf("x: %w", ErrPublication), ErrPublication},
		{nil, nil},
	} {
		got := fatal(tc.err)
		if (tc.want == nil) != (got == nil) || (tc.want != nil && !errors.Is(got, tc.want)) {
			t.Errorf("fatal(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestBackoff doubles up to its maximum and starts over after reset.
func TestBackoff(t *testing.T) {
	b := newBackoff(300 * time.Millisecond)
	var got []time.Duration
	for range 5 {
		got = append(got, b.next())
	}
	want := []time.Duration{50, 100, 200, 300, 300}
	for i := range want {
		want[i] *= time.Millisecond
	}
	if !slices.Equal(got, want) {
		t.Errorf("backoff %v, want %v", got, want)
	}
	b.reset()
	if d := b.next(); d != 50*time.Millisecond {
		t.Errorf("after reset %v", d)
	}
	if d := newBackoff(10 * time.Millisecond).next(); d != 10*time.Millisecond {
		t.Errorf("a maximum under the minimum: %v", d)
	}
}

// panicky is an Observer whose every method records its call and panics
// (SlotLag with a nil value, which recover sees as a *runtime.PanicNilError).
type panicky struct{ calls []string }

func (p *panicky) Applied(changes int, delay time.Duration) {
	p.calls = append(p.calls, fmt.Sprint("Applied ", changes, " ", delay))
	panic("Applied bug")
}

func (p *panicky) Failed(err error) {
	p.calls = append(p.calls, fmt.Sprint("Failed ", err))
	panic(err)
}

func (p *panicky) Unmapped(table string) {
	p.calls = append(p.calls, "Unmapped "+table)
	panic("Unmapped bug")
}

func (p *panicky) SlotLag(bytes int64, exceeded bool) {
	p.calls = append(p.calls, fmt.Sprint("SlotLag ", bytes, " ", exceeded))
	panic(nil)
}

// TestObserverRecovered: the follower's calls of Options.Observer pass the
// arguments through, recover every panic (a nil one too), count each, and
// log the first and those that bring the count to a power of two; without
// an observer they do nothing.
func TestObserverRecovered(t *testing.T) {
	var logs strings.Builder
	var panics atomic.Uint64
	p := &panicky{}
	o := observer{o: p, panics: &panics, log: slog.New(slog.NewTextHandler(&logs, nil))}
	errX := errors.New("x")
	for range 2 {
		o.Applied(3, time.Millisecond)
		o.Failed(errX)
		o.Unmapped("public.items")
		o.SlotLag(42, true)
	}
	want := []string{"Applied 3 1ms", "Failed x", "Unmapped public.items", "SlotLag 42 true"}
	if !slices.Equal(p.calls[:4], want) || !slices.Equal(p.calls[4:], want) {
		t.Errorf("calls %q, want %q twice", p.calls, want)
	}
	if n := panics.Load(); n != 8 {
		t.Errorf("%d panics counted, want 8", n)
	}
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 4 { // panics 1, 2, 4 and 8
		t.Fatalf("%d lines logged for 8 panics, want 4:\n%s", len(lines), logs.String())
	}
	for i, method := range []string{"Applied", "Failed", "SlotLag", "SlotLag"} {
		if !strings.Contains(lines[i], "method="+method) || !strings.Contains(lines[i], "stack=") {
			t.Errorf("log line %d: %s; want method=%s and the stack", i, lines[i], method)
		}
	}
	if !strings.Contains(lines[2], "nil argument") {
		t.Errorf("the nil panic logged as %s", lines[2])
	}

	none := observer{panics: &panics, log: o.log}
	none.Applied(1, time.Second)
	none.Failed(errX)
	none.Unmapped("t")
	none.SlotLag(1, false)
	if n := panics.Load(); n != 8 {
		t.Errorf("no observer: %d panics, want still 8", n)
	}
}

// followerObserverMirrors are the files of the metrics modules that declare
// an interface identical to Observer (they cannot import this package:
// it would pull pgx into every service that exports metrics), and its
// name there.
var followerObserverMirrors = []string{"../tiercacheprom/follower_test.go", "../tiercacheotel/follower_test.go"}

// TestObserverMirrors: the interface that tiercacheprom's and
// tiercacheotel's tests check their follower observers against has
// Observer's methods, with the same signatures, so that a change of
// Observer that the modules do not follow fails here. It reads their
// sources, and skips when they are not beside this module (a copy from the
// module cache).
func TestObserverMirrors(t *testing.T) {
	want := map[string]string{}
	ot := reflect.TypeFor[Observer]()
	for i := range ot.NumMethod() {
		m := ot.Method(i)
		want[m.Name] = strings.TrimPrefix(m.Type.String(), "func")
	}
	for _, path := range followerObserverMirrors {
		t.Run(filepath.Base(filepath.Dir(path)), func(t *testing.T) {
			if _, err := os.Stat(filepath.Dir(path)); errors.Is(err, fs.ErrNotExist) {
				t.Skipf("the module %s is not beside this one", filepath.Dir(path))
			}
			src, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, path, src, 0)
			if err != nil {
				t.Fatal(err)
			}
			var iface *ast.InterfaceType
			ast.Inspect(f, func(n ast.Node) bool {
				if ts, ok := n.(*ast.TypeSpec); ok && ts.Name.Name == "followerObserver" {
					iface, _ = ts.Type.(*ast.InterfaceType)
				}
				return iface == nil
			})
			if iface == nil {
				t.Fatalf("%s declares no interface followerObserver", path)
			}
			got := map[string]string{}
			for _, m := range iface.Methods.List {
				ft, ok := m.Type.(*ast.FuncType)
				if !ok || len(m.Names) != 1 {
					t.Fatalf("%s: followerObserver embeds %s; want methods only", path, types.ExprString(m.Type))
				}
				got[m.Names[0].Name] = signature(ft)
			}
			if !maps.Equal(got, want) {
				t.Errorf("%s: followerObserver has the methods %v; tiercachepg.Observer has %v", path, got, want)
			}
		})
	}
}

// signature is a function type's parameters and results as reflect prints
// them: "(int, time.Duration)", "(error) bool".
func signature(ft *ast.FuncType) string {
	list := func(fl *ast.FieldList) []string {
		var out []string
		if fl == nil {
			return out
		}
		for _, f := range fl.List {
			for range max(len(f.Names), 1) {
				out = append(out, types.ExprString(f.Type))
			}
		}
		return out
	}
	s := "(" + strings.Join(list(ft.Params), ", ") + ")"
	switch res := list(ft.Results); len(res) {
	case 0:
	case 1:
		s += " " + res[0]
	default:
		s += " (" + strings.Join(res, ", ") + ")"
	}
	return s
}

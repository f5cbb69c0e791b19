package tiercachepg_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg"
)

// flaky wraps an InvalidateFunc with failures the test switches on and
// off, and records the calls.
type flaky struct {
	next    atomic.Pointer[tiercachepg.InvalidateFunc]
	failing atomic.Bool
	calls   atomic.Int64
	mu      sync.Mutex
	sizes   []int // keys per call that returned nil
}

func newFlaky(next tiercachepg.InvalidateFunc) *flaky {
	f := &flaky{}
	f.next.Store(&next)
	return f
}

func (f *flaky) invalidate(ctx context.Context, inv tiercache.Invalidation) error {
	f.calls.Add(1)
	if f.failing.Load() {
		return fmt.Errorf("%w: injected failure", tiercache.ErrRedis)
	}
	err := (*f.next.Load())(ctx, inv)
	if err == nil {
		f.mu.Lock()
		f.sizes = append(f.sizes, len(inv.Keys))
		f.mu.Unlock()
	}
	return err
}

// productsTable creates a table of n rows with versions 0, and returns a
// KeyPattern map of it (key "<name>:{id}").
func productsTable(t testing.TB, pg *pgEnv, name string, n int) tiercachepg.MapFunc {
	t.Helper()
	pg.exec(t, fmt.Sprintf(`CREATE TABLE %s (id int PRIMARY KEY, version int NOT NULL)`, name))
	pg.exec(t, fmt.Sprintf(`INSERT INTO %s SELECT g, 0 FROM generate_series(1, %d) g`, name, n))
	m, err := tiercachepg.KeyPattern(tiercachepg.Table{Name: name, Key: name + ":{id}"})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestHoldsPositionWhileInvalidateFails: while every invalidation fails,
// the follower reads the commits but confirms none of them, to itself or
// to the slot; killed then, its successor invalidates them.
func TestHoldsPositionWhileInvalidateFails(t *testing.T) {
	pg := newPG(t)
	m := productsTable(t, pg, "items", 10)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	ctx := context.Background()
	for i := 1; i <= 10; i++ {
		if err := c.Set(ctx, fmt.Sprint("items:", i), 0); err != nil {
			t.Fatal(err)
		}
	}
	fl := newFlaky(c.Invalidate)
	fl.failing.Store(true)
	opts := tiercachepg.Options{
		Slot: "hold", Publication: "hold", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: fl.invalidate, StatusInterval: 20 * time.Millisecond, MaxBackoff: 10 * time.Millisecond,
	}
	r := startFollower(t, pg.dsn, opts)
	waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })
	before := r.f.Stats().ConfirmedLSN
	pg.exec(t, `UPDATE items SET version = 1`)
	lsn := pg.lsn(t)
	waitUntil(t, "the commit read and failed many times", func() bool {
		s := r.f.Stats()
		return s.ReceivedLSN > before && s.Failures >= 20
	})
	s := r.f.Stats()
	if s.ConfirmedLSN >= s.ReceivedLSN || s.Pending != 1 || s.Transactions != 0 {
		t.Fatalf("while failing: %+v; want the commit received, pending and not confirmed", s)
	}
	if got := pg.slotConfirmed(t, "hold"); got >= s.ReceivedLSN {
		t.Fatalf("the slot confirmed %s, past the failed commit's end %s", got, s.ReceivedLSN)
	}
	r.stop(t) // killed while failing

	fl.failing.Store(false)
	r2 := startFollower(t, pg.dsn, opts)
	waitConfirmed(t, r2.f, lsn)
	for i := 1; i <= 10; i++ {
		if v, found := cached(t, c, fmt.Sprint("items:", i)); found {
			t.Errorf("items:%d still cached (%d) after the successor caught up", i, v)
		}
	}
}

// TestKeepsConnectionThroughBackpressure: with the queue full and every
// invalidation failing, the follower stops reading but goes on answering
// the server, so that a short wal_sender_timeout does not drop the
// connection; then it catches up on the same connection.
func TestKeepsConnectionThroughBackpressure(t *testing.T) {
	pg := newPG(t, "wal_sender_timeout=1s")
	m := productsTable(t, pg, "items", 50)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	fl := newFlaky(c.Invalidate)
	fl.failing.Store(true)
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "bp", Publication: "bp", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: fl.invalidate, MaxPending: 2, MaxBatchKeys: 1,
		StatusInterval: 10 * time.Second, // capped to a third of wal_sender_timeout
		MaxBackoff:     50 * time.Millisecond,
	})
	waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })
	for i := 1; i <= 50; i++ {
		pg.exec(t, `UPDATE items SET version = version + 1 WHERE id = $1`, i)
	}
	lsn := pg.lsn(t)
	waitUntil(t, "a full queue", func() bool { return r.f.Stats().Blocked })
	// Three times wal_sender_timeout with the stream unread: a follower
	// that did not answer would have been dropped by now.
	time.Sleep(3 * time.Second)
	fl.failing.Store(false)
	waitConfirmed(t, r.f, lsn)
	if s := r.f.Stats(); s.StreamErrors != 0 || s.Connects != 1 {
		t.Errorf("stream errors %d, connects %d: want 0 and 1 (the connection kept)", s.StreamErrors, s.Connects)
	}
}

// TestBatching: transactions that queue up while an invalidation is in
// flight are merged into one call; a transaction larger than MaxBatchKeys
// is split, and confirmed only once all its calls returned nil.
func TestBatching(t *testing.T) {
	pg := newPG(t)
	m := productsTable(t, pg, "items", 2500)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	fl := newFlaky(c.Invalidate)
	fl.failing.Store(true)
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "batch", Publication: "batch", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: fl.invalidate, MaxBatchKeys: 1000, MaxBackoff: 20 * time.Millisecond,
		StatusInterval: 20 * time.Millisecond,
	})
	waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })

	for i := 1; i <= 200; i++ {
		pg.exec(t, `UPDATE items SET version = version + 1 WHERE id = $1`, i)
	}
	lsn := pg.lsn(t)
	waitUntil(t, "200 pending", func() bool { return r.f.Stats().Pending == 200 })
	fl.failing.Store(false)
	waitConfirmed(t, r.f, lsn)
	if s := r.f.Stats(); s.Calls > 2 || s.Transactions != 200 {
		t.Errorf("200 queued transactions took %d calls (%d transactions): want at most 2", s.Calls, s.Transactions)
	}

	// One transaction of 2500 rows: three calls of at most 1000 keys; the
	// third fails for a while, and the transaction stays unconfirmed.
	calls0 := r.f.Stats().Calls
	var third atomic.Bool
	next := tiercachepg.InvalidateFunc(func(ctx context.Context, inv tiercache.Invalidation) error {
		if r.f.Stats().Calls == calls0+2 && !third.Load() {
			third.Store(true)
			return fmt.Errorf("%w: the third call fails once", tiercache.ErrRedis)
		}
		return c.Invalidate(ctx, inv)
	})
	fl.next.Store(&next)
	pg.exec(t, `UPDATE items SET version = version + 1`)
	lsn = pg.lsn(t)
	waitUntil(t, "the third call to fail", third.Load)
	if s := r.f.Stats(); s.ConfirmedLSN >= s.ReceivedLSN {
		t.Errorf("confirmed %s with the third call failed (received %s)", s.ConfirmedLSN, s.ReceivedLSN)
	}
	waitConfirmed(t, r.f, lsn)
	fl.mu.Lock()
	sizes := fl.sizes[len(fl.sizes)-3:]
	fl.mu.Unlock()
	if s := r.f.Stats(); s.Calls != calls0+3 || sizes[0] != 1000 || sizes[1] != 1000 || sizes[2] != 500 {
		t.Errorf("a 2500-key transaction took %d calls of %v keys; want 3 of 1000, 1000, 500", s.Calls-calls0, sizes)
	}
}

// TestDeadLetters: changes Map cannot map (an error, a panic, an empty key,
// a partial answer) are counted, logged and handed to the policy, whose
// invalidation is applied; the stream goes on past them.
func TestDeadLetters(t *testing.T) {
	pg := newPG(t)
	keyMap := productsTable(t, pg, "items", 20)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	ctx := context.Background()
	for _, k := range []string{"items:1", "items:15", "fallback", "items:16"} {
		if err := c.Set(ctx, k, 0, tiercache.WithTags("tag:"+k)); err != nil {
			t.Fatal(err)
		}
	}
	m := func(ch tiercachepg.Change) (tiercache.Invalidation, error) {
		switch ch.New["id"] {
		case "13":
			return tiercache.Invalidation{}, errors.New("no mapping for 13")
		case "14":
			panic("Map bug on 14")
		case "15": // knows the key but not the tag
			return tiercache.Invalidation{Keys: []string{"items:15"}}, errors.New("tag of 15 unknown")
		case "16":
			return tiercache.Invalidation{Keys: []string{""}}, nil
		}
		return keyMap(ch)
	}
	var mu sync.Mutex
	var dead []string
	policy := func(ctx context.Context, ch tiercachepg.Change, err error) (tiercache.Invalidation, error) {
		mu.Lock()
		dead = append(dead, ch.New["id"])
		mu.Unlock()
		if !errors.Is(err, tiercachepg.ErrUnmapped) && ch.New["id"] != "13" && ch.New["id"] != "15" {
			t.Errorf("dead letter %s: %v does not wrap ErrUnmapped", ch.New["id"], err)
		}
		switch ch.New["id"] {
		case "13":
			return tiercache.Invalidation{Tags: []string{"tag:fallback"}}, nil
		case "14":
			return tiercache.Invalidation{}, errors.New("the dead-letter store is down")
		}
		return tiercache.Invalidation{}, nil
	}
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "dead", Publication: "dead", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: c.Invalidate, DeadLetter: policy, StatusInterval: 20 * time.Millisecond,
	})
	waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })
	pg.exec(t, `UPDATE items SET version = 1 WHERE id IN (1, 13, 14, 15, 16)`)
	pg.exec(t, `UPDATE items SET version = 2 WHERE id = 2`) // after them: the stream goes on
	waitConfirmed(t, r.f, pg.lsn(t))

	s := r.f.Stats()
	if s.Unmapped != 4 || s.DeadLetterErrors != 1 || s.Changes != 6 {
		t.Errorf("unmapped %d, dead-letter errors %d, changes %d: want 4, 1, 6", s.Unmapped, s.DeadLetterErrors, s.Changes)
	}
	mu.Lock()
	if got := strings.Join(dead, ","); got != "13,14,15,16" {
		t.Errorf("dead letters %s, want 13,14,15,16", got)
	}
	mu.Unlock()
	for _, k := range []string{"items:1", "items:15", "fallback"} {
		if _, found := cached(t, c, k); found {
			t.Errorf("%s still cached", k)
		}
	}
	if _, found := cached(t, c, "items:16"); !found {
		t.Error("items:16 was invalidated, though nothing asked for it")
	}
}

// TestInvalidateInstead: the policy that invalidates a broad tag for any
// change that cannot be mapped; here a TRUNCATE without TruncateTags.
func TestInvalidateInstead(t *testing.T) {
	pg := newPG(t)
	m := productsTable(t, pg, "items", 3)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	ctx := context.Background()
	if err := c.Set(ctx, "list", 1, tiercache.WithTags("items")); err != nil {
		t.Fatal(err)
	}
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "instead", Publication: "instead", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: c.Invalidate, StatusInterval: 20 * time.Millisecond,
		DeadLetter: tiercachepg.InvalidateInstead(tiercache.Invalidation{Tags: []string{"items"}}),
	})
	waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })
	pg.exec(t, `TRUNCATE items`)
	waitConfirmed(t, r.f, pg.lsn(t))
	if _, found := cached(t, c, "list"); found {
		t.Error("the tagged value survived a TRUNCATE under InvalidateInstead")
	}
	if s := r.f.Stats(); s.Unmapped != 1 {
		t.Errorf("unmapped %d, want 1", s.Unmapped)
	}
}

// TestVersionIgnored: the follower's invalidations are unversioned. A Map
// that returns a Version gets its keys invalidated, the Invalidate calls
// carry Version 0, and one warning says so (not one per change).
func TestVersionIgnored(t *testing.T) {
	pg := newPG(t)
	keyMap := productsTable(t, pg, "items", 3)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	ctx := context.Background()
	for _, k := range []string{"items:1", "items:2"} {
		if err := c.Set(ctx, k, 0); err != nil {
			t.Fatal(err)
		}
	}
	m := func(ch tiercachepg.Change) (tiercache.Invalidation, error) {
		inv, err := keyMap(ch)
		inv.Version = 42
		return inv, err
	}
	var versions sync.Map // Version seen by Invalidate -> true
	inv := func(ctx context.Context, inv tiercache.Invalidation) error {
		versions.Store(inv.Version, true)
		return c.Invalidate(ctx, inv)
	}
	logger, warnings := countLogs(t, "Version is ignored")
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "versioned", Publication: "versioned", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: inv, StatusInterval: 20 * time.Millisecond, Logger: logger,
	})
	waitUntilStreaming(t, r)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 1`)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 2`)
	waitConfirmed(t, r.f, pg.lsn(t))

	versions.Range(func(v, _ any) bool {
		if v.(uint64) != 0 {
			t.Errorf("Invalidate got Version %d; the follower's invalidations are unversioned", v)
		}
		return true
	})
	for _, k := range []string{"items:1", "items:2"} {
		if _, found := cached(t, c, k); found {
			t.Errorf("%s still cached", k)
		}
	}
	if n := warnings.Load(); n != 1 {
		t.Errorf("%d warnings about the ignored Version, want 1", n)
	}
}

// TestInvalidMappingDeadLettered: an Invalidation that tiercache would
// refuse (more than 64 tags, an empty tag, a tag over 255 bytes or one
// that starts with '}') is an
// unmapped change: counted and handed to the dead-letter policy, with its
// valid part applied, and never a call retried for ever.
func TestInvalidMappingDeadLettered(t *testing.T) {
	pg := newPG(t)
	keyMap := productsTable(t, pg, "items", 5)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	ctx := context.Background()
	for _, k := range []string{"items:1", "items:2", "items:3", "items:4", "items:5"} {
		if err := c.Set(ctx, k, 0, tiercache.WithTags("tag:"+k)); err != nil {
			t.Fatal(err)
		}
	}
	m := func(ch tiercachepg.Change) (tiercache.Invalidation, error) {
		inv, err := keyMap(ch)
		id := ch.New["id"]
		switch id {
		case "1":
			for i := range 70 {
				inv.Tags = append(inv.Tags, fmt.Sprint("many:", i))
			}
		case "2":
			inv.Tags = []string{""}
		case "3":
			inv.Tags = []string{strings.Repeat("x", 256)}
		case "5":
			inv.Tags = []string{"}x"}
		}
		inv.Tags = append(inv.Tags, "tag:items:"+id)
		return inv, err
	}
	var mu sync.Mutex
	var dead []string
	policy := func(ctx context.Context, ch tiercachepg.Change, err error) (tiercache.Invalidation, error) {
		if !errors.Is(err, tiercachepg.ErrUnmapped) {
			t.Errorf("dead letter %s: %v does not wrap ErrUnmapped", ch.New["id"], err)
		}
		mu.Lock()
		dead = append(dead, ch.New["id"])
		mu.Unlock()
		return tiercache.Invalidation{}, nil
	}
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "invalid", Publication: "invalid", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: c.Invalidate, DeadLetter: policy, StatusInterval: 20 * time.Millisecond,
	})
	waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })
	pg.exec(t, `UPDATE items SET version = 1 WHERE id IN (1, 2, 3, 4, 5)`)
	waitConfirmed(t, r.f, pg.lsn(t))

	s := r.f.Stats()
	if s.Unmapped != 4 || s.Failures != 0 {
		t.Errorf("unmapped %d, failed calls %d: want 4, 0", s.Unmapped, s.Failures)
	}
	mu.Lock()
	if got := strings.Join(dead, ","); got != "1,2,3,5" {
		t.Errorf("dead letters %s, want 1,2,3,5", got)
	}
	mu.Unlock()
	for _, k := range []string{"items:1", "items:2", "items:3", "items:4", "items:5"} {
		if _, found := cached(t, c, k); found {
			t.Errorf("%s still cached", k)
		}
	}
}

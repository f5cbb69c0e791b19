package tiercachepg_test

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg"
	"github.com/tiercache/tiercache/tiercachepg/internal/netproxy"
)

// The soak: committed updates across three tables while the follower is
// killed and restarted twice (once while Redis is unreachable) and Redis
// is unreachable for a few seconds. Two reader instances with L1 keep
// loading rows from the database meanwhile, so that every update has
// something stale to invalidate. At the end, once the follower has caught
// up, no instance may serve a value older than its row's last commit; and
// at every moment of the run the follower's confirmed position (and the
// slot's) must be behind every transaction whose keys have not all been
// invalidated since it was read.

// TestSoakSingle runs the soak on one Redis node, made unreachable
// through a proxy (so that it keeps its stale values: a position
// confirmed too early would leave them there for the final check to see).
func TestSoakSingle(t *testing.T) {
	srv := redistest.SharedServer(t)
	proxy := netproxy.Start(t, srv.Addr)
	p := prefix(t)
	// The follower's cache reaches Redis through the proxy; the readers
	// directly, and go on serving (and filling) through the outage.
	fc := newCache(t, redis.NewClient(&redis.Options{Addr: proxy.Addr, ContextTimeoutEnabled: true}), p)
	readers := []*tiercache.Cache[int]{
		newCache(t, srv.Client(t, ctxTimeout), p, tiercache.WithL1(10_000)),
		newCache(t, srv.Client(t, ctxTimeout), p, tiercache.WithL1(10_000)),
	}
	direct := newCache(t, srv.Client(t, ctxTimeout), p) // reads Redis only
	runSoak(t, soakConfig{
		txns:    10_000,
		outage:  5 * time.Second,
		fc:      fc,
		readers: readers,
		direct:  direct,
		down:    proxy.Disable,
		up:      func() { proxy.Enable(t) },
	})
}

// TestSoakCluster runs the same soak on a three-master cluster, one of
// whose masters is stopped for the outage and restarted empty (the other
// two keep their stale values).
func TestSoakCluster(t *testing.T) {
	cl := redistest.StartCluster(t, 3, 0)
	p := prefix(t)
	client := func() redis.UniversalClient {
		return cl.Client(t, func(o *redis.ClusterOptions) { o.ContextTimeoutEnabled = true })
	}
	fc := newCache(t, client(), p)
	readers := []*tiercache.Cache[int]{
		newCache(t, client(), p, tiercache.WithL1(10_000)),
		newCache(t, client(), p, tiercache.WithL1(10_000)),
	}
	direct := newCache(t, client(), p)
	runSoak(t, soakConfig{
		txns:    10_000,
		outage:  5 * time.Second,
		fc:      fc,
		readers: readers,
		direct:  direct,
		down:    cl.Masters[0].Stop,
		up:      func() { cl.Masters[0].Restart(t) },
	})
}

type soakConfig struct {
	txns    int
	outage  time.Duration
	fc      *tiercache.Cache[int]   // the follower's cache
	readers []*tiercache.Cache[int] // instances with L1
	direct  *tiercache.Cache[int]   // no L1: what Redis holds
	down    func()                  // make Redis unreachable to fc
	up      func()
}

const (
	soakTables  = 3
	soakRows    = 100 // per table
	soakWriters = 4
)

func soakKey(tbl, id int) string { return fmt.Sprintf("t%d:%d", tbl, id) }

func runSoak(t *testing.T, cfg soakConfig) {
	pg := newPG(t)
	for i := range soakTables {
		pg.exec(t, fmt.Sprintf(`CREATE TABLE t%d (id int PRIMARY KEY, version int NOT NULL)`, i))
		pg.exec(t, fmt.Sprintf(`INSERT INTO t%d SELECT g, 0 FROM generate_series(0, %d) g`, i, soakRows-1))
	}
	ctx := context.Background()

	var tables []tiercachepg.Table
	var names []string
	for i := range soakTables {
		name := fmt.Sprintf("t%d", i)
		names = append(names, name)
		tables = append(tables, tiercachepg.Table{Name: name, Key: name + ":{id}"})
	}
	keyMap, err := tiercachepg.KeyPattern(tables...)
	if err != nil {
		t.Fatal(err)
	}
	led := newLedger(keyMap, cfg.fc.Invalidate)
	var lagReports atomic.Int64
	opts := tiercachepg.Options{
		Slot: "soak", Publication: "soak", Tables: names, Create: true,
		Map: led.mapChange, Invalidate: led.invalidate,
		StatusInterval: 50 * time.Millisecond, LagInterval: 100 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
		MaxLag:     16 << 10,
		OnLag: func(l tiercachepg.Lag) {
			if l.Exceeded {
				lagReports.Add(1)
			}
		},
	}

	// The current follower, for the monitor.
	var cur atomic.Pointer[running]
	start := func() *running {
		r := startFollower(t, pg.dsn, opts)
		cur.Store(r)
		return r
	}
	f1 := start()

	// The monitor checks the ledger against the follower's confirmed
	// position and the slot's, all along.
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			if r := cur.Load(); r != nil {
				led.check(t, "follower", r.f.Stats().ConfirmedLSN)
			}
			led.check(t, "slot", pg.slotConfirmedOrZero("soak"))
		}
	})

	// Readers: load rows through each reader instance, from the database.
	load := func(tbl, id int) func(context.Context) (int, error) {
		return func(ctx context.Context) (int, error) { return pg.version(ctx, fmt.Sprintf("t%d", tbl), id) }
	}
	warmed := make(map[string]int)
	warm := func() {
		for _, c := range cfg.readers {
			for tbl := range soakTables {
				for id := range soakRows {
					v, err := c.GetOrLoad(ctx, soakKey(tbl, id), load(tbl, id))
					if err != nil {
						t.Fatal(err)
					}
					warmed[soakKey(tbl, id)] = v
				}
			}
		}
	}
	warm() // Redis and both L1s hold version 0 of every row
	// From the outage on, the readers read only the lower half of the rows,
	// so that the upper half keeps in Redis what warm put there before the
	// outage's commits: only the follower can remove it.
	var reads atomic.Int64
	var readRows atomic.Int64
	readRows.Store(soakRows)
	for _, c := range cfg.readers {
		for range 2 {
			bg.Go(func() {
				for {
					select {
					case <-stop:
						return
					case <-time.After(2 * time.Millisecond):
					}
					tbl, id := rand.IntN(soakTables), rand.IntN(int(readRows.Load()))
					_, _ = c.GetOrLoad(ctx, soakKey(tbl, id), load(tbl, id))
					reads.Add(1)
				}
			})
		}
	}

	// Writers: cfg.txns transactions of 1 to 3 row updates, each committed
	// only once the controller below allows its number, so that the phases
	// (kill, outage, kill within it) have commits in them however fast or
	// slow the machine. Those after the outage touch only the lower half
	// of the rows, so that the upper half's last commits are at the latest
	// the outage's, whose invalidations failed at first.
	var committed, allowed, next atomic.Int64
	var writers sync.WaitGroup
	afterOutage := int64(cfg.txns) * 55 / 100
	for range soakWriters {
		writers.Go(func() {
			for {
				n := next.Add(1)
				if n > int64(cfg.txns) {
					return
				}
				for n > allowed.Load() {
					time.Sleep(time.Millisecond)
				}
				rows := soakRows
				if n > afterOutage {
					rows = soakRows / 2
				}
				// Rows in one order in every transaction: no deadlocks.
				var picks [][2]int
				for range 1 + rand.IntN(3) {
					picks = append(picks, [2]int{rand.IntN(soakTables), rand.IntN(rows)})
				}
				slices.SortFunc(picks, func(a, b [2]int) int { return cmp.Or(a[0]-b[0], a[1]-b[1]) })
				b := &pgx.Batch{}
				for _, pk := range slices.Compact(picks) {
					b.Queue(fmt.Sprintf("UPDATE t%d SET version = version + 1 WHERE id = $1", pk[0]), pk[1])
				}
				if err := pg.pool.SendBatch(ctx, b).Close(); err != nil { // one implicit transaction
					t.Error(err)
					allowed.Store(int64(cfg.txns)) // let the others finish
					return
				}
				committed.Add(1)
			}
		})
	}
	// phase lets the writers go up to pct% of the transactions and waits
	// until they have committed them.
	phase := func(pct int) {
		n := int64(cfg.txns) * int64(pct) / 100
		allowed.Store(n)
		waitUntil(t, fmt.Sprintf("%d commits", n), func() bool { return committed.Load() >= n || t.Failed() })
	}

	// Kill and restart 1, outside the outage.
	phase(15)
	waitUntil(t, "first confirmation", func() bool { return f1.f.Stats().Transactions > 0 })
	f1.stop(t)
	cur.Store(nil)
	phase(25)
	f2 := start()

	// The outage: at least cfg.outage, with a kill and restart within.
	phase(40)
	warm() // every row cached as of now: the outage's commits make them stale
	readRows.Store(soakRows / 2)
	outageStart := time.Now()
	cfg.down()
	inOutage := pg.lsn(t)
	phase(45)
	// Follower 2 has read commits made during the outage and failed to
	// invalidate them; killed now, it must not have confirmed them.
	waitUntil(t, "follower 2 to fail", func() bool {
		s := f2.f.Stats()
		return s.Failures > 0 && s.ReceivedLSN > inOutage
	})
	f2.stop(t)
	cur.Store(nil)
	led.check(t, "slot after the kill", pg.slotConfirmedOrZero("soak"))
	f3 := start()
	phase(55)
	waitUntil(t, "follower 3 to fail and report the lag", func() bool {
		s := f3.f.Stats()
		return s.Failures > 0 && s.LagAlarms > 0
	})
	if rest := cfg.outage - time.Since(outageStart); rest > 0 {
		time.Sleep(rest) // the outage lasts its time; nothing is measured by it
	}
	cfg.up()
	allowed.Store(int64(cfg.txns))
	writers.Wait()
	if t.Failed() {
		close(stop)
		bg.Wait()
		return
	}

	// Catch up, then make sure the readers have had every message the
	// follower's invalidations published (one published after them, by
	// the same cache, has arrived).
	final := pg.lsn(t)
	waitConfirmed(t, f3.f, final)
	close(stop)
	bg.Wait()
	led.check(t, "follower", f3.f.Stats().ConfirmedLSN)
	for _, c := range cfg.readers {
		waitUntil(t, "sentinel set", func() bool { return c.Set(ctx, "sentinel", 1) == nil }) // breakers may still be open
	}
	waitUntil(t, "sentinel delete", func() bool { return cfg.fc.Delete(ctx, "sentinel") == nil })
	for _, c := range cfg.readers {
		waitUntil(t, "sentinel invalidation", func() bool { _, found := cached(t, c, "sentinel"); return !found })
	}

	// No instance serves a value older than its row's last commit.
	stale, hits, cold := 0, 0, 0
	for tbl := range soakTables {
		for id := range soakRows {
			want, err := pg.version(ctx, fmt.Sprintf("t%d", tbl), id)
			if err != nil {
				t.Fatal(err)
			}
			if id >= soakRows/2 && want != warmed[soakKey(tbl, id)] {
				cold++ // cached before the outage, changed in it, read by no one since
			}
			for i, c := range append([]*tiercache.Cache[int]{cfg.direct}, cfg.readers...) {
				v, found := cached(t, c, soakKey(tbl, id))
				if !found {
					continue
				}
				hits++
				if v != want {
					stale++
					if stale <= 10 {
						t.Errorf("instance %d serves %s = %d, its row is at %d", i, soakKey(tbl, id), v, want)
					}
				}
			}
		}
	}
	if stale > 0 {
		t.Errorf("%d stale values after the follower caught up", stale)
	}
	if cold == 0 {
		t.Error("no row of the upper half changed during the outage: the check above proves little")
	}
	s := f3.f.Stats()
	t.Logf("%d commits, %d reads, %d cached values checked, %d rows cached before the outage and changed only in it; last follower: %+v",
		committed.Load(), reads.Load(), hits, cold, s)
	if s.Unmapped != 0 || s.StreamErrors != 0 {
		t.Errorf("unmapped %d, stream errors %d: want none", s.Unmapped, s.StreamErrors)
	}
	if lagReports.Load() == 0 {
		t.Error("OnLag was never called, though the slot fell behind")
	}
	if led.calls.Load() == 0 || led.failed.Load() == 0 {
		t.Errorf("Invalidate: %d calls, %d failed: want both", led.calls.Load(), led.failed.Load())
	}
}

// slotConfirmedOrZero is the slot's confirmed_flush_lsn, or 0 if it cannot
// be read (before the slot exists).
func (e *pgEnv) slotConfirmedOrZero(slot string) tiercachepg.LSN {
	var s *string
	err := e.pool.QueryRow(context.Background(),
		"SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1", slot).Scan(&s)
	if err != nil || s == nil {
		return 0
	}
	var l tiercachepg.LSN
	_ = l.Scan(*s)
	return l
}

// ledger records what the follower was given to invalidate and what
// Invalidate did, to check the follower's positions against: for every
// transaction committed before a confirmed position, each of its keys must
// have been invalidated by a call that began after the follower read it.
type ledger struct {
	m   tiercachepg.MapFunc
	inv tiercachepg.InvalidateFunc

	seq           atomic.Uint64
	calls, failed atomic.Int64

	mu      sync.Mutex
	entries []ledgerEntry
	okSince map[string]uint64 // key → the latest seq a successful call began at
	errs    int
}

type ledgerEntry struct {
	commit tiercachepg.LSN
	seq    uint64
	keys   []string
}

func newLedger(m tiercachepg.MapFunc, inv tiercachepg.InvalidateFunc) *ledger {
	return &ledger{m: m, inv: inv, okSince: make(map[string]uint64)}
}

func (l *ledger) mapChange(c tiercachepg.Change) (tiercache.Invalidation, error) {
	inv, err := l.m(c)
	l.mu.Lock()
	l.entries = append(l.entries, ledgerEntry{commit: c.CommitLSN, seq: l.seq.Add(1), keys: inv.Keys})
	l.mu.Unlock()
	return inv, err
}

func (l *ledger) invalidate(ctx context.Context, inv tiercache.Invalidation) error {
	began := l.seq.Load()
	err := l.inv(ctx, inv)
	l.calls.Add(1)
	if err != nil {
		if !errors.Is(err, tiercache.ErrRedis) && ctx.Err() == nil {
			return fmt.Errorf("unexpected: %w", err)
		}
		l.failed.Add(1)
		return err
	}
	l.mu.Lock()
	for _, k := range inv.Keys {
		l.okSince[k] = max(l.okSince[k], began)
	}
	l.mu.Unlock()
	return nil
}

// check fails the test if pos (a confirmed position, of the follower or
// the slot) is past a transaction with a key not invalidated since.
func (l *ledger) check(t *testing.T, what string, pos tiercachepg.LSN) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, e := range l.entries {
		if e.commit >= pos {
			continue
		}
		for _, k := range e.keys {
			if l.okSince[k] < e.seq && l.errs < 5 {
				l.errs++
				t.Errorf("%s confirmed %s, past the commit at %s, whose key %s has not been invalidated since it was read",
					what, pos, e.commit, k)
			}
		}
	}
}

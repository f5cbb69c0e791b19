package tiercachepg_test

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg"
)

// applied is one call of Observer.Applied.
type applied struct {
	changes int
	delay   time.Duration
}

// slotLag is one call of Observer.SlotLag.
type slotLag struct {
	bytes    int64
	exceeded bool
}

// recorder is an Observer that records its calls; with panics set, each
// method panics after recording. The follower calls it from three
// goroutines.
type recorder struct {
	panics bool

	mu       sync.Mutex
	applied  []applied
	failed   []error
	unmapped []string
	lags     []slotLag
}

var _ tiercachepg.Observer = (*recorder)(nil)

func (r *recorder) Applied(changes int, delay time.Duration) {
	r.record(func() { r.applied = append(r.applied, applied{changes, delay}) })
}

func (r *recorder) Failed(err error) { r.record(func() { r.failed = append(r.failed, err) }) }

func (r *recorder) Unmapped(table string) {
	r.record(func() { r.unmapped = append(r.unmapped, table) })
}

func (r *recorder) SlotLag(bytes int64, exceeded bool) {
	r.record(func() { r.lags = append(r.lags, slotLag{bytes, exceeded}) })
}

func (r *recorder) record(f func()) {
	r.mu.Lock()
	f()
	r.mu.Unlock()
	if r.panics {
		panic("observer bug")
	}
}

// snapshot returns copies of what was recorded.
func (r *recorder) snapshot() (a []applied, failed []error, unmapped []string, lags []slotLag) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.applied), slices.Clone(r.failed), slices.Clone(r.unmapped), slices.Clone(r.lags)
}

// withChanges keeps the transactions that changed a followed table (a
// server older than 15 sends the empty ones too).
func withChanges(a []applied) []applied {
	return slices.DeleteFunc(a, func(x applied) bool { return x.changes == 0 })
}

// TestObserver: the follower reports each committed transaction's changes
// and commit-to-invalidation delay, in commit order, the failed
// Invalidate calls, the unmapped changes and every read of the slot's lag,
// above a tiny MaxLag while the invalidations fail; the same figures as
// its Stats.
func TestObserver(t *testing.T) {
	pg := newPG(t)
	keyMap := productsTable(t, pg, "items", 10)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	m := func(ch tiercachepg.Change) (tiercache.Invalidation, error) {
		if ch.New["id"] == "5" {
			return tiercache.Invalidation{}, errors.New("no mapping for 5")
		}
		return keyMap(ch)
	}
	fl := newFlaky(c.Invalidate)
	obs := &recorder{}
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "obs", Publication: "obs", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: fl.invalidate, Observer: obs,
		MaxLag: 1, LagInterval: 20 * time.Millisecond, StatusInterval: 20 * time.Millisecond, MaxBackoff: 10 * time.Millisecond,
	})
	waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })
	waitUntil(t, "a read of the slot's lag", func() bool { _, _, _, lags := obs.snapshot(); return len(lags) > 0 })

	// Three transactions of 1, 3 and 2 changes; one change of the last
	// is not mapped.
	start := time.Now()
	pg.exec(t, `UPDATE items SET version = 1 WHERE id = 1`)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id IN (2, 3, 4)`)
	pg.exec(t, `UPDATE items SET version = 1 WHERE id IN (5, 6)`)
	waitConfirmed(t, r.f, pg.lsn(t))
	elapsed := time.Since(start)
	got, failed, unmapped, _ := obs.snapshot()
	var changes []int
	for _, a := range withChanges(got) {
		changes = append(changes, a.changes)
		// The commit and the invalidation happened within elapsed, on
		// this host's clock (the database's commit time has microseconds).
		if a.delay <= 0 || a.delay > elapsed+time.Millisecond {
			t.Errorf("Applied with a delay of %v; want above 0 and at most the %v the commits took", a.delay, elapsed)
		}
	}
	if want := []int{1, 3, 2}; !slices.Equal(changes, want) {
		t.Errorf("Applied with changes %v, want %v", changes, want)
	}
	if !slices.Equal(unmapped, []string{"public.items"}) || len(failed) != 0 {
		t.Errorf("Unmapped %q, Failed %v; want public.items once and no failure", unmapped, failed)
	}
	s := r.f.Stats()
	if uint64(len(got)) != s.Transactions || uint64(len(got)) != s.Delay.Count || s.Changes != 6 {
		t.Errorf("%d calls of Applied; Stats: %d transactions, %d delays, %d changes (want 6)",
			len(got), s.Transactions, s.Delay.Count, s.Changes)
	}

	// While every invalidation fails, the slot's position is held: its
	// lag is above one byte.
	fl.failing.Store(true)
	pg.exec(t, `UPDATE items SET version = 2 WHERE id = 7`)
	lsn := pg.lsn(t)
	waitUntil(t, "failures and the lag above MaxLag reported", func() bool {
		_, failed, _, lags := obs.snapshot()
		return len(failed) >= 3 && slices.ContainsFunc(lags, func(l slotLag) bool { return l.exceeded })
	})
	fl.failing.Store(false)
	waitConfirmed(t, r.f, lsn)
	got, failed, _, lags := obs.snapshot()
	for _, err := range failed {
		if !errors.Is(err, tiercache.ErrRedis) {
			t.Errorf("Failed(%v), want the injected failure", err)
		}
	}
	for _, l := range lags {
		if l.bytes < 0 || l.exceeded != (l.bytes > 1) {
			t.Errorf("SlotLag(%d, %v) with MaxLag 1", l.bytes, l.exceeded)
		}
	}
	if a := withChanges(got); len(a) != 4 || a[3].changes != 1 || a[3].delay <= 0 {
		t.Errorf("Applied %v; want a fourth transaction of 1 change, once it was invalidated", a)
	}
	s = r.f.Stats()
	if uint64(len(failed)) != s.Failures || s.LagAlarms == 0 || s.ObserverPanics != 0 {
		t.Errorf("%d calls of Failed; Stats: %d failures, %d lag alarms, %d observer panics (want 0)",
			len(failed), s.Failures, s.LagAlarms, s.ObserverPanics)
	}
}

// TestObserverPanics: an observer whose every method panics holds up
// nothing: the commits are invalidated and confirmed, the panics counted,
// and Run returns nil when stopped. Without MaxLag no lag is reported as
// exceeded.
func TestObserverPanics(t *testing.T) {
	pg := newPG(t)
	m := productsTable(t, pg, "items", 10)
	c := newCache(t, redistest.SharedServer(t).Client(t, ctxTimeout), prefix(t))
	ctx := t.Context()
	obs := &recorder{panics: true}
	r := startFollower(t, pg.dsn, tiercachepg.Options{
		Slot: "panics", Publication: "panics", Tables: []string{"items"}, Create: true,
		Map: m, Invalidate: c.Invalidate, Observer: obs,
		LagInterval: 20 * time.Millisecond, StatusInterval: 20 * time.Millisecond,
	})
	waitUntil(t, "streaming", func() bool { return r.f.Stats().Streaming })
	for i := 1; i <= 10; i++ {
		key := fmt.Sprint("items:", i)
		if err := c.Set(ctx, key, 0); err != nil {
			t.Fatal(err)
		}
		pg.exec(t, `UPDATE items SET version = 1 WHERE id = $1`, i)
		waitConfirmed(t, r.f, pg.lsn(t))
		if _, found := cached(t, c, key); found {
			t.Fatalf("%s still cached after its commit was confirmed", key)
		}
	}
	waitUntil(t, "two reads of the slot's lag", func() bool { _, _, _, lags := obs.snapshot(); return len(lags) >= 2 })
	r.stop(t) // Run returns nil

	got, _, _, lags := obs.snapshot()
	s := r.f.Stats()
	if len(withChanges(got)) != 10 || s.Transactions != uint64(len(got)) {
		t.Errorf("Applied %d times (%d with changes), Stats.Transactions %d; want 10 with changes, as many as the transactions",
			len(got), len(withChanges(got)), s.Transactions)
	}
	if want := uint64(len(got) + len(lags)); s.ObserverPanics != want {
		t.Errorf("Stats.ObserverPanics = %d, want %d (every call)", s.ObserverPanics, want)
	}
	for _, l := range lags {
		if l.exceeded {
			t.Errorf("SlotLag(%d, true) without MaxLag", l.bytes)
		}
	}
}

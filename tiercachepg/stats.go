package tiercachepg

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Stats are the follower's figures, from [Follower.Stats]. Counters count
// from New, across runs.
type Stats struct {
	// Running reports that Run is in progress; Streaming that the
	// replication stream is up.
	Running, Streaming bool

	// ConfirmedLSN is the follower's position: the invalidations of every
	// change committed before it have returned nil. It is what the
	// follower reports to the slot (within StatusInterval), and where the
	// next run resumes.
	ConfirmedLSN LSN
	// ReceivedLSN is the end of the last committed transaction read from
	// the stream, whose invalidation may still be pending.
	ReceivedLSN LSN
	// ServerWALEnd is the server's WAL position as last reported on the
	// stream.
	ServerWALEnd LSN
	// SlotLagBytes is how far the slot's confirmed position
	// (confirmed_flush_lsn) is behind the server's current WAL position,
	// as last read from pg_replication_slots (every LagInterval); -1 until
	// it has been read.
	SlotLagBytes int64
	// LagExceeded reports that SlotLagBytes is above Options.MaxLag;
	// LagAlarms counts how often it went above.
	LagExceeded bool
	LagAlarms   uint64

	// Transactions and Changes count the committed transactions and row
	// changes whose invalidation returned nil (a transaction replayed after
	// a restart counts again).
	Transactions, Changes uint64
	// Ignored counts changes of tables not in Options.Tables.
	Ignored uint64
	// Unmapped counts changes Map failed on (each went to the dead-letter
	// policy); DeadLetterErrors the policy's errors.
	Unmapped, DeadLetterErrors uint64
	// Calls counts Invalidate calls that returned nil, Failures those that
	// returned an error (each retried).
	Calls, Failures uint64
	// Pending is the number of committed transactions read and not yet
	// invalidated. Blocked reports that MaxPending of them are queued and
	// the stream has stopped reading until invalidations succeed (it still
	// answers the server).
	Pending int
	Blocked bool
	// Connects counts replication connections that reached streaming;
	// StreamErrors the streams or connection attempts that failed.
	Connects, StreamErrors uint64
	// ObserverPanics counts the panics of Options.Observer's methods,
	// each recovered (and the first of them logged).
	ObserverPanics uint64

	// Delay is the commit-to-invalidation delay (from the commit time,
	// the server's clock, to the return of the Invalidate call that
	// covered it) of the last transactions. Options.Observer gets each
	// of them, for a histogram.
	Delay DelayStats
}

// DelayStats summarise the latest delays.
type DelayStats struct {
	// Count is the number of delays recorded since New; the quantiles are
	// of the last (at most) 4096.
	Count         uint64
	P50, P99, Max time.Duration
}

// delayWindow keeps the latest delays for quantiles.
type delayWindow struct {
	mu    sync.Mutex
	ring  [4096]time.Duration
	n     uint64
	count uint64
}

func (w *delayWindow) add(d time.Duration) {
	w.mu.Lock()
	w.ring[w.n%uint64(len(w.ring))] = max(d, 0)
	w.n++
	w.count++
	w.mu.Unlock()
}

func (w *delayWindow) stats() DelayStats {
	w.mu.Lock()
	n := min(w.n, uint64(len(w.ring)))
	ds := slices.Clone(w.ring[:n])
	s := DelayStats{Count: w.count}
	w.mu.Unlock()
	if len(ds) == 0 {
		return s
	}
	slices.Sort(ds)
	q := func(p float64) time.Duration { return ds[int(p*float64(len(ds)-1)+0.5)] }
	s.P50, s.P99, s.Max = q(0.50), q(0.99), ds[len(ds)-1]
	return s
}

// counters are the follower's atomics behind Stats.
type counters struct {
	running, streaming  atomic.Bool
	confirmed, received atomic.Uint64
	serverEnd           atomic.Uint64
	slotLag             atomic.Int64
	lagExceeded         atomic.Bool
	lagAlarms           atomic.Uint64
	txns, changes       atomic.Uint64
	ignored, unmapped   atomic.Uint64
	deadLetterErrors    atomic.Uint64
	calls, failures     atomic.Uint64
	pending             atomic.Int64
	blocked             atomic.Bool
	connects, streamErr atomic.Uint64
	observerPanics      atomic.Uint64
	delays              delayWindow
}

// advance raises a to v if v is larger.
func advance(a *atomic.Uint64, v uint64) {
	for {
		cur := a.Load()
		if v <= cur || a.CompareAndSwap(cur, v) {
			return
		}
	}
}

// Stats returns the follower's current figures. It is safe to call at any
// time, from any goroutine.
func (f *Follower) Stats() Stats {
	c := &f.c
	return Stats{
		Running:          c.running.Load(),
		Streaming:        c.streaming.Load(),
		ConfirmedLSN:     LSN(c.confirmed.Load()),
		ReceivedLSN:      LSN(c.received.Load()),
		ServerWALEnd:     LSN(c.serverEnd.Load()),
		SlotLagBytes:     c.slotLag.Load(),
		LagExceeded:      c.lagExceeded.Load(),
		LagAlarms:        c.lagAlarms.Load(),
		Transactions:     c.txns.Load(),
		Changes:          c.changes.Load(),
		Ignored:          c.ignored.Load(),
		Unmapped:         c.unmapped.Load(),
		DeadLetterErrors: c.deadLetterErrors.Load(),
		Calls:            c.calls.Load(),
		Failures:         c.failures.Load(),
		Pending:          int(c.pending.Load()),
		Blocked:          c.blocked.Load(),
		Connects:         c.connects.Load(),
		StreamErrors:     c.streamErr.Load(),
		ObserverPanics:   c.observerPanics.Load(),
		Delay:            c.delays.stats(),
	}
}

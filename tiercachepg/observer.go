package tiercachepg

import (
	"log/slog"
	"runtime/debug"
	"sync/atomic"
	"time"
)

// Observer receives the follower's figures as they happen: the push
// counterpart of [Follower.Stats], for metrics. Set it as
// [Options.Observer]; tiercacheprom's Collector.Follower and
// tiercacheotel's NewFollower return one. Embed [NopObserver] to implement
// only some of the methods.
//
// The methods take standard types only, so that a metrics module can
// implement the interface without importing this package (and pgx with
// it).
//
// WARNING: the methods are called from the follower's own goroutines
// (Unmapped from the stream's, Applied and Failed from the invalidations',
// SlotLag from the lag poll's), concurrently with one another, and the
// follower waits for each to return: they must be safe for concurrent use
// and quick (an atomic addition, a histogram observation), never waiting
// for I/O or for a lock held elsewhere. A slow Applied holds up the
// invalidations, a slow Unmapped the stream. A panic is recovered, logged
// and counted (Stats.ObserverPanics); it never stops the follower.
type Observer interface {
	// Applied is called once per committed transaction whose
	// invalidations have all returned nil, in commit order, just before
	// the follower's position moves past it. changes is its number of row
	// changes of the followed tables (what Stats.Changes counts); delay is
	// the time from its commit, on the database's clock, to the return of
	// the Invalidate call that covered it (what Stats.Delay summarises),
	// 0 if the two clocks disagree so much that it would be negative. A
	// transaction replayed after a restart is reported again.
	Applied(changes int, delay time.Duration)
	// Failed is called for each Invalidate call that returned an error
	// and will be retried (what Stats.Failures counts).
	Failed(err error)
	// Unmapped is called for each change handed to the dead-letter policy
	// (what Stats.Unmapped counts), with its table as "schema.name", or ""
	// when the stream did not say which table it is (a change of a
	// relation it had not described, or one that does not decode).
	Unmapped(table string)
	// SlotLag is called at each read of the slot's lag, every
	// LagInterval: bytes as Stats.SlotLagBytes, exceeded as
	// Stats.LagExceeded (always false without Options.MaxLag). It is not
	// called when the lag could not be read.
	SlotLag(bytes int64, exceeded bool)
}

// NopObserver implements [Observer] and does nothing.
type NopObserver struct{}

func (NopObserver) Applied(int, time.Duration) {}
func (NopObserver) Failed(error)               {}
func (NopObserver) Unmapped(string)            {}
func (NopObserver) SlotLag(int64, bool)        {}

// observer calls Options.Observer, if there is one, and recovers its
// panics. Its fields are set in New and only read afterwards.
type observer struct {
	o      Observer       // nil: none
	panics *atomic.Uint64 // Stats.ObserverPanics
	log    *slog.Logger
}

func (s observer) Applied(changes int, delay time.Duration) {
	if s.o == nil {
		return
	}
	defer s.recover("Applied")
	s.o.Applied(changes, delay)
}

func (s observer) Failed(err error) {
	if s.o == nil {
		return
	}
	defer s.recover("Failed")
	s.o.Failed(err)
}

func (s observer) Unmapped(table string) {
	if s.o == nil {
		return
	}
	defer s.recover("Unmapped")
	s.o.Unmapped(table)
}

func (s observer) SlotLag(bytes int64, exceeded bool) {
	if s.o == nil {
		return
	}
	defer s.recover("SlotLag")
	s.o.SlotLag(bytes, exceeded)
}

// recover, deferred by the methods above, recovers a panic of the
// observer's method and counts it. It logs the first panic, with its
// stack, and then those that bring the count to a power of two: an
// observer that panics on every transaction must not flood the log, nor
// hide that it goes on panicking.
func (s observer) recover(method string) {
	p := recover()
	if p == nil {
		return
	}
	n := s.panics.Add(1)
	if n&(n-1) == 0 {
		s.log.Error("tiercachepg: Observer panicked; the follower goes on",
			"method", method, "panics", n, "panic", p, "stack", string(debug.Stack()))
	}
}

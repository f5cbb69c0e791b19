package store

import (
	"context"
	"errors"
	"maps"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// State is a breaker's state; the cache's State has the same values.
type State uint8

const (
	Closed State = iota
	HalfOpen
	Open
)

// BreakerSettings are the cache's (tiercache.BreakerSettings).
type BreakerSettings struct {
	ConsecutiveFailures uint32
	OpenFor             time.Duration
	Probes              uint32
}

// breaker wraps gobreaker's two-step breaker with a fast path for the
// common case. gobreaker takes a mutex and reads the clock twice per call;
// at tens of thousands of reads a second from many goroutines that mutex is
// the hottest lock in the process. While the breaker is closed and no
// failure is pending, a success changes nothing in gobreaker (it resets a
// failure count that is already 0), so such calls skip it: they are let
// through on an atomic load, and only a failure, or the first success after
// one, is reported to gobreaker (by a late Allow and its done). Open and
// half-open calls go through gobreaker as usual, which keeps its state
// machine, probe limit and timings the only ones.
type breaker struct {
	cb     *gobreaker.TwoStepCircuitBreaker[struct{}]
	closed atomic.Bool // the state is closed (kept by OnStateChange)
	dirty  atomic.Bool // a failure was reported since the last reported success

	// Changes of state are told to onChange (the cache's Observer, the slot
	// memo) outside gobreaker's lock, which is held while gobreaker calls
	// OnStateChange: an Observer that reads Cache.Stats (every breaker's
	// state) from BreakerChanged would otherwise wait for that lock
	// forever. OnStateChange queues the change; whoever made the call that
	// changed it delivers the queue once gobreaker returns (deliver).
	onChange   func(from, to State)
	queued     atomic.Bool // changes wait in pending
	mu         sync.Mutex  // guards pending and delivering
	pending    []stateChange
	delivering bool // a goroutine is delivering: others leave the queue to it, in order
}

type stateChange struct{ from, to State }

func newBreaker(s BreakerSettings, onChange func(from, to State)) *breaker {
	b := &breaker{onChange: onChange}
	b.closed.Store(true)
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "tiercache-redis",
		MaxRequests: s.Probes,
		Timeout:     s.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= s.ConsecutiveFailures },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			b.closed.Store(to == gobreaker.StateClosed)
			b.mu.Lock()
			b.pending = append(b.pending, stateChange{breakerState(from), breakerState(to)})
			b.queued.Store(true)
			b.mu.Unlock()
		},
		IsSuccessful: func(err error) bool { return !isRedisFault(err) },
		IsExcluded:   excludedFromBreaker,
	})
	return b
}

// A caller that gave up says nothing about Redis.
func excludedFromBreaker(err error) bool { return errors.Is(err, context.Canceled) }

// deliver tells onChange the queued changes, in order, outside gobreaker's
// lock; every call into gobreaker is followed by one. One goroutine
// delivers at a time: one that finds another at it leaves its changes to
// it, which looks at the queue again, under the lock, before it stops.
func (b *breaker) deliver() {
	if !b.queued.Load() {
		return
	}
	b.mu.Lock()
	if b.delivering {
		b.mu.Unlock()
		return
	}
	b.delivering = true
	finished := false
	defer func() {
		if !finished { // onChange is the Observer's code: it may panic
			b.mu.Lock()
			b.delivering = false
			b.mu.Unlock()
		}
	}()
	for len(b.pending) > 0 {
		c := b.pending[0]
		b.pending = b.pending[1:]
		b.mu.Unlock()
		b.onChange(c.from, c.to)
		b.mu.Lock()
	}
	b.queued.Store(false)
	b.delivering, finished = false, true
	b.mu.Unlock()
}

// begin reports whether a call may go to Redis. If it may, end must be
// called with the call's result and the done begin returned.
func (b *breaker) begin() (done func(error), ok bool) {
	if b.closed.Load() {
		return nil, true
	}
	done, err := b.cb.Allow() // open to half-open happens here
	if err != nil {
		b.deliver()
		return nil, false
	}
	// Granted: the change (if any) is told by end's deliver, after the
	// round trip. Told here, a panicking Observer would leave the probe
	// this Allow counted unreturned, and a half-open breaker waits for
	// its probes for good.
	return done, true
}

// end reports a call's result.
func (b *breaker) end(done func(error), err error) {
	defer b.deliver()
	if done != nil {
		done(err)
		return
	}
	if excludedFromBreaker(err) {
		return
	}
	if !isRedisFault(err) {
		if !b.dirty.Swap(false) {
			return // closed, nothing pending: nothing to tell gobreaker
		}
	}
	// A late Allow: if the breaker opened meanwhile, the result is dropped,
	// as gobreaker drops results from an earlier generation.
	if d, aerr := b.cb.Allow(); aerr == nil {
		d(err)
	}
	if isRedisFault(err) {
		// After the report, so that a success racing it either sees this
		// flag and resets the count, or was reported before this failure.
		b.dirty.Store(true)
	}
}

func breakerState(s gobreaker.State) State {
	switch s {
	case gobreaker.StateOpen:
		return Open
	case gobreaker.StateHalfOpen:
		return HalfOpen
	}
	return Closed
}

// isRedisFault tells the errors that say Redis is sick (unreachable, slow,
// failing over) from the answers of a healthy server (a miss, a script
// refusing a fill, a wrong type).
func isRedisFault(err error) bool {
	if err == nil || errors.Is(err, redis.Nil) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return true
	}
	var re redis.Error
	if errors.As(err, &re) {
		msg := re.Error()
		for _, p := range []string{"LOADING", "CLUSTERDOWN", "TRYAGAIN", "MASTERDOWN", "READONLY", "BUSY"} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	// Connection errors (EOF, pool timeout, closed) and anything unknown.
	return true
}

// IsTimeout tells whether err is a timeout.
func IsTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// nodes holds one breaker per Redis node, so that on a cluster a dead
// master bypasses only the keys of its slots while the others keep their
// Redis hits. A single node (or a Sentinel or Ring client) has one breaker.
// Nil-safe: nil is WithoutBreaker.
type nodes struct {
	settings BreakerSettings
	onChange func(node string, from, to State)
	one      *breaker // the breaker of a client that is not a cluster client

	// m is by node address, copied on write: a cluster has few nodes and
	// gains one rarely, while every round trip looks its node up, and a
	// lock's counter written by every lookup would move between the cores
	// on every call.
	mu sync.Mutex // serializes additions
	m  atomic.Pointer[map[string]*breaker]
}

// of returns node's breaker ("": the one node of a non-cluster client, or
// a cluster node that could not be told).
func (n *nodes) of(node string) *breaker {
	if n == nil {
		return nil
	}
	if n.one != nil {
		return n.one
	}
	return n.get(node)
}

func (n *nodes) get(node string) *breaker {
	if b := (*n.m.Load())[node]; b != nil {
		return b
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	cur := *n.m.Load()
	if b := cur[node]; b != nil {
		return b
	}
	b := newBreaker(n.settings, func(from, to State) { n.onChange(node, from, to) })
	next := make(map[string]*breaker, len(cur)+1)
	maps.Copy(next, cur)
	next[node] = b
	n.m.Store(&next)
	return b
}

// states returns each node's breaker state, and the worst of them.
func (n *nodes) states() (map[string]State, State) {
	if n == nil {
		return nil, Closed
	}
	// A snapshot, never written: a change told here may call the Observer,
	// which may read the states again.
	bs := *n.m.Load()
	out := make(map[string]State, len(bs))
	worst := Closed
	for addr, b := range bs {
		s := breakerState(b.cb.State()) // may move open to half-open
		b.deliver()
		out[addr] = s
		worst = max(worst, s)
	}
	return out, worst
}

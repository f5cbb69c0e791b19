package tiercache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/sony/gobreaker/v2"
)

// BreakerState is the state of the circuit breaker around Redis.
type BreakerState uint8

const (
	// BreakerClosed: Redis is used.
	BreakerClosed BreakerState = iota
	// BreakerHalfOpen: a few probe calls test whether Redis is back.
	BreakerHalfOpen
	// BreakerOpen: Redis is bypassed; reads go to L1 and the loader.
	BreakerOpen
)

func (s BreakerState) String() string {
	switch s {
	case BreakerClosed:
		return "closed"
	case BreakerHalfOpen:
		return "half-open"
	case BreakerOpen:
		return "open"
	}
	return "unknown"
}

// BreakerSettings configures the circuit breaker around Redis (see
// [WithBreaker]). It is github.com/sony/gobreaker/v2 underneath.
type BreakerSettings struct {
	// ConsecutiveFailures opens the breaker (default 5).
	ConsecutiveFailures uint32
	// OpenFor is how long the breaker stays open before it lets probes
	// through (default 1s).
	OpenFor time.Duration
	// Probes is how many calls may run while half-open; that many
	// successes close the breaker (default 1).
	Probes uint32
}

func defaultBreakerSettings() BreakerSettings {
	return BreakerSettings{ConsecutiveFailures: 5, OpenFor: time.Second, Probes: 1}
}

func (b BreakerSettings) validate() error {
	if b.ConsecutiveFailures == 0 || b.OpenFor <= 0 || b.Probes == 0 {
		return fmt.Errorf("%w: breaker settings %+v: every field must be positive", ErrInvalidOption, b)
	}
	return nil
}

// WithBreaker configures the circuit breaker around Redis, which is on by
// default: after ConsecutiveFailures failed calls it opens, and for OpenFor
// the cache does not call Redis at all; reads go to L1 and the loader, fills
// are skipped, and writes (Set, Delete) fail with [ErrRedis].
func WithBreaker(s BreakerSettings) Option {
	return func(c *config) { c.breaker, c.breakerOn = s, true }
}

// WithoutBreaker turns the circuit breaker off: every call goes to Redis,
// bounded only by the timeouts.
func WithoutBreaker() Option { return func(c *config) { c.breakerOn = false } }

// errBreakerOpen is the error of a call the breaker did not let through.
var errBreakerOpen = fmt.Errorf("%w: circuit breaker open", ErrRedis)

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
}

func newBreaker(s BreakerSettings, onChange func(from, to BreakerState)) *breaker {
	b := &breaker{}
	b.closed.Store(true)
	b.cb = gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "tiercache-redis",
		MaxRequests: s.Probes,
		Timeout:     s.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= s.ConsecutiveFailures },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			b.closed.Store(to == gobreaker.StateClosed)
			onChange(breakerState(from), breakerState(to))
		},
		IsSuccessful: func(err error) bool { return !isRedisFault(err) },
		IsExcluded:   excludedFromBreaker,
	})
	return b
}

// A caller that gave up says nothing about Redis.
func excludedFromBreaker(err error) bool { return errors.Is(err, context.Canceled) }

// begin reports whether a call may go to Redis. If it may, end must be
// called with the call's result and the done begin returned.
func (b *breaker) begin() (done func(error), ok bool) {
	if b.closed.Load() {
		return nil, true
	}
	done, err := b.cb.Allow()
	return done, err == nil
}

// end reports a call's result.
func (b *breaker) end(done func(error), err error) {
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

func breakerState(s gobreaker.State) BreakerState {
	switch s {
	case gobreaker.StateOpen:
		return BreakerOpen
	case gobreaker.StateHalfOpen:
		return BreakerHalfOpen
	}
	return BreakerClosed
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

func isTimeout(err error) bool {
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
	onChange func(node string, from, to BreakerState)
	one      *breaker // the breaker of a client that is not a cluster client

	mu sync.RWMutex
	m  map[string]*breaker // by node address
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
	n.mu.RLock()
	b := n.m[node]
	n.mu.RUnlock()
	if b != nil {
		return b
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if b = n.m[node]; b == nil {
		b = newBreaker(n.settings, func(from, to BreakerState) { n.onChange(node, from, to) })
		n.m[node] = b
	}
	return b
}

// states returns each node's breaker state, and the worst of them.
func (n *nodes) states() (map[string]BreakerState, BreakerState) {
	if n == nil {
		return nil, BreakerClosed
	}
	n.mu.RLock()
	defer n.mu.RUnlock()
	out := make(map[string]BreakerState, len(n.m))
	worst := BreakerClosed
	for addr, b := range n.m {
		s := breakerState(b.cb.State())
		out[addr] = s
		worst = max(worst, s)
	}
	return out, worst
}

// clientAddr names the node of a client that is not a cluster client.
func clientAddr(rdb redis.UniversalClient) string {
	if c, ok := rdb.(*redis.Client); ok {
		return c.Options().Addr
	}
	return "redis"
}

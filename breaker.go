package tiercache

import (
	"fmt"
	"time"

	"github.com/tiercache/tiercache/internal/store"
)

// BreakerState is the state of a node's circuit breaker: closed (Redis is
// used), half-open (a few probe calls test whether Redis is back) or open
// (Redis is bypassed; reads go to L1 and the loader).
type BreakerState uint8

// The breaker states, in the order of their severity; internal/store's
// State has the same values (breakerStates converts).
const (
	BreakerClosed   BreakerState = 0
	BreakerHalfOpen BreakerState = 1
	BreakerOpen     BreakerState = 2
)

func (s BreakerState) String() string { return nameOf(s, "closed", "half-open", "open") }

// BreakerSettings configures the circuit breaker around Redis (see
// [WithBreaker]). It is github.com/sony/gobreaker/v2 underneath, one
// breaker per node (see internal/store).
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

// storeBreaker is the store's form of the settings; nil when the breaker
// is off.
func (c *config) storeBreaker() *store.BreakerSettings {
	if !c.breakerOn {
		return nil
	}
	b := store.BreakerSettings(c.breaker)
	return &b
}

// breakerStates converts the store's breaker states.
func breakerStates(m map[string]store.State, worst store.State) (map[string]BreakerState, BreakerState) {
	if m == nil {
		return nil, BreakerState(worst)
	}
	out := make(map[string]BreakerState, len(m))
	for addr, s := range m {
		out[addr] = BreakerState(s)
	}
	return out, BreakerState(worst)
}

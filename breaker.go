package tiercache

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
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

type breaker struct {
	cb *gobreaker.TwoStepCircuitBreaker[struct{}]
}

func newBreaker(s BreakerSettings, onChange func(from, to BreakerState)) *breaker {
	return &breaker{cb: gobreaker.NewTwoStepCircuitBreaker[struct{}](gobreaker.Settings{
		Name:        "tiercache-redis",
		MaxRequests: s.Probes,
		Timeout:     s.OpenFor,
		ReadyToTrip: func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= s.ConsecutiveFailures },
		OnStateChange: func(_ string, from, to gobreaker.State) {
			onChange(breakerState(from), breakerState(to))
		},
		IsSuccessful: func(err error) bool { return !isRedisFault(err) },
		// A caller that gave up says nothing about Redis.
		IsExcluded: func(err error) bool { return errors.Is(err, context.Canceled) },
	})}
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

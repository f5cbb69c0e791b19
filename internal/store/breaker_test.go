package store

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestMain(m *testing.M) { redistest.MainWithLeakCheck(m) }

func name(s State) string { return [...]string{"closed", "half-open", "open"}[s] }

// The breaker's fast path keeps gobreaker's rules: consecutive failures
// open it, a success in between resets the count, a canceled call counts
// for nothing, and after OpenFor one probe's success closes it again.
func TestBreakerFastPath(t *testing.T) {
	var changes []string
	var mu sync.Mutex
	b := newBreaker(BreakerSettings{ConsecutiveFailures: 3, OpenFor: 50 * time.Millisecond, Probes: 1}, func(from, to State) {
		mu.Lock()
		changes = append(changes, name(from)+">"+name(to))
		mu.Unlock()
	})
	fault := fmt.Errorf("read: %w", context.DeadlineExceeded)
	call := func(err error) bool {
		done, ok := b.begin()
		if ok {
			b.end(done, err)
		}
		return ok
	}
	state := func() State { return breakerState(b.cb.State()) }
	for _, err := range []error{fault, fault, nil, fault, fault, context.Canceled, context.Canceled, nil, redis.Nil, fault, fault} {
		if !call(err) {
			t.Fatalf("a call was refused with the breaker %v", state())
		}
	}
	if s := state(); s != Closed {
		t.Fatalf("after failures broken up by successes the breaker is %v", s)
	}
	call(fault) // the third in a row
	if s := state(); s != Open {
		t.Fatalf("after 3 consecutive failures the breaker is %v", s)
	}
	if call(nil) {
		t.Fatal("an open breaker let a call through")
	}
	time.Sleep(60 * time.Millisecond)
	done, ok := b.begin()
	if !ok || done == nil {
		t.Fatalf("after OpenFor: probe allowed %v, through gobreaker %v", ok, done != nil)
	}
	if _, ok := b.begin(); ok {
		t.Fatal("a second probe was let through with Probes 1")
	}
	b.end(done, nil)
	if s := state(); s != Closed {
		t.Fatalf("after a successful probe the breaker is %v", s)
	}
	if done, ok := b.begin(); !ok || done != nil {
		t.Fatalf("closed again: allowed %v, fast path %v", ok, done == nil)
	}
	mu.Lock()
	defer mu.Unlock()
	if got := strings.Join(changes, " "); got != "closed>open open>half-open half-open>closed" {
		t.Errorf("state changes: %s", got)
	}
}

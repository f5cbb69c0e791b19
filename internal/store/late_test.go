package store

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// countingRecorder counts the round trips a store reports.
type countingRecorder struct{ trips atomic.Int64 }

func (*countingRecorder) Now() time.Time { return time.Time{} }
func (*countingRecorder) Span(ctx context.Context, _ string) (context.Context, func(error)) {
	return ctx, func(error) {}
}
func (r *countingRecorder) Redis(string, time.Time, error) { r.trips.Add(1) }
func (*countingRecorder) Rejected()                        {}
func (*countingRecorder) Batched(int)                      {}

// A round trip whose deadline passed before it was sent (it queued behind a
// slow node's) fails with the deadline's error and is not sent, and no
// breaker hears of it: with a breaker that opens on one failure, every
// breaker is still closed after late calls on one node and on a cluster.
func TestLateCallsAreNotJudged(t *testing.T) {
	for name, rdb := range map[string]redis.UniversalClient{
		"single":  redistest.SharedServer(t).Client(t),
		"cluster": redistest.SharedCluster(t).Client(t),
	} {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			fault := errors.New("redis")
			rec := &countingRecorder{}
			s := New(rdb, Config{
				Breaker:  &BreakerSettings{ConsecutiveFailures: 1, OpenFor: time.Hour, Probes: 1},
				Recorder: rec, Fault: fault, BreakerOpen: fmt.Errorf("%w: breaker open", fault),
				ReadTimeout: time.Second, WriteTimeout: time.Second, LeaseTTL: time.Second,
			})
			past := time.Now().Add(-time.Millisecond)
			sent := false
			err := s.Call(ctx, s.nodeOf(ctx, "late"), "get", past, func(context.Context) error { sent = true; return nil })
			if !errors.Is(err, fault) || !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, ErrNotSent) || sent {
				t.Fatalf("late Call: %v (sent: %v), want a fault wrapping the deadline, unsent", err, sent)
			}
			ks := []string{"late:a", "late:b", "late:c", "late:d", "late:e", "late:f"}
			errs, err := s.callKeys(ctx, "mget", past, ks, func(context.Context, []int, []error) error { sent = true; return nil })
			if err == nil || sent || len(errs) != len(ks) {
				t.Fatalf("late callKeys: %v, %d errors (sent: %v)", err, len(errs), sent)
			}
			for i, e := range errs {
				if !errors.Is(e, fault) || !errors.Is(e, context.DeadlineExceeded) || !errors.Is(e, ErrNotSent) {
					t.Errorf("key %s: %v, want a fault wrapping the deadline", ks[i], e)
				}
			}
			if states, worst := s.Breakers(); worst != Closed {
				t.Errorf("late calls opened a breaker: %v", states)
			}
			if n := rec.trips.Load(); n != 0 {
				t.Errorf("%d late calls were reported as round trips", n)
			}
			// Sent in time, a call goes through.
			if err := s.Call(ctx, s.nodeOf(ctx, "late"), "get", time.Now().Add(time.Second), func(ctx context.Context) error {
				return rdb.Get(ctx, "late").Err()
			}); err != nil {
				t.Fatalf("a call in time after late ones: %v", err)
			}
		})
	}
}

// panickyRecorder's Span panics once when armed: the Tracer is user code.
type panickyRecorder struct {
	countingRecorder
	armed atomic.Bool
}

func (r *panickyRecorder) Span(ctx context.Context, _ string) (context.Context, func(error)) {
	if r.armed.CompareAndSwap(true, false) {
		panic("a Tracer panicked")
	}
	return ctx, func(error) {}
}

// A panic between a half-open breaker's grant and its judge (the Tracer's
// Span, say) gives the probe back: the next call is let through as a probe,
// where without it the half-open breaker would refuse every call for good.
// For a single call and for a batch.
func TestProbeGivenBackAfterAPanic(t *testing.T) {
	rdb := redistest.SharedServer(t).Client(t)
	for _, batch := range []bool{false, true} {
		t.Run(fmt.Sprint("batch=", batch), func(t *testing.T) {
			ctx := t.Context()
			fault := errors.New("redis")
			rec := &panickyRecorder{}
			s := New(rdb, Config{
				Breaker:  &BreakerSettings{ConsecutiveFailures: 1, OpenFor: 20 * time.Millisecond, Probes: 1},
				Recorder: rec, Fault: fault, BreakerOpen: fmt.Errorf("%w: breaker open", fault),
				ReadTimeout: time.Second, WriteTimeout: time.Second, LeaseTTL: time.Second,
			})
			b := s.nodes.one
			d, _ := b.begin()
			b.end(d, context.DeadlineExceeded) // open
			time.Sleep(40 * time.Millisecond)  // past OpenFor: the next call is a probe
			call := func() error {
				if batch {
					_, err := s.callKeys(ctx, "mget", time.Now().Add(time.Second), []string{"p1", "p2"}, func(ctx context.Context, _ []int, _ []error) error {
						return rdb.MGet(ctx, "p1", "p2").Err()
					})
					return err
				}
				return s.Call(ctx, "", "get", time.Now().Add(time.Second), func(ctx context.Context) error { return rdb.Get(ctx, "p").Err() })
			}
			rec.armed.Store(true)
			func() {
				defer func() { _ = recover() }()
				_ = call()
				t.Fatal("the armed Span did not panic")
			}()
			if err := call(); err != nil {
				t.Fatalf("the call after the panic: %v (the probe was not given back)", err)
			}
			if _, worst := s.Breakers(); worst != Closed {
				t.Fatalf("after a good probe the breaker is %v, want closed", worst)
			}
		})
	}
}

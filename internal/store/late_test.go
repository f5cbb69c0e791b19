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
			if !errors.Is(err, fault) || !errors.Is(err, context.DeadlineExceeded) || sent {
				t.Fatalf("late Call: %v (sent: %v), want a fault wrapping the deadline, unsent", err, sent)
			}
			ks := []string{"late:a", "late:b", "late:c", "late:d", "late:e", "late:f"}
			errs, err := s.callKeys(ctx, "mget", past, ks, func(context.Context, []int, []error) error { sent = true; return nil })
			if err == nil || sent || len(errs) != len(ks) {
				t.Fatalf("late callKeys: %v, %d errors (sent: %v)", err, len(errs), sent)
			}
			for i, e := range errs {
				if !errors.Is(e, fault) || !errors.Is(e, context.DeadlineExceeded) {
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

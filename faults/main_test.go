package faults_test

// Helpers of the fault suite. The tests use tiercache's public API only
// (and the tiercache module's internal/redistest, internal/keys and
// internal/envelope, importable from this module by their import path);
// where the root package's tests looked at the cache's unexported state,
// these helpers observe the same thing through the API.

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/internal/keys"
	"github.com/tiercache/tiercache/internal/redistest"
)

// Every test runs against real redis-server processes that the harness
// starts; goroutine leaks fail the run.
func TestMain(m *testing.M) { redistest.MainWithLeakCheck(m) }

// faultPrefix returns a cache prefix of the test's own (a new one on every
// call).
func faultPrefix(t testing.TB) string {
	return strings.TrimSuffix(redistest.UniquePrefix(t), ":")
}

// schemaVersion is the cache's default schema version (WithVersion), the
// one every cache of this suite uses.
const schemaVersion = 1

// valueKey is the Redis key under which a cache created with
// WithPrefix(prefix) (and the default schema version) stores user key k.
func valueKey(prefix, k string) string { return keys.New(prefix, schemaVersion).Value(k) }

// directClient is a client straight to s, with context deadlines reaching
// the socket, closed when the test ends.
func directClient(t testing.TB, s *redistest.Server, opts ...func(*redis.Options)) *redis.Client {
	return s.Client(t, append([]func(*redis.Options){func(o *redis.Options) { o.ContextTimeoutEnabled = true }}, opts...)...)
}

// newCacheOn returns a cache over rdb under prefix, closed when the test ends.
func newCacheOn[V any](t testing.TB, rdb redis.UniversalClient, prefix string, opts ...tiercache.Option) *tiercache.Cache[V] {
	t.Helper()
	c, err := tiercache.New[V](rdb, append([]tiercache.Option{tiercache.WithPrefix(prefix)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// constLoad returns a loader of v that takes d.
func constLoad(v string, d time.Duration) tiercache.LoadFunc[string] {
	return func(ctx context.Context) (string, error) {
		if d > 0 {
			time.Sleep(d)
		}
		return v, nil
	}
}

// waitFor polls cond every millisecond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(time.Millisecond)
	}
}

// subscribed reports whether c's L1 invalidation subscription is up.
func subscribed[V any](c *tiercache.Cache[V]) func() bool {
	return func() bool { return c.Stats().Subscribed }
}

// waitSubscribed waits until the invalidation subscription of every one of
// cs is up.
func waitSubscribed[V any](t *testing.T, cs ...*tiercache.Cache[V]) {
	t.Helper()
	for _, c := range cs {
		waitFor(t, 5*time.Second, "invalidation subscription up", subscribed(c))
	}
}

// getL1 reads k with Get and reports whether L1 answered. Get looks k up in
// L1 first and counts that lookup in Stats, as an L1 hit exactly when L1
// holds a fresh entry for k; so the read came from L1 exactly when L1Hits
// grew. This is the public view of the root package's c.l1.get(k) ("does
// L1 hold k?"), with two differences the callers allow for: the caller must
// be c's only reader at the time (another read's hit would count), and on a
// miss the read goes on to Redis (and may fill L1 from it).
func getL1[V any](ctx context.Context, c *tiercache.Cache[V], k string) (v V, hit bool, err error) {
	before := c.Stats().L1Hits
	v, err = c.Get(ctx, k)
	return v, c.Stats().L1Hits > before, err
}

// latencies collects durations, safe for concurrent use.
type latencies struct {
	mu sync.Mutex
	d  []time.Duration
}

func (l *latencies) add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.mu.Unlock()
}

func (l *latencies) n() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.d)
}

// q returns the q-quantile (0 when empty).
func (l *latencies) q(q float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.d) == 0 {
		return 0
	}
	s := slices.Clone(l.d)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))]
}

func (l *latencies) max() time.Duration { return l.q(1) }

func (l *latencies) String() string {
	return fmt.Sprintf("n=%d p50=%v p99=%v max=%v", l.n(), l.q(.5).Round(100*time.Microsecond),
		l.q(.99).Round(100*time.Microsecond), l.max().Round(100*time.Microsecond))
}

func waitDone(t testing.TB, wg *sync.WaitGroup, d time.Duration) bool {
	return redistest.WaitDone(t, wg, d)
}

func waitGoroutinesGone(t testing.TB, fn string, d time.Duration) {
	redistest.WaitGoroutinesGone(t, fn, d)
}

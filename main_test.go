package tiercache

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// Every test in the package runs against real redis-server processes that
// the harness starts; goroutine leaks fail the run.
func TestMain(m *testing.M) { redistest.MainWithLeakCheck(m) }

// testPrefix returns a cache prefix of the test's own.
func testPrefix(t testing.TB) string {
	return strings.TrimSuffix(redistest.UniquePrefix(t), ":")
}

// newCache returns a cache over a new client of tg, under a prefix of its
// own, closed when the test ends.
func newCache[V any](t testing.TB, tg redistest.Target, opts ...Option) *Cache[V] {
	t.Helper()
	c, _ := newCacheAndClient[V](t, tg, opts...)
	return c
}

// newCacheAndClient is newCache that also returns the cache's client, for
// tests that look at what Redis holds.
func newCacheAndClient[V any](t testing.TB, tg redistest.Target, opts ...Option) (*Cache[V], redis.UniversalClient) {
	t.Helper()
	rdb := tg.NewClient(t)
	return newCacheOn[V](t, rdb, testPrefix(t), opts...), rdb
}

// instances returns n caches under one prefix, each with its own client:
// n app instances sharing one Redis.
func instances[V any](t *testing.T, tg redistest.Target, n int, opts ...Option) []*Cache[V] {
	t.Helper()
	prefix := testPrefix(t)
	cs := make([]*Cache[V], n)
	for i := range cs {
		cs[i] = newCacheOn[V](t, tg.NewClient(t), prefix, opts...)
	}
	return cs
}

// subscribedPair returns two instances (as instances does) whose
// invalidation subscriptions are up.
func subscribedPair[V any](t *testing.T, tg redistest.Target, opts ...Option) (a, b *Cache[V]) {
	t.Helper()
	cs := instances[V](t, tg, 2, opts...)
	waitSubscribed(t, cs...)
	return cs[0], cs[1]
}

// newCacheOn returns a cache over rdb under prefix, closed when the test ends.
func newCacheOn[V any](t testing.TB, rdb redis.UniversalClient, prefix string, opts ...Option) *Cache[V] {
	t.Helper()
	// Generous Redis timeouts unless a test sets its own: the defaults
	// (100ms, 250ms) are for production; on a loaded 2-core CI machine they
	// expire, and a read that should have hit would go to the loader.
	c, err := New[V](rdb, append([]Option{WithPrefix(prefix), WithReadTimeout(5 * time.Second), WithWriteTimeout(5 * time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// publishRaw publishes payload on c's invalidation channel as another
// client of the Redis would, by SPUBLISH where c uses sharded pub/sub.
func publishRaw[V any](ctx context.Context, c *Cache[V], rdb redis.UniversalClient, payload any) error {
	sharded, err := c.inv.st.Sharded(ctx)
	if err != nil {
		return err
	}
	if sharded {
		return rdb.SPublish(ctx, c.st.Layout.Channel(), payload).Err()
	}
	return rdb.Publish(ctx, c.st.Layout.Channel(), payload).Err()
}

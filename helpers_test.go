package tiercache

// Helpers shared by the package's tests. The fault suite that used to live
// in this file (Redis slow, reset, restarted, blackholed, flushed, killed;
// foreign bytes; the README's resilience figures) is the module
// ./faults (go test ./faults/...), which tests the cache through its public
// API, so that its test-only dependency toxiproxy stays out of this module.

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// faultPrefix returns a cache prefix of the test's own.
func faultPrefix(t testing.TB) string {
	return strings.TrimSuffix(redistest.UniquePrefix(t), ":")
}

// directClient is a client straight to s, with context deadlines reaching
// the socket, closed when the test ends.
func directClient(t testing.TB, s *redistest.Server, opts ...func(*redis.Options)) *redis.Client {
	return s.Client(t, append([]func(*redis.Options){func(o *redis.Options) { o.ContextTimeoutEnabled = true }}, opts...)...)
}

// constLoad returns a loader of v that takes d.
func constLoad(v string, d time.Duration) LoadFunc[string] {
	return func(ctx context.Context) (string, error) {
		if d > 0 {
			time.Sleep(d)
		}
		return v, nil
	}
}

func waitDone(t testing.TB, wg *sync.WaitGroup, d time.Duration) bool {
	return redistest.WaitDone(t, wg, d)
}

func waitGoroutinesGone(t testing.TB, fn string, d time.Duration) {
	redistest.WaitGoroutinesGone(t, fn, d)
}

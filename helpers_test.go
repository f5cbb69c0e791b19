package tiercache

// Helpers shared by the package's tests. The fault suite that used to live
// in this file (Redis slow, reset, restarted, blackholed, flushed, killed;
// foreign bytes; the README's resilience figures) is the module
// ./faults (go test ./faults/...), which tests the cache through its public
// API, so that its test-only dependency toxiproxy stays out of this module.

import (
	"bytes"
	"context"
	"runtime/pprof"
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

// waitDone waits for wg up to d and reports whether it finished; if not, it
// logs every goroutine's stack.
func waitDone(t testing.TB, wg *sync.WaitGroup, d time.Duration) bool {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		var b bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		t.Logf("goroutines still running after %v:\n%s", d, b.String())
		return false
	}
}

// waitGoroutinesGone waits until no goroutine runs fn (go-redis's redial
// loop for a dead node notices a closed client only on its next attempt).
func waitGoroutinesGone(t testing.TB, fn string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		var b bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		if !strings.Contains(b.String(), fn) {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("goroutines running %s still there after %v", fn, d)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

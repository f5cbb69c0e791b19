package redistest

import (
	"bytes"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"
)

// WaitDone waits for wg for up to d and reports whether it finished; if it
// did not, it logs every goroutine's stack, to show what is stuck.
func WaitDone(tb testing.TB, wg *sync.WaitGroup, d time.Duration) bool {
	tb.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		return true
	case <-time.After(d):
		var b bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		tb.Logf("goroutines still running after %v:\n%s", d, b.String())
		return false
	}
}

// WaitGoroutinesGone waits up to d until no goroutine runs fn (go-redis's
// redial loop for a dead node notices a closed client only on its next
// attempt), and fails tb if one still does.
func WaitGoroutinesGone(tb testing.TB, fn string, d time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(d)
	for {
		var b bytes.Buffer
		_ = pprof.Lookup("goroutine").WriteTo(&b, 1)
		if !strings.Contains(b.String(), fn) {
			return
		}
		if time.Now().After(deadline) {
			tb.Errorf("goroutines running %s still there after %v", fn, d)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitUntil polls cond until it holds. It gives up only shortly before the
// test binary's -timeout would, so that it bounds no duration of the code
// under test: it only turns a hang into a failure that says what it waited
// for.
func WaitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	if d, ok := t.Deadline(); ok {
		deadline = d.Add(-5 * time.Second)
	}
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("gave up waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Receive returns what ch delivers, failing the test with what (what did
// not happen) if nothing comes within d. Like WaitUntil, d is a hang guard
// for something that never comes if the code is wrong, not a bound on how
// long the code may take.
func Receive[T any](tb testing.TB, ch <-chan T, d time.Duration, what string) T {
	tb.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		tb.Fatalf("%s: not within %v", what, d)
	}
	var zero T
	return zero
}

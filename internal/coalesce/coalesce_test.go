package coalesce

import (
	"context"
	"errors"
	"fmt"
	"github.com/tiercache/tiercache/internal/redistest"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The coalescer's hand-offs under stress, with a fetch that answers "v:"+key
// after a random delay (or a per-key error): every read gets its own key's
// value or error (never one left by an earlier batch in reused room) or, if
// its context ended, its context's error; no more round trips than slots
// are ever in flight; reads are batched; and at the end no slot is held.
// With the reads' slots and with the one slot of the lease scripts.
func TestCoalescerHandOffs(t *testing.T) {
	for _, slots := range []int{Slots, 1} {
		t.Run(fmt.Sprint(slots, "-slots"), func(t *testing.T) { testHandOffs(t, slots) })
	}
}

func testHandOffs(t *testing.T, slots int) {
	var inFlight, maxInFlight, batched, trips atomic.Int64
	errFail := errors.New("node down")
	fetch := func(ctx context.Context, deadline time.Time, vks []string, raw [][]byte, errs []error) {
		n := inFlight.Add(1)
		defer inFlight.Add(-1)
		for m := maxInFlight.Load(); n > m && !maxInFlight.CompareAndSwap(m, n); m = maxInFlight.Load() {
		}
		trips.Add(1)
		if len(vks) > 1 {
			batched.Add(int64(len(vks)))
		}
		time.Sleep(time.Duration(rand.IntN(200)) * time.Microsecond)
		for i, k := range vks {
			switch {
			case strings.HasPrefix(k, "fail"):
				errs[i] = errFail // a failed read leaves raw[i] alone
			case !strings.HasPrefix(k, "absent"):
				raw[i] = []byte("v:" + k)
			}
		}
	}
	co := New(time.Second, slots, fetch)
	var wg sync.WaitGroup
	var reads, canceled atomic.Int64
	for g := range 100 {
		wg.Go(func() {
			for i := range 200 {
				k := fmt.Sprint("k", g, ":", i%7)
				switch {
				case i%5 == 0:
					k = "absent" + k
				case i%7 == 2:
					k = "fail" + k
				}
				ctx, cancel := context.WithCancel(t.Context())
				if i%10 == 3 {
					go func() { time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond); cancel() }()
				}
				v, err := co.Do(ctx, k)
				cancel()
				reads.Add(1)
				switch {
				case errors.Is(err, context.Canceled):
					canceled.Add(1)
				case strings.HasPrefix(k, "fail"):
					if !errors.Is(err, errFail) || v != nil {
						t.Errorf("get(%s) = %q, %v: want the read's own error", k, v, err)
					}
				case err != nil: // another read's error, left in reused room
					t.Errorf("get(%s): %v", k, err)
				case strings.HasPrefix(k, "absent") && v != nil:
					t.Errorf("get(%s) = %q, want nil", k, v)
				case !strings.HasPrefix(k, "absent") && string(v) != "v:"+k:
					t.Errorf("get(%s) = %q: another read's value", k, v)
				}
			}
		})
	}
	if !redistest.WaitDone(t, &wg, time.Minute) {
		t.Fatal("reads still waiting: a hand-off was lost")
	}
	co.mu.Lock()
	held, queued := co.inFlight, len(co.queue)
	co.mu.Unlock()
	t.Logf("%d reads (%d canceled) in %d round trips; %d reads shared one; at most %d in flight",
		reads.Load(), canceled.Load(), trips.Load(), batched.Load(), maxInFlight.Load())
	if held != 0 || queued != 0 {
		t.Errorf("after every read returned: %d slots held, %d reads queued", held, queued)
	}
	if m := maxInFlight.Load(); m > int64(slots) {
		t.Errorf("%d round trips in flight at once, want at most %d", m, slots)
	}
	if batched.Load() == 0 || trips.Load() >= reads.Load() {
		t.Errorf("100 concurrent readers were never batched (%d round trips for %d reads)", trips.Load(), reads.Load())
	}
}

// A fetch that panics (it runs the cache's Observer and Tracer: user code)
// fails its batch with ErrAborted and passes its slot on: the panic goes
// up the leader's stack, the others in the batch are answered, and later
// calls still go out. Without the hand-off on panic, the one slot would be
// held for good and "later" would wait forever.
func TestCoalescerPanicInFetch(t *testing.T) {
	block := make(chan struct{})
	var trips atomic.Int64
	fetch := func(_ context.Context, _ time.Time, qs []string, rs []string, _ []error) {
		if trips.Add(1) == 2 { // the batch queued behind the first call
			panic("an Observer panicked")
		}
		if qs[0] == "first" {
			<-block
		}
		for i, q := range qs {
			rs[i] = "v:" + q
		}
	}
	co := New(time.Minute, 1, fetch)
	ctx := t.Context()
	var wg sync.WaitGroup
	wg.Go(func() {
		if v, err := co.Do(ctx, "first"); v != "v:first" || err != nil {
			t.Errorf("first = %q, %v", v, err)
		}
	})
	for trips.Load() < 1 {
		time.Sleep(time.Millisecond)
	}
	const queued = 5
	var panicked, aborted atomic.Int64
	for i := range queued {
		wg.Go(func() {
			defer func() {
				if recover() != nil {
					panicked.Add(1)
				}
			}()
			if _, err := co.Do(ctx, fmt.Sprint("q", i)); errors.Is(err, ErrAborted) {
				aborted.Add(1)
			} else {
				t.Errorf("a call of the panicked batch got %v, want ErrAborted", err)
			}
		})
	}
	for {
		co.mu.Lock()
		n := len(co.queue)
		co.mu.Unlock()
		if n == queued {
			break
		}
		time.Sleep(time.Millisecond)
	}
	close(block)
	if !redistest.WaitDone(t, &wg, time.Minute) {
		t.Fatal("calls of the panicked batch still waiting")
	}
	if panicked.Load() != 1 || aborted.Load() != queued-1 {
		t.Errorf("%d leaders panicked and %d calls were aborted, want 1 and %d", panicked.Load(), aborted.Load(), queued-1)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if v, err := co.Do(ctx, "later"); v != "v:later" || err != nil {
			t.Errorf("later = %q, %v", v, err)
		}
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("a call after the panic waits for a slot that was never given back")
	}
}

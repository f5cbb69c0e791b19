package coalesce

import (
	"context"
	"errors"
	"fmt"
	"github.com/tiercache/tiercache/internal/redistest"
	"math"
	"math/rand/v2"
	"slices"
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
	held, queued, sent := co.inFlight, len(co.queue), co.sent
	busy := slices.ContainsFunc(co.trips, func(t uint64) bool { return t != 0 })
	co.mu.Unlock()
	t.Logf("%d reads (%d canceled) in %d round trips; %d reads shared one; at most %d in flight",
		reads.Load(), canceled.Load(), trips.Load(), batched.Load(), maxInFlight.Load())
	if held != 0 || queued != 0 || sent != 0 || busy {
		t.Errorf("after every read returned: %d slots held, %d reads queued, %d counted as sent, a round trip still numbered in flight: %v", held, queued, sent, busy)
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

// tripHarness drives a Coalescer of strings with a fetch that holds each
// round trip until the test releases it.
type tripHarness struct {
	t     *testing.T
	co    *Coalescer[string, string]
	trips chan trip
	wg    sync.WaitGroup
}

// trip is one round trip, held until release is closed.
type trip struct {
	qs      []string
	release chan struct{}
}

// newTripHarness returns a harness over a Coalescer with a minute's timeout
// and the given patience (how long a narrowed queue waits for a round trip
// that left slots free).
func newTripHarness(t *testing.T, patience time.Duration) *tripHarness {
	h := &tripHarness{t: t, trips: make(chan trip, 100)}
	h.co = New(time.Minute, Slots, func(_ context.Context, _ time.Time, qs []string, rs []string, _ []error) {
		tr := trip{append([]string(nil), qs...), make(chan struct{})}
		h.trips <- tr
		<-tr.release
		for i, q := range qs {
			rs[i] = "v:" + q
		}
	})
	h.co.patience = patience
	return h
}

// call starts Do(k) and returns what is done when it has returned (with
// "v:"+k, or the test fails).
func (h *tripHarness) call(k string) *sync.WaitGroup {
	var one sync.WaitGroup
	one.Add(1)
	h.wg.Go(func() {
		defer one.Done()
		if v, err := h.co.Do(h.t.Context(), k); v != "v:"+k || err != nil {
			h.t.Errorf("%s = %q, %v", k, v, err)
		}
	})
	return &one
}

// next returns the next round trip to go out.
func (h *tripHarness) next(what string) trip {
	h.t.Helper()
	select {
	case tr := <-h.trips:
		return tr
	case <-time.After(time.Minute):
		h.t.Fatalf("no round trip: %s", what)
		return trip{}
	}
}

func (h *tripHarness) state() (inFlight, queued int) {
	h.co.mu.Lock()
	defer h.co.mu.Unlock()
	return h.co.inFlight, len(h.co.queue)
}

// waitState waits (at most a minute) until what of state is n.
func (h *tripHarness) waitState(n int, what string, of func(inFlight, queued int) int) {
	h.t.Helper()
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		if of(h.state()) == n {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("%d %s, want %d", of(h.state()), what, n)
		}
	}
}

// waitQueued waits for n calls to be queued.
func (h *tripHarness) waitQueued(n int) {
	h.t.Helper()
	h.waitState(n, "calls queued", func(_, q int) int { return q })
}

// done waits for a call started by call to return.
func (h *tripHarness) done(one *sync.WaitGroup, what string) {
	h.t.Helper()
	if !redistest.WaitDone(h.t, one, time.Minute) {
		h.t.Fatalf("%s did not return", what)
	}
}

// finish waits for every call and checks that nothing is held.
func (h *tripHarness) finish() {
	h.t.Helper()
	if !redistest.WaitDone(h.t, &h.wg, time.Minute) {
		h.t.Fatal("calls still waiting")
	}
	h.co.mu.Lock()
	defer h.co.mu.Unlock()
	if h.co.inFlight != 0 || len(h.co.queue) != 0 || h.co.sent != 0 || slices.ContainsFunc(h.co.trips, func(t uint64) bool { return t != 0 }) {
		h.t.Errorf("after every call returned: %d slots held, %d queued, %d counted as sent, round trips %v in flight",
			h.co.inFlight, len(h.co.queue), h.co.sent, h.co.trips)
	}
}

// lone starts Slots calls named prefix0.. and returns their round trips,
// oldest first, each its call's own.
func (h *tripHarness) lone(prefix string) ([]trip, []*sync.WaitGroup) {
	var trips []trip
	var calls []*sync.WaitGroup
	for i := range Slots {
		calls = append(calls, h.call(fmt.Sprint(prefix, i)))
		trips = append(trips, h.next("a lone call with a slot free"))
	}
	return trips, calls
}

// queueMany starts narrowAt per slot calls named c0.., waits for them to be
// queued and returns how many.
func (h *tripHarness) queueMany() int {
	h.t.Helper()
	many := narrowAt * Slots
	for i := range many {
		h.call(fmt.Sprint("c", i))
	}
	h.waitQueued(many)
	return many
}

// end releases round trip tr and waits for call (one of its calls) to
// return.
func (h *tripHarness) end(tr trip, call *sync.WaitGroup, what string) {
	h.t.Helper()
	close(tr.release)
	h.done(call, what)
}

// nextOf returns the next round trip, which must carry n calls.
func (h *tripHarness) nextOf(n int, what string) trip {
	h.t.Helper()
	tr := h.next(what)
	if len(tr.qs) != n {
		h.t.Fatalf("round trip of %d calls, want %d: %s", len(tr.qs), n, what)
	}
	return tr
}

// nextAlone returns the next round trip, which must carry k alone.
func (h *tripHarness) nextAlone(k, what string) trip {
	h.t.Helper()
	tr := h.next(what)
	if len(tr.qs) != 1 || tr.qs[0] != k {
		h.t.Fatalf("round trip %q, want [%s]: %s", tr.qs, k, what)
	}
	return tr
}

// waitInFlight waits for n round trips to be in flight.
func (h *tripHarness) waitInFlight(n int) {
	h.t.Helper()
	h.waitState(n, "round trips in flight", func(in, _ int) int { return in })
}

// How the slots are used as the number of callers changes. Few callers go
// out at once, each alone, and a round trip that ends takes the queue at
// once (the other slots busy or not). Once a round trip ends with narrowAt
// per slot on the wire and queued, one round trip at a time carries them
// all: a round trip that ends while a younger one is in flight frees its
// slot, a new call queues behind the one in flight though slots are free,
// and the youngest round trip takes the queue whole. A round trip that ends
// with few callers widens it again. Without narrowing, the new call goes
// out alone and the first round trip to end takes the queue.
func TestCoalescerNarrowsUnderLoad(t *testing.T) {
	h := newTripHarness(t, time.Hour) // a queue is never sent for waiting too long here

	// Few callers: each goes out alone, the fifth queues, and the first
	// round trip to end takes it.
	lone, loneCalls := h.lone("a")
	h.call("b")
	h.waitQueued(1)
	h.end(lone[0], loneCalls[0], "a0")
	lone[0] = h.nextAlone("b", "the queue, when a slot frees") // now the youngest in flight

	// Many callers: the round trips that end while a younger one is in
	// flight leave the queue where it is.
	many := h.queueMany()
	for i := 1; i < Slots; i++ {
		h.end(lone[i], loneCalls[i], fmt.Sprint("a", i))
		if in, q := h.state(); in != Slots-i || q != many {
			t.Fatalf("after %d of %d round trips ended under load: %d in flight and %d queued, want %d and %d (a freed slot took the queue)", i, Slots, in, q, Slots-i, many)
		}
	}
	close(lone[0].release) // the last one in flight takes the queue whole
	tr := h.nextOf(many, "the queue, from the last round trip in flight")
	// Slots are free and nobody waits, but a round trip is in flight: a new
	// call queues behind it.
	late := h.call("late")
	h.waitQueued(1)
	if in, _ := h.state(); in != 1 {
		t.Fatalf("%d round trips in flight, want 1", in)
	}
	close(tr.release)
	h.end(h.nextAlone("late", "the late call"), late, "late")

	// Few callers again: the round trip that ended with one call widened
	// it, and two calls go out at once.
	x, y := h.call("x"), h.call("y")
	t1, t2 := h.next("x or y"), h.next("the other of x and y, at once: slots are free")
	close(t1.release)
	close(t2.release)
	h.done(x, "x")
	h.done(y, "y")
	h.finish()
}

// Narrowed, a round trip whose reply does not come back (stuck on its
// connection: a lost packet's retransmit) holds up no other call. A round
// trip that ends while only an older one is in flight takes the queue
// rather than leave it to that one (without which the 16 would wait for
// the stuck round trip, here for good). With no round trip to end, a call
// queued behind the stuck one goes out on a free slot once it has waited
// the patience (without which "x" would wait for good).
func TestCoalescerNarrowedQueueDoesNotWaitForAStuckRoundTrip(t *testing.T) {
	// stuckOldest sends a0..a3 alone, queues the 16 and ends a1..a3, a0
	// (the oldest) held as if stuck. It returns the 16's round trip and
	// a0's, and the lone calls (a0's first).
	stuckOldest := func(h *tripHarness) ([]trip, []*sync.WaitGroup) {
		lone, loneCalls := h.lone("a")
		many := h.queueMany()
		for i := 1; i < Slots; i++ {
			h.end(lone[i], loneCalls[i], fmt.Sprint("a", i))
		}
		return []trip{h.nextOf(many, "the 16, from the youngest round trip or the patience, a0 stuck"), lone[0]}, loneCalls
	}

	t.Run("a younger round trip takes the queue", func(t *testing.T) {
		h := newTripHarness(t, time.Hour)
		lone, loneCalls := stuckOldest(h)
		late := h.call("late") // narrowed: it queues behind the 16
		h.waitQueued(1)
		close(lone[0].release) // the 16's round trip
		h.end(h.nextAlone("late", "the late call, from the 16's round trip, a0 stuck"), late, "late")
		h.end(lone[1], loneCalls[0], "a0")
		h.finish()
	})
	t.Run("a queue that waited the patience goes out on a free slot", func(t *testing.T) {
		h := newTripHarness(t, time.Millisecond)
		lone, loneCalls := stuckOldest(h)
		close(lone[0].release) // the 16's round trip ends with nobody queued; a0 still stuck
		h.waitInFlight(1)
		h.co.mu.Lock()
		narrow := h.co.narrow
		h.co.mu.Unlock()
		if !narrow {
			t.Fatal("not narrowed after a round trip ended with 17 on the wire")
		}
		x := h.call("x") // narrowed: it queues behind a0, with 3 slots free
		h.end(h.nextAlone("x", "x, queued behind the stuck a0, on a free slot"), x, "x")
		h.end(lone[1], loneCalls[0], "a0")
		h.finish()
	})
}

// A queue that formed while every slot was busy (no timer armed then) and
// that the older round trips leave to the youngest, which is stuck, goes
// out on a freed slot once it has waited the patience. Without the timer
// armed when a round trip leaves the queue, the 16 would wait for a3.
func TestCoalescerQueueLeftToAStuckYoungerRoundTrip(t *testing.T) {
	h := newTripHarness(t, time.Millisecond)
	lone, loneCalls := h.lone("a") // a3, the youngest, is stuck
	many := h.queueMany()          // every slot busy: queued without a timer
	for i := range Slots - 1 {
		h.end(lone[i], loneCalls[i], fmt.Sprint("a", i))
	}
	close(h.nextOf(many, "the 16, on a freed slot, a3 stuck").release)
	close(lone[Slots-1].release)
	h.finish()
}

// The figures WithoutReadCoalescing's doc gives: the reads' coalescer
// narrows at 16 calls on the wire and queued and is patient for a quarter
// of the timeout; one slot never narrows.
func TestCoalescerNarrowingFigures(t *testing.T) {
	fetch := func(context.Context, time.Time, []int, []int, []error) {}
	co := New(100*time.Millisecond, Slots, fetch)
	if co.narrowAt != 16 || co.patience != 25*time.Millisecond {
		t.Errorf("reads narrow at %d with patience %v, want 16 and 25ms", co.narrowAt, co.patience)
	}
	if one := New(100*time.Millisecond, 1, fetch); one.narrowAt != math.MaxInt {
		t.Errorf("one slot narrows at %d", one.narrowAt)
	}
}

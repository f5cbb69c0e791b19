// Package flight coalesces concurrent loads of the same key: the first
// caller of a key leads its load, later callers wait for that load's result.
//
// It is golang.org/x/sync/singleflight's idea with what a cache needs and
// singleflight cannot give: a batch can claim many keys at once and learn,
// synchronously, which ones it leads and which ones another caller is
// already loading (so a batch read waits for a single read's load of a key
// instead of loading it again, and the reverse); and each waiter waits with
// its own context while the load goes on for the others.
package flight

import (
	"context"
	"sync"
)

// Group is a set of loads in flight, by key. The zero value is ready to use.
// K is comparable so that a cache can key flights by more than a string
// (the kind of load and the user key) without two kinds sharing a flight.
type Group[K comparable, T any] struct {
	mu sync.Mutex
	m  map[K]*Call[T] // guarded by mu
}

// Call is one load in flight.
type Call[T any] struct {
	done chan struct{}
	// val and err are written once by End before done is closed, and only
	// read after done is closed.
	val T
	err error
}

// Begin registers a load of key. When leader is true the caller leads it
// and must call End exactly once, whatever happens; otherwise it joined a
// load another caller leads.
func (g *Group[K, T]) Begin(key K) (c *Call[T], leader bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.m[key]; ok {
		return c, false
	}
	if g.m == nil {
		g.m = make(map[K]*Call[T])
	}
	c = &Call[T]{done: make(chan struct{})}
	g.m[key] = c
	return c, true
}

// End publishes the result of c, the load of key that the caller leads,
// wakes its waiters and forgets the key, so that the next Begin starts a
// new load.
func (g *Group[K, T]) End(key K, c *Call[T], val T, err error) {
	g.mu.Lock()
	if g.m[key] == c {
		delete(g.m, key)
	}
	g.mu.Unlock()
	c.val, c.err = val, err
	close(c.done)
}

// Wait returns the result of c, or ctx's error if ctx ends first; the load
// goes on either way.
func (c *Call[T]) Wait(ctx context.Context) (T, error) {
	select {
	case <-c.done:
		return c.val, c.err
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
	}
}

// Forget makes the next Begin of key start a new load, while the load in
// flight, if any, goes on for the callers already waiting on it. A cache
// calls it when key is written or invalidated: a reader that arrives after
// the write must not get the result of a load that began before it.
func (g *Group[K, T]) Forget(key K) {
	g.mu.Lock()
	delete(g.m, key)
	g.mu.Unlock()
}

// ForgetAll is Forget for every key.
func (g *Group[K, T]) ForgetAll() {
	g.mu.Lock()
	clear(g.m)
	g.mu.Unlock()
}

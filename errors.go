package tiercache

import (
	"errors"
	"fmt"
	"runtime/debug"
)

// Errors returned by the cache. Each is a sentinel value: test for it with
// [errors.Is], since the cache wraps it with detail.
var (
	// ErrMiss is returned by [Cache.Get] for a key that is not cached (or
	// whose cached value is logically expired), and wrapped by the error of
	// a Get or [Cache.GetMany] that Redis failed. GetMany reports plain
	// misses by leaving keys out of its map.
	ErrMiss = errors.New("tiercache: cache miss")

	// ErrNotFound is the loader's way to say that the record does not exist.
	// A loader that returns it (wrapped or not) has the key cached as a
	// negative entry for the negative TTL; until it expires, reads of the key
	// return ErrNotFound without calling the loader.
	ErrNotFound = errors.New("tiercache: not found")

	// ErrValueTooLarge is returned when an encoded value is larger than the
	// limit set with [WithMaxValueSize]. On read, a stored value over the limit
	// is a miss and is never decoded.
	ErrValueTooLarge = errors.New("tiercache: value too large")

	// ErrInvalidKey is returned for an empty key.
	ErrInvalidKey = errors.New("tiercache: invalid key")

	// ErrInvalidOption is returned by [New] for an option value that makes no
	// sense (a negative TTL, a jitter above 1, a prefix with braces, ...).
	ErrInvalidOption = errors.New("tiercache: invalid option")

	// ErrClosed is returned by calls made after [Cache.Close], and by reads
	// whose load Close cut short (wrapping the loader's error if it failed
	// otherwise than by the cancellation).
	ErrClosed = errors.New("tiercache: cache closed")

	// ErrLoaderPanic is wrapped by the error every waiter of a load gets when
	// the loader panics. Use errors.As with *[PanicError] for the value and stack.
	ErrLoaderPanic = errors.New("tiercache: loader panicked")

	// ErrRedis wraps every error that comes from Redis (network, timeout,
	// server error) on a call that reports such errors: writes, and Get.
	// Loads never report it: a read that the loader can serve does not fail
	// for the cache's sake.
	ErrRedis = errors.New("tiercache: redis")

	// ErrCodec wraps an error of the codec when a value cannot be encoded.
	ErrCodec = errors.New("tiercache: codec")

	// ErrNilLoader is returned when a load function is nil.
	ErrNilLoader = errors.New("tiercache: nil loader")

	// ErrNilContext is returned by every call given a nil context (pass
	// context.Background() or context.TODO() instead); nothing is done.
	ErrNilContext = errors.New("tiercache: nil context")
)

// PanicError is the error of a load whose loader panicked or called
// runtime.Goexit (or whose Observer did, on the way). It keeps
// the panic value and the stack of the goroutine that panicked; every
// caller that waited on the load gets it, and nothing is cached. Error() is
// one line; the stack is in Stack.
type PanicError struct {
	Value any
	Stack []byte
}

func (e *PanicError) Error() string {
	return fmt.Sprintf("tiercache: loader panicked: %v", e.Value)
}

// Unwrap makes errors.Is(err, ErrLoaderPanic) true, and reaches a panic
// value that is itself an error.
func (e *PanicError) Unwrap() []error {
	if err, ok := e.Value.(error); ok {
		return []error{ErrLoaderPanic, err}
	}
	return []error{ErrLoaderPanic}
}

// asPanicError is the *PanicError of a recovered panic value p, with the
// stack of the goroutine that recovers it (p may be one already).
func asPanicError(p any) *PanicError {
	if perr, ok := p.(*PanicError); ok {
		return perr
	}
	return &PanicError{Value: p, Stack: debug.Stack()}
}

// Package subject puts tiercache and the libraries users would pick instead
// of it behind one small interface, so that the side-by-side runner can put
// every one of them through the same workloads.
//
// A [Subject] is one configured instance of one library (a client and a
// cache): the runner creates a new one for each measurement, several when
// it simulates several service instances. Every adapter stores opaque
// string values, so that what is compared is the caching machinery and not
// the codecs; each uses the cheapest encoding its library offers for a
// string (tiercache's Raw codec, go-redis/cache's and gocache's pass-through,
// rueidisaside's native strings). sturdyc is the exception it cannot avoid:
// its distributed storage always stores a JSON record.
//
// Adapters use only the libraries' public APIs.
package subject

import (
	"context"
	"errors"
	"time"
)

// ErrMiss is returned by [Subject.Get] for a key that is not cached.
var ErrMiss = errors.New("subject: cache miss")

// ErrNotSupported is returned by an adapter for an operation that its
// library does not offer (see [Caps]).
var ErrNotSupported = errors.New("subject: not supported by this library")

// Loader loads one key from the source of truth.
type Loader func(ctx context.Context, key string) (string, error)

// BatchLoader loads the keys that a batch read did not find in the cache.
// It returns the values it found; a key absent from the map does not exist.
type BatchLoader func(ctx context.Context, missing []string) (map[string]string, error)

// Subject is one instance of a cache library, ready to serve reads.
// Its methods are safe for concurrent use.
type Subject interface {
	// Get reads key from the cache tiers only, and returns ErrMiss when it
	// is not there (ErrNotSupported when the library has no such read).
	Get(ctx context.Context, key string) (string, error)
	// GetOrLoad is the cache-aside read: the cache tiers, then load, whose
	// result is cached.
	GetOrLoad(ctx context.Context, key string, load Loader) (string, error)
	// Close releases the instance and its Redis client(s).
	Close() error
}

// Batcher is implemented by subjects whose library has a batch read with
// a loader for the missing keys only.
type Batcher interface {
	GetOrLoadMany(ctx context.Context, keys []string, load BatchLoader) (map[string]string, error)
}

// Writer is implemented by subjects that can take a write of a key: the
// service changed the record in its database and tells the cache. Each
// adapter does what its library offers for that, declared in [Caps.Write]:
// a write-through Set where the library has one, otherwise a Delete, after
// which the next read loads.
type Writer interface {
	Write(ctx context.Context, key, value string) error
}

// Diagnoser is implemented by subjects whose library counts what it did
// (hits per tier, loads, errors, breaker rejections). The runner records
// the counters of every instance with the results, so that a surprising
// figure can be explained.
type Diagnoser interface {
	Diagnostics() map[string]uint64
}

// Caps declares what a subject's library offers in its configuration.
// The runner uses it to mark workloads as not applicable; it never
// approximates a missing feature.
type Caps struct {
	// Local names the in-process tier, "" when there is none.
	Local string
	// Batch is true when the library has a batch read with a loader for
	// the missing keys (the subject then implements [Batcher]).
	Batch bool
	// CrossInstance is true when the library claims to coalesce loads of a
	// key across instances (a lease or lock in Redis), not only within one
	// process. The stampede workload measures whether it does.
	CrossInstance bool
	// Get is true when the library can read its tiers without a loader.
	Get bool
	// Write says how the subject's [Writer] writes a key: what it calls,
	// and whether the next read finds the new value ("write-through") or
	// loads it ("next read loads").
	Write string
}

// Config is what the runner tells a factory.
type Config struct {
	// Addr is the Redis address, host:port.
	Addr string
	// Namespace prefixes every Redis key of the instance. Instances that
	// share a namespace share their Redis data (as service instances do).
	Namespace string
	// TTL is the time to live of cached values, in Redis and in the local
	// tier. At least one second: go-redis/cache turns a shorter TTL into
	// one hour.
	TTL time.Duration
	// LocalSize bounds the local tier, in entries, for subjects that have
	// one and can bound it by count.
	LocalSize int
	// Requests, when set, counts the requests the instance's Redis
	// client(s) send (see [Requests]).
	Requests *Requests
}

// Factory builds instances of one subject.
type Factory struct {
	// Name is how tables show the subject.
	Name string
	// Family groups the configurations of one library: instances of one
	// family can read each other's Redis data (same format and layout).
	Family string
	// Module is the Go module measured, with its version filled in from
	// the build information by [All].
	Module string
	// Caps declares what the subject supports.
	Caps Caps
	// Notes says how the adapter configures the library, for the README
	// and the report header.
	Notes string
	// New returns a new instance.
	New func(cfg Config) (Subject, error)
}

// Baseline is the name of the subject that every figure is compared with.
const Baseline = "go-redis+singleflight"

// All returns every subject, the baseline first.
func All() []Factory {
	fs := []Factory{
		goRedisFactory(),
		tiercacheFactory(tcPlain),
		tiercacheFactory(tcL1),
		tiercacheFactory(tcUncoalesced),
		goRedisCacheFactory(false),
		goRedisCacheFactory(true),
		gocacheFactory(false),
		gocacheFactory(true),
		sturdycFactory(),
		rueidisasideFactory(),
	}
	for i := range fs {
		fs[i].Module = moduleVersion(fs[i].Module)
	}
	return fs
}

package tiercache

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"reflect"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cespare/xxhash/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/flight"
	"github.com/tiercache/tiercache/internal/ratelog"
	"github.com/tiercache/tiercache/internal/store"
	"github.com/tiercache/tiercache/internal/wake"
)

// Cache is a typed three-tier cache: an optional in-process L1, Redis as
// the shared L2, and the caller's loader behind them. It is safe for
// concurrent use; create it with [New] and stop it with [Cache.Close].
//
// The code is cut by tier: read.go (Get, GetMany: L1, then Redis), load.go
// (GetOrLoad, GetOrLoadMany, Refresh: the one load core), write.go (Set,
// SetMany, Delete, Invalidate), refresh.go (early and stale refreshes),
// internal/store (every Redis call), local.go (L1), invalidate.go (pub/sub).
type Cache[V any] struct {
	cfg config
	st  *store.Store
	vc  *valueCodec
	rec *recorder
	log *slog.Logger

	flight flight.Group[flightKey, entry[V]] // per-process coalescing of loads
	l1     *local[V]                         // nil when L1 is off (its methods are nil-safe)
	inv    *invalidator                      // nil when invalidation is off (likewise)
	odds   readOdds                          // whether readThrough's GET is worth it

	// life ends when Close is called. It is the lifetime of the cache, not
	// of a request: loads and refreshes derive their contexts from it so
	// that Close stops them.
	life     context.Context
	stop     context.CancelFunc
	bg       sync.WaitGroup // loads and refreshes in the background
	workers  sync.WaitGroup // the goroutines that run them (see goBackground)
	idle     chan func()    // hands a task to a parked worker
	refreshQ chan struct{}  // semaphore bounding background refreshes
	closed   atomic.Bool
	// closeMu orders every bg.Add (taken under RLock after checking closed)
	// before Close's bg.Wait (after setting closed under Lock).
	closeMu sync.RWMutex

	// random returns a float64 in [0, 1) for XFetch; tests replace it.
	random func() float64
	// typeHash is the value type's part of every frame's key check.
	typeHash uint64
}

// New returns a cache over rdb, which the caller owns and closes after the
// cache: a *redis.Client, a *redis.ClusterClient, a Sentinel-backed client
// or a *redis.Ring all work. Options are validated: a bad one is an error
// wrapping [ErrInvalidOption], never a silent default.
func New[V any](rdb redis.UniversalClient, opts ...Option) (*Cache[V], error) {
	if v := reflect.ValueOf(rdb); rdb == nil || v.Kind() == reflect.Pointer && v.IsNil() { // (a nil *redis.Client too)
		return nil, fmt.Errorf("%w: nil redis client (NewLocal makes a cache without Redis)", ErrInvalidOption)
	}
	return build[V](rdb, opts)
}

// NewLocal returns an L1-only cache: no Redis, for a single-instance
// service or for tests of code that uses a Cache. It has the same API and,
// within the process, the same coalesced loads, no stale set, tags, Clear,
// early refresh and negative caching; a versioned Set older than (or as
// old as) the value in L1 is refused. What needs Redis is missing: nothing
// is shared with other processes or survives the process; no row version
// outlives its value in L1 (a versioned Delete leaves none behind, and a
// versioned load is not checked against one); the stale windows
// ([WithStaleWhileRevalidate], [WithStaleIfError]) have no stale copy to
// serve, as L1 drops a value at its logical expiry; and a load whose L1
// fill a write refused is not counted as [EventFillRefused]. L1 must be on
// ([WithL1] or [WithL1Bytes]); entries live their TTL (the L1 max TTL caps
// them only if set with [WithL1TTL]). Options about Redis are accepted and
// ignored.
func NewLocal[V any](opts ...Option) (*Cache[V], error) { return build[V](nil, opts) }

// build makes the cache of New, or of NewLocal when rdb is nil.
func build[V any](rdb redis.UniversalClient, opts []Option) (*Cache[V], error) {
	cfg := defaultConfig()
	apply(&cfg, opts)
	if rdb == nil {
		if cfg.l1Entries == 0 && cfg.l1Bytes == 0 {
			return nil, fmt.Errorf("%w: NewLocal needs WithL1 or WithL1Bytes", ErrInvalidOption)
		}
		cfg.invalidation = false
		if !cfg.l1TTLSet {
			cfg.l1TTL = math.MaxInt64
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	vc, err := newValueCodec(&cfg)
	if err != nil {
		return nil, err
	}
	logger := cfg.logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Cache[V]{
		cfg:      cfg,
		vc:       vc,
		rec:      newRecorder(cfg.observer),
		log:      ratelog.New(logger, time.Second),
		idle:     make(chan func()),
		refreshQ: make(chan struct{}, cfg.maxRefreshes),
		random:   rand.Float64,
		typeHash: xxhash.Sum64String(reflect.TypeFor[V]().String()),
	}
	c.odds.v.Store(oddsOne) // until measured, Redis is taken to have what L1 lacks
	c.life, c.stop = context.WithCancel(context.Background())
	c.st = store.New(rdb, store.Config{
		Prefix: cfg.prefix, SchemaVersion: cfg.version,
		ReadTimeout: cfg.readTimeout, WriteTimeout: cfg.writeTimeout, LeaseTTL: cfg.leaseTTL,
		VersionTTL: cfg.ttl, HealthInterval: cfg.healthInterval,
		Breaker: cfg.storeBreaker(), CoalesceReads: cfg.coalesceReads,
		Fault: ErrRedis, BreakerOpen: errBreakerOpen,
		Recorder: c.rec, Log: c.log, Life: c.life,
		OnBreaker: func(node string, from, to store.State) {
			c.breakerChanged(node, BreakerState(from), BreakerState(to))
		},
		OnNewGeneration: c.forgetLocal,
	})
	if c.l1, err = newLocal[V](&cfg); err != nil {
		c.stop()
		return nil, fmt.Errorf("%w: L1: %w", ErrInvalidOption, err)
	}
	if rdb != nil && (cfg.invalidation || cfg.lease) {
		c.inv = &invalidator{
			st: c.st, channel: c.st.Layout.Channel(), id: newInstanceID(),
			interval: cfg.healthInterval, rec: c.rec, log: c.log, publishes: cfg.invalidation,
		}
		if cfg.lease {
			c.inv.fills = &wake.Waits{}
		}
		if (c.l1 != nil || cfg.lease) && cfg.invalidation {
			// The others' writes end this instance's flights of their keys,
			// with L1 or without: a read that begins once a write reached
			// this instance must not join a load that began before it, nor
			// be handed what such a load read (see keys.Acquire).
			c.inv.onKeys = func(keys []string) { c.dropLocal(keys...) }
			c.inv.onFlush = func() {
				c.flight.ForgetAll()
				c.l1.flush()
			}
			c.inv.onTags = func(tags []envelope.Tag) {
				c.flight.ForgetAll()
				c.l1.observeTags(tags)
			}
			c.inv.hasL1 = c.l1 != nil
			if c.l1 != nil {
				c.l1.healthy = c.inv.healthy
			}
		}
		c.inv.start()
	}
	if rdb != nil && !timeoutsReachSocket(rdb) {
		// Visible by default: this defeats every timeout of the cache.
		warn := c.log
		if cfg.logger == nil {
			warn = slog.Default()
		}
		warn.Warn("tiercache: the redis client has ContextTimeoutEnabled off, so the cache's read and write timeouts cannot cut a slow socket short; set it on the client")
	}
	return c, nil
}

func timeoutsReachSocket(rdb redis.UniversalClient) bool {
	switch r := rdb.(type) {
	case *redis.Client:
		return r.Options().ContextTimeoutEnabled
	case *redis.ClusterClient:
		return r.Options().ContextTimeoutEnabled
	}
	return true
}

// breakerChanged is told of every change of a node's breaker. When a node
// comes back, L1 is flushed once: while it was bypassed, writes that other
// instances made to it may have lost their messages, and this instance's
// outage fills may predate them.
func (c *Cache[V]) breakerChanged(node string, from, to BreakerState) {
	lvl := slog.LevelWarn
	if to == BreakerClosed {
		lvl = slog.LevelInfo
		c.forgetLocal()
	}
	c.log.Log(context.Background(), lvl, "tiercache: redis circuit breaker "+to.String(), "node", node, "from", from.String())
	c.rec.obs.BreakerChanged(from, to)
}

// forgetLocal forgets every flight and flushes L1 (counted): what this
// instance holds may have missed invalidations.
func (c *Cache[V]) forgetLocal() {
	c.flight.ForgetAll()
	if c.l1 != nil {
		c.l1.flush()
		c.rec.event(EventL1Flush)
	}
}

// Close stops the cache: background refreshes and loads are cancelled and
// waited for, the leases they held are given back (one attempt each,
// bounded by the write timeout), the invalidation subscriber stops, and
// later calls return [ErrClosed]. Calls in flight return (with the
// loader's result, or an error); a write in flight whose Redis write
// landed still publishes its invalidation before it returns. It does not
// close the Redis client, which the caller owns. Close is idempotent.
// Since it waits for the loads, a loader (or an Observer, or a codec) must
// not call it: it would wait for itself.
func (c *Cache[V]) Close() error {
	c.closeMu.Lock()
	already := c.closed.Swap(true)
	c.closeMu.Unlock()
	if already {
		return nil
	}
	c.stop()
	c.inv.stop()
	c.bg.Wait()
	c.workers.Wait()
	// Releases start only from background loads, all finished now.
	c.st.WaitReleases()
	c.l1.close()
	// The codec is not closed: a read that passed its ErrClosed check just
	// before Close may still be decoding with it. Its zstd coders hold no
	// goroutines (they are only used through EncodeAll and DecodeAll); the
	// garbage collector frees them.
	return nil
}

// Stats returns a snapshot of the cache's counters.
func (c *Cache[V]) Stats() Stats {
	s := c.rec.snapshot()
	s.Breakers, s.BreakerState = breakerStates(c.st.Breakers())
	if c.l1 != nil {
		s.L1Hits, s.L1Misses = c.l1.hits.Load(), c.l1.misses.Load()
		s.L1Entries = c.l1.c.EstimatedSize()
		if c.l1.bytes {
			s.L1Weight = c.l1.c.WeightedSize()
		}
	}
	s.Subscribed = c.inv != nil && c.inv.onKeys != nil && c.inv.healthy()
	return s
}

// open reports why no call can be made with ctx: the cache is closed, or
// ctx is nil. (A nil ctx would panic deep in a round trip or, for a load,
// on the background goroutine that runs it, where no caller could recover.)
func (c *Cache[V]) open(ctx context.Context) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if ctx == nil {
		return ErrNilContext
	}
	return nil
}

// check is open, and an empty key is invalid.
func (c *Cache[V]) check(ctx context.Context, key string) error {
	if err := c.open(ctx); err != nil {
		return err
	}
	if key == "" {
		return ErrInvalidKey
	}
	return nil
}

// goBackground runs task in the background, registered with Close; it
// reports false, and task does not run, once Close has begun.
//
// The goroutines that run tasks are kept for the next task for a while
// (idleWorker) rather than started anew: a new goroutine starts with a
// small stack, and a load's calls into go-redis grow it several times over
// (runtime.copystack was 6.6 % of the process's CPU on the realistic
// workload, docs/PERFORMANCE.md). A task goes to a parked goroutine if one
// is waiting, else to a new one; nothing queues.
func (c *Cache[V]) goBackground(task func()) bool {
	c.closeMu.RLock()
	defer c.closeMu.RUnlock()
	if c.closed.Load() {
		return false
	}
	// Close sets closed under closeMu before it ends life, so a parked
	// worker takes this task before it can see life end: a task handed
	// over here always runs.
	c.bg.Add(1)
	run := func() {
		defer c.bg.Done() // also when task calls runtime.Goexit
		task()
	}
	select {
	case c.idle <- run:
	default:
		c.workers.Add(1)
		go c.worker(run)
	}
	return true
}

// idleWorker is how long a worker waits for its next task.
const idleWorker = time.Second

// worker runs task, then the tasks handed to it, until it has waited
// idleWorker for one or the cache is closed. A task that calls
// runtime.Goexit ends its worker.
func (c *Cache[V]) worker(task func()) {
	defer c.workers.Done()
	var t *time.Timer
	for {
		task()
		if t == nil {
			t = time.NewTimer(idleWorker)
			defer t.Stop()
		} else {
			t.Reset(idleWorker)
		}
		select {
		case task = <-c.idle:
		case <-t.C:
			return
		case <-c.life.Done():
			return
		}
	}
}

// nowMicro is the cache's clock, in Unix microseconds (the frame's unit).
func nowMicro() int64 { return time.Now().UnixMicro() }

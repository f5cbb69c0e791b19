package tiercache

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/flight"
	"github.com/tiercache/tiercache/internal/keys"
)

// Cache is a typed three-tier cache: an optional in-process L1, Redis as
// the shared L2, and the caller's loader behind them. It is safe for
// concurrent use; create it with [New] and stop it with [Cache.Close].
type Cache[V any] struct {
	rdb redis.UniversalClient
	// coal batches concurrent single-key reads into shared round trips;
	// nil with WithoutReadCoalescing.
	coal   *coalescer
	cfg    config
	layout keys.Layout
	vc     *valueCodec
	rec    *recorder
	log    *slog.Logger

	flight flight.Group[entry[V]] // per-process coalescing of loads, by key
	l1     *local[V]              // nil when L1 is off
	inv    *invalidator           // nil when L1 or invalidation is off
	brk    *breaker               // nil when the breaker is off
	tagv   *tagVersions           // tag versions seen, for tagged L1 hits; nil when L1 is off

	// life ends when Close is called. It is the lifetime of the cache, not
	// of a request: loads and refreshes derive their contexts from it (and
	// from their own timeouts) so that Close stops them.
	life     context.Context
	stop     context.CancelFunc
	bg       sync.WaitGroup // background refreshes
	refreshQ chan struct{}  // semaphore bounding background refreshes
	closed   atomic.Bool
	// pendingReleases counts leases being given back in the background.
	pendingReleases atomic.Int64
	// lastReload is when a cluster client was last told to reload its slot
	// map (Unix ns); see call.
	lastReload atomic.Int64
	// closeMu orders every bg.Add (taken under RLock after checking closed)
	// before Close's bg.Wait (after setting closed under Lock).
	closeMu sync.RWMutex

	// random returns a float64 in [0, 1) for XFetch; tests replace it.
	random func() float64
}

// New returns a cache over rdb, which the caller owns and closes after the
// cache: a *redis.Client, a *redis.ClusterClient, a Sentinel-backed client
// or a *redis.Ring all work. Options are validated: a bad one is an error
// wrapping [ErrInvalidOption], never a silent default.
func New[V any](rdb redis.UniversalClient, opts ...Option) (*Cache[V], error) {
	if rdb == nil {
		return nil, fmt.Errorf("%w: nil redis client", ErrInvalidOption)
	}
	cfg := defaultConfig()
	cfg.logger = slog.New(slog.DiscardHandler)
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	vc, err := newValueCodec(&cfg)
	if err != nil {
		return nil, err
	}
	c := &Cache[V]{
		rdb:      rdb,
		cfg:      cfg,
		layout:   keys.New(cfg.prefix, cfg.version),
		vc:       vc,
		rec:      newRecorder(cfg.observer),
		log:      newLimitedLogger(cfg.logger, time.Second),
		refreshQ: make(chan struct{}, cfg.maxRefreshes),
		random:   rand.Float64,
	}
	c.life, c.stop = context.WithCancel(context.Background())
	if cfg.breakerOn {
		c.brk = newBreaker(cfg.breaker, c.breakerChanged)
	}
	if cfg.coalesceReads {
		c.coal = newCoalescer(cfg.readTimeout, c.fetchReads)
	}
	if cfg.l1Entries > 0 || cfg.l1Bytes > 0 {
		if c.l1, err = newLocal[V](&cfg); err != nil {
			vc.close()
			return nil, fmt.Errorf("%w: L1: %w", ErrInvalidOption, err)
		}
		if c.tagv, err = newTagVersions(100_000); err != nil {
			c.l1.close()
			vc.close()
			return nil, fmt.Errorf("%w: L1 tags: %w", ErrInvalidOption, err)
		}
		c.l1.tagsCurrent = c.tagv.current
		if cfg.invalidation {
			c.inv = &invalidator{
				rdb: rdb, channel: c.layout.Channel(), id: newInstanceID(),
				interval: cfg.healthInterval, timeout: cfg.writeTimeout,
				rec: c.rec, log: c.log, call: c.call,
				onKeys: func(keys []string) { c.dropLocal(keys...) },
				onFlush: func() {
					c.flight.ForgetAll()
					c.l1.flush()
				},
				onTags: func(tags []envelope.Tag) {
					c.flight.ForgetAll()
					c.tagv.observe(tags)
				},
			}
			c.inv.start()
		}
	}
	if !timeoutsReachSocket(rdb) {
		c.log.Warn("tiercache: the redis client has ContextTimeoutEnabled off, so the cache's read and write timeouts cannot cut a slow socket short; set it on the client")
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

func (c *Cache[V]) breakerChanged(from, to BreakerState) {
	lvl := slog.LevelWarn
	if to == BreakerClosed {
		lvl = slog.LevelInfo
	}
	c.log.Log(context.Background(), lvl, "tiercache: redis circuit breaker "+to.String(), "from", from.String())
	c.rec.obs.BreakerChanged(from, to)
}

// Close stops the cache: background refreshes and loads are cancelled and
// waited for, the invalidation subscriber stops, and later calls return
// [ErrClosed]. Calls in flight return (with the loader's result, or an
// error). It does not close the Redis client, which the caller owns.
// Close is idempotent.
func (c *Cache[V]) Close() error {
	c.closeMu.Lock()
	already := c.closed.Swap(true)
	c.closeMu.Unlock()
	if already {
		return nil
	}
	c.stop()
	if c.inv != nil {
		c.inv.stop()
	}
	c.bg.Wait()
	if c.l1 != nil {
		c.l1.close()
		c.tagv.close()
	}
	c.vc.close()
	return nil
}

// Stats returns a snapshot of the cache's counters.
func (c *Cache[V]) Stats() Stats {
	s := c.rec.snapshot()
	s.BreakerState = BreakerClosed
	if c.brk != nil {
		s.BreakerState = breakerState(c.brk.cb.State())
	}
	if c.l1 != nil {
		s.L1Hits, s.L1Misses = c.l1.hits.load(), c.l1.misses.load()
		s.L1Entries = c.l1.c.EstimatedSize()
		if c.l1.bytes {
			s.L1Weight = c.l1.c.WeightedSize()
		}
	}
	return s
}

func (c *Cache[V]) check(key string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if key == "" {
		return ErrInvalidKey
	}
	return nil
}

// goBackground registers a background task with Close; it reports false,
// and the task must not run, once Close has begun.
func (c *Cache[V]) goBackground() bool {
	c.closeMu.RLock()
	defer c.closeMu.RUnlock()
	if c.closed.Load() {
		return false
	}
	c.bg.Add(1)
	return true
}

// nowMicro is the cache's clock, in Unix microseconds (the frame's unit).
func nowMicro() int64 { return time.Now().UnixMicro() }

// call runs one Redis round trip under the breaker and a timeout, and
// counts it. A call the breaker refuses fails at once with errBreakerOpen.
func (c *Cache[V]) call(ctx context.Context, op string, timeout time.Duration, fn func(context.Context) error) error {
	return c.callUntil(ctx, op, time.Now().Add(timeout), fn)
}

// callUntil is call with a deadline rather than a timeout.
func (c *Cache[V]) callUntil(ctx context.Context, op string, deadline time.Time, fn func(context.Context) error) error {
	var done func(error)
	if c.brk != nil {
		var ok bool
		if done, ok = c.brk.begin(); !ok {
			c.rec.event(EventBreakerReject)
			return errBreakerOpen
		}
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	ctx, end := c.rec.span(ctx, op)
	start := c.rec.now()
	err := fn(ctx)
	cancel()
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	end(err)
	if c.brk != nil {
		c.brk.end(done, err)
	}
	c.rec.redis(op, start, err)
	if err != nil {
		if isTimeout(err) {
			c.rec.event(EventRedisTimeout)
		}
		c.reloadClusterState(err)
		c.rec.event(EventRedisError)
		return redisError(op, err)
	}
	return nil
}

// reloadClusterState asks a cluster client to reload its slot map after a
// fault. go-redis reloads it on MOVED and READONLY replies, and otherwise
// only every ClusterStateReloadInterval (60s by default): after a failover
// in which the old master simply stopped answering, writes would go to it
// until then. At most once per 250ms.
func (c *Cache[V]) reloadClusterState(err error) {
	cc, ok := c.rdb.(*redis.ClusterClient)
	if !ok || !isRedisFault(err) {
		return
	}
	now, last := time.Now().UnixNano(), c.lastReload.Load()
	if now-last < int64(250*time.Millisecond) || !c.lastReload.CompareAndSwap(last, now) {
		return
	}
	cc.ReloadState(context.Background())
}

// limitL1 is the cap on an L1 entry's life given the subscription's health.
func (c *Cache[V]) limitL1() time.Duration {
	if c.inv != nil && !c.inv.healthy() {
		return c.cfg.l1OutageTTL
	}
	return c.cfg.l1TTL
}

// Get returns the cached value of key, from L1 or Redis. It returns
// [ErrMiss] when the key is not cached or its value is past its logical
// expiry, and [ErrNotFound] for a cached "not found". A Redis failure is an
// error that wraps both [ErrMiss] and [ErrRedis], so that code that treats
// a miss as "go to the database" keeps working while Redis is down.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	var zero V
	if err := c.check(key); err != nil {
		return zero, err
	}
	if e, ok := c.getL1(key); ok {
		return e.result()
	}
	e, found, err := c.getL2(ctx, key)
	now := nowMicro()
	switch {
	case err != nil:
		return zero, fmt.Errorf("%w: %w", ErrMiss, err)
	case !found || !e.fresh(now):
		return zero, ErrMiss
	}
	return e.result()
}

// result is what a read of e returns to the caller.
func (e *entry[V]) result() (V, error) {
	if e.neg {
		var zero V
		return zero, ErrNotFound
	}
	return e.val, nil
}

// getL1 looks key up in L1, counting the lookup; the observer is told.
func (c *Cache[V]) getL1(key string) (*entry[V], bool) {
	if c.l1 == nil {
		return nil, false
	}
	e, ok := c.l1.get(key, c.l1.now())
	if c.rec.timed {
		// Not timed: a clock read costs more than the lookup.
		c.rec.obs.Lookup(TierL1, ok, 0)
	}
	if ok && e.neg {
		c.rec.event(EventNegativeHit)
	}
	return e, ok
}

// getL2 reads key from Redis and decodes it. A fresh value fills L1 (unless
// an invalidation raced the read). Stale values are returned too, for the
// caller to judge. Corrupt bytes are a counted miss.
func (c *Cache[V]) getL2(ctx context.Context, key string) (e entry[V], found bool, err error) {
	vk := c.layout.Value(key)
	var tok fillToken
	if c.l1 != nil {
		tok = c.l1.token(key)
	}
	start := c.rec.now()
	var b []byte
	if c.coal != nil {
		b, err = c.coal.get(ctx, vk)
	} else {
		b, err = c.getRaw(ctx, time.Now().Add(c.cfg.readTimeout), vk)
	}
	if err != nil {
		if !errors.Is(err, errBreakerOpen) { // a bypassed Redis was not asked
			c.rec.lookupL2(false, start)
		}
		return e, false, err
	}
	found = c.decodeStored(key, vk, b, &e)
	if found && len(e.tags) > 0 {
		found = c.validTags(ctx, []*entry[V]{&e})[0]
	}
	now := nowMicro()
	hit := found && e.fresh(now)
	c.rec.lookupL2(hit, start)
	if hit {
		if e.neg {
			c.rec.event(EventNegativeHit)
		}
		if c.l1 != nil {
			c.l1.fill(key, tok, e, now, c.limitL1())
		}
	}
	return e, found, nil
}

// getRaw is one GET of vk, done by deadline (nil when absent).
func (c *Cache[V]) getRaw(ctx context.Context, deadline time.Time, vk string) (b []byte, err error) {
	err = c.callUntil(ctx, "get", deadline, func(ctx context.Context) error {
		s, err := c.rdb.Get(ctx, vk).Result()
		b = unsafeBytes(s)
		return err
	})
	return b, err
}

// fetchReads is the coalescer's round trip: GET for a lone read, else
// mget (an MGET, or GETs pipelined by node on a cluster).
func (c *Cache[V]) fetchReads(ctx context.Context, deadline time.Time, vks []string, raw [][]byte) error {
	if len(vks) == 1 {
		var err error
		raw[0], err = c.getRaw(ctx, deadline, vks[0])
		return err
	}
	err := c.callUntil(ctx, "mget", deadline, func(ctx context.Context) error {
		return c.mget(ctx, vks, raw)
	})
	if !errors.Is(err, errBreakerOpen) {
		c.rec.eventN(EventReadBatched, len(vks))
	}
	return err
}

// decodeStored decodes b (nil: absent) into e and reports whether it holds
// a usable entry.
func (c *Cache[V]) decodeStored(key, vk string, b []byte, e *entry[V]) bool {
	if b == nil {
		return false
	}
	if err := decode(c.vc, b, keys.Hash(vk), e); err != nil {
		c.rec.event(EventCorrupt)
		c.log.Warn("tiercache: unreadable cached value treated as a miss", "key", key, "err", err)
		return false
	}
	return true
}

// Set writes v under key, in Redis and in this instance's L1, and tells the
// other instances to drop their L1 copies. It also removes the key's lease,
// so that a load in flight that started before the Set cannot overwrite it.
//
// A Redis failure is returned (wrapping [ErrRedis]) and the local L1 copy is
// dropped: the caller should treat the cache as not updated, and either
// retry or Delete the key once Redis is back.
func (c *Cache[V]) Set(ctx context.Context, key string, v V, opts ...SetOption) error {
	if err := c.check(key); err != nil {
		return err
	}
	sc := setConfig{ttl: c.cfg.ttl}
	for _, o := range opts {
		o(&sc)
	}
	if sc.ttl <= 0 {
		return fmt.Errorf("%w: TTL %v must be positive", ErrInvalidOption, sc.ttl)
	}
	tagNames, err := checkTags(sc.tags)
	if err != nil {
		return err
	}
	vk := c.layout.Value(key)
	now := time.Now()
	softExp := now.Add(c.jitter(sc.ttl))
	tags, _, err := c.readTagVersions(ctx, tagNames, 0, c.redisTTL(softExp.Sub(now)))
	if err != nil {
		return err
	}
	b, err := c.vc.encode(v, false, keys.Hash(vk), now, softExp, 0, tags)
	if err != nil {
		return err
	}
	err = c.call(ctx, "set", c.cfg.writeTimeout, func(ctx context.Context) error {
		return keys.Set.Run(ctx, c.rdb, []string{vk, keys.Lease(vk)}, b, c.redisTTL(softExp.Sub(now)).Milliseconds()).Err()
	})
	if err != nil {
		c.dropLocal(key)
		return err
	}
	c.flight.Forget(key)
	if c.l1 != nil {
		c.tagv.observe(tags)
		c.l1.set(key, entry[V]{val: v, writtenAt: now.UnixMicro(), softExp: softExp.UnixMicro(), size: len(b), tags: tags}, now.UnixMicro(), c.limitL1())
	}
	return c.broadcast(ctx, key)
}

// Delete removes keys from Redis and from every instance's L1, with their
// leases, so that loads in flight for them do not write back what they
// loaded before the Delete. On a Redis failure the local L1 copies are
// dropped anyway and the error (wrapping [ErrRedis]) is returned: the keys
// may still be in Redis, so retry the Delete.
func (c *Cache[V]) Delete(ctx context.Context, keys ...string) error {
	for _, k := range keys {
		if err := c.check(k); err != nil {
			return err
		}
	}
	c.dropLocal(keys...)
	err := c.call(ctx, "del", c.cfg.writeTimeout, func(ctx context.Context) error {
		return c.del(ctx, keys)
	})
	// Again now that Redis has no value: a read that ran between the first
	// drop and the DEL may have put the old value back in L1 (its fill
	// token predates this second drop, so a fill still in flight is refused).
	c.dropLocal(keys...)
	if err != nil {
		return err
	}
	return c.broadcast(ctx, keys...)
}

// dropLocal removes keys from this instance: from L1, refusing fills of
// reads that began before, and from the per-key flights, so that a read
// that begins now does not join a load that began before the change.
func (c *Cache[V]) dropLocal(keys ...string) {
	for _, k := range keys {
		c.flight.Forget(k)
		if c.l1 != nil {
			c.l1.invalidate(k)
		}
	}
}

// broadcast publishes keys to the other instances' L1s.
func (c *Cache[V]) broadcast(ctx context.Context, keys ...string) error {
	if c.inv == nil || len(keys) == 0 {
		return nil
	}
	return c.inv.send(ctx, keys, false)
}

// jitter stretches ttl by a random fraction in [0, cfg.jitter).
func (c *Cache[V]) jitter(ttl time.Duration) time.Duration {
	if c.cfg.jitter == 0 {
		return ttl
	}
	return ttl + time.Duration(float64(ttl)*c.cfg.jitter*rand.Float64())
}

// redisTTL is how long Redis keeps a value of logical TTL ttl: the logical
// TTL plus the larger stale window, so that stale values are there to serve.
func (c *Cache[V]) redisTTL(ttl time.Duration) time.Duration {
	return max(ttl+max(c.cfg.swr, c.cfg.sie), time.Millisecond)
}

package tiercache

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"time"
)

// Option configures a [Cache]. Options are applied in order by [New], which
// validates the result and returns [ErrInvalidOption] for nonsense instead
// of silently replacing it.
type Option func(*config)

// apply applies the options of opts to t, skipping nil ones.
func apply[T any, O ~func(*T)](t *T, opts []O) {
	for _, o := range opts {
		if o != nil {
			o(t)
		}
	}
}

// Compression selects how large values are compressed before they go to Redis.
type Compression uint8

const (
	// NoCompression stores values as the codec wrote them.
	NoCompression Compression = iota
	// S2 is klauspost/compress's S2 (a faster Snappy): cheap, modest ratio.
	S2
	// Zstd is klauspost/compress's zstd: a better ratio for more CPU.
	Zstd
)

type config struct {
	prefix         string
	version        int
	ttl            time.Duration
	codec          Codec
	readTimeout    time.Duration
	writeTimeout   time.Duration
	loadTimeout    time.Duration
	jitter         float64
	negativeTTL    time.Duration
	maxValueSize   int
	logger         *slog.Logger // nil: discard (warnings about the client go to slog.Default)
	loggerSet      bool
	compression    Compression
	compressAbove  int
	lease          bool
	leaseTTL       time.Duration
	beta           float64
	swr            time.Duration
	sie            time.Duration
	l1Entries      int
	l1Bytes        int64
	l1TTL          time.Duration
	l1TTLSet       bool
	l1OutageTTL    time.Duration
	invalidation   bool
	healthInterval time.Duration
	observer       Observer
	maxRefreshes   int
	breaker        BreakerSettings
	breakerOn      bool
	coalesceReads  bool
}

func defaultConfig() config {
	return config{
		prefix:         "tc",
		version:        1,
		ttl:            5 * time.Minute,
		codec:          JSON,
		readTimeout:    100 * time.Millisecond,
		writeTimeout:   250 * time.Millisecond,
		loadTimeout:    5 * time.Second,
		jitter:         0.1,
		negativeTTL:    time.Minute,
		maxValueSize:   4 << 20,
		compressAbove:  1024,
		lease:          true,
		leaseTTL:       5 * time.Second,
		beta:           1,
		l1TTL:          30 * time.Second,
		l1OutageTTL:    time.Second,
		invalidation:   true,
		healthInterval: 5 * time.Second,
		maxRefreshes:   256,
		breaker:        defaultBreakerSettings(),
		breakerOn:      true,
		coalesceReads:  true,
	}
}

func (c *config) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrInvalidOption}, args...)...)
	}
	switch {
	case c.prefix == "" || strings.ContainsAny(c.prefix, "{}"):
		return bad("prefix %q must be non-empty and contain no '{' or '}'", c.prefix)
	case c.version < 0:
		return bad("version %d is negative", c.version)
	case c.ttl <= 0:
		return bad("default TTL %v must be positive", c.ttl)
	case c.codec == nil:
		return bad("codec is nil")
	case c.readTimeout <= 0 || c.writeTimeout <= 0 || c.loadTimeout <= 0:
		return bad("timeouts must be positive (read %v, write %v, load %v)", c.readTimeout, c.writeTimeout, c.loadTimeout)
	case math.IsNaN(c.jitter) || c.jitter < 0 || c.jitter > 1:
		return bad("jitter %v must be within [0, 1]", c.jitter)
	case c.negativeTTL < 0:
		return bad("negative TTL %v is negative", c.negativeTTL)
	case c.maxValueSize <= 0:
		return bad("max value size %d must be positive", c.maxValueSize)
	case c.loggerSet && c.logger == nil:
		return bad("logger is nil")
	case c.compression > Zstd:
		return bad("unknown compression %d", c.compression)
	case c.compressAbove < 0:
		return bad("compression threshold %d is negative", c.compressAbove)
	case c.lease && c.leaseTTL < time.Millisecond:
		return bad("lease TTL %v must be at least 1ms", c.leaseTTL)
	case math.IsNaN(c.beta) || c.beta < 0 || math.IsInf(c.beta, 0):
		return bad("early refresh beta %v must be finite and non-negative", c.beta)
	case c.swr < 0 || c.sie < 0:
		return bad("stale windows must not be negative (while-revalidate %v, if-error %v)", c.swr, c.sie)
	case c.l1Entries < 0 || c.l1Bytes < 0:
		return bad("L1 bounds must not be negative (entries %d, bytes %d)", c.l1Entries, c.l1Bytes)
	case c.l1Entries > 0 && c.l1Bytes > 0:
		return bad("bound L1 by entries or by bytes, not both")
	case c.l1TTL <= 0 || c.l1OutageTTL <= 0:
		return bad("L1 TTLs must be positive (max %v, outage %v)", c.l1TTL, c.l1OutageTTL)
	case c.healthInterval <= 0:
		return bad("invalidation health check interval %v must be positive", c.healthInterval)
	case c.maxRefreshes <= 0: // 0 would serve stale values unrefreshed: turn the windows off instead
		return bad("max background refreshes %d must be positive", c.maxRefreshes)
	}
	if c.breakerOn {
		return c.breaker.validate()
	}
	return nil
}

// WithPrefix sets the namespace: every Redis key of the cache starts with
// it. Caches of different value types sharing one Redis need different
// prefixes. Default "tc". It must not contain '{' or '}', which Redis
// Cluster reads as a hash tag.
func WithPrefix(prefix string) Option { return func(c *config) { c.prefix = prefix } }

// WithSchemaVersion sets the namespace's schema version (default 1).
// Bumping it makes every key written under the old version unreachable at
// once, which is what a deploy that changes the shape of V needs; the old
// keys expire on their own. (To drop every value at runtime instead, on
// every instance, see [Cache.Clear]; for the version of a row, see
// [WithVersion].)
func WithSchemaVersion(v int) Option { return func(c *config) { c.version = v } }

// WithDefaultTTL sets the logical TTL of values written without
// [WithTTL]. Default 5 minutes.
func WithDefaultTTL(d time.Duration) Option { return func(c *config) { c.ttl = d } }

// WithCodec sets the codec (default [JSON]).
func WithCodec(codec Codec) Option { return func(c *config) { c.codec = codec } }

// WithReadTimeout bounds each Redis read the cache makes (default 100ms).
// A read that times out is a miss: the caller goes on to the loader. A read
// that shares a round trip with others is bounded from when it was asked
// for, not from when its round trip left.
//
// NOTE: go-redis applies a context deadline to the socket only when the
// client has ContextTimeoutEnabled set; without it the client's own
// ReadTimeout (3s by default) bounds the wait. [New] logs a warning then.
func WithReadTimeout(d time.Duration) Option { return func(c *config) { c.readTimeout = d } }

// WithWriteTimeout bounds each Redis write the cache makes (default 250ms).
func WithWriteTimeout(d time.Duration) Option { return func(c *config) { c.writeTimeout = d } }

// WithLoadTimeout bounds one call of a loader (default 5s). The loader runs
// on a context detached from its callers, so that one caller leaving does
// not fail the others; this timeout is what stops it.
func WithLoadTimeout(d time.Duration) Option { return func(c *config) { c.loadTimeout = d } }

// WithJitter sets the TTL jitter: every write's TTL is stretched by a random
// fraction in [0, f), so that keys written together do not expire together.
// Default 0.1; 0 turns it off.
func WithJitter(f float64) Option { return func(c *config) { c.jitter = f } }

// WithNegativeTTL sets how long a loader's [ErrNotFound] is cached
// (default 1 minute). 0 turns negative caching off.
func WithNegativeTTL(d time.Duration) Option { return func(c *config) { c.negativeTTL = d } }

// WithMaxValueSize bounds the size of an encoded value, before and after
// compression (default 4 MiB): compression saves Redis memory, it does not
// raise the bound, which also caps what a reader decompresses. Writes over
// it fail with [ErrValueTooLarge]; stored values over it are a miss and are
// never decoded.
func WithMaxValueSize(n int) Option { return func(c *config) { c.maxValueSize = n } }

// WithLogger sets the logger for what an operator must know: corrupt
// entries, breaker state changes, subscription lost and regained, loaders
// failing behind a stale value. Each message is logged at most once a
// second, with a count of the ones held back. Default: discard, except
// for [New]'s warning about a client whose timeouts cannot work, which then
// goes to slog.Default().
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger, c.loggerSet = l, true }
}

// WithCompression compresses encoded values longer than threshold bytes.
func WithCompression(alg Compression, threshold int) Option {
	return func(c *config) { c.compression, c.compressAbove = alg, threshold }
}

// WithLease sets the TTL of the lease that a cache instance takes in Redis
// before it calls the loader for a missing key (default 5s). While one
// instance holds the lease, the others wait for its value instead of
// loading too; if the holder dies, the others take over after at most this
// TTL.
func WithLease(ttl time.Duration) Option { return func(c *config) { c.lease, c.leaseTTL = true, ttl } }

// WithoutLease turns the cross-instance lease off: every instance loads a
// missing key on its own (coalescing still works within a process) and
// fills are not protected against a concurrent Delete.
func WithoutLease() Option { return func(c *config) { c.lease = false } }

// WithEarlyRefresh sets XFetch's beta (default 1): on a hit, a value is
// refreshed in the background with probability exp(-t/(beta*delta)), where
// t is the time left to its logical expiry and delta the time its load
// took. Larger beta refreshes earlier; 0 turns early refresh off.
func WithEarlyRefresh(beta float64) Option { return func(c *config) { c.beta = beta } }

// WithStaleWhileRevalidate keeps a value for d past its logical expiry: a
// read in that window gets the old value at once while the cache refreshes
// it in the background. Default 0 (off).
func WithStaleWhileRevalidate(d time.Duration) Option { return func(c *config) { c.swr = d } }

// WithStaleIfError keeps a value for d past its logical expiry to serve
// when the loader fails: the caller gets the old value, and the loader's
// error is counted and logged instead. Default 0 (off).
func WithStaleIfError(d time.Duration) Option { return func(c *config) { c.sie = d } }

// WithL1 turns on the in-process tier, bounded to n entries. L1 holds
// decoded values, so a hit costs a map lookup and no decoding.
func WithL1(n int) Option { return func(c *config) { c.l1Entries, c.l1Bytes = n, 0 } }

// WithL1Bytes turns on the in-process tier, bounded by the encoded size of
// its values, plus each key and a fixed overhead per entry (an estimate of
// their memory).
func WithL1Bytes(n int64) Option { return func(c *config) { c.l1Bytes, c.l1Entries = n, 0 } }

// WithL1TTL caps how long a value stays in L1 (default 30s), so that a
// value stays stale for at most that long even if every invalidation
// message is lost. An L1 entry never outlives the value's logical expiry.
func WithL1TTL(d time.Duration) Option { return func(c *config) { c.l1TTL, c.l1TTLSet = d, true } }

// WithL1OutageTTL caps how long an L1 entry lives while the invalidation
// subscription is down (default 1s): no invalidation can arrive then.
func WithL1OutageTTL(d time.Duration) Option { return func(c *config) { c.l1OutageTTL = d } }

// WithoutInvalidation turns off the pub/sub invalidation of L1 across
// instances. Only for a single instance: other instances' writes are then
// seen only when the L1 entries expire.
func WithoutInvalidation() Option { return func(c *config) { c.invalidation = false } }

// WithHealthCheck sets how long the invalidation subscription may stay
// silent before it is pinged (default 5s); a ping without an answer within
// the same interval drops the connection, flushes L1 and resubscribes. A
// stalled subscription is therefore noticed within twice this interval.
func WithHealthCheck(d time.Duration) Option { return func(c *config) { c.healthInterval = d } }

// WithObserver sets the observer that the cache reports events to (see
// the tiercacheprom and tiercacheotel packages). Default: none; [Cache.Stats]
// counts regardless.
func WithObserver(o Observer) Option { return func(c *config) { c.observer = o } }

// WithMaxBackgroundRefreshes bounds the early and stale refreshes that run
// at once (default 256, at least 1); a refresh that finds no room is
// skipped, and the value is refreshed on a later hit or when it expires. To
// have no background refreshes, turn off [WithEarlyRefresh] and
// [WithStaleWhileRevalidate].
func WithMaxBackgroundRefreshes(n int) Option { return func(c *config) { c.maxRefreshes = n } }

// WithoutReadCoalescing sends every single-key Redis read as its own GET,
// and every miss's lease scripts as their own commands. By default, reads
// that arrive while others are on the wire go out together in one round
// trip (one MGET, or one pipeline per node on a cluster), which multiplies
// read throughput under concurrency and never makes a lone read wait (see
// the README for the measured figures); so do the lease scripts (Acquire,
// Fill) of concurrent misses of different keys, with one round trip of them
// in flight at a time. Under heavy load (16 reads or more on the wire and
// queued) reads narrow to one round trip at a time as well, and a read
// queued behind a late one goes out beside it after a quarter of
// WithReadTimeout. A coalesced read or Acquire still waits no longer
// than WithReadTimeout, and a coalesced fill (its waiters' wake-up
// included) no longer than WithWriteTimeout, counted from when it was
// asked for. Turn it off to see one Observer.Redis call and one trace
// span per read or script, rather than one per shared round trip.
func WithoutReadCoalescing() Option { return func(c *config) { c.coalesceReads = false } }

// SetOption configures one write: [Cache.Set], [Cache.SetMany], or a load
// through [LoadOptions].
type SetOption func(*setConfig)

type setConfig struct {
	ttl     time.Duration
	tags    []string
	noCache bool
	version uint64
}

// WithVersion gives the write the version of the row it comes from: any
// number that grows with each committed change of the row (a row version
// column, updated_at in microseconds, a commit LSN). Redis keeps the newest
// version written (or deleted, see [Invalidation].Version) with the key,
// and refuses, atomically, a versioned Set that is not newer, and a
// versioned load that is older (one as old is the current row): writers
// whose Sets arrive out of order leave the newest row cached, on one node
// or a cluster, and every L1 follows. A refused write is not an error (it
// lost a race it should lose); it is counted as [EventWriteRefused]. For a
// loader, pass it through [LoadOptions]. Writes without a version neither
// check nor move it.
func WithVersion(v uint64) SetOption { return func(s *setConfig) { s.version = v } }

// WithTTL sets the logical TTL of this write instead of the default.
func WithTTL(d time.Duration) SetOption { return func(s *setConfig) { s.ttl = d } }

// WithTags attaches tags to the value: [Cache.InvalidateTags] of any of them
// makes the value unreachable.
func WithTags(tags ...string) SetOption {
	return func(s *setConfig) { s.tags = append(s.tags, tags...) }
}

// NoCache makes a load return its value without caching it, for results the
// loader knows are partial or not worth keeping. Only meaningful through
// [LoadOptions].
func NoCache() SetOption { return func(s *setConfig) { s.noCache = true } }

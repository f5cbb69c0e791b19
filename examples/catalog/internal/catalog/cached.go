package catalog

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/tiercache/tiercache"
)

// ErrCacheNotUpdated is returned by CachedRepository.Put when the product was
// saved but the cache could not be told: other reads may serve the old
// value until it expires. Put is idempotent, so the caller should retry it.
var ErrCacheNotUpdated = errors.New("catalog: product saved, but the cache was not updated")

// WriteMode is what CachedRepository.Put does to the cache after the store
// has saved a product.
type WriteMode int

const (
	// Invalidate deletes the cached product; the next read loads it from the
	// store. It is the safe default: see CachedRepository.Put.
	Invalidate WriteMode = iota
	// WriteThrough writes the saved product into the cache, which spares the
	// next read a load. It is versioned by the row's updated_at, so that two
	// concurrent writers of one product leave the newer row cached (see
	// CachedRepository.Put).
	WriteThrough
	// SkipCache leaves the cache alone: the product is saved and nothing
	// else happens, which is what a writer killed between its commit and
	// its Delete leaves behind. It exists to show the commit-log follower
	// (tiercachepg) at work: without one, every instance serves the old
	// product until it expires.
	SkipCache
)

// ParseWriteMode parses "invalidate", "write-through" or "none" (SkipCache).
func ParseWriteMode(s string) (WriteMode, error) {
	switch s {
	case "invalidate":
		return Invalidate, nil
	case "write-through":
		return WriteThrough, nil
	case "none":
		return SkipCache, nil
	}
	return 0, fmt.Errorf("catalog: write mode %q: want invalidate, write-through or none", s)
}

func (m WriteMode) String() string {
	switch m {
	case WriteThrough:
		return "write-through"
	case SkipCache:
		return "none"
	}
	return "invalidate"
}

// cacheWriteTimeout bounds the cache update that follows a saved write.
const cacheWriteTimeout = 2 * time.Second

// CachedRepository is a ProductRepository that reads through a
// tiercache.Cache in front of another ProductRepository (the store), and
// keeps the cache up to date when products are written through it.
//
// It keeps the store's contract: unknown ids are ErrNotFound, whether the
// store said so now or the cache remembers that it did (negative caching).
type CachedRepository struct {
	store ProductRepository
	cache *tiercache.Cache[Product]
	mode  WriteMode
}

// NewCachedRepository returns a repository that caches store's products in
// cache. The caller owns both and closes the cache, then its Redis client,
// when done.
func NewCachedRepository(store ProductRepository, cache *tiercache.Cache[Product], mode WriteMode) *CachedRepository {
	return &CachedRepository{store: store, cache: cache, mode: mode}
}

// CacheKey is the product's key in the cache: its id in decimal. The
// cache's prefix (one per value type) already says these are products, so
// the id is enough. It is also PostgreSQL's text form of the id column,
// which is what the commit-log follower maps a row to (KeyPattern "{id}",
// see CacheKeyPattern).
func CacheKey(id int64) string { return strconv.FormatInt(id, 10) }

// CacheKeyPattern is CacheKey as a tiercachepg.KeyPattern over the
// products table's columns: a changed row's id, in PostgreSQL's text form,
// is the key the repository caches it under.
const CacheKeyPattern = "{id}"

// ProductsTag is the tag every product the repository caches carries
// (tiercache.WithTags, on loads and write-through Sets alike):
// invalidating it makes every cached product unreachable at once, on
// every instance, whatever its id. The commit-log follower invalidates it
// for the changes that name no row it can map to a key: a TRUNCATE of the
// table, and any change its mapping fails on.
//
// The price: every Redis hit also reads the tag's version (one more round
// trip, pipelined; see tiercache's tags.go), while L1 hits compare against
// the versions this instance has seen; and with Redis down a loaded
// product is not kept in L1 (a tag could not be checked), so every read
// reaches the store until Redis is back. Negative entries ("not found", of
// Get and GetMany alike) carry the tag too: invalidating it drops them,
// and they are loaded again.
const ProductsTag = "products"

// Get implements ProductRepository: L1, then Redis, then the store.
func (r *CachedRepository) Get(ctx context.Context, id int64) (Product, error) {
	// The loader runs on a context of the cache's (detached from this
	// request, bounded by the cache's load timeout), not on ctx: callers that
	// share the load must not fail because the first one went away.
	p, err := r.cache.GetOrLoad(ctx, CacheKey(id), func(ctx context.Context) (Product, error) {
		p, err := r.store.Get(ctx, id)
		// The tag goes on a "not found" too (tiercache tags negative
		// entries as any other): a change the commit-log follower cannot
		// map (an insert of this id among them) invalidates ProductsTag,
		// which must drop a cached "not found" as well as a product.
		tiercache.LoadOptions(ctx, tiercache.WithTags(ProductsTag))
		if errors.Is(err, ErrNotFound) {
			// Tell the cache to remember that id does not exist.
			return Product{}, fmt.Errorf("%w: %w", tiercache.ErrNotFound, err)
		}
		if err != nil {
			return Product{}, err
		}
		tiercache.LoadOptions(ctx, tiercache.WithVersion(rowVersion(p)))
		return p, nil
	})
	if errors.Is(err, tiercache.ErrNotFound) {
		// A negative hit is tiercache.ErrNotFound alone, without the store's
		// error: translate it back into the repository's contract.
		return Product{}, fmt.Errorf("%w: id %d", ErrNotFound, id)
	}
	return p, err
}

// GetMany implements ProductRepository: what L1 and Redis hold, then one
// call of the store's GetMany for the ids still missing. Ids known not to
// exist (cached as not found) are not asked for again.
func (r *CachedRepository) GetMany(ctx context.Context, ids []int64) (map[int64]Product, error) {
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = CacheKey(id)
	}
	found, err := r.cache.GetOrLoadMany(ctx, keys, func(ctx context.Context, keys []string) (map[string]Product, error) {
		missing := make([]int64, 0, len(keys))
		for _, k := range keys {
			id, err := strconv.ParseInt(k, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("catalog: bad cache key %q: %w", k, err)
			}
			missing = append(missing, id)
		}
		ps, err := r.store.GetMany(ctx, missing)
		if err != nil {
			return nil, err
		}
		// The keys absent from this map are cached as not found.
		tiercache.LoadOptions(ctx, tiercache.WithTags(ProductsTag))
		out := make(map[string]Product, len(ps))
		for id, p := range ps {
			out[CacheKey(id)] = p
			tiercache.LoadKeyOptions(ctx, CacheKey(id), tiercache.WithVersion(rowVersion(p)))
		}
		return out, nil
	})
	if err != nil {
		return nil, err
	}
	out := make(map[int64]Product, len(found))
	for _, p := range found {
		out[p.ID] = p
	}
	return out, nil
}

// Put implements ProductRepository: it saves p in the store, then updates
// the cache (in this instance and, through the cache's invalidation
// messages, in every other instance's L1). A failure of the cache update is
// an error wrapping ErrCacheNotUpdated, returned with the saved product.
//
// The cache is updated after the store, never before: a read between a
// cache delete and the store's commit would load and cache the old value.
// After the commit, a read that loaded the old value before it cannot cache
// it, since Delete and Set remove the key's lease and the cache refuses the
// fill.
//
// Invalidate (the default) deletes the key. WriteThrough sets it to the
// saved value, with the row's version (its updated_at), because two requests
// writing one product can reach the cache out of order:
//
//	A: store.Put(name=x) commits (updated_at t1)
//	                                  B: store.Put(name=y) commits (t2 > t1)
//	                                  B: cache.Set(y, version t2)
//	A: cache.Set(x, version t1)       -> refused: Redis holds t2
//
// Unversioned, A's Set would leave x cached until it expired.
//
// SkipCache does neither. Whatever the mode, an update this method never
// gets to make (the process dies after the commit, Redis is down) is made
// by the commit-log follower, when the service runs one (see package main):
// the update here is the fast path, which gives this instance's next read
// the new product at once, and the follower the guarantee.
//
// WARNING: the follower's invalidations are unversioned deletes, which a
// WriteThrough Set does not compare with: a Set delayed between the commit
// and Redis past another commit of the row (by psql, or a Put that
// invalidates) and the follower's delete for it lands after that delete,
// and the older row stays cached until its TTL or the row's next change.
// Only a newer versioned Set refuses it. Invalidate has no such window.
func (r *CachedRepository) Put(ctx context.Context, p Product) (Product, bool, error) {
	saved, created, err := r.store.Put(ctx, p)
	if err != nil {
		return Product{}, false, err
	}
	// The store has committed: finish the cache update even if the client
	// goes away now, or the cache would keep the old value.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cacheWriteTimeout)
	defer cancel()
	key := CacheKey(saved.ID)
	switch r.mode {
	case SkipCache:
		return saved, created, nil
	case WriteThrough:
		if err = r.cache.Set(cctx, key, saved, tiercache.WithVersion(rowVersion(saved)), tiercache.WithTags(ProductsTag)); err == nil {
			return saved, created, nil
		}
		// A failed Set may have left the old value in Redis (it dropped
		// only this instance's L1 copy): fall back on deleting it.
	}
	if derr := r.cache.Delete(cctx, key); derr != nil {
		return saved, created, fmt.Errorf("%w: product %d: %w", ErrCacheNotUpdated, saved.ID, errors.Join(err, derr))
	}
	return saved, created, nil
}

// rowVersion is a product row's version for the cache: its updated_at in
// microseconds, which grows with the row's changes made through Put.
//
// NOTE: Put sets updated_at after taking the row lock, above the version it
// replaces, so Put's writes of one row are versioned in commit order; a
// writer outside this repository that sets it to now() (its transaction's
// start) orders them only as far as they did not overlap. It versions this repository's own fills and Sets; the
// commit-log follower's invalidations are not versioned by it (see
// productMap in package main).
func rowVersion(p Product) uint64 { return uint64(p.UpdatedAt.UnixMicro()) }

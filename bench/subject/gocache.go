package subject

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/eko/gocache/lib/v4/cache"
	"github.com/eko/gocache/lib/v4/store"
	gocachestore "github.com/eko/gocache/store/go_cache/v4"
	redisstore "github.com/eko/gocache/store/redis/v4"
	gocache "github.com/patrickmn/go-cache"
	"github.com/redis/go-redis/v9"
)

// gc adapts github.com/eko/gocache (lib/v4): a LoadableCache[string] over
// the Redis store, or, with local, over a ChainCache of a go-cache store
// (patrickmn/go-cache, gocache's simplest local store) in front of the
// Redis store.
//
// gocache binds the load function when the cache is built, while the
// workloads pass a loader per call; the adapter hands the caller's loader
// to its load function through the context (one context.WithValue per
// read, counted in gocache's allocations).
//
// What gocache does, measured as is: LoadableCache writes a loaded value
// to the cache from a background goroutine, after the read returned;
// ChainCache reads each layer with GetWithTTL, which for the Redis store
// is a GET and then a TTL (two round trips), and writes Redis hits back to
// the local store from a background goroutine.
type gc struct {
	rdb      *redis.Client
	loadable *cache.LoadableCache[string]
	inner    cache.CacheInterface[string]
	chain    *cache.ChainCache[string]
	cfg      Config
}

func gocacheFactory(local bool) Factory {
	f := Factory{
		Name:   "gocache",
		Family: "gc",
		Module: "github.com/eko/gocache/lib/v4",
		Notes:  "LoadableCache over the Redis store (store/redis/v4), WithExpiration(ttl)",
		Caps:   Caps{Get: true, Write: "LoadableCache.Set (write-through to every store)"},
	}
	if local {
		f.Name = "gocache chain"
		f.Caps.Local = "patrickmn/go-cache via store/go_cache/v4 (no size bound)"
		f.Notes = "LoadableCache over ChainCache(go-cache store, Redis store), WithExpiration(ttl)"
	}
	f.New = func(cfg Config) (Subject, error) {
		rdb := newGoRedis(cfg)
		rs := cache.New[string](redisstore.NewRedis(rdb, store.WithExpiration(cfg.TTL)))
		s := &gc{rdb: rdb, cfg: cfg}
		if local {
			gs := gocachestore.NewGoCache(gocache.New(cfg.TTL, time.Minute), store.WithExpiration(cfg.TTL))
			s.chain = cache.NewChain[string](cache.New[string](gs), rs)
			s.inner = s.chain
		} else {
			s.inner = rs
		}
		s.loadable = cache.NewLoadable[string](s.load, s.inner)
		return s, nil
	}
	return f
}

type loaderKey struct{}

// load is the LoadableCache's load function: it calls the loader of the
// read that missed.
func (s *gc) load(ctx context.Context, key any) (string, []store.Option, error) {
	l, ok := ctx.Value(loaderKey{}).(Loader)
	if !ok {
		return "", nil, errors.New("subject: gocache read without a loader")
	}
	v, err := l(ctx, strings.TrimPrefix(key.(string), s.cfg.Namespace+":"))
	return v, []store.Option{store.WithExpiration(s.cfg.TTL)}, err
}

func (s *gc) key(k string) string { return s.cfg.Namespace + ":" + k }

func (s *gc) Get(ctx context.Context, key string) (string, error) {
	v, err := s.inner.Get(ctx, s.key(key))
	if err != nil {
		if errors.Is(err, &store.NotFound{}) {
			return "", ErrMiss
		}
		return "", err
	}
	return v, nil
}

func (s *gc) GetOrLoad(ctx context.Context, key string, load Loader) (string, error) {
	ctx = context.WithValue(ctx, loaderKey{}, load)
	return s.loadable.Get(ctx, s.key(key))
}

// Write is LoadableCache.Set, which sets the inner cache (every store of
// the chain, in order). A value the LoadableCache loaded before and has not
// yet handed to its setter goroutine may still be written after it.
func (s *gc) Write(ctx context.Context, key, value string) error {
	return s.loadable.Set(ctx, s.key(key), value, store.WithExpiration(s.cfg.TTL))
}

func (s *gc) Close() error {
	// LoadableCache.Close drains its pending writes; ChainCache has its own
	// setter goroutine.
	err := s.loadable.Close()
	if s.chain != nil {
		err = errors.Join(err, s.chain.Close())
	}
	return errors.Join(err, s.rdb.Close())
}

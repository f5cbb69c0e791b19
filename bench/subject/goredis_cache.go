package subject

import (
	"context"
	"errors"

	"github.com/go-redis/cache/v9"
	"github.com/redis/go-redis/v9"
)

// grc adapts github.com/go-redis/cache: Once (singleflight around GET,
// load and SET) for GetOrLoad, Get for Get. With local, its TinyLFU local
// cache sized to LocalSize with the TTL as local TTL.
type grc struct {
	rdb *redis.Client
	c   *cache.Cache
	cfg Config
}

func goRedisCacheFactory(local bool) Factory {
	f := Factory{
		Name:   "go-redis/cache",
		Family: "grc",
		Module: "github.com/go-redis/cache/v9",
		Caps:   Caps{Get: true, Write: "Set(Item{TTL: ttl}) (write-through, local cache too)"},
		Notes:  "Once(Item{TTL: ttl}); strings pass through its marshaller unencoded",
	}
	if local {
		f.Name = "go-redis/cache+TinyLFU"
		f.Caps.Local = "go-tinylfu (TinyLFU), one mutex"
		f.Notes += "; LocalCache: NewTinyLFU(n, ttl)"
	}
	f.New = func(cfg Config) (Subject, error) {
		rdb := newGoRedis(cfg)
		opt := &cache.Options{Redis: rdb}
		if local {
			opt.LocalCache = cache.NewTinyLFU(cfg.LocalSize, cfg.TTL)
		}
		return &grc{rdb: rdb, c: cache.New(opt), cfg: cfg}, nil
	}
	return f
}

func (s *grc) key(k string) string { return s.cfg.Namespace + ":" + k }

func (s *grc) Get(ctx context.Context, key string) (string, error) {
	var v string
	err := s.c.Get(ctx, s.key(key), &v)
	if errors.Is(err, cache.ErrCacheMiss) {
		return "", ErrMiss
	}
	return v, err
}

func (s *grc) GetOrLoad(ctx context.Context, key string, load Loader) (string, error) {
	var v string
	err := s.c.Once(&cache.Item{
		Ctx:   ctx,
		Key:   s.key(key),
		Value: &v,
		TTL:   s.cfg.TTL,
		Do: func(*cache.Item) (any, error) {
			return load(ctx, key)
		},
	})
	return v, err
}

func (s *grc) Write(ctx context.Context, key, value string) error {
	return s.c.Set(&cache.Item{Ctx: ctx, Key: s.key(key), Value: value, TTL: s.cfg.TTL})
}

func (s *grc) Close() error { return s.rdb.Close() }

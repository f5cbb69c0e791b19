package subject

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
)

// goRedisSF is the baseline: what a service writes without a cache library.
// A GET; on a miss, one load per key per process through singleflight,
// then a SET with the TTL. Batches are one MGET, one call of the loader for
// the missing keys, and one pipeline of SETs.
//
// It does not check Redis again inside the flight (as most hand-written code
// does not), so a goroutine that misses just after a flight ended loads
// again: that is part of what the baseline measures.
type goRedisSF struct {
	rdb *redis.Client
	cfg Config
	sf  singleflight.Group
}

func goRedisFactory() Factory {
	return Factory{
		Name:   Baseline,
		Family: "gr",
		Module: "github.com/redis/go-redis/v9",
		Caps:   Caps{Batch: true, Get: true, Write: "SET PX ttl (write-through)"},
		Notes:  "GET; on a miss singleflight{load; SET PX ttl}; batches: MGET + one load + pipelined SETs",
		New: func(cfg Config) (Subject, error) {
			return &goRedisSF{rdb: newGoRedis(cfg), cfg: cfg}, nil
		},
	}
}

// newGoRedis is the go-redis client every go-redis based subject gets: the
// library defaults (pool of 10 connections per GOMAXPROCS), plus
// ContextTimeoutEnabled, which tiercache asks for and which costs the others
// nothing when the context has no deadline. With cfg.Requests, a hook
// counts its requests.
func newGoRedis(cfg Config) *redis.Client {
	rdb := redis.NewClient(&redis.Options{
		Addr:                  cfg.Addr,
		ContextTimeoutEnabled: true,
	})
	if cfg.Requests != nil {
		rdb.AddHook(requestHook{cfg.Requests})
	}
	return rdb
}

func (s *goRedisSF) key(k string) string { return s.cfg.Namespace + ":" + k }

func (s *goRedisSF) Get(ctx context.Context, key string) (string, error) {
	v, err := s.rdb.Get(ctx, s.key(key)).Result()
	if errors.Is(err, redis.Nil) {
		return "", ErrMiss
	}
	return v, err
}

func (s *goRedisSF) GetOrLoad(ctx context.Context, key string, load Loader) (string, error) {
	rk := s.key(key)
	v, err := s.rdb.Get(ctx, rk).Result()
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, redis.Nil) {
		return "", err
	}
	r, err, _ := s.sf.Do(rk, func() (any, error) {
		v, err := load(ctx, key)
		if err != nil {
			return "", err
		}
		// A failed SET only means the next read loads again.
		_ = s.rdb.Set(ctx, rk, v, s.cfg.TTL).Err()
		return v, nil
	})
	if err != nil {
		return "", err
	}
	return r.(string), nil
}

func (s *goRedisSF) GetOrLoadMany(ctx context.Context, keys []string, load BatchLoader) (map[string]string, error) {
	rks := make([]string, len(keys))
	for i, k := range keys {
		rks[i] = s.key(k)
	}
	vals, err := s.rdb.MGet(ctx, rks...).Result()
	if err != nil {
		return nil, err
	}
	out := make(map[string]string, len(keys))
	var missing []string
	for i, v := range vals {
		if str, ok := v.(string); ok {
			out[keys[i]] = str
		} else {
			missing = append(missing, keys[i])
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	loaded, err := load(ctx, missing)
	if err != nil {
		return nil, err
	}
	pipe := s.rdb.Pipeline()
	for k, v := range loaded {
		out[k] = v
		pipe.Set(ctx, s.key(k), v, s.cfg.TTL)
	}
	_, _ = pipe.Exec(ctx)
	return out, nil
}

// Write is a SET with the TTL. It does not forget a flight in progress: a
// load that started before the write may still SET its older value after
// it (what hand-written cache-aside code does).
func (s *goRedisSF) Write(ctx context.Context, key, value string) error {
	return s.rdb.Set(ctx, s.key(key), value, s.cfg.TTL).Err()
}

func (s *goRedisSF) Close() error { return s.rdb.Close() }

package subject

import (
	"context"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/viccon/sturdyc"
)

// st adapts github.com/viccon/sturdyc: an in-memory client (always on; it
// is sturdyc's first tier) with WithDistributedStorage over Redis, adapted
// by redisStorage below. GetOrFetch for GetOrLoad, GetOrFetchBatch for
// batches.
//
// Options: 10 shards, LocalSize entries, 10% evicted when full, and
// WithNoContinuousEvictions: sturdyc's eviction goroutine has no way to be
// stopped, so with it every instance the runner creates would stay alive
// (and in the heap) until the process exits. Expired entries are still
// never served: sturdyc checks the expiry on every read.
//
// What sturdyc does, measured as is: it writes loaded values to the
// distributed storage from a background goroutine, and stores each value
// there as a JSON record (the value and its creation time).
type st struct {
	rdb *redis.Client
	c   *sturdyc.Client[string]
	cfg Config
}

func sturdycFactory() Factory {
	return Factory{
		Name:   "sturdyc",
		Family: "st",
		Module: "github.com/viccon/sturdyc",
		Caps: Caps{
			Local: "sharded maps; at capacity evicts 10% by expiry",
			Batch: true,
			Write: "Delete (memory) + DEL through the adapter's storage (next read loads)",
		},
		Notes: "New(n, 10 shards, ttl, 10%, WithDistributedStorage(redis), WithNoContinuousEvictions)",
		New: func(cfg Config) (Subject, error) {
			rdb := newGoRedis(cfg)
			c := sturdyc.New[string](max(cfg.LocalSize, 10), 10, cfg.TTL, 10,
				sturdyc.WithDistributedStorage(&redisStorage{rdb: rdb, ns: cfg.Namespace + ":", ttl: cfg.TTL}),
				sturdyc.WithNoContinuousEvictions(),
			)
			return &st{rdb: rdb, c: c, cfg: cfg}, nil
		},
	}
}

func (s *st) Get(context.Context, string) (string, error) {
	// sturdyc's Get reads its memory only, not the distributed storage.
	return "", ErrNotSupported
}

func (s *st) GetOrLoad(ctx context.Context, key string, load Loader) (string, error) {
	return s.c.GetOrFetch(ctx, key, func(ctx context.Context) (string, error) {
		return load(ctx, key)
	})
}

func (s *st) GetOrLoadMany(ctx context.Context, keys []string, load BatchLoader) (map[string]string, error) {
	return s.c.GetOrFetchBatch(ctx, keys, s.c.BatchKeyFn("b"), func(ctx context.Context, ids []string) (map[string]string, error) {
		return load(ctx, ids)
	})
}

// Write deletes the key from sturdyc's memory and from Redis, through the
// distributed storage the adapter gives sturdyc (the user owns that code):
// sturdyc's Set writes its memory only, and it has no way to write a
// record to the distributed storage, whose format is its own. The next
// read loads.
func (s *st) Write(ctx context.Context, key, _ string) error {
	s.c.Delete(key)
	return s.rdb.Del(ctx, s.cfg.Namespace+":"+key).Err()
}

func (s *st) Close() error { return s.rdb.Close() }

// redisStorage is sturdyc's DistributedStorage over go-redis: GET, SET PX,
// MGET, and a pipeline of SETs. sturdyc leaves the TTL of the distributed
// storage to it; it is the same TTL as the in-memory one. The interface
// cannot return errors, so a Redis failure reads as a miss and a failed
// write is dropped (sturdyc's design, not the adapter's).
type redisStorage struct {
	rdb *redis.Client
	ns  string
	ttl time.Duration
}

func (r *redisStorage) Get(ctx context.Context, key string) ([]byte, bool) {
	b, err := r.rdb.Get(ctx, r.ns+key).Bytes()
	if err != nil {
		return nil, false
	}
	return b, true
}

func (r *redisStorage) Set(ctx context.Context, key string, value []byte) {
	_ = r.rdb.Set(ctx, r.ns+key, value, r.ttl).Err()
}

func (r *redisStorage) GetBatch(ctx context.Context, keys []string) map[string][]byte {
	rks := make([]string, len(keys))
	for i, k := range keys {
		rks[i] = r.ns + k
	}
	vals, err := r.rdb.MGet(ctx, rks...).Result()
	out := make(map[string][]byte, len(keys))
	if err != nil {
		return out
	}
	for i, v := range vals {
		if s, ok := v.(string); ok {
			out[keys[i]] = []byte(s)
		}
	}
	return out
}

func (r *redisStorage) SetBatch(ctx context.Context, records map[string][]byte) {
	pipe := r.rdb.Pipeline()
	for k, v := range records {
		pipe.Set(ctx, r.ns+k, v, r.ttl)
	}
	_, _ = pipe.Exec(ctx)
}

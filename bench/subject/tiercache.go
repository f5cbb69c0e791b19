package subject

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"
	"github.com/tiercache/tiercache"
)

// tc adapts tiercache: Raw codec, the TTL as default TTL, every other option
// at its default (lease, breaker, jitter, XFetch early refresh, read
// coalescing). With local,
// WithL1(LocalSize) (otter v2 W-TinyLFU) and its pub/sub invalidation.
type tc struct {
	rdb *redis.Client
	c   *tiercache.Cache[string]
}

// tiercacheVariant is one configuration of tiercache.
type tiercacheVariant int

const (
	tcPlain       tiercacheVariant = iota // Redis only
	tcL1                                  // WithL1
	tcUncoalesced                         // Redis only, WithoutReadCoalescing
)

func tiercacheFactory(v tiercacheVariant) Factory {
	f := Factory{
		Name:   "tiercache",
		Family: "tc",
		Module: "github.com/tiercache/tiercache",
		Caps: Caps{CrossInstance: true, Get: true, Batch: true,
			Write: "Set (write-through to Redis by script; invalidation published)"},
		Notes: "Raw codec, WithDefaultTTL(ttl), defaults otherwise (lease, breaker, jitter 0.1, XFetch)",
	}
	switch v {
	case tcL1:
		f.Name = "tiercache+L1"
		f.Caps.Local = "otter v2 (W-TinyLFU), bounded by entries"
		f.Notes += "; WithL1(n)"
	case tcUncoalesced:
		f.Name = "tiercache-nocoalesce"
		f.Notes += "; WithoutReadCoalescing()"
	}
	f.New = func(cfg Config) (Subject, error) {
		rdb := newGoRedis(cfg)
		opts := []tiercache.Option{
			tiercache.WithPrefix(cfg.Namespace),
			tiercache.WithCodec(tiercache.Raw),
			tiercache.WithDefaultTTL(cfg.TTL),
		}
		switch v {
		case tcL1:
			opts = append(opts, tiercache.WithL1(cfg.LocalSize))
		case tcUncoalesced:
			opts = append(opts, tiercache.WithoutReadCoalescing())
		}
		c, err := tiercache.New[string](rdb, opts...)
		if err != nil {
			_ = rdb.Close()
			return nil, err
		}
		return &tc{rdb: rdb, c: c}, nil
	}
	return f
}

func (s *tc) Get(ctx context.Context, key string) (string, error) {
	v, err := s.c.Get(ctx, key)
	if errors.Is(err, tiercache.ErrMiss) {
		return "", ErrMiss
	}
	return v, err
}

func (s *tc) GetOrLoad(ctx context.Context, key string, load Loader) (string, error) {
	return s.c.GetOrLoad(ctx, key, func(ctx context.Context) (string, error) {
		return load(ctx, key)
	})
}

func (s *tc) Write(ctx context.Context, key, value string) error {
	return s.c.Set(ctx, key, value)
}

func (s *tc) Close() error {
	err := s.c.Close()
	return errors.Join(err, s.rdb.Close())
}

func (s *tc) GetOrLoadMany(ctx context.Context, keys []string, load BatchLoader) (map[string]string, error) {
	return s.c.GetOrLoadMany(ctx, keys, tiercache.BatchLoadFunc[string](load))
}

// Diagnostics reports tiercache's own counters: how often it went to
// Redis, to the loader, and what went wrong on the way.
func (s *tc) Diagnostics() map[string]uint64 {
	st := s.c.Stats()
	d := map[string]uint64{
		"l1_hits":   st.L1Hits,
		"l2_hits":   st.L2Hits,
		"l2_misses": st.L2Misses,
		"loads":     st.Loads,
		// A gauge, not a counter: summed over instances like the rest.
		"l1_entries": uint64(st.L1Entries),
	}
	for _, e := range []tiercache.Event{
		tiercache.EventCoalesced, tiercache.EventLeaseWait, tiercache.EventFillRefused,
		tiercache.EventEarlyRefresh, tiercache.EventRedisError, tiercache.EventRedisTimeout,
		tiercache.EventBreakerReject, tiercache.EventCorrupt, tiercache.EventL1Flush,
	} {
		if n := st.Count(e); n > 0 {
			d[e.String()] = n
		}
	}
	return d
}

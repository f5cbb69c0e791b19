package subject

import (
	"context"

	"github.com/redis/rueidis"
	"github.com/redis/rueidis/rueidisaside"
)

// ra adapts github.com/redis/rueidis/rueidisaside: its Get(ctx, ttl, key,
// fn), over a rueidis client with its defaults (RESP3, auto-pipelining,
// server-assisted client-side caching of 128 MiB per connection). The
// client-side cache is its local tier and cannot be turned off: the aside
// client's locking depends on its invalidation messages. Loads are
// coalesced across instances by a placeholder lock in Redis that the other
// instances wait on through client-side caching invalidations.
type ra struct {
	c   rueidisaside.CacheAsideClient
	cfg Config
}

func rueidisasideFactory() Factory {
	return Factory{
		Name:   "rueidisaside",
		Family: "ra",
		Module: "github.com/redis/rueidis/rueidisaside",
		Caps: Caps{
			Local:         "rueidis client-side cache (RESP3 tracking), 128 MiB per connection",
			CrossInstance: true,
			Get:           true,
			Write:         "Del (next read loads; rueidisaside has no Set)",
		},
		Notes: "NewClient(defaults); Get(ctx, ttl, key, fn)",
		New: func(cfg Config) (Subject, error) {
			opt := rueidisaside.ClientOption{
				ClientOption: rueidis.ClientOption{InitAddress: []string{cfg.Addr}},
			}
			if cfg.Requests != nil {
				opt.ClientBuilder = func(o rueidis.ClientOption) (rueidis.Client, error) {
					c, err := rueidis.NewClient(o)
					if err != nil {
						return nil, err
					}
					return countingRueidis{Client: c, r: cfg.Requests}, nil
				}
			}
			c, err := rueidisaside.NewClient(opt)
			if err != nil {
				return nil, err
			}
			return &ra{c: c, cfg: cfg}, nil
		},
	}
}

func (s *ra) key(k string) string { return s.cfg.Namespace + ":" + k }

func (s *ra) Get(ctx context.Context, key string) (string, error) {
	v, err := s.c.Get(ctx, s.cfg.TTL, s.key(key), nil)
	if rueidis.IsRedisNil(err) {
		return "", ErrMiss
	}
	return v, err
}

func (s *ra) GetOrLoad(ctx context.Context, key string, load Loader) (string, error) {
	return s.c.Get(ctx, s.cfg.TTL, s.key(key), func(ctx context.Context, _ string) (string, error) {
		return load(ctx, key)
	})
}

// Write is rueidisaside's Del: the aside client has no write-through; the
// DEL invalidates every client-side cache that tracks the key, and the
// next read loads.
func (s *ra) Write(ctx context.Context, key, _ string) error {
	return s.c.Del(ctx, s.key(key))
}

func (s *ra) Close() error {
	s.c.Close()
	return nil
}

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// redisInfo says which Redis the demo used; it heads the report.
type redisInfo struct {
	Kind string `json:"kind"` // "embedded", "server" or "cluster"
	Addr string `json:"addr"`
	// Description is a line for the header, such as
	// "embedded miniredis (in-process) at 127.0.0.1:40123".
	Description string `json:"description"`
}

// backend is the Redis the scenarios share: a client per app instance,
// and an admin client to clean up after each scenario.
type backend struct {
	info      redisInfo
	newClient func() redis.UniversalClient
	admin     redis.UniversalClient
	mini      *miniredis.Miniredis // nil unless embedded

	stopClock func()
}

// ttlTick is how often the embedded Redis's TTLs are moved on (see
// openBackend): the precision of its key expiry.
const ttlTick = 20 * time.Millisecond

// openBackend connects to the Redis the flags name, or starts an
// embedded one.
func openBackend(ctx context.Context, cfg config) (*backend, error) {
	be := &backend{stopClock: func() {}}
	switch {
	case cfg.Cluster != "":
		var addrs []string
		for a := range strings.SplitSeq(cfg.Cluster, ",") {
			addrs = append(addrs, strings.TrimSpace(a))
		}
		opts := &redis.ClusterOptions{Addrs: addrs, ContextTimeoutEnabled: true}
		be.newClient = func() redis.UniversalClient { return redis.NewClusterClient(opts) }
		be.info = redisInfo{Kind: "cluster", Addr: strings.Join(addrs, ","),
			Description: "Redis Cluster at " + strings.Join(addrs, ",")}
	case cfg.RedisURL != "":
		opts, err := redis.ParseURL(cfg.RedisURL)
		if err != nil {
			return nil, usagef("--redis %q: %v", redactURL(cfg.RedisURL), err)
		}
		opts.ContextTimeoutEnabled = true
		be.newClient = func() redis.UniversalClient {
			o := *opts
			return redis.NewClient(&o)
		}
		be.info = redisInfo{Kind: "server", Addr: opts.Addr,
			Description: "Redis server at " + redactURL(cfg.RedisURL)}
	default:
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return nil, fmt.Errorf("starting the embedded Redis: %w", err)
		}
		be.mini = m
		be.stopClock = runMiniClock(m)
		be.newClient = func() redis.UniversalClient {
			return redis.NewClient(&redis.Options{Addr: m.Addr(), ContextTimeoutEnabled: true})
		}
		be.info = redisInfo{Kind: "embedded", Addr: m.Addr(),
			Description: "embedded miniredis (in-process) at " + m.Addr() + "; --redis URL or --cluster addrs for a real one"}
	}
	be.admin = be.newClient()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := ping(pctx, be.admin); err != nil {
		be.close()
		return nil, fmt.Errorf("%s: %w", be.info.Description, err)
	}
	return be, nil
}

func ping(ctx context.Context, rdb redis.UniversalClient) error {
	if cc, ok := rdb.(*redis.ClusterClient); ok {
		return cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error {
			return c.Ping(ctx).Err()
		})
	}
	return rdb.Ping(ctx).Err()
}

// runMiniClock makes the embedded Redis expire keys in real time.
// miniredis's TTLs only move when told to: its ClockTTL mode does that on
// every command, walking (and sorting) every key each time, which is far
// too slow under this load; a tick every ttlTick costs one walk per tick.
func runMiniClock(m *miniredis.Miniredis) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(ttlTick)
		defer t.Stop()
		last := time.Now()
		for {
			select {
			case now := <-t.C:
				m.FastForward(now.Sub(last))
				last = now
			case <-done:
				return
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

// clean removes every key under prefix: a FLUSHALL on the embedded Redis,
// a SCAN and UNLINK of the prefix on a real one (the demo never flushes a
// server it does not own).
func (be *backend) clean(ctx context.Context, prefix string) error {
	if be.mini != nil {
		be.mini.FlushAll()
		return nil
	}
	del := func(ctx context.Context, c *redis.Client) error {
		iter := c.Scan(ctx, 0, prefix+"*", 1000).Iterator()
		var batch []string
		for iter.Next(ctx) {
			batch = append(batch, iter.Val())
			if len(batch) == 500 {
				if err := unlink(ctx, c, batch); err != nil {
					return err
				}
				batch = batch[:0]
			}
		}
		if err := iter.Err(); err != nil {
			return err
		}
		return unlink(ctx, c, batch)
	}
	if cc, ok := be.admin.(*redis.ClusterClient); ok {
		return cc.ForEachMaster(ctx, del)
	}
	return del(ctx, be.admin.(*redis.Client))
}

// unlink deletes keys one command each, pipelined: on a cluster the keys
// of one node may still be in different slots.
func unlink(ctx context.Context, c *redis.Client, keys []string) error {
	if len(keys) == 0 {
		return nil
	}
	_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range keys {
			p.Unlink(ctx, k)
		}
		return nil
	})
	return err
}

func (be *backend) close() {
	if be.admin != nil {
		_ = be.admin.Close()
	}
	be.stopClock()
	if be.mini != nil {
		be.mini.Close()
	}
}

// redactURL hides a password in a Redis URL.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// newRunID returns a short random id that keeps the keys of concurrent
// runs on one Redis apart.
func newRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"strconv"
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
		opts, err := parseRedisURL(cfg.RedisURL)
		if err != nil {
			return nil, &usageError{err: err}
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
			Description: "embedded miniredis (in-process) at " + m.Addr() + "; --redis or --cluster for a real one"}
	}
	be.admin = be.newClient()
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := ping(pctx, be.admin); err != nil {
		be.close()
		if pctx.Err() != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("%s did not answer PING within %v", be.where(), pingTimeout)
		}
		return nil, fmt.Errorf("%s: %w", be.where(), err)
	}
	return be, nil
}

// pingTimeout bounds the PING that checks the Redis before the run.
var pingTimeout = 5 * time.Second

// where names the Redis in an error: "redis at 127.0.0.1:6379".
func (be *backend) where() string {
	switch be.info.Kind {
	case "cluster":
		return "redis cluster at " + be.info.Addr
	case "embedded":
		return "embedded redis at " + be.info.Addr
	}
	return "redis at " + be.info.Addr
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

// parseRedisURL parses --redis. Its errors quote the URL as given (but
// for a password) and say what is wrong with it.
func parseRedisURL(s string) (*redis.Options, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("--redis %q: %s (want a URL such as redis://localhost:6379/0)",
			redactURL(s), fmt.Sprintf(format, args...))
	}
	scheme, rest, ok := strings.Cut(s, "://")
	scheme = strings.ToLower(scheme)
	if !ok || scheme != "redis" && scheme != "rediss" && scheme != "unix" {
		return nil, bad("not a redis:// or rediss:// URL")
	}
	if scheme != "unix" {
		hostport := rest[:strings.IndexAny(rest+"/", "/?#")]
		hostport = hostport[strings.LastIndex(hostport, "@")+1:]
		if i := strings.LastIndex(hostport, ":"); i >= 0 && !strings.Contains(hostport[i:], "]") {
			port := hostport[i+1:]
			if n, err := strconv.Atoi(port); port != "" && (err != nil || n < 1 || n > 65535) {
				return nil, bad("port %q is not a number from 1 to 65535", port)
			}
		}
	}
	opts, err := redis.ParseURL(s)
	if err != nil {
		// A *url.Error's message holds the whole URL, password and all.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, bad("%s", strings.TrimPrefix(err.Error(), "redis: "))
	}
	return opts, nil
}

// redactURL hides the password of a Redis URL and leaves the rest as it
// was given.
func redactURL(s string) string {
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return s
	}
	authority := rest[:strings.IndexAny(rest+"/", "/?#")]
	at := strings.LastIndex(authority, "@")
	if at < 0 {
		return s
	}
	user, _, hasPassword := strings.Cut(authority[:at], ":")
	if !hasPassword {
		return s
	}
	return scheme + "://" + user + ":xxxxx" + rest[at:]
}

// newRunID returns a short random id that keeps the keys of concurrent
// runs on one Redis apart.
func newRunID() string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

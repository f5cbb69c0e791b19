package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
)

// openRedis connects to the Redis at rawURL, or starts an embedded one
// (miniredis, in this process) when rawURL is empty. It returns the client
// and the function that closes it, and the embedded server after it.
func openRedis(ctx context.Context, rawURL string, log *slog.Logger) (redis.UniversalClient, func(), error) {
	var (
		opts *redis.Options
		mini *miniredis.Miniredis
		stop = func() {}
		desc string
	)
	if rawURL != "" {
		var err error
		if opts, err = redis.ParseURL(rawURL); err != nil {
			return nil, nil, fmt.Errorf("-redis %s: %w", redact(rawURL), err)
		}
		desc = redact(rawURL)
	} else {
		mini = miniredis.NewMiniRedis()
		if err := mini.StartAddr("127.0.0.1:0"); err != nil {
			return nil, nil, fmt.Errorf("starting the embedded Redis: %w", err)
		}
		stop = runMiniClock(mini)
		opts = &redis.Options{Addr: mini.Addr()}
		desc = "embedded miniredis at " + mini.Addr()
	}
	// Without it, go-redis does not apply context deadlines to the socket,
	// and the cache's read timeout (100ms) could not cut a slow Redis short.
	opts.ContextTimeoutEnabled = true
	rdb := redis.NewClient(opts)
	closeAll := func() {
		if err := rdb.Close(); err != nil {
			log.Error("closing the Redis client", "err", err)
		}
		stop()
		if mini != nil {
			mini.Close()
		}
		log.Info("Redis client closed")
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pctx).Err(); err != nil {
		closeAll()
		return nil, nil, fmt.Errorf("Redis at %s: %w", desc, err)
	}
	log.Info("redis: " + desc)
	return rdb, closeAll, nil
}

// runMiniClock makes the embedded Redis expire keys in real time: miniredis
// moves TTLs only when told to, and the cache relies on Redis expiring its
// leases and negative entries.
func runMiniClock(m *miniredis.Miniredis) (stop func()) {
	const tick = 50 * time.Millisecond
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(tick)
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

// redact hides a password in a URL.
func redact(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// Package proxy puts a TCP proxy with injectable faults between a go-redis
// client and a redis-server, for tiercache's fault tests (module
// github.com/tiercache/tiercache/faults). It embeds
// github.com/Shopify/toxiproxy/v2 as a library: no toxiproxy process, no HTTP
// API, one in-process proxy per call of [Start], stopped when the test ends.
//
// It lives in a module of its own so that toxiproxy and what it pulls in
// (zerolog, an old Prometheus client, gorilla/mux) are not requirements of
// the tiercache module.
//
// A fault is a toxic on one direction of the proxy's links: "upstream" is
// client to Redis (commands), "downstream" is Redis to client (replies).
// Toxics apply to the connections open when they are added and to every
// connection opened while they are in place.
package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Streams a toxic applies to.
const (
	Upstream   = "upstream"   // client to Redis
	Downstream = "downstream" // Redis to client
)

// server is the toxiproxy state the proxies share: a logger and an empty
// metrics container. Its HTTP API is never started.
var server = sync.OnceValue(func() *toxiproxy.ApiServer {
	return toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop())
})

var seq atomic.Uint64

// Proxy is a toxiproxy proxy listening on 127.0.0.1 in front of one Redis
// address. Its methods are safe for concurrent use.
type Proxy struct {
	// Addr is where clients connect, "127.0.0.1:<port>". It does not change
	// across Disable and Enable.
	Addr string
	// Upstream is the Redis address the proxy forwards to.
	Upstream string

	p *toxiproxy.Proxy
}

// Start starts a proxy on a free loopback port in front of upstream; it is
// stopped (every connection through it closed) when tb ends.
func Start(tb testing.TB, upstream string) *Proxy {
	tb.Helper()
	name := "redis" + strconv.FormatUint(seq.Add(1), 10)
	p := toxiproxy.NewProxy(server(), name, "127.0.0.1:0", upstream)
	if err := p.Start(); err != nil {
		tb.Fatalf("proxy: start proxy to %s: %v", upstream, err)
	}
	tb.Cleanup(p.Stop)
	p.Lock()
	addr := p.Listen // the port actually bound; a restart binds it again
	p.Unlock()
	return &Proxy{Addr: addr, Upstream: upstream, p: p}
}

// Client returns a go-redis client that connects through the proxy, closed
// when tb ends. Its options start as {Addr: p.Addr, ContextTimeoutEnabled:
// true} (so that the cache's timeouts cut slow socket reads short) and are
// then passed to each of opts.
func (p *Proxy) Client(tb testing.TB, opts ...func(*redis.Options)) *redis.Client {
	tb.Helper()
	o := &redis.Options{Addr: p.Addr, ContextTimeoutEnabled: true}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClient(o)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// Disable closes every connection through the proxy and refuses new ones
// (connection refused) until Enable: Redis looks down.
func (p *Proxy) Disable() { p.p.Stop() }

// Enable accepts connections again, on the same address.
func (p *Proxy) Enable(tb testing.TB) {
	tb.Helper()
	if err := p.p.Start(); err != nil && err != toxiproxy.ErrProxyAlreadyStarted {
		tb.Fatalf("proxy: restart proxy %s: %v", p.Addr, err)
	}
}

// Toxic is one fault in place on a proxy.
type Toxic struct {
	p    *Proxy
	name string
	once sync.Once
}

// Add puts a toxic of type typ (toxiproxy's names: "latency", "timeout",
// "reset_peer", "bandwidth", "slow_close", "slicer", "limit_data") with
// attributes attrs on stream, and returns it; it is removed when tb ends
// unless removed before.
func (p *Proxy) Add(tb testing.TB, typ, stream string, attrs any) *Toxic {
	tb.Helper()
	name := typ + "_" + stream + "_" + strconv.FormatUint(seq.Add(1), 10)
	body, err := json.Marshal(map[string]any{
		"name": name, "type": typ, "stream": stream, "toxicity": 1.0, "attributes": attrs,
	})
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := p.p.Toxics.AddToxicJson(bytes.NewReader(body)); err != nil {
		tb.Fatalf("proxy: add %s toxic: %v", typ, err)
	}
	t := &Toxic{p: p, name: name}
	tb.Cleanup(t.Remove)
	return t
}

// Remove takes the toxic off. Removing a "timeout" toxic closes the
// connections it held (toxiproxy's behaviour). Calling it again does
// nothing.
func (t *Toxic) Remove() {
	t.once.Do(func() {
		_ = t.p.p.Toxics.RemoveToxic(context.Background(), t.name)
	})
}

// Toxics are toxics put in place and removed together.
type Toxics []*Toxic

// Remove removes every toxic of f.
func (f Toxics) Remove() {
	for _, t := range f {
		t.Remove()
	}
}

// Latency delays every chunk of replies by d ± jitter.
func (p *Proxy) Latency(tb testing.TB, d, jitter time.Duration) *Toxic {
	tb.Helper()
	return p.Add(tb, "latency", Downstream, map[string]int64{
		"latency": d.Milliseconds(), "jitter": jitter.Milliseconds(),
	})
}

// Blackhole drops every byte in both directions without closing anything:
// Redis looks alive at the TCP level but never answers (a partition, a
// stalled server). New connections are accepted and blackholed too.
func (p *Proxy) Blackhole(tb testing.TB) Toxics {
	tb.Helper()
	return Toxics{
		p.Add(tb, "timeout", Upstream, map[string]int64{"timeout": 0}),
		p.Add(tb, "timeout", Downstream, map[string]int64{"timeout": 0}),
	}
}

// ResetPeer resets (TCP RST) every connection that sends a command while
// it is in place, after = 0 at once.
func (p *Proxy) ResetPeer(tb testing.TB, after time.Duration) *Toxic {
	tb.Helper()
	return p.Add(tb, "reset_peer", Upstream, map[string]int64{"timeout": after.Milliseconds()})
}

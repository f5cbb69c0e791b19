// Package netproxy is a TCP proxy on loopback that a test can switch off
// and on, to make a server unreachable without stopping it (so that it
// keeps its data, unlike a restarted redis-server).
package netproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy forwards connections from Addr to Upstream. Its methods are safe
// for concurrent use.
type Proxy struct {
	// Addr is where clients connect; it stays the same across Disable and
	// Enable.
	Addr string
	// Upstream is the address connections are forwarded to.
	Upstream string

	mu    sync.Mutex
	ln    net.Listener // nil while disabled
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

// Start starts a proxy in front of upstream on a free loopback port; it is
// stopped when tb ends.
func Start(tb testing.TB, upstream string) *Proxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("netproxy: %v", err)
	}
	p := &Proxy{Addr: ln.Addr().String(), Upstream: upstream, conns: make(map[net.Conn]struct{})}
	p.serve(ln)
	tb.Cleanup(p.stop)
	return p
}

func (p *Proxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.wg.Go(func() { p.forward(c) })
		}
	})
}

func (p *Proxy) forward(c net.Conn) {
	up, err := net.DialTimeout("tcp", p.Upstream, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	if !p.track(c, up) {
		c.Close()
		up.Close()
		return
	}
	var wg sync.WaitGroup
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		dst.Close()
		src.Close()
	}
	wg.Go(func() { pipe(up, c) })
	wg.Go(func() { pipe(c, up) })
	wg.Wait()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, up)
	p.mu.Unlock()
}

// track registers a connection pair unless the proxy is disabled.
func (p *Proxy) track(cs ...net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln == nil {
		return false
	}
	for _, c := range cs {
		p.conns[c] = struct{}{}
	}
	return true
}

// Disable closes every connection through the proxy and refuses new ones
// until Enable: the upstream looks down.
func (p *Proxy) Disable() {
	p.mu.Lock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
}

// Enable accepts connections again on the same address.
func (p *Proxy) Enable(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	up := p.ln != nil
	p.mu.Unlock()
	if up {
		return
	}
	var err error
	for range 50 { // the port may linger for a moment
		var ln net.Listener
		if ln, err = net.Listen("tcp", p.Addr); err == nil {
			p.serve(ln)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	tb.Fatalf("netproxy: listen on %s again: %v", p.Addr, errors.Join(err))
}

func (p *Proxy) stop() {
	p.Disable()
	p.wg.Wait()
}

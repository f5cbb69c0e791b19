package tiercache

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// Regression tests for races the demo found (stale reads on the writer's
// own instance, a read joining a load older than a write, an orphaned lease).

// A Delete racing reads on the same instance: once Delete returns, the
// writer's L1 must not hold the old value (a read between the L1 drop and
// the DEL used to put it back, and the writer ignores its own messages).
func TestDeleteRacingReadsLeavesNoOldValueInL1(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[int](t, tg, WithL1(100))
		for i := range 200 {
			if err := c.Set(ctx, "k", i); err != nil {
				t.Fatal(err)
			}
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range 2 {
				wg.Go(func() {
					for {
						select {
						case <-stop:
							return
						default:
							_, _ = c.Get(ctx, "k")
						}
					}
				})
			}
			if err := c.Delete(ctx, "k"); err != nil {
				t.Fatal(err)
			}
			close(stop)
			wg.Wait()
			if v, err := c.Get(ctx, "k"); !errors.Is(err, ErrMiss) {
				t.Fatalf("iteration %d: Get after Delete = %d, %v; want ErrMiss", i, v, err)
			}
		}
	})
}

// A read that begins after a Delete must not join a load that began before
// it: it would get the old row.
func TestReadAfterWriteDoesNotJoinOlderLoad(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		c := newCache[string](t, tg)
		var row atomic.Value
		row.Store("old")
		loaded, proceed := make(chan struct{}), make(chan struct{})
		var once sync.Once
		go func() {
			_, _ = c.GetOrLoad(ctx, "k", func(ctx context.Context) (string, error) {
				v := row.Load().(string)
				once.Do(func() { close(loaded) })
				select {
				case <-proceed:
				case <-ctx.Done(): // Close, if the test failed before proceed
				}
				return v, nil
			})
		}()
		<-loaded
		defer close(proceed)
		row.Store("new")
		if err := c.Delete(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		got := make(chan string, 1)
		go func() {
			v, _ := c.GetOrLoad(ctx, "k", func(context.Context) (string, error) { return row.Load().(string), nil })
			got <- v
		}()
		select {
		case v := <-got:
			if v != "new" {
				t.Fatalf("read after Delete = %q, want new", v)
			}
		case <-time.After(2 * time.Second):
			t.Fatal("the read after Delete waited for the load that began before it")
		}
	})
}

// replyDelayProxy forwards to target and holds back the server's array
// replies (the lease script's) by d: the script runs, its reply is late.
func replyDelayProxy(t *testing.T, target string, d time.Duration) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			client, err := ln.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				client.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, client, server)
			mu.Unlock()
			wg.Go(func() { _, _ = io.Copy(server, client); server.Close() })
			wg.Go(func() {
				buf := make([]byte, 64<<10)
				for {
					n, err := server.Read(buf)
					if n > 0 {
						if buf[0] == '*' {
							time.Sleep(d)
						}
						if _, err := client.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						client.Close()
						return
					}
				}
			})
		}
	})
	return ln.Addr().String()
}

// An Acquire whose reply times out may still have taken the lease: the
// instance gives it back, so that another instance does not wait for a
// load nobody does, and reads never fail for waiting.
func TestTimedOutAcquireReleasesLease(t *testing.T) {
	srv := redistest.SharedServer(t)
	slow := redis.NewClient(&redis.Options{Addr: replyDelayProxy(t, srv.Addr, 150*time.Millisecond), ContextTimeoutEnabled: true})
	t.Cleanup(func() { _ = slow.Close() })
	fast := srv.Client(t, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
	prefix := redistest.UniquePrefix(t)
	prefix = prefix[:len(prefix)-1]
	a := newCacheOn[string](t, slow, prefix, WithoutBreaker())
	b := newCacheOn[string](t, fast, prefix)
	ctx := t.Context()
	load := func(context.Context) (string, error) { return "v", nil }
	// Load the scripts into the server, as any earlier miss would have.
	if _, err := b.GetOrLoad(ctx, "warm", load); err != nil {
		t.Fatal(err)
	}
	if v, err := a.GetOrLoad(ctx, "k", load); err != nil || v != "v" {
		t.Fatalf("A = %q, %v", v, err)
	}
	start := time.Now()
	if v, err := b.GetOrLoad(ctx, "k", load); err != nil || v != "v" {
		t.Fatalf("B = %q, %v", v, err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("B waited %v for a lease A had lost track of", d)
	}
}

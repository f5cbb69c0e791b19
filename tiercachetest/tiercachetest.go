package tiercachetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// installHint tells how to get redis-server.
const installHint = "install Redis (Debian/Ubuntu: apt-get install redis-server; macOS: brew install redis)"

// requireServer skips tb, or fails it when CI is set, unless redis-server
// is on PATH.
func requireServer(tb testing.TB) {
	tb.Helper()
	_, err := exec.LookPath("redis-server")
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		tb.Fatalf("tiercachetest: redis-server is not on PATH (%v) and CI is set, "+
			"so this test fails instead of being skipped; %s", err, installHint)
	}
	tb.Skipf("tiercachetest: redis-server is not on PATH, so this test is skipped; %s to run it", installHint)
}

// Redis starts a redis-server for tb and returns a new client to it. The
// client and the server are closed and stopped when tb ends, and the server
// serves no one else, so the test may use any key and may flush it.
//
// The client's options start as {Addr: the server's address,
// ContextTimeoutEnabled: true} and are then passed to each of opts.
//
// If redis-server is not on PATH, Redis skips tb, or fails it when the
// environment variable CI is non-empty. It fails tb if the server does not
// start.
func Redis(tb testing.TB, opts ...func(*redis.Options)) *redis.Client {
	tb.Helper()
	return StartServer(tb).Client(tb, opts...)
}

// Cluster starts a Redis Cluster of masters nodes for tb, without replicas,
// and returns a new cluster client to it. The 16384 slots are split evenly
// over the masters. The client and the nodes are closed and stopped when
// tb ends.
//
// The client's options start as {Addrs: every node's address,
// ContextTimeoutEnabled: true} and are then passed to each of opts. The
// client is ready when returned: it has loaded the slot map and reached
// every node.
//
// Starting a cluster takes a little over two seconds. If redis-server is
// not on PATH, Cluster skips tb, or fails it when the environment variable
// CI is non-empty. It fails tb if masters is less than one or the cluster
// does not form within about 15 seconds.
func Cluster(tb testing.TB, masters int, opts ...func(*redis.ClusterOptions)) *redis.ClusterClient {
	tb.Helper()
	requireServer(tb)
	if masters < 1 {
		tb.Fatalf("tiercachetest: Cluster with %d masters: need at least one", masters)
	}
	c := redistest.StartCluster(tb, masters, 0)
	return c.Client(tb, func(o *redis.ClusterOptions) {
		o.ContextTimeoutEnabled = true
		for _, f := range opts {
			f(o)
		}
	})
}

// Server is a redis-server process started by [StartServer] for one test.
// Its methods are safe for concurrent use.
type Server struct {
	s *redistest.Server
}

// StartServer starts a redis-server for tb, as [Redis] does, and returns
// it, so that the test can stop and restart it. It is stopped when tb ends.
//
// If redis-server is not on PATH, StartServer skips tb, or fails it when
// the environment variable CI is non-empty. It fails tb if the server does
// not start.
func StartServer(tb testing.TB) *Server {
	tb.Helper()
	requireServer(tb)
	return &Server{s: redistest.StartServer(tb)}
}

// Addr returns the server's address, "127.0.0.1:port". It does not change
// across [Server.Restart].
func (s *Server) Addr() string { return s.s.Addr }

// Client returns a new client to the server, closed when tb ends. Its
// options start as {Addr: s.Addr(), ContextTimeoutEnabled: true} and are
// then passed to each of opts.
func (s *Server) Client(tb testing.TB, opts ...func(*redis.Options)) *redis.Client {
	tb.Helper()
	return s.s.Client(tb, func(o *redis.Options) {
		o.ContextTimeoutEnabled = true
		for _, f := range opts {
			f(o)
		}
	})
}

// Stop kills the server (SIGKILL: nothing is saved) and waits until it has
// exited, so that clients see connection errors, as in a Redis outage.
// Stopping a stopped server does nothing.
func (s *Server) Stop() { s.s.Stop() }

// Restart stops the server if it is running and starts it again on the
// same address, with no data, and waits until it answers. Existing clients
// reconnect by themselves. Restart fails tb if the server does not start,
// for instance because another process took its port meanwhile.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	s.s.Restart(tb)
}

// Start starts a redis-server, as [Redis] does, for code that has no
// testing.TB: a TestMain that shares one server among a package's tests, an
// Example, a program. It returns the server's address, "127.0.0.1:port",
// and stop, which kills the server and removes its temporary directory;
// stop may be called more than once and from any goroutine. The caller
// must call it: nothing else stops the server before the process exits.
//
// If redis-server is not on PATH, the error wraps [exec.ErrNotFound]. On
// error there is nothing to stop, and stop is nil.
func Start() (addr string, stop func(), err error) {
	if _, err := exec.LookPath("redis-server"); err != nil {
		return "", nil, fmt.Errorf("tiercachetest: redis-server is not on PATH: %w; %s", err, installHint)
	}
	tb := newBareTB("tiercachetest.Start")
	var s *redistest.Server
	if err := tb.do(func() { s = redistest.StartServer(tb) }); err != nil {
		tb.finish()
		return "", nil, err
	}
	return s.Addr, tb.finish, nil
}

// bareTB is the testing.TB that Start lends to redistest, which takes its
// temporary directories and cleanups from a testing.TB and reports its
// failures to it. Only the testing package can implement testing.TB, which
// has an unexported method: the embedded interface, always nil, supplies
// that method, and bareTB defines every exported one (a test checks that
// none reaches the nil interface).
//
// A call that ends a test (FailNow, Fatal, SkipNow, ...) panics with
// errAbort, which do recovers.
type bareTB struct {
	testing.TB // always nil; see above

	name   string
	ctx    context.Context
	cancel context.CancelFunc
	once   sync.Once

	mu       sync.Mutex
	failed   bool
	skipped  bool
	msgs     []string // Error, Fatal and Skip messages
	cleanups []func()
	dirs     []string
}

// errAbort is the panic value of a bareTB's FailNow and SkipNow.
var errAbort = errors.New("tiercachetest: aborted")

func newBareTB(name string) *bareTB {
	ctx, cancel := context.WithCancel(context.Background())
	return &bareTB{name: name, ctx: ctx, cancel: cancel}
}

// do calls f and returns an error carrying the messages reported to b if
// f fails or skips b. Other panics go on.
func (b *bareTB) do(f func()) (err error) {
	defer func() {
		if r := recover(); r != nil && r != errAbort {
			panic(r)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.failed || b.skipped {
			err = errors.New(joinMsgs(b.msgs))
		}
	}()
	f()
	return nil
}

func joinMsgs(msgs []string) string {
	switch len(msgs) {
	case 0:
		return "tiercachetest: failed"
	case 1:
		return msgs[0]
	}
	s := msgs[0]
	for _, m := range msgs[1:] {
		s += "\n" + m
	}
	return s
}

// finish runs the cleanups, last registered first, then removes the
// temporary directories. Only the first call does anything.
func (b *bareTB) finish() {
	b.once.Do(func() {
		b.cancel()
		for {
			b.mu.Lock()
			n := len(b.cleanups)
			if n == 0 {
				b.mu.Unlock()
				break
			}
			f := b.cleanups[n-1]
			b.cleanups = b.cleanups[:n-1]
			b.mu.Unlock()
			if f != nil {
				_ = b.do(f) // a failing cleanup must not keep the others from running
			}
		}
		b.mu.Lock()
		dirs := b.dirs
		b.dirs = nil
		b.mu.Unlock()
		for _, d := range dirs {
			_ = os.RemoveAll(d)
		}
	})
}

func (b *bareTB) record(failed, skipped bool, msg string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.failed = b.failed || failed
	b.skipped = b.skipped || skipped
	if msg != "" {
		b.msgs = append(b.msgs, msg)
	}
}

func (b *bareTB) Cleanup(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.cleanups = append(b.cleanups, f)
}

func (b *bareTB) Error(args ...any) { b.record(true, false, fmt.Sprint(args...)) }
func (b *bareTB) Errorf(format string, args ...any) {
	b.record(true, false, fmt.Sprintf(format, args...))
}
func (b *bareTB) Fail()                             { b.record(true, false, "") }
func (b *bareTB) FailNow()                          { b.Fail(); panic(errAbort) }
func (b *bareTB) Fatal(args ...any)                 { b.Error(args...); panic(errAbort) }
func (b *bareTB) Fatalf(format string, args ...any) { b.Errorf(format, args...); panic(errAbort) }
func (b *bareTB) Skip(args ...any)                  { b.record(false, true, fmt.Sprint(args...)); panic(errAbort) }
func (b *bareTB) SkipNow()                          { b.record(false, true, ""); panic(errAbort) }
func (b *bareTB) Skipf(format string, args ...any) {
	b.record(false, true, fmt.Sprintf(format, args...))
	panic(errAbort)
}

func (b *bareTB) Failed() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.failed
}

func (b *bareTB) Skipped() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.skipped
}

func (b *bareTB) Helper()                  {}
func (b *bareTB) Log(args ...any)          {}
func (b *bareTB) Logf(string, ...any)      {}
func (b *bareTB) Attr(key, value string)   {}
func (b *bareTB) Name() string             { return b.name }
func (b *bareTB) Context() context.Context { return b.ctx }
func (b *bareTB) Output() io.Writer        { return io.Discard }
func (b *bareTB) ArtifactDir() string      { return b.TempDir() }
func (b *bareTB) Setenv(key, value string) {
	b.Fatalf("tiercachetest: %s: Setenv is not supported", b.name)
}
func (b *bareTB) Chdir(dir string) { b.Fatalf("tiercachetest: %s: Chdir is not supported", b.name) }

func (b *bareTB) TempDir() string {
	d, err := os.MkdirTemp("", "tiercachetest-")
	if err != nil {
		b.Fatalf("tiercachetest: %s: TempDir: %v", b.name, err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dirs = append(b.dirs, d)
	return d
}

package redistest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// sharedClusterMasters is the number of masters of the shared cluster.
const sharedClusterMasters = 3

// shared holds the per-binary servers started by SharedServer and
// SharedCluster.
var shared struct {
	mainCalled atomic.Bool

	// Separate locks, so that a test waiting for the cluster to form does
	// not hold up tests that only need the single server.
	rootMu sync.Mutex
	root   string // temporary directory of the shared servers

	serverMu  sync.Mutex
	server    *Server
	serverErr error // first start failure, reported to later callers

	clusterMu  sync.Mutex
	cluster    *Cluster
	clusterErr error
}

// Main runs the tests of a package that uses [SharedServer],
// [SharedCluster] or [ForEach], then stops the shared servers, removes
// their directory and exits with the tests' exit code. Call it from the
// package's TestMain:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
func Main(m *testing.M) {
	os.Exit(run(m))
}

// MainWithLeakCheck is [Main] with a goroutine leak check: after the tests
// have passed and the shared servers are stopped, it runs goleak.Find with
// opts and, if goroutines remain, prints them and exits with status 1.
// Nothing else is closed first, so every client a test made must already be
// closed (those from this package are, by test cleanups). As with
// goleak.VerifyTestMain, the check is skipped when tests failed.
func MainWithLeakCheck(m *testing.M, opts ...goleak.Option) {
	code := run(m)
	if code == 0 {
		// go-redis redials a failed connection in the background for up to
		// a second after its client is closed; that goroutine is go-redis's.
		opts = append(opts, goleak.IgnoreTopFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"))
		if err := goleak.Find(opts...); err != nil {
			fmt.Fprintf(os.Stderr, "redistest: goroutines leaked after the tests passed: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// run runs the tests and tears the shared servers down.
// quietLogger drops go-redis's own log lines. Fault tests kill servers on
// purpose, and go-redis's pool reports each failed redial ("connection
// pool: failed to dial after 5 attempts"); a passing run prints none.
type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func run(m *testing.M) int {
	redis.SetLogger(quietLogger{})
	shared.mainCalled.Store(true)
	if _, err := exec.LookPath("redis-server"); err != nil && os.Getenv("CI") == "" {
		// Tests skip on their own (RequireServer); examples cannot, so they
		// are skipped here. In CI nothing is skipped: the tests fail.
		fmt.Fprintln(os.Stderr, "redistest: redis-server not on PATH: integration tests and examples are skipped")
		skip := "^Example"
		if f := flag.Lookup("test.skip"); f != nil && f.Value.String() != "" {
			skip = f.Value.String() + "|" + skip
		}
		_ = flag.Set("test.skip", skip)
	}
	code := m.Run()
	stopShared()
	return code
}

// stopShared stops the shared servers and removes their directory.
func stopShared() {
	shared.clusterMu.Lock()
	if shared.cluster != nil {
		shared.cluster.stop()
		shared.cluster = nil
	}
	shared.clusterMu.Unlock()

	shared.serverMu.Lock()
	if shared.server != nil {
		shared.server.Stop()
		shared.server = nil
	}
	shared.serverMu.Unlock()

	shared.rootMu.Lock()
	defer shared.rootMu.Unlock()
	if shared.root != "" {
		if err := os.RemoveAll(shared.root); err != nil {
			fmt.Fprintf(os.Stderr, "redistest: remove %s: %v\n", shared.root, err)
		}
		shared.root = ""
	}
}

// sharedDir returns a fresh directory for a shared server under the shared
// root, creating the root on first use.
func sharedDir(name string) (string, error) {
	shared.rootMu.Lock()
	defer shared.rootMu.Unlock()
	if shared.root == "" {
		root, err := os.MkdirTemp("", "redistest-")
		if err != nil {
			return "", err
		}
		shared.root = root
	}
	dir := filepath.Join(shared.root, name)
	return dir, os.MkdirAll(dir, 0o755)
}

// requireMain fails tb unless the test binary runs under Main.
func requireMain(tb testing.TB, what string) {
	tb.Helper()
	if !shared.mainCalled.Load() {
		tb.Fatalf("redistest: %s needs the package's TestMain to call redistest.Main(m) "+
			"(or redistest.MainWithLeakCheck(m)), which stops the shared servers", what)
	}
}

// SharedServer returns the test binary's single redis-server, starting it
// on first use. It lives until [Main] returns, which is required.
//
// Tests share it: they must not stop, restart or reconfigure it, must not
// flush it while other tests may run, and should put their keys under
// [UniquePrefix]. A test that needs to do any of that should use
// [StartServer]. SharedServer fails the test if the server has died.
func SharedServer(tb testing.TB) *Server {
	tb.Helper()
	bin := RequireServer(tb)
	requireMain(tb, "SharedServer")
	shared.serverMu.Lock()
	defer shared.serverMu.Unlock()
	if shared.server == nil && shared.serverErr == nil {
		dir, err := sharedDir("single")
		if err == nil {
			shared.server, err = launch(bin, dir, false, nil)
		}
		shared.serverErr = err
	}
	if shared.serverErr != nil {
		tb.Fatalf("redistest: start shared redis-server: %v", shared.serverErr)
	}
	if !shared.server.Alive() {
		tb.Fatalf("redistest: the shared redis-server %s is not running (did a test stop it? use StartServer for that):\n%s",
			shared.server.Addr, shared.server.LogTail())
	}
	return shared.server
}

// SharedCluster returns the test binary's Redis Cluster of three masters
// without replicas, starting it on first use. It lives until [Main]
// returns, which is required.
//
// The same rules as for [SharedServer] apply; a test that kills nodes or
// fails over should use [StartCluster]. SharedCluster fails the test if a
// node has died.
func SharedCluster(tb testing.TB) *Cluster {
	tb.Helper()
	bin := RequireServer(tb)
	requireMain(tb, "SharedCluster")
	shared.clusterMu.Lock()
	defer shared.clusterMu.Unlock()
	if shared.cluster == nil && shared.clusterErr == nil {
		dir, err := sharedDir("cluster")
		if err == nil {
			shared.cluster, err = startCluster(bin, dir, sharedClusterMasters, 0)
		}
		shared.clusterErr = err
	}
	if shared.clusterErr != nil {
		tb.Fatalf("redistest: start shared cluster: %v", shared.clusterErr)
	}
	for _, n := range shared.cluster.Nodes() {
		if !n.Alive() {
			tb.Fatalf("redistest: shared cluster node %s is not running (did a test stop it? use StartCluster for that):\n%s",
				n.Addr, n.LogTail())
		}
	}
	return shared.cluster
}

// Target is one Redis topology a test runs against.
type Target struct {
	// Name is "single" or "cluster"; it is also the subtest name.
	Name string
	// NewClient returns a new client (its own pool) to the target, closed
	// when the test ends. Its ContextTimeoutEnabled is set, as tiercache
	// recommends, so that context deadlines bound socket reads.
	NewClient func(tb testing.TB) redis.UniversalClient
	// Single is the server of the "single" target, nil otherwise.
	Single *Server
	// Cluster is the cluster of the "cluster" target, nil otherwise.
	Cluster *Cluster
}

// ForEach runs fn as subtest "single" against [SharedServer] and as
// subtest "cluster" against [SharedCluster]. The package's TestMain must
// call [Main]. fn may call t.Parallel; its keys should start with
// [UniquePrefix], since the servers are shared.
func ForEach(t *testing.T, fn func(t *testing.T, tg Target)) {
	t.Helper()
	RequireServer(t) // skip (or fail in CI) once, not per subtest
	requireMain(t, "ForEach")
	t.Run("single", func(t *testing.T) {
		s := SharedServer(t)
		fn(t, Target{
			Name: "single",
			NewClient: func(tb testing.TB) redis.UniversalClient {
				return s.Client(tb, func(o *redis.Options) { o.ContextTimeoutEnabled = true })
			},
			Single: s,
		})
	})
	t.Run("cluster", func(t *testing.T) {
		c := SharedCluster(t)
		fn(t, Target{
			Name: "cluster",
			NewClient: func(tb testing.TB) redis.UniversalClient {
				return c.Client(tb, func(o *redis.ClusterOptions) { o.ContextTimeoutEnabled = true })
			},
			Cluster: c,
		})
	})
}

// prefixSeq numbers the prefixes handed out by UniquePrefix.
var prefixSeq atomic.Uint64

// UniquePrefix returns a short key prefix that no other call in any test
// binary is likely to return, such as "t12.5f3a9c01:". It ends with ':' so
// keys can be appended directly, and contains no '{' or '}', so it does not
// act as a hash tag: keys under one prefix still spread over all cluster
// slots. Tests that need keys in one slot add their own hash tag after it.
func UniquePrefix(tb testing.TB) string {
	tb.Helper()
	return "t" + strconv.FormatUint(prefixSeq.Add(1), 10) +
		"." + fmt.Sprintf("%08x", rand.Uint32()) + ":"
}

// SharedServerAddr is SharedServer for code without a testing.TB, such as
// Example functions: it returns the address of the shared redis-server,
// starting it on first use. [Main] must run the tests; when redis-server is
// missing outside CI, Main skips the examples.
func SharedServerAddr() (string, error) {
	if !shared.mainCalled.Load() {
		return "", errors.New("redistest: SharedServerAddr needs TestMain to call redistest.Main")
	}
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return "", fmt.Errorf("redistest: redis-server not on PATH: %w", err)
	}
	shared.serverMu.Lock()
	defer shared.serverMu.Unlock()
	if shared.server == nil && shared.serverErr == nil {
		dir, err := sharedDir("single")
		if err == nil {
			shared.server, err = launch(bin, dir, false, nil)
		}
		shared.serverErr = err
	}
	if shared.serverErr != nil {
		return "", shared.serverErr
	}
	return shared.server.Addr, nil
}

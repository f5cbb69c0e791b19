// Package tiercachetest starts real redis-server processes on free
// loopback ports, for testing code that uses tiercache against Redis itself
// rather than a fake.
//
// In a test, [Redis] starts a private server and returns a client to it;
// [Cluster] does the same for a Redis Cluster. Both are stopped, and their
// clients closed, when the test ends, so tests need no shared state and may
// run in parallel:
//
//	func TestUserCache(t *testing.T) {
//		t.Parallel()
//		rdb := tiercachetest.Redis(t)
//		users, err := tiercache.New[User](rdb, tiercache.WithPrefix("users"))
//		if err != nil {
//			t.Fatal(err)
//		}
//		defer users.Close()
//		...
//	}
//
// A test that damages its server (an outage, a restart that empties it)
// uses [StartServer], whose [Server] can be stopped and restarted.
//
// Code without a [testing.TB], such as a TestMain that shares one server
// among all tests of a package, or an Example, uses [Start] and stops the
// server itself:
//
//	var redisAddr string
//
//	func TestMain(m *testing.M) {
//		addr, stop, err := tiercachetest.Start()
//		if err != nil {
//			fmt.Fprintln(os.Stderr, err)
//			os.Exit(1)
//		}
//		redisAddr = addr
//		code := m.Run()
//		stop()
//		os.Exit(code)
//	}
//
// Tests sharing a server must keep their keys apart, for instance with a
// [tiercache.WithPrefix] of their own, and must not flush or restart it.
//
// # Servers
//
// Each server is a child process of the test binary, listening on
// 127.0.0.1 only, without persistence (--save "" --appendonly no) and in a
// temporary directory of its own, which also holds its log; when a test
// fails, the tail of each of its servers' logs is added to its output. On
// Linux a server is also killed, by a parent-death signal, if the test
// binary dies without stopping it. A server starts in a few tens of
// milliseconds, a cluster in a little over two seconds (Redis keeps a new
// master from serving writes for two seconds).
//
// The clients returned have ContextTimeoutEnabled set, as tiercache
// recommends, so that context deadlines bound socket reads and writes.
//
// # Timeouts
//
// tiercache's Redis timeouts are short by default (100ms for a read, see
// [tiercache.WithReadTimeout] and [tiercache.WithWriteTimeout]), and a
// timeout is not an error: the cache reads from the loader instead. On a
// busy test machine, under -race or beside a starting cluster, a round trip
// can take longer, so a test that counts loader calls should give its
// caches timeouts of a second or more.
//
// # Without redis-server
//
// redis-server must be on PATH (Debian and Ubuntu: apt-get install
// redis-server; macOS: brew install redis). If it is not, [Redis], [Cluster]
// and [StartServer] skip the test with a message saying so; but when the
// environment variable CI is non-empty they fail it instead, so that a CI
// job lacking Redis cannot pass by skipping every test that needs it.
// [Start] returns an error wrapping [exec.ErrNotFound], which a TestMain
// may test with [errors.Is] to skip in the same way.
package tiercachetest

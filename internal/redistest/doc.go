// Package redistest starts real redis-server processes on free loopback
// ports for integration tests.
//
// Three levels of isolation are offered:
//
//   - [StartServer] and [StartCluster] start processes owned by one test.
//     They are stopped when the test ends, so a test may kill, restart or
//     otherwise damage them (failover tests, restart tests).
//   - [SharedServer] and [SharedCluster] start one single server and one
//     three-master cluster per test binary, lazily, and keep them until the
//     binary exits. Starting a cluster costs a couple of seconds (Redis
//     refuses to mark a fresh master writable for about two seconds), so
//     tests that merely need "a Redis" should share. Tests sharing a server
//     must not stop or restart it and must keep their keys apart with
//     [UniquePrefix].
//   - [ForEach] runs a test body against both shared topologies.
//
// The shared servers require the package's TestMain to call [Main] (or
// [MainWithLeakCheck]), which stops them after the tests have run:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
//
// Every server runs without persistence (--save "" --appendonly no) in its
// own directory, which also holds its log file (redis.log). Startup and
// readiness failures include the tail of that log.
//
// If redis-server is not on PATH the tests are skipped, unless the
// environment variable CI is non-empty, in which case they fail: see
// [RequireServer].
//
// On Linux each server is started in its own process group with
// PR_SET_PDEATHSIG set to SIGKILL, so it does not outlive a test binary that
// crashes or is killed. The kernel ties that signal to the OS thread that
// forked the server, not to the process; the Go runtime only retires a
// thread when a goroutine exits while locked to it with
// runtime.LockOSThread, so in practice this only matters for code that
// does that. Normal teardown never relies on it: servers are killed
// explicitly.
package redistest

package tiercacheotel_test

import (
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
)

// The tests run against real redis-server processes that the harness
// starts; goroutine leaks fail the run.
func TestMain(m *testing.M) { redistest.MainWithLeakCheck(m) }

// redisAddr returns the address of the test binary's shared redis-server,
// for Example functions, which get no testing.TB to pass to
// redistest.SharedServer: testing.Benchmark lends them one. The server
// outlives that benchmark (it is stopped by redistest.Main); nothing the
// benchmark registers for cleanup is used.
func redisAddr() string {
	var addr string
	testing.Benchmark(func(b *testing.B) { addr = redistest.SharedServer(b).Addr })
	if addr == "" {
		panic("tiercacheotel: the examples need redis-server on PATH")
	}
	return addr
}

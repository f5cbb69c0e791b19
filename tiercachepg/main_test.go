package tiercachepg_test

import (
	"testing"

	"github.com/tiercache/tiercache/internal/redistest"
	"github.com/tiercache/tiercache/tiercachepg/pgtest"
)

// The integration tests run against real PostgreSQL servers (one per
// test, started by package pgtest) and real redis-server processes
// (internal/redistest); goroutine leaks fail the run.
func TestMain(m *testing.M) {
	pgtest.SkipExamplesIfMissing()
	redistest.MainWithLeakCheck(m)
}

// Package faults is tiercache's fault suite: "a sick Redis never fails a
// read, and bad data never crashes anything". It has no code of its own;
// its tests (go test ./faults/... from the repository root) run the cache,
// through its public API only, against real redis-server processes, with
// network faults injected by a toxiproxy proxy embedded in the test binary
// (internal/proxy) between the go-redis client and Redis.
//
// It is a module of its own so that toxiproxy and what it pulls in stay out
// of the tiercache module's requirements, and so out of the module graph of
// every service that imports tiercache.
package faults

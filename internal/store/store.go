// Package store is every Redis call a cache makes, and nothing that
// depends on the value type: the key layout, the timeouts and the breaker
// around each round trip, the coalesced reads, the scripts (leases, fills,
// writes, tags) and the one policy by which leases are given back.
//
// Every round trip goes through [Store.Call] or callKeys, so that each one
// is bounded, counted, traced and judged by the breaker in the same way. A
// multi-key operation is one pipeline, which go-redis sends to each node at
// once; each node's breaker judges that node's commands, and no command
// spans two slots.
//
// The files: store.go (the transport and the script runner), read.go,
// lease.go (the lease protocol's round trips), write.go (writes, deletes,
// the generation, publish), tags.go, breaker.go.
package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/coalesce"
	"github.com/tiercache/tiercache/internal/keys"
)

// Config is what a store needs of the cache's options.
type Config struct {
	Prefix        string
	SchemaVersion int

	ReadTimeout, WriteTimeout, LeaseTTL time.Duration
	// VersionTTL is the least time Redis keeps a row version (the cache's
	// default TTL); see versionArgs.
	VersionTTL time.Duration
	// HealthInterval is how often the generation is read again.
	HealthInterval time.Duration

	Breaker       *BreakerSettings // nil: no breaker
	CoalesceReads bool

	// Fault wraps every error from Redis (the caller's ErrRedis), and
	// BreakerOpen is the error of a call a breaker refused (it wraps
	// Fault): errors.Is tells them apart for the caller.
	Fault, BreakerOpen error

	Recorder Recorder
	Log      *slog.Logger
	// Life ends when the cache is closed. Lease releases outlive it by at
	// most one attempt each (see Release).
	Life context.Context

	// OnBreaker is told of every change of a node's breaker.
	OnBreaker func(node string, from, to State)
	// OnNewGeneration is called when a read finds a newer generation than
	// this instance knew (its Clear message was lost): L1 must go too.
	OnNewGeneration func()
}

// Recorder is told of every round trip; the cache's counters and its
// Observer are behind it.
type Recorder interface {
	// Now is the start of a timed call (the zero time when nothing times
	// calls).
	Now() time.Time
	// Span starts a trace span for a round trip; end is called with its
	// result.
	Span(ctx context.Context, op string) (_ context.Context, end func(error))
	// Redis is told of each round trip that ran: its name, start and
	// error (nil for success and for an absent key).
	Redis(op string, start time.Time, err error)
	// Rejected is told of a call a breaker refused.
	Rejected()
	// Batched is told of n reads that shared a coalesced round trip.
	Batched(n int)
}

// Store is a cache's Redis (or, for an L1-only cache, what stands in for
// it). It is safe for concurrent use.
type Store struct {
	RDB     redis.UniversalClient
	Cluster *redis.ClusterClient // RDB, when it is a cluster client
	Layout  keys.Layout

	nodes *nodes                              // the breakers, one per node; nil without a breaker
	coal  *coalesce.Coalescer[string, []byte] // nil without read coalescing
	// The lone lease scripts of concurrent misses, coalesced like reads
	// (nil without read coalescing); see leaseSlots.
	acquires *coalesce.Coalescer[AcquireReq, AcquireResult]
	fills    *coalesce.Coalescer[Write, fillResult]
	rec      Recorder
	log      *slog.Logger
	single   bool // RDB is one node: a batch read is MGET

	fault, breakerOpen error

	readTimeout, writeTimeout, leaseTTL time.Duration
	leaseTTLArg, fillsArg               any           // the lease TTL in ms and the fill channel, boxed once (see argOne)
	versionTTL                          time.Duration // see versionArgs

	life context.Context

	// gen is the namespace's generation as this instance knows it.
	gen             atomic.Uint64
	genKnown        atomic.Bool
	genAt           atomic.Int64  // when it was last read (Unix µs)
	genEvery        time.Duration // how often it is read again (the health interval)
	onNewGeneration func()

	// local is the store of an L1-only cache (NewLocal): no Redis at all.
	// Every read misses, every lease is granted, every write "lands", and
	// tag versions and the generation are kept here.
	local *localState

	releases        sync.WaitGroup // lease releases in the background
	pendingReleases atomic.Int64
	// lastReload is when a cluster client was last told to reload its slot
	// map (Unix ns); see ReloadClusterState.
	lastReload atomic.Int64
	// slots remembers which node serves each slot (see slots.go); nil on
	// a single node.
	slots *slotMemo

	// The pub/sub mode (see Sharded), and when fillChannel last tried to
	// find it out (Unix ns).
	modeMu             sync.Mutex
	modeKnown, sharded atomic.Bool
	modeTried          atomic.Int64
}

// New returns the store of rdb; a nil rdb is an L1-only cache's.
func New(rdb redis.UniversalClient, cfg Config) *Store {
	s := &Store{
		RDB: rdb, Layout: keys.New(cfg.Prefix, cfg.SchemaVersion), rec: cfg.Recorder, log: cfg.Log, life: cfg.Life,
		fault: cfg.Fault, breakerOpen: cfg.BreakerOpen,
		readTimeout: cfg.ReadTimeout, writeTimeout: cfg.WriteTimeout, leaseTTL: cfg.LeaseTTL,
		versionTTL: cfg.VersionTTL, genEvery: cfg.HealthInterval, onNewGeneration: cfg.OnNewGeneration,
	}
	s.leaseTTLArg, s.fillsArg = s.leaseTTL.Milliseconds(), s.Layout.Fills()
	if rdb == nil {
		s.local = &localState{tags: map[string]uint64{}}
		return s
	}
	_, s.single = rdb.(*redis.Client)
	s.Cluster, _ = rdb.(*redis.ClusterClient)
	if s.Cluster != nil {
		s.slots = new(slotMemo)
	}
	if cfg.Breaker != nil {
		onBreaker := func(node string, from, to State) {
			s.forgetSlots() // a failover, most likely: see slots.go
			if cfg.OnBreaker != nil {
				cfg.OnBreaker(node, from, to)
			}
		}
		s.nodes = &nodes{settings: *cfg.Breaker, onChange: onBreaker}
		s.nodes.m.Store(&map[string]*breaker{})
		if s.Cluster == nil {
			s.nodes.one = s.nodes.get(clientAddr(rdb))
		}
	}
	if cfg.CoalesceReads {
		s.coal = coalesce.New(cfg.ReadTimeout, coalesce.Slots, s.fetchReads)
		s.acquires = coalesce.New(cfg.ReadTimeout, leaseSlots, s.acquire)
		s.fills = coalesce.New(cfg.WriteTimeout, leaseSlots, s.fillMany)
	}
	return s
}

// Call runs one Redis round trip to node (its address; "" for the one node
// of a single-node client) under that node's breaker, done by deadline,
// and counts it. A call the breaker refuses fails at once with the
// BreakerOpen error. redis.Nil (an absent key) is not an error; every
// other error wraps Fault.
func (s *Store) Call(ctx context.Context, node, op string, deadline time.Time, fn func(context.Context) error) error {
	ctx, cancel := context.WithDeadline(ctx, deadline)
	if err := ctx.Err(); err != nil {
		cancel()
		return s.late(op, err)
	}
	brk, done, ok := s.admit(node)
	if !ok {
		cancel()
		return s.breakerOpen
	}
	judged := false
	defer func() {
		if !judged {
			giveBack(done)
		}
	}()
	ctx, end := s.rec.Span(ctx, op)
	start := s.rec.Now()
	err := absentIsNil(fn(ctx))
	cancel()
	end(err)
	judged = true
	return s.judge(brk, done, op, start, err)
}

// giveBack returns the probe a half-open breaker granted (done, from admit)
// for a call that did not get to its judge: the Tracer or the Observer,
// user code that runs in between, panicked. A half-open breaker waits for
// its probes for good; a cancelled call is not counted either way.
func giveBack(done func(error)) {
	if done != nil {
		done(context.Canceled)
	}
}

// aborted wraps coalesce.ErrAborted (the round trip's leader panicked) in
// Fault, as every error of a round trip is.
func (s *Store) aborted(err error) error {
	if errors.Is(err, coalesce.ErrAborted) {
		return fmt.Errorf("%w: %w", s.fault, err)
	}
	return err
}

// late is the error of a call whose deadline passed (or whose caller left)
// before it was sent: a read queued behind round trips of a slow node, say.
// Nothing was asked of Redis, so no breaker is told: the node did nothing
// wrong, and one slow node must not open a healthy one's breaker.
func (s *Store) late(op string, err error) error {
	return fmt.Errorf("%w: %s: %w (%w)", s.fault, op, ErrNotSent, err)
}

// ErrNotSent marks the error of a call that was not sent (see late): like
// one a breaker refused, it is not a lookup of Redis.
var ErrNotSent = errors.New("not sent: its deadline passed while it waited")

// admit asks node's breaker for a round trip (always granted without
// breakers); done is to be given its result (see judge).
func (s *Store) admit(node string) (brk *breaker, done func(error), ok bool) {
	if brk = s.nodes.of(node); brk == nil {
		return nil, nil, true
	}
	if done, ok = brk.begin(); !ok {
		s.rec.Rejected()
	}
	return brk, done, ok
}

// judge tells the breaker and the recorder how a round trip that admit
// granted went, and wraps its failure in Fault.
func (s *Store) judge(brk *breaker, done func(error), op string, start time.Time, err error) error {
	if brk != nil {
		brk.end(done, err)
	}
	s.rec.Redis(op, start, err)
	if err != nil {
		s.ReloadClusterState(err)
		return fmt.Errorf("%w: %s: %w", s.fault, op, err)
	}
	return nil
}

func absentIsNil(err error) error {
	if errors.Is(err, redis.Nil) {
		return nil
	}
	return err
}

// WaitReleases waits for the lease releases in the background (see
// Release).
func (s *Store) WaitReleases() { s.releases.Wait() }

// Local reports a store without Redis (NewLocal): L1 is the only copy.
func (s *Store) Local() bool { return s.local != nil }

// Breakers returns each node's breaker state, and the worst of them.
func (s *Store) Breakers() (map[string]State, State) { return s.nodes.states() }

// nodeOf is the address of the node that serves key ("" on one node),
// through the slot memo (see slotMemo): a lone read on a cluster asks it
// too, as every key of a batch does.
func (s *Store) nodeOf(ctx context.Context, key string) string {
	if s.Cluster == nil {
		return ""
	}
	return s.nodeOfSlotted(ctx, memoNow(), key)
}

// masterOf asks go-redis which node serves key (see nodeOf).
func (s *Store) masterOf(ctx context.Context, key string) string {
	if s.Cluster == nil {
		return ""
	}
	m, err := s.Cluster.MasterForKey(ctx, key)
	if err != nil {
		return "" // no slot map: the call will fail, under the unknown node's breaker
	}
	return m.Options().Addr
}

// A keyFn sends the commands of keys[idx[n]] for every n, in one round
// trip, and sets errs[n] for each command that failed; it returns an error
// when the round trip as a whole did (then errs is not read). It must not
// write idx, which may be shared (identity).
type keyFn func(ctx context.Context, idx []int, errs []error) error

// identity is 0, 1, 2, ...: the order of a single node's keys, shared
// because nothing writes an idx (see keyFn).
var identity = func() []int {
	ix := make([]int, 1024)
	for i := range ix {
		ix[i] = i
	}
	return ix
}()

// callKeys runs fn once for keys, each under its node's breaker: the keys
// of a node whose breaker is open are refused at once (BreakerOpen), the
// others go in one call of fn, which on a cluster is one go-redis pipeline
// that sends each node its part at the same time. Each node's breaker and
// the recorder are then told how that node's commands went, so that a
// failing node counts against itself only. errs[i] is the error of keys[i]
// (nil: done; errs is nil when every key is), err the first.
func (s *Store) callKeys(ctx context.Context, op string, deadline time.Time, keys []string, fn keyFn) (errs []error, err error) {
	// A node's keys, and its breaker's grant.
	type node struct {
		addr   string
		keys   int // how many
		idx    []int
		brk    *breaker
		done   func(error)
		judged bool
	}
	// order is every index, grouped by node; each node's idx is its part.
	var order []int
	var few [4]node // room for the nodes of most calls, on the stack
	nodes := few[:0]
	if s.Cluster == nil || len(keys) == 1 {
		if n := min(len(keys), len(identity)); len(keys) == n {
			order = identity[:n:n] // full: an append cannot write into it
		} else {
			order = make([]int, len(keys))
			for i := range order {
				order[i] = i
			}
		}
		nodes = append(nodes, node{addr: s.nodeOf(ctx, keys[0]), idx: order})
	} else {
		both := make([]int, 2*len(keys)) // one allocation for order and of
		order = both[:len(keys):len(keys)]
		of := both[len(keys):] // keys[i]'s node
		now := memoNow()
		for i, k := range keys {
			a := s.nodeOfSlotted(ctx, now, k)
			j := 0 // a cluster has few masters: a scan beats a map
			for j < len(nodes) && nodes[j].addr != a {
				j++
			}
			if j == len(nodes) {
				nodes = append(nodes, node{addr: a})
			}
			of[i] = j
			nodes[j].keys++
		}
		off := 0
		for j := range nodes {
			nodes[j].idx = order[off : off : off+nodes[j].keys]
			off += nodes[j].keys
		}
		for i, j := range of {
			nodes[j].idx = append(nodes[j].idx, i)
		}
	}
	fail := func(i int, e error) {
		if errs == nil {
			errs = make([]error, len(keys))
		}
		if err == nil {
			err = e
		}
		errs[i] = e
	}
	cctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	if e := cctx.Err(); e != nil { // see late
		e = s.late(op, e)
		for i := range keys {
			fail(i, e)
		}
		return errs, err
	}
	admitted := nodes[:0]
	defer func() {
		for _, n := range admitted {
			if !n.judged {
				giveBack(n.done) // see giveBack
			}
		}
	}()
	for _, n := range nodes {
		var ok bool
		if n.brk, n.done, ok = s.admit(n.addr); !ok {
			for _, i := range n.idx {
				fail(i, s.breakerOpen)
			}
			continue
		}
		admitted = append(admitted, n)
	}
	idx := order // of the keys whose node's breaker granted the call
	if len(admitted) < len(nodes) {
		idx = nil
		for _, n := range admitted {
			idx = append(idx, n.idx...)
		}
	}
	if len(idx) == 0 {
		return errs, err
	}
	cerrs := make([]error, len(idx))
	cctx, end := s.rec.Span(cctx, op)
	start := s.rec.Now()
	whole := absentIsNil(fn(cctx, idx, cerrs))
	var first error
	off := 0 // admitted's keys are idx in order
	for j := range admitted {
		n := &admitted[j]
		var nerr error // the node's: the round trip's, or its first command's
		if nerr = whole; nerr == nil {
			for m := range n.idx {
				if nerr = absentIsNil(cerrs[off+m]); nerr != nil {
					break
				}
			}
		}
		n.judged = true
		werr := s.judge(n.brk, n.done, op, start, nerr)
		for m, i := range n.idx {
			switch {
			case whole != nil:
				fail(i, werr)
			case absentIsNil(cerrs[off+m]) != nil:
				fail(i, fmt.Errorf("%w: %s: %w", s.fault, op, cerrs[off+m]))
			}
		}
		off += len(n.idx)
		if first == nil {
			first = nerr
		}
	}
	end(first)
	return errs, err
}

// cmdErrs sets errs[n] to the error of cmds[n], an absent key aside.
func cmdErrs[C redis.Cmder](cmds []C, errs []error) {
	for n, cmd := range cmds {
		errs[n] = absentIsNil(cmd.Err())
	}
}

func (s *Store) readBy() time.Time { return time.Now().Add(s.readTimeout) }

// WriteBy is the deadline of a write that starts now.
func (s *Store) WriteBy() time.Time { return time.Now().Add(s.writeTimeout) }

// op names a round trip for observers: name for one key, name_many for more.
func op(name string, n int) string {
	if n == 1 {
		return name
	}
	return name + "_many"
}

// ReloadClusterState asks a cluster client to reload its slot map after a
// fault. go-redis reloads it on MOVED and READONLY replies, and otherwise
// only every ClusterStateReloadInterval (60s by default): after a failover
// in which the old master simply stopped answering, writes would go to it
// until then. At most once per 250ms.
func (s *Store) ReloadClusterState(err error) {
	cc, ok := s.RDB.(*redis.ClusterClient)
	if !ok || !isRedisFault(err) {
		return
	}
	now, last := time.Now().UnixNano(), s.lastReload.Load()
	if now-last < int64(250*time.Millisecond) || !s.lastReload.CompareAndSwap(last, now) {
		return
	}
	s.forgetSlots() // the slot map may have changed: ask go-redis again
	cc.ReloadState(context.Background())
}

// --- Scripts ---

// runScript runs sc once per (keys, args) pair, in one pipeline, by EVALSHA,
// and returns the commands, each with its own reply or error. Script
// caches are per node: on a cluster some masters may know the script and
// some not (a fresh cluster, a restart, a failover, SCRIPT FLUSH). Only the
// commands a node refused with NOSCRIPT did not run, so only those are sent
// again, with EVAL (which loads the script); re-sending the whole pipeline
// would run the others twice.
func (s *Store) runScript(ctx context.Context, sc *redis.Script, kk [][]string, args [][]any) []*redis.Cmd {
	if len(kk) == 1 {
		// One command (a single-key miss, the common case): no pipeline.
		cmd := sc.EvalSha(ctx, s.RDB, kk[0], args[0]...)
		if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			cmd = sc.Eval(ctx, s.RDB, kk[0], args[0]...)
		}
		return []*redis.Cmd{cmd}
	}
	cmds := make([]*redis.Cmd, len(kk))
	send := func(idx []int, sha bool) {
		_, _ = s.RDB.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, i := range idx {
				if sha {
					cmds[i] = sc.EvalSha(ctx, p, kk[i], args[i]...)
				} else {
					cmds[i] = sc.Eval(ctx, p, kk[i], args[i]...)
				}
			}
			return nil
		})
	}
	all := make([]int, len(kk))
	for i := range all {
		all[i] = i
	}
	send(all, true)
	var unknown []int
	for i, cmd := range cmds {
		if err := cmd.Err(); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			unknown = append(unknown, i)
		}
	}
	if len(unknown) > 0 {
		send(unknown, false)
	}
	return cmds
}

// clientAddr names the node of a client that is not a cluster client.
func clientAddr(rdb redis.UniversalClient) string {
	if c, ok := rdb.(*redis.Client); ok {
		return c.Options().Addr
	}
	return "redis"
}

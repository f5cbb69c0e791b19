package tiercache

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/coalesce"
	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/keys"
)

// store is every Redis call a cache makes, and nothing that depends on the
// value type: the key layout, the timeouts and the breaker around each
// round trip, the coalesced reads, the scripts (leases, fills, writes, tags)
// and the one policy by which leases are given back.
//
// Every round trip goes through call, so that each one is bounded, counted,
// traced and judged by the breaker in the same way. Multi-key operations
// are one pipeline: go-redis splits a pipeline by node on a cluster, so a
// batch costs one round trip per node and no command spans two slots.
type store struct {
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient // rdb, when it is a cluster client
	layout  keys.Layout
	nodes   *nodes              // the breakers, one per node; nil with WithoutBreaker
	coal    *coalesce.Coalescer // nil with WithoutReadCoalescing
	rec     *recorder
	log     *slog.Logger
	single  bool // rdb is one node: a batch read is MGET

	readTimeout, writeTimeout, leaseTTL time.Duration
	versionTTL                          time.Duration // see versionArgs

	// life ends when the cache is closed. Lease releases outlive it by at
	// most one attempt each (see release).
	life context.Context

	// gen is the namespace's generation as this instance knows it.
	gen      atomic.Uint64
	genKnown atomic.Bool
	genAt    atomic.Int64  // when it was last read (Unix µs)
	genEvery time.Duration // how often it is read again (the health interval)
	// onNewGeneration is called when a read finds a newer generation than
	// this instance knew (its Clear message was lost): L1 must go too.
	onNewGeneration func()

	// local is the store of an L1-only cache (NewLocal): no Redis at all.
	// Every read misses, every lease is granted, every write "lands", and
	// tag versions and the generation are kept here.
	local *localState

	releases        sync.WaitGroup // lease releases in the background
	pendingReleases atomic.Int64
	// lastReload is when a cluster client was last told to reload its slot
	// map (Unix ns); see reloadClusterState.
	lastReload atomic.Int64
}

func newStore(rdb redis.UniversalClient, cfg *config, rec *recorder, log *slog.Logger, life context.Context, onBreaker func(node string, from, to BreakerState)) *store {
	s := &store{
		rdb: rdb, layout: keys.New(cfg.prefix, cfg.version), rec: rec, log: log, life: life,
		readTimeout: cfg.readTimeout, writeTimeout: cfg.writeTimeout, leaseTTL: cfg.leaseTTL,
		versionTTL: cfg.ttl, genEvery: cfg.healthInterval,
	}
	if rdb == nil {
		s.local = &localState{tags: map[string]uint64{}}
		return s
	}
	_, s.single = rdb.(*redis.Client)
	s.cluster, _ = rdb.(*redis.ClusterClient)
	if cfg.breakerOn {
		s.nodes = &nodes{settings: cfg.breaker, onChange: onBreaker, m: map[string]*breaker{}}
		if s.cluster == nil {
			s.nodes.one = s.nodes.get(clientAddr(rdb))
		}
	}
	if cfg.coalesceReads {
		s.coal = coalesce.New(cfg.readTimeout, s.fetchReads)
	}
	return s
}

// call runs one Redis round trip to node (its address; "" for the one node
// of a single-node client) under that node's breaker, done by deadline,
// and counts it. A call the breaker refuses fails at once with
// errBreakerOpen. redis.Nil (an absent key) is not an error.
func (s *store) call(ctx context.Context, node, op string, deadline time.Time, fn func(context.Context) error) error {
	brk := s.nodes.of(node)
	var done func(error)
	if brk != nil {
		var ok bool
		if done, ok = brk.begin(); !ok {
			s.rec.event(EventBreakerReject)
			return errBreakerOpen
		}
	}
	ctx, cancel := context.WithDeadline(ctx, deadline)
	ctx, end := s.rec.span(ctx, op)
	start := s.rec.now()
	err := fn(ctx)
	cancel()
	if errors.Is(err, redis.Nil) {
		err = nil
	}
	end(err)
	if brk != nil {
		brk.end(done, err)
	}
	s.rec.redis(op, start, err)
	if err != nil {
		if isTimeout(err) {
			s.rec.event(EventRedisTimeout)
		}
		s.reloadClusterState(err)
		s.rec.event(EventRedisError)
		return redisError(op, err)
	}
	return nil
}

// nodeOf is the address of the node that serves key ("" on one node).
func (s *store) nodeOf(ctx context.Context, key string) string {
	if s.cluster == nil {
		return ""
	}
	m, err := s.cluster.MasterForKey(ctx, key)
	if err != nil {
		return "" // no slot map: the call will fail, under the unknown node's breaker
	}
	return m.Options().Addr
}

// callKeys runs one round trip per node for keys: fn(ctx, idx) for the
// indexes of keys each node serves, each under its node's breaker, the
// nodes at once, so that a dead node fails only its own keys. errs[i] is
// the error of keys[i] (nil: done); err is the first. On one node it is one
// call of fn, as the pipelines of go-redis would be.
func (s *store) callKeys(ctx context.Context, op string, deadline time.Time, keys []string, fn func(ctx context.Context, idx []int) error) (errs []error, err error) {
	if s.cluster == nil {
		all := make([]int, len(keys))
		for i := range all {
			all[i] = i
		}
		if err = s.call(ctx, "", op, deadline, func(ctx context.Context) error { return fn(ctx, all) }); err != nil {
			errs = make([]error, len(keys))
			for i := range errs {
				errs[i] = err
			}
		}
		return errs, err
	}
	var addrs []string
	groups := map[string][]int{}
	for i, k := range keys {
		a := s.nodeOf(ctx, k)
		if _, ok := groups[a]; !ok {
			addrs = append(addrs, a)
		}
		groups[a] = append(groups[a], i)
	}
	gerrs := make([]error, len(addrs))
	var wg sync.WaitGroup
	for j, a := range addrs {
		run := func() {
			gerrs[j] = s.call(ctx, a, op, deadline, func(ctx context.Context) error { return fn(ctx, groups[a]) })
		}
		if j == len(addrs)-1 {
			run() // the last on this goroutine
		} else {
			wg.Go(run)
		}
	}
	wg.Wait()
	for j, a := range addrs {
		if gerrs[j] == nil {
			continue
		}
		if errs == nil {
			errs, err = make([]error, len(keys)), gerrs[j]
		}
		for _, i := range groups[a] {
			errs[i] = gerrs[j]
		}
	}
	return errs, err
}

func (s *store) readBy() time.Time  { return time.Now().Add(s.readTimeout) }
func (s *store) writeBy() time.Time { return time.Now().Add(s.writeTimeout) }

// op names a round trip for observers: name for one key, name_many for more.
func op(name string, n int) string {
	if n == 1 {
		return name
	}
	return name + "_many"
}

// reloadClusterState asks a cluster client to reload its slot map after a
// fault. go-redis reloads it on MOVED and READONLY replies, and otherwise
// only every ClusterStateReloadInterval (60s by default): after a failover
// in which the old master simply stopped answering, writes would go to it
// until then. At most once per 250ms.
func (s *store) reloadClusterState(err error) {
	cc, ok := s.rdb.(*redis.ClusterClient)
	if !ok || !isRedisFault(err) {
		return
	}
	now, last := time.Now().UnixNano(), s.lastReload.Load()
	if now-last < int64(250*time.Millisecond) || !s.lastReload.CompareAndSwap(last, now) {
		return
	}
	cc.ReloadState(context.Background())
}

// --- Reads ---

// get reads one value key (nil when absent), sharing a round trip with
// concurrent reads unless coalescing is off.
func (s *store) get(ctx context.Context, vk string) ([]byte, error) {
	if s.local != nil {
		return nil, nil
	}
	if s.coal != nil {
		return s.coal.Get(ctx, vk)
	}
	return s.getOne(ctx, s.readBy(), vk)
}

// getOne is one GET of vk, done by deadline.
func (s *store) getOne(ctx context.Context, deadline time.Time, vk string) (b []byte, err error) {
	err = s.call(ctx, s.nodeOf(ctx, vk), "get", deadline, func(ctx context.Context) error {
		v, err := s.rdb.Get(ctx, vk).Result()
		b = unsafeBytes(v)
		return err
	})
	return b, err
}

// fetchReads is the coalescer's round trip: GET for a lone read, else one
// read per node.
func (s *store) fetchReads(ctx context.Context, deadline time.Time, vks []string, raw [][]byte, errs []error) {
	if len(vks) == 1 {
		raw[0], errs[0] = s.getOne(ctx, deadline, vks[0])
		return
	}
	kerrs, _ := s.callKeys(ctx, "mget", deadline, vks, func(ctx context.Context, idx []int) error { return s.mget(ctx, vks, idx, raw) })
	batched := 0
	for i := range vks {
		if kerrs != nil {
			errs[i] = kerrs[i]
		}
		if errs[i] == nil || !errors.Is(errs[i], errBreakerOpen) {
			batched++
		}
	}
	s.rec.eventN(EventReadBatched, batched)
}

// getMany reads vks in one round trip per node (nil for absent keys);
// errs[i] is set for the keys of a node that failed.
func (s *store) getMany(ctx context.Context, vks []string) (raw [][]byte, errs []error, err error) {
	raw = make([][]byte, len(vks))
	if s.local != nil {
		return raw, nil, nil
	}
	errs, err = s.callKeys(ctx, "mget", s.readBy(), vks, func(ctx context.Context, idx []int) error { return s.mget(ctx, vks, idx, raw) })
	return raw, errs, err
}

// maxBatchCommand bounds the keys of one MGET; a larger batch is split into
// several commands, still sent in one round trip.
const maxBatchCommand = 512

// mget reads the keys vks[idx] (of one node) into raw: MGETs of at most
// maxBatchCommand keys on a single node, GETs on a cluster (no command spans
// two slots). A command that failed fails the read: its keys are not
// misses.
func (s *store) mget(ctx context.Context, vks []string, idx []int, raw [][]byte) error {
	if s.single {
		// One node: callKeys passes every index, in order.
		var cmds []*redis.SliceCmd
		if len(vks) <= maxBatchCommand {
			cmds = append(cmds, s.rdb.MGet(ctx, vks...))
		} else if _, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := 0; j < len(vks); j += maxBatchCommand {
				cmds = append(cmds, p.MGet(ctx, vks[j:min(j+maxBatchCommand, len(vks))]...))
			}
			return nil
		}); err != nil {
			return err
		}
		n := 0
		for _, cmd := range cmds {
			vals, err := cmd.Result()
			if err != nil {
				return err
			}
			for _, v := range vals {
				if v, ok := v.(string); ok {
					raw[n] = unsafeBytes(v)
				}
				n++
			}
		}
		return nil
	}
	cmds := make([]*redis.StringCmd, len(idx))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for n, i := range idx {
			cmds[n] = p.Get(ctx, vks[i])
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for n, cmd := range cmds {
		v, err := cmd.Result()
		switch {
		case err == nil:
			raw[idx[n]] = unsafeBytes(v)
		case !errors.Is(err, redis.Nil):
			return err
		}
	}
	return nil
}

// --- Scripts ---

// runScript runs sc once per (keys, args) pair, in one pipeline, by EVALSHA.
// Script caches are per node: on a cluster some masters may know the script
// and some not (a fresh cluster, a restart, a failover, SCRIPT FLUSH). Only
// the commands a node refused with NOSCRIPT did not run, so only those are
// sent again, with EVAL (which loads the script); re-sending the whole
// pipeline would run the others twice. It returns the first command error
// other than redis.Nil.
func (s *store) runScript(ctx context.Context, sc *redis.Script, kk [][]string, args [][]any) ([]*redis.Cmd, error) {
	cmds := make([]*redis.Cmd, len(kk))
	send := func(idx []int, sha bool) {
		_, _ = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
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
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil && !errors.Is(err, redis.Nil) {
			return cmds, err
		}
	}
	return cmds, nil
}

// --- Leases ---
//
// Before an instance calls the loader for a key that Redis does not have
// fresh, it takes the key's lease (SET NX PX of a random token on a key in
// the value's slot): only the holder loads, the others wait for its value
// or take the lease over when it expires (its holder died). The holder's
// write is a compare-and-set on the token (Fill). Set, Delete and their
// kin delete the lease, so a value loaded before one of them is refused
// instead of landing after it: the stale set of classic cache-aside cannot
// happen. load.go drives the protocol; these are its round trips.

func newToken() string {
	var b [12]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// The states of an acquire, as the script returns them.
const (
	acquireBusy  = 0 // another instance holds the lease
	acquireOwned = 1 // the lease is ours
	acquireFresh = 2 // the value is fresh: no lease taken
)

type acquireReq struct {
	vk, token string
	force     bool  // take the lease even if the value is fresh
	notBefore int64 // with force: a value written after it (Unix µs) counts as fresh
	wait      bool  // the caller will wait for another holder: ask to be woken
}

// leaseKeys are the keys of vk's lease scripts (one slot): value, lease,
// waiters, row version.
func leaseKeys(vk string) []string {
	return []string{vk, keys.Lease(vk), keys.Waiters(vk), keys.RowVersion(vk)}
}

type acquireResult struct {
	state    int64
	value    []byte // nil when absent
	leaseTTL time.Duration
	at       int64 // server time when the lease was taken (Unix µs), 0 for a fresh value
}

// acquire runs the Acquire script for each request, in one round trip per
// node: the value if fresh, else the lease if free. errs[i] is set for the
// requests of a node that failed.
func (s *store) acquire(ctx context.Context, reqs []acquireReq) ([]acquireResult, []error) {
	out := make([]acquireResult, len(reqs))
	kk := make([][]string, len(reqs))
	args := make([][]any, len(reqs))
	now := nowMicro()
	flag := func(b bool) string {
		if b {
			return "1"
		}
		return "0"
	}
	for i, r := range reqs {
		kk[i] = leaseKeys(r.vk)
		args[i] = []any{r.token, s.leaseTTL.Milliseconds(), now, flag(r.force), strconv.FormatInt(r.notBefore, 10), flag(r.wait)}
	}
	vks := make([]string, len(reqs))
	for i, r := range reqs {
		vks[i] = r.vk
	}
	if s.local != nil {
		for i := range out {
			out[i] = acquireResult{state: acquireOwned, at: now}
		}
		return out, nil
	}
	errs, _ := s.callKeys(ctx, op("acquire", len(reqs)), s.readBy(), vks, func(ctx context.Context, idx []int) error {
		cmds, err := s.runScript(ctx, keys.Acquire, pick(kk, idx), pick(args, idx))
		if err != nil {
			return err
		}
		for n, cmd := range cmds {
			if out[idx[n]], err = parseAcquire(cmd); err != nil {
				return err
			}
		}
		return nil
	})
	return out, errs
}

// pick returns xs[idx] in order (xs itself when idx is every index).
func pick[T any](xs []T, idx []int) []T {
	if len(idx) == len(xs) {
		return xs
	}
	out := make([]T, len(idx))
	for n, i := range idx {
		out[n] = xs[i]
	}
	return out
}

// parseAcquire reads the reply of the Acquire script.
func parseAcquire(cmd *redis.Cmd) (acquireResult, error) {
	var res acquireResult
	vals, err := cmd.Slice()
	if err != nil {
		return res, err
	}
	if len(vals) != 4 {
		return res, errors.New("acquire: unexpected reply")
	}
	res.state, _ = vals[0].(int64)
	if v, ok := vals[1].(string); ok && v != "" {
		res.value = unsafeBytes(v)
	}
	if ms, ok := vals[2].(int64); ok && ms > 0 {
		res.leaseTTL = time.Duration(ms) * time.Millisecond
	}
	if v, ok := vals[3].(string); ok {
		res.at, _ = strconv.ParseInt(v, 10, 64)
	}
	return res, nil
}

// frameWrite is one frame to store under vk for ttl. With a token it is a
// fill (a compare-and-set on the lease); without, a write-through. A
// version (the row's; 0: unversioned) refuses it if Redis has seen a newer
// one.
type frameWrite struct {
	vk, token string
	frame     []byte
	ttl       time.Duration
	version   uint64
}

// versionArgs are a write's row version arguments: the version and how
// long Redis keeps it (at least as long as the value, and the default TTL
// after a versioned Delete), so that a later write older than it is refused.
func (s *store) versionArgs(version uint64, ttl time.Duration) (string, int64) {
	return keys.FormatVersion(version), ms(max(ttl, s.versionTTL))
}

// fill writes loaded values, in one round trip per node, and reports which
// were written and which refused (a leased fill whose lease is gone);
// neither, when its command failed. A cache's fills are all leased or all
// unleased (WithoutLease: written through as Set writes, all or none).
func (s *store) fill(ctx context.Context, ws []frameWrite) (written, refused []bool, err error) {
	written, refused = make([]bool, len(ws)), make([]bool, len(ws))
	if ws[0].token == "" || s.local != nil {
		return s.set(ctx, ws)
	}
	kk := make([][]string, len(ws))
	args := make([][]any, len(ws))
	vks := make([]string, len(ws))
	for i, w := range ws {
		kk[i] = leaseKeys(w.vk)
		ver, verTTL := s.versionArgs(w.version, w.ttl)
		args[i] = []any{w.token, w.frame, ms(w.ttl), ver, verTTL, s.layout.Fills()}
		vks[i] = w.vk
	}
	_, err = s.callKeys(ctx, op("fill", len(ws)), s.writeBy(), vks, func(ctx context.Context, idx []int) error {
		cmds, err := s.runScript(ctx, keys.Fill, pick(kk, idx), pick(args, idx))
		for n, cmd := range cmds {
			v, cerr := cmd.Int64()
			written[idx[n]], refused[idx[n]] = cerr == nil && v == 1, cerr == nil && v == 0
		}
		return err
	})
	return written, refused, err
}

// lease is a lease this instance holds: its value key and token.
type lease struct{ vk, token string }

// release gives leases back after a load that did not fill them (it
// failed, was not to be cached, was cancelled by Close, or its acquire's
// reply was lost), so that the next reader anywhere loads at once instead
// of waiting for the lease to expire. It is the one release policy: in the
// background, off the read path; retried every 100ms while Redis fails, for
// as long as a lease could live; after Close, one last attempt (bounded by
// the write timeout), which Close waits for. At most maxPendingReleases run
// at once; beyond that a lease is left to expire.
func (s *store) release(ls []lease) {
	if len(ls) == 0 || s.local != nil {
		return
	}
	if s.pendingReleases.Add(1) > maxPendingReleases {
		s.pendingReleases.Add(-1)
		return
	}
	kk := make([][]string, len(ls))
	args := make([][]any, len(ls))
	lks := make([]string, len(ls))
	for i, l := range ls {
		lks[i] = l.vk
		kk[i] = leaseKeys(l.vk)
		args[i] = []any{l.token, s.layout.Fills()}
	}
	s.releases.Add(1)
	go func() {
		defer s.releases.Done()
		defer s.pendingReleases.Add(-1)
		deadline := time.Now().Add(s.leaseTTL)
		for {
			closing := s.life.Err() != nil
			// Not on life: a release must outlive Close by one attempt.
			// (A lease given back twice is harmless: Release checks the token.)
			_, err := s.callKeys(context.Background(), op("release", len(ls)), s.writeBy(), lks, func(ctx context.Context, idx []int) error {
				_, err := s.runScript(ctx, keys.Release, pick(kk, idx), pick(args, idx))
				return err
			})
			if err == nil || closing || time.Now().After(deadline) {
				return
			}
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-t.C:
			case <-s.life.Done():
				t.Stop()
			}
		}
	}()
}

const maxPendingReleases = 1024

// --- Writes ---

// set writes frames through (the Set script: the lease goes, then the
// value), in one round trip per node, and reports which were written and
// which refused (a versioned write older than Redis's); neither, for the
// keys of a node that failed.
func (s *store) set(ctx context.Context, ws []frameWrite) (written, refused []bool, err error) {
	kk := make([][]string, len(ws))
	args := make([][]any, len(ws))
	vks := make([]string, len(ws))
	for i, w := range ws {
		ver, verTTL := s.versionArgs(w.version, w.ttl)
		kk[i], vks[i] = leaseKeys(w.vk), w.vk
		args[i] = []any{w.frame, ms(w.ttl), ver, verTTL, s.layout.Fills()}
	}
	written, refused = make([]bool, len(ws)), make([]bool, len(ws))
	if s.local != nil {
		for i := range written {
			written[i] = true
		}
		return written, refused, nil
	}
	_, err = s.callKeys(ctx, op("set", len(ws)), s.writeBy(), vks, func(ctx context.Context, idx []int) error {
		cmds, err := s.runScript(ctx, keys.Set, pick(kk, idx), pick(args, idx))
		for n, cmd := range cmds {
			v, cerr := cmd.Int64()
			written[idx[n]], refused[idx[n]] = cerr == nil && v == 1, cerr == nil && v == 0
		}
		return err
	})
	return written, refused, err
}

// del deletes the value and the lease of each value key (the Del script:
// they share a slot), in one round trip per node, waking the lease's
// waiters. With a row version it leaves the version behind (a later write
// older than it is refused) and is refused where Redis has a newer one.
func (s *store) del(ctx context.Context, vks []string, version uint64) error {
	if s.local != nil {
		return nil
	}
	kk := make([][]string, len(vks))
	args := make([][]any, len(vks))
	ver, verTTL := s.versionArgs(version, 0)
	for i, vk := range vks {
		kk[i], args[i] = leaseKeys(vk), []any{ver, verTTL, s.layout.Fills()}
	}
	_, err := s.callKeys(ctx, "del", s.writeBy(), vks, func(ctx context.Context, idx []int) error {
		_, err := s.runScript(ctx, keys.Del, pick(kk, idx), pick(args, idx))
		return err
	})
	return err
}

// generation returns the namespace's generation (see Cache.Clear), read
// from Redis once and then kept up to date by the subscriber; 0 until it
// could be read.
func (s *store) generation(ctx context.Context) uint64 {
	if s.local != nil {
		return s.gen.Load()
	}
	// Read again once per health interval, by one caller: an instance
	// without L1 has no subscription to tell it of a Clear, and one with L1
	// may have lost the message.
	now := nowMicro()
	if last := s.genAt.Load(); (!s.genKnown.Load() || now-last > s.genEvery.Microseconds()) && s.genAt.CompareAndSwap(last, now) {
		_ = s.refreshGeneration(ctx)
	}
	return s.gen.Load()
}

// refreshGeneration reads the generation from Redis. It only grows here.
func (s *store) refreshGeneration(ctx context.Context) error {
	gk := s.layout.Generation()
	var g uint64
	err := s.call(ctx, s.nodeOf(ctx, gk), "generation", s.readBy(), func(ctx context.Context) error {
		v, err := s.rdb.Get(ctx, gk).Uint64()
		if errors.Is(err, redis.Nil) {
			return nil
		}
		g = v
		return err
	})
	if err != nil {
		return err
	}
	advanced := false
	for cur := s.gen.Load(); g > cur; cur = s.gen.Load() {
		if s.gen.CompareAndSwap(cur, g) {
			advanced = s.genKnown.Load() // not the first read: a Clear this instance had not heard of
			break
		}
	}
	s.genAt.Store(nowMicro())
	s.genKnown.Store(true)
	if advanced && s.onNewGeneration != nil {
		s.onNewGeneration()
	}
	return nil
}

// clear starts a new generation and returns it.
func (s *store) clear(ctx context.Context) (uint64, error) {
	if s.local != nil {
		return s.gen.Add(1), nil
	}
	gk := s.layout.Generation()
	var g uint64
	err := s.call(ctx, s.nodeOf(ctx, gk), "clear", s.writeBy(), func(ctx context.Context) error {
		var err error
		g, err = s.rdb.Incr(ctx, gk).Uint64()
		return err
	})
	if err == nil {
		for cur := s.gen.Load(); g > cur && !s.gen.CompareAndSwap(cur, g); cur = s.gen.Load() {
		}
		s.genKnown.Store(true)
	}
	return g, err
}

// publish sends one invalidation message, by SPUBLISH when sharded.
func (s *store) publish(ctx context.Context, channel string, msg []byte, sharded bool) error {
	return s.call(ctx, s.nodeOf(ctx, channel), "publish", s.writeBy(), func(ctx context.Context) error {
		if sharded {
			return s.rdb.SPublish(ctx, channel, msg).Err()
		}
		return s.rdb.Publish(ctx, channel, msg).Err()
	})
}

// --- Tags (see tags.go) ---

// tagRead returns the current versions of tags, creating missing tag keys
// at the server's time and making each live at least ttl. For a load, since
// is when it began (Unix µs, 0 for a write), and stale reports that a tag
// may have been invalidated since: an existing tag's version is newer, or a
// tag key was absent while the namespace's tag floor (the time of its
// latest tag invalidation) is newer. The second case is the one where a tag
// was invalidated during the load and its key then vanished (evicted,
// deleted): recreated, it would carry no trace of the invalidation.
//
// rowVers[i] is the row version a versioned invalidation left on tags[i]
// ("" for none): a versioned write carrying the tag, not newer, is refused.
func (s *store) tagRead(ctx context.Context, tags []string, since int64, ttl time.Duration) (out []envelope.Tag, rowVers []string, stale bool, err error) {
	if len(tags) == 0 {
		return nil, nil, false, nil
	}
	out, rowVers = make([]envelope.Tag, len(tags)), make([]string, len(tags))
	if s.local != nil {
		out, stale, err = s.local.read(tags, since)
		return out, rowVers, stale, err
	}
	tks := make([]string, len(tags))
	kk := make([][]string, len(tags))
	args := make([][]any, len(tags))
	for i, t := range tags {
		tks[i] = s.layout.Tag(t)
		kk[i] = []string{tks[i], tks[i] + ":ver"}
		args[i] = []any{ms(ttl)}
	}
	created := make([]bool, len(tags))
	if _, err = s.callKeys(ctx, "tag_read", s.writeBy(), tks, func(ctx context.Context, idx []int) error {
		cmds, err := s.runScript(ctx, keys.TagRead, pick(kk, idx), pick(args, idx))
		if err != nil {
			return err
		}
		for n, cmd := range cmds {
			vals, err := cmd.Slice()
			if err != nil || len(vals) != 3 {
				return fmt.Errorf("tag_read: unexpected reply %v: %w", cmd.Val(), err)
			}
			v, err := parseVersion(vals[0])
			if err != nil {
				return err
			}
			i := idx[n]
			out[i] = envelope.Tag{Name: tags[i], Version: v}
			isNew, _ := vals[1].(int64)
			created[i] = isNew == 1
			rowVers[i], _ = vals[2].(string)
		}
		return nil
	}); err != nil {
		return nil, nil, false, err
	}
	anyNew := false
	for i, t := range out {
		if created[i] {
			anyNew = true
		} else if since > 0 && int64(t.Version) > since {
			return out, rowVers, true, nil
		}
	}
	if since == 0 || !anyNew {
		return out, rowVers, false, nil
	}
	var floor string
	fk := s.layout.TagFloor()
	err = s.call(ctx, s.nodeOf(ctx, fk), "tag_read", s.writeBy(), func(ctx context.Context) error {
		var err error
		floor, err = keys.TagFloor.Run(ctx, s.rdb, []string{fk}, "0").Text()
		return err
	})
	if err != nil {
		return nil, nil, false, err
	}
	f, err := strconv.ParseInt(floor, 10, 64)
	if err != nil {
		return nil, nil, false, fmt.Errorf("tag floor %q: %w", floor, err)
	}
	return out, rowVers, f > since, nil
}

// tagBump invalidates tags and returns their new versions. The namespace's
// floor goes first (see tagRead), then each tag's version.
func (s *store) tagBump(ctx context.Context, tags []string, keep time.Duration, version uint64) ([]envelope.Tag, error) {
	if s.local != nil {
		return s.local.bump(tags), nil
	}
	fk := s.layout.TagFloor()
	if err := s.call(ctx, s.nodeOf(ctx, fk), "tag_bump", s.writeBy(), func(ctx context.Context) error {
		return keys.TagFloor.Run(ctx, s.rdb, []string{fk}, "1").Err()
	}); err != nil {
		return nil, err
	}
	out := make([]envelope.Tag, len(tags))
	tks := make([]string, len(tags))
	kk := make([][]string, len(tags))
	args := make([][]any, len(tags))
	ver, verTTL := s.versionArgs(version, keep)
	for i, t := range tags {
		tks[i] = s.layout.Tag(t)
		kk[i] = []string{tks[i], tks[i] + ":ver"}
		args[i] = []any{ms(keep), ver, verTTL}
	}
	_, err := s.callKeys(ctx, "tag_bump", s.writeBy(), tks, func(ctx context.Context, idx []int) error {
		cmds, err := s.runScript(ctx, keys.TagBump, pick(kk, idx), pick(args, idx))
		if err != nil {
			return err
		}
		for n, cmd := range cmds {
			v, err := parseVersion(cmd.Val())
			if err != nil {
				return err
			}
			out[idx[n]] = envelope.Tag{Name: tags[idx[n]], Version: v}
		}
		return nil
	})
	return out, err
}

// tagGet reads the current versions of tags (have[i] false: absent, or its
// node failed; err is the first failure).
func (s *store) tagGet(ctx context.Context, tags []string) (cur []uint64, have []bool, err error) {
	cur, have = make([]uint64, len(tags)), make([]bool, len(tags))
	if s.local != nil {
		out, _, _ := s.local.read(tags, 0)
		for i, t := range out {
			cur[i], have[i] = t.Version, true
		}
		return cur, have, nil
	}
	tks := make([]string, len(tags))
	for i, t := range tags {
		tks[i] = s.layout.Tag(t)
	}
	_, err = s.callKeys(ctx, "tag_get", s.readBy(), tks, func(ctx context.Context, idx []int) error {
		cmds := make([]*redis.StringCmd, len(idx))
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for n, i := range idx {
				cmds[n] = p.Get(ctx, tks[i])
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for n, cmd := range cmds {
			if err := cmd.Err(); err != nil {
				if errors.Is(err, redis.Nil) {
					continue
				}
				return err
			}
			// Bytes that are not a version (written by someone else) make
			// the tag unknown, and its values misses: not a Redis fault.
			if v, err := cmd.Uint64(); err == nil {
				cur[idx[n]], have[idx[n]] = v, true
			}
		}
		return nil
	})
	return cur, have, err
}

func parseVersion(v any) (uint64, error) {
	switch v := v.(type) {
	case string:
		return strconv.ParseUint(v, 10, 64)
	case int64:
		return uint64(v), nil
	}
	return 0, fmt.Errorf("tag version: unexpected reply %v", v)
}

// ms is d in whole milliseconds for a Redis PX argument, at least 1.
func ms(d time.Duration) int64 { return max(d.Milliseconds(), 1) }

// localState is what an L1-only cache keeps instead of Redis: the tag
// versions (a version only grows: max(old+1, now)), at most maxLocalTags of
// them, and a floor as in Redis (the time of the latest invalidation) that
// judges a tag read anew after the table was dropped for size.
type localState struct {
	mu    sync.Mutex
	tags  map[string]uint64
	floor uint64
}

const maxLocalTags = 100_000

// read returns the versions of tags, creating absent ones at now; stale is
// whether one is newer than since (a load that began before an
// invalidation).
func (l *localState) read(tags []string, since int64) (out []envelope.Tag, stale bool, err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	out = make([]envelope.Tag, len(tags))
	for i, t := range tags {
		v, ok := l.tags[t]
		if !ok {
			if len(l.tags) >= maxLocalTags {
				clear(l.tags) // the floor keeps what the dropped versions said
			}
			v = uint64(nowMicro())
			l.tags[t] = v
		}
		out[i] = envelope.Tag{Name: t, Version: v}
		if since > 0 && (ok && v > uint64(since) || !ok && l.floor > uint64(since)) {
			stale = true
		}
	}
	return out, stale, nil
}

func (l *localState) bump(tags []string) []envelope.Tag {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]envelope.Tag, len(tags))
	for i, t := range tags {
		v := max(l.tags[t]+1, uint64(nowMicro()))
		l.tags[t], l.floor = v, max(l.floor, v)
		out[i] = envelope.Tag{Name: t, Version: v}
	}
	return out
}

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
	rdb    redis.UniversalClient
	layout keys.Layout
	brk    *breaker   // nil with WithoutBreaker
	coal   *coalescer // nil with WithoutReadCoalescing
	rec    *recorder
	log    *slog.Logger
	single bool // rdb is one node: a batch read is MGET

	readTimeout, writeTimeout, leaseTTL time.Duration

	// life ends when the cache is closed. Lease releases outlive it by at
	// most one attempt each (see release).
	life context.Context

	releases        sync.WaitGroup // lease releases in the background
	pendingReleases atomic.Int64
	// lastReload is when a cluster client was last told to reload its slot
	// map (Unix ns); see reloadClusterState.
	lastReload atomic.Int64
}

func newStore(rdb redis.UniversalClient, cfg *config, rec *recorder, log *slog.Logger, life context.Context, onBreaker func(from, to BreakerState)) *store {
	s := &store{
		rdb: rdb, layout: keys.New(cfg.prefix, cfg.version), rec: rec, log: log, life: life,
		readTimeout: cfg.readTimeout, writeTimeout: cfg.writeTimeout, leaseTTL: cfg.leaseTTL,
	}
	_, s.single = rdb.(*redis.Client)
	if cfg.breakerOn {
		s.brk = newBreaker(cfg.breaker, onBreaker)
	}
	if cfg.coalesceReads {
		s.coal = newCoalescer(cfg.readTimeout, s.fetchReads)
	}
	return s
}

// call runs one Redis round trip under the breaker, done by deadline, and
// counts it. A call the breaker refuses fails at once with errBreakerOpen.
// redis.Nil (an absent key) is not an error.
func (s *store) call(ctx context.Context, op string, deadline time.Time, fn func(context.Context) error) error {
	var done func(error)
	if s.brk != nil {
		var ok bool
		if done, ok = s.brk.begin(); !ok {
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
	if s.brk != nil {
		s.brk.end(done, err)
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

func (s *store) read(ctx context.Context, op string, fn func(context.Context) error) error {
	return s.call(ctx, op, time.Now().Add(s.readTimeout), fn)
}

func (s *store) write(ctx context.Context, op string, fn func(context.Context) error) error {
	return s.call(ctx, op, time.Now().Add(s.writeTimeout), fn)
}

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
	if s.coal != nil {
		return s.coal.get(ctx, vk)
	}
	return s.getOne(ctx, time.Now().Add(s.readTimeout), vk)
}

// getOne is one GET of vk, done by deadline.
func (s *store) getOne(ctx context.Context, deadline time.Time, vk string) (b []byte, err error) {
	err = s.call(ctx, "get", deadline, func(ctx context.Context) error {
		v, err := s.rdb.Get(ctx, vk).Result()
		b = unsafeBytes(v)
		return err
	})
	return b, err
}

// fetchReads is the coalescer's round trip: GET for a lone read, else mget.
func (s *store) fetchReads(ctx context.Context, deadline time.Time, vks []string, raw [][]byte) error {
	if len(vks) == 1 {
		var err error
		raw[0], err = s.getOne(ctx, deadline, vks[0])
		return err
	}
	err := s.call(ctx, "mget", deadline, func(ctx context.Context) error { return s.mget(ctx, vks, raw) })
	if !errors.Is(err, errBreakerOpen) {
		s.rec.eventN(EventReadBatched, len(vks))
	}
	return err
}

// getMany reads vks in one round trip per node (nil for absent keys).
func (s *store) getMany(ctx context.Context, vks []string) ([][]byte, error) {
	raw := make([][]byte, len(vks))
	err := s.read(ctx, "mget", func(ctx context.Context) error { return s.mget(ctx, vks, raw) })
	return raw, err
}

// maxBatchCommand bounds the keys of one MGET; a larger batch is split into
// several commands, still sent in one round trip.
const maxBatchCommand = 512

// mget reads vks into raw: MGETs of at most maxBatchCommand keys on a
// single node, GETs on a cluster (no command spans two slots). A command
// that failed on one node fails the read: its keys are not misses.
func (s *store) mget(ctx context.Context, vks []string, raw [][]byte) error {
	if s.single {
		var cmds []*redis.SliceCmd
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := 0; i < len(vks); i += maxBatchCommand {
				cmds = append(cmds, p.MGet(ctx, vks[i:min(i+maxBatchCommand, len(vks))]...))
			}
			return nil
		})
		if err != nil {
			return err
		}
		i := 0
		for _, cmd := range cmds {
			for _, v := range cmd.Val() {
				if v, ok := v.(string); ok {
					raw[i] = unsafeBytes(v)
				}
				i++
			}
		}
		return nil
	}
	cmds := make([]*redis.StringCmd, len(vks))
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, vk := range vks {
			cmds[i] = p.Get(ctx, vk)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for i, cmd := range cmds {
		v, err := cmd.Result()
		switch {
		case err == nil:
			raw[i] = unsafeBytes(v)
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
}

type acquireResult struct {
	state    int64
	value    []byte // nil when absent
	leaseTTL time.Duration
	at       int64 // server time when the lease was taken (Unix µs), 0 for a fresh value
}

// acquire runs the Acquire script for each request, in one round trip per
// node: the value if fresh, else the lease if free.
func (s *store) acquire(ctx context.Context, reqs []acquireReq) ([]acquireResult, error) {
	out := make([]acquireResult, len(reqs))
	kk := make([][]string, len(reqs))
	args := make([][]any, len(reqs))
	now := nowMicro()
	for i, r := range reqs {
		kk[i] = []string{r.vk, keys.Lease(r.vk)}
		force := "0"
		if r.force {
			force = "1"
		}
		args[i] = []any{r.token, s.leaseTTL.Milliseconds(), now, force, strconv.FormatInt(r.notBefore, 10)}
	}
	err := s.read(ctx, op("acquire", len(reqs)), func(ctx context.Context) error {
		cmds, err := s.runScript(ctx, keys.Acquire, kk, args)
		if err != nil {
			return err
		}
		for i, cmd := range cmds {
			if out[i], err = parseAcquire(cmd); err != nil {
				return err
			}
		}
		return nil
	})
	return out, err
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
// fill (a compare-and-set on the lease); without, a plain SET.
type frameWrite struct {
	vk, token string
	frame     []byte
	ttl       time.Duration
}

// fill writes loaded values, in one round trip per node, and reports which
// were written and which refused (a leased fill whose lease is gone);
// neither, when its command failed. A cache's fills are all leased or all
// unleased (WithoutLease: written through as Set writes, all or none).
func (s *store) fill(ctx context.Context, ws []frameWrite) (written, refused []bool, err error) {
	written, refused = make([]bool, len(ws)), make([]bool, len(ws))
	if ws[0].token == "" {
		err := s.set(ctx, ws)
		for i := range written {
			written[i] = err == nil
		}
		return written, refused, err
	}
	kk := make([][]string, len(ws))
	args := make([][]any, len(ws))
	for i, w := range ws {
		kk[i] = []string{w.vk, keys.Lease(w.vk)}
		args[i] = []any{w.token, w.frame, ms(w.ttl)}
	}
	err = s.write(ctx, op("fill", len(ws)), func(ctx context.Context) error {
		cmds, err := s.runScript(ctx, keys.Fill, kk, args)
		for i, cmd := range cmds {
			n, cerr := cmd.Int64()
			written[i], refused[i] = cerr == nil && n == 1, cerr == nil && n == 0
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
	if len(ls) == 0 {
		return
	}
	if s.pendingReleases.Add(1) > maxPendingReleases {
		s.pendingReleases.Add(-1)
		return
	}
	kk := make([][]string, len(ls))
	args := make([][]any, len(ls))
	for i, l := range ls {
		kk[i] = []string{keys.Lease(l.vk)}
		args[i] = []any{l.token}
	}
	s.releases.Add(1)
	go func() {
		defer s.releases.Done()
		defer s.pendingReleases.Add(-1)
		deadline := time.Now().Add(s.leaseTTL)
		for {
			closing := s.life.Err() != nil
			// Not on life: a release must outlive Close by one attempt.
			err := s.write(context.Background(), op("release", len(ls)), func(ctx context.Context) error {
				_, err := s.runScript(ctx, keys.Release, kk, args)
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
// value), in one round trip per node. On an error some frames may have been
// written.
func (s *store) set(ctx context.Context, ws []frameWrite) error {
	kk := make([][]string, len(ws))
	args := make([][]any, len(ws))
	for i, w := range ws {
		kk[i] = []string{w.vk, keys.Lease(w.vk)}
		args[i] = []any{w.frame, ms(w.ttl)}
	}
	return s.write(ctx, op("set", len(ws)), func(ctx context.Context) error {
		_, err := s.runScript(ctx, keys.Set, kk, args)
		return err
	})
}

// del deletes the value and the lease of each value key: one DEL per key
// (the two share a slot), in one round trip per node.
func (s *store) del(ctx context.Context, vks []string) error {
	return s.write(ctx, "del", func(ctx context.Context) error {
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, vk := range vks {
				p.Del(ctx, vk, keys.Lease(vk))
			}
			return nil
		})
		return err
	})
}

// publish sends one invalidation message.
func (s *store) publish(ctx context.Context, channel string, msg []byte) error {
	return s.write(ctx, "publish", func(ctx context.Context) error {
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
func (s *store) tagRead(ctx context.Context, tags []string, since int64, ttl time.Duration) (out []envelope.Tag, stale bool, err error) {
	if len(tags) == 0 {
		return nil, false, nil
	}
	out = make([]envelope.Tag, len(tags))
	kk := make([][]string, len(tags))
	args := make([][]any, len(tags))
	for i, t := range tags {
		kk[i] = []string{s.layout.Tag(t)}
		args[i] = []any{ms(ttl)}
	}
	err = s.write(ctx, "tag_read", func(ctx context.Context) error {
		cmds, err := s.runScript(ctx, keys.TagRead, kk, args)
		if err != nil {
			return err
		}
		created := false
		for i, cmd := range cmds {
			vals, err := cmd.Slice()
			if err != nil || len(vals) != 2 {
				return fmt.Errorf("tag_read: unexpected reply %v: %w", cmd.Val(), err)
			}
			v, err := parseVersion(vals[0])
			if err != nil {
				return err
			}
			out[i] = envelope.Tag{Name: tags[i], Version: v}
			if isNew, _ := vals[1].(int64); isNew == 1 {
				created = true
			} else if since > 0 && int64(v) > since {
				stale = true
			}
		}
		if since == 0 || stale || !created {
			return nil
		}
		floor, err := keys.TagFloor.Run(ctx, s.rdb, []string{s.layout.TagFloor()}, "0").Text()
		if err != nil {
			return err
		}
		f, err := strconv.ParseInt(floor, 10, 64)
		if err != nil {
			return fmt.Errorf("tag floor %q: %w", floor, err)
		}
		stale = f > since
		return nil
	})
	return out, stale, err
}

// tagBump invalidates tags and returns their new versions. The namespace's
// floor goes first (see tagRead), then each tag's version.
func (s *store) tagBump(ctx context.Context, tags []string, keep time.Duration) ([]envelope.Tag, error) {
	out := make([]envelope.Tag, len(tags))
	kk := make([][]string, len(tags))
	args := make([][]any, len(tags))
	for i, t := range tags {
		kk[i] = []string{s.layout.Tag(t)}
		args[i] = []any{ms(keep)}
	}
	err := s.write(ctx, "tag_bump", func(ctx context.Context) error {
		if err := keys.TagFloor.Run(ctx, s.rdb, []string{s.layout.TagFloor()}, "1").Err(); err != nil {
			return err
		}
		cmds, err := s.runScript(ctx, keys.TagBump, kk, args)
		if err != nil {
			return err
		}
		for i, cmd := range cmds {
			v, err := parseVersion(cmd.Val())
			if err != nil {
				return err
			}
			out[i] = envelope.Tag{Name: tags[i], Version: v}
		}
		return nil
	})
	return out, err
}

// tagGet reads the current versions of tags (have[i] false: absent).
func (s *store) tagGet(ctx context.Context, tags []string) (cur []uint64, have []bool, err error) {
	cur, have = make([]uint64, len(tags)), make([]bool, len(tags))
	err = s.read(ctx, "tag_get", func(ctx context.Context) error {
		cmds := make([]*redis.StringCmd, len(tags))
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, t := range tags {
				cmds[i] = p.Get(ctx, s.layout.Tag(t))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for i, cmd := range cmds {
			if err := cmd.Err(); err != nil {
				if errors.Is(err, redis.Nil) {
					continue
				}
				return err
			}
			// Bytes that are not a version (written by someone else) make
			// the tag unknown, and its values misses: not a Redis fault.
			if v, err := cmd.Uint64(); err == nil {
				cur[i], have[i] = v, true
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

package tiercache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/flight"
	"github.com/tiercache/tiercache/internal/keys"
)

// BatchLoadFunc loads the values of keys from the source of truth, in one
// call. It returns the values it found; a key it does not return is cached
// as not found (for the negative TTL). Keys it returns that were not asked
// for are ignored. Like [LoadFunc], it runs on a context detached from the
// callers, bounded by the load timeout, and may call [LoadOptions].
type BatchLoadFunc[V any] func(ctx context.Context, keys []string) (map[string]V, error)

// maxBatchCommand bounds the keys of one MGET; a larger batch is split into
// several commands, still sent in one round trip.
const maxBatchCommand = 512

// GetMany returns the fresh cached values of keys, from L1 and then Redis in
// one round trip per Redis node (MGET on a single node; a pipeline of GETs
// grouped by node on a cluster, so it never fails with CROSSSLOT). Keys that
// are not cached, expired or cached as not found are absent from the map;
// duplicates are read once. A Redis failure returns the values found in L1
// and an error wrapping [ErrMiss] and [ErrRedis].
func (c *Cache[V]) GetMany(ctx context.Context, keys []string) (map[string]V, error) {
	uniq, err := c.checkKeys(keys)
	if err != nil {
		return nil, err
	}
	out := make(map[string]V, len(uniq))
	rest := c.manyFromL1(uniq, out, nil)
	if len(rest) == 0 {
		return out, nil
	}
	es, found, err := c.getManyL2(ctx, rest)
	if err != nil {
		return out, fmt.Errorf("%w: %w", ErrMiss, err)
	}
	now := nowMicro()
	for i, k := range rest {
		if found[i] && es[i].fresh(now) && !es[i].neg {
			out[k] = es[i].val
		}
	}
	return out, nil
}

// GetOrLoadMany returns the values of keys: from L1, then from Redis in one
// round trip per node, then from one call of load with only the keys still
// missing, whose results are written back in one pipelined round trip
// (through the lease, as [Cache.GetOrLoad] does for one key). Keys that load
// does not return are cached as not found and are absent from the map, as
// are keys already cached as not found.
//
// Keys that another call in this process is loading (a GetOrLoad or another
// batch) are waited for, not loaded again. A loader error is returned with
// the values found so far; nothing from the failed load is cached.
func (c *Cache[V]) GetOrLoadMany(ctx context.Context, keys []string, load BatchLoadFunc[V]) (map[string]V, error) {
	if load == nil {
		return nil, ErrNilLoader
	}
	uniq, err := c.checkKeys(keys)
	if err != nil {
		return nil, err
	}
	out := make(map[string]V, len(uniq))
	rest := c.manyFromL1(uniq, out, load)
	if len(rest) == 0 {
		return out, nil
	}
	var missing []string
	es, found, err := c.getManyL2(ctx, rest)
	if err != nil {
		if ctx.Err() != nil {
			return out, ctx.Err()
		}
		missing = rest // Redis is sick: load them all (loadBatch will not cache)
	} else {
		now := nowMicro()
		for i, k := range rest {
			e := &es[i]
			switch {
			case found[i] && e.fresh(now):
				if !e.neg {
					out[k] = e.val
				}
				if c.wantEarlyRefresh(e, now) {
					c.refreshAsync(k, singleLoad(k, load), e.writtenAt, true)
				}
			case found[i] && c.withinSWR(e, now):
				c.rec.event(EventStaleServed)
				c.refreshAsync(k, singleLoad(k, load), e.writtenAt, false)
				if !e.neg {
					out[k] = e.val
				}
			default:
				missing = append(missing, k)
			}
		}
	}
	if len(missing) == 0 {
		return out, nil
	}
	return out, c.loadMany(ctx, missing, load, out)
}

// loadMany claims the flights of missing: it leads those nobody in this
// process is loading, in one background batch, and waits for all of them.
func (c *Cache[V]) loadMany(ctx context.Context, missing []string, load BatchLoadFunc[V], out map[string]V) error {
	calls := make([]*flight.Call[entry[V]], len(missing))
	var lead []string
	var leadCalls []*flight.Call[entry[V]]
	for i, k := range missing {
		call, leader := c.flight.Begin(k)
		calls[i] = call
		if leader {
			lead = append(lead, k)
			leadCalls = append(leadCalls, call)
		} else {
			c.rec.event(EventCoalesced)
		}
	}
	if len(lead) > 0 {
		if !c.goBackground() {
			for i, k := range lead {
				c.flight.End(k, leadCalls[i], entry[V]{}, ErrClosed)
			}
		} else {
			go func() {
				defer c.bg.Done()
				res := c.runBatchDetached(ctx, lead, load)
				for i, k := range lead {
					c.flight.End(k, leadCalls[i], res[i].e, res[i].err)
				}
			}()
		}
	}
	var firstErr error
	for i, k := range missing {
		e, err := calls[i].Wait(ctx)
		switch {
		case err == nil:
			if !e.neg {
				out[k] = e.val
			}
		case errors.Is(err, ErrNotFound):
		case ctx.Err() != nil:
			return ctx.Err()
		case firstErr == nil:
			firstErr = err
		}
	}
	return firstErr
}

// keyResult is the outcome of one key of a batch load.
type keyResult[V any] struct {
	e   entry[V]
	err error
}

// runBatchDetached runs loadBatch on a detached context; a panic becomes a
// *PanicError for every key.
func (c *Cache[V]) runBatchDetached(parent context.Context, lead []string, load BatchLoadFunc[V]) (res []keyResult[V]) {
	ctx, cancel := c.detached(parent)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			perr, ok := p.(*PanicError) // re-raised by callLoader
			if !ok {
				perr = &PanicError{Value: p, Stack: stack()}
			}
			res = make([]keyResult[V], len(lead))
			for i := range res {
				res[i].err = perr
			}
		}
	}()
	return c.loadBatch(ctx, lead, load)
}

// loadBatch loads keys through the lease: one pipelined Acquire per round
// for the keys still pending, one loader call for the leases won, one
// pipelined Fill; keys leased by another instance are polled until filled
// or their lease can be taken over. Without a lease, or when Redis fails,
// it loads all keys in one call (and caches them only when Redis works).
func (c *Cache[V]) loadBatch(ctx context.Context, ks []string, load BatchLoadFunc[V]) []keyResult[V] {
	res := make([]keyResult[V], len(ks))
	idx := make(map[string]int, len(ks))
	for i, k := range ks {
		idx[k] = i
	}
	if !c.cfg.lease {
		c.loadAndFillMany(ctx, ks, nil, nil, load, res, idx, true, nowMicro())
		return res
	}
	pending := ks
	tokens := make(map[string]string, len(ks))
	forced := map[string]int64{} // keys whose stored bytes do not decode
	wait := leaseBackoff{}
	for len(pending) > 0 {
		acq, err := c.acquireMany(ctx, pending, tokens, forced)
		if err != nil {
			c.releaseMany(pending, tokens) // the leases may have been taken
			if ctx.Err() != nil {
				for _, k := range pending {
					res[idx[k]].err = ctx.Err()
				}
				return res
			}
			c.loadAndFillMany(ctx, pending, nil, nil, load, res, idx, false, 0)
			return res
		}
		var owned, busy []string
		var stale []*entry[V]
		now := nowMicro()
		var leaseLeft time.Duration
		var since int64 // the earliest time a lease of this round was taken
		es := make([]entry[V], len(pending))
		found := make([]bool, len(pending))
		var tagged []int
		for i, k := range pending {
			found[i] = c.decodeStored(k, c.layout.Value(k), acq[i].value, &es[i])
			if found[i] && len(es[i].tags) > 0 {
				tagged = append(tagged, i)
			}
		}
		if len(tagged) > 0 {
			ptrs := make([]*entry[V], len(tagged))
			for j, i := range tagged {
				ptrs[j] = &es[i]
			}
			for j, ok := range c.validTags(ctx, ptrs) {
				found[tagged[j]] = ok
			}
		}
		for i, k := range pending {
			e, found := es[i], found[i]
			switch {
			case acq[i].state == acquireFresh && !found:
				// Fresh by its header but undecodable: take the lease
				// regardless next round; a value written from now on ends it.
				forced[k] = 0 // pure force: the header's write time may be garbage too
				busy = append(busy, k)
			case acq[i].state == acquireFresh && found:
				res[idx[k]].e = e
				c.rec.event(EventLeaseWait)
			case acq[i].state == acquireOwned:
				owned = append(owned, k)
				if since == 0 || acq[i].at < since {
					since = acq[i].at
				}
				if found {
					stale = append(stale, &e)
				} else {
					stale = append(stale, nil)
				}
			case found && c.withinSWR(&e, now):
				c.rec.event(EventStaleServed)
				res[idx[k]].e = e
			default:
				// Held by another instance: poll until it fills, or its
				// lease expires and the next Acquire takes it over.
				busy = append(busy, k)
				leaseLeft = max(leaseLeft, acq[i].leaseTTL)
			}
		}
		if len(owned) > 0 {
			c.loadAndFillMany(ctx, owned, stale, tokens, load, res, idx, true, since)
		}
		pending = busy
		if len(pending) > 0 && c.waitedTooLong(ctx) {
			c.loadAndFillMany(ctx, pending, nil, nil, load, res, idx, false, 0)
			return res
		}
		if len(pending) > 0 {
			if err := wait.sleep(ctx, leaseLeft); err != nil {
				for _, k := range pending {
					res[idx[k]].err = err
				}
				return res
			}
		}
	}
	return res
}

// loadAndFillMany calls the batch loader for ks and caches the results
// (when cache is true): with tokens, a Fill per key; without, a plain SET.
// stale[i], when set, is served for ks[i] if the loader fails within the
// stale-if-error window. since is when the load began (see loadAndFill).
func (c *Cache[V]) loadAndFillMany(ctx context.Context, ks []string, stale []*entry[V], tokens map[string]string,
	load BatchLoadFunc[V], res []keyResult[V], idx map[string]int, cache bool, since int64) {
	meta := &loadMeta{cfg: setConfig{ttl: c.cfg.ttl}}
	vals, delta, err := callLoader(c, ctx, meta, "load_many", func(ctx context.Context) (map[string]V, error) { return load(ctx, ks) }, func() {
		if tokens != nil {
			c.releaseMany(ks, tokens)
		}
	})
	if err != nil {
		if tokens != nil {
			c.releaseMany(ks, tokens)
		}
		now := nowMicro()
		for i, k := range ks {
			if stale != nil && stale[i] != nil && c.withinSIE(stale[i], now) {
				c.rec.event(EventStaleOnError)
				res[idx[k]].e = *stale[i]
				continue
			}
			res[idx[k]].err = err
		}
		if c.cfg.sie > 0 {
			c.log.Warn("tiercache: batch loader failed", "keys", len(ks), "err", err)
		}
		return
	}
	sc := meta.get()
	now := time.Now()
	type write struct {
		key, vk string
		frame   []byte
		ttl     time.Duration
	}
	// Tags a batch loader sets apply to every value it returns; their
	// versions are read once, with the longest TTL the values may get.
	var tags []envelope.Tag
	if cache && !sc.noCache {
		names, err := checkTags(sc.tags)
		stale := false
		if err == nil {
			tags, stale, err = c.readTagVersions(ctx, names, since, c.redisTTL(max(sc.ttl, c.cfg.negativeTTL)+time.Duration(float64(max(sc.ttl, c.cfg.negativeTTL))*c.cfg.jitter)))
		}
		if err != nil || stale {
			if stale {
				c.rec.event(EventFillRefused)
			}
			cache = false
		}
	}
	writes := make([]write, 0, len(ks))
	for _, k := range ks {
		v, ok := vals[k]
		ttl := sc.ttl
		if !ok {
			ttl = c.cfg.negativeTTL
		}
		e := entry[V]{val: v, neg: !ok, writtenAt: now.UnixMicro(), delta: uint32(min(delta.Microseconds(), 1<<32-1))}
		e.softExp = now.UnixMicro()
		if cache && ttl > 0 && !sc.noCache {
			softExp := now.Add(c.jitter(ttl))
			e.softExp = softExp.UnixMicro()
			vk := c.layout.Value(k)
			if b, err := c.vc.encode(v, !ok, keys.Hash(vk), now, softExp, delta, tags); err == nil {
				e.size = len(b)
				e.tags = tags
				writes = append(writes, write{key: k, vk: vk, frame: b, ttl: c.redisTTL(softExp.Sub(now))})
			} else {
				c.log.Warn("tiercache: loaded value not cached", "key", k, "err", err)
			}
		}
		res[idx[k]].e = e
	}
	if len(writes) == 0 {
		if tokens != nil {
			c.releaseMany(ks, tokens)
		}
		return
	}
	toks := make([]fillToken, len(writes))
	if c.l1 != nil {
		for i, w := range writes {
			toks[i] = c.l1.token(w.key)
		}
	}
	written := make([]bool, len(writes))
	err = c.call(ctx, "fill_many", c.cfg.writeTimeout, func(ctx context.Context) error {
		if tokens == nil {
			_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
				for _, w := range writes {
					p.Set(ctx, w.vk, w.frame, w.ttl)
				}
				return nil
			})
			for i := range written {
				written[i] = err == nil
			}
			return err
		}
		calls := make([][]any, len(writes))
		ks := make([][]string, len(writes))
		for i, w := range writes {
			ks[i] = []string{w.vk, keys.Lease(w.vk)}
			calls[i] = []any{tokens[w.key], w.frame, w.ttl.Milliseconds()}
		}
		cmds, err := c.runScript(ctx, keys.Fill, ks, calls)
		for i, cmd := range cmds {
			n, _ := cmd.Int64()
			written[i] = n == 1
		}
		return err
	})
	if err != nil {
		c.log.Debug("tiercache: batch fill failed", "keys", len(writes), "err", err)
	}
	nowU := now.UnixMicro()
	if c.tagv != nil && len(tags) > 0 {
		c.tagv.observe(tags)
	}
	for i, w := range writes {
		if !written[i] {
			if err == nil {
				c.rec.event(EventFillRefused)
			}
			continue
		}
		if c.l1 != nil {
			c.l1.fill(w.key, toks[i], res[idx[w.key]].e, nowU, c.limitL1())
		}
	}
}

// singleLoad adapts a batch loader to one key, for background refreshes.
func singleLoad[V any](key string, load BatchLoadFunc[V]) LoadFunc[V] {
	return func(ctx context.Context) (V, error) {
		vals, err := load(ctx, []string{key})
		if err != nil {
			var zero V
			return zero, err
		}
		v, ok := vals[key]
		if !ok {
			return v, ErrNotFound
		}
		return v, nil
	}
}

// SetMany writes items in Redis, in one round trip per node, and in this
// instance's L1, and tells the other instances to drop them from theirs in
// one message. Like [Cache.Set] it removes the keys' leases first, so that
// loads in flight cannot overwrite the new values. On a Redis failure the
// local L1 copies are dropped and the error (wrapping [ErrRedis]) returned;
// some items may have been written: retry, or Delete them.
func (c *Cache[V]) SetMany(ctx context.Context, items map[string]V, opts ...SetOption) error {
	if c.closed.Load() {
		return ErrClosed
	}
	sc := setConfig{ttl: c.cfg.ttl}
	for _, o := range opts {
		o(&sc)
	}
	if sc.ttl <= 0 {
		return fmt.Errorf("%w: TTL %v must be positive", ErrInvalidOption, sc.ttl)
	}
	type write struct {
		key, vk string
		frame   []byte
		e       entry[V]
		ttl     time.Duration
	}
	now := time.Now()
	tagNames, err := checkTags(sc.tags)
	if err != nil {
		return err
	}
	// The tags' keys must outlive the longest jittered TTL of the items.
	tags, _, err := c.readTagVersions(ctx, tagNames, 0, c.redisTTL(sc.ttl+time.Duration(float64(sc.ttl)*c.cfg.jitter)))
	if err != nil {
		return err
	}
	writes := make([]write, 0, len(items))
	for k, v := range items {
		if k == "" {
			return ErrInvalidKey
		}
		vk := c.layout.Value(k)
		softExp := now.Add(c.jitter(sc.ttl))
		b, err := c.vc.encode(v, false, keys.Hash(vk), now, softExp, 0, tags)
		if err != nil {
			return fmt.Errorf("key %q: %w", k, err)
		}
		writes = append(writes, write{key: k, vk: vk, frame: b, ttl: c.redisTTL(softExp.Sub(now)),
			e: entry[V]{val: v, writtenAt: now.UnixMicro(), softExp: softExp.UnixMicro(), size: len(b), tags: tags}})
	}
	if len(writes) == 0 {
		return nil
	}
	err = c.call(ctx, "set_many", c.cfg.writeTimeout, func(ctx context.Context) error {
		// Per key, the lease goes before the value is written: a Fill that
		// runs in between finds no lease and is refused, and one that ran
		// before is overwritten. Same connection, so in this order.
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, w := range writes {
				p.Del(ctx, keys.Lease(w.vk))
				p.Set(ctx, w.vk, w.frame, w.ttl)
			}
			return nil
		})
		return err
	})
	ks := make([]string, len(writes))
	if err == nil && c.tagv != nil {
		c.tagv.observe(tags)
	}
	for i, w := range writes {
		ks[i] = w.key
		c.flight.Forget(w.key)
		if c.l1 == nil {
			continue
		}
		if err != nil {
			c.l1.invalidate(w.key)
		} else {
			c.l1.set(w.key, w.e, now.UnixMicro(), c.limitL1())
		}
	}
	if err != nil {
		return err
	}
	return c.broadcast(ctx, ks...)
}

// checkKeys validates keys and drops duplicates, keeping the first order.
func (c *Cache[V]) checkKeys(ks []string) ([]string, error) {
	if c.closed.Load() {
		return nil, ErrClosed
	}
	seen := make(map[string]struct{}, len(ks))
	uniq := make([]string, 0, len(ks))
	for _, k := range ks {
		if k == "" {
			return nil, ErrInvalidKey
		}
		if _, dup := seen[k]; !dup {
			seen[k] = struct{}{}
			uniq = append(uniq, k)
		}
	}
	return uniq, nil
}

// manyFromL1 moves the L1 hits of ks into out and returns the keys left.
// With a loader, hits near expiry may start an early refresh.
func (c *Cache[V]) manyFromL1(ks []string, out map[string]V, load BatchLoadFunc[V]) []string {
	if c.l1 == nil {
		return ks
	}
	rest := ks[:0:0]
	for _, k := range ks {
		e, ok := c.getL1(k)
		if !ok {
			rest = append(rest, k)
			continue
		}
		if !e.neg {
			out[k] = e.val
		}
		if load != nil && c.wantEarlyRefresh(e, c.l1.now()) {
			c.refreshAsync(k, singleLoad(k, load), e.writtenAt, true)
		}
	}
	return rest
}

// getManyL2 reads ks from Redis in one round trip per node and decodes
// them; fresh values fill L1.
func (c *Cache[V]) getManyL2(ctx context.Context, ks []string) ([]entry[V], []bool, error) {
	vks := make([]string, len(ks))
	for i, k := range ks {
		vks[i] = c.layout.Value(k)
	}
	var toks []fillToken
	if c.l1 != nil {
		toks = make([]fillToken, len(ks))
		for i, k := range ks {
			toks[i] = c.l1.token(k)
		}
	}
	start := c.rec.now()
	raw := make([][]byte, len(ks))
	err := c.call(ctx, "mget", c.cfg.readTimeout, func(ctx context.Context) error {
		return c.mget(ctx, vks, raw)
	})
	if err != nil {
		if !errors.Is(err, errBreakerOpen) { // a bypassed Redis was not asked
			for range ks {
				c.rec.lookupL2(false, start)
			}
		}
		return nil, nil, err
	}
	es := make([]entry[V], len(ks))
	found := make([]bool, len(ks))
	var tagged []*entry[V]
	var taggedAt []int
	for i, k := range ks {
		found[i] = c.decodeStored(k, vks[i], raw[i], &es[i])
		if found[i] && len(es[i].tags) > 0 {
			tagged = append(tagged, &es[i])
			taggedAt = append(taggedAt, i)
		}
	}
	if len(tagged) > 0 {
		for j, ok := range c.validTags(ctx, tagged) {
			found[taggedAt[j]] = ok
		}
	}
	now := nowMicro()
	limit := c.limitL1()
	for i, k := range ks {
		hit := found[i] && es[i].fresh(now)
		c.rec.lookupL2(hit, start)
		if hit {
			if es[i].neg {
				c.rec.event(EventNegativeHit)
			}
			if c.l1 != nil {
				c.l1.fill(k, toks[i], es[i], now, limit)
			}
		}
	}
	return es, found, nil
}

// mget reads vks into raw (nil for absent keys): MGETs of at most
// maxBatchCommand keys on a single node, GETs on a cluster or ring (go-redis
// groups a pipeline by node, so it is one round trip per node either way,
// and no command spans two slots).
func (c *Cache[V]) mget(ctx context.Context, vks []string, raw [][]byte) error {
	if _, single := c.rdb.(*redis.Client); single && len(vks) <= maxBatchCommand {
		vals, err := c.rdb.MGet(ctx, vks...).Result()
		if err != nil {
			return err
		}
		for i, v := range vals {
			if s, ok := v.(string); ok {
				raw[i] = unsafeBytes(s)
			}
		}
		return nil
	}
	if _, single := c.rdb.(*redis.Client); single {
		var cmds []*redis.SliceCmd
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
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
				if s, ok := v.(string); ok {
					raw[i] = unsafeBytes(s)
				}
				i++
			}
		}
		return nil
	}
	cmds := make([]*redis.StringCmd, len(vks))
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, vk := range vks {
			cmds[i] = p.Get(ctx, vk)
		}
		return nil
	})
	if err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for i, cmd := range cmds {
		if s, err := cmd.Result(); err == nil {
			raw[i] = unsafeBytes(s)
		}
	}
	return nil
}

// acquireMany runs Acquire for each key in one pipeline, with a token per
// key (made on first use and kept in tokens, so that a retry after waiting
// reuses it). Keys in forced are leased even if their value looks fresh,
// unless it was written after the time given.
func (c *Cache[V]) acquireMany(ctx context.Context, ks []string, tokens map[string]string, forced map[string]int64) ([]acquireResult, error) {
	out := make([]acquireResult, len(ks))
	err := c.call(ctx, "acquire_many", c.cfg.readTimeout, func(ctx context.Context) error {
		kk := make([][]string, len(ks))
		args := make([][]any, len(ks))
		now := nowMicro()
		for i, k := range ks {
			tok, ok := tokens[k]
			if !ok {
				tok = newToken()
				tokens[k] = tok
			}
			vk := c.layout.Value(k)
			kk[i] = []string{vk, keys.Lease(vk)}
			args[i] = []any{tok, c.cfg.leaseTTL.Milliseconds(), now, "0", "0"}
			if nb, ok := forced[k]; ok {
				args[i][3], args[i][4] = "1", strconv.FormatInt(nb, 10)
			}
		}
		cmds, err := c.runScript(ctx, keys.Acquire, kk, args)
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

// releaseMany gives back the leases of ks (best effort).
func (c *Cache[V]) releaseMany(ks []string, tokens map[string]string) {
	kk := make([][]string, len(ks))
	args := make([][]any, len(ks))
	for i, k := range ks {
		kk[i] = []string{keys.Lease(c.layout.Value(k))}
		args[i] = []any{tokens[k]}
	}
	_ = c.call(c.life, "release_many", c.cfg.writeTimeout, func(ctx context.Context) error {
		_, err := c.runScript(ctx, keys.Release, kk, args)
		return err
	})
}

// runScript runs script once per (keys, args) pair in one pipeline, by
// EVALSHA; if the server does not know the script (a restart, a failover,
// SCRIPT FLUSH), the calls are sent again with EVAL, which loads it.
func (c *Cache[V]) runScript(ctx context.Context, s *redis.Script, kk [][]string, args [][]any) ([]*redis.Cmd, error) {
	run := func(sha bool) ([]*redis.Cmd, error) {
		cmds := make([]*redis.Cmd, len(kk))
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i := range kk {
				if sha {
					cmds[i] = s.EvalSha(ctx, p, kk[i], args[i]...)
				} else {
					cmds[i] = s.Eval(ctx, p, kk[i], args[i]...)
				}
			}
			return nil
		})
		if errors.Is(err, redis.Nil) {
			err = nil
		}
		return cmds, err
	}
	cmds, err := run(true)
	if err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
		return run(false)
	}
	return cmds, err
}

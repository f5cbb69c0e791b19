package tiercache

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/store"
)

// The read path without a loader: L1, then Redis. A fresh Redis hit fills
// L1 unless an invalidation raced the read (see local.fill). Bytes that do
// not decode, or whose tags were invalidated, are a counted miss.

// Get returns the cached value of key, from L1 or Redis. It returns
// [ErrMiss] when the key is not cached or its value is past its logical
// expiry, and [ErrNotFound] for a cached "not found". A Redis failure is an
// error that wraps both [ErrMiss] and [ErrRedis], so that code that treats
// a miss as "go to the database" keeps working while Redis is down.
func (c *Cache[V]) Get(ctx context.Context, key string) (V, error) {
	var zero V
	if err := c.check(ctx, key); err != nil {
		return zero, err
	}
	if e, ok := c.getL1(key); ok {
		return e.result()
	}
	e, found, err := c.getL2(ctx, key)
	switch {
	case err != nil:
		return zero, fmt.Errorf("%w: %w", ErrMiss, err)
	case !found || !e.fresh(nowMicro()):
		return zero, ErrMiss
	}
	return e.result()
}

// GetMany returns the fresh cached values of keys, from L1 and then Redis in
// one round trip per Redis node (MGET on a single node; a pipeline of GETs
// grouped by node on a cluster, so it never fails with CROSSSLOT). Keys that
// are not cached, expired or cached as not found are absent from the map;
// duplicates are read once. A Redis failure returns the values found in L1
// and an error wrapping [ErrMiss] and [ErrRedis].
func (c *Cache[V]) GetMany(ctx context.Context, keys []string) (map[string]V, error) {
	out, rest, err := c.manyFromL1(ctx, keys, nil)
	if err != nil || len(rest) == 0 {
		return out, err
	}
	es, found, _, err := c.getManyL2(ctx, rest)
	now := nowMicro()
	for i, k := range rest {
		if found[i] && es[i].fresh(now) && !es[i].neg {
			out[k] = es[i].val
		}
	}
	if err != nil {
		// A node failed: its keys are missing, the others are there.
		return out, fmt.Errorf("%w: %w", ErrMiss, err)
	}
	return out, nil
}

// result is what a read of e returns to the caller.
func (e *entry[V]) result() (V, error) {
	if e.neg {
		var zero V
		return zero, ErrNotFound
	}
	return e.val, nil
}

// getL1 looks key up in L1, counting the lookup; the observer is told.
func (c *Cache[V]) getL1(key string) (*entry[V], bool) {
	if c.l1 == nil {
		return nil, false
	}
	e, ok := c.l1.get(key)
	if c.rec.timed {
		// Not timed: a clock read costs more than the lookup.
		c.rec.obs.Lookup(TierL1, ok, 0)
	}
	if ok && e.neg {
		c.rec.event(EventNegativeHit)
	}
	return e, ok
}

// manyFromL1 validates keys, drops duplicates (keeping the first order),
// puts their L1 hits in out and returns the keys left. With refresh (a
// loader's read), hits that XFetch says to refresh early are added to it.
func (c *Cache[V]) manyFromL1(ctx context.Context, keys []string, refresh *[]due) (out map[string]V, rest []string, err error) {
	if err := c.open(ctx); err != nil {
		return nil, nil, err
	}
	out = make(map[string]V, len(keys))
	seen := make(map[string]struct{}, len(keys))
	if c.l1 == nil {
		rest = make([]string, 0, len(keys))
	}
	for _, k := range keys {
		if k == "" {
			return nil, nil, ErrInvalidKey
		}
		if _, dup := seen[k]; dup {
			continue
		}
		seen[k] = struct{}{}
		e, ok := c.getL1(k)
		if !ok {
			rest = append(rest, k)
			continue
		}
		if !e.neg {
			out[k] = e.val
		}
		if refresh != nil && c.wantEarlyRefresh(e, c.l1.now()) {
			*refresh = append(*refresh, due{k, e.writtenAt, true})
		}
	}
	return out, rest, nil
}

// getL2 reads key from Redis. Stale values are returned too, for the
// caller to judge.
func (c *Cache[V]) getL2(ctx context.Context, key string) (e entry[V], found bool, err error) {
	vk := c.st.Layout.Value(key)
	tok := c.l1.token(key)
	start := c.rec.Now()
	b, err := c.st.Get(ctx, vk)
	if err != nil {
		if !notAsked(err) {
			c.rec.lookupL2(false, start)
		}
		return e, false, err
	}
	ks, vks, raws := [1]string{key}, [1]string{vk}, [1][]byte{b}
	var es [1]entry[V]
	var fs [1]bool
	now := nowMicro()
	var errs []error
	c.decodeChecked(ctx, now, ks[:], vks[:], raws[:], es[:], fs[:], &errs)
	c.countL2(start, now, key, tok, &es[0], fs[0])
	if errs != nil { // its tags could not be read
		return es[0], false, errs[0]
	}
	return es[0], fs[0], nil
}

// getManyL2 reads ks from Redis in one round trip per node. errs[i] is the
// error of ks[i] when its node failed (nil: read), err the first; the
// others are read all the same.
func (c *Cache[V]) getManyL2(ctx context.Context, ks []string) (es []entry[V], found []bool, errs []error, err error) {
	vks := make([]string, len(ks))
	toks := make([]fillToken, len(ks))
	for i, k := range ks {
		vks[i] = c.st.Layout.Value(k)
		toks[i] = c.l1.token(k)
	}
	start := c.rec.Now()
	raw, errs, err := c.st.GetMany(ctx, vks)
	es, found = make([]entry[V], len(ks)), make([]bool, len(ks))
	now := nowMicro()
	var terrs []error // of the keys whose tags could not be read (read, and counted, all the same)
	if terr := c.decodeChecked(ctx, now, ks, vks, raw, es, found, &terrs); err == nil {
		err = terr
	}
	for i, k := range ks {
		if errs != nil && errs[i] != nil {
			if !notAsked(errs[i]) {
				c.rec.lookupL2(false, start)
			}
			continue
		}
		c.countL2(start, now, k, toks[i], &es[i], found[i])
		if terrs != nil && terrs[i] != nil {
			if errs == nil {
				errs = make([]error, len(ks))
			}
			errs[i] = terrs[i]
		}
	}
	return es, found, errs, err
}

// notAsked reports an error of a read that Redis was not asked: its
// node's breaker refused it, or its deadline passed while it queued. It is
// not a lookup.
func notAsked(err error) bool {
	return errors.Is(err, errBreakerOpen) || errors.Is(err, store.ErrNotSent)
}

// countL2 counts the Redis lookup of k and fills L1 with a fresh hit.
func (c *Cache[V]) countL2(start time.Time, now int64, k string, tok fillToken, e *entry[V], found bool) {
	hit := found && e.fresh(now)
	c.rec.lookupL2(hit, start)
	if hit {
		if e.neg {
			c.rec.event(EventNegativeHit)
		}
		c.l1.fill(k, tok, *e, c.l1.limit())
	}
}

// decodeChecked decodes raw[i] (nil: absent), stored under vks[i] for
// ks[i], into es[i], and sets found[i] when it holds a usable entry: one
// that decodes and whose tags still have the versions it was written with,
// read from Redis in one round trip per node for all the tagged entries.
// An entry whose own tags could not be read (their node failed) is not
// found, and with errs (made if nil) that tag's error is set as its own;
// the first error is returned: Get and GetMany report a Redis failure for
// it, and GetOrLoad(Many) load it as in an outage. Every read of stored
// bytes, by Get, GetMany or a lease acquire, comes through here. now is the read's time (Unix µs), which also
// tells whether the generation is due to be read again.
func (c *Cache[V]) decodeChecked(ctx context.Context, now int64, ks, vks []string, raw [][]byte, es []entry[V], found []bool, errs *[]error) error {
	tagged := 0
	gen := c.st.GenerationAt(ctx, now)
	for i, b := range raw {
		found[i] = false
		if b == nil {
			continue
		}
		if err := decode(c.vc, b, c.keyHash(vks[i]), &es[i]); err != nil {
			c.rec.event(EventCorrupt)
			c.log.Warn("tiercache: unreadable cached value treated as a miss", "key", ks[i], "err", err)
			continue
		}
		if es[i].gen < gen {
			continue // written before a Clear: gone, as far as readers go
		}
		found[i] = true
		if len(es[i].tags) > 0 {
			tagged++
		}
	}
	if tagged > 0 {
		return c.checkTags(ctx, es, found, errs)
	}
	return nil
}

// checkTags clears found[i] for each found entry whose tags are no longer
// at the versions it was written with.
func (c *Cache[V]) checkTags(ctx context.Context, es []entry[V], found []bool, errs *[]error) error {
	var names []string
	index := map[string]int{}
	for i := range es {
		if !found[i] {
			continue
		}
		for _, t := range es[i].tags {
			if _, seen := index[t.Name]; !seen {
				index[t.Name] = len(names)
				names = append(names, t.Name)
			}
		}
	}
	cur, have, tagErrs, err := c.st.TagGet(ctx, names)
	for i := range es {
		if !found[i] || len(es[i].tags) == 0 {
			continue
		}
		for _, t := range es[i].tags {
			j := index[t.Name]
			if !have[j] || cur[j] != t.Version {
				found[i] = false
			}
			// Only a key whose own tags failed is failed: on a cluster the
			// others' tag nodes answered.
			if tagErrs != nil && tagErrs[j] != nil && errs != nil {
				if *errs == nil {
					*errs = make([]error, len(es))
				}
				(*errs)[i] = cmp.Or((*errs)[i], tagErrs[j])
			}
		}
	}
	if c.l1 != nil { // the versions read are current, whatever failed
		seen := make([]envelope.Tag, 0, len(names))
		for j, n := range names {
			if have[j] {
				seen = append(seen, envelope.Tag{Name: n, Version: cur[j]})
			}
		}
		c.l1.observeTags(seen)
	}
	return err
}

package tiercache

import (
	"context"
	"fmt"
	"time"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/keys"
	"github.com/tiercache/tiercache/internal/store"
)

// The write path. A write goes to Redis first, removing the key's lease in
// the same step (so that a load in flight cannot write back what it loaded
// before the write); then to this instance's L1, conditionally on a token
// taken before the Redis write (see local.store); then to the other
// instances' L1s, by one invalidation message.

// Set writes v under key, in Redis and in this instance's L1, and tells the
// other instances to drop their L1 copies. It also removes the key's lease,
// so that a load in flight that started before the Set cannot overwrite it.
// Tags the key had are replaced by those of opts (none without [WithTags]).
//
// A Redis failure is returned (wrapping [ErrRedis]) and the local L1 copy is
// dropped: the caller should treat the cache as not updated, and either
// retry or Delete the key once Redis is back.
func (c *Cache[V]) Set(ctx context.Context, key string, v V, opts ...SetOption) error {
	if err := c.check(ctx, key); err != nil {
		return err
	}
	items := [1]item[V]{{key, v}}
	return c.set(ctx, items[:], opts)
}

// SetMany writes items as [Cache.Set] does, in one round trip per Redis
// node, and tells the other instances to drop them in one message. On a
// Redis failure the local L1 copies are dropped and the error (wrapping
// [ErrRedis]) returned; some items may have been written: retry, or Delete
// them.
func (c *Cache[V]) SetMany(ctx context.Context, items map[string]V, opts ...SetOption) error {
	if err := c.open(ctx); err != nil {
		return err
	}
	list := make([]item[V], 0, len(items))
	for k, v := range items {
		if k == "" {
			return ErrInvalidKey
		}
		list = append(list, item[V]{k, v})
	}
	return c.set(ctx, list, opts)
}

type item[V any] struct {
	key string
	val V
}

// set is the one write-through, for one item or many.
func (c *Cache[V]) set(ctx context.Context, items []item[V], opts []SetOption) error {
	sc := setConfig{ttl: c.cfg.ttl}
	apply(&sc, opts)
	switch {
	case sc.ttl <= 0:
		return fmt.Errorf("%w: TTL %v must be positive", ErrInvalidOption, sc.ttl)
	case sc.noCache:
		return fmt.Errorf("%w: NoCache is for loaders (LoadOptions); to not cache a value, do not Set it", ErrInvalidOption)
	case len(items) == 0:
		return nil
	}
	tagNames, err := checkTags(sc.tags, envelope.MaxTags)
	if err != nil {
		return err
	}
	now := nowMicro()
	softExp := make([]int64, len(items))
	var longest time.Duration
	for i := range items {
		ttl := c.jitter(sc.ttl)
		softExp[i] = satAddMicros(now, ttl)
		longest = max(longest, ttl)
	}
	// The tags' keys must outlive the longest TTL of the items.
	tags, rowVers, _, err := c.st.TagRead(ctx, tagNames, 0, c.redisTTL(longest))
	if err != nil {
		for _, it := range items {
			c.dropLocal(it.key) // as after a failed write: the caller retries
		}
		return err
	}
	if olderThanTags(sc.version, rowVers, true) {
		// A versioned invalidation of one of its tags is newer: refused,
		// as Redis would refuse it for the key's own version.
		for _, it := range items {
			c.rec.event(EventWriteRefused)
			c.dropLocal(it.key)
		}
		return nil
	}
	ws := make([]store.Write, len(items))
	es := make([]entry[V], len(items))
	toks := make([]fillToken, len(items)) // taken before the Redis write
	for i, it := range items {
		toks[i] = c.l1.token(it.key)
		vk := c.st.Layout.Value(it.key)
		es[i] = entry[V]{val: it.val, version: sc.version, writtenAt: now, softExp: softExp[i], tags: tags}
		b, err := c.frameOf(vk, &es[i], c.st.Generation(ctx))
		if err != nil {
			return fmt.Errorf("key %q: %w", it.key, err)
		}
		es[i].size = len(b)
		ws[i] = store.Write{VK: vk, Frame: b, TTL: c.redisTTL(time.Duration(softExp[i]-now) * time.Microsecond), Version: sc.version}
	}
	written, refused, err := c.st.Set(ctx, ws)
	ks := make([]string, 0, len(items))
	for i, it := range items {
		switch {
		case written[i]:
			c.forget(it.key)
			if c.l1.store(it.key, toks[i], es[i], c.st.Local()) {
				c.rec.event(EventWriteRefused) // NewLocal: L1 holds this row version or a newer one
			}
			ks = append(ks, it.key)
		case refused[i]:
			// Redis holds a newer version (or deleted a newer one): this
			// write lost, as it should. What this instance's L1 holds of the
			// key may be older than Redis's: drop it, the next read reads
			// Redis. (The newer one's writer has told the other instances.)
			c.rec.event(EventWriteRefused)
			c.dropLocal(it.key)
		default:
			c.dropLocal(it.key) // its node failed: the caller retries
		}
	}
	if err != nil {
		return err
	}
	return c.inv.send(ctx, ks, nil, false)
}

// Delete removes keys from Redis and from every instance's L1, with their
// leases, so that loads in flight for them do not write back what they
// loaded before the Delete. On a Redis failure the local L1 copies are
// dropped anyway and the error (wrapping [ErrRedis]) is returned: the keys
// may still be in Redis, so retry the Delete.
func (c *Cache[V]) Delete(ctx context.Context, keys ...string) error {
	return c.delete(ctx, 0, keys)
}

// delete is Delete, with the row version of a versioned Invalidate.
func (c *Cache[V]) delete(ctx context.Context, version uint64, keys []string) error {
	if err := c.open(ctx); err != nil {
		return err
	}
	for _, k := range keys {
		if k == "" {
			return ErrInvalidKey
		}
	}
	if len(keys) == 0 {
		return nil
	}
	c.dropLocal(keys...)
	vks := make([]string, len(keys))
	for i, k := range keys {
		vks[i] = c.st.Layout.Value(k)
	}
	err := c.st.Del(ctx, vks, version)
	// Again now that Redis has no value: a read that ran between the first
	// drop and the DEL may have put the old value back in L1 (its fill
	// token predates this second drop, so a fill still in flight is refused).
	c.dropLocal(keys...)
	if err != nil {
		return err
	}
	return c.inv.send(ctx, keys, nil, false)
}

// dropLocal removes keys from this instance: from L1, refusing fills of
// reads that began before, and from the flights, so that a read that
// begins now does not join a load that began before the change.
func (c *Cache[V]) dropLocal(keys ...string) {
	for _, k := range keys {
		c.forget(k)
		c.l1.invalidate(k)
	}
}

// InvalidateTags makes every value carrying any of tags unreachable: in
// Redis as soon as it returns, for every instance's Redis reads, and in the
// L1 of every instance as soon as its invalidation message arrives (this
// instance's at once). Loads in flight that read data before the
// invalidation do not cache what they loaded, even if a tag's key vanishes
// from Redis meanwhile. Values are removed lazily: they stay in Redis,
// unreadable, until their TTL.
//
// A Redis failure is returned (wrapping [ErrRedis]): the tags may not be
// invalidated, so retry.
func (c *Cache[V]) InvalidateTags(ctx context.Context, tags ...string) error {
	return c.Invalidate(ctx, Invalidation{Tags: tags})
}

// invalidateTags is InvalidateTags of checked tags, with the row version
// of a versioned Invalidate.
func (c *Cache[V]) invalidateTags(ctx context.Context, version uint64, tags []string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	if len(tags) == 0 {
		return nil
	}
	// A tag key must outlive every load that may be in flight.
	keep := satAdd(satAdd(c.cfg.loadTimeout, c.cfg.loadTimeout), c.cfg.leaseTTL)
	versions, err := c.st.TagBump(ctx, tags, keep, version)
	if err != nil {
		return err
	}
	// Loads in flight may carry these tags: readers from now on start anew.
	c.flight.ForgetAll()
	c.l1.observeTags(versions)
	return c.inv.send(ctx, nil, versions, false)
}

// Invalidation is what changed, for [Cache.Invalidate].
type Invalidation struct {
	Keys []string // keys to delete
	Tags []string // tags to invalidate
	// Version, when set, is the row version of the change (see
	// [WithVersion]): the keys' deletion and the tags' invalidation leave it
	// behind in Redis, so that a versioned write of an older version
	// arriving later, of one of the keys or carrying one of the tags, is
	// refused; a newer version of a key already written is kept.
	Version uint64
}

// Invalidate applies an invalidation: it deletes inv.Keys and invalidates
// inv.Tags, in every tier of every instance (an instance without L1
// publishes to the others all the same). It is the one call to make from a
// consumer of your own change events (a Kafka or NATS subscriber, a
// database's change stream), so that the cache follows writes made
// elsewhere. Like Delete and InvalidateTags it returns Redis errors; a
// consumer should not acknowledge the event until it returns nil.
func (c *Cache[V]) Invalidate(ctx context.Context, inv Invalidation) error {
	if err := c.open(ctx); err != nil { // before the tags are checked: ErrClosed for every call after Close
		return err
	}
	// Any number of tags (the bound is per value), checked before a key is
	// deleted: nothing half done.
	tags, err := checkTags(inv.Tags, 0)
	if err != nil {
		return err
	}
	if err := c.delete(ctx, inv.Version, inv.Keys); err != nil {
		return err
	}
	return c.invalidateTags(ctx, inv.Version, tags)
}

// Clear drops every value of the namespace, on every instance: one write
// in Redis (a new generation; values written before it are misses from
// then on, and expire on their own) and one message that flushes every
// instance's L1. This instance's reads miss them as soon as Clear returns;
// another instance's reads (of L1 and of Redis alike) once the message
// reaches it, which takes what an invalidation takes. A load that began
// before it never lands: its value is stored in the old generation. An
// instance that misses the message learns the generation when its
// subscription comes back or at its next health check (WithHealthCheck).
// Unlike [WithSchemaVersion], it needs no deploy and keeps the keys'
// names. A Redis failure is returned (wrapping [ErrRedis]): retry.
func (c *Cache[V]) Clear(ctx context.Context) error {
	if err := c.open(ctx); err != nil {
		return err
	}
	if _, err := c.st.Clear(ctx); err != nil {
		return err
	}
	c.flight.ForgetAll()
	c.l1.flush()
	return c.inv.send(ctx, nil, nil, true)
}

// checkTags validates tag names and drops duplicates, of which there may
// be at most most (a value's: envelope.MaxTags; 0 for an invalidation's,
// any number). A tag must not start with '}': its key would hold an empty
// hash tag ("{}"), which Redis Cluster ignores, and the tag's two keys
// would land in different slots.
func checkTags(tags []string, most int) ([]string, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	seen := make(map[string]struct{}, len(tags))
	out := make([]string, 0, len(tags))
	for _, t := range tags {
		if t == "" || len(t) > envelope.MaxTagLen || t[0] == '}' {
			return nil, fmt.Errorf("%w: %q: want 1 to %d bytes, not starting with '}'", ErrInvalidTag, t, envelope.MaxTagLen)
		}
		if _, dup := seen[t]; !dup {
			seen[t] = struct{}{}
			out = append(out, t)
		}
	}
	if most > 0 && len(out) > most {
		return nil, fmt.Errorf("%w: %d tags, at most %d", ErrInvalidTag, len(out), most)
	}
	return out, nil
}

// olderThanTags reports whether a write of row version version (0:
// unversioned, never) is older than a version a versioned invalidation
// left on one of its tags, or as old when asOld: a Set as old is refused,
// as the key's own version check refuses it, while a load as old is the
// current row (see the Fill script) and is not.
func olderThanTags(version uint64, rowVers []string, asOld bool) bool {
	if version == 0 {
		return false
	}
	v := keys.FormatVersion(version)
	for _, r := range rowVers {
		if r != "" && (v < r || asOld && v == r) {
			return true
		}
	}
	return false
}

package tiercache

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/maypok86/otter/v2"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/keys"
)

// Tags group keys for invalidation: [WithTags] on a write (or through
// [LoadOptions] in a loader) attaches tags to a value, and
// [Cache.InvalidateTags] makes every value carrying one of them unreachable.
//
// Each tag has a version in Redis (a server timestamp that only grows); a
// value stores the versions its tags had when it was written and is valid
// only while they are current. Invalidating a tag is one small write,
// whatever the number of keys that carry it, on one node or a cluster, and
// needs no list of members: nothing grows with the tag, and the tag key
// expires with the last value that uses it. docs/DESIGN.md compares this
// with keeping a set of members per tag, with measurements.
//
// The price is on reads: a Redis hit of a tagged value also reads its
// tags' versions (pipelined, one more round trip). L1 hits compare against
// versions this instance has seen, which InvalidateTags publishes to every
// instance.

// ErrInvalidTag is returned for an empty tag, a tag over 255 bytes, or more
// than 64 tags on one value.
var ErrInvalidTag = errors.New("tiercache: invalid tag")

// checkTags validates tag names and drops duplicates.
func checkTags(tags []string) ([]string, error) {
	if len(tags) == 0 {
		return nil, nil
	}
	seen := make(map[string]struct{}, len(tags))
	out := make([]string, 0, len(tags))
	for _, t := range tags {
		if t == "" || len(t) > envelope.MaxTagLen {
			return nil, fmt.Errorf("%w: %q: want 1 to %d bytes", ErrInvalidTag, t, envelope.MaxTagLen)
		}
		if _, dup := seen[t]; !dup {
			seen[t] = struct{}{}
			out = append(out, t)
		}
	}
	if len(out) > envelope.MaxTags {
		return nil, fmt.Errorf("%w: %d tags, at most %d", ErrInvalidTag, len(out), envelope.MaxTags)
	}
	return out, nil
}

// readTagVersions returns the current versions of tags, creating missing
// tag keys with version since (Unix µs; 0: the server's time now) and
// making each live at least ttl. For a load, since is when the load began:
// a version newer than it means the tag was invalidated during the load,
// and stale reports it.
func (c *Cache[V]) readTagVersions(ctx context.Context, tags []string, since int64, ttl time.Duration) (out []envelope.Tag, stale bool, err error) {
	if len(tags) == 0 {
		return nil, false, nil
	}
	out = make([]envelope.Tag, len(tags))
	err = c.call(ctx, "tag_read", c.cfg.writeTimeout, func(ctx context.Context) error {
		kk := make([][]string, len(tags))
		args := make([][]any, len(tags))
		for i, t := range tags {
			kk[i] = []string{c.layout.Tag(t)}
			args[i] = []any{since, max(ttl.Milliseconds(), 1)}
		}
		cmds, err := c.runScript(ctx, keys.TagRead, kk, args)
		if err != nil {
			return err
		}
		for i, cmd := range cmds {
			v, err := parseVersion(cmd)
			if err != nil {
				return err
			}
			out[i] = envelope.Tag{Name: tags[i], Version: v}
			stale = stale || (since > 0 && int64(v) > since)
		}
		return nil
	})
	return out, stale, err
}

func parseVersion(cmd *redis.Cmd) (uint64, error) {
	switch v := cmd.Val().(type) {
	case string:
		return strconv.ParseUint(v, 10, 64)
	case int64:
		return uint64(v), nil
	}
	if err := cmd.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("tag version: unexpected reply %v", cmd.Val())
}

// InvalidateTags makes every value carrying any of tags unreachable: in
// Redis as soon as it returns, for every instance's Redis reads, and in the
// L1 of every instance as soon as its invalidation message arrives (this
// instance's at once). Loads in flight that read data before the
// invalidation do not cache what they loaded. Values are removed lazily:
// they stay in Redis, unreadable, until their TTL.
//
// A Redis failure is returned (wrapping [ErrRedis]): the tags may not be
// invalidated, so retry.
func (c *Cache[V]) InvalidateTags(ctx context.Context, tags ...string) error {
	if c.closed.Load() {
		return ErrClosed
	}
	tags, err := checkTags(tags)
	if err != nil || len(tags) == 0 {
		return err
	}
	versions := make([]envelope.Tag, len(tags))
	// A tag key created here must outlive every load that may be in flight.
	keepAbsent := 2*c.cfg.loadTimeout + c.cfg.leaseTTL
	err = c.call(ctx, "tag_bump", c.cfg.writeTimeout, func(ctx context.Context) error {
		kk := make([][]string, len(tags))
		args := make([][]any, len(tags))
		for i, t := range tags {
			kk[i] = []string{c.layout.Tag(t)}
			args[i] = []any{keepAbsent.Milliseconds()}
		}
		cmds, err := c.runScript(ctx, keys.TagBump, kk, args)
		if err != nil {
			return err
		}
		for i, cmd := range cmds {
			v, err := parseVersion(cmd)
			if err != nil {
				return err
			}
			versions[i] = envelope.Tag{Name: tags[i], Version: v}
		}
		return nil
	})
	if err != nil {
		return err
	}
	// Loads in flight may carry these tags: readers from now on start anew.
	c.flight.ForgetAll()
	if c.tagv != nil {
		c.tagv.observe(versions)
	}
	if c.inv == nil {
		return nil
	}
	return c.inv.sendTags(ctx, versions)
}

// validTags reports, for each entry with tags, whether all its tags still
// have the versions it was written with, reading them from Redis in one
// round trip per node. Entries without tags are valid. On a Redis failure
// tagged entries are reported invalid: a read then goes to the loader.
func (c *Cache[V]) validTags(ctx context.Context, es []*entry[V]) []bool {
	ok := make([]bool, len(es))
	var names []string
	index := map[string]int{}
	for i, e := range es {
		ok[i] = true
		for _, t := range e.tags {
			if _, seen := index[t.Name]; !seen {
				index[t.Name] = len(names)
				names = append(names, t.Name)
			}
		}
	}
	if len(names) == 0 {
		return ok
	}
	current := make([]uint64, len(names))
	have := make([]bool, len(names))
	err := c.call(ctx, "tag_get", c.cfg.readTimeout, func(ctx context.Context) error {
		cmds := make([]*redis.StringCmd, len(names))
		_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, n := range names {
				cmds[i] = p.Get(ctx, c.layout.Tag(n))
			}
			return nil
		})
		if err != nil && !errors.Is(err, redis.Nil) {
			return err
		}
		for i, cmd := range cmds {
			if v, err := cmd.Uint64(); err == nil {
				current[i], have[i] = v, true
			}
		}
		return nil
	})
	var seen []envelope.Tag
	for i, e := range es {
		for _, t := range e.tags {
			j := index[t.Name]
			if err != nil || !have[j] || current[j] != t.Version {
				ok[i] = false
			}
		}
	}
	if err == nil && c.tagv != nil {
		for j, n := range names {
			if have[j] {
				seen = append(seen, envelope.Tag{Name: n, Version: current[j]})
			}
		}
		c.tagv.observe(seen)
	}
	return ok
}

// tagVersions is this instance's view of tag versions, for L1 hits: the
// newest version it has seen for each tag, from Redis reads, its own
// invalidations and other instances' messages. Versions only grow, so
// updates keep the maximum and a late, older observation cannot undo an
// invalidation. A tagged L1 entry is valid only if every tag is known at
// exactly its version; a tag evicted from this bounded table makes its
// entries L1 misses, which is safe.
type tagVersions struct {
	m *otter.Cache[string, uint64]
}

func newTagVersions(size int) (*tagVersions, error) {
	m, err := otter.New(&otter.Options[string, uint64]{MaximumSize: size})
	if err != nil {
		return nil, err
	}
	return &tagVersions{m: m}, nil
}

func (tv *tagVersions) observe(tags []envelope.Tag) {
	for _, t := range tags {
		tv.m.Compute(t.Name, func(old uint64, found bool) (uint64, otter.ComputeOp) {
			if found && old >= t.Version {
				return old, otter.CancelOp
			}
			return t.Version, otter.WriteOp
		})
	}
}

// current reports whether every tag of tags is known at its version.
func (tv *tagVersions) current(tags []envelope.Tag) bool {
	for _, t := range tags {
		if v, ok := tv.m.GetIfPresent(t.Name); !ok || v != t.Version {
			return false
		}
	}
	return true
}

func (tv *tagVersions) close() { tv.m.StopAllGoroutines() }

// Invalidation is what changed, for [Cache.Invalidate].
type Invalidation struct {
	Keys []string // keys to delete
	Tags []string // tags to invalidate
}

// Invalidate applies an invalidation: it deletes inv.Keys and invalidates
// inv.Tags, in every tier of every instance. It is the one call to make
// from a consumer of your own change events (a Kafka or NATS subscriber, a
// database's change stream), so that the cache follows writes made
// elsewhere. Like Delete and InvalidateTags it returns Redis errors; a
// consumer should not acknowledge the event until it returns nil.
func (c *Cache[V]) Invalidate(ctx context.Context, inv Invalidation) error {
	if len(inv.Keys) > 0 {
		if err := c.Delete(ctx, inv.Keys...); err != nil {
			return err
		}
	}
	return c.InvalidateTags(ctx, inv.Tags...)
}

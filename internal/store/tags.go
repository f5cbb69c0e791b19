package store

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/keys"
)

// Tags: see the cache's tags.go.

// TagRead returns the current versions of tags, creating missing tag keys
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
func (s *Store) TagRead(ctx context.Context, tags []string, since int64, ttl time.Duration) (out []envelope.Tag, rowVers []string, stale bool, err error) {
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
		tks[i] = s.Layout.Tag(t)
		kk[i] = []string{tks[i], tks[i] + ":ver"}
		args[i] = []any{ms(ttl)}
	}
	created := make([]bool, len(tags))
	if _, err = s.callKeys(ctx, "tag_read", s.WriteBy(), tks, func(ctx context.Context, idx []int, errs []error) error {
		cmds := s.runScript(ctx, keys.TagRead, pick(kk, idx), pick(args, idx))
		cmdErrs(cmds, errs)
		for n, cmd := range cmds {
			if errs[n] != nil {
				continue
			}
			vals, err := cmd.Slice()
			if err != nil || len(vals) != 3 {
				errs[n] = fmt.Errorf("tag_read: unexpected reply %v: %w", cmd.Val(), err)
				continue
			}
			v, err := parseVersion(vals[0])
			if err != nil {
				errs[n] = err
				continue
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
	fk := s.Layout.TagFloor()
	err = s.Call(ctx, s.nodeOf(ctx, fk), "tag_read", s.WriteBy(), func(ctx context.Context) error {
		var err error
		floor, err = keys.TagFloor.Run(ctx, s.RDB, []string{fk}, "0").Text()
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

// TagBump invalidates tags and returns their new versions. The namespace's
// floor goes first (see TagRead), then each tag's version.
func (s *Store) TagBump(ctx context.Context, tags []string, keep time.Duration, version uint64) ([]envelope.Tag, error) {
	if s.local != nil {
		return s.local.bump(tags), nil
	}
	fk := s.Layout.TagFloor()
	if err := s.Call(ctx, s.nodeOf(ctx, fk), "tag_bump", s.WriteBy(), func(ctx context.Context) error {
		return keys.TagFloor.Run(ctx, s.RDB, []string{fk}, "1").Err()
	}); err != nil {
		return nil, err
	}
	out := make([]envelope.Tag, len(tags))
	tks := make([]string, len(tags))
	kk := make([][]string, len(tags))
	args := make([][]any, len(tags))
	ver, verTTL := s.versionArgs(version, keep)
	for i, t := range tags {
		tks[i] = s.Layout.Tag(t)
		kk[i] = []string{tks[i], tks[i] + ":ver"}
		args[i] = []any{ms(keep), ver, verTTL}
	}
	_, err := s.callKeys(ctx, "tag_bump", s.WriteBy(), tks, func(ctx context.Context, idx []int, errs []error) error {
		cmds := s.runScript(ctx, keys.TagBump, pick(kk, idx), pick(args, idx))
		cmdErrs(cmds, errs)
		for n, cmd := range cmds {
			if errs[n] == nil {
				var v uint64
				v, errs[n] = parseVersion(cmd.Val())
				out[idx[n]] = envelope.Tag{Name: tags[idx[n]], Version: v}
			}
		}
		return nil
	})
	return out, err
}

// TagGet reads the current versions of tags (have[i] false: absent, or its
// node failed). errs[i] is the error of tags[i] when its node failed (errs
// is nil when none did), err the first: on a cluster the tags of one key
// may live on other nodes than the key, and one node's failure is only its
// tags'.
func (s *Store) TagGet(ctx context.Context, tags []string) (cur []uint64, have []bool, errs []error, err error) {
	cur, have = make([]uint64, len(tags)), make([]bool, len(tags))
	if s.local != nil {
		out, _, _ := s.local.read(tags, 0)
		for i, t := range out {
			cur[i], have[i] = t.Version, true
		}
		return cur, have, nil, nil
	}
	tks := make([]string, len(tags))
	for i, t := range tags {
		tks[i] = s.Layout.Tag(t)
	}
	errs, err = s.callKeys(ctx, "tag_get", s.readBy(), tks, func(ctx context.Context, idx []int, errs []error) error {
		for n, cmd := range s.getEach(ctx, tks, idx, errs) {
			if errs[n] != nil || cmd.Err() != nil {
				continue
			}
			// Bytes that are not a version (written by someone else) make
			// the tag unknown, and its values misses: not a Redis fault.
			if v, err := cmd.Uint64(); err == nil {
				cur[idx[n]], have[idx[n]] = v, true
			}
		}
		return nil
	})
	return cur, have, errs, err
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

// nowMicro is the cache's clock, in Unix microseconds (the frame's unit).
func nowMicro() int64 { return time.Now().UnixMicro() }

package store

import (
	"context"
	"errors"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/keys"
)

// Set writes frames through (the Set script: the lease goes, then the
// value), in one round trip per node, and reports which were written and
// which refused (a versioned write older than Redis's); neither, for the
// keys of a node that failed.
func (s *Store) Set(ctx context.Context, ws []Write) (written, refused []bool, err error) {
	return s.set(ctx, keys.Set, ws)
}

// set is Set with script, keys.Set or keys.SetLoaded (see Fill).
func (s *Store) set(ctx context.Context, script *redis.Script, ws []Write) (written, refused []bool, err error) {
	if s.local != nil {
		written, refused = make([]bool, len(ws)), make([]bool, len(ws))
		for i := range written {
			written[i] = true
		}
		return written, refused, nil
	}
	args := make([][]any, len(ws))
	vks := make([]string, len(ws))
	channel := s.channelArg(ctx)
	for i, w := range ws {
		ver, verTTL := s.versionArgs(w.Version, w.TTL)
		vks[i] = w.VK
		args[i] = []any{w.Frame, ms(w.TTL), ver, verTTL, channel}
	}
	written, refused = make([]bool, len(ws)), make([]bool, len(ws))
	err = s.endLeases(ctx, op("set", len(ws)), s.WriteBy(), script, vks, nil, args, written, refused, nil)
	return written, refused, err
}

// Del deletes the value and the lease of each value key (the Del script:
// they share a slot), in one round trip per node, waking the lease's
// waiters. With a row version it leaves the version behind (a later write
// older than it is refused) and is refused where Redis has a newer one.
func (s *Store) Del(ctx context.Context, vks []string, version uint64) error {
	if s.local != nil {
		return nil
	}
	args := make([][]any, len(vks))
	ver, verTTL := s.versionArgs(version, 0)
	channel := s.channelArg(ctx)
	for i := range vks {
		args[i] = []any{ver, verTTL, channel}
	}
	return s.endLeases(ctx, "del", s.WriteBy(), keys.Del, vks, nil, args, nil, nil, nil)
}

// Generation returns the namespace's generation (see Cache.Clear), read
// from Redis once and then kept up to date by the subscriber; 0 until it
// could be read.
func (s *Store) Generation(ctx context.Context) uint64 { return s.GenerationAt(ctx, nowMicro()) }

// GenerationAt is Generation for a caller that has read the clock already
// (now, Unix µs): a read of Redis saves a clock read this way.
func (s *Store) GenerationAt(ctx context.Context, now int64) uint64 {
	if s.local != nil {
		return s.gen.Load()
	}
	// Read again once per health interval, by one caller: an instance
	// without L1 has no subscription to tell it of a Clear, and one with L1
	// may have lost the message.
	if last := s.genAt.Load(); (!s.genKnown.Load() || now-last > s.genEvery.Microseconds()) && s.genAt.CompareAndSwap(last, now) {
		_ = s.RefreshGeneration(ctx)
	}
	return s.gen.Load()
}

// RefreshGeneration reads the generation from Redis. It only grows here.
func (s *Store) RefreshGeneration(ctx context.Context) error {
	gk := s.Layout.Generation()
	var g uint64
	err := s.Call(ctx, s.nodeOf(ctx, gk), "generation", s.readBy(), func(ctx context.Context) error {
		v, err := s.RDB.Get(ctx, gk).Uint64()
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

// Clear starts a new generation and returns it.
func (s *Store) Clear(ctx context.Context) (uint64, error) {
	if s.local != nil {
		return s.gen.Add(1), nil
	}
	gk := s.Layout.Generation()
	var g uint64
	err := s.Call(ctx, s.nodeOf(ctx, gk), "clear", s.WriteBy(), func(ctx context.Context) error {
		var err error
		g, err = s.RDB.Incr(ctx, gk).Uint64()
		return err
	})
	if err == nil {
		for cur := s.gen.Load(); g > cur && !s.gen.CompareAndSwap(cur, g); cur = s.gen.Load() {
		}
		s.genKnown.Store(true)
	}
	return g, err
}

// Publish sends one invalidation message, by SPUBLISH when sharded.
func (s *Store) Publish(ctx context.Context, channel string, msg []byte, sharded bool) error {
	return s.Call(ctx, s.nodeOf(ctx, channel), "publish", s.WriteBy(), func(ctx context.Context) error {
		if sharded {
			return s.RDB.SPublish(ctx, channel, msg).Err()
		}
		return s.RDB.Publish(ctx, channel, msg).Err()
	})
}

// Sharded reports whether pub/sub is sharded (SSUBSCRIBE, SPUBLISH): on a
// cluster whose servers have SPUBLISH (Redis 7), found out once by COMMAND
// INFO; never on one node or Sentinel, where classic pub/sub has no bus to
// cross.
func (s *Store) Sharded(ctx context.Context) (bool, error) {
	if s.Cluster == nil {
		return false, nil
	}
	s.modeMu.Lock()
	defer s.modeMu.Unlock()
	if s.modeKnown.Load() {
		return s.sharded.Load(), nil
	}
	err := s.Call(ctx, "", "command_info", s.WriteBy(), func(ctx context.Context) error {
		info, err := s.Cluster.Do(ctx, "COMMAND", "INFO", "SPUBLISH").Slice()
		if err != nil {
			return err
		}
		s.sharded.Store(len(info) == 1 && info[0] != nil)
		return nil
	})
	if err != nil {
		return false, err
	}
	s.modeKnown.Store(true)
	return s.sharded.Load(), nil
}

// fillChannel is the lease scripts' last argument: the classic fill
// channel, or "" when pub/sub is sharded and the caller wakes the waiters
// on the sharded fill channel (see keys.wake). Until the mode is known it
// is found out, at most once a second; meanwhile the classic channel.
func (s *Store) fillChannel(ctx context.Context) string {
	if !s.modeKnown.Load() && s.Cluster != nil {
		now, last := time.Now().UnixNano(), s.modeTried.Load()
		if now-last > int64(time.Second) && s.modeTried.CompareAndSwap(last, now) {
			_, _ = s.Sharded(ctx)
		}
	}
	if s.modeKnown.Load() && s.sharded.Load() {
		return ""
	}
	return s.Layout.Fills()
}

// channelArg is fillChannel boxed for a lease script's arguments: the
// channel is the same for every script of a store, so it is boxed once.
func (s *Store) channelArg(ctx context.Context) any {
	if ch := s.fillChannel(ctx); ch != "" {
		return s.fillsArg
	}
	return argEmpty
}

// wake publishes, on the sharded fill channel, the value keys vks[i] whose
// script left their waiters to the caller (woke[i]), in one round trip to
// the channel's shard, by the deadline of the round trip that ended the
// leases (a coalesced fill waits no longer than its write timeout, wakes
// included). A wake that is lost (Redis failed, or late) costs the
// waiters their backstop: they acquire again after at most half a second.
func (s *Store) wake(ctx context.Context, deadline time.Time, vks []string, woke []bool) {
	var ws []string
	for i, w := range woke {
		if w {
			ws = append(ws, vks[i])
		}
	}
	if len(ws) == 0 {
		return
	}
	ch := s.Layout.ShardedFills()
	_ = s.Call(context.WithoutCancel(ctx), s.nodeOf(ctx, ch), "publish", deadline, func(ctx context.Context) error {
		_, err := s.RDB.Pipelined(ctx, func(p redis.Pipeliner) error {
			for _, vk := range ws {
				p.SPublish(ctx, ch, vk)
			}
			return nil
		})
		return err
	})
}

package store

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/keys"
)

// Set writes frames through (the Set script: the lease goes, then the
// value), in one round trip per node, and reports which were written and
// which refused (a versioned write older than Redis's); neither, for the
// keys of a node that failed.
func (s *Store) Set(ctx context.Context, ws []Write) (written, refused []bool, err error) {
	kk := make([][]string, len(ws))
	args := make([][]any, len(ws))
	vks := make([]string, len(ws))
	for i, w := range ws {
		ver, verTTL := s.versionArgs(w.Version, w.TTL)
		kk[i], vks[i] = leaseKeys(w.VK), w.VK
		args[i] = []any{w.Frame, ms(w.TTL), ver, verTTL, s.Layout.Fills()}
	}
	written, refused = make([]bool, len(ws)), make([]bool, len(ws))
	if s.local != nil {
		for i := range written {
			written[i] = true
		}
		return written, refused, nil
	}
	_, err = s.callKeys(ctx, op("set", len(ws)), s.WriteBy(), vks, func(ctx context.Context, idx []int) error {
		cmds, err := s.runScript(ctx, keys.Set, pick(kk, idx), pick(args, idx))
		for n, cmd := range cmds {
			v, cerr := cmd.Int64()
			written[idx[n]], refused[idx[n]] = cerr == nil && v == 1, cerr == nil && v == 0
		}
		return err
	})
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
	kk := make([][]string, len(vks))
	args := make([][]any, len(vks))
	ver, verTTL := s.versionArgs(version, 0)
	for i, vk := range vks {
		kk[i], args[i] = leaseKeys(vk), []any{ver, verTTL, s.Layout.Fills()}
	}
	_, err := s.callKeys(ctx, "del", s.WriteBy(), vks, func(ctx context.Context, idx []int) error {
		_, err := s.runScript(ctx, keys.Del, pick(kk, idx), pick(args, idx))
		return err
	})
	return err
}

// Generation returns the namespace's generation (see Cache.Clear), read
// from Redis once and then kept up to date by the subscriber; 0 until it
// could be read.
func (s *Store) Generation(ctx context.Context) uint64 {
	if s.local != nil {
		return s.gen.Load()
	}
	// Read again once per health interval, by one caller: an instance
	// without L1 has no subscription to tell it of a Clear, and one with L1
	// may have lost the message.
	now := nowMicro()
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

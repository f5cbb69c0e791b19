package store

import (
	"context"
	"errors"
	"time"
	"unsafe"

	"github.com/redis/go-redis/v9"
)

// Get reads one value key (nil when absent), sharing a round trip with
// concurrent reads unless coalescing is off.
func (s *Store) Get(ctx context.Context, vk string) ([]byte, error) {
	if s.local != nil {
		return nil, nil
	}
	if s.coal != nil {
		b, err := s.coal.Do(ctx, vk)
		return b, s.aborted(err)
	}
	return s.getOne(ctx, s.readBy(), vk)
}

// getOne is one GET of vk, done by deadline.
func (s *Store) getOne(ctx context.Context, deadline time.Time, vk string) (b []byte, err error) {
	err = s.Call(ctx, s.nodeOf(ctx, vk), "get", deadline, func(ctx context.Context) error {
		v, err := s.RDB.Get(ctx, vk).Result()
		b = unsafeBytes(v)
		return err
	})
	return b, err
}

// fetchReads is the coalescer's round trip: GET for a lone read, else one
// read per node.
func (s *Store) fetchReads(ctx context.Context, deadline time.Time, vks []string, raw [][]byte, errs []error) {
	if len(vks) == 1 {
		raw[0], errs[0] = s.getOne(ctx, deadline, vks[0])
		return
	}
	kerrs, _ := s.callKeys(ctx, "mget", deadline, vks, func(ctx context.Context, idx []int, errs []error) error { return s.mget(ctx, vks, idx, raw, errs) })
	batched := 0
	for i := range vks {
		if kerrs != nil {
			errs[i] = kerrs[i]
		}
		if errs[i] == nil || !errors.Is(errs[i], s.breakerOpen) && !errors.Is(errs[i], ErrNotSent) {
			batched++
		}
	}
	s.rec.Batched(batched)
}

// GetMany reads vks in one round trip per node (nil for absent keys);
// errs[i] is set for the keys of a node that failed.
func (s *Store) GetMany(ctx context.Context, vks []string) (raw [][]byte, errs []error, err error) {
	raw = make([][]byte, len(vks))
	if s.local != nil {
		return raw, nil, nil
	}
	errs, err = s.callKeys(ctx, "mget", s.readBy(), vks, func(ctx context.Context, idx []int, errs []error) error { return s.mget(ctx, vks, idx, raw, errs) })
	return raw, errs, err
}

// maxBatchCommand bounds the keys of one MGET; a larger batch is split into
// several commands, still sent in one round trip.
const maxBatchCommand = 512

// mget reads the keys vks[idx] into raw: MGETs of at most maxBatchCommand
// keys on a single node (a failed command fails the read), GETs on a
// cluster (no command spans two slots; errs[n] is set for each that
// failed). A failed read is not a miss.
func (s *Store) mget(ctx context.Context, vks []string, idx []int, raw [][]byte, errs []error) error {
	if s.single {
		// One node: callKeys passes every index, in order.
		if len(vks) <= maxBatchCommand { // one MGET: no slice of commands to allocate
			vals, err := s.RDB.MGet(ctx, vks...).Result()
			if err != nil {
				return err
			}
			putStrings(raw, vals)
			return nil
		}
		var cmds []*redis.SliceCmd
		if _, err := s.RDB.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := 0; j < len(vks); j += maxBatchCommand {
				cmds = append(cmds, p.MGet(ctx, vks[j:min(j+maxBatchCommand, len(vks))]...))
			}
			return nil
		}); err != nil {
			return err
		}
		for j, cmd := range cmds {
			vals, err := cmd.Result()
			if err != nil {
				return err
			}
			putStrings(raw[j*maxBatchCommand:], vals)
		}
		return nil
	}
	for n, cmd := range s.getEach(ctx, vks, idx, errs) {
		if v, err := cmd.Result(); err == nil {
			raw[idx[n]] = unsafeBytes(v)
		}
	}
	return nil
}

// putStrings puts MGET's answers vals into raw (nil for an absent key).
func putStrings(raw [][]byte, vals []any) {
	for n, v := range vals[:min(len(vals), len(raw))] {
		if v, ok := v.(string); ok {
			raw[n] = unsafeBytes(v)
		}
	}
}

// getEach GETs ks[idx] in one pipeline; errs[n] is set for each command
// that failed (an absent key is not a failure).
func (s *Store) getEach(ctx context.Context, ks []string, idx []int, errs []error) []*redis.StringCmd {
	cmds := make([]*redis.StringCmd, len(idx))
	_, _ = s.RDB.Pipelined(ctx, func(p redis.Pipeliner) error {
		for n, i := range idx {
			cmds[n] = p.Get(ctx, ks[i])
		}
		return nil
	})
	cmdErrs(cmds, errs)
	return cmds
}

// unsafeBytes returns the bytes of s without copying them, for decoding a
// reply that go-redis returned as a string: the frame is only read, and
// codecs must not keep the data they are given (see tiercache.Codec). It
// saves a copy of every value read.
func unsafeBytes(s string) []byte { return unsafe.Slice(unsafe.StringData(s), len(s)) }

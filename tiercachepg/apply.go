package tiercachepg

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/tiercache/tiercache"
)

// The apply side of a run. One goroutine takes committed transactions off
// the queue in commit order, merges those that queued up meanwhile into one
// Invalidate call (up to MaxBatchKeys keys and MaxBatchTags tags), retries
// the call with backoff until it returns nil, and only then advances the
// confirmed position, to the end of the last transaction of the batch.
// Merging is sound because invalidation is idempotent and every transaction
// of a batch committed before the call starts: one delete after the last
// commit does for all of them. A failure never advances the position, and
// nothing after a failed batch is invalidated before it succeeds.

// apply runs until ctx ends (nil) or Invalidate reports a closed cache.
func (r *run) apply(ctx context.Context) error {
	var carry *txn // taken off the queue but left for the next batch
	var done uint64
	for {
		first := carry
		carry = nil
		if first == nil {
			select {
			case first = <-r.q:
			case <-r.kick:
				r.confirmIdle(done)
				continue
			case <-ctx.Done():
				return nil
			}
		}
		batch := []*txn{first}
		nk, nt := len(first.keys), len(first.tags)
	fill:
		for {
			select {
			case t := <-r.q:
				if nk+len(t.keys) > r.cfg.MaxBatchKeys || nt+len(t.tags) > r.cfg.MaxBatchTags {
					carry = t
					break fill
				}
				batch = append(batch, t)
				nk, nt = nk+len(t.keys), nt+len(t.tags)
			default:
				break fill
			}
		}
		if err := r.invalidate(ctx, batch); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		// The figures first, the position after: whoever sees the
		// confirmed position past a transaction (Stats, a test waiting for
		// it) sees it counted too.
		now := time.Now()
		for _, t := range batch {
			delay := max(now.Sub(t.commitTime), 0)
			r.f.c.txns.Add(1)
			r.f.c.changes.Add(uint64(t.changes))
			r.f.c.delays.add(delay)
			r.f.obs.Applied(t.changes, delay)
		}
		r.f.c.pending.Add(-int64(len(batch)))
		last := batch[len(batch)-1]
		advance(&r.f.c.confirmed, uint64(last.endLSN))
		done = last.seq
		r.confirmIdle(done)
	}
}

// confirmIdle confirms the idle position once the transactions queued
// before it are all invalidated.
func (r *run) confirmIdle(done uint64) {
	r.mu.Lock()
	pos, seq := r.idlePos, r.idleSeq
	r.mu.Unlock()
	if done >= seq && pos > 0 {
		advance(&r.f.c.confirmed, uint64(pos))
	}
}

// invalidate applies a batch: the dead-letter policy for its unmapped
// changes first, then its keys and tags, deduplicated, in as many calls
// as the batch limits need, each retried until it returns nil. It returns
// an error only when ctx ends or the cache is closed.
func (r *run) invalidate(ctx context.Context, batch []*txn) error {
	keys, tags := newSet(), newSet()
	for _, t := range batch {
		for _, d := range t.dead {
			inv := r.deadLetter(ctx, d)
			keys.add(inv.Keys...)
			tags.add(inv.Tags...)
		}
		keys.add(t.keys...)
		tags.add(t.tags...)
	}
	ks, ts := keys.list, tags.list
	for len(ks) > 0 || len(ts) > 0 {
		nk, nt := min(len(ks), r.cfg.MaxBatchKeys), min(len(ts), r.cfg.MaxBatchTags)
		inv := tiercache.Invalidation{Keys: ks[:nk:nk], Tags: ts[:nt:nt]}
		if err := r.call(ctx, inv); err != nil {
			return err
		}
		ks, ts = ks[nk:], ts[nt:]
	}
	return nil
}

// call calls Invalidate until it returns nil, with backoff between
// failures. Only the end of ctx and a closed cache end it early.
func (r *run) call(ctx context.Context, inv tiercache.Invalidation) error {
	b := newBackoff(r.cfg.MaxBackoff)
	failures := 0
	for {
		err := r.safeInvalidate(ctx, inv)
		if err == nil {
			r.f.c.calls.Add(1)
			if failures > 0 {
				r.log.Info("tiercachepg: invalidations resumed", "after_failures", failures)
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, tiercache.ErrClosed) {
			return fmt.Errorf("tiercachepg: Invalidate: %w", err)
		}
		failures++
		r.f.c.failures.Add(1)
		r.f.obs.Failed(err)
		wait := b.next()
		r.log.Warn("tiercachepg: invalidation failed; holding the slot's position and retrying",
			"keys", len(inv.Keys), "tags", len(inv.Tags), "failures", failures, "retry_in", wait, "err", err)
		if !sleep(ctx, wait) {
			return ctx.Err()
		}
	}
}

// safeInvalidate calls Invalidate, turning a panic into an error (which is
// retried like any other).
func (r *run) safeInvalidate(ctx context.Context, inv tiercache.Invalidation) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("tiercachepg: Invalidate panicked: %v", p)
		}
	}()
	return r.cfg.Invalidate(ctx, inv)
}

// deadLetter runs the dead-letter policy for a change and returns what to
// invalidate instead (valid keys and tags only).
func (r *run) deadLetter(ctx context.Context, d deadChange) tiercache.Invalidation {
	if r.cfg.DeadLetter == nil {
		return tiercache.Invalidation{}
	}
	inv, err := func() (inv tiercache.Invalidation, err error) {
		defer func() {
			if p := recover(); p != nil {
				err = fmt.Errorf("dead-letter policy panicked: %v", p)
			}
		}()
		return r.cfg.DeadLetter(ctx, d.c, d.err)
	}()
	var t txn
	err = errors.Join(err, t.add(inv))
	if err != nil {
		r.f.c.deadLetterErrors.Add(1)
		r.log.Error("tiercachepg: dead-letter policy failed; passing the change over",
			"table", d.c.Schema+"."+d.c.Table, "op", d.c.Op.String(), "commit_lsn", d.c.CommitLSN, "err", err)
	}
	return tiercache.Invalidation{Keys: t.keys, Tags: t.tags}
}

// set is an insertion-ordered set of strings.
type set struct {
	list []string
	seen map[string]struct{}
}

func newSet() *set { return &set{seen: make(map[string]struct{})} }

func (s *set) add(vs ...string) {
	for _, v := range vs {
		if _, ok := s.seen[v]; !ok {
			s.seen[v] = struct{}{}
			s.list = append(s.list, v)
		}
	}
}

package tiercache

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/keys"
)

// The lease: before an instance calls the loader for a key that Redis does
// not have fresh, it takes the key's lease (SET NX PX of a random token on a
// key in the value's hash slot). Only the holder loads; the others wait for
// its value, polling with a capped backoff, or take the lease over when it
// expires (its holder died). The holder's write is a compare-and-set on the
// token (the Fill script). Set, Delete and invalidations delete the lease,
// so a value loaded before one of them is refused instead of landing after
// it: the stale set of classic cache-aside cannot happen.

type leaseMode uint8

const (
	leaseRead       leaseMode = iota // a read: load if missing or stale, wait for a holder
	leaseRefresh                     // Refresh: load even if fresh, wait for a holder
	leaseBackground                  // an early or stale refresh: load even if fresh, never wait
)

// errLeaseBusy ends a background refresh whose lease another instance holds.
var errLeaseBusy = errors.New("tiercache: lease held by another instance")

const (
	acquireBusy  = 0
	acquireOwned = 1
	acquireFresh = 2
)

type acquireResult struct {
	state    int64
	value    []byte // nil when absent
	leaseTTL time.Duration
	at       int64 // server time when the lease was taken (Unix µs), 0 for a fresh value
}

func newToken() string {
	var b [12]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// acquire runs the Acquire script: the value if fresh, else the lease if free.
func (c *Cache[V]) acquire(ctx context.Context, vk, lk, token string, force bool, notBefore int64) (acquireResult, error) {
	var res acquireResult
	forceArg := "0"
	if force {
		forceArg = "1"
	}
	err := c.call(ctx, "acquire", c.cfg.readTimeout, func(ctx context.Context) error {
		var err error
		res, err = parseAcquire(keys.Acquire.Run(ctx, c.rdb, []string{vk, lk},
			token, c.cfg.leaseTTL.Milliseconds(), nowMicro(), forceArg, strconv.FormatInt(notBefore, 10)))
		return err
	})
	return res, err
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
	if s, ok := vals[3].(string); ok {
		res.at, _ = strconv.ParseInt(s, 10, 64)
	}
	res.state, _ = vals[0].(int64)
	if s, ok := vals[1].(string); ok && s != "" {
		res.value = []byte(s)
	}
	if ms, ok := vals[2].(int64); ok && ms > 0 {
		res.leaseTTL = time.Duration(ms) * time.Millisecond
	}
	return res, nil
}

// fill writes frame b under vk: a compare-and-set on the lease token when
// token is set, a plain SET (unleased cache-aside) when it is "". It reports
// whether the value was written.
func (c *Cache[V]) fill(ctx context.Context, vk, token string, b []byte, ttl time.Duration) (bool, error) {
	written := false
	err := c.call(ctx, "fill", c.cfg.writeTimeout, func(ctx context.Context) error {
		if token == "" {
			written = true
			return c.rdb.Set(ctx, vk, b, ttl).Err()
		}
		n, err := keys.Fill.Run(ctx, c.rdb, []string{vk, keys.Lease(vk)}, token, b, ttl.Milliseconds()).Int64()
		written = n == 1
		return err
	})
	if err != nil {
		written = false
		c.log.Debug("tiercache: fill failed", "key", vk, "err", err)
		if token != "" {
			c.release(vk, token) // best effort, as after a failed acquire
		}
	}
	return written, err
}

// release gives a lease back after a failed load, fill or acquire, so
// that the next reader loads at once instead of waiting for the lease to
// expire. It runs in the background, off the read path, and retries every
// 100ms while Redis fails (say, until it is back from an outage), for as
// long as the lease could live; at most maxPendingReleases at once, beyond
// which the lease is left to expire.
func (c *Cache[V]) release(vk, token string) {
	if c.pendingReleases.Add(1) > maxPendingReleases || !c.goBackground() {
		c.pendingReleases.Add(-1)
		return
	}
	go func() {
		defer c.bg.Done()
		defer c.pendingReleases.Add(-1)
		deadline := time.Now().Add(c.cfg.leaseTTL)
		for {
			err := c.call(c.life, "release", c.cfg.writeTimeout, func(ctx context.Context) error {
				return keys.Release.Run(ctx, c.rdb, []string{keys.Lease(vk)}, token).Err()
			})
			if err == nil || c.life.Err() != nil || time.Now().After(deadline) {
				return
			}
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-t.C:
			case <-c.life.Done():
				t.Stop()
				return
			}
		}
	}()
}

const maxPendingReleases = 1024

// del deletes the value and lease of each key: one DEL per key (the two
// share a slot), pipelined, so that a cluster gets one round trip per node.
func (c *Cache[V]) del(ctx context.Context, userKeys []string) error {
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, k := range userKeys {
			vk := c.layout.Value(k)
			p.Del(ctx, vk, keys.Lease(vk))
		}
		return nil
	})
	return err
}

// leaseBackoff paces the polling of a waiter: 2ms doubling to 10ms, with
// jitter so that waiters do not poll in step, and never past the time the
// lease has left (plus a little), when a takeover becomes possible. The cap
// bounds how late a waiter sees the holder's fill: about 10ms at most, for
// one poll per 10ms per key and process while it waits.
type leaseBackoff struct{ d time.Duration }

func (b *leaseBackoff) sleep(ctx context.Context, leaseLeft time.Duration) error {
	if b.d == 0 {
		b.d = 2 * time.Millisecond
	} else {
		b.d = min(2*b.d, 10*time.Millisecond)
	}
	d := b.d/2 + time.Duration(rand.Int64N(int64(b.d/2)+1))
	if leaseLeft > 0 {
		d = min(d, leaseLeft+time.Millisecond)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

package store

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/keys"
)

// Before an instance calls the loader for a key that Redis does not have
// fresh, it takes the key's lease (SET NX PX of a random token on a key in
// the value's slot): only the holder loads, the others wait for its value
// or take the lease over when it expires (its holder died). The holder's
// write is a compare-and-set on the token (Fill). Set, Delete and their
// kin delete the lease, so a value loaded before one of them is refused
// instead of landing after it: the stale set of classic cache-aside cannot
// happen. The cache's load.go drives the protocol; these are its round trips.

// NewToken returns a random lease token.
func NewToken() string {
	var b [12]byte
	_, _ = crand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// The states of an acquire, as the script returns them.
const (
	AcquireBusy  = 0 // another instance holds the lease
	AcquireOwned = 1 // the lease is ours
	AcquireFresh = 2 // the value is fresh: no lease taken
	// AcquireHandedOff: the lease the caller waited for (AcquireReq.Awaited)
	// ended, filled or ended by a Delete, and no fresh value is there: the
	// value is what its holder loaded, for the caller's read only (see
	// keys.Acquire).
	AcquireHandedOff = 3
)

// AcquireReq asks for the lease of the value key VK under Token.
type AcquireReq struct {
	VK, Token string
	Keys      []string // keys.LeaseScript(VK), or nil to build them
	Force     bool     // take the lease even if the value is fresh
	NotBefore int64    // with Force: a value written after it (Unix µs) counts as fresh
	Wait      bool     // the caller will wait for another holder: ask to be woken
	Awaited   string   // the holder's token the caller waited for, if it did (AcquireResult.Holder)
}

// leaseKeys are the keys of vk's lease scripts (see keys.LeaseScript),
// ks when the caller has them already.
func leaseKeys(vk string, ks []string) []string {
	if ks != nil {
		return ks
	}
	return keys.LeaseScript(vk)
}

// AcquireResult is the reply to an AcquireReq: the state, the value (when
// fresh, handed off or another holds the lease), how long the other's
// lease has left and its token, and when ours was taken.
type AcquireResult struct {
	State    int64
	Value    []byte // nil when absent
	LeaseTTL time.Duration
	At       int64  // server time when the lease was taken (Unix µs), 0 for a fresh value
	Holder   string // the other's token, when busy
}

// Acquire runs the Acquire script for each request, in one round trip per
// node: the value if fresh, else the lease if free. errs[i] is set for the
// requests of a node that failed. A lone request shares its round trip with
// this store's other concurrent lone requests, as reads do (see leaseSlots).
func (s *Store) Acquire(ctx context.Context, reqs []AcquireReq) ([]AcquireResult, []error) {
	if s.local != nil {
		out := make([]AcquireResult, len(reqs))
		for i := range out {
			out[i] = AcquireResult{State: AcquireOwned, At: nowMicro()}
		}
		return out, nil
	}
	if len(reqs) == 1 && s.acquires != nil {
		// Not cancelled with ctx (the load's, which Close cancels): a
		// request that left its queue could still take the lease after the
		// load gave it back, and keep it for a lease TTL. The round trip is
		// bounded by the read timeout all the same.
		r, err := s.acquires.Do(context.WithoutCancel(ctx), reqs[0])
		if err != nil {
			return []AcquireResult{{}}, []error{s.aborted(err)}
		}
		return []AcquireResult{r}, nil
	}
	out := make([]AcquireResult, len(reqs))
	errs := make([]error, len(reqs))
	s.acquire(ctx, s.readBy(), reqs, out, errs)
	for _, err := range errs {
		if err != nil {
			return out, errs
		}
	}
	return out, nil
}

// acquire runs the Acquire scripts of reqs, done by deadline, into out and
// errs (the coalescer's round trip, and Acquire's for a batch).
func (s *Store) acquire(ctx context.Context, deadline time.Time, reqs []AcquireReq, out []AcquireResult, errs []error) {
	kk := make([][]string, len(reqs))
	args := make([][]any, len(reqs))
	vks := make([]string, len(reqs))
	now := any(nowMicro()) // boxed once for the batch
	for i, r := range reqs {
		kk[i] = leaseKeys(r.VK, r.Keys)
		notBefore := argZero
		if r.NotBefore != 0 {
			notBefore = strconv.FormatInt(r.NotBefore, 10)
		}
		awaited := argEmpty
		if r.Awaited != "" {
			awaited = r.Awaited
		}
		args[i] = []any{r.Token, s.leaseTTLArg, now, flag(r.Force), notBefore, flag(r.Wait), awaited}
		vks[i] = r.VK
	}
	kerrs, _ := s.callKeys(ctx, op("acquire", len(reqs)), deadline, vks, func(ctx context.Context, idx []int, errs []error) error {
		cmds := s.runScript(ctx, keys.Acquire, pick(kk, idx), pick(args, idx))
		for n, cmd := range cmds {
			if out[idx[n]], errs[n] = parseAcquire(cmd); errs[n] != nil {
				out[idx[n]] = AcquireResult{}
			}
		}
		return nil
	})
	if kerrs != nil {
		copy(errs, kerrs)
	}
}

// Script arguments boxed once: converting a string or a number to an
// interface allocates, and a miss's scripts take a dozen of them.
var argOne, argZero, argEmpty any = "1", "0", ""

func flag(b bool) any {
	if b {
		return argOne
	}
	return argZero
}

// leaseSlots is how many round trips of lone lease scripts (acquires, and
// fills) may be in flight at once. One: a miss's scripts are few next to
// its reads, and rarely more than one or two are on the wire at once, so
// with the reads' four slots they would nearly never share a round trip;
// with one, any that overlap do, at the cost of waiting for the round trip
// ahead of them (docs/PERFORMANCE.md has the figures).
const leaseSlots = 1

// pick returns xs[idx] in order (xs itself when idx is every index in
// order: callKeys groups a cluster's keys by node).
func pick[T any](xs []T, idx []int) []T {
	if len(idx) == len(xs) && isIdentity(idx) {
		return xs
	}
	out := make([]T, len(idx))
	for n, i := range idx {
		out[n] = xs[i]
	}
	return out
}

func isIdentity(idx []int) bool {
	for n, i := range idx {
		if n != i {
			return false
		}
	}
	return true
}

// parseAcquire reads the reply of the Acquire script.
func parseAcquire(cmd *redis.Cmd) (AcquireResult, error) {
	var res AcquireResult
	vals, err := cmd.Slice()
	if err != nil {
		return res, err
	}
	if len(vals) != 5 {
		return res, errors.New("acquire: unexpected reply")
	}
	res.State, _ = vals[0].(int64)
	if v, ok := vals[1].(string); ok && v != "" {
		res.Value = unsafeBytes(v)
	}
	if ms, ok := vals[2].(int64); ok && ms > 0 {
		res.LeaseTTL = time.Duration(ms) * time.Millisecond
	}
	if v, ok := vals[3].(string); ok {
		res.At, _ = strconv.ParseInt(v, 10, 64)
	}
	res.Holder, _ = vals[4].(string)
	return res, nil
}

// Write is one frame to store under VK for TTL. With a token it is a
// fill (a compare-and-set on the lease); without, a write-through. A
// version (the row's; 0: unversioned) refuses it if Redis has seen a newer
// one.
type Write struct {
	VK, Token string
	Keys      []string // keys.LeaseScript(VK), or nil to build them
	Frame     []byte
	TTL       time.Duration
	Version   uint64
}

// versionArgs are a write's row version arguments: the version and how
// long Redis keeps it (at least as long as the value, and the default TTL
// after a versioned Delete), so that a later write older than it is refused.
func (s *Store) versionArgs(version uint64, ttl time.Duration) (string, int64) {
	return keys.FormatVersion(version), ms(max(ttl, s.versionTTL))
}

// Fill writes loaded values, in one round trip per node, and reports which
// were written and which refused (a leased fill whose lease is gone);
// neither, when its command failed. A cache's fills are all leased or all
// unleased (WithoutLease: written through as Set writes, all or none, but
// a version as old as Redis's is written, as a leased fill's is). A
// lone leased fill shares its round trip with concurrent ones, as
// acquires do.
func (s *Store) Fill(ctx context.Context, ws []Write) (written, refused []bool, err error) {
	if ws[0].Token == "" || s.local != nil {
		return s.set(ctx, keys.SetLoaded, ws)
	}
	if len(ws) == 1 && s.fills != nil {
		// Not cancelled with ctx: see Acquire.
		r, err := s.fills.Do(context.WithoutCancel(ctx), ws[0])
		return []bool{r.written}, []bool{r.refused}, s.aborted(err)
	}
	written, refused = make([]bool, len(ws)), make([]bool, len(ws))
	err = s.fill(ctx, s.WriteBy(), ws, written, refused, nil)
	return written, refused, err
}

// fillResult is a lone fill's answer.
type fillResult struct{ written, refused bool }

// fillMany is the fill coalescer's round trip.
func (s *Store) fillMany(ctx context.Context, deadline time.Time, ws []Write, out []fillResult, errs []error) {
	written, refused := make([]bool, len(ws)), make([]bool, len(ws))
	_ = s.fill(ctx, deadline, ws, written, refused, errs)
	for i := range ws {
		out[i] = fillResult{written[i], refused[i]}
	}
}

// fill runs the Fill scripts of ws, done by deadline.
func (s *Store) fill(ctx context.Context, deadline time.Time, ws []Write, written, refused []bool, errs []error) error {
	args := make([][]any, len(ws))
	vks := make([]string, len(ws))
	kk := make([][]string, len(ws))
	channel := s.channelArg(ctx)
	for i, w := range ws {
		ver, verTTL := s.versionArgs(w.Version, w.TTL)
		args[i] = []any{w.Token, w.Frame, ms(w.TTL), ver, verTTL, channel}
		vks[i], kk[i] = w.VK, leaseKeys(w.VK, w.Keys)
	}
	return s.endLeases(ctx, op("fill", len(ws)), deadline, keys.Fill, vks, kk, args, written, refused, errs)
}

// endLeases runs sc, a script that ends the lease of each value key (Fill,
// Release, Set, Del), with the keys kk[i] (nil: built here) and args[i] for
// vks[i], in one round trip done by
// deadline, and wakes the waiters of the leases it ended (see
// keys.WokeFlag). done[i] and refused[i] are its reply for vks[i] (see
// leaseReply), errs[i] its error (done, refused and errs may be nil, for a
// caller that does not read them), err the first.
func (s *Store) endLeases(ctx context.Context, name string, deadline time.Time, sc *redis.Script, vks []string, kk [][]string, args [][]any, done, refused []bool, errs []error) (err error) {
	if kk == nil {
		kk = make([][]string, len(vks))
		for i, vk := range vks {
			kk[i] = leaseKeys(vk, nil)
		}
	}
	if done == nil {
		done, refused = make([]bool, len(vks)), make([]bool, len(vks))
	}
	woke := make([]bool, len(vks))
	kerrs, err := s.callKeys(ctx, name, deadline, vks, func(ctx context.Context, idx []int, errs []error) error {
		cmds := s.runScript(ctx, sc, pick(kk, idx), pick(args, idx))
		cmdErrs(cmds, errs)
		for n, cmd := range cmds {
			done[idx[n]], refused[idx[n]], woke[idx[n]] = leaseReply(cmd)
		}
		return nil
	})
	if errs != nil && kerrs != nil {
		copy(errs, kerrs)
	}
	s.wake(ctx, deadline, vks, woke)
	return err
}

// leaseReply reads the reply of a lease-ending script: done (1: written,
// deleted, released), refused (0), and whether its waiters are the
// caller's to wake (keys.WokeFlag); neither done nor refused when the
// command failed.
func leaseReply(cmd *redis.Cmd) (done, refused, woke bool) {
	v, err := cmd.Int64()
	if err != nil {
		return false, false, false
	}
	return v&1 == 1, v&1 == 0, v&keys.WokeFlag != 0
}

// Lease is a lease this instance holds: its value key and token.
type Lease struct{ VK, Token string }

// Release gives leases back after a load that did not fill them (it
// failed, was not to be cached, was cancelled by Close, or its acquire's
// reply was lost), so that the next reader anywhere loads at once instead
// of waiting for the lease to expire. It is the one release policy: in the
// background, off the read path; retried every 100ms while Redis fails, for
// as long as a lease could live; after Close, one last attempt (bounded by
// the write timeout), which Close waits for. At most maxPendingReleases run
// at once; beyond that a lease is left to expire.
func (s *Store) Release(ls []Lease) {
	if len(ls) == 0 || s.local != nil {
		return
	}
	if s.pendingReleases.Add(1) > maxPendingReleases {
		s.pendingReleases.Add(-1)
		return
	}
	args := make([][]any, len(ls))
	lks := make([]string, len(ls))
	channel := s.channelArg(context.Background())
	for i, l := range ls {
		lks[i] = l.VK
		args[i] = []any{l.Token, channel}
	}
	s.releases.Add(1)
	go func() {
		defer s.releases.Done()
		defer s.pendingReleases.Add(-1)
		defer func() {
			// The Observer (or Tracer) panicked around the round trip. No
			// caller is here to take the panic, and it must not end the
			// process: the leases expire with their TTL.
			if p := recover(); p != nil {
				defer func() { _ = recover() }() // the Logger's, too
				s.log.Error("tiercache: the Observer panicked while leases were given back; they expire with their TTL", "leases", len(ls), "panic", p)
			}
		}()
		deadline := time.Now().Add(s.leaseTTL)
		for {
			closing := s.life.Err() != nil
			// Not on life: a release must outlive Close by one attempt.
			// (A lease given back twice is harmless: Release checks the token.)
			err := s.endLeases(context.Background(), op("release", len(ls)), s.WriteBy(), keys.Release, lks, nil, args, nil, nil, nil)
			if err == nil || closing || time.Now().After(deadline) {
				return
			}
			t := time.NewTimer(100 * time.Millisecond)
			select {
			case <-t.C:
			case <-s.life.Done():
				t.Stop()
			}
		}
	}()
}

const maxPendingReleases = 1024

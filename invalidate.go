package tiercache

import (
	"context"
	"crypto/rand"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/msg"
	"github.com/tiercache/tiercache/internal/pubsub"
	"github.com/tiercache/tiercache/internal/store"
	"github.com/tiercache/tiercache/internal/wake"
)

// invalidator keeps the L1 tiers of all instances coherent through Redis
// pub/sub: one channel per namespace, on which Set, Delete and the other
// writes publish the keys they change, and which every instance with L1
// applies to its L1 (ignoring its own messages, which it applied locally
// already). Every instance publishes, L1 or not: a process without L1 (a
// change-event consumer calling Invalidate, a write-only service) still
// changes what the others have cached. Instances with L1 subscribe, and
// so do those with the lease, which apply the messages to their flights:
// a read that begins after a write reached the instance must not share a
// load that began before it, nor be handed what such a load read (see
// keys.Acquire). The messages' bytes are internal/msg's.
//
// Pub/sub delivers at most once, so the subscriber treats any doubt as loss:
// when its connection fails, or stays silent through a ping, it flushes L1,
// marks the subscription down (L1 entries then live at most the outage TTL)
// and subscribes again with a bounded backoff; once the new subscription is
// confirmed it flushes L1 again, since entries filled during the gap may have
// missed invalidations, and marks it up.
type invalidator struct {
	st       *store.Store
	channel  string
	id       [8]byte
	interval time.Duration
	rec      *recorder
	log      *slog.Logger

	// The subscriber's handlers; nil without L1 and without the lease
	// (no invalidations to apply), or with invalidation off.
	onKeys  func(keys []string)
	onFlush func()
	onTags  func(tags []envelope.Tag)
	hasL1   bool // onFlush flushes an L1 (counted as EventL1Flush)
	// publishes is whether this instance publishes its writes (invalidation
	// on); fills, when the lease is on, wakes the waiters of a lease whose
	// fill is published on the fill channel.
	publishes bool
	fills     *wake.Waits

	sub *subscription // set by subscribe, closed by stop
	// epoch counts the subscription's ups and downs, odd while it is up
	// (confirmed and healthy): the subscriber alone moves it. See healthy
	// and hearing.
	epoch atomic.Uint64
	// upAt is when the subscription last came up (Unix ns): one that
	// stayed up a while before user code ended it starts its backoff
	// anew (see stayedUp).
	upAt atomic.Int64
	// resubscribeIn is the wait before the latest resubscription, for
	// tests.
	resubscribeIn atomic.Int64
	reqs          chan pubReq
	done          chan struct{}
	// published is closed when the publisher has sent what was queued and
	// returned: a send after that publishes its own message.
	published chan struct{}
	wg        sync.WaitGroup
	// life bounds the subscriber's network calls; stop cancels it, so that
	// Close does not wait for a dial to an unreachable Redis.
	life   context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
}

// subscription is the pub/sub connection of the subscriber and its
// channels: the invalidation channel and the fill channel, by SUBSCRIBE,
// or, with sharded pub/sub, by SSUBSCRIBE to the invalidation channel's
// shard (the sharded fill channel shares its slot).
type subscription struct {
	channels []string
	sharded  bool

	mu sync.Mutex
	ps *redis.PubSub // the current connection, closed by stop
}

// close closes sub's current connection, which ends a Receive on it.
func (sub *subscription) close() {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.ps != nil {
		_ = sub.ps.Close()
	}
}

type pubReq struct {
	at   int64 // when the write it announces was acknowledged (Unix µs)
	keys []string
	tags []envelope.Tag
	all  bool
	ack  chan error
}

func newInstanceID() [8]byte {
	var id [8]byte
	_, _ = rand.Read(id[:])
	return id
}

func (iv *invalidator) start() {
	iv.reqs = make(chan pubReq, 1024)
	iv.done = make(chan struct{})
	iv.published = make(chan struct{})
	iv.life, iv.cancel = context.WithCancel(context.Background())
	if iv.publishes {
		iv.wg.Add(1)
		go iv.publish()
	} else {
		close(iv.published)
	}
	if iv.onKeys != nil || iv.fills != nil {
		iv.wg.Add(1)
		go iv.subscribe(0)
	}
}

// flush drops L1 (when there is one) and forgets the flights:
// invalidations may have been missed.
func (iv *invalidator) flush() {
	if iv.onFlush != nil {
		iv.onFlush()
		if iv.hasL1 {
			iv.rec.event(EventL1Flush)
		}
	}
}

// stop ends the goroutines and waits for them; nil-safe.
func (iv *invalidator) stop() {
	if iv == nil {
		return
	}
	iv.mu.Lock()
	iv.closed = true
	sub := iv.sub
	iv.mu.Unlock()
	// Cancel first: it ends a dial or handshake in progress, which holds the
	// PubSub's own lock that Close needs; then Close ends a Receive.
	iv.cancel()
	close(iv.done)
	if sub != nil {
		sub.close()
	}
	iv.wg.Wait()
}

// healthy reports whether invalidations (and fill messages) can currently
// arrive: the subscription is up.
func (iv *invalidator) healthy() bool { return iv.epoch.Load()&1 == 1 }

// hearing returns the subscription's epoch while it is up and this
// instance applies the others' writes to its flights, 0 otherwise. A flight
// that began at epoch e has heard every write made since it began, and
// forgotten itself if one was of its key, only while hearing still returns
// e: a flight begun while the subscription was down (or that lived through
// a gap) may hold a caller that joined after a write it never heard of, and
// must not be handed a value loaded before that write (see keys.Acquire).
// Nil-safe.
func (iv *invalidator) hearing() uint64 {
	if iv == nil || iv.onKeys == nil {
		return 0
	}
	if e := iv.epoch.Load(); e&1 == 1 {
		return e
	}
	return 0
}

// send publishes keys and tag versions (or, with all, a flush of every
// L1) and waits until the message has gone to Redis. Concurrent sends are
// batched into one message without delaying a lone sender: the publisher
// takes whatever has queued while it was busy. Nil-safe (invalidation off).
//
// A write acknowledged by Redis is announced even if Close runs meanwhile:
// the publisher sends what is queued before it returns, and a sender that
// comes after it (or whose message it never took) publishes its own, so
// that no other instance keeps serving what the write replaced.
func (iv *invalidator) send(ctx context.Context, keys []string, tags []envelope.Tag, all bool) error {
	if iv == nil || !iv.publishes || (len(keys) == 0 && len(tags) == 0 && !all) {
		return nil
	}
	r := pubReq{at: nowMicro(), keys: keys, tags: tags, all: all, ack: make(chan error, 1)}
	select {
	case iv.reqs <- r:
	case <-iv.published:
		return iv.publishBatch([]pubReq{r})
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.ack:
		return err
	case <-iv.published:
		select {
		case err := <-r.ack: // sent before the publisher returned
			return err
		default: // queued after it had drained the queue
			return iv.publishBatch([]pubReq{r})
		}
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (iv *invalidator) publish() {
	defer iv.wg.Done()
	defer close(iv.published)
	defer func() {
		// The Observer (or Tracer) panicked while a batch went out. No
		// caller is here to take the panic, and it must not end the
		// process: the publisher stops, and writers publish their own
		// invalidations from then on (see send), the batch's included. A
		// runtime.Goexit ends it the same way, without this log.
		if p := recover(); p != nil {
			safely(func() {
				iv.log.Error("tiercache: the Observer panicked in the invalidation publisher; writers publish their own invalidations from now on", "panic", p)
			})
		}
	}()
	var batch []pubReq
	for {
		select {
		case r := <-iv.reqs:
			batch = append(batch[:0], r)
		drain:
			for len(batch) < cap(iv.reqs) {
				select {
				case r := <-iv.reqs:
					batch = append(batch, r)
				default:
					break drain
				}
			}
			err := iv.publishBatch(batch)
			for _, r := range batch {
				r.ack <- err
			}
		case <-iv.done:
			// What was queued before the end still goes out (see send).
			for {
				select {
				case r := <-iv.reqs:
					r.ack <- iv.publishBatch([]pubReq{r})
				default:
					return
				}
			}
		}
	}
}

func (iv *invalidator) publishBatch(batch []pubReq) error {
	var keys []string
	var tags []envelope.Tag
	all, at := false, batch[0].at
	for _, r := range batch {
		keys, tags, all = append(keys, r.keys...), append(tags, r.tags...), all || r.all
		at = min(at, r.at) // the delay of the batch is its oldest write's
	}
	sharded, err := iv.st.Sharded(context.Background()) // see subscribe
	if err != nil {
		return fmt.Errorf("publishing invalidation: %w", err)
	}
	for _, m := range msg.EncodeAt(iv.id, at, keys, tags, all) {
		if err := iv.st.Publish(context.Background(), iv.channel, m, sharded); err != nil {
			return fmt.Errorf("publishing invalidation: %w", err)
		}
		iv.rec.event(EventInvalidationSent)
	}
	return nil
}

// apply handles one message. Any client of the Redis can publish on the
// channel, so nothing in a message can stop the subscriber: bytes that are
// not a tiercache message at all are logged and ignored; a tiercache
// message that does not parse (truncated, say) may have meant to invalidate
// anything, so it flushes L1.
func (iv *invalidator) apply(payload string) {
	m, err := msg.Decode(payload)
	if err != nil {
		if msg.HasHeader(payload) {
			iv.log.Warn("tiercache: truncated invalidation message; flushing L1", "channel", iv.channel, "bytes", len(payload), "err", err)
			iv.flush()
			return
		}
		iv.log.Warn("tiercache: ignoring a foreign message on the invalidation channel", "channel", iv.channel, "bytes", len(payload))
		return
	}
	if m.Sender == iv.id {
		return // ours, applied locally already
	}
	switch m.Kind {
	case msg.KindAll:
		// A Clear, or a flush: learn the generation first, so that no read
		// after the flush takes a value of the old one for current.
		_ = iv.st.RefreshGeneration(iv.life)
		iv.onFlush()
	case msg.KindKeys:
		iv.onKeys(m.Keys)
	case msg.KindTags:
		iv.onTags(m.Tags)
	}
	iv.rec.event(EventInvalidationReceived) // counted once applied
	if m.SentAt > 0 {
		iv.rec.invalidationDelay(time.Duration(nowMicro()-m.SentAt) * time.Microsecond)
	}
}

// subscribe finds out the pub/sub mode, then keeps the subscription (one
// connection for both channels, see subscription). Invalidations use
// sharded pub/sub (SPUBLISH, SSUBSCRIBE) on a cluster whose servers have it
// (Redis 7), so that a message goes to the shard that owns the channel
// instead of over the cluster bus to every node. The store finds the mode
// out once, from the servers, before the first publish or subscribe, so
// that every instance agrees.
//
// It starts after delay: a subscriber that user code ended (see exited)
// comes back with a backoff, not in a loop as fast as Redis accepts
// connections.
func (iv *invalidator) subscribe(delay time.Duration) {
	// First, so last: it runs even if user code in the deferred exited
	// calls runtime.Goexit (which runs the remaining deferred calls).
	defer iv.wg.Done()
	returned := false
	defer func() {
		if returned {
			return
		}
		// The Observer or the Logger panicked outside a message (see
		// receive), or called runtime.Goexit: subscribe again.
		p := recover()
		iv.exited(delay, p)
	}()
	if delay > 0 && !iv.sleep(delay) {
		returned = true
		return
	}
	iv.subscribeAndKeep()
	returned = true
}

func (iv *invalidator) subscribeAndKeep() {
	var sharded bool
	for backoff := 10 * time.Millisecond; ; backoff = min(2*backoff, time.Second) {
		var err error
		if sharded, err = iv.st.Sharded(iv.life); err == nil {
			break
		}
		if !iv.sleep(backoff) {
			return
		}
	}
	var channels []string
	if iv.onKeys != nil {
		channels = []string{iv.channel}
	}
	if iv.fills != nil && sharded {
		channels = append(channels, iv.st.Layout.ShardedFills())
	} else if iv.fills != nil {
		channels = append(channels, iv.st.Layout.Fills())
	}
	sub := &subscription{channels: channels, sharded: sharded}
	iv.mu.Lock()
	if iv.closed {
		iv.mu.Unlock()
		return
	}
	iv.sub = sub
	iv.mu.Unlock()
	iv.keep(sub)
}

// sleep waits d, and reports false if the invalidator stopped meanwhile.
func (iv *invalidator) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-iv.done:
		return false
	}
}

// keep keeps the subscription: it subscribes, reads it until it fails or
// stalls, flushes L1 (messages may have been lost), and subscribes again
// with a bounded backoff.
func (iv *invalidator) keep(sub *subscription) {
	backoff := 10 * time.Millisecond
	for {
		sub.mu.Lock()
		iv.mu.Lock()
		closed := iv.closed
		iv.mu.Unlock()
		if closed {
			sub.mu.Unlock()
			return
		}
		// No channel yet: no network call under the lock. stop closes ps
		// and cancels iv.life, which ends whatever network call is running.
		var ps *redis.PubSub
		var err error
		if sub.sharded {
			ps = iv.st.Cluster.SSubscribe(iv.life)
		} else {
			ps = iv.st.RDB.Subscribe(iv.life)
		}
		sub.ps = ps
		sub.mu.Unlock()

		confirmed := false
		if sub.sharded {
			err = ps.SSubscribe(iv.life, sub.channels...)
		} else {
			err = ps.Subscribe(iv.life, sub.channels...)
		}
		if err == nil {
			confirmed, err = iv.receive(sub, ps)
		}
		// Down as soon as it is known to be (messages may be lost from
		// here on), before the round trips below.
		wasUp := iv.healthy()
		stayed := wasUp && iv.stayedUp() // (a handler's panic returns no confirmed)
		if wasUp {
			iv.epoch.Add(1) // even: down
		}
		_ = ps.Close()
		// A cluster client picks the connection's node from its slot map:
		// after a failover it must learn the new owner before it retries.
		iv.st.ReloadClusterState(err)
		// Fill messages may have been missed too: waiters look for
		// themselves (and poll until the subscription is back).
		iv.fills.WakeAll()
		safely(iv.flush) // (a panic of the Observer here must not skip the backoff below)
		select {
		case <-iv.done:
			return
		default:
		}
		if wasUp {
			safely(func() {
				iv.log.Warn("tiercache: invalidation subscription lost; L1 flushed", "channels", sub.channels, "err", err)
			})
		}
		if confirmed || stayed {
			backoff = 10 * time.Millisecond
		}
		iv.resubscribeIn.Store(int64(backoff))
		if !iv.sleep(backoff) {
			return
		}
		backoff = min(backoff*2, time.Second)
	}
}

// receive reads sub's connection until it fails, stalls or a handler
// (user code: the Observer, the Logger) panics: then the subscription is
// lost like any other, and what the handler left half applied is flushed
// with the rest of L1 (see keep). No caller is here to take the panic, and
// it must not end the process.
func (iv *invalidator) receive(sub *subscription, ps *redis.PubSub) (confirmed bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("a handler panicked: %v", p)
		}
	}()
	return iv.receiver(sub).Receive(iv.life, ps)
}

// exited is what subscribe's goroutine does when user code in it panicked
// (p) outside a message or called runtime.Goexit, which nothing can stop:
// the subscription is down (L1 flushed, waiters polling), its connection
// closed, and a new goroutine subscribes again after a backoff, the
// previous one's doubled (delay), unless the invalidator stopped.
func (iv *invalidator) exited(delay time.Duration, p any) {
	next := min(max(2*delay, 10*time.Millisecond), time.Second)
	if iv.healthy() {
		if iv.stayedUp() {
			next = 10 * time.Millisecond // a rare failure, not a loop of them
		}
		iv.epoch.Add(1) // even: down
	}
	iv.mu.Lock()
	sub, closed := iv.sub, iv.closed
	if !closed {
		iv.sub = nil
		iv.resubscribeIn.Store(int64(next))
		iv.wg.Add(1) // before this goroutine's Done: stop's Wait waits for it too
		go iv.subscribe(next)
	}
	iv.mu.Unlock()
	if sub != nil {
		sub.close()
	}
	iv.fills.WakeAll()
	safely(iv.flush) // the Observer again: the new subscription flushes too
	if closed {
		return
	}
	safely(func() {
		if p != nil {
			iv.log.Error("tiercache: the invalidation subscriber panicked; L1 flushed, subscribing again", "panic", p)
		} else {
			iv.log.Warn("tiercache: the invalidation subscriber called runtime.Goexit; L1 flushed, subscribing again")
		}
	})
}

// stayedUp reports, while the subscription is up, whether it has been for
// a second: user code that ends it then fails rarely, and its restart need
// not back off; one that fails at every message never gets there.
func (iv *invalidator) stayedUp() bool {
	return time.Since(time.Unix(0, iv.upAt.Load())) >= time.Second
}

// safely runs f, which runs user code (the Observer, the Logger) on one of
// the cache's own goroutines, where no caller could take a panic: a panic
// of f is dropped.
func safely(f func()) {
	defer func() { _ = recover() }()
	f()
}

// receiver reads sub's connection (see pubsub.Receiver) and acts on what
// it hears: invalidations are applied, fills wake their waiters.
func (iv *invalidator) receiver(sub *subscription) *pubsub.Receiver {
	return &pubsub.Receiver{
		Channels: len(sub.channels), Interval: iv.interval, ID: fmt.Sprintf("%x", iv.id),
		Confirmed: func(first bool) {
			// Anything filled before this point may have missed an
			// invalidation (or a Clear): learn the generation, flush, then
			// trust L1 again.
			_ = iv.st.RefreshGeneration(iv.life)
			iv.flush()
			if !iv.healthy() {
				iv.upAt.Store(time.Now().UnixNano())
				iv.epoch.Add(1) // odd: up
			}
			if first {
				iv.log.Info("tiercache: invalidation subscription up", "channels", sub.channels, "sharded", sub.sharded)
			}
		},
		Message: func(channel, payload string) {
			if iv.fills != nil && (channel == iv.st.Layout.Fills() || channel == iv.st.Layout.ShardedFills()) {
				iv.fills.Wake(payload)
			} else {
				iv.apply(payload)
			}
		},
		// Quiet is when a lost Clear message is caught up with.
		Quiet: func() { _ = iv.st.RefreshGeneration(iv.life) },
		Echo: func(ctx context.Context, payload []byte) error {
			return iv.st.Publish(ctx, sub.channels[0], payload, sub.sharded)
		},
		Go: func(f func()) {
			iv.wg.Add(1)
			go func() {
				defer iv.wg.Done()
				// f sends an echo: a panic of the Observer there loses the
				// echo, which ends the subscription in time (see Receive).
				defer func() { _ = recover() }()
				f()
			}()
		},
	}
}

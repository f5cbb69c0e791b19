package tiercache

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/msg"
)

// invalidator keeps the L1 tiers of all instances coherent through Redis
// pub/sub: one channel per namespace, on which Set, Delete and the other
// writes publish the keys they change, and which every instance with L1
// applies to its L1 (ignoring its own messages, which it applied locally
// already). Every instance publishes, L1 or not: a process without L1 (a
// change-event consumer calling Invalidate, a write-only service) still
// changes what the others have cached. Only instances with L1 subscribe.
// The messages' bytes are internal/msg's.
//
// Pub/sub delivers at most once, so the subscriber treats any doubt as loss:
// when its connection fails, or stays silent through a ping, it flushes L1,
// marks the subscription down (L1 entries then live at most the outage TTL)
// and subscribes again with a bounded backoff; once the new subscription is
// confirmed it flushes L1 again, since entries filled during the gap may have
// missed invalidations, and marks it up.
type invalidator struct {
	st       *store
	channel  string
	id       [8]byte
	interval time.Duration
	rec      *recorder
	log      *slog.Logger

	// The subscriber's handlers; nil without L1 (no invalidations to apply).
	onKeys  func(keys []string)
	onFlush func()
	onTags  func(tags []envelope.Tag)
	// publishes is whether this instance publishes its writes (invalidation
	// on); fills, when the lease is on, wakes the waiters of a lease whose
	// fill is published on the fill channel.
	publishes bool
	fills     *fillWaits

	up   atomic.Bool // the subscription is confirmed and healthy
	reqs chan pubReq
	done chan struct{}
	wg   sync.WaitGroup
	// life bounds the subscriber's network calls; stop cancels it, so that
	// Close does not wait for a dial to an unreachable Redis.
	life   context.Context
	cancel context.CancelFunc

	mu     sync.Mutex
	ps     *redis.PubSub // the current subscription, closed by stop
	closed bool
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
	iv.life, iv.cancel = context.WithCancel(context.Background())
	if iv.publishes {
		iv.wg.Add(1)
		go iv.publish()
	}
	if len(iv.channels()) > 0 {
		iv.wg.Add(1)
		go iv.subscribe()
	}
}

// channels are what the subscriber listens to: the invalidation channel
// (with L1) and the fill channel (with the lease).
func (iv *invalidator) channels() []string {
	var chs []string
	if iv.onKeys != nil {
		chs = append(chs, iv.channel)
	}
	if iv.fills != nil {
		chs = append(chs, iv.st.layout.Fills())
	}
	return chs
}

// flush drops L1 (when there is one): invalidations may have been missed.
func (iv *invalidator) flush() {
	if iv.onFlush != nil {
		iv.onFlush()
		iv.rec.event(EventL1Flush)
	}
}

// stop ends the goroutines and waits for them; nil-safe.

func (iv *invalidator) stop() {
	if iv == nil {
		return
	}
	iv.mu.Lock()
	iv.closed = true
	ps := iv.ps
	iv.mu.Unlock()
	// Cancel first: it ends a dial or handshake in progress, which holds the
	// PubSub's own lock that Close needs; then Close ends a Receive.
	iv.cancel()
	close(iv.done)
	if ps != nil {
		_ = ps.Close()
	}
	iv.wg.Wait()
}

// healthy reports whether invalidations can currently arrive.
func (iv *invalidator) healthy() bool { return iv.up.Load() }

// send publishes keys and tag versions (or, with all, a flush of every
// L1) and waits until the message has gone to Redis. Concurrent sends are
// batched into one message without delaying a lone sender: the publisher
// takes whatever has queued while it was busy. Nil-safe (invalidation off).
func (iv *invalidator) send(ctx context.Context, keys []string, tags []envelope.Tag, all bool) error {
	if iv == nil || !iv.publishes || (len(keys) == 0 && len(tags) == 0 && !all) {
		return nil
	}
	r := pubReq{at: nowMicro(), keys: keys, tags: tags, all: all, ack: make(chan error, 1)}
	select {
	case iv.reqs <- r:
	case <-iv.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case err := <-r.ack:
		return err
	case <-iv.done:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (iv *invalidator) publish() {
	defer iv.wg.Done()
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
			for { // whoever queued before the end is told, not left waiting
				select {
				case r := <-iv.reqs:
					r.ack <- ErrClosed
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
	for _, m := range msg.EncodeAt(iv.id, at, keys, tags, all) {
		if err := iv.st.publish(context.Background(), iv.channel, m); err != nil {
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

func (iv *invalidator) subscribe() {
	defer iv.wg.Done()
	backoff := 10 * time.Millisecond
	for {
		iv.mu.Lock()
		if iv.closed {
			iv.mu.Unlock()
			return
		}
		// No channel yet: no network call under the lock. stop closes ps
		// and cancels iv.life, which ends whatever network call is running.
		ps := iv.st.rdb.Subscribe(iv.life)
		iv.ps = ps
		iv.mu.Unlock()

		confirmed, err := false, ps.Subscribe(iv.life, iv.channels()...)
		if err == nil {
			confirmed, err = iv.receive(ps)
		}
		_ = ps.Close()
		wasUp := iv.up.Swap(false)
		iv.flush()
		// Fill messages may have been missed too: waiters look for
		// themselves (and poll until the subscription is back).
		iv.fills.wakeAll()
		select {
		case <-iv.done:
			return
		default:
		}
		if wasUp {
			iv.log.Warn("tiercache: invalidation subscription lost; L1 flushed", "channel", iv.channel, "err", err)
		}
		if confirmed {
			backoff = 10 * time.Millisecond
		}
		t := time.NewTimer(backoff)
		select {
		case <-t.C:
		case <-iv.done:
			t.Stop()
			return
		}
		backoff = min(backoff*2, time.Second)
	}
}

// receive reads the subscription until it fails or stalls. It reports
// whether the subscription had been confirmed.
func (iv *invalidator) receive(ps *redis.PubSub) (confirmed bool, err error) {
	pinged := false
	want, subscribed := len(iv.channels()), 0
	for {
		msg, err := ps.ReceiveTimeout(iv.life, iv.interval)
		if err != nil {
			if isTimeout(err) && !pinged {
				// Silence: make the server say something. A dead connection
				// fails the ping; a stalled one leaves the next receive silent.
				pinged = true
				if err := ps.Ping(iv.life); err != nil {
					return confirmed, err
				}
				continue
			}
			if isTimeout(err) {
				err = errors.New("no answer to ping: subscription stalled")
			}
			return confirmed, err
		}
		pinged = false
		switch m := msg.(type) {
		case *redis.Subscription:
			if m.Kind != "subscribe" {
				continue
			}
			if subscribed++; subscribed < want {
				continue
			}
			// Anything filled before this point may have missed an
			// invalidation: flush, then trust L1 again.
			iv.flush()
			iv.up.Store(true)
			if !confirmed {
				confirmed = true
				iv.log.Info("tiercache: invalidation subscription up", "channels", iv.channels())
			}
		case *redis.Message:
			if iv.fills != nil && m.Channel == iv.st.layout.Fills() {
				iv.fills.wake(m.Payload)
				continue
			}
			iv.apply(m.Payload)
		case *redis.Pong:
		}
	}
}

// fillWaits wakes this instance's waiters for other instances' leases: the
// script that ends a waited-for lease (a fill, a release, a write) publishes
// its value key on the fill channel, and the subscriber calls wake. A
// waiter watches its keys before its acquire, so that a message that comes
// between the acquire's reply and the wait is not lost.
type fillWaits struct {
	mu sync.Mutex
	m  map[string]map[chan struct{}]struct{} // by value key
}

// watch returns a channel that receives when any of vks is woken, and the
// function that stops watching.
func (f *fillWaits) watch(vks []string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	if f.m == nil {
		f.m = map[string]map[chan struct{}]struct{}{}
	}
	for _, vk := range vks {
		set := f.m[vk]
		if set == nil {
			set = map[chan struct{}]struct{}{}
			f.m[vk] = set
		}
		set[ch] = struct{}{}
	}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		for _, vk := range vks {
			if set := f.m[vk]; set != nil {
				delete(set, ch)
				if len(set) == 0 {
					delete(f.m, vk)
				}
			}
		}
		f.mu.Unlock()
	}
}

func (f *fillWaits) wake(vk string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.m[vk] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// wakeAll wakes every waiter (nil-safe): messages may have been lost.
func (f *fillWaits) wakeAll() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, set := range f.m {
		for ch := range set {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

package tiercache

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/envelope"
)

// invalidator keeps the L1 tiers of all instances coherent through Redis
// pub/sub: one channel per namespace, on which Set, Delete and the other
// writes publish the keys they change, and which every instance applies to
// its L1 (ignoring its own messages, which it applied locally already).
//
// Pub/sub delivers at most once, so the subscriber treats any doubt as loss:
// when its connection fails, or stays silent through a ping, it flushes L1,
// marks the subscription down (L1 entries then live at most the outage TTL)
// and subscribes again with a bounded backoff; once the new subscription is
// confirmed it flushes L1 again, since entries filled during the gap may have
// missed invalidations, and marks it up.
type invalidator struct {
	rdb      redis.UniversalClient
	channel  string
	id       [8]byte
	interval time.Duration
	timeout  time.Duration
	rec      *recorder
	log      *slog.Logger
	call     func(ctx context.Context, op string, timeout time.Duration, fn func(context.Context) error) error

	onKeys  func(keys []string)
	onFlush func()
	onTags  func(tags []envelope.Tag)

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
	keys []string
	tags []envelope.Tag
	all  bool
	ack  chan error
}

const (
	msgMagic   = 'T'
	msgVersion = 1
	kindKeys   = 'k'
	kindTags   = 't'
	kindAll    = 'a'
	msgHeader  = 11
	maxMsgSize = 64 << 10
)

func newInstanceID() [8]byte {
	var id [8]byte
	_, _ = rand.Read(id[:])
	return id
}

func (iv *invalidator) start() {
	iv.reqs = make(chan pubReq, 1024)
	iv.done = make(chan struct{})
	iv.life, iv.cancel = context.WithCancel(context.Background())
	iv.wg.Add(2)
	go iv.subscribe()
	go iv.publish()
}

// stop ends both goroutines and waits for them.
func (iv *invalidator) stop() {
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

// send publishes keys (or, with all, a flush of every L1) and waits until
// the message has gone to Redis. Concurrent sends are batched into one
// message without delaying a lone sender: the publisher takes whatever has
// queued while it was busy.
func (iv *invalidator) send(ctx context.Context, keys []string, all bool) error {
	return iv.enqueue(ctx, pubReq{keys: keys, all: all, ack: make(chan error, 1)})
}

// sendTags publishes new tag versions, like send.
func (iv *invalidator) sendTags(ctx context.Context, tags []envelope.Tag) error {
	return iv.enqueue(ctx, pubReq{tags: tags, ack: make(chan error, 1)})
}

func (iv *invalidator) enqueue(ctx context.Context, r pubReq) error {
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
	all := false
	for _, r := range batch {
		all = all || r.all
	}
	var msgs [][]byte
	if all {
		msgs = append(msgs, iv.header(kindAll))
	} else {
		keyMsg, tagMsg := iv.header(kindKeys), iv.header(kindTags)
		for _, r := range batch {
			for _, k := range r.keys {
				if len(keyMsg) > msgHeader && len(keyMsg)+len(k)+binary.MaxVarintLen64 > maxMsgSize {
					msgs = append(msgs, keyMsg)
					keyMsg = iv.header(kindKeys)
				}
				keyMsg = binary.AppendUvarint(keyMsg, uint64(len(k)))
				keyMsg = append(keyMsg, k...)
			}
			for _, t := range r.tags {
				if len(tagMsg) > msgHeader && len(tagMsg)+len(t.Name)+binary.MaxVarintLen64+8 > maxMsgSize {
					msgs = append(msgs, tagMsg)
					tagMsg = iv.header(kindTags)
				}
				tagMsg = binary.AppendUvarint(tagMsg, uint64(len(t.Name)))
				tagMsg = append(tagMsg, t.Name...)
				tagMsg = binary.BigEndian.AppendUint64(tagMsg, t.Version)
			}
		}
		for _, m := range [][]byte{keyMsg, tagMsg} {
			if len(m) > msgHeader {
				msgs = append(msgs, m)
			}
		}
	}
	for _, m := range msgs {
		err := iv.call(context.Background(), "publish", iv.timeout, func(ctx context.Context) error {
			return iv.rdb.Publish(ctx, iv.channel, m).Err()
		})
		if err != nil {
			return fmt.Errorf("publishing invalidation: %w", err)
		}
		iv.rec.event(EventInvalidationSent)
	}
	return nil
}

func (iv *invalidator) header(kind byte) []byte {
	m := make([]byte, msgHeader, 256)
	m[0], m[1] = msgMagic, msgVersion
	copy(m[2:10], iv.id[:])
	m[10] = kind
	return m
}

// apply handles one message; malformed ones are logged and dropped (a
// foreign publisher on our channel must not break the subscriber).
func (iv *invalidator) apply(payload string) {
	if len(payload) < msgHeader || payload[0] != msgMagic || payload[1] != msgVersion {
		iv.log.Warn("tiercache: ignoring malformed invalidation message", "channel", iv.channel, "bytes", len(payload))
		return
	}
	if payload[2:10] == string(iv.id[:]) {
		return // ours, applied locally already
	}
	switch payload[10] {
	case kindAll:
		iv.onFlush()
		iv.rec.event(EventInvalidationReceived)
	case kindKeys:
		b := []byte(payload[msgHeader:])
		keys := make([]string, 0, 8)
		for len(b) > 0 {
			n, w := binary.Uvarint(b)
			if w <= 0 || uint64(len(b)-w) < n {
				iv.log.Warn("tiercache: truncated invalidation message; flushing L1", "channel", iv.channel)
				iv.onFlush()
				return
			}
			keys = append(keys, string(b[w:w+int(n)]))
			b = b[w+int(n):]
		}
		iv.onKeys(keys)
		iv.rec.event(EventInvalidationReceived) // counted once applied
	case kindTags:
		b := []byte(payload[msgHeader:])
		var tags []envelope.Tag
		for len(b) > 0 {
			n, w := binary.Uvarint(b)
			if w <= 0 || uint64(len(b)-w) < n+8 {
				iv.log.Warn("tiercache: truncated tag invalidation message; flushing L1", "channel", iv.channel)
				iv.onFlush()
				return
			}
			tags = append(tags, envelope.Tag{Name: string(b[w : w+int(n)]), Version: binary.BigEndian.Uint64(b[w+int(n):])})
			b = b[w+int(n)+8:]
		}
		iv.onTags(tags)
		iv.rec.event(EventInvalidationReceived)
	default:
		iv.log.Warn("tiercache: unknown invalidation message kind", "kind", payload[10])
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
		ps := iv.rdb.Subscribe(iv.life)
		iv.ps = ps
		iv.mu.Unlock()

		confirmed, err := false, ps.Subscribe(iv.life, iv.channel)
		if err == nil {
			confirmed, err = iv.receive(ps)
		}
		_ = ps.Close()
		wasUp := iv.up.Swap(false)
		iv.onFlush()
		iv.rec.event(EventL1Flush)
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
			if m.Kind == "subscribe" && m.Channel == iv.channel {
				// Anything filled before this point may have missed an
				// invalidation: flush, then trust L1 again.
				iv.onFlush()
				iv.up.Store(true)
				if confirmed {
					continue
				}
				confirmed = true
				iv.log.Info("tiercache: invalidation subscription up", "channel", iv.channel)
			}
		case *redis.Message:
			iv.apply(m.Payload)
		case *redis.Pong:
		}
	}
}

// Package pubsub reads a Redis pub/sub subscription and checks that it
// still carries what it should: tiercache's invalidation subscriber (in
// the root package) keeps the connection and acts on what Receive tells it.
//
// Pub/sub delivers at most once and says nothing when it stops delivering,
// so Receive checks the subscription twice per health interval. Silence is
// answered with a ping: a dead connection fails it, a stalled one stays
// silent. And an echo: the subscriber publishes a message to itself
// through the client its writes use, and must hear it back within an
// interval. That catches what a ping cannot: a live connection to a server
// the writes no longer reach, as after a Sentinel failover (go-redis moves
// its command connections to the new master but not a subscription) or a
// split brain.
package pubsub

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/store"
)

// EchoPrefix starts the echo messages a subscriber sends itself. Every
// receiver drops them: they are nobody's invalidation.
const EchoPrefix = "\x00tiercache-echo:"

// Receiver is what Receive needs besides the connection.
type Receiver struct {
	Channels int           // how many channels were subscribed: confirmed once each has been
	Interval time.Duration // the health interval
	ID       string        // the instance's id, which makes its echoes its own
	// Confirmed is called once every channel's subscription is confirmed
	// (again after go-redis resubscribed on a new connection): from here
	// on, messages arrive. first is whether it is the first time for this
	// connection.
	Confirmed func(first bool)
	// Message is called for each message that is not an echo.
	Message func(channel, payload string)
	// Quiet is called when a ping goes out after an interval of silence: a
	// quiet moment, when the subscriber can catch up on what it may have
	// missed.
	Quiet func()
	// Echo publishes payload on the first channel, through the client the
	// writes use.
	Echo func(ctx context.Context, payload []byte) error
	// Go runs f aside (the echo's send, so that a slow Redis does not hold
	// up the reads that notice a stall); the subscriber waits for it when it
	// stops.
	Go func(f func())
}

// Receive reads ps until it fails or stalls, and returns why. It reports
// whether the subscription had been confirmed. ctx bounds every network
// call.
func (r *Receiver) Receive(ctx context.Context, ps *redis.PubSub) (confirmed bool, err error) {
	subscribed := 0
	lastHeard, pingAt := time.Now(), time.Time{}
	var echo string              // the echo in flight, "" for none
	var echoAt time.Time         // when it was sent
	nextEcho := time.Time{}      // when the next one goes (zero until confirmed)
	var echoFailed chan struct{} // closed when the echo in flight could not be sent
	for seq := 0; ; {
		now := time.Now()
		if echo != "" {
			select {
			case <-echoFailed:
				echo = ""
			default:
			}
		}
		if echo != "" && now.Sub(echoAt) > r.Interval {
			return confirmed, errors.New("own echo not heard back: subscribed to a server the writes no longer reach")
		}
		if echo == "" && confirmed && now.After(nextEcho) {
			seq++
			echo = fmt.Sprintf("%s%s:%d", EchoPrefix, r.ID, seq)
			echoAt, nextEcho = now, now.Add(r.Interval)
			// If it cannot be sent, writes fail too: the breaker and the
			// outage rules handle that, and the echo is not waited for.
			failed, payload := make(chan struct{}), []byte(echo)
			r.Go(func() {
				if err := r.Echo(ctx, payload); err != nil {
					close(failed)
				}
			})
			echoFailed = failed
		}
		// Wake for the next echo, or for the deadline of the one in flight;
		// never for less than 50ms: a read deadline that cuts a message
		// short would break the connection.
		wait := r.Interval
		if confirmed && echo == "" {
			wait = min(wait, time.Until(nextEcho))
		} else if echo != "" {
			wait = min(wait, time.Until(echoAt.Add(r.Interval)))
		}
		wait = max(wait, 50*time.Millisecond)
		m, err := ps.ReceiveTimeout(ctx, wait)
		if err != nil {
			if !store.IsTimeout(err) { // not a timeout: the connection failed
				return confirmed, err
			}
			switch since := time.Since(lastHeard); {
			case !pingAt.IsZero() && time.Since(pingAt) > r.Interval:
				return confirmed, errors.New("no answer to ping: subscription stalled")
			case pingAt.IsZero() && since > r.Interval:
				// Silence: make the server say something.
				pingAt = time.Now()
				if err := ps.Ping(ctx); err != nil {
					return confirmed, err
				}
				r.Quiet()
			}
			continue
		}
		lastHeard, pingAt = time.Now(), time.Time{}
		switch m := m.(type) {
		case *redis.Subscription:
			switch m.Kind {
			case "subscribe", "ssubscribe":
			case "sunsubscribe", "unsubscribe":
				// The server ended it: the channel's slot moved (a failover,
				// a resharding). Subscribe again, to the new owner.
				return confirmed, fmt.Errorf("%s of %s by the server", m.Kind, m.Channel)
			default:
				continue
			}
			if subscribed++; subscribed < r.Channels {
				continue
			}
			r.Confirmed(!confirmed)
			if !confirmed {
				confirmed = true
				nextEcho = time.Now().Add(r.Interval)
			}
		case *redis.Message:
			switch {
			case strings.HasPrefix(m.Payload, EchoPrefix):
				if m.Payload == echo {
					echo = ""
				}
			default:
				r.Message(m.Channel, m.Payload)
			}
		case *redis.Pong:
		}
	}
}

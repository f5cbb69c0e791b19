package pubsub

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

func TestMain(m *testing.M) { redistest.MainWithLeakCheck(m) }

// run starts r.Receive on a subscription to channels and returns what it
// returned once it does.
func run(t *testing.T, rdb *redis.Client, r *Receiver, channels ...string) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	ps := rdb.Subscribe(ctx, channels...)
	var wg sync.WaitGroup
	r.Channels = len(channels)
	if r.Go == nil {
		r.Go = func(f func()) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				f()
			}()
		}
	}
	done, returned := make(chan error, 1), make(chan struct{})
	go func() {
		defer close(returned)
		_, err := r.Receive(ctx, ps)
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		_ = ps.Close()
		<-returned
		wg.Wait()
	})
	return done
}

// The subscriber hears its messages once confirmed, never its echoes, and
// keeps going while its echoes come back.
func TestReceiveDeliversMessagesAndKeepsTheEchoToItself(t *testing.T) {
	rdb := redistest.SharedServer(t).Client(t)
	ctx := t.Context()
	ch, other := redistest.UniquePrefix(t)+"inv", redistest.UniquePrefix(t)+"fills"
	confirmed := make(chan bool, 4)
	got := make(chan string, 16)
	var echoes sync.WaitGroup
	echoes.Add(2)
	var mu sync.Mutex
	n := 0
	r := &Receiver{
		// Long enough that an echo comes back in time on a busy machine.
		Interval: time.Second, ID: "me",
		Confirmed: func(first bool) { confirmed <- first },
		Message:   func(channel, payload string) { got <- channel + "=" + payload },
		Quiet:     func() {},
		Echo: func(ctx context.Context, payload []byte) error {
			if !strings.HasPrefix(string(payload), EchoPrefix+"me:") {
				t.Errorf("echo %q does not carry the id", payload)
			}
			mu.Lock()
			if n++; n <= 2 {
				defer echoes.Done()
			}
			mu.Unlock()
			return rdb.Publish(ctx, ch, payload).Err()
		},
	}
	done := run(t, rdb, r, ch, other)
	if first := <-confirmed; !first {
		t.Fatal("the first confirmation is not marked first")
	}
	rdb.Publish(ctx, ch, "a")
	rdb.Publish(ctx, other, "b")
	for _, want := range []string{ch + "=a", other + "=b"} {
		if m := <-got; m != want {
			t.Fatalf("got %q, want %q", m, want)
		}
	}
	// Two echoes sent, so the first was heard back.
	within(t, "a second echo", func() { echoes.Wait() })
	select {
	case err := <-done:
		t.Fatalf("Receive returned while its echoes came back: %v", err)
	case m := <-got:
		t.Fatalf("an echo reached Message: %q", m)
	case <-time.After(2 * r.Interval):
	}
	// Confirmed once both channels were, not once per channel.
	if n := len(confirmed); n != 0 {
		t.Fatalf("confirmed %d more times", n)
	}
}

// within runs wait, and fails the test if it has not returned in a minute:
// a bound for a broken behaviour, not for a slow machine.
func within(t *testing.T, what string, wait func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		wait()
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatalf("no %s in a minute", what)
	}
}

// An echo that does not come back (the writes go to a server the
// subscription is not on) ends Receive with an error; an echo that could
// not be sent is not waited for.
func TestReceiveEndsWhenItsEchoIsNotHeard(t *testing.T) {
	rdb := redistest.SharedServer(t).Client(t)
	ch := redistest.UniquePrefix(t) + "inv"
	for _, tc := range []struct {
		name    string
		sendErr error
		ends    bool
	}{
		{"lost", nil, true},
		{"not sent", errors.New("refused"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Receiver{
				// Long enough that a ping is answered in time on a busy
				// machine: a late pong would end Receive as a stall.
				Interval: time.Second, ID: "me",
				Confirmed: func(bool) {}, Message: func(string, string) {}, Quiet: func() {},
				// Published nowhere: as if to another server. Sent inline, so
				// that a failed send is seen at once.
				Echo: func(context.Context, []byte) error { return tc.sendErr },
				Go:   func(f func()) { f() },
			}
			done := run(t, rdb, r, ch)
			if !tc.ends {
				select {
				case err := <-done:
					t.Fatalf("Receive returned over an echo it could not send: %v", err)
				case <-time.After(4 * r.Interval):
				}
				return
			}
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "echo not heard") {
					t.Fatalf("Receive returned %v, want the lost echo", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("Receive goes on without its echo")
			}
		})
	}
}

// An unsubscribe confirmation (what Redis sends unasked, as SUNSUBSCRIBE,
// when the channel's slot moves) ends Receive: subscribe again, elsewhere.
func TestReceiveEndsWhenTheServerUnsubscribes(t *testing.T) {
	rdb := redistest.SharedServer(t).Client(t)
	ctx := t.Context()
	ch := redistest.UniquePrefix(t) + "inv"
	confirmed := make(chan bool, 1)
	r := &Receiver{
		Interval: time.Minute, ID: "me",
		Confirmed: func(first bool) { confirmed <- first }, Message: func(string, string) {}, Quiet: func() {},
		Echo: func(context.Context, []byte) error { return nil },
	}
	ps := rdb.Subscribe(ctx, ch)
	defer ps.Close()
	r.Channels, r.Go = 1, func(f func()) { f() }
	done := make(chan error, 1)
	go func() {
		_, err := r.Receive(ctx, ps)
		done <- err
	}()
	within(t, "confirmation", func() { <-confirmed })
	if err := ps.Unsubscribe(ctx, ch); err != nil {
		t.Fatal(err)
	}
	var err error
	within(t, "return from Receive after the unsubscribe", func() { err = <-done })
	if err == nil || !strings.Contains(err.Error(), "unsubscribe of "+ch) {
		t.Fatalf("Receive returned %v, want the unsubscribe", err)
	}
}

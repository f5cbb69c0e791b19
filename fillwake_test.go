package tiercache

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/redistest"
)

// A fill wakes the waiters of its lease on the channel the waiters listen
// to: the classic fill channel on one node, the sharded one on a Redis 7
// cluster. Before, the fill script PUBLISHed classically on a cluster too,
// and the message crossed the cluster bus to the subscribers' node, which
// took up to 40 ms on Redis 7.0 (issue "under load": waiters woke p99
// 38.7 ms after the fill). The other channel carries nothing.
func TestFillWakesOnTheWaitersChannel(t *testing.T) {
	redistest.ForEach(t, func(t *testing.T, tg redistest.Target) {
		ctx := t.Context()
		prefix := fmt.Sprintf("fillwake%d", time.Now().UnixNano())
		holder := newCacheOn[string](t, tg.NewClient(t), prefix, WithLease(30*time.Second))
		obs := &countingObserver{}
		waiter := newCacheOn[string](t, tg.NewClient(t), prefix, WithLease(30*time.Second), WithObserver(obs))
		waitFor(t, 10*time.Second, "the waiter's fill subscription", waiter.inv.healthy)

		want, other := holder.st.Layout.Fills(), holder.st.Layout.ShardedFills()
		rdb := tg.NewClient(t)
		var wantSub, otherSub *redis.PubSub
		if tg.Cluster != nil {
			want, other = other, want
			cc := rdb.(*redis.ClusterClient)
			wantSub, otherSub = cc.SSubscribe(ctx, want), cc.Subscribe(ctx, other)
		} else {
			wantSub, otherSub = rdb.Subscribe(ctx, want), rdb.SSubscribe(ctx, other)
		}
		defer wantSub.Close()
		defer otherSub.Close()
		for _, ps := range []*redis.PubSub{wantSub, otherSub} {
			if _, err := ps.Receive(ctx); err != nil { // the subscription's confirmation
				t.Fatal(err)
			}
		}

		loading, release := make(chan struct{}), make(chan struct{})
		go func() {
			_, _ = holder.GetOrLoad(context.Background(), "k", func(context.Context) (string, error) {
				close(loading)
				<-release
				return "held", nil
			})
		}()
		<-loading
		got := make(chan string, 1)
		go func() {
			v, err := waiter.GetOrLoad(context.Background(), "k", func(context.Context) (string, error) { return "waiter", nil })
			if err != nil {
				v = err.Error()
			}
			got <- v
		}()
		waitFor(t, 10*time.Second, "the waiter's acquire", func() bool { return obs.count("acquire") >= 1 })
		close(release)

		vk := holder.st.Layout.Value("k")
		deadline := time.After(10 * time.Second)
	wake:
		for {
			select {
			case m := <-wantSub.Channel():
				if strings.HasPrefix(m.Payload, echoPrefix) {
					continue // the subscription's self-check (an instance without L1 has no other channel)
				}
				if m.Payload != vk {
					t.Fatalf("wake on %s carries %q, want %q", want, m.Payload, vk)
				}
				break wake
			case <-deadline:
				t.Fatalf("no wake on %s", want)
			}
		}
		if v := <-got; v != "held" {
			t.Fatalf("the waiter got %q, want the holder's value", v)
		}
		select {
		case m := <-otherSub.Channel():
			t.Fatalf("a wake on %s too: %q", other, m.Payload)
		case <-time.After(200 * time.Millisecond):
		}
	})
}

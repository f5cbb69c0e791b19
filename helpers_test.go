package tiercache

// Helpers shared by the package's tests. The fault suite that used to live
// in this file (Redis slow, reset, restarted, blackholed, flushed, killed;
// foreign bytes; the README's resilience figures) is the module
// ./faults (go test ./faults/...), which tests the cache through its public
// API, so that its test-only dependency toxiproxy stays out of this module.

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache/internal/pubsub"
	"github.com/tiercache/tiercache/internal/redistest"
)

// directClient is a client straight to s, with context deadlines reaching
// the socket, closed when the test ends.
func directClient(t testing.TB, s *redistest.Server, opts ...func(*redis.Options)) *redis.Client {
	return s.Client(t, append([]func(*redis.Options){func(o *redis.Options) { o.ContextTimeoutEnabled = true }}, opts...)...)
}

// constLoad returns a loader of v that takes d.
func constLoad(v string, d time.Duration) LoadFunc[string] {
	return func(ctx context.Context) (string, error) {
		if d > 0 {
			time.Sleep(d)
		}
		return v, nil
	}
}

// holdLoad starts c.GetOrLoad(key) in the background with a loader that
// returns v once release is called, and returns when that loader runs;
// done has the GetOrLoad's error.
func holdLoad(c *Cache[string], key, v string) (release func(), done <-chan error) {
	loading, released := make(chan struct{}), make(chan struct{})
	errc := make(chan error, 1)
	go func() {
		_, err := c.GetOrLoad(context.Background(), key, func(context.Context) (string, error) {
			close(loading)
			<-released
			return v, nil
		})
		errc <- err
	}()
	<-loading
	return sync.OnceFunc(func() { close(released) }), errc
}

// waitFor polls cond every millisecond until it holds or d passes.
// waitMiss waits (at most d) until c.Get(key) misses, failing the test
// with what otherwise.
func waitMiss[V any](t *testing.T, c *Cache[V], key string, d time.Duration, what string) {
	t.Helper()
	waitFor(t, d, what, func() bool {
		_, err := c.Get(t.Context(), key)
		return errors.Is(err, ErrMiss)
	})
}

// mustSet sets k to v in c with opts, failing the test on an error.
func mustSet[V any](t *testing.T, c *Cache[V], k string, v V, opts ...SetOption) {
	t.Helper()
	if err := c.Set(t.Context(), k, v, opts...); err != nil {
		t.Fatal(err)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(time.Millisecond)
	}
}

func waitSubscribed[V any](t *testing.T, cs ...*Cache[V]) {
	t.Helper()
	for _, c := range cs {
		waitFor(t, 5*time.Second, "invalidation subscription up", c.inv.healthy)
	}
}

// repeatUntil runs f(0), f(1), ... in a goroutine of wg until stop closes
// or f returns false.
func repeatUntil(wg *sync.WaitGroup, stop <-chan struct{}, f func(i int) bool) {
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			if !f(i) {
				return
			}
		}
	})
}

// countingObserver counts Redis round trips by operation.
type countingObserver struct {
	NopObserver
	mu  sync.Mutex
	ops map[string]int
}

func (o *countingObserver) Redis(op string, _ time.Duration, _ error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.ops == nil {
		o.ops = map[string]int{}
	}
	o.ops[op]++
}

func (o *countingObserver) count(op string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.ops[op]
}

// oneShot runs the func it was armed with once, at the first fire after
// arm: an Observer's hook into one chosen call of the cache.
type oneShot struct {
	mu sync.Mutex
	fn func() // nil: not armed
}

func (o *oneShot) arm(fn func()) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.fn = fn
}

func (o *oneShot) fire() {
	o.mu.Lock()
	fn := o.fn
	o.fn = nil
	o.mu.Unlock()
	if fn != nil {
		fn()
	}
}

// decodedValue is what Redis holds for key, decoded.
func decodedValue[V any](t *testing.T, c *Cache[V], admin redis.UniversalClient, key string) V {
	t.Helper()
	vk := c.st.Layout.Value(key)
	b, err := admin.Get(t.Context(), vk).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	var e entry[V]
	if err := decode(c.vc, b, c.keyHash(vk), &e); err != nil {
		t.Fatal(err)
	}
	return e.val
}

// killPubSub drops every pub/sub connection of the target's servers.
func killPubSub(t *testing.T, tg redistest.Target) {
	t.Helper()
	servers := []*redistest.Server{tg.Single}
	if tg.Cluster != nil {
		servers = tg.Cluster.Nodes()
	}
	for _, s := range servers {
		if s == nil {
			continue
		}
		rdb := redis.NewClient(&redis.Options{Addr: s.Addr})
		err := rdb.Do(t.Context(), "CLIENT", "KILL", "TYPE", "pubsub").Err()
		_ = rdb.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
}

// clusterClient is a client of cl with context deadlines reaching the
// socket, closed when the test ends; retries and dial, where not 0, set
// MaxRetries and DialTimeout.
func clusterClient(t testing.TB, cl *redistest.Cluster, retries int, dial time.Duration) *redis.ClusterClient {
	return cl.Client(t, func(o *redis.ClusterOptions) {
		o.ContextTimeoutEnabled = true
		if retries != 0 {
			o.MaxRetries = retries
		}
		if dial != 0 {
			o.DialTimeout = dial
		}
	})
}

// numberedKeys returns prefix+"0", prefix+"1", ... up to n keys.
func numberedKeys(prefix string, n int) []string {
	ks := make([]string, n)
	for i := range ks {
		ks[i] = prefix + strconv.Itoa(i)
	}
	return ks
}

// numSub returns how many clients n has subscribed to channel, or -1 if n
// does not answer.
func numSub(cl *redis.Client, channel string) int64 {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	m, err := cl.PubSubNumSub(ctx, channel).Result()
	if err != nil {
		return -1
	}
	return m[channel]
}

// leaseHolderAndWaiter returns two instances under one prefix with leases
// of 30s: one to hold a lease, and one to wait for it, whose Redis calls obs
// counts and whose fill subscription is up.
func leaseHolderAndWaiter(t *testing.T, tg redistest.Target) (holder, waiter *Cache[string], obs *countingObserver) {
	t.Helper()
	prefix := testPrefix(t)
	holder = newCacheOn[string](t, tg.NewClient(t), prefix, WithLease(30*time.Second))
	obs = &countingObserver{}
	waiter = newCacheOn[string](t, tg.NewClient(t), prefix, WithLease(30*time.Second), WithObserver(obs))
	waitFor(t, 10*time.Second, "the waiter's fill subscription", waiter.inv.healthy)
	return holder, waiter, obs
}

// isEcho reports whether payload is one of the messages an invalidation
// subscriber sends itself to check its subscription.
func isEcho(payload string) bool { return strings.HasPrefix(payload, pubsub.EchoPrefix) }

func waitDone(t testing.TB, wg *sync.WaitGroup, d time.Duration) bool {
	return redistest.WaitDone(t, wg, d)
}

func waitGoroutinesGone(t testing.TB, fn string, d time.Duration) {
	redistest.WaitGoroutinesGone(t, fn, d)
}

// async runs read in a goroutine; the channel delivers what it returned,
// or "error: " and its error.
func async(read func() (string, error)) <-chan string {
	ch := make(chan string, 1)
	go func() {
		v, err := read()
		if err != nil {
			v = "error: " + err.Error()
		}
		ch <- v
	}()
	return ch
}

// failTagReads fails, while armed, every command that names a tag key (or,
// with only set, a tag key containing only), as a dead or timing-out node
// that holds the tags would.
type failTagReads struct {
	mu    sync.Mutex
	armed bool
	only  string
}

func (h *failTagReads) arm(on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.armed = on
}

var errTagNodeDown = errors.New("injected: tag node down")

func (h *failTagReads) hit(cmds ...redis.Cmder) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, cmd := range cmds {
		for _, a := range cmd.Args() {
			if s, ok := a.(string); ok && h.armed && strings.Contains(s, ":__tag:") && strings.Contains(s, h.only) {
				return true
			}
		}
	}
	return false
}

func (*failTagReads) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *failTagReads) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.hit(cmd) {
			cmd.SetErr(errTagNodeDown)
			return errTagNodeDown
		}
		return next(ctx, cmd)
	}
}

func (h *failTagReads) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if !h.hit(cmds...) {
			return next(ctx, cmds)
		}
		var rest []redis.Cmder // the commands of the nodes that are up
		for _, c := range cmds {
			if h.hit(c) {
				c.SetErr(errTagNodeDown)
			} else {
				rest = append(rest, c)
			}
		}
		if len(rest) > 0 {
			_ = next(ctx, rest)
		}
		return errTagNodeDown
	}
}

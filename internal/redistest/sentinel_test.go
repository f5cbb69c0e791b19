package redistest

import (
	"context"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestSentinel(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Second)
	defer cancel()

	s := StartSentinel(t, 1)
	if len(s.Nodes) != 2 || len(s.Sentinels) != 3 || len(s.SentinelAddrs()) != 3 || s.MasterName() == "" {
		t.Fatalf("got %d nodes, %d sentinels, addrs %v, name %q", len(s.Nodes), len(s.Sentinels), s.SentinelAddrs(), s.MasterName())
	}
	old, replica := s.Nodes[0], s.Nodes[1]
	if m := s.Master(); m != old {
		t.Fatalf("Master() = %v, want the first node %s", m, old.Addr)
	}
	for _, sn := range s.Sentinels {
		mode, err := sn.Client(t).Info(ctx, "server").Result()
		if err != nil || infoFields(mode)["redis_mode"] != "sentinel" {
			t.Fatalf("INFO server on sentinel %s: redis_mode %q, %v", sn.Addr, infoFields(mode)["redis_mode"], err)
		}
	}
	c := s.Client(t)
	if got := c.Options().ContextTimeoutEnabled; !got {
		t.Fatal("Client: ContextTimeoutEnabled is off")
	}
	if p := servingPort(ctx, t, c); p != old.Port {
		t.Fatalf("the client talks to port %d, want the master's %d", p, old.Port)
	}

	const n = 100
	key := func(i int) string { return "key:" + strconv.Itoa(i) }
	for i := range n {
		if err := c.Set(ctx, key(i), i, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key(i), err)
		}
	}
	// The replica has the keys before the failover, so that the new master
	// has them too.
	waitKeys(ctx, t, replica, n, key)

	s.Failover(t)
	if m := s.Master(); m != replica {
		t.Fatalf("after Failover, Master() = %v, want the replica %s", m, replica.Addr)
	}
	if role, err := replica.Client(t).Do(ctx, "ROLE").Slice(); err != nil || len(role) == 0 || role[0] != "master" {
		t.Fatalf("ROLE on the new master = %v, %v", role, err)
	}
	// Writes keep working through the same client. (Until the sentinels
	// demote it, the old master still takes writes too: a client may not
	// have heard of the switch yet.)
	if err := c.Set(ctx, "during", 1, 0).Err(); err != nil {
		t.Fatalf("SET right after the failover: %v", err)
	}

	s.WaitSettled(t)
	if role, err := old.Client(t).Do(ctx, "ROLE").Slice(); err != nil || len(role) == 0 || role[0] != "slave" {
		t.Fatalf("ROLE on the old master after WaitSettled = %v, %v; want slave", role, err)
	}
	if p := servingPort(ctx, t, c); p != replica.Port {
		t.Fatalf("after the failover the client talks to port %d, want the new master's %d", p, replica.Port)
	}
	for i := range n {
		if got, err := c.Get(ctx, key(i)).Int(); err != nil || got != i {
			t.Fatalf("GET %s after the failover = %d, %v; want %d", key(i), got, err, i)
		}
	}
	after := func(i int) string { return "after:" + strconv.Itoa(i) }
	for i := range n {
		if err := c.Set(ctx, after(i), i, 0).Err(); err != nil {
			t.Fatalf("SET %s after the failover: %v", after(i), err)
		}
	}
	if got, err := replica.Client(t).Get(ctx, after(0)).Int(); err != nil || got != 0 {
		t.Fatalf("GET %s on the new master = %d, %v", after(0), got, err)
	}
	// The demoted master replicates the new one.
	waitKeys(ctx, t, old, n, after)
}

// probeSentinelMode accepts the redis-server on PATH and refuses a binary
// that is not one.
func TestProbeSentinelMode(t *testing.T) {
	t.Parallel()
	if err := probeSentinelMode(RequireServer(t)); err != nil {
		t.Fatalf("probeSentinelMode(redis-server) = %v", err)
	}
	bin, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1) on PATH")
	}
	if err := probeSentinelMode(bin); err == nil {
		t.Fatalf("probeSentinelMode(%s) = nil, want an error", bin)
	}
}

// servingPort returns the port of the server that answers c.
func servingPort(ctx context.Context, t *testing.T, c *redis.Client) int {
	t.Helper()
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(infoFields(info)["tcp_port"])
	if err != nil {
		t.Fatalf("INFO server tcp_port: %v", err)
	}
	return p
}

// waitKeys waits until node holds key(i) = i for every i < n.
func waitKeys(ctx context.Context, t *testing.T, node *Server, n int, key func(int) string) {
	t.Helper()
	cl := node.Client(t)
	keys := make([]string, n)
	for i := range keys {
		keys[i] = key(i)
	}
	for {
		vals, err := cl.MGet(ctx, keys...).Result()
		if err == nil && !slices.Contains(vals, nil) {
			for i, v := range vals {
				if v != strconv.Itoa(i) {
					t.Fatalf("%s on %s = %v, want %d", keys[i], node.Addr, v, i)
				}
			}
			return
		}
		if ctx.Err() != nil {
			t.Fatalf("%s does not hold the %d keys: %v, %v", node.Addr, n, vals, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package redistest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

const (
	// clusterSlotCount is the number of hash slots in a Redis Cluster.
	clusterSlotCount = 16384
	// clusterReadyTimeout bounds cluster formation after the nodes run.
	clusterReadyTimeout = 15 * time.Second
	// clusterPoll is the delay between cluster state checks.
	clusterPoll = 50 * time.Millisecond
	// clientReadyTimeout bounds the readiness ping of Cluster.Client.
	clientReadyTimeout = 5 * time.Second
)

// clusterNodeArgs returns the extra redis-server arguments of a cluster
// node whose cluster bus listens on busPort. The bus port is explicit, so
// nodes do not need port+10000 to be free. The announced IP is explicit
// too, so every node knows its own address from the start.
func clusterNodeArgs(busPort int) []string {
	return []string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", "2000",
		"--cluster-port", strconv.Itoa(busPort),
		"--cluster-announce-ip", "127.0.0.1",
	}
}

// Cluster is a Redis Cluster of real redis-server processes on loopback.
//
// Masters and Replicas record the roles assigned at start: the slots are
// split evenly over Masters in order, and Replicas[i*r:(i+1)*r] replicate
// Masters[i], where r is the number of replicas per master. After a
// failover these fields are not updated; use [Cluster.MasterForKey] to find
// the current owner of a key.
type Cluster struct {
	// Masters are the nodes that were given the slots.
	Masters []*Server
	// Replicas are the nodes that were made replicas, grouped by master.
	Replicas []*Server

	replicasPerMaster int
}

// StartCluster starts a Redis Cluster of masters masters, each with
// replicasPerMaster replicas, and waits (up to about 15 s) until every node
// reports cluster_state:ok, all nodes agree on the slot map and every
// replica is online at its master. The nodes are killed when tb ends.
//
// Cluster formation takes a little over two seconds whatever the size,
// because Redis keeps a freshly started master from turning writable for
// two seconds; prefer [SharedCluster] unless the test damages the cluster.
func StartCluster(tb testing.TB, masters, replicasPerMaster int) *Cluster {
	tb.Helper()
	bin := RequireServer(tb)
	if masters < 1 || replicasPerMaster < 0 {
		tb.Fatalf("redistest: StartCluster(%d, %d): need at least one master and no negative replica count",
			masters, replicasPerMaster)
	}
	c, err := startCluster(bin, tb.TempDir(), masters, replicasPerMaster)
	if err != nil {
		tb.Fatalf("redistest: start cluster: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			for _, n := range c.Nodes() {
				tb.Logf("redistest: log of cluster node %s:\n%s", n.Addr, n.LogTail())
			}
		}
		c.stop()
	})
	return c
}

// startCluster starts the nodes in parallel under root and forms the
// cluster. On failure every node it started is stopped again.
func startCluster(bin, root string, masters, replicasPerMaster int) (*Cluster, error) {
	total := masters * (1 + replicasPerMaster)
	nodes := make([]*Server, total)
	errs := make([]error, total)
	var wg sync.WaitGroup
	for i := range total {
		wg.Go(func() {
			dir := filepath.Join(root, "node"+strconv.Itoa(i))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				errs[i] = err
				return
			}
			nodes[i], errs[i] = launch(bin, dir, true, nil)
		})
	}
	wg.Wait()
	c := &Cluster{
		Masters:           nodes[:masters:masters],
		Replicas:          nodes[masters:],
		replicasPerMaster: replicasPerMaster,
	}
	if err := errors.Join(errs...); err != nil {
		c.stop()
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), clusterReadyTimeout)
	defer cancel()
	if err := c.form(ctx); err != nil {
		c.stop()
		return nil, err
	}
	return c, nil
}

// form assigns the slots, joins the nodes, attaches the replicas and waits
// until the cluster has converged, all with go-redis commands.
func (c *Cluster) form(ctx context.Context) error {
	// Each node gets its own config epoch now, while it knows no other
	// node (the only time Redis allows it). Left at 0, the epochs collide
	// and Redis resolves that by gossip, one bump of the current epoch at a
	// time, until after the cluster already looks formed: a replica that
	// had not heard of the last bump when its master was killed asked for
	// votes at an older epoch than its master's slots carried, and was
	// denied for over a minute. With distinct epochs nothing bumps, and
	// every node's current epoch is the largest, len(nodes) (see check).
	for i, node := range c.Nodes() {
		if err := node.adminClient().Do(ctx, "CLUSTER", "SET-CONFIG-EPOCH", i+1).Err(); err != nil {
			return fmt.Errorf("CLUSTER SET-CONFIG-EPOCH %d on %s: %w", i+1, node.Addr, err)
		}
	}
	n := len(c.Masters)
	for i, m := range c.Masters {
		lo, hi := i*clusterSlotCount/n, (i+1)*clusterSlotCount/n-1
		if err := m.adminClient().Do(ctx, "CLUSTER", "ADDSLOTSRANGE", lo, hi).Err(); err != nil {
			return fmt.Errorf("CLUSTER ADDSLOTSRANGE %d %d on %s: %w", lo, hi, m.Addr, err)
		}
	}

	// Every pair of nodes meets directly, so that no node has to wait for
	// gossip to learn about another. go-redis' ClusterMeet sends no bus
	// port, which Redis would then take to be port+10000; send the
	// three-argument form instead.
	nodes := c.Nodes()
	for i, a := range nodes {
		for _, b := range nodes[i+1:] {
			err := a.adminClient().Do(ctx, "CLUSTER", "MEET", "127.0.0.1", b.Port, b.busPort).Err()
			if err != nil {
				return fmt.Errorf("CLUSTER MEET %s from %s: %w", b.Addr, a.Addr, err)
			}
		}
	}

	if c.replicasPerMaster > 0 {
		for i, r := range c.Replicas {
			if err := replicate(ctx, r, c.Masters[i/c.replicasPerMaster]); err != nil {
				return err
			}
		}
		if err := poll(ctx, c.replicasOnline); err != nil {
			return err
		}
		// A node lists a replica in CLUSTER SLOTS only once the replica
		// reports a non-zero replication offset, and a fresh master's
		// offset stays 0 until it propagates something: by default its
		// replication PING, ten seconds later. FLUSHALL (propagated even
		// on an empty database) moves the offset now.
		for _, m := range c.Masters {
			if err := m.adminClient().FlushAll(ctx).Err(); err != nil {
				return fmt.Errorf("FLUSHALL on %s: %w", m.Addr, err)
			}
		}
	}

	return poll(ctx, c.check)
}

// poll calls check every clusterPoll until it returns nil or ctx ends, and
// then returns check's last error.
func poll(ctx context.Context, check func(context.Context) error) error {
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("cluster not ready after %v: %w", clusterReadyTimeout, err)
		case <-time.After(clusterPoll):
		}
	}
}

// replicate makes r a replica of m once r lists m's node id in CLUSTER
// NODES, that is once their handshake is done (CLUSTER REPLICATE refuses
// unknown node ids).
func replicate(ctx context.Context, r, m *Server) error {
	id, err := m.adminClient().ClusterMyID(ctx).Result()
	if err != nil {
		return fmt.Errorf("CLUSTER MYID on %s: %w", m.Addr, err)
	}
	rc := r.adminClient()
	for {
		nodes, err := rc.ClusterNodes(ctx).Result()
		if err == nil && strings.Contains(nodes, id) {
			if err = rc.ClusterReplicate(ctx, id).Err(); err == nil {
				return nil
			}
		}
		if err == nil {
			err = fmt.Errorf("%s does not know %s (%s) yet", r.Addr, m.Addr, id)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CLUSTER REPLICATE %s on %s: %w", m.Addr, r.Addr, err)
		case <-time.After(clusterPoll):
		}
	}
}

// check returns nil once the cluster has converged: every node is in state
// ok, knows every node and reports the expected slot map, and every master
// sees its replicas online. Otherwise it describes the first problem.
func (c *Cluster) check(ctx context.Context) error {
	nodes := c.Nodes()
	want := c.expectedSlots()
	epoch := ""
	for _, node := range nodes {
		cl := node.adminClient()
		info, err := cl.ClusterInfo(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER INFO on %s: %w", node.Addr, err)
		}
		fields := infoFields(info)
		// Every node must know the cluster's current epoch: a replica that
		// does not yet asks for votes at an older epoch than its master's
		// slots carry, and is denied until a later epoch reaches it (a
		// failover test that kills a master then waited past a minute).
		// Every node's is at least the largest config epoch (len(nodes),
		// see form); more only if an election ran meanwhile and lost (a
		// node stalled past the node timeout), which leaves the slot map as
		// it was.
		e := fields["cluster_current_epoch"]
		if n, err := strconv.Atoi(e); err != nil || n < len(nodes) || (epoch != "" && e != epoch) {
			return fmt.Errorf("%s: cluster_current_epoch:%s, want one for every node, at least %d (the largest config epoch, see form)", node.Addr, e, len(nodes))
		}
		epoch = e
		if fields["cluster_state"] != "ok" ||
			fields["cluster_slots_ok"] != strconv.Itoa(clusterSlotCount) ||
			fields["cluster_known_nodes"] != strconv.Itoa(len(nodes)) {
			return fmt.Errorf("%s: cluster_state:%s cluster_slots_ok:%s cluster_known_nodes:%s (want ok, %d, %d)",
				node.Addr, fields["cluster_state"], fields["cluster_slots_ok"],
				fields["cluster_known_nodes"], clusterSlotCount, len(nodes))
		}
		slots, err := cl.ClusterSlots(ctx).Result()
		if err != nil {
			return fmt.Errorf("CLUSTER SLOTS on %s: %w", node.Addr, err)
		}
		if got := describeSlots(slots); got != want {
			return fmt.Errorf("%s reports slot map\n%s\nwant\n%s", node.Addr, got, want)
		}
	}
	return c.replicasOnline(ctx)
}

// replicasOnline returns nil once every master lists its replicas as online
// in INFO replication.
func (c *Cluster) replicasOnline(ctx context.Context) error {
	for i, m := range c.Masters {
		repl, err := m.adminClient().Info(ctx, "replication").Result()
		if err != nil {
			return fmt.Errorf("INFO replication on %s: %w", m.Addr, err)
		}
		for _, r := range c.Replicas[i*c.replicasPerMaster : (i+1)*c.replicasPerMaster] {
			if !strings.Contains(repl, fmt.Sprintf(",port=%d,state=online,", r.Port)) {
				return fmt.Errorf("replica %s is not online at master %s:\n%s", r.Addr, m.Addr, repl)
			}
		}
	}
	return nil
}

// expectedSlots describes the slot map form intends to build.
func (c *Cluster) expectedSlots() string {
	n := len(c.Masters)
	slots := make([]redis.ClusterSlot, n)
	for i, m := range c.Masters {
		s := redis.ClusterSlot{Start: i * clusterSlotCount / n, End: (i+1)*clusterSlotCount/n - 1}
		s.Nodes = append(s.Nodes, redis.ClusterNode{Addr: m.Addr})
		for _, r := range c.Replicas[i*c.replicasPerMaster : (i+1)*c.replicasPerMaster] {
			s.Nodes = append(s.Nodes, redis.ClusterNode{Addr: r.Addr})
		}
		slots[i] = s
	}
	return describeSlots(slots)
}

// describeSlots renders a slot map canonically: ranges in order, one per
// line, as "start-end master replica...", replicas sorted.
func describeSlots(slots []redis.ClusterSlot) string {
	lines := make([]string, 0, len(slots))
	for _, s := range slots {
		var addrs []string
		for _, n := range s.Nodes {
			addrs = append(addrs, n.Addr)
		}
		if len(addrs) > 1 {
			slices.Sort(addrs[1:])
		}
		lines = append(lines, fmt.Sprintf("%05d-%05d %s", s.Start, s.End, strings.Join(addrs, " ")))
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// infoFields parses "key:value" lines of an INFO-style reply.
func infoFields(info string) map[string]string {
	m := make(map[string]string)
	for l := range strings.Lines(info) {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), ":"); ok {
			m[k] = v
		}
	}
	return m
}

// Nodes returns all nodes, masters first, then replicas.
func (c *Cluster) Nodes() []*Server {
	return append(slices.Clip(c.Masters), c.Replicas...)
}

// Addrs returns the addresses of all nodes, masters first, then replicas.
// It includes stopped nodes.
func (c *Cluster) Addrs() []string {
	nodes := c.Nodes()
	addrs := make([]string, len(nodes))
	for i, n := range nodes {
		addrs[i] = n.Addr
	}
	return addrs
}

// Client returns a new cluster client seeded with all node addresses and
// closed when tb ends. The options start as {Addrs: c.Addrs()} and are then
// passed to each of opts.
//
// The client is ready when returned: it has loaded the slot map and pinged
// every node it knows (retrying for up to 5 s), and the test fails if that
// does not succeed. To get a client while nodes are down, build one with
// redis.NewClusterClient and [Cluster.Addrs].
func (c *Cluster) Client(tb testing.TB, opts ...func(*redis.ClusterOptions)) *redis.ClusterClient {
	tb.Helper()
	o := &redis.ClusterOptions{Addrs: c.Addrs()}
	for _, f := range opts {
		f(o)
	}
	cc := redis.NewClusterClient(o)
	tb.Cleanup(func() { _ = cc.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), clientReadyTimeout)
	defer cancel()
	for {
		err := cc.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error {
			return n.Ping(ctx).Err()
		})
		if err == nil {
			return cc
		}
		select {
		case <-ctx.Done():
			tb.Fatalf("redistest: cluster client not ready after %v: %v", clientReadyTimeout, err)
		case <-time.After(clusterPoll):
			cc.ReloadState(ctx)
		}
	}
}

// MasterForKey returns the node that currently serves key's slot as
// master, according to the first running node that answers CLUSTER
// KEYSLOT and CLUSTER SLOTS (nodes may briefly disagree during a
// failover). It may return a node of Replicas after a failover, and nil if
// no running node answers or the slot is not served.
func (c *Cluster) MasterForKey(ctx context.Context, key string) *Server {
	for _, node := range c.Nodes() {
		if !node.Alive() {
			continue
		}
		var slot *redis.IntCmd
		var slots *redis.ClusterSlotsCmd
		_, err := node.adminClient().Pipelined(ctx, func(p redis.Pipeliner) error {
			slot = p.ClusterKeySlot(ctx, key)
			slots = p.ClusterSlots(ctx)
			return nil
		})
		if err != nil {
			continue
		}
		for _, s := range slots.Val() {
			if int64(s.Start) <= slot.Val() && slot.Val() <= int64(s.End) && len(s.Nodes) > 0 {
				return c.nodeByAddr(s.Nodes[0].Addr)
			}
		}
	}
	return nil
}

// nodeByAddr returns the node listening on addr, or nil.
func (c *Cluster) nodeByAddr(addr string) *Server {
	for _, n := range c.Nodes() {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// FlushAll runs FLUSHALL on every running node that is currently a master
// (by ROLE, so promoted replicas count). Replicas catch up asynchronously.
// It returns the errors of all nodes joined.
func (c *Cluster) FlushAll(ctx context.Context) error {
	var errs []error
	for _, node := range c.Nodes() {
		if !node.Alive() {
			continue
		}
		cl := node.adminClient()
		role, err := cl.Do(ctx, "ROLE").Slice()
		if err != nil {
			errs = append(errs, fmt.Errorf("ROLE on %s: %w", node.Addr, err))
			continue
		}
		if len(role) == 0 || role[0] != "master" {
			continue
		}
		if err := cl.FlushAll(ctx).Err(); err != nil {
			errs = append(errs, fmt.Errorf("FLUSHALL on %s: %w", node.Addr, err))
		}
	}
	return errors.Join(errs...)
}

// stop kills every node that was started.
func (c *Cluster) stop() {
	for _, n := range c.Nodes() {
		if n != nil {
			n.Stop()
		}
	}
}

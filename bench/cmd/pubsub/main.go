// Command pubsub measures tiercache's invalidations on a Redis Cluster with
// sharded pub/sub (SPUBLISH/SSUBSCRIBE, which tiercache picks by itself on
// a Redis 7 cluster) against classic pub/sub (PUBLISH/SUBSCRIBE, which every
// node forwards over the cluster bus to every other node).
//
//	go run ./bench/cmd/pubsub                  # 10,000 invalidations, 3 masters
//	go run ./bench/cmd/pubsub -n 10000 -rounds 3 -subscribers 4 -rate 1000
//
// It starts two clusters of -masters masters (no replicas) with the
// redis-server on PATH, on free loopback ports: one as it is, and one whose
// SPUBLISH is renamed away (rename-command SPUBLISH ""), so that tiercache,
// finding no SPUBLISH (COMMAND INFO), falls back to classic pub/sub, as it
// does on a server without it. The library is the same on both: only the
// server's answer differs.
//
// Each round runs the two modes in turn (interleaved, so that a busy
// machine weighs on both alike): -subscribers instances with L1 subscribe,
// and one more, without L1, deletes -n distinct keys one after another at
// -rate, each Delete publishing one invalidation. It reports the delay
// tiercache measured from each write's acknowledgement to each
// subscriber's L1 drop (tiercache.DelayObserver: exact values, not the
// Stats buckets), and, for each node, the deltas over the run of INFO stats
// (total_net_input_bytes, total_net_output_bytes: client connections
// only), INFO cpu (used_cpu_sys + used_cpu_user), CLUSTER INFO's bus
// message counters, and the process's read and write bytes from
// /proc/<pid>/io, which include the cluster bus (when the servers run on
// this machine, as they do here).
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "pubsub:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		n           = flag.Int("n", 10000, "invalidations (Deletes) per mode and round")
		rounds      = flag.Int("rounds", 2, "rounds; each runs sharded then classic")
		subscribers = flag.Int("subscribers", 4, "subscribing instances (with L1)")
		masters     = flag.Int("masters", 3, "masters of each cluster")
		rate        = flag.Int("rate", 1000, "Deletes per second (0: as fast as one writer goes)")
	)
	flag.Parse()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return err
	}
	root, err := os.MkdirTemp("", "tiercache-pubsub-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(root)

	ctx := context.Background()
	sharded, err := startCluster(ctx, bin, filepath.Join(root, "sharded"), *masters, nil)
	if err != nil {
		return err
	}
	defer sharded.stop()
	classic, err := startCluster(ctx, bin, filepath.Join(root, "classic"), *masters, []string{"--rename-command", "SPUBLISH", ""})
	if err != nil {
		return err
	}
	defer classic.stop()

	fmt.Printf("pubsub: %d invalidations per run, %d subscribers, %d masters, rate %d/s, %s\n",
		*n, *subscribers, *masters, *rate, time.Now().UTC().Format(time.RFC3339))
	fmt.Printf("load average at start: %s\n", loadAvg())
	var all []*result
	for r := range *rounds {
		for _, m := range []struct {
			name string
			c    *cluster
		}{{"sharded", sharded}, {"classic", classic}} {
			res, err := measure(ctx, m.c, m.name, fmt.Sprintf("psb%d%s", r, m.name), *n, *subscribers, *rate)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", r+1, m.name, err)
			}
			res.round = r + 1
			res.print()
			all = append(all, res)
		}
	}
	summarize(all, *n)
	return nil
}

// --- The measurement ---

type delays struct {
	mu sync.Mutex
	d  []time.Duration
}

type delayObserver struct {
	tiercache.NopObserver
	d *delays
}

func (o delayObserver) InvalidationDelay(d time.Duration) {
	o.d.mu.Lock()
	o.d.d = append(o.d.d, d)
	o.d.mu.Unlock()
}

type result struct {
	mode     string
	round    int
	mode2    string // whether the server has SPUBLISH
	n        int
	took     time.Duration
	sent     uint64
	received uint64
	delays   []time.Duration
	nodes    []nodeDelta
	load     string
}

func measure(ctx context.Context, c *cluster, mode, prefix string, n, subs, rate int) (*result, error) {
	d := &delays{}
	var clients []*redis.ClusterClient
	var caches []*tiercache.Cache[string]
	defer func() {
		for _, cc := range caches {
			_ = cc.Close()
		}
		for _, cl := range clients {
			_ = cl.Close()
		}
	}()
	newCache := func(opts ...tiercache.Option) (*tiercache.Cache[string], error) {
		cl := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.addrs, ContextTimeoutEnabled: true})
		clients = append(clients, cl)
		cc, err := tiercache.New[string](cl, append([]tiercache.Option{tiercache.WithPrefix(prefix)}, opts...)...)
		if err == nil {
			caches = append(caches, cc)
		}
		return cc, err
	}
	for range subs {
		if _, err := newCache(tiercache.WithL1(1000), tiercache.WithObserver(delayObserver{d: d})); err != nil {
			return nil, err
		}
	}
	writer, err := newCache()
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(10 * time.Second)
	for _, cc := range caches[:subs] {
		for !cc.Stats().Subscribed {
			if time.Now().After(deadline) {
				return nil, errors.New("subscriptions not up after 10s")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(200 * time.Millisecond) // the subscriptions' own set-up traffic settles
	d.mu.Lock()
	d.d = d.d[:0]
	d.mu.Unlock()

	before, err := c.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	start := time.Now()
	var every time.Duration
	if rate > 0 {
		every = time.Second / time.Duration(rate)
	}
	for i := range n {
		if every > 0 {
			if w := time.Until(start.Add(time.Duration(i) * every)); w > 0 {
				time.Sleep(w)
			}
		}
		if err := writer.Delete(ctx, "key"+strconv.Itoa(i)); err != nil {
			return nil, fmt.Errorf("Delete: %w", err)
		}
	}
	// Wait for the messages still on their way (at most 5 s).
	want := n * subs
	for end := time.Now().Add(5 * time.Second); time.Now().Before(end); time.Sleep(5 * time.Millisecond) {
		d.mu.Lock()
		got := len(d.d)
		d.mu.Unlock()
		if got >= want {
			break
		}
	}
	took := time.Since(start)
	after, err := c.snapshot(ctx)
	if err != nil {
		return nil, err
	}
	res := &result{mode: mode, n: n, took: took, load: loadAvg()}
	ws := writer.Stats()
	res.sent = ws.Events[tiercache.EventInvalidationSent]
	for _, cc := range caches[:subs] {
		res.received += cc.Stats().Events[tiercache.EventInvalidationReceived]
	}
	d.mu.Lock()
	res.delays = slices.Clone(d.d)
	d.mu.Unlock()
	for i := range before {
		res.nodes = append(res.nodes, after[i].minus(before[i]))
	}
	res.mode2 = c.mode(ctx)
	return res, nil
}

func quantile(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := min(int(q*float64(len(s))), len(s)-1)
	return s[i]
}

func msf(d time.Duration) string { return fmt.Sprintf("%.3fms", float64(d.Microseconds())/1000) }

func (r *result) print() {
	fmt.Printf("\nround %d, %s (server: %s): %d Deletes in %v, %d messages sent, %d applied by the subscribers; load %s\n",
		r.round, r.mode, r.mode2, r.n, r.took.Round(time.Millisecond), r.sent, r.received, r.load)
	fmt.Printf("  delay over %d applications: p50 %s  p99 %s  p99.9 %s  max %s\n", len(r.delays),
		msf(quantile(r.delays, 0.5)), msf(quantile(r.delays, 0.99)), msf(quantile(r.delays, 0.999)), msf(slices.Max(append(r.delays, 0))))
	fmt.Printf("  %-16s %12s %12s %10s %12s %12s %10s %10s\n", "node", "net_in B", "net_out B", "cpu ms", "proc_read B", "proc_write B", "bus sent", "bus recv")
	for _, nd := range r.nodes {
		fmt.Printf("  %-16s %12d %12d %10.1f %12d %12d %10d %10d\n", nd.addr, nd.netIn, nd.netOut, nd.cpu*1000, nd.rchar, nd.wchar, nd.busSent, nd.busRecv)
	}
}

func summarize(all []*result, n int) {
	fmt.Printf("\nsummary per %d invalidations (means over rounds; node totals):\n", n)
	for _, mode := range []string{"sharded", "classic"} {
		var k int
		var netIn, netOut, rchar, wchar, busSent, busRecv int64
		var cpu float64
		var p50, p99 time.Duration
		for _, r := range all {
			if r.mode != mode {
				continue
			}
			k++
			p50 += quantile(r.delays, 0.5)
			p99 += quantile(r.delays, 0.99)
			for _, nd := range r.nodes {
				netIn += nd.netIn
				netOut += nd.netOut
				rchar += nd.rchar
				wchar += nd.wchar
				busSent += nd.busSent
				busRecv += nd.busRecv
				cpu += nd.cpu
			}
		}
		if k == 0 {
			continue
		}
		kk := int64(k)
		fmt.Printf("  %-8s delay (mean of the rounds' percentiles) p50 %s p99 %s; all nodes: net in %d B, out %d B, process read %d B, write %d B, bus msgs sent %d recv %d, cpu %.0f ms\n",
			mode, msf(p50/time.Duration(k)), msf(p99/time.Duration(k)), netIn/kk, netOut/kk, rchar/kk, wchar/kk, busSent/kk, busRecv/kk, cpu*1000/float64(k))
	}
}

// --- Nodes ---

type nodeStats struct {
	addr             string
	netIn, netOut    int64
	cpu              float64 // s
	rchar, wchar     int64   // -1 if unknown
	busSent, busRecv int64   // cluster bus messages
}

type nodeDelta = nodeStats

func (a nodeStats) minus(b nodeStats) nodeDelta {
	return nodeDelta{
		addr: a.addr, netIn: a.netIn - b.netIn, netOut: a.netOut - b.netOut, cpu: a.cpu - b.cpu,
		rchar: a.rchar - b.rchar, wchar: a.wchar - b.wchar,
		busSent: a.busSent - b.busSent, busRecv: a.busRecv - b.busRecv,
	}
}

func parseInfo(s string) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(s))
	for sc.Scan() {
		if k, v, ok := strings.Cut(strings.TrimSpace(sc.Text()), ":"); ok {
			m[k] = v
		}
	}
	return m
}

func atoi(s string) int64   { n, _ := strconv.ParseInt(s, 10, 64); return n }
func atof(s string) float64 { f, _ := strconv.ParseFloat(s, 64); return f }

// procIO reads the bytes process pid has read and written (all its
// descriptors: clients, cluster bus, files), or -1.
func procIO(pid string) (rchar, wchar int64) {
	b, err := os.ReadFile("/proc/" + pid + "/io")
	if err != nil {
		return -1, -1
	}
	m := parseInfo(string(b))
	return atoi(strings.TrimSpace(m["rchar"])), atoi(strings.TrimSpace(m["wchar"]))
}

// --- Clusters ---

type cluster struct {
	addrs []string
	admin []*redis.Client
	cmds  []*exec.Cmd
}

func (c *cluster) snapshot(ctx context.Context) ([]nodeStats, error) {
	out := make([]nodeStats, len(c.admin))
	for i, a := range c.admin {
		info, err := a.Info(ctx, "stats", "cpu", "server").Result()
		if err != nil {
			return nil, err
		}
		ci, err := a.ClusterInfo(ctx).Result()
		if err != nil {
			return nil, err
		}
		m, cm := parseInfo(info), parseInfo(ci)
		ns := nodeStats{
			addr:  c.addrs[i],
			netIn: atoi(m["total_net_input_bytes"]), netOut: atoi(m["total_net_output_bytes"]),
			cpu:     atof(m["used_cpu_sys"]) + atof(m["used_cpu_user"]),
			busSent: atoi(cm["cluster_stats_messages_sent"]), busRecv: atoi(cm["cluster_stats_messages_received"]),
		}
		ns.rchar, ns.wchar = procIO(m["process_id"])
		out[i] = ns
	}
	return out, nil
}

// mode says whether the server has SPUBLISH, as tiercache finds out.
func (c *cluster) mode(ctx context.Context) string {
	info, err := c.admin[0].Do(ctx, "COMMAND", "INFO", "SPUBLISH").Slice()
	if err == nil && len(info) == 1 && info[0] != nil {
		return "SPUBLISH available: sharded"
	}
	return "no SPUBLISH: classic"
}

func (c *cluster) stop() {
	for _, a := range c.admin {
		_ = a.Close()
	}
	for _, cmd := range c.cmds {
		if cmd.Process != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startCluster starts masters redis-server processes under dir and forms a
// cluster of them, the slots split evenly, as internal/redistest does.
func startCluster(ctx context.Context, bin, dir string, masters int, extra []string) (*cluster, error) {
	c := &cluster{}
	ports := make([]int, masters)
	buses := make([]int, masters)
	for i := range masters {
		var err error
		if ports[i], err = freePort(); err != nil {
			return nil, err
		}
		if buses[i], err = freePort(); err != nil {
			return nil, err
		}
		nd := filepath.Join(dir, strconv.Itoa(i))
		if err := os.MkdirAll(nd, 0o755); err != nil {
			return nil, err
		}
		args := append([]string{
			"--port", strconv.Itoa(ports[i]), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", nd, "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
			"--cluster-node-timeout", "2000", "--cluster-port", strconv.Itoa(buses[i]),
			"--cluster-announce-ip", "127.0.0.1",
		}, extra...)
		cmd := exec.Command(bin, args...)
		if err := cmd.Start(); err != nil {
			c.stop()
			return nil, err
		}
		c.cmds = append(c.cmds, cmd)
		addr := "127.0.0.1:" + strconv.Itoa(ports[i])
		c.addrs = append(c.addrs, addr)
		c.admin = append(c.admin, redis.NewClient(&redis.Options{Addr: addr}))
	}
	fail := func(err error) (*cluster, error) { c.stop(); return nil, err }
	for _, a := range c.admin {
		ok := false
		for range 100 {
			if a.Ping(ctx).Err() == nil {
				ok = true
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if !ok {
			return fail(errors.New("redis-server did not start"))
		}
	}
	const slots = 16384
	for i, a := range c.admin {
		if err := a.Do(ctx, "CLUSTER", "ADDSLOTSRANGE", i*slots/masters, (i+1)*slots/masters-1).Err(); err != nil {
			return fail(err)
		}
	}
	for i, a := range c.admin {
		for j := i + 1; j < masters; j++ {
			if err := a.Do(ctx, "CLUSTER", "MEET", "127.0.0.1", ports[j], buses[j]).Err(); err != nil {
				return fail(err)
			}
		}
	}
	for end := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		ok := 0
		for _, a := range c.admin {
			ci, err := a.ClusterInfo(ctx).Result()
			if err == nil && strings.Contains(ci, "cluster_state:ok") && strings.Contains(ci, "cluster_known_nodes:"+strconv.Itoa(masters)) {
				ok++
			}
		}
		if ok == masters {
			break
		}
		if time.Now().After(end) {
			return fail(errors.New("cluster did not form in 20s"))
		}
	}
	return c, nil
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
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
	// sentinelCount is the number of sentinels StartSentinel starts.
	sentinelCount = 3
	// sentinelQuorum is how many sentinels must agree that the master is
	// down before a failover (a user-requested one needs no agreement).
	sentinelQuorum = 2
	// sentinelMasterName is the name the sentinels monitor the master by.
	sentinelMasterName = "redistest"
	// sentinelReadyTimeout bounds how long StartSentinel, WaitSettled and
	// Failover wait for the setup to settle. Sentinels discover each other
	// through hello messages sent every two seconds, and a demoted master
	// is reconfigured about ten seconds after a failover.
	sentinelReadyTimeout = 30 * time.Second
	// failoverTimeout bounds how long Failover waits for the new master
	// once the failover was requested.
	failoverTimeout = 30 * time.Second
	// sentinelPoll is the delay between checks of the setup's state.
	sentinelPoll = 50 * time.Millisecond
	// sentinelProbeTimeout bounds the run of redis-server that checks
	// whether it can run in sentinel mode.
	sentinelProbeTimeout = 5 * time.Second
)

// Sentinel is a Redis Sentinel setup of real redis-server processes on
// loopback: one master, its replicas and three sentinels monitoring them.
//
// Nodes and Sentinels record the processes as started: Nodes[0] was
// started as the master and the other nodes as its replicas. A failover
// changes the roles, not these fields; use [Sentinel.Master] to find the
// current master.
type Sentinel struct {
	// Nodes are the data nodes, the initial master first.
	Nodes []*Server
	// Sentinels are the three redis-server --sentinel processes.
	// Server.Client on one of them gives a client of that sentinel.
	Sentinels []*Server

	name string
}

// StartSentinel starts one master, replicas replicas of it (--replicaof)
// and three sentinels (redis-server <config file> --sentinel) monitoring
// it with a quorum of two, all on free loopback ports, and waits (up to
// about 30 s) until the replicas are in sync and every sentinel sees the
// master, the replicas and the other sentinels. Everything is killed when
// tb ends.
//
// Each sentinel runs in its own directory, with a config file of its own
// that it rewrites as it learns the setup:
//
//	port P
//	bind 127.0.0.1
//	sentinel monitor <MasterName> 127.0.0.1 <master port> 2
//	sentinel down-after-milliseconds <MasterName> 1000
//	sentinel failover-timeout <MasterName> 5000
//	sentinel parallel-syncs <MasterName> 1
//
// The test is skipped (or fails, when the environment variable CI is
// non-empty) if redis-server is missing (see [RequireServer]) or cannot
// run in sentinel mode.
func StartSentinel(tb testing.TB, replicas int) *Sentinel {
	tb.Helper()
	bin := RequireServer(tb)
	requireSentinelMode(tb, bin)
	if replicas < 0 {
		tb.Fatalf("redistest: StartSentinel(%d): negative replica count", replicas)
	}
	s, err := startSentinel(bin, tb.TempDir(), sentinelMasterName, replicas)
	if err != nil {
		if s != nil {
			s.logTails(tb)
		}
		tb.Fatalf("redistest: start sentinel setup: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			s.logTails(tb)
		}
		s.stop()
	})
	return s
}

// logTails logs the tail of every process's log.
func (s *Sentinel) logTails(tb testing.TB) {
	tb.Helper()
	for _, n := range s.Nodes {
		tb.Logf("redistest: log of data node %s:\n%s", n.Addr, n.LogTail())
	}
	for _, n := range s.Sentinels {
		tb.Logf("redistest: log of sentinel %s:\n%s", n.Addr, n.LogTail())
	}
}

// sentinelSupport caches, per redis-server binary, whether it can run in
// sentinel mode: nil if it can, else why not.
var sentinelSupport sync.Map // string → error

// requireSentinelMode skips tb, or fails it when CI is set, unless bin
// can run in sentinel mode.
func requireSentinelMode(tb testing.TB, bin string) {
	tb.Helper()
	v, ok := sentinelSupport.Load(bin)
	if !ok {
		v, _ = sentinelSupport.LoadOrStore(bin, probeSentinelMode(bin))
	}
	err, _ := v.(error)
	if err == nil {
		return
	}
	if os.Getenv("CI") != "" {
		tb.Fatalf("redistest: %s cannot run in sentinel mode (%v) and CI is set: "+
			"Sentinel tests must not be skipped in CI", bin, err)
	}
	tb.Skipf("redistest: %s cannot run in sentinel mode, so Sentinel tests are skipped: %v", bin, err)
}

// probeSentinelMode runs bin --sentinel without a config file. A
// redis-server that supports sentinel mode refuses to run so ("Sentinel
// needs config file on disk to save state") and exits at once; anything
// else means it does not. --port 0 keeps a server that ignores --sentinel
// off the network until the probe kills it.
func probeSentinelMode(bin string) error {
	dir, err := os.MkdirTemp("", "redistest-probe-")
	if err != nil {
		return fmt.Errorf("probe: %w", err)
	}
	defer os.RemoveAll(dir)
	var out bytes.Buffer
	cmd := exec.Command(bin, "--sentinel", "--port", "0", "--save", "", "--appendonly", "no", "--daemonize", "no")
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = &out, &out
	configureProc(cmd)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("probe: exec %s: %w", bin, err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(exited)
	}()
	select {
	case <-exited:
	case <-time.After(sentinelProbeTimeout):
		kill(cmd, exited)
		return fmt.Errorf("%s --sentinel without a config file still ran after %v instead of asking for one; output:\n%s",
			bin, sentinelProbeTimeout, out.String())
	}
	if strings.Contains(out.String(), "Sentinel needs config file") {
		return nil
	}
	return fmt.Errorf("%s --sentinel without a config file exited (%v) without asking for one; output:\n%s",
		bin, waitErr, out.String())
}

// startSentinel starts the setup under root and waits until it is ready.
// On failure every process it started is stopped again; if they all
// started but the setup did not become ready, the stopped setup is
// returned with the error, for its logs.
func startSentinel(bin, root, name string, replicas int) (*Sentinel, error) {
	s := &Sentinel{name: name}
	dir := func(name string) (string, error) {
		d := filepath.Join(root, name)
		return d, os.MkdirAll(d, 0o755)
	}
	d, err := dir("node0")
	if err != nil {
		return nil, err
	}
	master, err := launch(bin, d, false, nil)
	if err != nil {
		return nil, err
	}
	s.Nodes = append(s.Nodes, master)

	nodes := make([]*Server, replicas)
	errs := make([]error, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Go(func() {
			d, err := dir("node" + strconv.Itoa(i+1))
			if err != nil {
				errs[i] = err
				return
			}
			nodes[i], errs[i] = launch(bin, d, false, []string{"--replicaof", "127.0.0.1", strconv.Itoa(master.Port)})
		})
	}
	wg.Wait()
	s.Nodes = append(s.Nodes, compact(nodes)...)
	if err := errors.Join(errs...); err != nil {
		s.stop()
		return nil, err
	}

	ctx, cancel := context.WithTimeout(context.Background(), sentinelReadyTimeout)
	defer cancel()
	// The replicas are in sync before the sentinels start, so that their
	// first look at the master already shows every replica.
	if err := s.poll(ctx, func(ctx context.Context) error { return replicasOf(ctx, master, s.Nodes[1:]) }); err != nil {
		s.stop()
		return s, err
	}

	conf := func(port int) string {
		return fmt.Sprintf("port %d\nbind 127.0.0.1\n"+
			"sentinel monitor %[2]s 127.0.0.1 %[3]d %[4]d\n"+
			"sentinel down-after-milliseconds %[2]s 1000\n"+
			"sentinel failover-timeout %[2]s 5000\n"+
			"sentinel parallel-syncs %[2]s 1\n",
			port, name, master.Port, sentinelQuorum)
	}
	sentinels := make([]*Server, sentinelCount)
	errs = make([]error, sentinelCount)
	for i := range sentinelCount {
		wg.Go(func() {
			d, err := dir("sentinel" + strconv.Itoa(i))
			if err != nil {
				errs[i] = err
				return
			}
			sentinels[i], errs[i] = launchConf(bin, d, false, conf, []string{"--sentinel"})
		})
	}
	wg.Wait()
	s.Sentinels = compact(sentinels)
	if err := errors.Join(errs...); err != nil {
		s.stop()
		return nil, err
	}
	// At start the sentinels must also have heard from each replica, or a
	// first Failover would find no replica to promote.
	if err := s.poll(ctx, func(ctx context.Context) error { return s.settled(ctx, true) }); err != nil {
		s.stop()
		return s, err
	}
	return s, nil
}

// compact returns the non-nil servers of ss.
func compact(ss []*Server) []*Server {
	return slices.DeleteFunc(ss, func(s *Server) bool { return s == nil })
}

// MasterName returns the name the sentinels monitor the master by, for
// redis.FailoverOptions.MasterName.
func (s *Sentinel) MasterName() string { return s.name }

// SentinelAddrs returns the addresses of the sentinels, for
// redis.FailoverOptions.SentinelAddrs. It includes stopped sentinels.
func (s *Sentinel) SentinelAddrs() []string {
	addrs := make([]string, len(s.Sentinels))
	for i, n := range s.Sentinels {
		addrs[i] = n.Addr
	}
	return addrs
}

// Master returns the data node that the first running sentinel to answer
// names as the current master, or nil if no sentinel answers (within a few
// seconds) or the address is none of Nodes. Right after a failover the
// sentinels may briefly disagree; [Sentinel.Failover] returns only once
// they agree.
func (s *Sentinel) Master() *Server {
	ctx, cancel := context.WithTimeout(context.Background(), clientReadyTimeout)
	defer cancel()
	for _, sn := range s.Sentinels {
		if !sn.Alive() {
			continue
		}
		if addr, err := s.masterAddr(ctx, sn); err == nil {
			return s.nodeByAddr(addr)
		}
	}
	return nil
}

// Failover makes the sentinels fail the master over to a replica, as
// SENTINEL FAILOVER does, and returns once every running sentinel names
// the same new master and that node answers ROLE with "master". The
// demoted master is still a master then: the sentinels reconfigure it as a
// replica of the new one some ten seconds later (see
// [Sentinel.WaitSettled]).
//
// Failover first waits until the setup has settled from any earlier
// failover. It fails the test if the setup has no running replica or the
// failover does not complete within about 30 s.
func (s *Sentinel) Failover(tb testing.TB) {
	tb.Helper()
	if err := s.failover(); err != nil {
		tb.Fatalf("redistest: sentinel failover: %v", err)
	}
}

func (s *Sentinel) failover() error {
	if err := s.waitSettled(); err != nil {
		return fmt.Errorf("before the failover: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), failoverTimeout)
	defer cancel()
	old := s.Master()
	if old == nil {
		return errors.New("no sentinel names the master")
	}
	if !slices.ContainsFunc(s.Nodes, func(n *Server) bool { return n != old && n.Alive() }) {
		return fmt.Errorf("no running replica of %s to fail over to", old.Addr)
	}
	sn := s.runningSentinels()[0] // there is one: it named old
	// NOGOODSLAVE: the sentinel has no fresh INFO of a replica yet;
	// INPROG: a failover it started on its own is under way.
	err := s.poll(ctx, func(ctx context.Context) error {
		err := sn.adminClient().Do(ctx, "SENTINEL", "FAILOVER", s.name).Err()
		if err != nil && (strings.HasPrefix(err.Error(), "NOGOODSLAVE") || strings.HasPrefix(err.Error(), "INPROG")) {
			return err
		}
		if err != nil {
			return permanent{fmt.Errorf("SENTINEL FAILOVER %s on %s: %w", s.name, sn.Addr, err)}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return s.poll(ctx, func(ctx context.Context) error {
		addr, err := s.agreedMaster(ctx)
		if err != nil {
			return err
		}
		if addr == old.Addr {
			return fmt.Errorf("the sentinels still name %s", old.Addr)
		}
		n := s.nodeByAddr(addr)
		if n == nil {
			return fmt.Errorf("the sentinels name %s, none of the data nodes", addr)
		}
		return isMaster(ctx, n)
	})
}

// WaitSettled waits (up to about 30 s) until the setup is at rest: the
// master answers ROLE with "master" and every other running data node is
// an online replica of it; every running sentinel names that master, lists
// the running replicas as replicas that are neither down nor disconnected,
// and sees the other running sentinels. After a [Sentinel.Failover] this
// is when the sentinels have made the demoted master a replica, some ten
// seconds after the switch. It fails the test otherwise.
//
// A sentinel that did not lead the failover may still hold the demoted
// master's last INFO as a master then: it asks a healthy replica for INFO
// only every ten seconds. That does not keep it from failing over to it.
func (s *Sentinel) WaitSettled(tb testing.TB) {
	tb.Helper()
	if err := s.waitSettled(); err != nil {
		tb.Fatalf("redistest: sentinel setup: %v", err)
	}
}

func (s *Sentinel) waitSettled() error {
	ctx, cancel := context.WithTimeout(context.Background(), sentinelReadyTimeout)
	defer cancel()
	return s.poll(ctx, func(ctx context.Context) error { return s.settled(ctx, false) })
}

// settled returns nil once the setup is at rest (see WaitSettled), else
// the first thing that is not. With heard, every sentinel must also have
// had INFO from each replica reporting its link to the master up.
func (s *Sentinel) settled(ctx context.Context, heard bool) error {
	addr, err := s.agreedMaster(ctx)
	if err != nil {
		return err
	}
	master := s.nodeByAddr(addr)
	if master == nil {
		return fmt.Errorf("the sentinels name %s, none of the data nodes", addr)
	}
	if err := isMaster(ctx, master); err != nil {
		return err
	}
	var replicas []*Server
	for _, n := range s.Nodes {
		if n != master && n.Alive() {
			replicas = append(replicas, n)
		}
	}
	if err := replicasOf(ctx, master, replicas); err != nil {
		return err
	}
	sentinels := s.runningSentinels()
	for _, sn := range sentinels {
		if err := s.sentinelSees(ctx, sn, master, replicas, len(sentinels)-1, heard); err != nil {
			return err
		}
	}
	return nil
}

// sentinelSees returns nil if sentinel sn reports master as a healthy
// master with replicas as its replicas, neither down nor disconnected, and
// otherSentinels other healthy sentinels. With heard, each replica's last
// INFO must also have shown its link to master up.
func (s *Sentinel) sentinelSees(ctx context.Context, sn, master *Server, replicas []*Server, otherSentinels int, heard bool) error {
	cl := sn.adminClient()
	m, err := cl.Do(ctx, "SENTINEL", "MASTER", s.name).Result()
	if err != nil {
		return fmt.Errorf("SENTINEL MASTER on %s: %w", sn.Addr, err)
	}
	mf := replyFields(m)
	if mf["flags"] != "master" || net.JoinHostPort(mf["ip"], mf["port"]) != master.Addr {
		return fmt.Errorf("sentinel %s sees master %s:%s with flags %q (want %s, flags master)",
			sn.Addr, mf["ip"], mf["port"], mf["flags"], master.Addr)
	}
	if mf["num-other-sentinels"] != strconv.Itoa(otherSentinels) {
		return fmt.Errorf("sentinel %s knows %s other sentinels, want %d", sn.Addr, mf["num-other-sentinels"], otherSentinels)
	}

	reps, err := cl.Do(ctx, "SENTINEL", "REPLICAS", s.name).Slice()
	if err != nil {
		return fmt.Errorf("SENTINEL REPLICAS on %s: %w", sn.Addr, err)
	}
	seen := make(map[string]map[string]string)
	for _, r := range reps {
		f := replyFields(r)
		seen[net.JoinHostPort(f["ip"], f["port"])] = f
	}
	for _, r := range replicas {
		f := seen[r.Addr]
		// master-link-status comes from the replica's own INFO: "ok" means
		// the sentinel has heard from it, which a failover needs (it only
		// promotes a replica whose INFO it had lately).
		if f == nil || f["flags"] != "slave" ||
			heard && (f["master-link-status"] != "ok" || net.JoinHostPort(f["master-host"], f["master-port"]) != master.Addr) {
			return fmt.Errorf("sentinel %s does not see %s as a healthy replica of %s: %v", sn.Addr, r.Addr, master.Addr, f)
		}
	}

	others, err := cl.Do(ctx, "SENTINEL", "SENTINELS", s.name).Slice()
	if err != nil {
		return fmt.Errorf("SENTINEL SENTINELS on %s: %w", sn.Addr, err)
	}
	healthy := 0
	for _, o := range others {
		if replyFields(o)["flags"] == "sentinel" {
			healthy++
		}
	}
	if healthy != otherSentinels {
		return fmt.Errorf("sentinel %s sees %d healthy other sentinels, want %d", sn.Addr, healthy, otherSentinels)
	}
	return nil
}

// agreedMaster returns the master address that every running sentinel
// reports, or an error if they disagree or one does not answer.
func (s *Sentinel) agreedMaster(ctx context.Context) (string, error) {
	sentinels := s.runningSentinels()
	if len(sentinels) == 0 {
		return "", errors.New("no sentinel is running")
	}
	var addr string
	for _, sn := range sentinels {
		a, err := s.masterAddr(ctx, sn)
		if err != nil {
			return "", err
		}
		if addr != "" && a != addr {
			return "", fmt.Errorf("the sentinels disagree on the master: %s and %s", addr, a)
		}
		addr = a
	}
	return addr, nil
}

// masterAddr asks sentinel sn for the master's address.
func (s *Sentinel) masterAddr(ctx context.Context, sn *Server) (string, error) {
	a, err := sn.adminClient().Do(ctx, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", s.name).StringSlice()
	if err != nil {
		return "", fmt.Errorf("SENTINEL GET-MASTER-ADDR-BY-NAME on %s: %w", sn.Addr, err)
	}
	if len(a) != 2 {
		return "", fmt.Errorf("SENTINEL GET-MASTER-ADDR-BY-NAME on %s answered %q", sn.Addr, a)
	}
	return net.JoinHostPort(a[0], a[1]), nil
}

// isMaster returns nil if n answers ROLE with "master".
func isMaster(ctx context.Context, n *Server) error {
	role, err := n.adminClient().Do(ctx, "ROLE").Slice()
	if err != nil {
		return fmt.Errorf("ROLE on %s: %w", n.Addr, err)
	}
	if len(role) == 0 || role[0] != "master" {
		return fmt.Errorf("%s answers ROLE %v, not master", n.Addr, role)
	}
	return nil
}

// replicasOf returns nil once master lists every one of replicas as
// online in INFO replication and each replica reports its link to master
// up.
func replicasOf(ctx context.Context, master *Server, replicas []*Server) error {
	repl, err := master.adminClient().Info(ctx, "replication").Result()
	if err != nil {
		return fmt.Errorf("INFO replication on %s: %w", master.Addr, err)
	}
	for _, r := range replicas {
		if !strings.Contains(repl, fmt.Sprintf(",port=%d,state=online,", r.Port)) {
			return fmt.Errorf("replica %s is not online at master %s:\n%s", r.Addr, master.Addr, repl)
		}
		info, err := r.adminClient().Info(ctx, "replication").Result()
		if err != nil {
			return fmt.Errorf("INFO replication on %s: %w", r.Addr, err)
		}
		f := infoFields(info)
		if f["role"] != "slave" || f["master_port"] != strconv.Itoa(master.Port) || f["master_link_status"] != "up" {
			return fmt.Errorf("%s is not a synced replica of %s:\n%s", r.Addr, master.Addr, info)
		}
	}
	return nil
}

// replyFields turns a SENTINEL MASTER/REPLICAS/SENTINELS entry, a flat
// list of names and values in RESP2 or a map in RESP3, into a map.
func replyFields(v any) map[string]string {
	f := make(map[string]string)
	switch v := v.(type) {
	case []any:
		for i := 0; i+1 < len(v); i += 2 {
			f[fmt.Sprint(v[i])] = fmt.Sprint(v[i+1])
		}
	case map[any]any:
		for k, val := range v {
			f[fmt.Sprint(k)] = fmt.Sprint(val)
		}
	}
	return f
}

// permanent marks an error on which poll gives up at once.
type permanent struct{ error }

func (p permanent) Unwrap() error { return p.error }

// poll calls check every sentinelPoll until it returns nil, returns a
// permanent error, or ctx ends; then it returns check's last error.
func (s *Sentinel) poll(ctx context.Context, check func(context.Context) error) error {
	for {
		err := check(ctx)
		if err == nil {
			return nil
		}
		if p, ok := err.(permanent); ok {
			return p.error
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready in time: %w", err)
		case <-time.After(sentinelPoll):
		}
	}
}

// Client returns a new go-redis failover client of the setup, closed when
// tb ends. The options start as {MasterName: s.MasterName(),
// SentinelAddrs: s.SentinelAddrs(), ContextTimeoutEnabled: true} and are
// then passed to each of opts.
//
// The client is ready when returned: it has found the master through a
// sentinel and pinged it (retrying for up to 5 s), and the test fails if
// that does not succeed.
func (s *Sentinel) Client(tb testing.TB, opts ...func(*redis.FailoverOptions)) *redis.Client {
	tb.Helper()
	o := &redis.FailoverOptions{
		MasterName:            s.name,
		SentinelAddrs:         s.SentinelAddrs(),
		ContextTimeoutEnabled: true,
	}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewFailoverClient(o)
	tb.Cleanup(func() { _ = c.Close() })

	ctx, cancel := context.WithTimeout(context.Background(), clientReadyTimeout)
	defer cancel()
	if err := s.poll(ctx, func(ctx context.Context) error { return c.Ping(ctx).Err() }); err != nil {
		tb.Fatalf("redistest: failover client not ready after %v: %v", clientReadyTimeout, err)
	}
	return c
}

// runningSentinels returns the sentinels that are running.
func (s *Sentinel) runningSentinels() []*Server {
	var running []*Server
	for _, sn := range s.Sentinels {
		if sn.Alive() {
			running = append(running, sn)
		}
	}
	return running
}

// nodeByAddr returns the data node listening on addr, or nil.
func (s *Sentinel) nodeByAddr(addr string) *Server {
	for _, n := range s.Nodes {
		if n.Addr == addr {
			return n
		}
	}
	return nil
}

// stop kills the sentinels, so that they do not react, and then the data
// nodes.
func (s *Sentinel) stop() {
	for _, n := range s.Sentinels {
		n.Stop()
	}
	for _, n := range s.Nodes {
		n.Stop()
	}
}

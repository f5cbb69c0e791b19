package redistest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

const (
	// readyTimeout bounds how long a starting server may take to answer.
	readyTimeout = 5 * time.Second
	// readyPoll is the delay between readiness probes.
	readyPoll = 10 * time.Millisecond
	// startAttempts bounds how often a start is retried with fresh ports
	// when another process grabbed a port between picking and binding.
	startAttempts = 5
	// logName is the file, in the server's directory, that receives the
	// server's stdout and stderr.
	logName = "redis.log"
	// logTailBytes is how much of the log failure messages include.
	logTailBytes = 4 << 10
)

// errAddrInUse marks a start that failed because a port was taken.
var errAddrInUse = errors.New("address already in use")

// RequireServer returns the path of the redis-server binary found on PATH.
//
// If there is none, the test is skipped, or fails when the environment
// variable CI is non-empty, so that a CI image without Redis cannot pass by
// silently skipping every integration test.
func RequireServer(tb testing.TB) string {
	tb.Helper()
	bin, err := exec.LookPath("redis-server")
	if err == nil {
		return bin
	}
	if os.Getenv("CI") != "" {
		tb.Fatalf("redistest: redis-server not on PATH (%v) and CI is set: "+
			"integration tests must not be skipped in CI; install redis-server "+
			"(Debian: apt-get install redis-server)", err)
	}
	tb.Skip("redis-server not on PATH; install it (Debian: apt-get install redis-server) to run integration tests")
	return ""
}

// Server is one redis-server process listening on 127.0.0.1.
//
// Its methods are safe for concurrent use.
type Server struct {
	// Addr is the server's address, "127.0.0.1:<Port>".
	Addr string
	// Port is the server's TCP port. It does not change across Restart.
	Port int

	bin     string   // redis-server binary
	dir     string   // working and data directory, also holds the log
	busPort int      // cluster bus port; 0 unless this is a cluster node
	conf    string   // config file, the first argument; "" for none
	extra   []string // caller's extra arguments

	mu       sync.Mutex
	cmd      *exec.Cmd     // nil while stopped
	exited   chan struct{} // closed once cmd has been waited for
	logStart int64         // log offset where the current run's output begins
	admin    *redis.Client // lazily created, see adminClient
}

// StartServer starts a redis-server on a free loopback port and waits until
// it answers. The server runs in a fresh temporary directory, without
// persistence, and is killed when tb ends.
//
// extraArgs are appended to the command line after the defaults, so they
// can override them, e.g. StartServer(t, "--maxmemory", "10mb"). The
// defaults are
//
//	--port P --bind 127.0.0.1 --save "" --appendonly no --dir D
//	--daemonize no --protected-mode no --repl-diskless-sync-delay 0
//
// (the last one so that a replica attached to this server syncs at once
// instead of after five seconds).
func StartServer(tb testing.TB, extraArgs ...string) *Server {
	tb.Helper()
	bin := RequireServer(tb)
	s, err := launch(bin, tb.TempDir(), false, extraArgs)
	if err != nil {
		tb.Fatalf("redistest: start redis-server: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("redistest: log of redis-server %s:\n%s", s.Addr, s.LogTail())
		}
		s.Stop()
	})
	return s
}

// launch starts a server in dir and waits until it is ready. A cluster node
// also gets a free cluster bus port. On a port conflict it retries with
// fresh ports.
func launch(bin, dir string, clusterNode bool, extra []string) (*Server, error) {
	return launchConf(bin, dir, clusterNode, nil, extra)
}

// confName is the file, in the server's directory, that launchConf writes.
const confName = "redis.conf"

// launchConf is launch for a server whose command line begins with a
// config file, as redis-server --sentinel requires. Before each attempt,
// conf (unless nil) is given the picked port and returns the file's
// contents, which are written to confName in dir. The server may rewrite
// the file; Restart keeps it as it is.
func launchConf(bin, dir string, clusterNode bool, conf func(port int) string, extra []string) (*Server, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	nports := 1
	if clusterNode {
		nports = 2
	}
	for attempt := 1; ; attempt++ {
		ports, err := freePorts(nports)
		if err != nil {
			return nil, err
		}
		s := &Server{
			Addr:  net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])),
			Port:  ports[0],
			bin:   bin,
			dir:   dir,
			extra: extra,
		}
		if clusterNode {
			s.busPort = ports[1]
		}
		if conf != nil {
			s.conf = filepath.Join(dir, confName)
			if err := os.WriteFile(s.conf, []byte(conf(s.Port)), 0o644); err != nil {
				return nil, err
			}
		}
		s.mu.Lock()
		err = s.startLocked()
		s.mu.Unlock()
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errAddrInUse) || attempt == startAttempts {
			return nil, err
		}
	}
}

// freePorts returns n distinct loopback ports that were free a moment ago.
// All listeners are held open together so the ports differ.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("pick a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// args returns the redis-server command line for s.
func (s *Server) args() []string {
	var a []string
	if s.conf != "" {
		a = append(a, s.conf)
	}
	a = append(a,
		"--port", strconv.Itoa(s.Port),
		"--bind", "127.0.0.1",
		"--save", "",
		"--appendonly", "no",
		"--dir", s.dir,
		"--daemonize", "no",
		"--protected-mode", "no",
		"--repl-diskless-sync-delay", "0",
	)
	if s.busPort != 0 {
		a = append(a, clusterNodeArgs(s.busPort)...)
	}
	return append(a, s.extra...)
}

// startLocked starts the process and waits until it answers. On failure
// the process is gone and the error carries the tail of its log.
func (s *Server) startLocked() error {
	if s.cmd != nil {
		return fmt.Errorf("redis-server %s is already running", s.Addr)
	}
	args := s.args()
	logf, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(logf, "--- redistest %s: %s %s\n",
		time.Now().Format(time.RFC3339Nano), s.bin, quoteArgs(args))
	if off, err := logf.Seek(0, io.SeekEnd); err == nil {
		s.logStart = off
	}
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.dir
	cmd.Stdout = logf // an *os.File is handed to the child as is: no copier goroutine
	cmd.Stderr = logf
	configureProc(cmd)
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("exec %s: %w", s.bin, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	if err := waitReady(s.Addr, cmd.Process.Pid, exited); err != nil {
		kill(cmd, exited)
		out := s.runLog()
		if strings.Contains(out, "Address already in use") {
			err = fmt.Errorf("%w: %v", errAddrInUse, err)
		}
		return fmt.Errorf("redis-server %s (dir %s): %w\n--- log:\n%s", s.Addr, s.dir, err, out)
	}
	s.cmd, s.exited = cmd, exited
	return nil
}

// waitReady polls addr until the process pid answers INFO, the process
// exits, or readyTimeout passes. Checking the pid guards against a port
// that another server grabbed between picking and binding.
func waitReady(addr string, pid int, exited <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case <-exited:
			return errors.New("redis-server exited during startup")
		default:
		}
		got, err := probePID(addr)
		if err == nil {
			if got == pid {
				return nil
			}
			err = fmt.Errorf("%s is served by another process (pid %d, want %d)", addr, got, pid)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", readyTimeout, err)
		}
		time.Sleep(readyPoll)
	}
}

// probePID asks the server at addr for its process id with a raw RESP
// "INFO server". It deliberately avoids go-redis: no pool, no retries, no
// background goroutines.
func probePID(addr string) (int, error) {
	conn, err := net.DialTimeout("tcp", addr, 250*time.Millisecond)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		return 0, err
	}
	if _, err := io.WriteString(conn, "INFO server\r\n"); err != nil {
		return 0, err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return 0, err
	}
	line = strings.TrimRight(line, "\r\n")
	if !strings.HasPrefix(line, "$") {
		return 0, fmt.Errorf("INFO answered %q", line)
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil || n < 0 {
		return 0, fmt.Errorf("INFO answered %q", line)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(body)) {
		if v, ok := strings.CutPrefix(l, "process_id:"); ok {
			return strconv.Atoi(strings.TrimSpace(v))
		}
	}
	return 0, errors.New("INFO server has no process_id")
}

// Client returns a new go-redis client for s, closed when tb ends. The
// options start as {Addr: s.Addr} and are then passed to each of opts.
func (s *Server) Client(tb testing.TB, opts ...func(*redis.Options)) *redis.Client {
	tb.Helper()
	o := &redis.Options{Addr: s.Addr}
	for _, f := range opts {
		f(o)
	}
	c := redis.NewClient(o)
	tb.Cleanup(func() { _ = c.Close() })
	return c
}

// adminClient returns a small client owned by s, for the package's own
// commands (cluster setup, MasterForKey, FlushAll). It is closed by Stop.
func (s *Server) adminClient() *redis.Client {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.admin == nil {
		s.admin = redis.NewClient(&redis.Options{
			Addr:            s.Addr,
			Protocol:        2,
			PoolSize:        2,
			MaxRetries:      -1,
			DialTimeout:     time.Second,
			ReadTimeout:     2 * time.Second,
			WriteTimeout:    2 * time.Second,
			DialerRetries:   1,
			DisableIdentity: true,
			MaintNotificationsConfig: &maintnotifications.Config{
				Mode: maintnotifications.ModeDisabled,
			},
		})
	}
	return s.admin
}

// Stop kills the server (SIGKILL, so nothing is saved) and waits for it to
// exit. Stopping a stopped server does nothing. Clients keep their
// configuration: after Restart they reconnect.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *Server) stopLocked() {
	if s.admin != nil {
		_ = s.admin.Close()
		s.admin = nil
	}
	if s.cmd == nil {
		return
	}
	kill(s.cmd, s.exited)
	s.cmd, s.exited = nil, nil
}

// kill kills cmd unless it has exited already, and waits until it has been
// reaped. exited is closed once cmd.Wait has returned.
func kill(cmd *exec.Cmd, exited <-chan struct{}) {
	select {
	case <-exited: // reaped already: its pid may belong to someone else now
	default:
		killProc(cmd)
		<-exited
	}
}

// Restart stops the server if it is running and starts it again on the same
// port with empty data, then waits until it answers. Any RDB or AOF files
// in its directory are removed first, so the data is empty even if a test
// ran SAVE or enabled appendonly. A cluster node keeps its nodes.conf, so it
// rejoins its cluster with the same node id (as a master with no keys, or
// as a replica if a failover happened meanwhile).
//
// Restart fails the test if the port has been taken by another process.
func (s *Server) Restart(tb testing.TB) {
	tb.Helper()
	if err := s.restart(); err != nil {
		tb.Fatalf("redistest: restart: %v", err)
	}
}

func (s *Server) restart() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
	for _, name := range []string{"dump.rdb", "appendonly.aof", "appendonlydir"} {
		if err := os.RemoveAll(filepath.Join(s.dir, name)); err != nil {
			return err
		}
	}
	var err error
	for attempt := 1; attempt <= 3; attempt++ {
		if err = s.startLocked(); !errors.Is(err, errAddrInUse) {
			return err
		}
		time.Sleep(100 * time.Millisecond) // the port may be freed soon
	}
	return err
}

// Alive reports whether the server process is running: started, not
// stopped, and not exited on its own. It does not send a command.
func (s *Server) Alive() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return false
	}
	select {
	case <-s.exited:
		return false
	default:
		return true
	}
}

// LogTail returns the last few KiB of the server's log (its stdout and
// stderr across all runs), for failure messages.
func (s *Server) LogTail() string {
	return readTail(s.logPath(), 0)
}

// runLog returns the tail of the current run's log output.
func (s *Server) runLog() string {
	return readTail(s.logPath(), s.logStart)
}

func (s *Server) logPath() string { return filepath.Join(s.dir, logName) }

// readTail returns at most logTailBytes from the end of path, not reading
// before offset from.
func readTail(path string, from int64) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	start := max(from, fi.Size()-logTailBytes, 0)
	b := make([]byte, fi.Size()-start)
	n, _ := f.ReadAt(b, start)
	b = b[:n]
	if start > from {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:] // drop the partial first line
		}
	}
	if len(b) == 0 {
		return "(empty)"
	}
	return string(b)
}

// quoteArgs renders args for the log, making empty arguments visible.
func quoteArgs(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		if a == "" || strings.ContainsAny(a, " \t\"") {
			a = strconv.Quote(a)
		}
		q[i] = a
	}
	return strings.Join(q, " ")
}

// Package pgtest starts private PostgreSQL servers for integration tests:
// initdb into a fresh temporary directory, postgres on a free loopback port
// with wal_level=logical (which logical replication, and so
// tiercachepg.Follower, needs, and which a machine's own service usually
// does not have), torn down when the test ends. It is to PostgreSQL what
// tiercache's internal/redistest is to redis-server, and public so that
// the tests of code built on tiercachepg (the catalog example, yours) can
// use it; it is a test helper, never imported by tiercachepg itself.
//
//	func TestSomething(t *testing.T) {
//		srv := pgtest.Start(t) // stopped and removed when t ends
//		pool, err := pgxpool.New(t.Context(), srv.DSN(""))
//		...
//	}
//
// The binaries are looked up on PATH and then in /usr/lib/postgresql/*/bin
// (Debian's layout, newest version first). If there are none the test is
// skipped, or fails when the environment variable CI is non-empty, so that
// a CI image without PostgreSQL cannot pass by skipping.
//
// PostgreSQL refuses to run as root. When the test runs as root (as CI
// does), initdb and postgres run as the unprivileged "postgres" system
// user, through SysProcAttr.Credential, in a data directory chowned to it.
//
// The server trusts every connection from 127.0.0.1 (no passwords), has no
// Unix socket, and trades durability for speed (fsync and full_page_writes
// off): it is a test fixture, never a database. synchronous_commit stays on,
// so that a commit that returned is flushed and so visible to logical
// decoding at once (with it off, the WAL writer flushes up to 200 ms later).
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const (
	// readyTimeout bounds how long a starting server may take to accept
	// connections.
	readyTimeout = 60 * time.Second
	// stopTimeout bounds an immediate shutdown before the process group is
	// killed.
	stopTimeout = 10 * time.Second
	// startAttempts bounds retries with a fresh port when another process
	// took the port between picking and binding.
	startAttempts = 5
	// logTailBytes is how much of the server log failure messages include.
	logTailBytes = 4 << 10
	// runAsUser is the system user the server runs as when the test runs as
	// root.
	runAsUser = "postgres"
)

// Superuser is the name of the superuser role that initdb creates.
const Superuser = "postgres"

// baseSettings are the server settings of every test server, before the
// caller's.
var baseSettings = []string{
	"listen_addresses=127.0.0.1",
	"unix_socket_directories=",
	"wal_level=logical",
	"max_wal_senders=20",
	"max_replication_slots=20",
	"max_connections=100",
	"shared_buffers=32MB",
	"fsync=off",
	"full_page_writes=off",
	"log_min_messages=warning",
	"log_line_prefix=%m [%p] ",
}

// Binaries are the PostgreSQL programs a server is started with.
type Binaries struct {
	Initdb   string
	Postgres string
}

// FindBinaries looks for initdb and postgres: first on PATH, then in
// /usr/lib/postgresql/*/bin, newest version first. Both come from the same
// directory when possible.
func FindBinaries() (Binaries, error) {
	if initdb, err := exec.LookPath("initdb"); err == nil {
		sibling := filepath.Join(filepath.Dir(initdb), "postgres")
		if isExec(sibling) {
			return Binaries{Initdb: initdb, Postgres: sibling}, nil
		}
		if pg, err := exec.LookPath("postgres"); err == nil {
			return Binaries{Initdb: initdb, Postgres: pg}, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	slices.SortFunc(dirs, func(a, b string) int { return versionOf(b) - versionOf(a) })
	for _, d := range dirs {
		b := Binaries{Initdb: filepath.Join(d, "initdb"), Postgres: filepath.Join(d, "postgres")}
		if isExec(b.Initdb) && isExec(b.Postgres) {
			return b, nil
		}
	}
	return Binaries{}, errors.New("initdb and postgres are neither on PATH nor in /usr/lib/postgresql/*/bin")
}

// versionOf is the major version in a path like /usr/lib/postgresql/15/bin.
func versionOf(dir string) int {
	v, _ := strconv.Atoi(filepath.Base(filepath.Dir(dir)))
	return v
}

func isExec(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// Require returns the PostgreSQL binaries, or skips the test if there are
// none, or fails it when the environment variable CI is non-empty.
func Require(tb testing.TB) Binaries {
	tb.Helper()
	b, err := FindBinaries()
	if err == nil {
		return b
	}
	if os.Getenv("CI") != "" {
		tb.Fatalf("pgtest: %v, and CI is set: integration tests must not be skipped in CI; "+
			"install PostgreSQL (Debian: apt-get install postgresql)", err)
	}
	tb.Skipf("pgtest: %v; install PostgreSQL (Debian: apt-get install postgresql) to run these tests", err)
	return Binaries{}
}

// SkipExamplesIfMissing makes `go test` skip the package's Example
// functions when PostgreSQL is missing and CI is not set (examples cannot
// skip themselves). Call it from TestMain before m.Run (or before
// redistest.Main, which adds its own pattern to the same flag).
func SkipExamplesIfMissing() {
	if _, err := FindBinaries(); err == nil || os.Getenv("CI") != "" {
		return
	}
	fmt.Fprintln(os.Stderr, "pgtest: PostgreSQL not found: integration tests and examples are skipped")
	skip := "^Example"
	if f := flag.Lookup("test.skip"); f != nil && f.Value.String() != "" {
		skip = f.Value.String() + "|" + skip
	}
	_ = flag.Set("test.skip", skip)
}

// Server is one running PostgreSQL server on 127.0.0.1. Its methods are
// safe for concurrent use.
type Server struct {
	// Host is "127.0.0.1"; Port is the server's TCP port.
	Host string
	Port int

	dir  string // temporary root: data/ and postgres.log
	bins Binaries
	cred *credential // nil: run as the current user

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// Start initialises and starts a server, waits until it accepts
// connections, and stops it and removes its files when tb ends. settings
// are extra "name=value" server settings (postgres -c), after the
// defaults, so they can override them.
func Start(tb testing.TB, settings ...string) *Server {
	tb.Helper()
	bins := Require(tb)
	s, err := Launch(bins, settings...)
	if err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("pgtest: log of the server on port %d:\n%s", s.Port, s.LogTail())
		}
		s.Stop()
	})
	return s
}

// Launch is Start without a testing.TB, for Example functions: the caller
// must call Stop.
func Launch(bins Binaries, settings ...string) (*Server, error) {
	cred, err := lookupCredential()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, err
	}
	s := &Server{Host: "127.0.0.1", dir: dir, bins: bins, cred: cred}
	if err := s.init(); err != nil {
		_ = os.RemoveAll(dir)
		return nil, err
	}
	for attempt := 1; ; attempt++ {
		s.Port, err = freePort()
		if err == nil {
			err = s.start(settings)
		}
		if err == nil {
			return s, nil
		}
		if !errors.Is(err, errAddrInUse) || attempt == startAttempts {
			_ = os.RemoveAll(dir)
			return nil, err
		}
	}
}

var errAddrInUse = errors.New("address already in use")

// init runs initdb into dir/data, as the unprivileged user when root.
func (s *Server) init() error {
	if s.cred != nil {
		if err := os.Chown(s.dir, s.cred.uid, s.cred.gid); err != nil {
			return fmt.Errorf("chown %s to %s: %w", s.dir, runAsUser, err)
		}
	}
	cmd := exec.Command(s.bins.Initdb,
		"-D", s.dataDir(), "-U", Superuser, "-A", "trust", "-E", "UTF8",
		"--locale=C", "--no-sync", "--no-instructions")
	cmd.Dir = s.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	configureProc(cmd, s.cred)
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("initdb (%s): %w\n%s", s.bins.Initdb, err, out.String())
	}
	return nil
}

// start runs postgres on s.Port and waits until it accepts connections.
func (s *Server) start(settings []string) error {
	args := []string{"-D", s.dataDir(), "-p", strconv.Itoa(s.Port)}
	for _, kv := range slices.Concat(baseSettings, settings) {
		args = append(args, "-c", kv)
	}
	logf, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bins.Postgres, args...)
	cmd.Dir = s.dir
	cmd.Stdout, cmd.Stderr = logf, logf // files are handed over as they are: no copier goroutine
	configureProc(cmd, s.cred)
	err = cmd.Start()
	logf.Close()
	if err != nil {
		return fmt.Errorf("exec %s: %w", s.bins.Postgres, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	if err := s.waitReady(exited); err != nil {
		stopProc(cmd, exited)
		tail := s.LogTail()
		if strings.Contains(tail, "Address already in use") {
			err = fmt.Errorf("%w: %v", errAddrInUse, err)
		}
		return fmt.Errorf("postgres on port %d: %w\n--- log:\n%s", s.Port, err, tail)
	}
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	return nil
}

// waitReady connects until the server answers, the process exits or
// readyTimeout passes.
func (s *Server) waitReady(exited <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case <-exited:
			return errors.New("postgres exited during startup")
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		conn, err := pgconn.Connect(ctx, s.DSN(""))
		if err == nil {
			_ = conn.Close(ctx)
			cancel()
			return nil
		}
		cancel()
		if time.Now().After(deadline) {
			return fmt.Errorf("not ready after %v: %w", readyTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// DSN returns a connection string for database "postgres" as user (the
// superuser when empty).
func (s *Server) DSN(user string) string {
	if user == "" {
		user = Superuser
	}
	return fmt.Sprintf("postgres://%s@%s/postgres?sslmode=disable&connect_timeout=5",
		user, net.JoinHostPort(s.Host, strconv.Itoa(s.Port)))
}

// Exec runs sql (one or more statements, simple protocol) as the
// superuser, failing tb on error.
func (s *Server) Exec(tb testing.TB, sql string) {
	tb.Helper()
	if err := s.ExecErr(sql); err != nil {
		tb.Fatalf("pgtest: %v", err)
	}
}

// ExecErr runs sql as the superuser and returns its error.
func (s *Server) ExecErr(sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, s.DSN(""))
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql).ReadAll(); err != nil {
		return fmt.Errorf("%s: %w", firstLine(sql), err)
	}
	return nil
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// Stop shuts the server down (immediate shutdown, then SIGKILL to its
// process group if it lingers), waits for it and removes its files.
// Stopping twice does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		stopProc(s.cmd, s.exited)
		s.cmd, s.exited = nil, nil
	}
	if s.dir != "" {
		_ = os.RemoveAll(s.dir)
		s.dir = ""
	}
}

// stopProc asks postgres for an immediate shutdown (SIGQUIT: every backend
// exits at once) and kills its process group if it has not exited within
// stopTimeout. exited is closed once cmd.Wait has returned.
func stopProc(cmd *exec.Cmd, exited <-chan struct{}) {
	select {
	case <-exited:
		return // reaped already: its pid may belong to someone else now
	default:
	}
	quitProc(cmd)
	select {
	case <-exited:
	case <-time.After(stopTimeout):
		killProc(cmd)
		<-exited
	}
}

// LogTail returns the end of the server's log, for failure messages.
func (s *Server) LogTail() string {
	f, err := os.Open(s.logPath())
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	start := max(fi.Size()-logTailBytes, 0)
	if _, err := f.Seek(start, io.SeekStart); err != nil {
		return err.Error()
	}
	b, _ := io.ReadAll(f)
	if len(b) == 0 {
		return "(empty)"
	}
	return string(b)
}

func (s *Server) dataDir() string { return filepath.Join(s.dir, "data") }
func (s *Server) logPath() string { return filepath.Join(s.dir, "postgres.log") }

// credential is the user and group a server process runs as.
type credential struct{ uid, gid int }

// lookupCredential returns nil when not root (run as the current user),
// and the postgres system user's ids when root.
func lookupCredential() (*credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup(runAsUser)
	if err != nil {
		return nil, fmt.Errorf("running as root, and PostgreSQL refuses to: need the unprivileged %q system user to run it as: %w", runAsUser, err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err := errors.Join(err1, err2); err != nil {
		return nil, fmt.Errorf("user %q: %w", runAsUser, err)
	}
	return &credential{uid: uid, gid: gid}, nil
}

// freePort returns a loopback port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

package tiercachepg

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/tiercache/tiercache"
)

// Follower tails a PostgreSQL logical replication slot and invalidates
// what each committed change makes stale. Create it with [New], run it
// with [Follower.Run], stop it by cancelling Run's context or with
// [Follower.Close]. Its methods are safe for concurrent use.
type Follower struct {
	cfg      *config
	replConn *pgconn.Config // replication=database, for the stream
	sqlConn  *pgconn.Config // a plain session, for setup and the lag poll

	// streamed is set once a stream of this follower has started (any
	// run): from then on a missing slot is not created again.
	streamed atomic.Bool

	c   counters
	obs observer // Options.Observer, its panics recovered

	mu      sync.Mutex
	running bool
	closed  bool
	stop    context.CancelCauseFunc // ends the current run
	done    chan struct{}           // closed when the current run has returned
}

// errStopped is the cause of a run ended by Close.
var errStopped = errors.New("tiercachepg: stopped")

// New returns a follower of the slot and publication named in opts, on
// the database that dsn names (a PostgreSQL URL or key=value string, as
// pgx takes it; environment variables and the password file apply). The
// parameters of pgx and pgxpool (pool_max_conns, default_query_exec_mode,
// ...) are accepted and left out, so the DSN of the application's pool
// will do. It checks opts and dsn but does not connect: Run does, and
// retries.
//
// The role in dsn needs the REPLICATION attribute (or superuser) and,
// with Options.Create, the right to create the publication (ownership of
// the tables); docs/COMMITLOG.md has the details.
func New(dsn string, opts Options) (*Follower, error) {
	cfg, err := newConfig(opts)
	if err != nil {
		return nil, err
	}
	// pgx.ParseConfig takes out pgx's own parameters
	// (default_query_exec_mode, statement_cache_capacity, ...), which
	// pgconn would send to the server as settings, and the server refuse.
	cc, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("%w: dsn: %w", ErrInvalidOption, err)
	}
	base := &cc.Config
	for k := range base.RuntimeParams {
		if strings.HasPrefix(k, "pool_") { // pgxpool's, so that one DSN serves both
			delete(base.RuntimeParams, k)
		}
	}
	repl := base.Copy()
	repl.RuntimeParams = copyParams(base.RuntimeParams)
	repl.RuntimeParams["replication"] = "database"
	plain := base.Copy()
	plain.RuntimeParams = copyParams(base.RuntimeParams)
	delete(plain.RuntimeParams, "replication")
	f := &Follower{cfg: cfg, replConn: repl, sqlConn: plain}
	f.c.slotLag.Store(-1)
	f.obs = observer{o: cfg.Observer, panics: &f.c.observerPanics, log: cfg.Logger}
	return f, nil
}

func copyParams(m map[string]string) map[string]string {
	out := make(map[string]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// Run follows the slot until ctx ends or Close is called, and then
// returns nil. It connects (and reconnects, with backoff, whenever the
// connection fails), checks the publication and the slot (creating them
// with Options.Create), and streams from the slot's confirmed position:
// each committed transaction's changes are mapped, invalidated, and only
// then confirmed to the slot, in commit order.
//
// Run returns an error only when it cannot go on: the slot or the
// publication is missing or wrong ([ErrSlotNotFound], [ErrSlotUnusable],
// [ErrPublication], also for a publication changed while Run streams so
// that it hides changes, checked every Options.LagInterval),
// PostgreSQL refuses the role ([ErrPermission]), Invalidate reports a
// closed cache (tiercache.ErrClosed), Run is already running
// ([ErrRunning]), the follower is closed ([ErrClosed]) or ctx is nil
// (tiercache.ErrNilContext). Redis and network errors are retried, never
// returned. Run may be called again after it returned; it resumes from the
// slot.
func (f *Follower) Run(ctx context.Context) error {
	if ctx == nil {
		return tiercache.ErrNilContext
	}
	f.mu.Lock()
	switch {
	case f.closed:
		f.mu.Unlock()
		return ErrClosed
	case f.running:
		f.mu.Unlock()
		return ErrRunning
	}
	parent := ctx
	ctx, stop := context.WithCancelCause(parent)
	f.running, f.stop, f.done = true, stop, make(chan struct{})
	done := f.done
	f.mu.Unlock()
	f.c.running.Store(true)
	defer func() {
		stop(nil)
		f.c.running.Store(false)
		f.mu.Lock()
		f.running = false
		f.mu.Unlock()
		close(done)
	}()

	// Three goroutines: stream (this one), apply and the lag poll. The
	// first of them to fail ends the run with its error as the cause;
	// every one of them returns when ctx ends.
	r := newRun(f)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := r.apply(ctx); err != nil {
			stop(err)
		}
	})
	wg.Go(func() {
		if err := r.pollLag(ctx); err != nil {
			stop(err)
		}
	})
	if err := r.stream(ctx); err != nil {
		stop(err)
	}
	stop(nil)
	wg.Wait()

	// The first component to fail set the cause; a run stopped by its
	// caller (ctx, Close) or ended by the stop above returns nil.
	err := context.Cause(ctx)
	if errors.Is(err, errStopped) || err == context.Canceled ||
		(parent.Err() != nil && err == context.Cause(parent)) {
		return nil
	}
	return err
}

// Close stops Run, if it is running, and waits until it has returned;
// Run cannot be called after. Close does not touch the slot: a follower
// started later resumes from it. It returns nil, also when called twice.
func (f *Follower) Close() error {
	f.mu.Lock()
	f.closed = true
	stop, done, running := f.stop, f.done, f.running
	f.mu.Unlock()
	if running {
		stop(errStopped)
		<-done
	}
	return nil
}

// Command catalog is an example service: a product catalog over HTTP whose
// repository is cached with tiercache.
//
//	go run ./examples/catalog                       # in-memory store, embedded Redis
//	go run ./examples/catalog -pg postgres://... -redis redis://localhost:6379/0
//
// The store is PostgreSQL when a DSN is given (-pg or DATABASE_URL) and an
// in-memory map with simulated latency otherwise; Redis is the one -redis
// (or REDIS_URL) names, or an embedded miniredis. On PostgreSQL the service
// also follows the database's commit log (tiercachepg, -follow): every
// committed change of a product invalidates it in the cache, whether or
// not the writer got to its own Delete. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/tiercachepg"

	"github.com/tiercache/tiercache/examples/catalog/internal/api"
	"github.com/tiercache/tiercache/examples/catalog/internal/catalog"
)

// cacheSchemaVersion is the cache namespace's version: bump it with any
// change to catalog.Product that old cached values would not decode into,
// or to what the cached values must carry, and a deploy starts on an empty
// namespace instead of misreading old values.
//
// 2: every cached product carries catalog.ProductsTag, which the
// follower invalidates on a TRUNCATE; the untagged values of version 1
// would outlive one.
const cacheSchemaVersion = 2

// shutdownTimeout bounds how long requests in flight may take to finish
// once the service is told to stop.
const shutdownTimeout = 10 * time.Second

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stderr, nil)
	if errors.Is(err, flag.ErrHelp) {
		return // -h: the flag set has printed the usage
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "catalog:", err)
		os.Exit(1)
	}
}

type config struct {
	addr     string
	pgDSN    string
	pgTable  string
	redisURL string
	cache    cacheConfig
	latency  time.Duration
	write    catalog.WriteMode
	seed     int
	follow   followConfig
}

// errBadFlags is wrapped by every error of the command line: a flag whose
// value does not parse or that the commit-log follower would refuse (a
// bad -pg-slot or -pg-publication, checked by building its options), and
// flags that make no sense together (each named in the message). The
// service has connected to nothing yet.
var errBadFlags = errors.New("bad flags")

// badFlags returns an error wrapping errBadFlags.
func badFlags(format string, args ...any) error {
	return fmt.Errorf("%w: %s", errBadFlags, fmt.Sprintf(format, args...))
}

// parseFlags parses the command line (and $DATABASE_URL, $REDIS_URL). -h
// is flag.ErrHelp; any other error wraps errBadFlags.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("catalog", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&cfg.addr, "addr", "127.0.0.1:8080", "listen address (port 0 picks a free one)")
	fs.StringVar(&cfg.pgDSN, "pg", "", "PostgreSQL DSN (default $DATABASE_URL); none for the in-memory store")
	fs.StringVar(&cfg.pgTable, "pg-table", "catalog_products", "PostgreSQL table, created if missing, in the connection's schema")
	fs.StringVar(&cfg.redisURL, "redis", "", "Redis URL, e.g. redis://localhost:6379/0 (default $REDIS_URL); none for an embedded Redis")
	fs.StringVar(&cfg.cache.prefix, "prefix", "catalog-product", "cache key prefix in Redis")
	fs.DurationVar(&cfg.latency, "latency", 20*time.Millisecond, "simulated latency of each in-memory store call")
	fs.IntVar(&cfg.cache.l1, "l1", 10_000, "L1 (in-process cache) entries; 0 turns L1 off")
	fs.BoolVar(&cfg.cache.coalesce, "coalesce", true, "send concurrent cache reads to Redis together, in shared round trips")
	fs.IntVar(&cfg.seed, "seed", 100, "sample products (ids 1..n) to add where missing; existing rows are kept")
	write := fs.String("write", "invalidate", "what a PUT does to the cache: invalidate, write-through, or none (PostgreSQL only: to see a follower at work)")
	fs.BoolVar(&cfg.follow.on, "follow", true, "with PostgreSQL, invalidate the cache from the database's commit log")
	fs.StringVar(&cfg.follow.slot, "pg-slot", "", "logical replication slot the follower reads (default tiercache_catalog_<prefix>_v<cache schema version>: one per cache namespace)")
	fs.StringVar(&cfg.follow.publication, "pg-publication", "tiercache_catalog", "publication of the table, for the follower")
	fs.BoolVar(&cfg.follow.create, "pg-create", true, "create the slot and the publication if missing (turn off once they exist)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return config{}, err
		}
		return config{}, fmt.Errorf("%w: %w", errBadFlags, err) // the flag set has printed it, with the usage
	}
	explicit := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	given := func(names ...string) []string {
		var out []string
		for _, n := range names {
			if explicit[n] {
				out = append(out, "-"+n)
			}
		}
		return out
	}
	// The environment is read here rather than shown as the flags'
	// defaults, which -h prints: a DSN may hold a password.
	if cfg.pgDSN == "" {
		cfg.pgDSN = getenv("DATABASE_URL")
	}
	if cfg.redisURL == "" {
		cfg.redisURL = getenv("REDIS_URL")
	}
	if fs.NArg() > 0 {
		return config{}, badFlags("unexpected arguments %q", fs.Args())
	}
	var err error
	if cfg.write, err = catalog.ParseWriteMode(*write); err != nil {
		return config{}, badFlags("-write: %v", err)
	}
	if cfg.cache.l1 < 0 || cfg.seed < 0 {
		return config{}, badFlags("-l1 and -seed must not be negative")
	}
	if cfg.redisURL != "" {
		if _, err := redis.ParseURL(cfg.redisURL); err != nil {
			return config{}, badFlags("-redis (or $REDIS_URL) %s: %v", redact(cfg.redisURL), err)
		}
	}
	if cfg.pgDSN == "" {
		// The in-memory store has no commit log: nothing to follow. Off
		// by default then, but asking for it is a mistake worth saying.
		if cfg.follow.on && explicit["follow"] {
			return config{}, badFlags("-follow needs PostgreSQL (-pg or $DATABASE_URL): the in-memory store has no commit log")
		}
		cfg.follow.on = false
		if pgOnly := given("pg-table", "pg-slot", "pg-publication", "pg-create"); len(pgOnly) > 0 {
			return config{}, badFlags("%s need PostgreSQL (-pg or $DATABASE_URL); the in-memory store is in use", strings.Join(pgOnly, ", "))
		}
		if cfg.write == catalog.SkipCache {
			// Without a commit log nothing would ever update the cache
			// after a PUT: every instance would serve the old product
			// until it expired.
			return config{}, badFlags("-write none needs PostgreSQL (-pg or $DATABASE_URL), whose commit log a follower invalidates from; the in-memory store has none")
		}
		return cfg, nil
	}
	if explicit["latency"] {
		return config{}, badFlags("-latency is the in-memory store's simulated latency; with PostgreSQL (-pg or $DATABASE_URL) it would do nothing")
	}
	if !cfg.follow.on {
		if followOnly := given("pg-slot", "pg-publication", "pg-create"); len(followOnly) > 0 {
			return config{}, badFlags("%s configure the commit-log follower, which -follow=false turns off", strings.Join(followOnly, ", "))
		}
	}
	switch {
	case cfg.pgTable == "":
		return config{}, badFlags("-pg-table is empty: name the table")
	case strings.Contains(cfg.pgTable, "."):
		// The repository takes the name as one identifier: it would
		// create a table literally named "shop.products" in the
		// connection's schema, which the follower (reading schema.name)
		// would not find either.
		return config{}, badFlags("-pg-table %q: no dots (the table is in the connection's schema: set search_path in -pg)", cfg.pgTable)
	}
	if _, err := pgxpool.ParseConfig(cfg.pgDSN); err != nil {
		return config{}, badFlags("-pg (or $DATABASE_URL): %v", err)
	}
	if cfg.follow.on {
		if cfg.follow.slot == "" {
			cfg.follow.slot = defaultSlot(cfg.cache.prefix, cacheSchemaVersion)
		}
		// What tiercachepg.New would refuse (a bad -pg-slot or
		// -pg-publication), refused now, before openStore migrates and
		// seeds the table.
		if err := checkFollowFlags(cfg); err != nil {
			return config{}, err
		}
	}
	return cfg, nil
}

// run runs the service until ctx ends, then shuts it down: the HTTP server
// first (requests in flight finish), then the commit-log follower (its Run
// has returned, the slot is let go), then the cache, then the Redis
// client, then the store. ready, if not nil, is called with the listening
// address once the service accepts connections.
//
// A follower that stops on its own (a missing slot with -pg-create=false,
// a role without the REPLICATION privilege) shuts the service down too,
// and run returns its error: serving on without it would silently give up
// the guarantee it is there for.
func run(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, ready func(net.Addr)) error {
	cfg, err := parseFlags(args, getenv, stderr)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))

	store, followTable, closeStore, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()

	rdb, closeRedis, err := openRedis(ctx, cfg.redisURL, log)
	if err != nil {
		return err
	}
	defer closeRedis() // after the cache: deferred calls run last-in, first-out

	cache, err := newProductCache(rdb, cfg.cache, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := cache.Close(); err != nil {
			log.Error("closing the cache", "err", err)
		}
		log.Info("cache closed")
	}()

	// Started after the cache and stopped before it (deferred calls run
	// last-in, first-out): the follower invalidates through it.
	var (
		fol           *follower
		followerStats func() tiercachepg.Stats
		followerDone  <-chan struct{} // nil without a follower: never ready
	)
	if cfg.follow.on {
		if fol, err = startFollower(cfg.pgDSN, followTable, cfg.follow, cache, log); err != nil {
			return err
		}
		defer fol.stop() // on the early returns; after a shutdown, a no-op
		followerStats, followerDone = fol.stats, fol.failed()
	} else if cfg.pgDSN != "" && cfg.write == catalog.SkipCache {
		log.Warn("commit-log follower off (-follow=false) and -write none: this instance's writes reach the cache only through another instance's follower")
	} else if cfg.pgDSN != "" {
		log.Warn("commit-log follower off (-follow=false): a write whose cache update is lost leaves the old product cached until it expires")
	}

	repo := catalog.NewCachedRepository(store, cache, cfg.write)
	srv := &http.Server{
		Handler:           api.New(repo, cache.Stats, followerStats, log),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	ln, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		return err
	}
	log.Info("catalog listening", "addr", "http://"+ln.Addr().String(), "write", cfg.write.String(), "l1", cfg.cache.l1, "coalesce", cfg.cache.coalesce, "follow", cfg.follow.on)
	if ready != nil {
		ready(ln.Addr())
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	var followErr error
	select {
	case err := <-served:
		return fmt.Errorf("serving: %w", err)
	case <-followerDone:
		followErr = fol.stop()
		log.Error("the commit-log follower stopped; shutting down", "err", followErr)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		_ = srv.Close()
		return errors.Join(followErr, fmt.Errorf("shutting down the HTTP server: %w", err))
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		return errors.Join(followErr, fmt.Errorf("serving: %w", err))
	}
	if fol != nil {
		// The requests are done: their commits are in the log, and the
		// follower (or the next one, from the slot) invalidates them.
		if err := fol.stop(); followErr == nil {
			followErr = err
		}
	}
	return followErr
}

// cacheConfig is what the flags say about the cache.
type cacheConfig struct {
	prefix   string
	l1       int  // L1 entries; 0 for no L1
	coalesce bool // share Redis round trips between concurrent reads (the library's default)
}

// newProductCache returns the cache of products over rdb.
func newProductCache(rdb redis.UniversalClient, cc cacheConfig, log *slog.Logger) (*tiercache.Cache[catalog.Product], error) {
	opts := []tiercache.Option{
		tiercache.WithPrefix(cc.prefix),
		tiercache.WithSchemaVersion(cacheSchemaVersion),
		tiercache.WithDefaultTTL(10 * time.Minute),
		// Unknown ids are remembered for a while, so that a client asking
		// for ids that do not exist does not reach the database each time.
		// A PUT that creates the product clears the negative entry at once.
		tiercache.WithNegativeTTL(30 * time.Second),
		tiercache.WithLogger(log),
	}
	if cc.l1 > 0 {
		// Invalidation across instances is on by default with L1: a PUT on
		// one instance drops the product from every instance's L1.
		opts = append(opts, tiercache.WithL1(cc.l1))
	}
	if !cc.coalesce {
		opts = append(opts, tiercache.WithoutReadCoalescing())
	}
	return tiercache.New[catalog.Product](rdb, opts...)
}

// openStore returns the PostgreSQL store when cfg names one and the
// in-memory store otherwise, seeded with sample products, and the function
// that closes it. On PostgreSQL, followTable is the table the repository
// resolves to, "schema.name", for the follower ("" in memory).
func openStore(ctx context.Context, cfg config, log *slog.Logger) (store catalog.ProductRepository, followTable string, closeStore func(), err error) {
	if cfg.pgDSN == "" {
		m := catalog.NewMemoryRepository(cfg.latency)
		m.Seed(catalog.SampleProducts(cfg.seed)...)
		log.Info("store: in memory", "products", cfg.seed, "latency", cfg.latency)
		return m, "", func() {}, nil
	}
	pool, err := pgxpool.New(ctx, cfg.pgDSN)
	if err != nil {
		return nil, "", nil, fmt.Errorf("PostgreSQL DSN: %w", err)
	}
	cc := pool.Config().ConnConfig
	where := fmt.Sprintf("%s:%d/%s", cc.Host, cc.Port, cc.Database)
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	pg := catalog.NewPostgresRepository(pool, cfg.pgTable)
	err = pool.Ping(pctx)
	if err == nil {
		err = pg.Migrate(pctx)
	}
	if err == nil && cfg.seed > 0 {
		err = pg.Seed(pctx, catalog.SampleProducts(cfg.seed)...)
	}
	var schema, table string
	if err == nil {
		// The repository's SQL names the table unqualified, so it is the
		// one of the connection's search_path (Migrate created it in the
		// first schema there): the follower must follow that one.
		schema, table, err = pg.Table(pctx)
	}
	if err != nil {
		pool.Close()
		return nil, "", nil, fmt.Errorf("PostgreSQL at %s: %w", where, err)
	}
	log.Info("store: PostgreSQL", "at", where, "table", schema+"."+table)
	return pg, schema + "." + table, func() {
		pool.Close()
		log.Info("PostgreSQL pool closed")
	}, nil
}

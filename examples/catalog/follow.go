package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	"github.com/tiercache/tiercache"
	"github.com/tiercache/tiercache/tiercachepg"

	"github.com/tiercache/tiercache/examples/catalog/internal/catalog"
)

// followConfig is what the flags say about the commit-log follower.
type followConfig struct {
	on          bool   // follow, when the store is PostgreSQL
	slot        string // replication slot
	publication string // publication of the products table
	create      bool   // create the slot and the publication when missing
}

// follower is the service's tiercachepg.Follower, running in a goroutine
// of its own from start until stop.
type follower struct {
	f    *tiercachepg.Follower
	log  *slog.Logger
	done chan struct{} // closed when Run has returned
	err  error         // Run's result, set before done is closed

	stopOnce sync.Once
}

// productMap returns the follower's mapping of the products table (named
// "schema.name", the table the repository resolves to) to the cache: a
// changed row invalidates the key CachedRepository caches it under
// (catalog.CacheKeyPattern), the old and the new id where they differ. A
// TRUNCATE names no row: it invalidates catalog.ProductsTag, which every
// cached product carries, so no instance serves a product of the
// truncated table once the follower has passed it.
//
// The invalidations are unversioned (no Invalidation.Version), and must
// be: the follower applies none (it merges a batch's keys and tags into
// unversioned Invalidate calls), and updated_at would be the wrong
// version anyway. Put sets it in commit order (after the row lock), but
// another writer may set it to now(), its transaction's start: of two
// transactions writing one row, the one that started first can commit
// last, with the older updated_at. Its versioned delete
// would then be refused where Redis holds the other's (newer-stamped,
// older-committed) row, which would stay cached, stale, for a whole TTL.
// An unversioned delete is never refused.
//
// What that leaves: a write-through Set (-write write-through) of a row
// that reaches Redis after the follower has deleted the key for a later
// commit of the same row lands, and is served until its TTL or the row's
// next change. The Set's lease removal does not help (it guards loads,
// not Sets), and its row version only refuses it where a newer versioned
// Set (another write-through PUT) came first, not after a delete, a psql
// UPDATE or a -write invalidate PUT. The window is the writer's own: its
// Set must be delayed, between its commit and Redis, past another
// transaction's commit of the row and the follower's reading of it (Put
// waits at most 2 s for it, though a command already sent can still run
// later). With -write invalidate, the default, there is no such window: a
// late Delete only costs a load.
func productMap(table string) (tiercachepg.MapFunc, error) {
	return tiercachepg.KeyPattern(tiercachepg.Table{
		Name:         table,
		Key:          catalog.CacheKeyPattern,
		TruncateTags: []string{catalog.ProductsTag},
	})
}

// unmappedProducts is the follower's dead-letter policy: a change that
// productMap fails on (a delete whose old row lacks the id, after the
// table's replica identity was changed to another index; a row that does
// not decode) could have changed any product, so every cached product is
// invalidated in its place (catalog.ProductsTag). Broad, but never stale.
// The follower still logs the change and counts it (Stats.Unmapped, the
// "unmapped" of GET /stats/follower).
func unmappedProducts() tiercachepg.DeadLetterFunc {
	return tiercachepg.InvalidateInstead(tiercache.Invalidation{Tags: []string{catalog.ProductsTag}})
}

// defaultSlot is the replication slot of the cache namespace that prefix
// and schemaVersion make (cacheSchemaVersion in main.go),
// "tiercache_catalog_<prefix>_v<version>", the default of -pg-slot. One
// follower invalidates only its own instance's namespace: instances of
// another namespace (another -prefix, or the other side of a rolling
// deploy that bumps the schema version) sharing its slot would wait as
// standbys while it holds it, and serve stale products meanwhile. So each
// namespace gets a slot of its own, and the instances of one namespace
// share it (one holds it, the others wait).
//
// A slot name is 1 to 63 lower-case letters, digits and underscores. The
// prefix is lower-cased and its characters other than letters and digits
// become underscores; where that loses anything (so that two prefixes
// could meet on one name: "a-b" and "a_b", "A" and "a") or the name would
// be too long, the prefix is cut and 8 hex digits of its hash (FNV-1a) are
// added, which keep apart the prefixes that are cut or changed alike. A
// prefix of lower-case letters, digits and hyphens only, short enough,
// is kept as it is but for the hyphens.
func defaultSlot(prefix string, schemaVersion int) string {
	const head = "tiercache_catalog_"
	tail := "_v" + strconv.Itoa(schemaVersion)
	var b strings.Builder
	lossless := true
	for _, r := range prefix {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
			b.WriteRune(r)
		case r >= 'A' && r <= 'Z':
			b.WriteRune(r - 'A' + 'a') // "A" must not meet "a"
			lossless = false
		case r == '-':
			b.WriteByte('_')
		default:
			b.WriteByte('_') // '_' itself too: "a_b" must not meet "a-b"
			lossless = false
		}
	}
	name := b.String()
	if lossless && len(head)+len(name)+len(tail) <= maxSlotLen {
		return head + name + tail
	}
	h := fnv.New32a()
	h.Write([]byte(prefix))
	sum := fmt.Sprintf("_%08x", h.Sum32())
	if room := maxSlotLen - len(head) - len(sum) - len(tail); len(name) > room {
		name = name[:room] // ASCII: cut anywhere
	}
	return head + name + sum + tail
}

// maxSlotLen is PostgreSQL's longest name (NAMEDATALEN-1).
const maxSlotLen = 63

// newFollower returns the service's commit-log follower of table
// ("schema.name") in the database at dsn, not started: tiercachepg.New
// only checks the options and parses dsn, and connects to nothing. An
// option it refuses (a bad -pg-slot or -pg-publication) is an error
// wrapping errBadFlags as well as tiercachepg.ErrInvalidOption.
func newFollower(dsn, table string, fc followConfig, invalidate tiercachepg.InvalidateFunc, log *slog.Logger) (*tiercachepg.Follower, error) {
	m, err := productMap(table)
	var f *tiercachepg.Follower
	if err == nil {
		f, err = tiercachepg.New(dsn, tiercachepg.Options{
			Slot:        fc.slot,
			Publication: fc.publication,
			Tables:      []string{table},
			Create:      fc.create,
			Map:         m,
			DeadLetter:  unmappedProducts(),
			Invalidate:  invalidate,
			// An abandoned or stuck slot keeps the WAL on the database's
			// disk: past 1 GiB of lag the follower logs a warning.
			MaxLag: 1 << 30,
			Logger: log,
		})
	}
	if errors.Is(err, tiercachepg.ErrInvalidOption) {
		return nil, fmt.Errorf("%w: commit-log follower (-pg-slot %q, -pg-publication %q, -pg-table %q): %w",
			errBadFlags, fc.slot, fc.publication, table, err)
	}
	if err != nil {
		return nil, fmt.Errorf("commit-log follower: %w", err)
	}
	return f, nil
}

// checkFollowFlags checks what the flags say about the follower before
// anything is connected to, by building the follower that the service
// will start (newFollower) and throwing it away: a Follower never Run
// holds nothing. The table's schema is known only once connected (the
// connection's search_path, see openStore), so "public" stands in for it;
// the name is the one checked. The stand-in Invalidate is never called.
func checkFollowFlags(cfg config) error {
	refuse := func(context.Context, tiercache.Invalidation) error {
		return errors.New("catalog: the flags' check follower invalidates nothing")
	}
	_, err := newFollower(cfg.pgDSN, "public."+cfg.pgTable, cfg.follow, refuse, nil)
	return err
}

// startFollower starts following the products table of the database at
// dsn (table is "schema.name", as PostgresRepository.Table resolves it),
// invalidating what each committed change makes stale in cache, on every
// instance (cache.Invalidate publishes to the others' L1). Its options
// were checked by checkFollowFlags already; one refused here all the same
// is an error wrapping errBadFlags, as there.
//
// Run gets a context of its own, not the service's: the follower must go
// on while the HTTP server drains the requests in flight at shutdown
// (their commits need invalidating too), and stops only when stop is
// called, after that.
func startFollower(dsn, table string, fc followConfig, cache *tiercache.Cache[catalog.Product], log *slog.Logger) (*follower, error) {
	f, err := newFollower(dsn, table, fc, cache.Invalidate, log)
	if err != nil {
		return nil, err
	}
	fl := &follower{f: f, log: log, done: make(chan struct{})}
	go func() {
		defer close(fl.done)
		fl.err = f.Run(context.Background())
	}()
	log.Info("commit-log follower started", "slot", fc.slot, "publication", fc.publication, "table", table, "create", fc.create)
	return fl, nil
}

// failed is closed when Run has returned on its own, which it does only
// on a condition it cannot get past (the slot or the publication is
// missing or wrong, the role lacks a privilege): see err.
func (fl *follower) failed() <-chan struct{} { return fl.done }

// stop stops the follower and waits until Run has returned, so that it
// holds nothing (the slot, its connections, its goroutines) when stop
// returns. It returns Run's error, if Run ended on one. The slot and the
// publication are kept: the next start resumes from the slot. Calling
// stop again returns the same.
func (fl *follower) stop() error {
	fl.stopOnce.Do(func() {
		_ = fl.f.Close() // waits for Run, if it has started
		<-fl.done
		fl.log.Info("commit-log follower stopped")
	})
	// A stop right after the start (the service shut down at once) can
	// come first:
	//
	//	start: go Run                 stop: Close (nothing runs yet: closed)
	//	Run: closed -> ErrClosed
	//
	// Run then did nothing and returned ErrClosed, which is the stop asked
	// for, not a failure. Only Close, and so only stop, causes it.
	if fl.err != nil && !errors.Is(fl.err, tiercachepg.ErrClosed) {
		return fmt.Errorf("commit-log follower: %w", fl.err)
	}
	return nil
}

// stats returns the follower's figures, for GET /stats/follower.
func (fl *follower) stats() tiercachepg.Stats { return fl.f.Stats() }

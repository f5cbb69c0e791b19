package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

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
// The invalidation of an insert or update carries the new row's version
// (its updated_at, as the repository versions its writes): a write-through
// Set of an older row that reaches Redis after the follower passed a newer
// commit (a slow writer, while psql or another instance wrote meanwhile)
// is refused instead of landing for a whole TTL. A delete has no new row
// and goes unversioned, and so does a TRUNCATE: versioned by its commit
// time, it would refuse for good the loads of rows put back with an older
// updated_at (a table restored from a dump).
func productMap(table string) (tiercachepg.MapFunc, error) {
	keyed, err := tiercachepg.KeyPattern(tiercachepg.Table{
		Name:         table,
		Key:          catalog.CacheKeyPattern,
		TruncateTags: []string{catalog.ProductsTag},
	})
	if err != nil {
		return nil, err
	}
	return func(ch tiercachepg.Change) (tiercache.Invalidation, error) {
		inv, err := keyed(ch)
		if err != nil {
			return inv, err
		}
		if t, ok := parseTimestamptz(ch.New["updated_at"]); ok {
			inv.Version = catalog.RowVersionAt(t)
		}
		return inv, nil
	}, nil
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

// parseTimestamptz reads PostgreSQL's text output of a timestamptz in the
// ISO date style (the default): "2026-12-01 14:28:17.123456+00", with an
// offset of hours or hours and minutes.
func parseTimestamptz(s string) (time.Time, bool) {
	for _, layout := range []string{"2006-01-02 15:04:05.999999-07", "2006-01-02 15:04:05.999999-07:00", "2006-01-02 15:04:05.999999-07:00:00"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

// startFollower starts following the products table of the database at
// dsn (table is "schema.name", as PostgresRepository.Table resolves it),
// invalidating what each committed change makes stale in cache, on every
// instance (cache.Invalidate publishes to the others' L1). An option the
// follower refuses (a bad -pg-slot or -pg-publication) is an error
// wrapping errBadFlags as well as tiercachepg.ErrInvalidOption.
//
// Run gets a context of its own, not the service's: the follower must go
// on while the HTTP server drains the requests in flight at shutdown
// (their commits need invalidating too), and stops only when stop is
// called, after that.
func startFollower(dsn, table string, fc followConfig, cache *tiercache.Cache[catalog.Product], log *slog.Logger) (*follower, error) {
	m, err := productMap(table)
	if err != nil {
		return nil, err
	}
	f, err := tiercachepg.New(dsn, tiercachepg.Options{
		Slot:        fc.slot,
		Publication: fc.publication,
		Tables:      []string{table},
		Create:      fc.create,
		Map:         m,
		DeadLetter:  unmappedProducts(),
		Invalidate:  cache.Invalidate,
		// An abandoned or stuck slot keeps the WAL on the database's
		// disk: past 1 GiB of lag the follower logs a warning.
		MaxLag: 1 << 30,
		Logger: log,
	})
	if errors.Is(err, tiercachepg.ErrInvalidOption) {
		return nil, fmt.Errorf("%w: commit-log follower: %w", errBadFlags, err)
	}
	if err != nil {
		return nil, fmt.Errorf("commit-log follower: %w", err)
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

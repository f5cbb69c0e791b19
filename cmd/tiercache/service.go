package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/tiercache/tiercache"
)

// service is one scenario's way of reading and writing through the cache
// layer under test, for each app instance.
type service interface {
	// read returns key's row, through instance inst's cache.
	read(ctx context.Context, inst, key int) (row, error)
	// write tells the cache of instance inst that key's row is now r (the
	// database was updated): an invalidation or a write-through.
	write(ctx context.Context, inst, key int, r row) error
	// cacheStats returns tiercache's counters summed over the instances,
	// or nil when the scenario does not use tiercache.
	cacheStats() *tiercache.Stats
	close() error
}

// newService builds the scenario's service: a Redis client (and cache)
// per instance.
func newService(p scenarioParams, db *database) (service, error) {
	switch p.name {
	case scenarioNone:
		return noneService{db: db}, nil
	case scenarioAside:
		s := &asideService{db: db, prefix: p.prefix + ":", ttl: p.cfg.TTL, setMode: p.cfg.WriteMode == writeSet}
		for range p.cfg.Instances {
			s.clients = append(s.clients, p.backend.newClient())
		}
		return s, nil
	case scenarioCoalesced, scenarioFull:
		return newTiercacheService(p, db)
	}
	return nil, fmt.Errorf("unknown scenario %q", p.name)
}

// noneService has no cache: every read is a load.
type noneService struct{ db *database }

func (s noneService) read(ctx context.Context, _, key int) (row, error) { return s.db.load(ctx, key) }
func (noneService) write(context.Context, int, int, row) error          { return nil }
func (noneService) cacheStats() *tiercache.Stats                        { return nil }
func (noneService) close() error                                        { return nil }

// asideService is cache-aside as it is commonly written by hand with
// go-redis: GET; on a miss, load and SET with the TTL. Concurrent misses of
// a key all load (no coalescing), and a SET of a row loaded before a write
// can land after the write's DEL (the stale set).
type asideService struct {
	db      *database
	clients []redis.UniversalClient
	prefix  string
	ttl     time.Duration
	setMode bool
}

func (s *asideService) read(ctx context.Context, inst, key int) (row, error) {
	rdb := s.clients[inst]
	k := s.prefix + keyName(key)
	b, err := rdb.Get(ctx, k).Bytes()
	if err == nil {
		var r row
		if err := json.Unmarshal(b, &r); err == nil {
			return r, nil
		}
	} else if !errors.Is(err, redis.Nil) {
		// A sick Redis: go to the database, and say so.
		r, lerr := s.db.load(ctx, key)
		return r, errors.Join(fmt.Errorf("GET: %w", err), lerr)
	}
	r, err := s.db.load(ctx, key)
	if err != nil {
		return row{}, err
	}
	b, err = json.Marshal(r)
	if err == nil {
		err = rdb.Set(ctx, k, b, s.ttl).Err()
	}
	if err != nil {
		return r, fmt.Errorf("SET: %w", err)
	}
	return r, nil
}

func (s *asideService) write(ctx context.Context, inst, key int, r row) error {
	rdb := s.clients[inst]
	k := s.prefix + keyName(key)
	if s.setMode {
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		return rdb.Set(ctx, k, b, s.ttl).Err()
	}
	return rdb.Del(ctx, k).Err()
}

func (*asideService) cacheStats() *tiercache.Stats { return nil }

func (s *asideService) close() error {
	var errs []error
	for _, c := range s.clients {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// tiercacheService is one tiercache.Cache per instance, each over its own
// client.
type tiercacheService struct {
	caches  []*tiercache.Cache[row]
	clients []redis.UniversalClient
	names   []string                  // the caches' names in the metrics
	loaders []tiercache.LoadFunc[row] // per key, made once
	setMode bool
	metrics *metrics
}

// scenarioOptions are the tiercache options of a scenario.
func scenarioOptions(name string, cfg *config) []tiercache.Option {
	switch name {
	case scenarioCoalesced:
		return []tiercache.Option{
			tiercache.WithoutLease(), tiercache.WithEarlyRefresh(0), tiercache.WithJitter(0),
		}
	case scenarioFull:
		return []tiercache.Option{
			tiercache.WithL1(cfg.L1Size),
			tiercache.WithL1TTL(l1MaxTTL), tiercache.WithL1OutageTTL(l1OutageTTL), // the bound's backstops
			tiercache.WithStaleWhileRevalidate(cfg.TTL / 2),
			tiercache.WithStaleIfError(cfg.TTL),
		}
	}
	return nil
}

func newTiercacheService(p scenarioParams, db *database) (*tiercacheService, error) {
	s := &tiercacheService{setMode: p.cfg.WriteMode == writeSet, metrics: p.metrics}
	s.loaders = make([]tiercache.LoadFunc[row], p.cfg.Keys)
	for i := range s.loaders {
		s.loaders[i] = func(ctx context.Context) (row, error) { return db.load(ctx, i) }
	}
	for inst := range p.cfg.Instances {
		rdb := p.backend.newClient()
		s.clients = append(s.clients, rdb)
		opts := append([]tiercache.Option{
			tiercache.WithPrefix(p.prefix),
			tiercache.WithDefaultTTL(p.cfg.TTL),
			tiercache.WithReadTimeout(p.cfg.ReadTimeout),
			tiercache.WithWriteTimeout(p.cfg.WriteTimeout),
		}, scenarioOptions(p.name, &p.cfg)...)
		name := fmt.Sprintf("%s/%d", p.name, inst)
		if o := p.cfg.slow.observer(p.fresh.observer(inst, p.metrics.observer(name))); o != nil {
			opts = append(opts, tiercache.WithObserver(o))
		}
		c, err := tiercache.New[row](rdb, opts...)
		if err != nil {
			_ = s.close()
			return nil, fmt.Errorf("tiercache.New: %w", err)
		}
		s.caches = append(s.caches, c)
		s.names = append(s.names, name)
		p.metrics.track(name, c.Stats)
	}
	if p.fresh != nil {
		s.waitSubscribed(subscribeWait)
	}
	return s, nil
}

// waitSubscribed waits, at most for limit, until every instance's
// invalidation subscription is up, so that the scenario starts as it runs.
func (s *tiercacheService) waitSubscribed(limit time.Duration) {
	deadline := time.Now().Add(limit)
	for inst := 0; inst < len(s.caches) && time.Now().Before(deadline); {
		if s.subscribed(inst) {
			inst++
		} else {
			time.Sleep(time.Millisecond)
		}
	}
}

func (s *tiercacheService) subscribed(inst int) bool { return s.caches[inst].Stats().Subscribed }

func (s *tiercacheService) read(ctx context.Context, inst, key int) (row, error) {
	return s.caches[inst].GetOrLoad(ctx, keyName(key), s.loaders[key])
}

func (s *tiercacheService) write(ctx context.Context, inst, key int, r row) error {
	if s.setMode {
		return s.caches[inst].Set(ctx, keyName(key), r)
	}
	return s.caches[inst].Delete(ctx, keyName(key))
}

func (s *tiercacheService) cacheStats() *tiercache.Stats {
	var sum tiercache.Stats
	for _, c := range s.caches {
		st := c.Stats()
		sum.L1Hits += st.L1Hits
		sum.L1Misses += st.L1Misses
		sum.L2Hits += st.L2Hits
		sum.L2Misses += st.L2Misses
		sum.Loads += st.Loads
		sum.LoadErrors += st.LoadErrors
		for e := range st.Events {
			sum.Events[e] += st.Events[e]
		}
		sum.L1Entries += st.L1Entries
		sum.L1Weight += st.L1Weight
		sum.BreakerState = max(sum.BreakerState, st.BreakerState)
		for node, b := range st.Breakers {
			if sum.Breakers == nil {
				sum.Breakers = map[string]tiercache.BreakerState{}
			}
			sum.Breakers[node] = max(sum.Breakers[node], b)
		}
		mergeDelays(&sum.InvalidationDelay, &st.InvalidationDelay)
	}
	return &sum
}

// mergeDelays adds the delays of o to h.
func mergeDelays(h, o *tiercache.DelayHistogram) {
	for i, n := range o.Buckets {
		h.Buckets[i] += n
	}
	h.Count += o.Count
	h.Sum += o.Sum
	h.Max = max(h.Max, o.Max)
}

func (s *tiercacheService) close() error {
	var errs []error
	for _, n := range s.names {
		s.metrics.untrack(n)
	}
	for _, c := range s.caches {
		errs = append(errs, c.Close())
	}
	for _, c := range s.clients {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

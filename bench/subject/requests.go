package subject

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// Requests counts what a subject asks of Redis, by the first command of
// each request: one command sent on its own, one pipeline (a script run
// through a pipeline of one is an "evalsha" request), or one MGET.
//
// For go-redis based subjects a request is a round trip on one connection
// (a client hook counts it). For rueidis a request is one Do, DoMulti or
// DoCache call that the client-side cache did not answer; rueidis may
// write several callers' requests in one go (auto-pipelining), so its
// requests are not all separate round trips.
//
// The zero value is ready to use; it is safe for concurrent use.
type Requests struct {
	byName   sync.Map // command name as sent → *reqCount
	commands atomic.Int64
}

type reqCount struct {
	name string // lower-cased
	n    atomic.Int64
}

func (r *Requests) add(name string, commands int) {
	c, ok := r.byName.Load(name)
	if !ok {
		c, _ = r.byName.LoadOrStore(name, &reqCount{name: strings.ToLower(name)})
	}
	c.(*reqCount).n.Add(1)
	r.commands.Add(int64(commands))
}

// Snapshot returns the requests so far by command name, and the commands
// they carried in all.
func (r *Requests) Snapshot() (byName map[string]int64, commands int64) {
	byName = map[string]int64{}
	r.byName.Range(func(_, v any) bool {
		c := v.(*reqCount)
		byName[c.name] += c.n.Load()
		return true
	})
	return byName, r.commands.Load()
}

// requestHook counts a go-redis client's requests.
type requestHook struct{ r *Requests }

func (h requestHook) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h requestHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.r.add(cmd.Name(), 1)
		return next(ctx, cmd)
	}
}

func (h requestHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		switch {
		case len(cmds) == 1:
			h.r.add(cmds[0].Name(), 1)
		case len(cmds) > 1:
			h.r.add("pipeline", len(cmds))
		}
		return next(ctx, cmds)
	}
}

// countingRueidis counts the requests of a rueidis client. Only the calls
// rueidisaside makes are counted (Do, DoMulti, DoCache, DoMultiCache).
type countingRueidis struct {
	rueidis.Client
	r *Requests
}

func firstCommand(cs []string) string {
	if len(cs) == 0 {
		return ""
	}
	return cs[0]
}

// The names are read before the call: rueidis recycles a command once it
// has been sent.

func (c countingRueidis) Do(ctx context.Context, cmd rueidis.Completed) rueidis.RedisResult {
	c.r.add(firstCommand(cmd.Commands()), 1)
	return c.Client.Do(ctx, cmd)
}

func (c countingRueidis) DoMulti(ctx context.Context, multi ...rueidis.Completed) []rueidis.RedisResult {
	switch {
	case len(multi) == 1:
		c.r.add(firstCommand(multi[0].Commands()), 1)
	case len(multi) > 1:
		c.r.add("pipeline", len(multi))
	}
	return c.Client.DoMulti(ctx, multi...)
}

func (c countingRueidis) DoCache(ctx context.Context, cmd rueidis.Cacheable, ttl time.Duration) rueidis.RedisResult {
	name := firstCommand(cmd.Commands())
	res := c.Client.DoCache(ctx, cmd, ttl)
	if !res.IsCacheHit() {
		c.r.add(name, 1)
	}
	return res
}

func (c countingRueidis) DoMultiCache(ctx context.Context, multi ...rueidis.CacheableTTL) []rueidis.RedisResult {
	name := "pipeline"
	if len(multi) == 1 {
		name = firstCommand(multi[0].Cmd.Commands())
	}
	res := c.Client.DoMultiCache(ctx, multi...)
	n := 0
	for _, r := range res {
		if !r.IsCacheHit() {
			n++
		}
	}
	if n > 0 {
		c.r.add(name, n)
	}
	return res
}

package sim

import (
	"strconv"
	"time"

	"github.com/go-redis/cache/v9"
	"github.com/maypok86/otter/v2"
	"github.com/viccon/sturdyc"
)

// Policy is a cache of a fixed size replaying a trace one reference at a
// time: Access reports whether the key was cached, and caches it if the
// policy admits it.
type Policy interface {
	Access(key uint64) (hit bool)
}

// PolicyFactory builds a policy of a given size.
type PolicyFactory struct {
	Name string
	// Note says what the policy is, for the report.
	Note string
	New  func(size int) (Policy, error)
}

// Policies returns the online policies the runner compares with OPT.
func Policies() []PolicyFactory {
	return []PolicyFactory{
		{Name: "otter v2", Note: "tiercache's L1: otter v2 W-TinyLFU, MaximumSize", New: newOtter},
		{Name: "LRU", Note: "plain LRU (map + list)", New: func(n int) (Policy, error) { return newLRU(n), nil }},
		{Name: "go-redis/cache TinyLFU", Note: "go-redis/cache's NewTinyLFU (go-tinylfu)", New: newTinyLFU},
		{Name: "sturdyc", Note: "sturdyc's memory tier, 1 shard, 10% evicted at capacity", New: newSturdyc},
	}
}

type otterPolicy struct {
	c *otter.Cache[uint64, struct{}]
}

func newOtter(n int) (Policy, error) {
	c, err := otter.New(&otter.Options[uint64, struct{}]{MaximumSize: n})
	if err != nil {
		return nil, err
	}
	return &otterPolicy{c: c}, nil
}

func (p *otterPolicy) Access(k uint64) bool {
	if _, ok := p.c.GetIfPresent(k); ok {
		return true
	}
	p.c.Set(k, struct{}{})
	return false
}

// lru is a plain LRU: a map to nodes of a doubly linked list kept in a
// slice (index 0 is the sentinel), most recent at the front.
type lru struct {
	idx   map[uint64]int32
	nodes []lruNode
	size  int
}

type lruNode struct {
	key        uint64
	prev, next int32
}

func newLRU(n int) *lru {
	l := &lru{idx: make(map[uint64]int32, n), nodes: make([]lruNode, 1, n+1), size: n}
	return l
}

func (l *lru) unlink(i int32) {
	n := &l.nodes[i]
	l.nodes[n.prev].next = n.next
	l.nodes[n.next].prev = n.prev
}

func (l *lru) pushFront(i int32) {
	n := &l.nodes[i]
	n.prev, n.next = 0, l.nodes[0].next
	l.nodes[n.next].prev = i
	l.nodes[0].next = i
}

func (l *lru) Access(k uint64) bool {
	if i, ok := l.idx[k]; ok {
		l.unlink(i)
		l.pushFront(i)
		return true
	}
	var i int32
	if len(l.idx) < l.size {
		l.nodes = append(l.nodes, lruNode{})
		i = int32(len(l.nodes) - 1)
	} else {
		i = l.nodes[0].prev // the least recent
		l.unlink(i)
		delete(l.idx, l.nodes[i].key)
	}
	l.nodes[i].key = k
	l.idx[k] = i
	l.pushFront(i)
	return false
}

// longTTL keeps the peers' TTLs out of a replay that has no clock.
const longTTL = 24 * time.Hour

type tinyLFUPolicy struct{ c *cache.TinyLFU }

func newTinyLFU(n int) (Policy, error) {
	c := cache.NewTinyLFU(n, longTTL)
	c.UseRandomizedTTL(0)
	return &tinyLFUPolicy{c: c}, nil
}

func (p *tinyLFUPolicy) Access(k uint64) bool {
	ks := strconv.FormatUint(k, 10)
	if _, ok := p.c.Get(ks); ok {
		return true
	}
	p.c.Set(ks, nil)
	return false
}

type sturdycPolicy struct{ c *sturdyc.Client[struct{}] }

func newSturdyc(n int) (Policy, error) {
	return &sturdycPolicy{c: sturdyc.New[struct{}](n, 1, longTTL, 10, sturdyc.WithNoContinuousEvictions())}, nil
}

func (p *sturdycPolicy) Access(k uint64) bool {
	ks := strconv.FormatUint(k, 10)
	if _, ok := p.c.Get(ks); ok {
		return true
	}
	p.c.Set(ks, struct{}{})
	return false
}

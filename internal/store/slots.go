package store

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Which node serves a key, asked for every call on a cluster and once per
// key of every batch (each node's breaker judges its own keys). go-redis's
// MasterForKey reads the clock on every call, which cost a batch of 100
// keys about 8 % of its time; so the store keeps the answer per slot for a
// second.
//
// A remembered answer can be stale: the command itself goes where
// go-redis's own slot map sends it, but its result is judged by the
// remembered node's breaker, and while that breaker is open the key is
// refused without a try. So the memo is voided, and for slotSettle stores
// nothing, whenever a fault makes the store reload go-redis's slot map
// (ReloadClusterState) and whenever a node's breaker changes state: during
// a failover every lookup asks go-redis, which is then reloading its map.
// The memo can only lag go-redis by slotMemoTTL after that.
//
// (A memo of pointers to per-slot records, the first cut, cost a batch of
// 64 coalesced reads on a 3-master cluster about 5 % of its time against
// one breaker for the whole cluster: two cache misses per key. One word per
// slot, read with one atomic load, is what is left.)

// numSlots is Redis Cluster's number of hash slots.
const numSlots = 16384

// slotMemoTTL is how long at most a slot's node is remembered (to the end
// of the tick it was stored in); slotSettle how long
// after a slot-map reload or a breaker's change the memo serves nothing
// (go-redis reloads its slot map in the background).
const (
	slotMemoTTL = time.Second
	slotSettle  = 3 * time.Second
)

// memoBase makes the memo's time (memoNow) monotonic, so that a wall clock
// stepping back cannot keep an entry.
var memoBase = time.Now()

func memoNow() int64 { return int64(time.Since(memoBase)) }

// slotMemo is the node of each slot as go-redis last told it. An entry is
// one word, so that a lookup reads one cache line and a store allocates
// nothing: the tick it was stored in (memoNow / slotMemoTTL, so it lives to
// the end of that tick, at most slotMemoTTL), the low 16 bits of the epoch
// it was stored under, and 1 + the index of its node in nodes (0: empty).
type slotMemo struct {
	epoch     atomic.Uint64 // moved on by forget: every entry before it is void
	voidUntil atomic.Int64  // memoNow before which nothing is stored or read
	slot      [numSlots]atomic.Uint64

	mu    sync.Mutex               // serializes additions to nodes
	nodes atomic.Pointer[[]string] // every node address entries name, append-only
}

// maxMemoNodes bounds nodes (an entry's 8 bits): the keys of nodes past it
// are not remembered, only asked of go-redis.
const maxMemoNodes = 255

// stamp is an entry's tick and epoch, as the entry holds them above its
// node byte.
func stamp(tick int64, epoch uint64) uint64 { return uint64(tick)<<16 | epoch&0xffff }

// nodeOfSlotted is nodeOf for a batch that started at now (memoNow): one
// clock read for all its keys.
func (s *Store) nodeOfSlotted(ctx context.Context, now int64, key string) string {
	m := s.slots
	if m == nil || now < m.voidUntil.Load() {
		return s.masterOf(ctx, key)
	}
	slot, st := keySlot(key), stamp(now/int64(slotMemoTTL), m.epoch.Load())
	if e := m.slot[slot].Load(); e>>8 == st && e&0xff != 0 {
		if ns := m.nodes.Load(); ns != nil && int(e&0xff) <= len(*ns) {
			return (*ns)[e&0xff-1]
		}
	}
	a := s.masterOf(ctx, key)
	if a != "" { // no slot map: ask again next time
		if i := m.index(a); i >= 0 {
			m.slot[slot].Store(st<<8 | uint64(i+1))
		}
	}
	return a
}

// index is a's place in nodes, added if new; -1 when nodes is full.
func (m *slotMemo) index(a string) int {
	find := func(ns *[]string) int {
		if ns != nil {
			for i, n := range *ns {
				if n == a {
					return i
				}
			}
		}
		return -1
	}
	if i := find(m.nodes.Load()); i >= 0 {
		return i
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	ns := m.nodes.Load()
	if i := find(ns); i >= 0 {
		return i
	}
	var cur []string
	if ns != nil {
		cur = *ns
	}
	if len(cur) >= maxMemoNodes {
		return -1
	}
	next := append(cur[:len(cur):len(cur)], a)
	m.nodes.Store(&next)
	return len(next) - 1
}

// forgetSlots voids what the memo holds and serves nothing for slotSettle.
// (A batch that read voidUntil just before may still store an entry under
// the new epoch; it expires within slotMemoTTL, before voidUntil, so it is
// never served.)
func (s *Store) forgetSlots() {
	if m := s.slots; m != nil {
		m.voidUntil.Store(memoNow() + int64(slotSettle))
		m.epoch.Add(1)
	}
}

// keySlot is the Redis Cluster hash slot of key: CRC16 (XMODEM) of the key,
// or of its hash tag (what is between the first '{' and the next '}', when
// that is not empty), mod 16384.
func keySlot(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for k := 0; k < len(key); k++ {
		crc = crc<<8 ^ crc16Table[byte(crc>>8)^key[k]]
	}
	return int(crc) & (numSlots - 1)
}

// crc16Table is the byte-wise table of CRC16-CCITT (polynomial 0x1021).
var crc16Table = func() (t [256]uint16) {
	for i := range t {
		c := uint16(i) << 8
		for range 8 {
			if c&0x8000 != 0 {
				c = c<<1 ^ 0x1021
			} else {
				c <<= 1
			}
		}
		t[i] = c
	}
	return t
}()

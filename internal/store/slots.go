package store

import (
	"context"
	"strings"
	"sync/atomic"
	"time"
)

// Which node serves a key, asked once per key of every batch on a cluster
// (each node's breaker judges its own keys). go-redis's MasterForKey reads
// the clock on every call, which cost a batch of 100 keys about 8 % of its
// time; so the store keeps the answer per slot for a second.
//
// A remembered answer can be stale: the command itself goes where
// go-redis's own slot map sends it, but its result is judged by the
// remembered node's breaker, and while that breaker is open the key is
// refused without a try. So the memo is voided, and for slotSettle stores
// nothing, whenever a fault makes the store reload go-redis's slot map
// (ReloadClusterState) and whenever a node's breaker changes state: during
// a failover every lookup asks go-redis, which is then reloading its map.
// The memo can only lag go-redis by slotMemoTTL after that.

// numSlots is Redis Cluster's number of hash slots.
const numSlots = 16384

// slotMemoTTL is how long a slot's node is remembered; slotSettle how long
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

// slotMemo is the node of each slot as go-redis last told it.
type slotMemo struct {
	epoch     atomic.Uint64 // moved on by forget: every entry before it is void
	voidUntil atomic.Int64  // memoNow before which nothing is stored or read
	addr      [numSlots]atomic.Pointer[slotNode]
}

type slotNode struct {
	addr  string
	until int64 // memoNow
	epoch uint64
}

// nodeOfSlotted is nodeOf through the memo, for a batch that started at
// now (memoNow).
func (s *Store) nodeOfSlotted(ctx context.Context, now int64, key string) string {
	m := s.slots
	if m == nil || now < m.voidUntil.Load() {
		return s.nodeOf(ctx, key)
	}
	slot, epoch := keySlot(key), m.epoch.Load()
	if n := m.addr[slot].Load(); n != nil && n.epoch == epoch && now < n.until {
		return n.addr
	}
	a := s.nodeOf(ctx, key)
	if a != "" { // no slot map: ask again next time
		m.addr[slot].Store(&slotNode{addr: a, until: now + int64(slotMemoTTL), epoch: epoch})
	}
	return a
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

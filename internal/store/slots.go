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
// time; so the store keeps the answer per slot for a second. A stale answer
// can only put a command's result under the wrong node's breaker for that
// second: go-redis routes the command itself from its own slot map. The
// memo is voided whenever a fault makes the store reload go-redis's slot
// map (ReloadClusterState), so that a failover is seen at once.

// numSlots is Redis Cluster's number of hash slots.
const numSlots = 16384

// slotMemoTTL is how long a slot's node is remembered.
const slotMemoTTL = time.Second

// slotMemo is the node of each slot as go-redis last told it.
type slotMemo struct {
	epoch atomic.Uint64 // moved on by a fault: every entry before it is void
	addr  [numSlots]atomic.Pointer[slotNode]
}

type slotNode struct {
	addr  string
	until int64 // Unix ns
	epoch uint64
}

// nodeOfSlotted is nodeOf through the memo, for a batch that started at
// now (Unix ns).
func (s *Store) nodeOfSlotted(ctx context.Context, now int64, key string) string {
	m := s.slots.Load()
	if m == nil {
		m = new(slotMemo)
		if !s.slots.CompareAndSwap(nil, m) {
			m = s.slots.Load()
		}
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

// forgetSlots voids what the memo holds.
func (s *Store) forgetSlots() {
	if m := s.slots.Load(); m != nil {
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

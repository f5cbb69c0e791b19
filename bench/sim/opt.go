package sim

// OptimalHits returns the hits of Bélády's optimal policy on keys with a
// cache of size entries: on a miss with a full cache, the cached key whose
// next use is farthest in the future is evicted, or the missed key itself
// is not cached when it is the one used farthest (bypass). No online policy
// can do better on the same trace, so it is the ceiling the others are
// compared with.
//
// The next use of every reference is computed in one backward pass; the
// cache keeps a max-heap of next uses with lazy deletion (an entry whose
// key has since been re-referenced is skipped when it surfaces).
func OptimalHits(keys []uint64, size int) int {
	n := len(keys)
	if size <= 0 || n == 0 {
		return 0
	}
	never := int32(n) // next use of a key that is not used again
	next := make([]int32, n)
	last := make(map[uint64]int32, n/4)
	for i := n - 1; i >= 0; i-- {
		if j, ok := last[keys[i]]; ok {
			next[i] = j
		} else {
			next[i] = never
		}
		last[keys[i]] = int32(i)
	}
	last = nil

	cached := make(map[uint64]int32, size) // key -> its next use
	h := optHeap{}
	hits := 0
	for i, k := range keys {
		nu := next[i]
		if _, ok := cached[k]; ok {
			hits++
			if nu == never {
				delete(cached, k)
				continue
			}
			cached[k] = nu
			h.push(optEntry{nu, k})
			continue
		}
		if nu == never {
			continue // never used again: caching it cannot help
		}
		if len(cached) < size {
			cached[k] = nu
			h.push(optEntry{nu, k})
			continue
		}
		// Find the farthest next use among cached keys.
		for {
			top := h.top()
			if cur, ok := cached[top.key]; ok && cur == top.next {
				break
			}
			h.pop() // stale
		}
		if top := h.top(); top.next > nu {
			h.pop()
			delete(cached, top.key)
			cached[k] = nu
			h.push(optEntry{nu, k})
		}
	}
	return hits
}

type optEntry struct {
	next int32
	key  uint64
}

// optHeap is a max-heap on next.
type optHeap struct{ a []optEntry }

func (h *optHeap) top() optEntry { return h.a[0] }

func (h *optHeap) push(e optEntry) {
	h.a = append(h.a, e)
	i := len(h.a) - 1
	for i > 0 {
		p := (i - 1) / 2
		if h.a[p].next >= h.a[i].next {
			break
		}
		h.a[p], h.a[i] = h.a[i], h.a[p]
		i = p
	}
}

func (h *optHeap) pop() {
	last := len(h.a) - 1
	h.a[0] = h.a[last]
	h.a = h.a[:last]
	i := 0
	for {
		l, r, m := 2*i+1, 2*i+2, i
		if l < len(h.a) && h.a[l].next > h.a[m].next {
			m = l
		}
		if r < len(h.a) && h.a[r].next > h.a[m].next {
			m = r
		}
		if m == i {
			return
		}
		h.a[m], h.a[i] = h.a[i], h.a[m]
		i = m
	}
}

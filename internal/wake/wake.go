// Package wake lets a cache's lease waiters be woken by the fill of the
// lease they wait for, as the fill channel announces it.
package wake

import "sync"

// Waits wakes this instance's waiters for other instances' leases: the
// script that ends a waited-for lease (a fill, a release, a write) publishes
// its value key on the fill channel, and the subscriber calls Wake. A
// waiter watches its keys before its acquire, so that a message that comes
// between the acquire's reply and the wait is not lost.
type Waits struct {
	mu sync.Mutex
	m  map[string]map[chan struct{}]struct{} // by value key
}

// Watch returns a channel that receives when any of vks is woken, and the
// function that stops watching.
func (f *Waits) Watch(vks []string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	f.mu.Lock()
	if f.m == nil {
		f.m = map[string]map[chan struct{}]struct{}{}
	}
	for _, vk := range vks {
		set := f.m[vk]
		if set == nil {
			set = map[chan struct{}]struct{}{}
			f.m[vk] = set
		}
		set[ch] = struct{}{}
	}
	f.mu.Unlock()
	return ch, func() {
		f.mu.Lock()
		for _, vk := range vks {
			if set := f.m[vk]; set != nil {
				delete(set, ch)
				if len(set) == 0 {
					delete(f.m, vk)
				}
			}
		}
		f.mu.Unlock()
	}
}

// Wake wakes the waiters of vk.
func (f *Waits) Wake(vk string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for ch := range f.m[vk] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// WakeAll wakes every waiter (nil-safe): messages may have been lost.
func (f *Waits) WakeAll() {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, set := range f.m {
		for ch := range set {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
	}
}

package wake

import "testing"

// A watcher is woken by any of its keys, not by others, once per wake
// at most buffered, and not after it stopped watching; WakeAll wakes
// everyone and is nil-safe.
func TestWaits(t *testing.T) {
	var w Waits
	ch, stop := w.Watch([]string{"a", "b"})
	other, stopOther := w.Watch([]string{"c"})
	defer stopOther()
	w.Wake("b")
	w.Wake("a") // the buffer holds one wake: this one is dropped, not blocked on
	select {
	case <-ch:
	default:
		t.Fatal("a watcher of b was not woken by b")
	}
	select {
	case <-other:
		t.Fatal("a watcher of c was woken by b")
	default:
	}
	stop()
	w.Wake("a")
	select {
	case <-ch:
		t.Fatal("woken after it stopped watching")
	default:
	}
	if len(w.m) != 1 {
		t.Fatalf("%d keys watched after stop, want 1 (c)", len(w.m))
	}
	w.WakeAll()
	select {
	case <-other:
	default:
		t.Fatal("WakeAll did not wake the watcher of c")
	}
	var none *Waits
	none.WakeAll()
}

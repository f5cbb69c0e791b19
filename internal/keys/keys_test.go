package keys

import (
	"slices"
	"testing"
)

// LeaseScript's keys, cut from one string, are the keys Lease, Waiters,
// RowVersion and Handoff name, for any value key (empty, braces, hostile bytes).
func TestLeaseScriptKeys(t *testing.T) {
	l := New("p", 1)
	for _, k := range []string{"", "a", "{x}", "}{", "\x00\xff", "é:lease", "long" + string(make([]byte, 300))} {
		vk := l.Value(k)
		want := []string{vk, Lease(vk), Waiters(vk), RowVersion(vk), Handoff(vk)}
		if got := LeaseScript(vk); !slices.Equal(got, want) {
			t.Errorf("LeaseScript(%q) = %q, want %q", vk, got, want)
		}
	}
}

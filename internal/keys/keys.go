// Package keys is tiercache's Redis key layout. It is internal so that the
// layout can change with the frame version without breaking users; the
// layout itself is documented in docs/FORMAT.md.
//
// Every user key maps to a value key whose hash tag (the part in braces)
// is derived from the user key alone, so the value and everything that
// belongs with it (its lease) hash to one Redis Cluster slot:
//
//	<prefix>:<version>:{<key>}         value
//	<prefix>:<version>:{<key>}:lease   lease token
//
// A user key containing '}' cannot be its own hash tag, so it is replaced in
// the braces by '#' and the hex xxhash64 of the key, and the key itself
// follows: <prefix>:<version>:{#<hash>}:<key>. Tags, invalidation channels and
// other bookkeeping use their own braces.
package keys

import (
	"strconv"
	"strings"

	"github.com/cespare/xxhash/v2"
)

// Layout builds the Redis keys of one cache namespace. The zero value is
// not usable; call New.
type Layout struct {
	base    string // "<prefix>:<version>:"
	channel string
	tagBase string
	floor   string
	fills   string
	gen     string
}

// New returns the layout of namespace prefix at schema version version.
// The prefix must not contain '{' or '}' (the caller validates it).
func New(prefix string, version int) Layout {
	v := "v" + strconv.Itoa(version)
	base := prefix + ":" + v + ":"
	return Layout{
		base:    base,
		channel: prefix + ":" + v + ":__tiercache_invalidate",
		tagBase: prefix + ":" + v + ":__tag:{",
		floor:   prefix + ":" + v + ":__tagfloor",
		fills:   prefix + ":" + v + ":__tiercache_fill",
		gen:     prefix + ":" + v + ":__generation",
	}
}

// Value returns the Redis key of user key k.
func (l Layout) Value(k string) string {
	if strings.IndexByte(k, '}') < 0 {
		return l.base + "{" + k + "}"
	}
	return l.base + "{#" + strconv.FormatUint(xxhash.Sum64String(k), 16) + "}:" + k
}

// Lease returns the lease key belonging to value key vk (same slot).
func Lease(vk string) string { return vk + ":lease" }

// Waiters returns the key that marks vk's lease as waited for (same slot).
func Waiters(vk string) string { return vk + ":lease:w" }

// Handoff returns the key that keeps, for the waiters of a lease a Delete
// ended, the token of that lease and then what its holder loaded (same
// slot; see Acquire).
func Handoff(vk string) string { return vk + ":lease:h" }

// RowVersion returns the key that keeps the newest row version written or
// deleted for vk (same slot).
func RowVersion(vk string) string { return vk + ":ver" }

// LeaseScript returns the keys of vk's lease scripts, in their order:
// value, lease, waiters, row version, handoff (one slot). The lease key is
// a prefix of the waiters key, so the four are cut from one string: two
// allocations, where building each would take five (TestLeaseScriptKeys
// checks the names against Lease, Waiters, Handoff and RowVersion).
func LeaseScript(vk string) []string {
	s := vk + ":lease:w" + vk + ":lease:h" + vk + ":ver" // one concatenation: one allocation
	w := len(vk) + len(":lease:w")
	return []string{vk, s[:len(vk)+len(":lease")], s[:w], s[2*w:], s[w : 2*w]}
}

// FormatVersion writes a row version as the scripts compare it: 20 decimal
// digits, zero-padded, so that string order is number order. 0 is "": an
// unversioned write.
func FormatVersion(v uint64) string {
	if v == 0 {
		return ""
	}
	s := strconv.FormatUint(v, 10)
	return strings.Repeat("0", 20-len(s)) + s
}

// Generation is the key of the namespace's generation (see Cache.Clear).
func (l Layout) Generation() string { return l.gen }

// Hash is the key check stored in every frame: xxhash64 of the value key.
func Hash(vk string) uint64 { return xxhash.Sum64String(vk) }

// Channel is the pub/sub channel that carries L1 invalidations.
func (l Layout) Channel() string { return l.channel }

// Tag returns the Redis key that holds tag t's version.
func (l Layout) Tag(t string) string { return l.tagBase + t + "}" }

// TagFloor is the key of the namespace's tag floor (see the TagFloor script).
func (l Layout) TagFloor() string { return l.floor }

// Fills is the pub/sub channel on which the scripts that end a waited-for
// lease publish its value key.
func (l Layout) Fills() string { return l.fills }

// ShardedFills is the fill channel of sharded pub/sub: in the slot of the
// invalidation channel (its name is the hash tag), so that one SSUBSCRIBE
// connection carries both.
func (l Layout) ShardedFills() string { return "{" + l.channel + "}:fill" }

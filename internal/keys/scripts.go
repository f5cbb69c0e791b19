package keys

import (
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts. Each touches only keys of one hash slot (a value key and
// its lease), so each runs on Redis Cluster. go-redis's Script runs EVALSHA
// and falls back to EVAL once on NOSCRIPT; in a pipeline the cache re-sends
// with EVAL only the commands that a node refused with NOSCRIPT (see
// store.runScript), so that nothing runs twice.

// Acquire reads the value and, unless it is fresh, tries to take the lease.
//
//	KEYS[1] value key, KEYS[2] lease key, KEYS[3] waiters key, KEYS[4] row
//	version key (unused here), KEYS[5] handoff key (every lease script gets
//	the same five keys)
//	ARGV[1] token, ARGV[2] lease TTL in ms, ARGV[3] now in unix µs,
//	ARGV[4] "1" to force (ignore freshness), ARGV[5] unix µs or "0": a value
//	written after it counts as fresh even when forced (someone refreshed it),
//	ARGV[6] "1" if the caller will wait for another holder's fill,
//	ARGV[7] the token of the lease the caller waited for, or ""
//
// It returns {state, value, lease pttl, server time, holder}: state 2 = the
// value is fresh (no lease taken), 1 = the lease is ours, 0 = someone else
// holds it (holder is its token), 3 = handed off: value is what the holder
// of the lease the caller waited for loaded (see Del). value is "" when
// absent. A lease that already holds the token is the caller's (a retry
// whose first reply was lost) and is reported as taken. The server time
// (Unix µs, from TIME) is when the lease was taken: a tag invalidated after
// it may have changed what the holder loads. Freshness is read from the
// frame: the write time is 8 bytes big-endian at offset 4, the logical
// expiry at offset 12 (0-based); bytes too short to hold them, or whose
// version (offset 0) is not 1 or 2 or reserved byte (offset 3) is not 0,
// are not fresh. The numbers are Unix µs, well within the 2^53 that Lua's
// doubles hold exactly.
//
// A caller that will wait marks the lease as waited for (the waiters key,
// living as long as the lease): the script that ends the lease then
// publishes the value key on the fill channel, which wakes the waiters. A
// lease nobody waits for ends without a message.
//
// A waiter whose awaited lease ended in a fill, or in a Delete while it
// was waited for, is handed what the lease's holder loaded (the handoff
// key holds "token frame"; see Fill and Del) when the value is no longer
// there fresh: its read overlapped whatever removed it, so the value
// loaded before is one it may return, and it need not wait for another
// load. While the holder of a lease a Delete ended still loads (the
// handoff key holds its token alone), the waiter is answered "busy" and
// waits on for it rather than take a new lease and load anew; it marks the
// key waited for again, so that a Set or a new lease's fill meanwhile
// wakes it too. A value
// written meanwhile is fresh and answered first. Only a caller that saw
// the lease before it ended knows its token: a read that began after the
// Delete never gets the value loaded before it.
var Acquire = redis.NewScript(`
local function u64(s, at)
  local n = 0
  for i = at, at + 7 do n = n * 256 + string.byte(s, i) end
  return n
end
local v = redis.call('GET', KEYS[1])
-- Trust the header only if it looks like one: version 1 (42 bytes at
-- least) or 2 (58), reserved byte 0.
local fv = v and string.byte(v, 1)
if v and string.byte(v, 4) == 0 and ((fv == 1 and #v >= 42) or (fv == 2 and #v >= 58)) then
  if ARGV[4] ~= '1' and u64(v, 13) > tonumber(ARGV[3]) then return {2, v, 0, '0', ''} end
  if ARGV[5] ~= '0' and u64(v, 5) > tonumber(ARGV[5]) then return {2, v, 0, '0', ''} end
end
if not v then v = '' end
if ARGV[7] ~= '' then
  local h = redis.call('GET', KEYS[5])
  if h == ARGV[7] then
    -- Waited for again: whatever ends the wait first (the holder's fill,
    -- a Set, a new lease's fill) wakes the caller.
    local left = redis.call('PTTL', KEYS[5])
    if ARGV[6] == '1' and left > 0 then redis.call('SET', KEYS[3], '1', 'PX', left) end
    return {0, v, left, '0', ARGV[7]}
  end
  if h and string.sub(h, 1, #ARGV[7] + 1) == ARGV[7] .. ' ' then
    return {3, string.sub(h, #ARGV[7] + 2), 0, '0', ''}
  end
end
local t = redis.call('TIME')
local now = string.format('%.0f', t[1] * 1000000 + t[2])
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {1, v, 0, now, ''} end
local holder = redis.call('GET', KEYS[2])
-- The lease may already be ours: a retry after a reply that was lost.
if holder == ARGV[1] then return {1, v, 0, now, ''} end
local left = redis.call('PTTL', KEYS[2])
if ARGV[6] == '1' and left > 0 then redis.call('SET', KEYS[3], '1', 'PX', left) end
return {0, v, left, now, holder or ''}
`)

// The scripts that end a lease (Fill, Release, Set, Del) wake its waiters:
// if the waiters key existed they delete it and publish the value key on
// the fill channel, their last argument. When that argument is empty
// (sharded pub/sub on a cluster) they publish nothing and add 2 to their
// reply instead, and the caller publishes on the sharded fill channel: a
// PUBLISH from a script on a cluster is forwarded over the cluster bus to
// the subscribers' node, which took up to 40 ms on Redis 7.0 (its outbound
// bus connections do not set TCP_NODELAY), where an SPUBLISH goes to the
// channel's shard directly.
const wake = `
if redis.call('DEL', KEYS[3]) == 1 then` + publish + `end
`

// publish wakes whoever watches the value key (see wake).
const publish = `
  if ARGV[#ARGV] ~= '' then redis.call('PUBLISH', ARGV[#ARGV], KEYS[1]) else woke = 2 end
`

// WokeFlag is what a lease-ending script adds to its reply when waiters
// are to be woken by the caller (see wake).
const WokeFlag = 2

// Row versions. A versioned write carries the version of the row it comes
// from (ARGV: a 20-digit zero-padded decimal, so that Lua compares them as
// strings, exactly, beyond the 2^53 its numbers hold; "" for an unversioned
// write). The row version key (KEYS[4]) keeps the newest version written or
// deleted, for ARGV ms or for what it had left, whichever is longer (a
// deletion, which has no TTL of its own, must not cut short the protection
// a longer-lived write left): a versioned write older than it is refused,
// and an unversioned write neither checks nor moves it. (The TTLs are
// under 2^53 ms, exact as Lua numbers.)
const versioned = `
if ARGV[VER] ~= '' then
  local cur = redis.call('GET', KEYS[4])
  if cur and cur REFUSE ARGV[VER] then REFUSED end
  local px = math.max(tonumber(ARGV[VER + 1]), redis.call('PTTL', KEYS[4]))
  redis.call('SET', KEYS[4], ARGV[VER], 'PX', string.format('%.0f', px))
end
`

// check returns the row version check with its argument index, its
// comparison (">=": an equal version is refused too; ">": not) and what a
// refusal runs.
func check(ver int, refuse, refused string) string {
	r := strings.NewReplacer("VER + 1", strconv.Itoa(ver+1), "VER", strconv.Itoa(ver), "REFUSED", refused, "REFUSE", refuse)
	return r.Replace(versioned)
}

// Fill writes a loaded value only if the lease token still matches: a
// Delete, Set or invalidation since the lease was taken removed the lease,
// and the fill is refused so that a value loaded before the change cannot
// land after it. A versioned fill older than the row version key is
// refused too, and gives the lease back. One as old is not: it is the row
// as last written or invalidated at that version (a versioned Set, or the
// commit-log follower's invalidation of the change that made it), and
// refusing it would keep the current row out of the cache until the
// version key expires.
//
// A fill leaves its frame for the lease's waiters too, in the handoff key
// for handoffTTL, when it wakes them: a Delete between the fill and a
// waiter's next acquire would otherwise make the waiter, whose read
// overlapped the Delete, wait for another load (the demo's hot keys are
// written every few ms). A fill refused because a Delete ended its lease
// while it was waited for (the handoff key holds its token) leaves its
// frame there and wakes the waiters all the same (see Acquire).
//
//	KEYS value, lease, waiters, row version, handoff
//	ARGV[1] token, ARGV[2] frame, ARGV[3] TTL in ms, ARGV[4] row version,
//	ARGV[5] its TTL in ms, ARGV[6] fill channel
//
// Returns 1 when written, 0 when refused, plus WokeFlag (see wake).
var Fill = redis.NewScript(`
local woke = 0
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  if redis.call('GET', KEYS[5]) == ARGV[1] then
    redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[2], 'PX', ` + handoffTTL + `)` + publish + `  end
  return woke
end
` + check(4, ">", "redis.call('DEL', KEYS[2])"+wake+" return woke") + `
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
if redis.call('DEL', KEYS[3]) == 1 then
  redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[2], 'PX', ` + handoffTTL + `)` + publish + `end
return 1 + woke
`)

// handoffTTL is how long, in ms, a handed-off value waits for the lease's
// waiters: woken by the fill, they read it within a round trip; one whose
// wake was lost polls every 500 ms.
const handoffTTL = "2000"

// Release drops the lease if the token still matches (the load failed, or
// its value was not to be cached): a waiter then takes the lease at once.
// A lease a Delete ended while it was waited for hands its waiters nothing:
// its handoff key is dropped and they are woken, to load anew.
//
//	KEYS value, lease, waiters, row version, handoff
//	ARGV[1] token, ARGV[2] fill channel
var Release = redis.NewScript(`
local woke = 0
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])` + wake + `  return 1 + woke
end
if redis.call('GET', KEYS[5]) == ARGV[1] then
  redis.call('DEL', KEYS[5])` + publish + `end
return woke
`)

// Set is a write-through: it removes the lease, so that any fill in flight
// is refused, and writes the value, atomically; the lease's waiters read it.
// A versioned Set older than (or as old as) the row version key is refused.
//
//	KEYS value, lease, waiters, row version, handoff
//	ARGV[1] frame, ARGV[2] TTL in ms, ARGV[3] row version, ARGV[4] its TTL
//	in ms, ARGV[5] fill channel
//
// Returns 1 when written, 0 when refused, plus WokeFlag (see wake).
var Set = redis.NewScript(setScript(">="))

// SetLoaded is Set for a loaded value written without the lease
// (WithoutLease): only an older version is refused, since a load as old as
// the row version key read the current row (as Fill judges it).
var SetLoaded = redis.NewScript(setScript(">"))

func setScript(refuse string) string {
	return "local woke = 0\n" + check(3, refuse, "return 0") + `
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])` + wake + `return 1 + woke
`
}

// Del deletes a value and its lease. A versioned Del leaves its version in
// the row version key, so that a later write older than it is refused; it
// is refused itself if a newer version was written.
//
// The lease's waiters, woken, wait on for what its holder loaded before the
// Delete, which they may return (see Acquire): the Del leaves the lease's
// token in the handoff key for as long as the lease had left. A read that
// waits for a load is then not made to wait for a second load by a Delete
// during the first (the demo's p99.9: docs/PERFORMANCE.md). A lease nobody
// waits for leaves nothing.
//
//	KEYS value, lease, waiters, row version, handoff
//	ARGV[1] row version, ARGV[2] its TTL in ms, ARGV[3] fill channel
//
// Returns 1 when deleted, 0 when refused, plus WokeFlag (see wake).
var Del = redis.NewScript("local woke = 0\n" + check(1, ">", "return 0") + `
local held = redis.call('GET', KEYS[2])
if held and redis.call('EXISTS', KEYS[3]) == 1 then
  local left = redis.call('PTTL', KEYS[2])
  if left > 0 then redis.call('SET', KEYS[5], held, 'PX', left) end
end
redis.call('DEL', KEYS[1], KEYS[2])` + wake + `return 1 + woke
`)

// Tags. Each tag has a version key (its own slot) holding a Unix µs
// timestamp from the server's clock; a value stores the versions of its tags
// when it was loaded, and is valid only while every tag key still holds that
// version. Invalidating a tag moves its version forward, which makes every
// value carrying it invalid at once, however many there are: O(1) in Redis.

// TagRead returns a tag's version, creating the tag key when absent at the
// server's time now, and makes sure it lives at least as long as the value
// about to be written.
//
//	KEYS[1] tag key, KEYS[2] its row version key, ARGV[1] the value's TTL in ms
//
// It returns {version, created, row version}: created is 1 when the key was
// absent; the row version is the newest one a versioned invalidation of the
// tag left ("" for none): a versioned write not newer is refused. A
// load that finds its tag key absent cannot tell a tag never invalidated
// from one invalidated during the load whose key then vanished (evicted,
// deleted); the cache asks TagFloor which. A key created now is newer than
// every load in flight, so those loads refuse their fills: a false refusal
// at worst, never a forgotten invalidation.
var TagRead = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
  local t = redis.call('TIME')
  v = string.format('%.0f', t[1] * 1000000 + t[2])
  redis.call('SET', KEYS[1], v, 'PX', ARGV[1])
  return {v, 1, redis.call('GET', KEYS[2]) or ''}
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl >= 0 and ttl < tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return {v, 0, redis.call('GET', KEYS[2]) or ''}
`)

// TagFloor reads or raises the namespace's tag floor: the server time of the
// latest tag invalidation in the namespace (Unix µs). With ARGV[1] "1" it
// raises the floor to the server's time now (InvalidateTags, before it bumps
// its tags); with "0" it only reads it, 0 when absent (no tag of the
// namespace was ever invalidated, or the floor was evicted or flushed: the
// one gap, which needs the floor and a tag key both evicted during a load
// that an invalidation of that tag overlapped). The floor has no TTL.
//
//	KEYS[1] floor key, ARGV[1] "1" to raise, "0" to read
var TagFloor = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local v = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if v then now = math.max(now, tonumber(v)) end
  redis.call('SET', KEYS[1], string.format('%.0f', now))
  return string.format('%.0f', now)
end
if not v then return '0' end
return v
`)

// TagBump invalidates a tag: its version becomes max(version+1, server time
// now), so versions only grow, and the tag key lives at least ARGV[1] ms
// more, long enough for every load in flight to see the new version and
// refuse its fill (a tag key that expired during a load would be recreated
// at the load's start, and the invalidation forgotten).
//
// A versioned invalidation (ARGV[2], a row version as the row scripts
// compare it) also leaves its version in the tag's row version key for
// ARGV[3] ms: a later versioned write carrying the tag and not newer is
// refused (see TagRead).
//
//	KEYS[1] tag key, KEYS[2] its row version key
//	ARGV[1] the least TTL in ms the tag key keeps, ARGV[2] row version or "",
//	ARGV[3] its TTL in ms
var TagBump = redis.NewScript(`
local t = redis.call('TIME')
local now = t[1] * 1000000 + t[2]
local v = redis.call('GET', KEYS[1])
local s = string.format('%.0f', now)
if v then s = string.format('%.0f', math.max(tonumber(v) + 1, now)) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl >= 0 and ttl > tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], s, 'KEEPTTL')
else
  redis.call('SET', KEYS[1], s, 'PX', ARGV[1])
end
if ARGV[2] ~= '' then
  local cur = redis.call('GET', KEYS[2])
  if not cur or cur < ARGV[2] then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3]) end
end
return s
`)

package keys

import "github.com/redis/go-redis/v9"

// The Lua scripts. Each touches only keys of one hash slot (a value key and
// its lease), so each runs on Redis Cluster. go-redis's Script runs EVALSHA
// and falls back to EVAL once on NOSCRIPT, so a restarted or flushed server
// needs nothing from us.

// Acquire reads the value and, unless it is fresh, tries to take the lease.
//
//	KEYS[1] value key, KEYS[2] lease key
//	ARGV[1] token, ARGV[2] lease TTL in ms, ARGV[3] now in unix µs,
//	ARGV[4] "1" to force (ignore freshness), ARGV[5] unix µs or "0": a value
//	written after it counts as fresh even when forced (someone refreshed it)
//
// It returns {state, value, lease pttl}: state 2 = the value is fresh (no
// lease taken), 1 = the lease is ours, 0 = someone else holds it. value is ""
// when absent. Freshness is read from the frame: the write time is 8 bytes
// big-endian at offset 4, the logical expiry at offset 12 (0-based); frames
// too short to hold them are not fresh. The numbers are Unix µs, well within
// the 2^53 that Lua's doubles hold exactly.
var Acquire = redis.NewScript(`
local function u64(s, at)
  local n = 0
  for i = at, at + 7 do n = n * 256 + string.byte(s, i) end
  return n
end
local v = redis.call('GET', KEYS[1])
if v and #v >= 42 then
  if ARGV[4] ~= '1' and u64(v, 13) > tonumber(ARGV[3]) then return {2, v, 0} end
  if ARGV[5] ~= '0' and u64(v, 5) > tonumber(ARGV[5]) then return {2, v, 0} end
end
if not v then v = '' end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, v, 0}
end
return {0, v, redis.call('PTTL', KEYS[2])}
`)

// Fill writes a loaded value only if the lease token still matches: a
// Delete, Set or invalidation since the lease was taken removed the lease,
// and the fill is refused so that a value loaded before the change cannot
// land after it.
//
//	KEYS[1] value key, KEYS[2] lease key
//	ARGV[1] token, ARGV[2] frame, ARGV[3] TTL in ms
//
// Returns 1 when written, 0 when refused.
var Fill = redis.NewScript(`
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
`)

// Release drops the lease if the token still matches (the load failed).
//
//	KEYS[1] lease key, ARGV[1] token
var Release = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// Set is a write-through: it removes the lease, so that any fill in flight
// is refused, and writes the value, atomically.
//
//	KEYS[1] value key, KEYS[2] lease key
//	ARGV[1] frame, ARGV[2] TTL in ms
var Set = redis.NewScript(`
redis.call('DEL', KEYS[2])
return redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
`)

package tiercache

import "errors"

// Tags group keys for invalidation: [WithTags] on a write (or through
// [LoadOptions] in a loader) attaches tags to a value, and
// [Cache.InvalidateTags] makes every value carrying one of them unreachable.
//
// Each tag has a version in Redis (a server timestamp that only grows); a
// value stores the versions its tags had when it was written and is valid
// only while they are current. Invalidating a tag is one small write,
// whatever the number of keys that carry it, on one node or a cluster, and
// needs no list of members: nothing grows with the tag, and the tag key
// expires with the last value that uses it. docs/DESIGN.md compares this
// with keeping a set of members per tag, with measurements.
//
// The price is on reads: a Redis hit of a tagged value also reads its
// tags' versions (pipelined, one more round trip). L1 hits compare against
// versions this instance has seen, which InvalidateTags publishes to every
// instance.
//
// The code: InvalidateTags in write.go, the version checks of reads in
// read.go (checkTags), the scripts and their round trips in
// internal/store (TagRead, TagBump, TagGet) and internal/keys, L1's table
// of versions in local.go (tagVersions). A load reads its tags' versions after the loader
// returns and refuses its fill if any moved since the load began, or if a
// tag key vanished (expired, evicted) while the namespace's tag floor says
// some tag was invalidated since.

// ErrInvalidTag is returned for an empty tag, a tag over 255 bytes or one
// that starts with '}' (on a Redis Cluster its keys could not share a
// slot), and for more than 64 tags on one value. [Cache.InvalidateTags]
// takes any number of tags.
var ErrInvalidTag = errors.New("tiercache: invalid tag")

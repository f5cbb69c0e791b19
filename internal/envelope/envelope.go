// Package envelope is tiercache's stored format: a small versioned binary
// frame around an encoded value. It is internal because its layout is a
// storage contract between tiercache versions, not an API; docs/FORMAT.md
// describes it byte by byte.
//
// Decoding never panics, never allocates more than the frame declares and
// checks, in this order: the length, the version, the CRC-32C over the whole
// frame, the reserved bits, the declared lengths against the bytes present,
// and the hash of the Redis key the frame was written under. Any failure is
// an error that wraps [ErrCorrupt], [ErrVersion] or [ErrKeyMismatch]; the
// cache treats all of them as a counted miss.
package envelope

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
)

// Version is the frame version this package writes. It reads it and
// version 1, the same frame without the row version and the generation.
const Version = 2

// versionOne is the frame of earlier releases: headerV1 bytes of header.
const versionOne = 1

// Flags, in byte 1 of the frame.
const (
	// FlagNegative marks a cached "not found": the frame has no payload.
	FlagNegative uint8 = 1 << 0
	// compressionMask holds the compression algorithm in bits 1-2.
	compressionMask  uint8 = 0b110
	compressionShift       = 1
	reservedFlags    uint8 = 0b11111000
)

// Compression algorithms stored in the flags.
const (
	CompressionNone uint8 = 0
	CompressionS2   uint8 = 1
	CompressionZstd uint8 = 2
)

const (
	headerV1    = 38
	headerSize  = headerV1 + 16 // + row version, generation
	trailerSize = 4
	// Overhead is the size of a frame with no tags and an empty payload.
	Overhead = headerSize + trailerSize
	// MaxTags is the most tags one frame can carry.
	MaxTags = 64
	// MaxTagLen is the longest tag name, in bytes.
	MaxTagLen = 255
)

// Offsets of the fixed header fields. SoftExpiryOffset is exported because
// the lease script in internal/keys reads the logical expiry in Lua.
const (
	offVersion       = 0
	offFlags         = 1
	offCodec         = 2
	offReserved      = 3
	offWritten       = 4
	SoftExpiryOffset = 12
	offDelta         = 20
	offKeyHash       = 24
	offTagCount      = 32
	offPayloadLen    = 34
	offRowVersion    = 38 // version 2 only
	offGeneration    = 46 // version 2 only
)

// Errors returned by Decode. Each is a reason to treat the stored bytes as a miss.
var (
	ErrCorrupt     = errors.New("envelope: corrupt frame")
	ErrVersion     = errors.New("envelope: unknown frame version")
	ErrKeyMismatch = errors.New("envelope: frame belongs to another key")
	ErrTooLarge    = errors.New("envelope: frame larger than the limit")
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Tag is a tag name and the version the tag had when the value was loaded.
type Tag struct {
	Name    string
	Version uint64
}

// Envelope is one decoded frame. Times are Unix microseconds.
type Envelope struct {
	Flags      uint8
	Codec      uint8
	WrittenAt  int64
	SoftExpiry int64  // logical expiry: fresh before it, stale after it
	Delta      uint32 // how long the load took, in microseconds (XFetch's delta)
	KeyHash    uint64
	// RowVersion is the version of the row the value was loaded from or
	// written as (0: unversioned); Generation the namespace's generation
	// when it was written (see Cache.Clear). Both 0 in a version-1 frame.
	RowVersion uint64
	Generation uint64
	Tags       []Tag
	// Payload aliases the decoded buffer; it is empty for a negative entry.
	Payload []byte
}

// Negative reports whether the frame caches a "not found".
func (e *Envelope) Negative() bool { return e.Flags&FlagNegative != 0 }

// Compression returns the compression algorithm of the payload.
func (e *Envelope) Compression() uint8 { return (e.Flags & compressionMask) >> compressionShift }

// SetCompression stores the compression algorithm in the flags.
func (e *Envelope) SetCompression(alg uint8) {
	e.Flags = e.Flags&^compressionMask | (alg<<compressionShift)&compressionMask
}

// Size returns the encoded size of e.
func (e *Envelope) Size() int {
	n := Overhead + len(e.Payload)
	for _, t := range e.Tags {
		n += 1 + len(t.Name) + 8
	}
	return n
}

// Append encodes e and appends it to dst. It fails only for tags that do not
// fit the format (too many, empty or too long), or a payload over 4 GiB.
func Append(dst []byte, e *Envelope) ([]byte, error) {
	if len(e.Tags) > MaxTags {
		return dst, fmt.Errorf("%w: %d tags, at most %d", ErrCorrupt, len(e.Tags), MaxTags)
	}
	for _, t := range e.Tags {
		if len(t.Name) == 0 || len(t.Name) > MaxTagLen {
			return dst, fmt.Errorf("%w: tag name of %d bytes, want 1 to %d", ErrCorrupt, len(t.Name), MaxTagLen)
		}
	}
	if uint64(len(e.Payload)) > math.MaxUint32 {
		return dst, ErrTooLarge
	}
	start := len(dst)
	dst = append(dst, make([]byte, headerSize)...)
	h := dst[start:]
	h[offVersion] = Version
	h[offFlags] = e.Flags &^ reservedFlags
	h[offCodec] = e.Codec
	h[offReserved] = 0
	binary.BigEndian.PutUint64(h[offWritten:], uint64(e.WrittenAt))
	binary.BigEndian.PutUint64(h[SoftExpiryOffset:], uint64(e.SoftExpiry))
	binary.BigEndian.PutUint32(h[offDelta:], e.Delta)
	binary.BigEndian.PutUint64(h[offKeyHash:], e.KeyHash)
	binary.BigEndian.PutUint16(h[offTagCount:], uint16(len(e.Tags)))
	binary.BigEndian.PutUint32(h[offPayloadLen:], uint32(len(e.Payload)))
	binary.BigEndian.PutUint64(h[offRowVersion:], e.RowVersion)
	binary.BigEndian.PutUint64(h[offGeneration:], e.Generation)
	for _, t := range e.Tags {
		dst = append(dst, byte(len(t.Name)))
		dst = append(dst, t.Name...)
		dst = binary.BigEndian.AppendUint64(dst, t.Version)
	}
	dst = append(dst, e.Payload...)
	return binary.BigEndian.AppendUint32(dst, crc32.Checksum(dst[start:], castagnoli)), nil
}

// Decode parses b into e. maxSize bounds len(b) (0: no bound); keyHash must
// equal the hash the frame was written with. On success e.Payload aliases b.
func Decode(b []byte, maxSize int, keyHash uint64, e *Envelope) error {
	if maxSize > 0 && len(b) > maxSize {
		return fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), maxSize)
	}
	header := headerSize
	switch {
	case len(b) > 0 && b[offVersion] == versionOne:
		header = headerV1
	case len(b) > 0 && b[offVersion] != Version:
		return fmt.Errorf("%w: %d", ErrVersion, b[offVersion])
	}
	if len(b) < header+trailerSize {
		return fmt.Errorf("%w: %d bytes, shorter than a header", ErrCorrupt, len(b))
	}
	body := b[:len(b)-trailerSize]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[len(b)-trailerSize:]) {
		return fmt.Errorf("%w: checksum mismatch", ErrCorrupt)
	}
	if b[offFlags]&reservedFlags != 0 || b[offReserved] != 0 {
		return fmt.Errorf("%w: reserved bits set", ErrCorrupt)
	}
	*e = Envelope{
		Flags:      b[offFlags],
		Codec:      b[offCodec],
		WrittenAt:  int64(binary.BigEndian.Uint64(b[offWritten:])),
		SoftExpiry: int64(binary.BigEndian.Uint64(b[SoftExpiryOffset:])),
		Delta:      binary.BigEndian.Uint32(b[offDelta:]),
		KeyHash:    binary.BigEndian.Uint64(b[offKeyHash:]),
	}
	if e.Compression() > CompressionZstd {
		return fmt.Errorf("%w: unknown compression %d", ErrCorrupt, e.Compression())
	}
	ntags := int(binary.BigEndian.Uint16(b[offTagCount:]))
	plen := uint64(binary.BigEndian.Uint32(b[offPayloadLen:]))
	if header == headerSize {
		e.RowVersion = binary.BigEndian.Uint64(b[offRowVersion:])
		e.Generation = binary.BigEndian.Uint64(b[offGeneration:])
	}
	rest := body[header:]
	if ntags > MaxTags || ntags*(1+1+8) > len(rest) {
		return fmt.Errorf("%w: %d tags do not fit", ErrCorrupt, ntags)
	}
	if ntags > 0 {
		e.Tags = make([]Tag, ntags)
		for i := range e.Tags {
			n := int(rest[0])
			if n == 0 || 1+n+8 > len(rest) {
				return fmt.Errorf("%w: tag %d does not fit", ErrCorrupt, i)
			}
			e.Tags[i] = Tag{Name: string(rest[1 : 1+n]), Version: binary.BigEndian.Uint64(rest[1+n:])}
			rest = rest[1+n+8:]
		}
	}
	if plen != uint64(len(rest)) {
		return fmt.Errorf("%w: payload declares %d bytes, %d present", ErrCorrupt, plen, len(rest))
	}
	if e.Negative() && plen != 0 {
		return fmt.Errorf("%w: negative entry with a payload", ErrCorrupt)
	}
	if e.KeyHash != keyHash {
		return ErrKeyMismatch
	}
	e.Payload = rest
	return nil
}

// Package msg is the wire codec of tiercache's L1-invalidation messages,
// which instances publish to each other over Redis pub/sub.
//
// A message is an 11-byte header, 'T', the version (1 or 2), the sender's
// 8-byte instance id and a kind byte; in version 2 the header goes on with
// the send time (8 bytes, big-endian Unix µs), so that receivers can
// measure the invalidation's delay. Entries follow: for KindKeys repeated
// {uvarint length, key}, for KindTags repeated {uvarint length, name,
// 8-byte big-endian version}, for KindAll nothing. The layout is a contract
// between tiercache versions running side by side, so it must not change
// without a new version.
//
// Any client of the Redis can publish on the channel, so Decode treats its
// input as hostile: it never panics, allocates only in proportion to the
// bytes present, and writes its length checks so that they cannot overflow.
package msg

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/tiercache/tiercache/internal/envelope"
)

const (
	// Version is the version Encode writes; Decode reads it and version 2,
	// which EncodeAt writes.
	Version = 1
	// VersionTimed is the version with the send time in its header.
	VersionTimed = 2
	// HeaderSize is the length of the header: magic, version, sender, kind
	// (and 8 more bytes of send time in version 2).
	HeaderSize = 11
	// MaxSize is the size Encode keeps each message within, so that one
	// large batch does not become one huge pub/sub message; a single entry
	// larger than that still goes, alone in its message.
	MaxSize = 64 << 10
)

const magic = 'T'

// Kind says what a message invalidates.
type Kind byte

// The kinds of message.
const (
	KindKeys Kind = 'k' // the listed keys
	KindTags Kind = 't' // the listed tags, now at the versions given
	KindAll  Kind = 'a' // everything: the receiver flushes its L1
)

// ErrMalformed wraps every Decode failure.
var ErrMalformed = errors.New("msg: malformed invalidation message")

// Message is one decoded invalidation message.
type Message struct {
	Sender [8]byte
	SentAt int64 // Unix µs; 0 in a version-1 message
	Kind   Kind
	Keys   []string       // KindKeys
	Tags   []envelope.Tag // KindTags
}

// Encode returns the messages that carry keys and tags from sender (keys in
// 'k' messages, tags in 't' messages, each split at MaxSize), or, with all,
// a single 'a' message (keys and tags are then ignored). No keys and no tags
// and !all: nil.
//
// Empty keys, and tag names empty or longer than envelope.MaxTagLen, are
// left out: no cache entry can have them, and Decode would reject the
// message that carried them.
func Encode(sender [8]byte, keys []string, tags []envelope.Tag, all bool) [][]byte {
	return encode(sender, 0, keys, tags, all)
}

// EncodeAt is Encode in version 2, with the send time sentAt (Unix µs).
func EncodeAt(sender [8]byte, sentAt int64, keys []string, tags []envelope.Tag, all bool) [][]byte {
	return encode(sender, sentAt, keys, tags, all)
}

func encode(sender [8]byte, sentAt int64, keys []string, tags []envelope.Tag, all bool) [][]byte {
	header := func(sender [8]byte, kind Kind) []byte { return header(sender, kind, sentAt) }
	if all {
		return [][]byte{header(sender, KindAll)}
	}
	var msgs [][]byte
	// Split where the old publisher did: before an entry that, with a
	// worst-case length prefix, would take a non-empty message past MaxSize.
	m := header(sender, KindKeys)
	hl := len(m)
	for _, k := range keys {
		if k == "" {
			continue
		}
		if len(m) > hl && len(m)+len(k)+binary.MaxVarintLen64 > MaxSize {
			msgs, m = append(msgs, m), header(sender, KindKeys)
		}
		m = binary.AppendUvarint(m, uint64(len(k)))
		m = append(m, k...)
	}
	if len(m) > hl {
		msgs = append(msgs, m)
	}
	m = header(sender, KindTags)
	for _, t := range tags {
		if t.Name == "" || len(t.Name) > envelope.MaxTagLen {
			continue
		}
		if len(m) > hl && len(m)+len(t.Name)+binary.MaxVarintLen64+8 > MaxSize {
			msgs, m = append(msgs, m), header(sender, KindTags)
		}
		m = binary.AppendUvarint(m, uint64(len(t.Name)))
		m = append(m, t.Name...)
		m = binary.BigEndian.AppendUint64(m, t.Version)
	}
	if len(m) > hl {
		msgs = append(msgs, m)
	}
	return msgs
}

// header starts a message; version 2 when sentAt is set.
func header(sender [8]byte, kind Kind, sentAt int64) []byte {
	m := make([]byte, HeaderSize, 256)
	m[0], m[1], m[10] = magic, Version, byte(kind)
	copy(m[2:10], sender[:])
	if sentAt != 0 {
		m[1] = VersionTimed
		m = binary.BigEndian.AppendUint64(m, uint64(sentAt))
	}
	return m
}

// Decode parses one payload. It takes a string, which is what go-redis gives
// for a pub/sub payload, and reads it in place; the keys and tag names it
// returns are copies, so that holding one does not pin the whole payload.
// A KindAll message may carry trailing bytes, which are ignored (as earlier
// versions did); a KindKeys or KindTags message may have no entries.
func Decode(payload string) (Message, error) {
	var m Message
	if len(payload) < HeaderSize {
		return m, fmt.Errorf("%w: %d bytes, shorter than the %d-byte header", ErrMalformed, len(payload), HeaderSize)
	}
	if payload[0] != magic {
		return m, fmt.Errorf("%w: magic byte %#x, want %#x", ErrMalformed, payload[0], magic)
	}
	if payload[1] != Version && payload[1] != VersionTimed {
		return m, fmt.Errorf("%w: version %d, want %d or %d", ErrMalformed, payload[1], Version, VersionTimed)
	}
	copy(m.Sender[:], payload[2:10])
	m.Kind = Kind(payload[10])
	b := payload[HeaderSize:]
	if payload[1] == VersionTimed {
		if len(b) < 8 {
			return Message{}, fmt.Errorf("%w: version 2 header without its send time", ErrMalformed)
		}
		m.SentAt, b = int64(binary.BigEndian.Uint64([]byte(b[:8]))), b[8:]
	}
	switch m.Kind {
	case KindAll:
		return m, nil
	case KindKeys, KindTags:
	default:
		return Message{}, fmt.Errorf("%w: unknown kind %#x", ErrMalformed, payload[10])
	}
	for len(b) > 0 {
		off := len(payload) - len(b)
		// binary.Uvarint is inlined and only reads, so the compiler
		// converts without copying (TestDecodeAllocs checks).
		n, w := binary.Uvarint([]byte(b[:min(len(b), binary.MaxVarintLen64)]))
		if w <= 0 {
			return Message{}, fmt.Errorf("%w: truncated or overlong length at byte %d", ErrMalformed, off)
		}
		rest := len(b) - w
		if m.Kind == KindKeys {
			if n == 0 {
				return Message{}, fmt.Errorf("%w: empty key at byte %d", ErrMalformed, off)
			}
			if n > uint64(rest) {
				return Message{}, fmt.Errorf("%w: key of %d bytes at byte %d, %d bytes left", ErrMalformed, n, off, rest)
			}
			m.Keys = append(m.Keys, strings.Clone(b[w:w+int(n)]))
			b = b[w+int(n):]
			continue
		}
		if n == 0 || n > envelope.MaxTagLen {
			return Message{}, fmt.Errorf("%w: tag name of %d bytes at byte %d, want 1 to %d", ErrMalformed, n, off, envelope.MaxTagLen)
		}
		if rest < 8 || n > uint64(rest-8) {
			return Message{}, fmt.Errorf("%w: tag of %d+8 bytes at byte %d, %d bytes left", ErrMalformed, n, off, rest)
		}
		name, v := b[w:w+int(n)], b[w+int(n):w+int(n)+8]
		m.Tags = append(m.Tags, envelope.Tag{Name: strings.Clone(name), Version: binary.BigEndian.Uint64([]byte(v))})
		b = b[w+int(n)+8:]
	}
	return m, nil
}

// HasHeader reports whether payload starts like a tiercache message of
// this version (magic, version, a known kind), whoever sent it: a payload
// that does and still fails to Decode was meant to invalidate something
// (it was truncated, say), while one that does not is foreign bytes on the
// channel.
func HasHeader(payload string) bool {
	if len(payload) < HeaderSize || payload[0] != magic || (payload[1] != Version && payload[1] != VersionTimed) {
		return false
	}
	switch Kind(payload[10]) {
	case KindKeys, KindTags, KindAll:
		return true
	}
	return false
}

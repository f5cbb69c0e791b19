package tiercache

import (
	"fmt"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zstd"

	"github.com/tiercache/tiercache/internal/envelope"
	"github.com/tiercache/tiercache/internal/keys"
)

// entry is a value as the cache handles it between tiers: decoded, with
// the frame's metadata. Times are Unix microseconds.
type entry[V any] struct {
	val       V
	neg       bool           // a cached "not found"
	version   uint64         // the row version it was written as (0: unversioned)
	gen       uint64         // the namespace's generation it was written in
	writtenAt int64          // when it was written
	softExp   int64          // logical expiry: fresh before, stale after
	l1Until   int64          // L1 only: when the L1 copy must go
	delta     uint32         // how long its load took, µs
	size      int            // encoded size, for the L1 weigher
	tags      []envelope.Tag // its tags and their versions when it was loaded; shared, never modified
}

func (e *entry[V]) fresh(now int64) bool { return now < e.softExp }

// valueCodec encodes values into frames and back, with the cache's codec,
// compression and size limit.
type valueCodec struct {
	codec       Codec
	id          uint8 // codec.ID(), asked once, in New
	compression Compression
	above       int
	maxSize     int
	zenc        *zstd.Encoder
	zdec        *zstd.Decoder
}

func newValueCodec(cfg *config) (*valueCodec, error) {
	vc := &valueCodec{codec: cfg.codec, compression: cfg.compression, above: cfg.compressAbove, maxSize: cfg.maxValueSize}
	id, err := codecID(cfg.codec)
	if err != nil {
		return nil, err
	}
	vc.id = id
	if cfg.compression == Zstd {
		if vc.zenc, err = zstd.NewWriter(nil); err != nil {
			return nil, fmt.Errorf("%w: zstd: %w", ErrInvalidOption, err)
		}
		// A bounded decoder: a frame that declares more than the value limit
		// is refused before its memory is allocated. Not under 2 KiB: the
		// encoder gives a payload of up to 1 KiB a window of up to 2 KiB,
		// which a smaller bound refuses (decode checks the length itself).
		bound := uint64(max(cfg.maxValueSize, 2<<10))
		vc.zdec, err = zstd.NewReader(nil, zstd.WithDecoderConcurrency(0),
			zstd.WithDecoderMaxMemory(bound), zstd.WithDecoderMaxWindow(bound))
		if err != nil {
			return nil, fmt.Errorf("%w: zstd: %w", ErrInvalidOption, err)
		}
	}
	return vc, nil
}

// codecID asks c for its ID: a panic there is a bad option, not a panic
// of New.
func codecID(c Codec) (id uint8, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: the codec's ID panicked: %v", ErrInvalidOption, p)
		}
	}()
	return c.ID(), nil
}

// encode builds the frame of v: env holds its metadata (times, key hash,
// tags, versions, the negative flag); encode adds the codec's payload.
func (vc *valueCodec) encode(v any, env envelope.Envelope) ([]byte, error) {
	env.Codec = vc.id
	if !env.Negative() {
		payload, err := marshal(vc.codec, v)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCodec, err)
		}
		if len(payload) > vc.maxSize { // a reader would not decompress it: see decode
			return nil, fmt.Errorf("%w: %d bytes before compression, limit %d", ErrValueTooLarge, len(payload), vc.maxSize)
		}
		if vc.compression != NoCompression && len(payload) > vc.above {
			switch vc.compression {
			case S2:
				payload = s2.Encode(nil, payload)
				env.SetCompression(envelope.CompressionS2)
			case Zstd:
				payload = vc.zenc.EncodeAll(payload, nil)
				env.SetCompression(envelope.CompressionZstd)
			}
		}
		env.Payload = payload
	}
	if env.Size() > vc.maxSize {
		return nil, fmt.Errorf("%w: %d bytes encoded, limit %d", ErrValueTooLarge, env.Size(), vc.maxSize)
	}
	b, err := envelope.Append(make([]byte, 0, env.Size()), &env)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCodec, err)
	}
	return b, nil
}

// decode parses a stored frame into e. Every failure is a reason to treat
// the key as a miss; none panics.
func decode[V any](vc *valueCodec, b []byte, keyHash uint64, e *entry[V]) error {
	var env envelope.Envelope
	if err := envelope.Decode(b, vc.maxSize, keyHash, &env); err != nil {
		return err
	}
	*e = entry[V]{neg: env.Negative(), version: env.RowVersion, gen: env.Generation, writtenAt: env.WrittenAt,
		softExp: env.SoftExpiry, delta: env.Delta, size: len(b), tags: env.Tags}
	if e.neg {
		return nil
	}
	if env.Codec != vc.id {
		return fmt.Errorf("%w: written with codec %d, this cache uses %d", envelope.ErrCorrupt, env.Codec, vc.id)
	}
	payload := env.Payload
	switch env.Compression() {
	case envelope.CompressionS2:
		n, err := s2.DecodedLen(payload)
		if err != nil {
			return fmt.Errorf("%w: s2: %w", envelope.ErrCorrupt, err)
		}
		if n > vc.maxSize {
			return fmt.Errorf("%w: s2 payload of %d bytes", envelope.ErrTooLarge, n)
		}
		if payload, err = s2.Decode(nil, payload); err != nil {
			return fmt.Errorf("%w: s2: %w", envelope.ErrCorrupt, err)
		}
	case envelope.CompressionZstd:
		if vc.zdec == nil {
			// Written by a cache configured with zstd; this one is not.
			return fmt.Errorf("%w: zstd payload, zstd not configured", envelope.ErrCorrupt)
		}
		var err error
		if payload, err = vc.zdec.DecodeAll(payload, nil); err != nil {
			return fmt.Errorf("%w: zstd: %w", envelope.ErrCorrupt, err)
		}
		if len(payload) > vc.maxSize {
			return fmt.Errorf("%w: zstd payload of %d bytes", envelope.ErrTooLarge, len(payload))
		}
	}
	if err := unmarshal(vc.codec, payload, &e.val); err != nil {
		return fmt.Errorf("%w: %w", envelope.ErrCorrupt, err)
	}
	return nil
}

// marshal and unmarshal call the codec, and so the value type's own
// methods (MarshalJSON, ...), which may panic on what they meet: a panic is
// an error, not a crash of the read (stored bytes are anyone's) or a write.
func marshal(c Codec, v any) (b []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("codec panicked: %v", p)
		}
	}()
	return c.Marshal(v)
}

func unmarshal(c Codec, data []byte, v any) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("codec panicked: %v", p)
		}
	}()
	return c.Unmarshal(data, v)
}

// frameOf encodes e, to be stored under value key vk, in generation gen of
// the namespace: the current one for a write, the one known when the load
// began for a loaded value (see loadAndFill).
func (c *Cache[V]) frameOf(vk string, e *entry[V], gen uint64) ([]byte, error) {
	env := envelope.Envelope{
		Tags: e.tags, WrittenAt: e.writtenAt, SoftExpiry: e.softExp, Delta: e.delta,
		KeyHash: c.keyHash(vk), RowVersion: e.version, Generation: gen,
	}
	if e.neg {
		env.Flags |= envelope.FlagNegative
	}
	return c.vc.encode(e.val, env)
}

// keyHash is the key check of a frame: the hash of its Redis key and of
// the value type, so that a frame written under the key by a cache of
// another type (two caches on one prefix) is a miss, not bytes decoded
// into the wrong type.
func (c *Cache[V]) keyHash(vk string) uint64 { return keys.Hash(vk) ^ c.typeHash }

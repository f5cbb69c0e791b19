package envelope

import (
	"bytes"
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
)

func sample() Envelope {
	return Envelope{
		Codec: 1, WrittenAt: 1_700_000_000_000_000, SoftExpiry: 1_700_000_060_000_000,
		Delta: 50_000, KeyHash: 0xfeedface, Payload: []byte(`{"id":42}`),
		Tags: []Tag{{Name: "user:42", Version: 7}, {Name: "org:1", Version: 1 << 60}},
	}
}

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		env  Envelope
	}{
		{"value with tags", sample()},
		{"negative", Envelope{Flags: FlagNegative, WrittenAt: 1, SoftExpiry: 2, KeyHash: 3}},
		{"empty payload", Envelope{Codec: 3, KeyHash: 9}},
		{"compressed", func() Envelope { e := sample(); e.SetCompression(CompressionZstd); return e }()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := Append(nil, &tt.env)
			if err != nil {
				t.Fatal(err)
			}
			if len(b) != tt.env.Size() {
				t.Fatalf("encoded %d bytes, Size says %d", len(b), tt.env.Size())
			}
			var got Envelope
			if err := Decode(b, 0, tt.env.KeyHash, &got); err != nil {
				t.Fatal(err)
			}
			if got.Flags != tt.env.Flags || got.Codec != tt.env.Codec || got.WrittenAt != tt.env.WrittenAt ||
				got.SoftExpiry != tt.env.SoftExpiry || got.Delta != tt.env.Delta || got.KeyHash != tt.env.KeyHash ||
				!bytes.Equal(got.Payload, tt.env.Payload) || len(got.Tags) != len(tt.env.Tags) {
				t.Fatalf("round trip changed the frame:\n got %+v\nwant %+v", got, tt.env)
			}
			for i := range got.Tags {
				if got.Tags[i] != tt.env.Tags[i] {
					t.Fatalf("tag %d: got %+v want %+v", i, got.Tags[i], tt.env.Tags[i])
				}
			}
			if got.Compression() != tt.env.Compression() {
				t.Fatalf("compression %d, want %d", got.Compression(), tt.env.Compression())
			}
		})
	}
}

// The Lua lease script reads the logical expiry at SoftExpiryOffset; this
// pins the layout it depends on.
func TestSoftExpiryOffset(t *testing.T) {
	e := sample()
	b, _ := Append(nil, &e)
	var n int64
	for _, c := range b[SoftExpiryOffset : SoftExpiryOffset+8] {
		n = n<<8 | int64(c)
	}
	if n != e.SoftExpiry {
		t.Fatalf("bytes at offset %d read %d, want %d", SoftExpiryOffset, n, e.SoftExpiry)
	}
	var w int64
	for _, c := range b[4:12] {
		w = w<<8 | int64(c)
	}
	if w != e.WrittenAt {
		t.Fatalf("bytes at offset 4 read %d, want written-at %d", w, e.WrittenAt)
	}
}

func TestDecodeRejects(t *testing.T) {
	e := sample()
	good, _ := Append(nil, &e)
	mutate := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	tests := []struct {
		name string
		b    []byte
		hash uint64
		max  int
		want error
	}{
		{"empty", nil, e.KeyHash, 0, ErrCorrupt},
		{"short", good[:10], e.KeyHash, 0, ErrCorrupt},
		{"truncated", good[:len(good)-1], e.KeyHash, 0, ErrCorrupt},
		{"unknown version", mutate(func(b []byte) []byte { b[0] = 9; return b }), e.KeyHash, 0, ErrVersion},
		{"flipped bit", mutate(func(b []byte) []byte { b[len(b)/2] ^= 1; return b }), e.KeyHash, 0, ErrCorrupt},
		{"other key", good, e.KeyHash + 1, 0, ErrKeyMismatch},
		{"over the limit", good, e.KeyHash, len(good) - 1, ErrTooLarge},
		{"foreign bytes", []byte("plain old string written by someone else, long enough"), e.KeyHash, 0, ErrVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got Envelope
			if err := Decode(tt.b, tt.max, tt.hash, &got); !errors.Is(err, tt.want) {
				t.Fatalf("Decode = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestAppendRejectsBadTags(t *testing.T) {
	for _, tags := range [][]Tag{{{Name: ""}}, {{Name: string(make([]byte, 256))}}, make([]Tag, MaxTags+1)} {
		e := Envelope{Tags: tags}
		if _, err := Append(nil, &e); err == nil {
			t.Fatalf("Append accepted %d tags (first name %d bytes)", len(tags), len(tags[0].Name))
		}
	}
}

func BenchmarkAppend(b *testing.B) {
	e := sample()
	e.Payload = bytes.Repeat([]byte("x"), 512)
	buf := make([]byte, 0, e.Size())
	b.ReportAllocs()
	b.SetBytes(int64(e.Size()))
	for b.Loop() {
		buf, _ = Append(buf[:0], &e)
	}
}

func BenchmarkDecode(b *testing.B) {
	e := sample()
	e.Tags = nil
	e.Payload = bytes.Repeat([]byte("x"), 512)
	buf, _ := Append(nil, &e)
	b.ReportAllocs()
	b.SetBytes(int64(len(buf)))
	var got Envelope
	for b.Loop() {
		if err := Decode(buf, 0, e.KeyHash, &got); err != nil {
			b.Fatal(err)
		}
	}
}

// A version-1 frame (earlier releases: no row version, no generation) still
// decodes, with both at 0.
func TestDecodeVersionOne(t *testing.T) {
	e := Envelope{Codec: 1, WrittenAt: 5, SoftExpiry: 9, KeyHash: 77, RowVersion: 3, Generation: 4,
		Tags: []Tag{{Name: "t", Version: 2}}, Payload: []byte(`"v"`)}
	b, err := Append(nil, &e)
	if err != nil {
		t.Fatal(err)
	}
	var got Envelope
	if err := Decode(b, 0, 77, &got); err != nil || got.RowVersion != 3 || got.Generation != 4 {
		t.Fatalf("version 2: %+v, %v", got, err)
	}
	v1 := append(append([]byte{}, b[:headerV1]...), b[headerSize:len(b)-trailerSize]...)
	v1[offVersion] = versionOne
	v1 = binary.BigEndian.AppendUint32(v1, crc32.Checksum(v1, castagnoli))
	if err := Decode(v1, 0, 77, &got); err != nil {
		t.Fatalf("version 1: %v", err)
	}
	if got.RowVersion != 0 || got.Generation != 0 || got.SoftExpiry != 9 || string(got.Payload) != `"v"` || len(got.Tags) != 1 {
		t.Fatalf("version 1 decoded as %+v", got)
	}
}

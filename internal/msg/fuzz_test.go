package msg

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/tiercache/tiercache/internal/envelope"
)

// FuzzDecode: no payload makes Decode panic, every failure wraps
// ErrMalformed, and whatever Decode accepts survives Encode and Decode again
// with the same sender, kind and entries (Encode may split, so the entries
// of its messages are compared concatenated). The seed corpus in
// testdata/fuzz/FuzzDecode runs with every `go test`;
// `go test -run=^$ -fuzz=FuzzDecode ./internal/msg` explores more.
func FuzzDecode(f *testing.F) {
	f.Add(hdr('a'))
	f.Add(hdr('a') + "trailing")
	f.Add(hdr('k'))
	f.Add(hdr('k') + "\x01a\x02bc")
	f.Add(hdr('t') + "\x01x\x00\x00\x00\x00\x00\x00\x00\x01")
	for _, m := range Encode(sender, []string{"user:1", strings.Repeat("k", 200)}, []envelope.Tag{{Name: "team:7", Version: 42}}, false) {
		f.Add(string(m))
	}
	f.Add(hdr('t') + "\xf8" + strings.Repeat("\xff", 8) + "\x01" + strings.Repeat("\x00", 16)) // length 2^64-8
	f.Add(hdr('k') + strings.Repeat("\x80", 10) + "\x01")                                      // 11-byte uvarint
	f.Add(hdr('k') + "\x03ab")
	f.Add(hdr('t') + "\x01n1234567")
	f.Add(hdr('x'))
	f.Add("")
	for _, m := range EncodeAt(sender, 1_780_000_000_000_000, []string{"user:1"}, []envelope.Tag{{Name: "team:7", Version: 42}}, false) {
		f.Add(string(m))
	}
	f.Add("T\x02" + hdr('k')[2:] + "\x00\x01") // version 2, send time cut short
	f.Fuzz(func(t *testing.T, payload string) {
		m, err := Decode(payload)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error does not wrap ErrMalformed: %v", err)
			}
			return
		}
		msgs := EncodeAt(m.Sender, m.SentAt, m.Keys, m.Tags, m.Kind == KindAll)
		if m.Kind == KindAll && len(msgs) != 1 {
			t.Fatalf("flush re-encodes to %d messages", len(msgs))
		}
		var keys []string
		var tags []envelope.Tag
		for i, b := range msgs {
			again, err := Decode(string(b))
			if err != nil {
				t.Fatalf("re-encoded message %d rejected: %v", i, err)
			}
			if again.Sender != m.Sender {
				t.Fatalf("re-encoded message %d: sender %x, want %x", i, again.Sender, m.Sender)
			}
			if again.SentAt != m.SentAt {
				t.Fatalf("re-encoded message %d: sent at %d, want %d", i, again.SentAt, m.SentAt)
			}
			if again.Kind != m.Kind {
				t.Fatalf("re-encoded message %d: kind %q, want %q", i, again.Kind, m.Kind)
			}
			keys = append(keys, again.Keys...)
			tags = append(tags, again.Tags...)
		}
		if !slices.Equal(keys, m.Keys) || !slices.Equal(tags, m.Tags) {
			t.Fatalf("entries differ after re-encoding:\n got %q %v\nwant %q %v", keys, tags, m.Keys, m.Tags)
		}
	})
}

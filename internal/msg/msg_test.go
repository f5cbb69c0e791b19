package msg

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"unsafe"

	"github.com/tiercache/tiercache/internal/envelope"
)

var sender = [8]byte{1, 2, 3, 4, 5, 6, 7, 8}

// hdr is the header of a message from sender, as the old publisher wrote it.
func hdr(kind byte) string {
	return "T\x01\x01\x02\x03\x04\x05\x06\x07\x08" + string(kind)
}

// decodeAll decodes every message of msgs, checks that each comes from
// sender with the kind want, and returns their entries, concatenated.
func decodeAll(t *testing.T, msgs [][]byte, want Kind) ([]string, []envelope.Tag) {
	t.Helper()
	var keys []string
	var tags []envelope.Tag
	for i, b := range msgs {
		m, err := Decode(string(b))
		if err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
		if m.Sender != sender || m.Kind != want {
			t.Fatalf("message %d: sender %x kind %q, want %x %q", i, m.Sender, m.Kind, sender, want)
		}
		keys = append(keys, m.Keys...)
		tags = append(tags, m.Tags...)
	}
	return keys, tags
}

func TestRoundTrip(t *testing.T) {
	var everyByte []string // one key per byte value, and one of all of them
	var all []byte
	for c := range 256 {
		everyByte = append(everyByte, string([]byte{byte(c)}))
		all = append(all, byte(c))
	}
	everyByte = append(everyByte, string(all))
	var many []string
	var manyTags []envelope.Tag
	for i := range 2000 {
		many = append(many, strings.Repeat("k", 90)+string(rune('a'+i%26))+strings.Repeat("x", i%10))
		manyTags = append(manyTags, envelope.Tag{Name: strings.Repeat("t", 200) + string(rune('a'+i%26)), Version: uint64(i) << 40})
	}
	huge := strings.Repeat("h", MaxSize+100)

	tests := []struct {
		name     string
		keys     []string
		tags     []envelope.Tag
		minMsgs  int
		oversize bool // one message carries a single key larger than MaxSize
	}{
		{name: "empty"},
		{name: "one key", keys: []string{"user:1"}, minMsgs: 1},
		{name: "one tag", tags: []envelope.Tag{{Name: "team:7", Version: 42}}, minMsgs: 1},
		{name: "keys and tags", keys: []string{"a", "b", "c"}, tags: []envelope.Tag{{Name: "x", Version: 0}, {Name: "y", Version: 1<<64 - 1}}, minMsgs: 2},
		{name: "every byte value", keys: everyByte, tags: []envelope.Tag{{Name: string(all[:255]), Version: 7}, {Name: string(all[1:256]), Version: 8}}, minMsgs: 2},
		{name: "key longer than MaxSize", keys: []string{"before", huge, "after"}, minMsgs: 3, oversize: true},
		{name: "many keys split", keys: many, minMsgs: 3},
		{name: "many tags split", tags: manyTags, minMsgs: 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msgs := Encode(sender, tt.keys, tt.tags, false)
			if len(msgs) < tt.minMsgs || (tt.minMsgs == 0 && msgs != nil) {
				t.Fatalf("%d messages, want at least %d", len(msgs), tt.minMsgs)
			}
			var keys []string
			var tags []envelope.Tag
			for i, b := range msgs {
				m, err := Decode(string(b))
				if err != nil {
					t.Fatalf("message %d: %v", i, err)
				}
				if m.Sender != sender {
					t.Fatalf("message %d: sender %x", i, m.Sender)
				}
				if len(b) > MaxSize && !(tt.oversize && len(m.Keys) == 1 && len(m.Keys[0]) > MaxSize) {
					t.Fatalf("message %d: %d bytes, over MaxSize with %d keys", i, len(b), len(m.Keys))
				}
				keys = append(keys, m.Keys...)
				tags = append(tags, m.Tags...)
			}
			if !slices.Equal(keys, tt.keys) {
				t.Errorf("keys differ: got %d, want %d", len(keys), len(tt.keys))
			}
			if !slices.Equal(tags, tt.tags) {
				t.Errorf("tags differ: got %d, want %d", len(tags), len(tt.tags))
			}
		})
	}

	t.Run("all", func(t *testing.T) {
		msgs := Encode(sender, []string{"ignored"}, []envelope.Tag{{Name: "ignored", Version: 1}}, true)
		if len(msgs) != 1 || string(msgs[0]) != hdr('a') {
			t.Fatalf("got %q, want one %q", msgs, hdr('a'))
		}
		if keys, tags := decodeAll(t, msgs, KindAll); keys != nil || tags != nil {
			t.Fatalf("flush carries entries: %q %v", keys, tags)
		}
	})
}

// TestEncodeSkipsInvalid: entries no cache can hold are left out rather
// than sent in a message every receiver would reject.
func TestEncodeSkipsInvalid(t *testing.T) {
	long := strings.Repeat("n", envelope.MaxTagLen+1)
	msgs := Encode(sender, []string{"", "k", ""}, []envelope.Tag{{Name: ""}, {Name: long}, {Name: "t", Version: 3}}, false)
	keys, _ := decodeAll(t, msgs[:1], KindKeys)
	_, tags := decodeAll(t, msgs[1:], KindTags)
	if !slices.Equal(keys, []string{"k"}) || !slices.Equal(tags, []envelope.Tag{{Name: "t", Version: 3}}) {
		t.Fatalf("got %q %v", keys, tags)
	}
	if msgs := Encode(sender, []string{""}, []envelope.Tag{{Name: ""}}, false); msgs != nil {
		t.Fatalf("only invalid entries: got %q, want nil", msgs)
	}
}

// TestSplitPoint: Encode splits exactly where the old publisher did, before
// an entry that, with a worst-case 10-byte length, would pass MaxSize.
func TestSplitPoint(t *testing.T) {
	first := strings.Repeat("a", 1000) // header 11 + length 2 + 1000 = 1013
	fits := strings.Repeat("b", MaxSize-1013-10)
	if msgs := Encode(sender, []string{first, fits}, nil, false); len(msgs) != 1 {
		t.Fatalf("%d messages, want 1", len(msgs))
	}
	if msgs := Encode(sender, []string{first, fits + "b"}, nil, false); len(msgs) != 2 {
		t.Fatalf("%d messages, want 2", len(msgs))
	}
}

// TestCompatibility: Encode writes, byte for byte, what the publisher of
// earlier versions (publishBatch in invalidate.go) wrote, and Decode reads it,
// so that both versions interoperate during a rolling deploy.
func TestCompatibility(t *testing.T) {
	long := strings.Repeat("L", 200) // a two-byte uvarint: 0xc8 0x01
	keys := []string{"a", "bc", long}
	tags := []envelope.Tag{{Name: "x", Version: 1}, {Name: "yz", Version: 0x0102030405060708}}
	wantKeys := hdr('k') + "\x01a" + "\x02bc" + "\xc8\x01" + long
	wantTags := hdr('t') + "\x01x\x00\x00\x00\x00\x00\x00\x00\x01" + "\x02yz\x01\x02\x03\x04\x05\x06\x07\x08"

	msgs := Encode(sender, keys, tags, false)
	if len(msgs) != 2 || string(msgs[0]) != wantKeys || string(msgs[1]) != wantTags {
		t.Fatalf("Encode:\n got %q\nwant %q", msgs, []string{wantKeys, wantTags})
	}
	if msgs := Encode(sender, nil, nil, true); len(msgs) != 1 || string(msgs[0]) != hdr('a') {
		t.Fatalf("Encode all: got %q, want %q", msgs, hdr('a'))
	}

	m, err := Decode(wantKeys)
	if err != nil || m.Kind != KindKeys || m.Sender != sender || !slices.Equal(m.Keys, keys) || m.Tags != nil {
		t.Fatalf("Decode keys: %+v, %v", m, err)
	}
	m, err = Decode(wantTags)
	if err != nil || m.Kind != KindTags || m.Sender != sender || !slices.Equal(m.Tags, tags) || m.Keys != nil {
		t.Fatalf("Decode tags: %+v, %v", m, err)
	}
}

// TestDecodeAccepts: inputs that are odd but valid.
func TestDecodeAccepts(t *testing.T) {
	for _, tt := range []struct {
		name, in string
		kind     Kind
	}{
		{"keys, no entries", hdr('k'), KindKeys},
		{"tags, no entries", hdr('t'), KindTags},
		{"all", hdr('a'), KindAll},
		{"all with trailing bytes", hdr('a') + "\x05junk", KindAll},
		{"tag name of 255 bytes", hdr('t') + "\xff\x01" + strings.Repeat("n", 255) + "12345678", KindTags},
		{"non-minimal uvarint", hdr('k') + "\x81\x00a", KindKeys},
	} {
		m, err := Decode(tt.in)
		if err != nil || m.Kind != tt.kind || m.Sender != sender {
			t.Errorf("%s: %+v, %v", tt.name, m, err)
		}
	}
}

func TestDecodeMalformed(t *testing.T) {
	tag := func(n string, body string) string { return hdr('t') + n + body }
	pad := strings.Repeat("\x00", 300)
	tests := []struct{ name, in string }{
		{"empty", ""},
		{"shorter than header", hdr('k')[:10]},
		{"wrong magic", "X" + hdr('k')[1:]},
		{"version 0", "T\x00" + hdr('k')[2:]},
		{"version 2", "T\x02" + hdr('k')[2:]},
		{"unknown kind", hdr('x')},
		{"kind 0", hdr(0)},

		{"key: uvarint of 11 bytes", hdr('k') + strings.Repeat("\x80", 10) + "\x01" + pad},
		{"key: uvarint overflowing in byte 10", hdr('k') + strings.Repeat("\xff", 9) + "\x02" + pad},
		{"key: truncated uvarint", hdr('k') + "\x80"},
		{"key: length 2^64-1", hdr('k') + strings.Repeat("\xff", 9) + "\x01" + pad},
		{"key: length 2^63", hdr('k') + strings.Repeat("\x80", 9) + "\x01" + pad},
		{"key: one past the end", hdr('k') + "\x03ab"},
		{"key: second one past the end", hdr('k') + "\x01a\x02b"},
		{"key: zero length", hdr('k') + "\x00"},
		{"key: zero length after a key", hdr('k') + "\x01a\x00"},

		{"tag: uvarint of 11 bytes", tag(strings.Repeat("\x80", 10)+"\x01", pad)},
		{"tag: truncated uvarint", tag("\xff", "")},
		{"tag: length 2^64-1", tag(strings.Repeat("\xff", 9)+"\x01", pad)},
		{"tag: length 2^64-8", tag("\xf8"+strings.Repeat("\xff", 8)+"\x01", pad)},
		{"tag: length 2^64-4", tag("\xfc"+strings.Repeat("\xff", 8)+"\x01", pad)},
		{"tag: length 2^64-8, nothing after", tag("\xf8"+strings.Repeat("\xff", 8)+"\x01", "")},
		{"tag: zero-length name", tag("\x00", "12345678")},
		{"tag: 256-byte name", tag("\x80\x02", strings.Repeat("n", 256)+"12345678")},
		{"tag: name one past the end", tag("\x03", "ab")},
		{"tag: version truncated", tag("\x01", "n1234567")},
		{"tag: version missing", tag("\x01", "n")},
		{"tag: second truncated", tag("\x01", "n12345678\x01n")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := Decode(tt.in)
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("got %+v, %v; want ErrMalformed", m, err)
			}
			if m.Keys != nil || m.Tags != nil {
				t.Fatalf("entries returned with the error: %+v", m)
			}
		})
	}
}

// TestDecodeOwnsStrings: the keys and names returned do not alias the
// payload, whose memory the caller may reuse.
func TestDecodeOwnsStrings(t *testing.T) {
	enc := Encode(sender, []string{"alpha", "beta"}, []envelope.Tag{{Name: "gamma", Version: 9}}, false)
	buf := slices.Concat(enc[0], enc[1])
	kp := unsafe.String(unsafe.SliceData(buf), len(enc[0]))
	tp := unsafe.String(&buf[len(enc[0])], len(enc[1]))
	km, err := Decode(kp)
	if err != nil {
		t.Fatal(err)
	}
	tm, err := Decode(tp)
	if err != nil {
		t.Fatal(err)
	}
	clear(buf)
	if !slices.Equal(km.Keys, []string{"alpha", "beta"}) || !slices.Equal(tm.Tags, []envelope.Tag{{Name: "gamma", Version: 9}}) {
		t.Fatalf("decoded strings changed with the payload: %q %v", km.Keys, tm.Tags)
	}
}

// TestDecodeAllocs: Decode copies only the entries, never the payload.
func TestDecodeAllocs(t *testing.T) {
	p := string(Encode(sender, []string{strings.Repeat("k", 1000)}, nil, false)[0])
	if n := testing.AllocsPerRun(100, func() { _, _ = Decode(p) }); n > 2 {
		t.Errorf("%v allocations for one key, want at most 2 (the key and the slice)", n)
	}
	p = string(Encode(sender, nil, []envelope.Tag{{Name: "t", Version: 1}}, false)[0])
	if n := testing.AllocsPerRun(100, func() { _, _ = Decode(p) }); n > 2 {
		t.Errorf("%v allocations for one tag, want at most 2 (the name and the slice)", n)
	}
}

// Version 2 carries the send time; Decode reads both versions.
func TestEncodeAtCarriesSendTime(t *testing.T) {
	const at = 1_780_000_000_123_456
	msgs := EncodeAt(sender, at, []string{"a", "b"}, []envelope.Tag{{Name: "t", Version: 5}}, false)
	if len(msgs) != 2 {
		t.Fatalf("%d messages, want 2", len(msgs))
	}
	for _, b := range msgs {
		if b[1] != VersionTimed || !HasHeader(string(b)) {
			t.Fatalf("header %q", b[:HeaderSize])
		}
		m, err := Decode(string(b))
		if err != nil || m.SentAt != at || m.Sender != sender {
			t.Fatalf("Decode = %+v, %v", m, err)
		}
	}
	m, _ := Decode(string(msgs[0]))
	if !slices.Equal(m.Keys, []string{"a", "b"}) {
		t.Fatalf("keys %q", m.Keys)
	}
	if all := EncodeAt(sender, at, nil, nil, true); len(all) != 1 {
		t.Fatal("flush")
	} else if m, err := Decode(string(all[0])); err != nil || m.Kind != KindAll || m.SentAt != at {
		t.Fatalf("flush: %+v, %v", m, err)
	}
	if _, err := Decode(string(msgs[0][:HeaderSize+4])); !errors.Is(err, ErrMalformed) {
		t.Fatalf("a cut send time: %v", err)
	}
}

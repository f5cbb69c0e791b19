package envelope

import (
	"bytes"
	"testing"
)

// FuzzDecode: no input makes Decode panic, and whatever it accepts
// re-encodes to the same bytes (the format has one encoding per frame).
// The seed corpus is in testdata/fuzz/FuzzDecode and runs with every
// `go test`; `go test -fuzz=FuzzDecode ./internal/envelope` explores more.
func FuzzDecode(f *testing.F) {
	e := sample()
	good, _ := Append(nil, &e)
	f.Add(good, e.KeyHash)
	neg := Envelope{Flags: FlagNegative, KeyHash: 1}
	b, _ := Append(nil, &neg)
	f.Add(b, uint64(1))
	f.Add([]byte{}, uint64(0))
	f.Fuzz(func(t *testing.T, data []byte, hash uint64) {
		var got Envelope
		if err := Decode(data, 1<<20, hash, &got); err != nil {
			return
		}
		again, err := Append(nil, &got)
		if err != nil {
			t.Fatalf("accepted frame does not re-encode: %v", err)
		}
		if !bytes.Equal(again, data) {
			t.Fatalf("re-encoding differs:\n got %x\nwant %x", again, data)
		}
	})
}

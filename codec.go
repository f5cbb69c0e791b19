package tiercache

import (
	"encoding/json"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// Codec turns values into bytes and back. Marshal gets a V; Unmarshal gets
// a *V. A Codec must be safe for concurrent use, and Unmarshal must not
// modify data nor keep it after it returns (copy what the value keeps, as
// encoding/json and msgpack do): the cache hands it Redis's reply without
// copying it.
//
// ID is stored in every frame: a value written with another codec is a miss
// rather than garbage; the cache asks for it once, in New. IDs 0 to 15 are reserved for tiercache's own codecs;
// choose another for yours.
type Codec interface {
	ID() uint8
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// Built-in codec IDs.
const (
	codecIDJSON    = 1
	codecIDMsgpack = 2
	codecIDRaw     = 3
)

// JSON is the default codec: encoding/json.
var JSON Codec = jsonCodec{}

// Msgpack encodes with github.com/vmihailenco/msgpack/v5: smaller and
// faster than JSON for most structs.
var Msgpack Codec = msgpackCodec{}

// Raw passes []byte and string values through unchanged, for callers that
// serialise themselves. It fails for any other type.
var Raw Codec = rawCodec{}

type jsonCodec struct{}

func (jsonCodec) ID() uint8                          { return codecIDJSON }
func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

type msgpackCodec struct{}

func (msgpackCodec) ID() uint8                          { return codecIDMsgpack }
func (msgpackCodec) Marshal(v any) ([]byte, error)      { return msgpack.Marshal(v) }
func (msgpackCodec) Unmarshal(data []byte, v any) error { return msgpack.Unmarshal(data, v) }

type rawCodec struct{}

func (rawCodec) ID() uint8 { return codecIDRaw }

func (rawCodec) Marshal(v any) ([]byte, error) {
	switch v := v.(type) {
	case []byte:
		return v, nil
	case string:
		return []byte(v), nil
	}
	return nil, fmt.Errorf("raw codec: cannot marshal %T, only []byte and string", v)
}

func (rawCodec) Unmarshal(data []byte, v any) error {
	switch v := v.(type) {
	case *[]byte:
		*v = append([]byte(nil), data...)
	case *string:
		*v = string(data)
	default:
		return fmt.Errorf("raw codec: cannot unmarshal into %T, only *[]byte and *string", v)
	}
	return nil
}

package vici

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"

	govici "github.com/strongswan/govici/vici"
)

// A test-side VICI codec (govici keeps its own unexported): the fake server
// speaks it, and the fuzz targets turn arbitrary bytes into messages with it.

const (
	elSectionStart = 1
	elSectionEnd   = 2
	elKeyValue     = 3
	elListStart    = 4
	elListItem     = 5
	elListEnd      = 6
)

// msg builds a message from alternating keys and values (string, []string,
// *govici.Message), keeping the order.
func msg(kv ...any) *govici.Message {
	m := govici.NewMessage()
	for i := 0; i+1 < len(kv); i += 2 {
		if err := m.Set(kv[i].(string), kv[i+1]); err != nil {
			panic(err)
		}
	}
	return m
}

func encodeBody(m *govici.Message) []byte {
	var b []byte
	for _, k := range m.Keys() {
		switch v := m.Get(k).(type) {
		case string:
			b = append(b, elKeyValue, byte(len(k)))
			b = append(b, k...)
			b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
			b = append(b, v...)
		case []string:
			b = append(b, elListStart, byte(len(k)))
			b = append(b, k...)
			for _, it := range v {
				b = append(b, elListItem)
				b = binary.BigEndian.AppendUint16(b, uint16(len(it)))
				b = append(b, it...)
			}
			b = append(b, elListEnd)
		case *govici.Message:
			b = append(b, elSectionStart, byte(len(k)))
			b = append(b, k...)
			b = append(b, encodeBody(v)...)
			b = append(b, elSectionEnd)
		}
	}
	return b
}

// encodePacket frames a packet; name is used for the named types.
func encodePacket(ptype byte, name string, m *govici.Message) []byte {
	p := []byte{ptype}
	switch ptype {
	case pktCmdRequest, pktEventRegister, pktEventUnreg, pktEvent:
		p = append(p, byte(len(name)))
		p = append(p, name...)
	}
	if m != nil {
		p = append(p, encodeBody(m)...)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(p))), p...)
}

var errShort = errors.New("short")

// decodeBody parses message elements; it returns an error for anything
// that is not a well-formed message (and never panics).
func decodeBody(b []byte) (*govici.Message, error) {
	m, rest, err := decodeElements(b, 0)
	if err != nil {
		return nil, err
	}
	if len(rest) != 0 {
		return nil, errors.New("unbalanced section end")
	}
	return m, nil
}

func decodeElements(b []byte, depth int) (*govici.Message, []byte, error) {
	if depth > 64 {
		return nil, nil, errors.New("too deep")
	}
	m := govici.NewMessage()
	key := func() (string, error) {
		if len(b) < 1 || len(b) < 1+int(b[0]) {
			return "", errShort
		}
		n := int(b[0])
		k := string(b[1 : 1+n])
		b = b[1+n:]
		return k, nil
	}
	val := func() (string, error) {
		if len(b) < 2 {
			return "", errShort
		}
		n := int(binary.BigEndian.Uint16(b))
		if len(b) < 2+n {
			return "", errShort
		}
		v := string(b[2 : 2+n])
		b = b[2+n:]
		return v, nil
	}
	for len(b) > 0 {
		if b[0] == elSectionEnd {
			if depth == 0 {
				return nil, nil, errors.New("section end at top level")
			}
			return m, b, nil
		}
		t := b[0]
		b = b[1:]
		switch t {
		case elKeyValue:
			k, err := key()
			if err != nil {
				return nil, nil, err
			}
			v, err := val()
			if err != nil {
				return nil, nil, err
			}
			_ = m.Set(k, v)
		case elListStart:
			k, err := key()
			if err != nil {
				return nil, nil, err
			}
			l := []string{}
			for {
				if len(b) == 0 {
					return nil, nil, errShort
				}
				t, b = b[0], b[1:]
				if t == elListEnd {
					break
				}
				if t != elListItem {
					return nil, nil, fmt.Errorf("element %d in a list", t)
				}
				v, err := val()
				if err != nil {
					return nil, nil, err
				}
				l = append(l, v)
			}
			_ = m.Set(k, l)
		case elSectionStart:
			k, err := key()
			if err != nil {
				return nil, nil, err
			}
			sub, rest, err := decodeElements(b, depth+1)
			if err != nil {
				return nil, nil, err
			}
			if len(rest) == 0 || rest[0] != elSectionEnd {
				return nil, nil, errors.New("section not ended")
			}
			b = rest[1:]
			_ = m.Set(k, sub)
		default:
			return nil, nil, fmt.Errorf("unknown element %d", t)
		}
	}
	if depth > 0 {
		return nil, nil, errors.New("section not ended")
	}
	return m, nil, nil
}

func TestWireRoundTrip(t *testing.T) {
	m := msg("a", "1", "l", []string{"x", "y"}, "s", msg("b", "2", "t", msg("c", []string{})))
	got, err := decodeBody(encodeBody(m))
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != m.String() {
		t.Fatalf("round trip:\n%s\nwant\n%s", got, m)
	}
}

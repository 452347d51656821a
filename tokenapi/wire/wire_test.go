package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	b, err := NewBuilder(TypePTokenReply, 7).
		U64(AttrPToken, 42).U64(AttrIToken, 1<<63).Bool(AttrPrivacy, true).Bool(AttrIntegrity, false).
		U16(AttrWhyCode, uint16(ReasonNoSA)).String(AttrAudit, "esp a\x00b").String(AttrLabel, "").
		Blob(AttrChannelBinding, []byte{1, 2, 3}).U8(AttrAuthMethod, uint8(AuthDNSSEC)).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.Type != TypePTokenReply || m.ID != 7 || m.Version != Version {
		t.Fatalf("header %+v", m.Header)
	}
	if v, _ := m.U64(AttrPToken); v != 42 {
		t.Errorf("ptoken %d", v)
	}
	if v, _ := m.U64(AttrIToken); v != 1<<63 {
		t.Errorf("itoken %d", v)
	}
	if !m.Bool(AttrPrivacy) || m.Bool(AttrIntegrity) || m.Bool(AttrCompression) {
		t.Errorf("booleans wrong")
	}
	if v, _ := m.U16(AttrWhyCode); Reason(v) != ReasonNoSA {
		t.Errorf("why %d", v)
	}
	if got := m.String(AttrAudit); got != "esp a\uFFFDb" {
		t.Errorf("audit %q: NUL must be replaced", got)
	}
	if _, ok := m.Find(AttrLabel); ok {
		t.Errorf("empty string must be left out")
	}
	if !bytes.Equal(m.Bytes(AttrChannelBinding), []byte{1, 2, 3}) {
		t.Errorf("blob")
	}
	if v, _ := m.U8(AttrAuthMethod); AuthMethod(v) != AuthDNSSEC {
		t.Errorf("auth method %d", v)
	}
}

func frame(typ Type, version uint8, flags uint16, body []byte) []byte {
	b := binary.BigEndian.AppendUint32(nil, Magic)
	b = append(b, version, byte(typ))
	b = binary.BigEndian.AppendUint16(b, flags)
	b = binary.BigEndian.AppendUint32(b, 9)
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	return append(b, body...)
}

func attr(t uint16, v []byte) []byte {
	b := binary.BigEndian.AppendUint16(nil, t)
	b = binary.BigEndian.AppendUint16(b, uint16(len(v)))
	return append(b, v...)
}

func TestDecodeRefuses(t *testing.T) {
	good := frame(TypePTokenGet, Version, 0, attr(AttrPToken, make([]byte, 8)))
	badMagic := bytes.Clone(good)
	badMagic[0] = 'X'
	badLen := bytes.Clone(good)
	badLen[15]++
	many := []byte{}
	for range MaxAttrs + 1 {
		many = append(many, attr(999, nil)...)
	}
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"short", good[:10], "shorter than"},
		{"magic", badMagic, "magic"},
		{"length field", badLen, "body length"},
		{"flags", frame(TypePTokenGet, Version, 1, nil), "flags"},
		{"version", frame(TypePTokenGet, 2, 0, nil), "version 2"},
		{"truncated attr header", frame(TypePTokenGet, Version, 0, []byte{0, 1}), "too short"},
		{"attr overruns", frame(TypePTokenGet, Version, 0, []byte{0, 1, 0, 9, 1}), "says 9 bytes"},
		{"u64 size", frame(TypePTokenGet, Version, 0, attr(AttrPToken, make([]byte, 4))), "want 8"},
		{"bool value", frame(TypePTokenReply, Version, 0, attr(AttrPrivacy, []byte{2})), "boolean"},
		{"utf8", frame(TypePTokenReply, Version, 0, attr(AttrAudit, []byte{0xff})), "UTF-8"},
		{"nul", frame(TypePTokenReply, Version, 0, attr(AttrAudit, []byte{'a', 0})), "NUL"},
		{"critical unknown", frame(TypePTokenGet, Version, 0, attr(0x8000|999, nil)), "critical"},
		{"too many attrs", frame(TypePTokenGet, Version, 0, many), "more than"},
		{"too long", frame(TypePTokenGet, Version, 0, make([]byte, MaxMessage)), "longer than"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode(tc.in)
			if !errors.Is(err, ErrBadMessage) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode: %v, want ErrBadMessage containing %q", err, tc.want)
			}
		})
	}
	// Unknown non-critical attributes are kept, not refused.
	m, err := Decode(frame(TypePTokenGet, Version, 0, append(attr(999, []byte("x")), attr(AttrPToken, make([]byte, 8))...)))
	if err != nil || len(m.Attrs) != 2 {
		t.Fatalf("unknown attribute: %v %+v", err, m)
	}
}

func TestBuilderLimits(t *testing.T) {
	if _, err := NewBuilder(TypeError, 1).Blob(AttrChannelBinding, make([]byte, MaxBlob+1)).Bytes(); err == nil {
		t.Error("oversized blob accepted")
	}
	s := SanitizeString(strings.Repeat("é", MaxString))
	if len(s) > MaxString || !strings.HasPrefix(s, "éé") {
		t.Errorf("SanitizeString: %d bytes", len(s))
	}
	b := NewBuilder(TypeError, 1)
	for range MaxAttrs + 1 {
		b.U8(AttrMaxVersion, 1)
	}
	if _, err := b.Bytes(); err == nil {
		t.Error("too many attributes accepted")
	}
}

// FuzzDecode: Decode never panics, and whatever it accepts re-encodes to
// the same bytes.
func FuzzDecode(f *testing.F) {
	seed, _ := NewBuilder(TypePTokenReply, 3).U64(AttrPToken, 1).Bool(AttrPrivacy, true).String(AttrAudit, "x").Bytes()
	f.Add(seed)
	f.Add(frame(TypePTokenQuery, Version, 0, nil))
	f.Add(frame(TypeITokenGet, Version, 0, attr(AttrIToken, make([]byte, 8))))
	f.Add(frame(TypePTokenGet, Version, 0, attr(0x8001, nil)))
	ev, _ := NewBuilder(TypeEvent, 0).U64(AttrSubscription, 1).U8(AttrEventKind, uint8(EventDown)).U16(AttrWhyCode, 2).Bytes()
	f.Add(ev)
	from, _ := NewBuilder(TypePTokenQueryFrom, 4).Addr(AttrPeerAddr, netip.MustParseAddr("2001:db8::1")).U16(AttrPeerPort, 53).Addr(AttrLocalAddr, netip.MustParseAddr("192.0.2.1")).Bytes()
	f.Add(from)
	f.Add(frame(TypePTokenQueryFrom, Version, 0, attr(AttrPeerAddr, make([]byte, 5))))
	protect, _ := NewBuilder(TypeProtect, 4).U8(AttrRequire, uint8(LevelEncryption)).String(AttrPeerID, "@peer").Bytes()
	f.Add(protect)
	grant, _ := NewBuilder(TypeProtectReply, 4).U64(AttrPToken, 1).U8(AttrGranted, uint8(LevelBTNS)).U8(AttrPin, uint8(PinDevice)).String(AttrPinIface, "ipsec0").Bytes()
	f.Add(grant)
	f.Fuzz(func(t *testing.T, in []byte) {
		m, err := Decode(in)
		if err != nil {
			return
		}
		b := NewBuilder(m.Type, m.ID)
		for _, a := range m.Attrs {
			b.add(a.Type, a.Value)
		}
		out, err := b.Bytes()
		if err != nil {
			t.Fatalf("accepted message does not re-encode: %v", err)
		}
		if !bytes.Equal(out, in) {
			t.Fatalf("re-encoding differs:\n in %x\nout %x", in, out)
		}
	})
}

func TestAddrAttribute(t *testing.T) {
	for _, tc := range []struct {
		v  []byte
		ok bool
	}{{make([]byte, 4), true}, {make([]byte, 16), true}, {nil, false}, {make([]byte, 5), false}, {make([]byte, 6), false}} {
		_, err := Decode(frame(TypePTokenQueryFrom, Version, 0, attr(AttrLocalAddr, tc.v)))
		if (err == nil) != tc.ok {
			t.Errorf("address of %d bytes: %v", len(tc.v), err)
		}
	}
	b, err := NewBuilder(TypePTokenQueryFrom, 1).Addr(AttrPeerAddr, netip.MustParseAddr("::ffff:192.0.2.1")).Addr(AttrLocalAddr, netip.Addr{}).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	m, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if a, ok := m.Addr(AttrPeerAddr); !ok || a != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("mapped address sent as %v", a)
	}
	if _, ok := m.Addr(AttrLocalAddr); ok {
		t.Error("an invalid address was sent")
	}
}

func TestParseLevel(t *testing.T) {
	tests := []struct {
		in   string
		want Level
		err  bool
	}{
		{"encryption", LevelEncryption, false}, {"INTEGRITY", LevelIntegrity, false}, {"btns", LevelBTNS, false},
		{"Clear", LevelClear, false}, {"none", LevelNone, true}, {"", LevelNone, true}, {"max", LevelNone, true},
	}
	for _, tt := range tests {
		got, err := ParseLevel(tt.in)
		if got != tt.want || (err != nil) != tt.err {
			t.Errorf("ParseLevel(%q) = %s, %v", tt.in, got, err)
		}
	}
}

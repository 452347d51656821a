// Package wire encodes and decodes the messages of obol's token API
// (tokenapi/PROTOCOL.md): a 16-byte header followed by TLV attributes, one
// message per SOCK_SEQPACKET datagram. It has no state and no I/O, so the
// server, the Go client and the fuzz target share it.
package wire

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"
)

// Version is the protocol version this package speaks.
const Version = 1

// Magic opens every message: "OBTK".
const Magic uint32 = 0x4F42544B

// Limits of the protocol.
const (
	HeaderLen  = 16
	MaxMessage = 65536 // whole datagram, header included
	MaxAttrs   = 64
	MaxString  = 4096 // bytes of a string attribute
	MaxBlob    = 8192 // bytes of a binary attribute (channel binding)
)

// Type is a message type.
type Type uint8

// Requests (client to server) and replies (server to client).
const (
	TypePTokenQuery   Type = 0x01 // the socket's fd travels in SCM_RIGHTS
	TypePTokenGet     Type = 0x02
	TypePTokenRelease Type = 0x03
	TypeITokenGet     Type = 0x04
	TypeProtect       Type = 0x05 // the socket's fd travels in SCM_RIGHTS
	// Events and per-datagram pTokens (PROTOCOL.md, "Events and datagrams").
	TypeSubscribe       Type = 0x06 // the socket's fd travels in SCM_RIGHTS
	TypeUnsubscribe     Type = 0x07
	TypePTokenQueryFrom Type = 0x08 // an unconnected UDP socket's fd, plus the datagram's addresses
	TypePTokenReply     Type = 0x81
	TypeOK              Type = 0x83
	TypeITokenReply     Type = 0x84
	TypeProtectReply    Type = 0x85
	TypeSubscribed      Type = 0x86 // reply to SUBSCRIBE
	TypeEvent           Type = 0x87 // pushed by the server, id 0
	TypeError           Type = 0xFF
)

func (t Type) String() string {
	switch t {
	case TypePTokenQuery:
		return "PTOKEN_QUERY"
	case TypePTokenGet:
		return "PTOKEN_GET"
	case TypePTokenRelease:
		return "PTOKEN_RELEASE"
	case TypeITokenGet:
		return "ITOKEN_GET"
	case TypeProtect:
		return "PROTECT"
	case TypeProtectReply:
		return "PROTECT_REPLY"
	case TypePTokenReply:
		return "PTOKEN_REPLY"
	case TypeOK:
		return "OK"
	case TypeITokenReply:
		return "ITOKEN_REPLY"
	case TypeSubscribe:
		return "SUBSCRIBE"
	case TypeUnsubscribe:
		return "UNSUBSCRIBE"
	case TypePTokenQueryFrom:
		return "PTOKEN_QUERY_FROM"
	case TypeSubscribed:
		return "SUBSCRIBED"
	case TypeEvent:
		return "EVENT"
	case TypeError:
		return "ERROR"
	}
	return fmt.Sprintf("type(0x%02x)", uint8(t))
}

// Attribute types. Bit 0x8000 marks an attribute as critical: a receiver
// that does not know a critical attribute must refuse the message, an
// unknown non-critical one is skipped.
const (
	AttrPToken         uint16 = 1  // u64
	AttrIToken         uint16 = 2  // u64, 0 = none
	AttrProtected      uint16 = 3  // bool
	AttrPrivacy        uint16 = 4  // bool
	AttrIntegrity      uint16 = 5  // bool
	AttrCompression    uint16 = 6  // bool
	AttrAudit          uint16 = 7  // string
	AttrWhyCode        uint16 = 8  // u16
	AttrWhyText        uint16 = 9  // string
	AttrAuthMethod     uint16 = 10 // u8
	AttrCertDN         uint16 = 11 // string
	AttrCADN           uint16 = 12 // string
	AttrPubKeyID       uint16 = 13 // string
	AttrChannelBinding uint16 = 14 // bytes
	AttrLabel          uint16 = 15 // string
	AttrRemoteID       uint16 = 16 // string
	AttrErrorCode      uint16 = 17 // u16
	AttrErrorText      uint16 = 18 // string
	AttrMaxVersion     uint16 = 19 // u8
	// Influence (PROTECT, PROTECT_REPLY).
	AttrRequire  uint16 = 20 // u8: a Level, what PROTECT asks for
	AttrPeerID   uint16 = 21 // string: the IKE identity the peer must have
	AttrGranted  uint16 = 22 // u8: the Level in force after PROTECT (NONE when refused)
	AttrPin      uint16 = 23 // u8: a Pin, how obold fixed the socket
	AttrPinIface uint16 = 24 // string: the device a PIN_DEVICE socket is bound to

	AttrSubscription uint16 = 30 // u64: a subscription on one connection, from 1
	AttrEventKind    uint16 = 31 // u8: EventKind
	AttrPeerAddr     uint16 = 32 // bytes, 4 or 16: a datagram's sender address
	AttrPeerPort     uint16 = 33 // u16: a datagram's sender port
	AttrLocalAddr    uint16 = 34 // bytes, 4 or 16: a datagram's destination (IP_PKTINFO)

	AttrCritical uint16 = 0x8000
)

type kind uint8

const (
	kindU8 kind = iota + 1
	kindBool
	kindU16
	kindU64
	kindString
	kindBlob
	kindAddr // 4 (IPv4) or 16 (IPv6) bytes
)

var attrKinds = map[uint16]kind{
	AttrPToken: kindU64, AttrIToken: kindU64,
	AttrProtected: kindBool, AttrPrivacy: kindBool, AttrIntegrity: kindBool, AttrCompression: kindBool,
	AttrAudit: kindString, AttrWhyCode: kindU16, AttrWhyText: kindString,
	AttrAuthMethod: kindU8, AttrCertDN: kindString, AttrCADN: kindString, AttrPubKeyID: kindString,
	AttrChannelBinding: kindBlob, AttrLabel: kindString, AttrRemoteID: kindString,
	AttrErrorCode: kindU16, AttrErrorText: kindString, AttrMaxVersion: kindU8,
	AttrRequire: kindU8, AttrPeerID: kindString, AttrGranted: kindU8, AttrPin: kindU8, AttrPinIface: kindString,
	AttrSubscription: kindU64, AttrEventKind: kindU8, AttrPeerAddr: kindAddr, AttrPeerPort: kindU16,
	AttrLocalAddr: kindAddr,
}

// ErrBadMessage wraps every decoding error.
var ErrBadMessage = errors.New("malformed token API message")

// Header is the fixed part of a message.
type Header struct {
	Version uint8
	Type    Type
	ID      uint32 // chosen by the client, echoed in the reply
}

// Attr is one decoded attribute; Value aliases the decoded buffer.
type Attr struct {
	Type  uint16
	Value []byte
}

// Message is a header with its attributes, in wire order.
type Message struct {
	Header
	Attrs []Attr
}

func bad(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadMessage, fmt.Sprintf(format, a...))
}

// DecodeHeader checks magic and length and returns the header, so a server
// can answer UNSUPPORTED_VERSION before it looks at the body.
func DecodeHeader(b []byte) (Header, []byte, error) {
	if len(b) < HeaderLen {
		return Header{}, nil, bad("%d bytes, shorter than the %d-byte header", len(b), HeaderLen)
	}
	if len(b) > MaxMessage {
		return Header{}, nil, bad("%d bytes, longer than %d", len(b), MaxMessage)
	}
	if m := binary.BigEndian.Uint32(b[0:4]); m != Magic {
		return Header{}, nil, bad("magic 0x%08x, want 0x%08x (\"OBTK\")", m, Magic)
	}
	h := Header{Version: b[4], Type: Type(b[5]), ID: binary.BigEndian.Uint32(b[8:12])}
	if f := binary.BigEndian.Uint16(b[6:8]); f != 0 {
		return h, nil, bad("flags 0x%04x, must be 0", f)
	}
	if n := binary.BigEndian.Uint32(b[12:16]); int64(n) != int64(len(b)-HeaderLen) {
		return h, nil, bad("body length field %d, but %d bytes follow the header", n, len(b)-HeaderLen)
	}
	return h, b[HeaderLen:], nil
}

// Decode parses one whole message of the given version. Known attributes
// must have their documented size and strings must be UTF-8 without NUL;
// unknown critical attributes are refused, unknown others are kept.
func Decode(b []byte) (Message, error) {
	h, body, err := DecodeHeader(b)
	if err != nil {
		return Message{Header: h}, err
	}
	if h.Version != Version {
		return Message{Header: h}, bad("version %d, this side speaks %d", h.Version, Version)
	}
	m := Message{Header: h}
	if len(body) > 0 {
		m.Attrs = make([]Attr, 0, 12) // a pToken reply's count: one allocation
	}
	for len(body) > 0 {
		if len(m.Attrs) == MaxAttrs {
			return m, bad("more than %d attributes", MaxAttrs)
		}
		if len(body) < 4 {
			return m, bad("%d trailing bytes, too short for an attribute header", len(body))
		}
		t, n := binary.BigEndian.Uint16(body[0:2]), int(binary.BigEndian.Uint16(body[2:4]))
		if len(body)-4 < n {
			return m, bad("attribute %d says %d bytes, %d left", t, n, len(body)-4)
		}
		v := body[4 : 4+n]
		body = body[4+n:]
		if err := checkAttr(t, v); err != nil {
			return m, err
		}
		m.Attrs = append(m.Attrs, Attr{Type: t, Value: v})
	}
	return m, nil
}

func checkAttr(t uint16, v []byte) error {
	k, ok := attrKinds[t&^AttrCritical]
	if !ok {
		if t&AttrCritical != 0 {
			return bad("unknown critical attribute 0x%04x", t)
		}
		return nil
	}
	switch k {
	case kindString:
		if len(v) > MaxString {
			return bad("attribute %d: string of %d bytes, limit %d", t, len(v), MaxString)
		}
		if !utf8.Valid(v) {
			return bad("attribute %d: string is not UTF-8", t)
		}
		for _, c := range v {
			if c == 0 {
				return bad("attribute %d: string contains NUL", t)
			}
		}
	case kindAddr:
		if len(v) != 4 && len(v) != 16 {
			return bad("attribute %d: address of %d bytes, want 4 or 16", t, len(v))
		}
	case kindBlob:
		if len(v) > MaxBlob {
			return bad("attribute %d: %d bytes, limit %d", t, len(v), MaxBlob)
		}
	default:
		if want := fixedSize(k); len(v) != want {
			return bad("attribute %d: %d bytes, want %d", t, len(v), want)
		}
		if k == kindBool && v[0] > 1 {
			return bad("attribute %d: boolean %d, want 0 or 1", t, v[0])
		}
	}
	return nil
}

// fixedSize is the value size of a fixed-size kind.
func fixedSize(k kind) int {
	switch k {
	case kindU16:
		return 2
	case kindU64:
		return 8
	}
	return 1 // kindU8, kindBool
}

// Find returns the first attribute of type t (critical bit ignored).
func (m Message) Find(t uint16) ([]byte, bool) {
	for _, a := range m.Attrs {
		if a.Type&^AttrCritical == t {
			return a.Value, true
		}
	}
	return nil, false
}

// U64 returns attribute t as a number; ok is false when it is absent.
func (m Message) U64(t uint16) (uint64, bool) {
	v, ok := m.Find(t)
	if !ok || len(v) != 8 {
		return 0, false
	}
	return binary.BigEndian.Uint64(v), true
}

// U16 returns attribute t as a number.
func (m Message) U16(t uint16) (uint16, bool) {
	v, ok := m.Find(t)
	if !ok || len(v) != 2 {
		return 0, false
	}
	return binary.BigEndian.Uint16(v), true
}

// U8 returns attribute t as a byte.
func (m Message) U8(t uint16) (uint8, bool) {
	v, ok := m.Find(t)
	if !ok || len(v) != 1 {
		return 0, false
	}
	return v[0], true
}

// Bool returns attribute t; absent is false.
func (m Message) Bool(t uint16) bool {
	v, _ := m.U8(t)
	return v == 1
}

// String returns attribute t; absent is "".
func (m Message) String(t uint16) string {
	v, _ := m.Find(t)
	return string(v)
}

// Bytes returns a copy of attribute t.
func (m Message) Bytes(t uint16) []byte {
	v, ok := m.Find(t)
	if !ok {
		return nil
	}
	return append([]byte(nil), v...)
}

// Builder assembles one message. Add* methods are chainable; Bytes reports
// an attribute that exceeds a limit.
type Builder struct {
	buf []byte
	n   int
	err error
}

// NewBuilder starts a message of type t with request id id.
func NewBuilder(t Type, id uint32) *Builder {
	b := &Builder{buf: make([]byte, HeaderLen, 256)}
	binary.BigEndian.PutUint32(b.buf[0:4], Magic)
	b.buf[4] = Version
	b.buf[5] = byte(t)
	binary.BigEndian.PutUint32(b.buf[8:12], id)
	return b
}

// head appends the header of an attribute of n bytes; false when the
// message cannot take it (b.err says why).
func (b *Builder) head(t uint16, n int) bool {
	if b.err != nil {
		return false
	}
	if n > 0xFFFF || len(b.buf)+4+n > MaxMessage || b.n == MaxAttrs {
		b.err = fmt.Errorf("token API message too large at attribute %d", t)
		return false
	}
	b.buf = binary.BigEndian.AppendUint16(b.buf, t)
	b.buf = binary.BigEndian.AppendUint16(b.buf, uint16(n))
	b.n++
	return true
}

func (b *Builder) add(t uint16, v []byte) *Builder {
	if b.head(t, len(v)) {
		b.buf = append(b.buf, v...)
	}
	return b
}

// U64 adds a 64-bit number.
func (b *Builder) U64(t uint16, v uint64) *Builder {
	if b.head(t, 8) {
		b.buf = binary.BigEndian.AppendUint64(b.buf, v)
	}
	return b
}

// U16 adds a 16-bit number.
func (b *Builder) U16(t uint16, v uint16) *Builder {
	if b.head(t, 2) {
		b.buf = binary.BigEndian.AppendUint16(b.buf, v)
	}
	return b
}

// U8 adds a byte.
func (b *Builder) U8(t uint16, v uint8) *Builder {
	if b.head(t, 1) {
		b.buf = append(b.buf, v)
	}
	return b
}

// Bool adds a boolean.
func (b *Builder) Bool(t uint16, v bool) *Builder {
	if v {
		return b.U8(t, 1)
	}
	return b.U8(t, 0)
}

// String adds a string when it is not empty, truncated to MaxString at a
// rune boundary, NULs replaced by U+FFFD, so a reply always decodes.
func (b *Builder) String(t uint16, s string) *Builder {
	if s == "" {
		return b
	}
	if !cleanString(s) {
		s = SanitizeString(s)
	}
	if b.head(t, len(s)) {
		b.buf = append(b.buf, s...)
	}
	return b
}

// cleanString: s is already a valid string attribute (the usual case, so
// the builder copies it once, straight into the message).
func cleanString(s string) bool {
	return len(s) <= MaxString && utf8.ValidString(s) && strings.IndexByte(s, 0) < 0
}

// Blob adds bytes when there are any.
func (b *Builder) Blob(t uint16, v []byte) *Builder {
	if len(v) == 0 {
		return b
	}
	if len(v) > MaxBlob {
		b.err = fmt.Errorf("token API attribute %d: %d bytes, limit %d", t, len(v), MaxBlob)
		return b
	}
	return b.add(t, v)
}

// Bytes finishes the message.
func (b *Builder) Bytes() ([]byte, error) {
	if b.err != nil {
		return nil, b.err
	}
	binary.BigEndian.PutUint32(b.buf[12:16], uint32(len(b.buf)-HeaderLen))
	return b.buf, nil
}

// SanitizeString makes s a valid string attribute: UTF-8, no NUL, at most
// MaxString bytes.
func SanitizeString(s string) string {
	out := make([]byte, 0, len(s))
	for _, r := range s {
		if r == 0 {
			r = utf8.RuneError
		}
		if len(out)+utf8.RuneLen(r) > MaxString {
			break
		}
		out = utf8.AppendRune(out, r)
	}
	return string(out)
}

// Addr adds an IP address as 4 or 16 bytes (IPv4-mapped addresses are
// sent as IPv4); an invalid address is left out.
func (b *Builder) Addr(t uint16, a netip.Addr) *Builder {
	if !a.IsValid() {
		return b
	}
	return b.add(t, a.Unmap().AsSlice())
}

// Addr returns attribute t as an address.
func (m Message) Addr(t uint16) (netip.Addr, bool) {
	v, ok := m.Find(t)
	if !ok {
		return netip.Addr{}, false
	}
	return netip.AddrFromSlice(v)
}

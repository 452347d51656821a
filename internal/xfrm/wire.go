package xfrm

// Wire formats of the kernel's XFRM netlink messages (include/uapi/linux/
// xfrm.h). Structures are in host byte order except addresses, ports and
// SPIs (network order). Sizes and offsets are those of every 64-bit Linux
// ABI (and 32-bit ARM): __u64 fields are 8-byte aligned. They were checked
// with offsetof() against linux-libc-dev on amd64.

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

var ne = binary.NativeEndian

const (
	afUnspec = 0
	afInet   = 2
	afInet6  = 10

	sizeofNlmsghdr       = 16
	sizeofNlattr         = 4
	sizeofAddr           = 16
	sizeofID             = 24
	sizeofSelector       = 56
	sizeofLifetimeCfg    = 64
	sizeofLifetimeCur    = 32
	sizeofUserpolicyInfo = 168
	sizeofUserpolicyID   = 64
	sizeofUserAcquire    = 280
	sizeofUserTmpl       = 64
	sizeofUserSecCtx     = 8
	sizeofMark           = 8
	sizeofUserpolicyType = 6
	sizeofPolexpire      = 176
	sizeofUsersaInfo     = 224

	// XFRM_MSG_* message types.
	msgNewSA      = 0x10
	msgGetSA      = 0x12
	msgNewPolicy  = 0x13
	msgDelPolicy  = 0x14
	msgGetPolicy  = 0x15
	msgAcquire    = 0x17
	msgUpdPolicy  = 0x19
	msgPolExpire  = 0x1b
	nlmsgNoop     = 0x1
	nlmsgError    = 0x2
	nlmsgDone     = 0x3
	nlmsgOverrun  = 0x4
	nlaTypeMask   = 0x3fff
	infinite      = ^uint64(0)
	protoESP      = 50
	modeTransport = 0

	// XFRMA_* attribute types.
	attrTmpl        = 5
	attrSecCtx      = 8
	attrPolicyType  = 16
	attrMark        = 21
	attrSetMark     = 29
	attrSetMarkMask = 30
	attrIfID        = 31

	// XFRM_SC_* security context domain and algorithm.
	SecCtxDOILSM     = 1
	SecCtxAlgSELinux = 1
)

// Errors a DecodeError wraps.
var (
	// ErrTruncated: the input ends before a field does.
	ErrTruncated = errors.New("truncated")
	// ErrMalformed: a field holds a value the kernel never sends.
	ErrMalformed = errors.New("malformed")
)

// DecodeError says which field of which message could not be decoded, and
// where.
type DecodeError struct {
	Msg    string // the message or structure: "ACQUIRE", "policy", "security context"
	Field  string // e.g. "selector.family", "attribute XFRMA_TMPL"
	Offset int    // byte offset of the field in the input
	Reason string
	Err    error // ErrTruncated or ErrMalformed
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("xfrm: decode %s: %s at offset %d: %s (%v)", e.Msg, e.Field, e.Offset, e.Reason, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// dec reads fixed-layout structures from b with bounds checks. Offsets in
// errors are relative to the start of b plus base.
type dec struct {
	b    []byte
	base int
	msg  string
}

func (d dec) need(off, n int, field string) error {
	if off < 0 || n < 0 || off > len(d.b) || len(d.b)-off < n {
		have := len(d.b) - off
		if have < 0 {
			have = 0
		}
		return &DecodeError{Msg: d.msg, Field: field, Offset: d.base + off, Err: ErrTruncated,
			Reason: fmt.Sprintf("needs %d bytes, %d left", n, have)}
	}
	return nil
}

func (d dec) bad(off int, field, format string, args ...any) error {
	return &DecodeError{Msg: d.msg, Field: field, Offset: d.base + off, Err: ErrMalformed, Reason: fmt.Sprintf(format, args...)}
}

// addr reads an xfrm_address_t for family; invalid for AF_UNSPEC.
func addrOf(b []byte, family uint16) netip.Addr {
	switch family {
	case afInet:
		return netip.AddrFrom4([4]byte(b[:4]))
	case afInet6:
		return netip.AddrFrom16([16]byte(b[:16]))
	}
	return netip.Addr{}
}

func putAddr(b []byte, a netip.Addr) {
	clear(b[:sizeofAddr])
	if a.Is4() {
		v := a.As4()
		copy(b, v[:])
	} else if a.IsValid() {
		v := a.As16()
		copy(b, v[:])
	}
}

func familyOf(a netip.Addr) uint16 {
	switch {
	case a.Is4():
		return afInet
	case a.Is6():
		return afInet6
	}
	return afUnspec
}

func knownFamily(f uint16) bool { return f == afInet || f == afInet6 }

func addrBits(family uint16) int {
	if family == afInet6 {
		return 128
	}
	return 32
}

// selector is struct xfrm_selector, decoded.
type selector struct {
	src, dst         netip.Prefix // masked
	srcAddr, dstAddr netip.Addr   // as sent
	sport, dport     uint16
	proto            uint8
	ifindex          int32
	family           uint16
	sportMask, dmask uint16
}

// selector reads the xfrm_selector at off; parent names the structure it is
// part of ("" for the ACQUIRE's own "sel"). AF_UNSPEC gives invalid prefixes
// unless strict, which demands AF_INET or AF_INET6.
func (d dec) selector(off int, parent string, strict bool) (selector, error) {
	field := func(suffix string) string {
		if parent == "" {
			return "sel" + suffix
		}
		return parent + ".sel" + suffix
	}
	if len(d.b)-off < sizeofSelector || off < 0 {
		return selector{}, d.need(off, sizeofSelector, field(""))
	}
	b := d.b[off : off+sizeofSelector]
	var s selector
	s.family = ne.Uint16(b[40:])
	if !knownFamily(s.family) && (strict || s.family != afUnspec) {
		return selector{}, d.bad(off+40, field(".family"), "unknown address family %d (want 2 for IPv4 or 10 for IPv6)", s.family)
	}
	plenD, plenS := int(b[42]), int(b[43])
	if knownFamily(s.family) {
		max := addrBits(s.family)
		if plenD > max {
			return selector{}, d.bad(off+42, field(".prefixlen_d"), "prefix length %d exceeds %d", plenD, max)
		}
		if plenS > max {
			return selector{}, d.bad(off+43, field(".prefixlen_s"), "prefix length %d exceeds %d", plenS, max)
		}
		s.dstAddr, s.srcAddr = addrOf(b[0:], s.family), addrOf(b[16:], s.family)
		s.dst = netip.PrefixFrom(s.dstAddr, plenD).Masked()
		s.src = netip.PrefixFrom(s.srcAddr, plenS).Masked()
	}
	s.dport = binary.BigEndian.Uint16(b[32:])
	s.dmask = binary.BigEndian.Uint16(b[34:])
	s.sport = binary.BigEndian.Uint16(b[36:])
	s.sportMask = binary.BigEndian.Uint16(b[38:])
	if s.dmask == 0 {
		s.dport = 0
	}
	if s.sportMask == 0 {
		s.sport = 0
	}
	s.proto = b[44]
	s.ifindex = int32(ne.Uint32(b[48:]))
	return s, nil
}

// putSelector writes p's selector into b (56 bytes).
func putSelector(b []byte, p Policy) {
	clear(b[:sizeofSelector])
	q := p
	if p.Family() != 0 {
		q = p.normalized()
	}
	fam := familyOf(q.Dst.Addr())
	putAddr(b[0:], q.Dst.Addr())
	putAddr(b[16:], q.Src.Addr())
	if p.DstPort != 0 {
		binary.BigEndian.PutUint16(b[32:], p.DstPort)
		binary.BigEndian.PutUint16(b[34:], 0xffff)
	}
	if p.SrcPort != 0 {
		binary.BigEndian.PutUint16(b[36:], p.SrcPort)
		binary.BigEndian.PutUint16(b[38:], 0xffff)
	}
	ne.PutUint16(b[40:], fam)
	b[42] = uint8(max(q.Dst.Bits(), 0))
	b[43] = uint8(max(q.Src.Bits(), 0))
	b[44] = p.Proto
	ne.PutUint32(b[48:], uint32(p.Ifindex))
}

// userpolicyInfo reads struct xfrm_userpolicy_info at off into a Policy
// (without its attributes).
func (d dec) userpolicyInfo(off int, field string) (Policy, error) {
	if err := d.need(off, sizeofUserpolicyInfo, field); err != nil {
		return Policy{}, err
	}
	s, err := d.selector(off, field, false)
	if err != nil {
		return Policy{}, err
	}
	b := d.b[off : off+sizeofUserpolicyInfo]
	p := Policy{
		Src: s.src, Dst: s.dst, Proto: s.proto, SrcPort: s.sport, DstPort: s.dport, Ifindex: s.ifindex,
		Priority: ne.Uint32(b[152:]),
		Index:    ne.Uint32(b[156:]),
		Dir:      Dir(b[160]),
	}
	if hard := ne.Uint64(b[56+40:]); hard != 0 && hard != infinite {
		if hard > uint64(1<<63-1)/uint64(time.Second) {
			return Policy{}, d.bad(off+56+40, field+".lft.hard_add_expires_seconds", "%d seconds is out of range", hard)
		}
		p.Lifetime = time.Duration(hard) * time.Second
	}
	if add := ne.Uint64(b[120+16:]); add != 0 && add < 1<<62 {
		p.Added = time.Unix(int64(add), 0)
	}
	switch b[161] {
	case 0:
		p.Action = Allow
	case 1:
		p.Action = Block
	default:
		return Policy{}, d.bad(off+161, field+".action", "unknown action %d (want 0 allow or 1 block)", b[161])
	}
	if p.Dir > DirSocketOut+1 {
		// 0-2: in, out, fwd; 3-5: per-socket policies (XFRM_POLICY_MAX + dir).
		return Policy{}, d.bad(off+160, field+".dir", "unknown direction %d (want 0 in, 1 out, 2 fwd, 3-5 socket)", b[160])
	}
	return p, nil
}

// putUserpolicyInfo writes p as struct xfrm_userpolicy_info (168 bytes).
func putUserpolicyInfo(b []byte, p Policy) {
	clear(b[:sizeofUserpolicyInfo])
	putSelector(b, p)
	lft := b[56:]
	for i := 0; i < 4; i++ { // byte and packet limits: none
		ne.PutUint64(lft[i*8:], infinite)
	}
	ne.PutUint64(lft[40:], lifetimeSeconds(p.Lifetime)) // hard_add_expires_seconds
	ne.PutUint32(b[152:], p.Priority)
	if !p.Added.IsZero() && p.Added.Unix() > 0 {
		ne.PutUint64(b[120+16:], uint64(p.Added.Unix())) // curlft.add_time
	}
	ne.PutUint32(b[156:], p.Index)
	b[160] = uint8(p.Dir)
	if p.Action == Block {
		b[161] = 1
	}
}

// Template is struct xfrm_user_tmpl, decoded.
type Template struct {
	Proto    uint8 // 50 ESP, 51 AH, 108 IPComp
	SPI      uint32
	Dst, Src netip.Addr // invalid when wildcard (all zeros)
	Family   uint16
	ReqID    uint32
	Mode     uint8 // 0 transport, 1 tunnel, ...
	Optional bool
	AAlgos   uint32
	EAlgos   uint32
	CAlgos   uint32
}

func (d dec) templates(off, n int) ([]Template, error) {
	if n%sizeofUserTmpl != 0 {
		return nil, d.bad(off, "attribute XFRMA_TMPL", "length %d is not a multiple of %d (struct xfrm_user_tmpl)", n, sizeofUserTmpl)
	}
	ts := make([]Template, 0, n/sizeofUserTmpl)
	for i := 0; i < n; i += sizeofUserTmpl {
		b := d.b[off+i : off+i+sizeofUserTmpl]
		fam := ne.Uint16(b[24:])
		if !knownFamily(fam) && fam != afUnspec {
			return nil, d.bad(off+i+24, fmt.Sprintf("template[%d].family", i/sizeofUserTmpl), "unknown address family %d", fam)
		}
		t := Template{
			Proto:    b[20],
			SPI:      binary.BigEndian.Uint32(b[16:]),
			Family:   fam,
			ReqID:    ne.Uint32(b[44:]),
			Mode:     b[48],
			Optional: b[50] != 0,
			AAlgos:   ne.Uint32(b[52:]),
			EAlgos:   ne.Uint32(b[56:]),
			CAlgos:   ne.Uint32(b[60:]),
		}
		if a := addrOf(b[0:], fam); a.IsValid() && !a.IsUnspecified() {
			t.Dst = a
		}
		if a := addrOf(b[28:], fam); a.IsValid() && !a.IsUnspecified() {
			t.Src = a
		}
		ts = append(ts, t)
	}
	return ts, nil
}

// putTrapTemplate writes the trap's template: ESP, transport mode, wildcard
// addresses, every algorithm.
func putTrapTemplate(b []byte, family uint16, reqid uint32) {
	clear(b[:sizeofUserTmpl])
	b[20] = protoESP
	ne.PutUint16(b[24:], family)
	ne.PutUint32(b[44:], reqid)
	b[48] = modeTransport
	ne.PutUint32(b[52:], ^uint32(0))
	ne.PutUint32(b[56:], ^uint32(0))
	ne.PutUint32(b[60:], ^uint32(0))
}

// attr is one netlink attribute: its type (flags masked off), payload
// offset in the input and length.
type attr struct {
	typ      uint16
	off, len int
}

// attrs splits a run of netlink attributes from off to the end of d.b.
func (d dec) attrs(off int) ([]attr, error) {
	var as []attr
	for off < len(d.b) {
		if err := d.need(off, sizeofNlattr, "attribute header"); err != nil {
			return nil, err
		}
		l := int(ne.Uint16(d.b[off:]))
		typ := ne.Uint16(d.b[off+2:]) & nlaTypeMask
		if l < sizeofNlattr {
			return nil, d.bad(off, "attribute header", "length %d is shorter than the 4-byte header", l)
		}
		if len(d.b)-off < l {
			return nil, d.need(off, l, "attribute "+attrName(typ))
		}
		as = append(as, attr{typ: typ, off: off + sizeofNlattr, len: l - sizeofNlattr})
		next := off + align4(l)
		if next > len(d.b) { // the last attribute may lack its padding
			next = len(d.b)
		}
		off = next
	}
	return as, nil
}

func attrName(t uint16) string {
	switch t {
	case attrTmpl:
		return "XFRMA_TMPL"
	case attrSecCtx:
		return "XFRMA_SEC_CTX"
	case attrPolicyType:
		return "XFRMA_POLICY_TYPE"
	case attrMark:
		return "XFRMA_MARK"
	case attrSetMark:
		return "XFRMA_SET_MARK"
	case attrSetMarkMask:
		return "XFRMA_SET_MARK_MASK"
	case attrIfID:
		return "XFRMA_IF_ID"
	}
	return fmt.Sprintf("type %d", t)
}

func align4(n int) int { return (n + 3) &^ 3 }

// appendAttr appends a netlink attribute with payload.
func appendAttr(b []byte, typ uint16, payload []byte) []byte {
	l := sizeofNlattr + len(payload)
	b = ne.AppendUint16(b, uint16(l))
	b = ne.AppendUint16(b, typ)
	b = append(b, payload...)
	for i := l; i < align4(l); i++ {
		b = append(b, 0)
	}
	return b
}

func u32Payload(v uint32) []byte { return ne.AppendUint32(nil, v) }

func markPayload(v, m uint32) []byte { return ne.AppendUint32(ne.AppendUint32(nil, v), m) }

// policyAttrs holds the attributes a policy message or ACQUIRE may carry.
type policyAttrs struct {
	tmpls      []Template
	secCtx     *SecCtx
	policyType uint8
	mark, mask uint32
	setMark    uint32
	setMask    uint32
	ifID       uint32
}

// policyAttrs decodes the attributes from off; unknown types are skipped
// (newer kernels add attributes).
func (d dec) policyAttrs(off int) (policyAttrs, error) {
	as, err := d.attrs(off)
	if err != nil {
		return policyAttrs{}, err
	}
	var pa policyAttrs
	for _, a := range as {
		fixed := func(n int) error {
			if a.len < n {
				return d.bad(a.off-sizeofNlattr, "attribute "+attrName(a.typ), "payload of %d bytes, needs %d", a.len, n)
			}
			return nil
		}
		switch a.typ {
		case attrTmpl:
			if pa.tmpls, err = d.templates(a.off, a.len); err != nil {
				return policyAttrs{}, err
			}
		case attrSecCtx:
			c, err := parseSecCtx(d.b[a.off:a.off+a.len], d.base+a.off)
			if err != nil {
				return policyAttrs{}, err
			}
			pa.secCtx = &c
		case attrPolicyType:
			if err := fixed(sizeofUserpolicyType); err != nil {
				return policyAttrs{}, err
			}
			pa.policyType = d.b[a.off]
		case attrMark:
			if err := fixed(sizeofMark); err != nil {
				return policyAttrs{}, err
			}
			pa.mark, pa.mask = ne.Uint32(d.b[a.off:]), ne.Uint32(d.b[a.off+4:])
		case attrSetMark, attrSetMarkMask, attrIfID:
			if err := fixed(4); err != nil {
				return policyAttrs{}, err
			}
			v := ne.Uint32(d.b[a.off:])
			switch a.typ {
			case attrSetMark:
				pa.setMark = v
			case attrSetMarkMask:
				pa.setMask = v
			default:
				pa.ifID = v
			}
		}
	}
	return pa, nil
}

// ParsePolicy decodes the payload of an XFRM_MSG_NEWPOLICY (as in a dump or
// a GETPOLICY answer): struct xfrm_userpolicy_info and its attributes. A
// policy with templates is reported as a Trap.
func ParsePolicy(b []byte) (Policy, error) {
	return parsePolicyAt(b, 0)
}

func parsePolicyAt(b []byte, base int) (Policy, error) {
	d := dec{b: b, base: base, msg: "policy"}
	p, err := d.userpolicyInfo(0, "xfrm_userpolicy_info")
	if err != nil {
		return Policy{}, err
	}
	pa, err := d.policyAttrs(sizeofUserpolicyInfo)
	if err != nil {
		return Policy{}, err
	}
	pa.apply(&p)
	return p, nil
}

func (pa policyAttrs) apply(p *Policy) {
	if len(pa.tmpls) > 0 {
		p.ReqID = pa.tmpls[0].ReqID
		if p.Action == Allow {
			p.Action = Trap
		}
	}
	if pa.secCtx != nil {
		p.SecCtx = pa.secCtx.Context
	}
	p.Mark, p.MarkMask, p.IfID = pa.mark, pa.mask, pa.ifID
}

// MarshalPolicy encodes p as the payload of an XFRM_MSG_NEWPOLICY or
// XFRM_MSG_UPDPOLICY request: struct xfrm_userpolicy_info, the trap's
// template, the security context and the mark.
func MarshalPolicy(p Policy) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b := make([]byte, sizeofUserpolicyInfo, sizeofUserpolicyInfo+sizeofNlattr+sizeofUserTmpl+64)
	putUserpolicyInfo(b, p)
	if p.Action == Trap {
		var t [sizeofUserTmpl]byte
		putTrapTemplate(t[:], familyOf(p.normalized().Dst.Addr()), p.ReqID)
		b = appendAttr(b, attrTmpl, t[:])
	}
	return appendIdentityAttrs(b, p)
}

// appendIdentityAttrs appends what, besides the selector and direction,
// identifies a policy in the kernel: security context, mark, if_id.
func appendIdentityAttrs(b []byte, p Policy) ([]byte, error) {
	if p.SecCtx != "" {
		c, err := MarshalSecCtx(SecCtx{Context: p.SecCtx})
		if err != nil {
			return nil, err
		}
		b = appendAttr(b, attrSecCtx, c)
	}
	q := p.normalized()
	if q.Mark != 0 || q.MarkMask != 0 {
		b = appendAttr(b, attrMark, markPayload(q.Mark, q.MarkMask))
	}
	if p.IfID != 0 {
		b = appendAttr(b, attrIfID, u32Payload(p.IfID))
	}
	return b, nil
}

// marshalPolicyID encodes a lookup key for XFRM_MSG_GETPOLICY or
// XFRM_MSG_DELPOLICY: by index when p.Index is set (the kernel then ignores
// the selector), else by selector, direction and identity attributes.
func marshalPolicyID(p Policy) ([]byte, error) {
	b := make([]byte, sizeofUserpolicyID, sizeofUserpolicyID+64)
	if p.Index == 0 {
		putSelector(b, p)
	}
	ne.PutUint32(b[56:], p.Index)
	b[60] = uint8(p.Dir)
	if p.Index != 0 {
		// By index, the kernel still matches mark and if_id.
		p.SecCtx = ""
	}
	return appendIdentityAttrs(b, p)
}

// ParsePolExpire decodes an XFRM_MSG_POLEXPIRE payload: the expired policy
// and whether the hard limit was reached (the kernel then deleted it).
func ParsePolExpire(b []byte) (Policy, bool, error) {
	d := dec{b: b, msg: "POLEXPIRE"}
	p, err := d.userpolicyInfo(0, "xfrm_user_polexpire.pol")
	if err != nil {
		return Policy{}, false, err
	}
	if err := d.need(sizeofUserpolicyInfo, 1, "xfrm_user_polexpire.hard"); err != nil {
		return Policy{}, false, err
	}
	hard := b[sizeofUserpolicyInfo] != 0
	if len(b) > sizeofPolexpire {
		pa, err := d.policyAttrs(sizeofPolexpire)
		if err != nil {
			return Policy{}, false, err
		}
		pa.apply(&p)
	}
	return p, hard, nil
}

// nlmsg is one netlink message: header fields and payload.
type nlmsg struct {
	typ, flags uint16
	seq, pid   uint32
	payload    []byte
	off        int // payload offset in the datagram
}

// splitMessages splits a netlink datagram into messages.
func splitMessages(b []byte) ([]nlmsg, error) {
	d := dec{b: b, msg: "netlink datagram"}
	var ms []nlmsg
	off := 0
	for off < len(b) {
		if err := d.need(off, sizeofNlmsghdr, "nlmsghdr"); err != nil {
			return ms, err
		}
		l := int(ne.Uint32(b[off:]))
		if l < sizeofNlmsghdr {
			return ms, d.bad(off, "nlmsghdr.nlmsg_len", "length %d is shorter than the 16-byte header", l)
		}
		if err := d.need(off, l, "netlink message"); err != nil {
			return ms, err
		}
		ms = append(ms, nlmsg{
			typ: ne.Uint16(b[off+4:]), flags: ne.Uint16(b[off+6:]),
			seq: ne.Uint32(b[off+8:]), pid: ne.Uint32(b[off+12:]),
			payload: b[off+sizeofNlmsghdr : off+l], off: off + sizeofNlmsghdr,
		})
		next := off + align4(l)
		if next > len(b) {
			next = len(b)
		}
		off = next
	}
	return ms, nil
}

// appendMessage appends a netlink message.
func appendMessage(b []byte, typ, flags uint16, seq, pid uint32, payload []byte) []byte {
	l := sizeofNlmsghdr + len(payload)
	b = ne.AppendUint32(b, uint32(l))
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, flags)
	b = ne.AppendUint32(b, seq)
	b = ne.AppendUint32(b, pid)
	b = append(b, payload...)
	for i := l; i < align4(l); i++ {
		b = append(b, 0)
	}
	return b
}

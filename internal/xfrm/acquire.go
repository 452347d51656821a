package xfrm

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"time"
)

// Pair is the key of an ACQUIRE: the trapped packet's source and
// destination addresses. Never key on the first packet's protocol or ports:
// it is often a probe, and the tunnel obold negotiates is for the pair.
type Pair struct{ Src, Dst netip.Addr }

func (p Pair) String() string { return p.Src.String() + "->" + p.Dst.String() }

// Acquire is a decoded XFRM_MSG_ACQUIRE: the kernel asks for an SA because a
// packet hit a policy with a template and no SA exists yet.
type Acquire struct {
	// Src and Dst are the trapped packet's addresses (the larval state's
	// selector). Pair() is the key.
	Src, Dst netip.Addr
	// The first packet's protocol, ports and output device: for logs only.
	Proto            uint8
	SrcPort, DstPort uint16
	Ifindex          int32

	// The SA the kernel asks for: xfrm_id (protocol, SPI, destination) and
	// source. For transport-mode templates these are the packet's addresses.
	SAProto      uint8
	SPI          uint32
	SASrc, SADst netip.Addr

	// Policy is the policy that trapped the packet (its selector, priority
	// and index: Owner.Owns tells whether it is obold's trap), with its mark
	// and if_id. Templates are all of the policy's templates.
	Policy    Policy
	Templates []Template

	AAlgos, EAlgos, CAlgos uint32
	// Seq is the kernel's ACQUIRE sequence number (the larval state's km.seq).
	Seq uint32
	// ReqID is the trapping template's request id (the first template's;
	// obold's traps have one): Owner.ReqID() for obold's traps.
	ReqID uint32
	// SecCtx is the flow's security context: the SA to negotiate must carry
	// it (labeled IPsec). nil for unlabeled traffic.
	SecCtx     *SecCtx
	PolicyType uint8 // 0 main, 1 sub
	// SetMark and SetMarkMask are the output mark the state will set (rare).
	SetMark, SetMarkMask uint32

	// Received is when the Listener read it.
	Received time.Time
	// Recovered is set on acquires the Listener rebuilt from larval states
	// after the kernel dropped messages (ENOBUFS): they carry no policy.
	Recovered bool
}

// Pair is the ACQUIRE's key.
func (a Acquire) Pair() Pair { return Pair{Src: a.Src, Dst: a.Dst} }

func (a Acquire) String() string {
	s := fmt.Sprintf("acquire %s proto %d", a.Pair(), a.Proto)
	if a.SrcPort != 0 || a.DstPort != 0 {
		s += fmt.Sprintf(" sport %d dport %d", a.SrcPort, a.DstPort)
	}
	s += fmt.Sprintf(" seq %d policy prio %d index %#x", a.Seq, a.Policy.Priority, a.Policy.Index)
	if a.SecCtx != nil {
		s += fmt.Sprintf(" ctx %q", a.SecCtx.Context)
	}
	return s
}

// ParseAcquire decodes the payload of an XFRM_MSG_ACQUIRE message (what
// follows the nlmsghdr): struct xfrm_user_acquire, then the attributes
// XFRMA_TMPL, XFRMA_SEC_CTX, XFRMA_POLICY_TYPE, XFRMA_MARK, XFRMA_SET_MARK,
// XFRMA_SET_MARK_MASK and XFRMA_IF_ID. Unknown attributes are skipped. It
// never panics; a *DecodeError names the field and offset at fault.
func ParseAcquire(b []byte) (Acquire, error) { return parseAcquireAt(b, 0) }

func parseAcquireAt(b []byte, base int) (Acquire, error) {
	d := dec{b: b, base: base, msg: "ACQUIRE"}
	if err := d.need(0, sizeofUserAcquire, "xfrm_user_acquire"); err != nil {
		return Acquire{}, err
	}
	sel, err := d.selector(40, "", true)
	if err != nil {
		return Acquire{}, err
	}
	pol, err := d.userpolicyInfo(96, "policy")
	if err != nil {
		return Acquire{}, err
	}
	pa, err := d.policyAttrs(sizeofUserAcquire)
	if err != nil {
		return Acquire{}, err
	}
	a := Acquire{
		Src: sel.srcAddr, Dst: sel.dstAddr,
		Proto: sel.proto, SrcPort: sel.sport, DstPort: sel.dport, Ifindex: sel.ifindex,
		SAProto: b[20], SPI: binary.BigEndian.Uint32(b[16:]),
		Policy: pol, Templates: pa.tmpls,
		AAlgos: ne.Uint32(b[264:]), EAlgos: ne.Uint32(b[268:]), CAlgos: ne.Uint32(b[272:]),
		Seq:    ne.Uint32(b[276:]),
		SecCtx: pa.secCtx, PolicyType: pa.policyType,
		SetMark: pa.setMark, SetMarkMask: pa.setMask,
	}
	if len(a.Templates) > 0 {
		a.ReqID = a.Templates[0].ReqID
		a.Policy.ReqID = a.ReqID
		if a.Policy.Action == Allow {
			a.Policy.Action = Trap
		}
	}
	a.Policy.Mark, a.Policy.MarkMask, a.Policy.IfID = pa.mark, pa.mask, pa.ifID
	fam := sel.family
	if len(a.Templates) > 0 && knownFamily(a.Templates[0].Family) {
		fam = a.Templates[0].Family
	}
	a.SADst = addrOf(b[0:], fam)
	a.SASrc = addrOf(b[24:], fam)
	return a, nil
}

// MarshalBinary encodes a as the kernel would send it (the message
// payload). Tests and fakes use it to feed the decoder.
func (a Acquire) MarshalBinary() ([]byte, error) {
	if !a.Src.IsValid() || !a.Dst.IsValid() || a.Src.Is4() != a.Dst.Is4() {
		return nil, fmt.Errorf("xfrm: marshal ACQUIRE: Src %s and Dst %s must be valid addresses of one family", a.Src, a.Dst)
	}
	b := make([]byte, sizeofUserAcquire, sizeofUserAcquire+256)
	putAddr(b[0:], a.SADst)
	binary.BigEndian.PutUint32(b[16:], a.SPI)
	b[20] = a.SAProto
	putAddr(b[24:], a.SASrc)
	sel := Policy{
		Src: netip.PrefixFrom(a.Src, a.Src.BitLen()), Dst: netip.PrefixFrom(a.Dst, a.Dst.BitLen()),
		Proto: a.Proto, SrcPort: a.SrcPort, DstPort: a.DstPort, Ifindex: a.Ifindex,
	}
	putSelector(b[40:], sel)
	putUserpolicyInfo(b[96:], a.Policy)
	ne.PutUint32(b[264:], a.AAlgos)
	ne.PutUint32(b[268:], a.EAlgos)
	ne.PutUint32(b[272:], a.CAlgos)
	ne.PutUint32(b[276:], a.Seq)
	if len(a.Templates) > 0 {
		t := make([]byte, len(a.Templates)*sizeofUserTmpl)
		for i, tm := range a.Templates {
			putTemplate(t[i*sizeofUserTmpl:], tm)
		}
		b = appendAttr(b, attrTmpl, t)
	}
	if a.SecCtx != nil {
		c, err := appendSecCtxRaw(*a.SecCtx)
		if err != nil {
			return nil, err
		}
		b = appendAttr(b, attrSecCtx, c)
	}
	if a.PolicyType != 0 {
		b = appendAttr(b, attrPolicyType, []byte{a.PolicyType, 0, 0, 0, 0, 0})
	}
	if a.Policy.Mark != 0 || a.Policy.MarkMask != 0 {
		b = appendAttr(b, attrMark, markPayload(a.Policy.Mark, a.Policy.MarkMask))
	}
	if a.SetMark != 0 {
		b = appendAttr(b, attrSetMark, u32Payload(a.SetMark))
	}
	if a.SetMarkMask != 0 {
		b = appendAttr(b, attrSetMarkMask, u32Payload(a.SetMarkMask))
	}
	if a.Policy.IfID != 0 {
		b = appendAttr(b, attrIfID, u32Payload(a.Policy.IfID))
	}
	return b, nil
}

func putTemplate(b []byte, t Template) {
	clear(b[:sizeofUserTmpl])
	putAddr(b[0:], t.Dst)
	binary.BigEndian.PutUint32(b[16:], t.SPI)
	b[20] = t.Proto
	ne.PutUint16(b[24:], t.Family)
	putAddr(b[28:], t.Src)
	ne.PutUint32(b[44:], t.ReqID)
	b[48] = t.Mode
	if t.Optional {
		b[50] = 1
	}
	ne.PutUint32(b[52:], t.AAlgos)
	ne.PutUint32(b[56:], t.EAlgos)
	ne.PutUint32(b[60:], t.CAlgos)
}

// appendSecCtxRaw encodes c exactly (no defaults, no kernel limits), for
// re-encoding what was decoded.
func appendSecCtxRaw(c SecCtx) ([]byte, error) {
	n := len(c.Context) + 1
	if sizeofUserSecCtx+n > 0xffff-sizeofNlattr {
		return nil, fmt.Errorf("xfrm: security context of %d bytes does not fit a netlink attribute", len(c.Context))
	}
	b := make([]byte, sizeofUserSecCtx, sizeofUserSecCtx+n)
	ne.PutUint16(b[0:], uint16(sizeofUserSecCtx+n))
	ne.PutUint16(b[2:], attrSecCtx)
	b[4], b[5] = c.Alg, c.DOI
	ne.PutUint16(b[6:], uint16(n))
	b = append(b, c.Context...)
	return append(b, 0), nil
}

// DecodeAcquires decodes every XFRM_MSG_ACQUIRE in a netlink datagram as
// read from an XFRMNLGRP_ACQUIRE socket; other message types are skipped.
// It returns what it could decode and the errors of what it could not.
func DecodeAcquires(datagram []byte) ([]Acquire, []error) {
	ms, err := splitMessages(datagram)
	var errs []error
	if err != nil {
		errs = append(errs, err)
	}
	var as []Acquire
	for _, m := range ms {
		if m.typ != msgAcquire {
			continue
		}
		a, err := parseAcquireAt(m.payload, m.off)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		as = append(as, a)
	}
	return as, errs
}

// parseLarval decodes an XFRM_MSG_NEWSA payload from a state dump and, when
// it is a larval (ACQUIRE) state — SPI 0 — rebuilds the Acquire it stands
// for. ok is false for real SAs.
func parseLarval(b []byte) (a Acquire, ok bool, err error) {
	d := dec{b: b, msg: "state"}
	if err := d.need(0, sizeofUsersaInfo, "xfrm_usersa_info"); err != nil {
		return Acquire{}, false, err
	}
	if binary.BigEndian.Uint32(b[56+16:]) != 0 {
		return Acquire{}, false, nil
	}
	sel, err := d.selector(0, "", false)
	if err != nil || !knownFamily(sel.family) {
		return Acquire{}, false, err
	}
	fam := ne.Uint16(b[212:])
	if !knownFamily(fam) {
		fam = sel.family
	}
	a = Acquire{
		Src: sel.srcAddr, Dst: sel.dstAddr,
		Proto: sel.proto, SrcPort: sel.sport, DstPort: sel.dport, Ifindex: sel.ifindex,
		SAProto: b[56+20],
		SADst:   addrOf(b[56:], fam), SASrc: addrOf(b[80:], fam),
		Seq:       ne.Uint32(b[204:]),
		ReqID:     ne.Uint32(b[208:]),
		Recovered: true,
	}
	if len(b) > sizeofUsersaInfo {
		pa, err := d.policyAttrs(sizeofUsersaInfo)
		if err != nil {
			return Acquire{}, false, err
		}
		a.SecCtx = pa.secCtx
	}
	return a, true, nil
}

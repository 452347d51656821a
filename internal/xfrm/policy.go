package xfrm

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/obol-ipsec/obol/plugins"
)

// Dir is a policy direction, with the kernel's numbering (XFRM_POLICY_IN...).
type Dir uint8

const (
	DirIn  Dir = 0
	DirOut Dir = 1
	DirFwd Dir = 2
	// Per-socket policies (setsockopt IP_XFRM_POLICY, as charon's
	// kernel-netlink sets on its IKE sockets) appear in SPD dumps with these
	// directions. obold never installs them.
	DirSocketIn  Dir = 3
	DirSocketOut Dir = 4
)

func (d Dir) String() string {
	switch d {
	case DirIn:
		return "in"
	case DirOut:
		return "out"
	case DirFwd:
		return "fwd"
	case DirSocketIn:
		return "socket in"
	case DirSocketOut:
		return "socket out"
	}
	return fmt.Sprintf("dir%d", uint8(d))
}

// ParseDir reads "in", "out" or "fwd".
func ParseDir(s string) (Dir, error) {
	switch s {
	case "in":
		return DirIn, nil
	case "out":
		return DirOut, nil
	case "fwd":
		return DirFwd, nil
	}
	return 0, fmt.Errorf("xfrm: unknown policy direction %q; use \"in\", \"out\" or \"fwd\"", s)
}

// Action is what a policy does with matching packets.
type Action uint8

const (
	// Allow lets packets pass in the clear (a bypass or "pass" shunt).
	Allow Action = iota
	// Block drops packets (a "drop" shunt).
	Block
	// Trap requires ESP: the policy carries a transport-mode ESP template with
	// wildcard addresses, so the first packet of every (src, dst) pair without
	// an SA raises one ACQUIRE and is held or dropped (net.core.xfrm_larval_drop).
	Trap
)

func (a Action) String() string {
	switch a {
	case Allow:
		return "allow"
	case Block:
		return "block"
	case Trap:
		return "trap"
	}
	return fmt.Sprintf("action%d", uint8(a))
}

// ParseAction reads "allow", "block" or "trap".
func ParseAction(s string) (Action, error) {
	switch s {
	case "allow":
		return Allow, nil
	case "block":
		return Block, nil
	case "trap":
		return Trap, nil
	}
	return 0, fmt.Errorf("xfrm: unknown policy action %q; use \"allow\", \"block\" or \"trap\"", s)
}

// Policy is one XFRM policy: what obold installs, or what the kernel holds.
//
// The kernel identifies a policy by (Dir, selector, Mark, IfID, SecCtx); the
// priority is not part of its identity. Two policies with the same identity
// cannot coexist.
type Policy struct {
	Src, Dst netip.Prefix // selector; an invalid Src means "any" of Dst's family
	Proto    uint8        // 0: any protocol
	SrcPort  uint16       // 0: any; needs Proto (TCP, UDP, SCTP, ...)
	DstPort  uint16
	Dir      Dir
	Action   Action
	Priority uint32 // lower number = higher precedence

	// Mark and MarkMask MATCH the packet's skb mark: a policy with a mark
	// applies only to packets carrying it. It is a selector, not a tag.
	// Install uses MarkMask 0xffffffff when Mark is set and MarkMask is 0.
	Mark, MarkMask uint32
	// IfID matches packets routed through the xfrm interface with this id
	// (0: ordinary traffic). obold never sets it; it is reported for
	// policies others installed.
	IfID uint32

	// Lifetime, when positive, makes the kernel delete the policy that long
	// after it was added (hard add-expires, whole seconds, rounded up).
	Lifetime time.Duration
	// SecCtx is the security context (labeled IPsec), "" for none. Kernels
	// without an active LSM accept it and drop it silently.
	SecCtx string

	// ReqID is a trap template's request id. The Installer sets
	// Owner.ReqID() unless it is one of obold's already (a later
	// generation, NextReqID), so that larval states of obold's traps can be told from
	// others' (a larval state names no policy). Not part of the identity.
	ReqID uint32

	// Set by the kernel, filled in by lists and lookups.
	Index   uint32    // the kernel's policy index; obold's own carry its tag
	Added   time.Time // when the kernel added it (second resolution)
	Ifindex int32     // selector output device; 0 for any
}

// String is close to `ip xfrm policy` output.
func (p Policy) String() string {
	q := p.normalized()
	s := fmt.Sprintf("src %s dst %s", q.Src, q.Dst)
	if p.Proto != 0 {
		s += fmt.Sprintf(" proto %d", p.Proto)
	}
	if p.SrcPort != 0 {
		s += fmt.Sprintf(" sport %d", p.SrcPort)
	}
	if p.DstPort != 0 {
		s += fmt.Sprintf(" dport %d", p.DstPort)
	}
	s += fmt.Sprintf(" dir %s %s priority %d", p.Dir, p.Action, p.Priority)
	if p.Mark != 0 || p.MarkMask != 0 {
		s += fmt.Sprintf(" mark %#x/%#x", p.Mark, p.MarkMask)
	}
	if p.IfID != 0 {
		s += fmt.Sprintf(" if_id %#x", p.IfID)
	}
	if p.SecCtx != "" {
		s += fmt.Sprintf(" ctx %q", p.SecCtx)
	}
	if p.Lifetime > 0 {
		s += fmt.Sprintf(" lifetime %s", p.Lifetime)
	}
	if p.Index != 0 {
		s += fmt.Sprintf(" index %#x", p.Index)
	}
	return s
}

// Family is 4 or 6, from Dst (or Src when Dst is unset), 0 when neither is set.
func (p Policy) Family() int {
	a := p.Dst.Addr()
	if !p.Dst.IsValid() {
		a = p.Src.Addr()
	}
	switch {
	case a.Is4():
		return 4
	case a.Is6():
		return 6
	}
	return 0
}

func anyPrefix(family int) netip.Prefix {
	if family == 6 {
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
}

// normalized fills "any" selectors, masks prefixes and sets the default
// mark mask, so that equal policies compare equal.
func (p Policy) normalized() Policy {
	fam := p.Family()
	if !p.Src.IsValid() {
		p.Src = anyPrefix(fam)
	}
	if !p.Dst.IsValid() {
		p.Dst = anyPrefix(fam)
	}
	p.Src, p.Dst = p.Src.Masked(), p.Dst.Masked()
	if p.Mark != 0 && p.MarkMask == 0 {
		p.MarkMask = 0xffffffff
	}
	return p
}

// lifetimeSeconds is the kernel's hard add-expires for d.
func lifetimeSeconds(d time.Duration) uint64 {
	if d <= 0 {
		return 0
	}
	return uint64((d + time.Second - 1) / time.Second)
}

// Validate says what is wrong with p as a policy to install, and what to
// write instead.
func (p Policy) Validate() error {
	var errs []error
	if !p.Dst.IsValid() && !p.Src.IsValid() {
		errs = append(errs, errors.New("no address family: set Dst (or Src), e.g. 10.99.0.0/16 or 0.0.0.0/0"))
	}
	if p.Src.IsValid() && p.Dst.IsValid() && p.Src.Addr().Is4() != p.Dst.Addr().Is4() {
		errs = append(errs, fmt.Errorf("Src %s and Dst %s are of different address families: use two policies", p.Src, p.Dst))
	}
	for _, pf := range []netip.Prefix{p.Src, p.Dst} {
		if pf.IsValid() && pf.Addr().Is4In6() {
			errs = append(errs, fmt.Errorf("%s is an IPv4-mapped IPv6 prefix: write the IPv4 prefix", pf))
		}
		if pf.IsValid() && pf.Addr().Zone() != "" {
			errs = append(errs, fmt.Errorf("%s has a zone: XFRM selectors have none", pf))
		}
	}
	if (p.SrcPort != 0 || p.DstPort != 0) && !portProto(p.Proto) && !icmpProto(p.Proto) {
		errs = append(errs, fmt.Errorf("ports need a protocol with ports (TCP 6, UDP 17, DCCP 33, SCTP 132, UDP-Lite 136) or ICMP (1, 58: SrcPort is the type, DstPort the code), not %d", p.Proto))
	}
	if (p.SrcPort > 0xff || p.DstPort > 0xff) && icmpProto(p.Proto) {
		errs = append(errs, fmt.Errorf("ICMP type %d or code %d is above 255: for ICMP SrcPort is the type and DstPort the code", p.SrcPort, p.DstPort))
	}
	if icmpProto(p.Proto) && (p.Proto == ProtoICMPv6) != (p.Family() == 6) {
		errs = append(errs, fmt.Errorf("protocol %d does not fit an IPv%d selector: ICMP is 1 for IPv4, 58 for IPv6", p.Proto, p.Family()))
	}
	if p.Dir > DirFwd {
		errs = append(errs, fmt.Errorf("direction %d: use DirIn, DirOut or DirFwd", p.Dir))
	}
	if p.Action > Trap {
		errs = append(errs, fmt.Errorf("action %d: use Allow, Block or Trap", p.Action))
	}
	if p.Action == Trap && p.Dir != DirOut {
		errs = append(errs, fmt.Errorf("a trap must be dir out (a %s trap never raises an ACQUIRE and drops traffic)", p.Dir))
	}
	if p.Lifetime < 0 {
		errs = append(errs, fmt.Errorf("negative lifetime %s: use 0 for none", p.Lifetime))
	}
	if p.SecCtx != "" {
		if _, err := MarshalSecCtx(SecCtx{Context: p.SecCtx}); err != nil {
			errs = append(errs, err)
		}
	}
	if p.IfID != 0 {
		errs = append(errs, errors.New("IfID is set: obold's policies must match ordinary traffic; leave IfID 0"))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("xfrm: invalid policy %s: %w", p, errors.Join(errs...))
}

// ICMP protocol numbers. In an XFRM selector an ICMP message's type takes
// the source port's place and its code the destination port's (the
// kernel's flow keys do the same).
const (
	ProtoICMP   uint8 = 1
	ProtoICMPv6 uint8 = 58
)

func icmpProto(proto uint8) bool { return proto == ProtoICMP || proto == ProtoICMPv6 }

func portProto(proto uint8) bool {
	switch proto {
	case 6, 17, 33, 132, 136:
		return true
	}
	return false
}

// FromPlugin converts the contract's policy. Unknown Dir or Action strings
// are errors.
func FromPlugin(p plugins.Policy) (Policy, error) {
	dir, err := ParseDir(p.Dir)
	if err != nil {
		return Policy{}, err
	}
	act, err := ParseAction(p.Action)
	if err != nil {
		return Policy{}, err
	}
	return Policy{
		Src: p.Src, Dst: p.Dst, Proto: p.Proto, SrcPort: p.SrcPort, DstPort: p.DstPort,
		Dir: dir, Action: act, Priority: p.Priority, Mark: p.Mark,
		Lifetime: p.Lifetime, SecCtx: p.Label,
	}, nil
}

// Plugin converts to the contract's policy (the mark mask, if_id, index
// and times are not part of it).
func (p Policy) Plugin() plugins.Policy {
	q := p.normalized()
	return plugins.Policy{
		Src: q.Src, Dst: q.Dst, Proto: p.Proto, SrcPort: p.SrcPort, DstPort: p.DstPort,
		Dir: p.Dir.String(), Action: p.Action.String(), Priority: p.Priority, Mark: p.Mark,
		Lifetime: p.Lifetime, Label: p.SecCtx,
	}
}

// IKEBypass returns allow policies for IKE (UDP 500 and 4500, from and to,
// in and out) for one family (4 or 6) at priority prio. With the userspace
// datapath charon's own sockets are not exempt from kernel policies, so a
// catch-all trap would otherwise swallow IKE.
func IKEBypass(family int, prio uint32) []Policy {
	anyp := anyPrefix(family)
	var ps []Policy
	for _, dir := range []Dir{DirOut, DirIn} {
		for _, port := range []uint16{500, 4500} {
			ps = append(ps,
				Policy{Src: anyp, Dst: anyp, Proto: 17, DstPort: port, Dir: dir, Action: Allow, Priority: prio},
				Policy{Src: anyp, Dst: anyp, Proto: 17, SrcPort: port, Dir: dir, Action: Allow, Priority: prio},
			)
		}
	}
	return ps
}

// ICMPv6 message types IPv6 itself needs (RFC 4861): router solicitation
// and advertisement, neighbour solicitation and advertisement, redirect.
const (
	icmpv6RouterSolicit = 133
	icmpv6Redirect      = 137
)

// LinkLocal6 and Multicast6 are the IPv6 destinations that never leave the
// link or never have a single peer: OE cannot apply to them.
var (
	LinkLocal6 = netip.MustParsePrefix("fe80::/10")
	Multicast6 = netip.MustParsePrefix("ff00::/8")
)

// IPv6Bypass returns the allow policies that keep IPv6 working under a trap
// for ::/0 at priority prio: neighbour discovery and router messages (a
// neighbour advertisement or a unicast solicitation goes from one global
// address to another, and ND lookups go through XFRM like any output; a
// trap there would swallow them and the link would die), link-local and
// multicast destinations (solicitations, MLD, RS). Only dir out: traps are
// outbound, inbound traffic meets no obold policy.
func IPv6Bypass(prio uint32) []Policy {
	anyp := anyPrefix(6)
	var ps []Policy
	for typ := uint16(icmpv6RouterSolicit); typ <= icmpv6Redirect; typ++ {
		ps = append(ps, Policy{Src: anyp, Dst: anyp, Proto: ProtoICMPv6, SrcPort: typ, Dir: DirOut, Action: Allow, Priority: prio})
	}
	for _, dst := range []netip.Prefix{LinkLocal6, Multicast6} {
		ps = append(ps, Policy{Src: anyp, Dst: dst, Dir: DirOut, Action: Allow, Priority: prio})
	}
	return ps
}

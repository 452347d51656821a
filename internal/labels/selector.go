package labels

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/obol-ipsec/obol/plugins"
)

// PortRange is an inclusive port range; the zero value means any port.
type PortRange struct {
	Lo, Hi uint16
}

// Any says the range is unrestricted.
func (r PortRange) Any() bool { return r == PortRange{} }

func (r PortRange) width() int {
	if r.Any() {
		return 1 << 16
	}
	return int(r.Hi) - int(r.Lo) + 1
}

func (r PortRange) contains(o PortRange) bool {
	return r.Any() || !o.Any() && r.Lo <= o.Lo && o.Hi <= r.Hi
}

func (r PortRange) overlaps(o PortRange) bool {
	return r.Any() || o.Any() || r.Lo <= o.Hi && o.Lo <= r.Hi
}

func (r PortRange) String() string {
	switch {
	case r.Any():
		return ""
	case r.Lo == r.Hi:
		return strconv.Itoa(int(r.Lo))
	}
	return strconv.Itoa(int(r.Lo)) + "-" + strconv.Itoa(int(r.Hi))
}

// Selector is an SPD entry's traffic selector. Protocol 0 and zero port
// ranges mean any.
type Selector struct {
	Local, Remote           netip.Prefix
	Protocol                uint8
	LocalPorts, RemotePorts PortRange
}

// FlowSelector is the selector of exactly flow f (port 0: any port).
func FlowSelector(f plugins.Flow) (Selector, error) {
	if !f.Local.IsValid() || !f.Remote.IsValid() {
		return Selector{}, fmt.Errorf("flow %v -> %v has no local or remote prefix; pass the flow's traffic selectors", f.Local, f.Remote)
	}
	s := Selector{Local: f.Local.Masked(), Remote: f.Remote.Masked(), Protocol: f.Protocol}
	if f.LocalPort != 0 {
		s.LocalPorts = PortRange{f.LocalPort, f.LocalPort}
	}
	if f.RemotePort != 0 {
		s.RemotePorts = PortRange{f.RemotePort, f.RemotePort}
	}
	return s, nil
}

// Contains says every packet o selects, s selects too.
func (s Selector) Contains(o Selector) bool {
	return prefixContains(s.Local, o.Local) && prefixContains(s.Remote, o.Remote) &&
		(s.Protocol == 0 || s.Protocol == o.Protocol) &&
		s.LocalPorts.contains(o.LocalPorts) && s.RemotePorts.contains(o.RemotePorts)
}

// Overlaps says some packet is selected by both s and o.
func (s Selector) Overlaps(o Selector) bool {
	return prefixOverlaps(s.Local, o.Local) && prefixOverlaps(s.Remote, o.Remote) &&
		(s.Protocol == 0 || o.Protocol == 0 || s.Protocol == o.Protocol) &&
		s.LocalPorts.overlaps(o.LocalPorts) && s.RemotePorts.overlaps(o.RemotePorts)
}

func prefixContains(a, b netip.Prefix) bool {
	return a.Bits() <= b.Bits() && a.Contains(b.Addr())
}

// prefixOverlaps: two masked prefixes overlap exactly when the shorter
// contains the longer's address (cheaper than netip's general Overlaps).
func prefixOverlaps(a, b netip.Prefix) bool {
	if a.Bits() <= b.Bits() {
		return a.Contains(b.Addr())
	}
	return b.Contains(a.Addr())
}

// rank orders selectors by specificity: longer local+remote prefixes, then
// a named protocol, then fewer ports. Larger is more specific.
type rank struct {
	bits, proto, ports int
}

func (s Selector) rank() rank {
	r := rank{bits: s.Local.Bits() + s.Remote.Bits(), ports: -(s.LocalPorts.width() + s.RemotePorts.width())}
	if s.Protocol != 0 {
		r.proto = 1
	}
	return r
}

func (r rank) compare(o rank) int {
	switch {
	case r.bits != o.bits:
		return r.bits - o.bits
	case r.proto != o.proto:
		return r.proto - o.proto
	}
	return r.ports - o.ports
}

// String describes the selector for people: "10.1.0.0/24 -> 10.2.0.0/24 tcp remote port 443".
func (s Selector) String() string {
	var b strings.Builder
	b.WriteString(s.Local.String() + " -> " + s.Remote.String())
	if s.Protocol != 0 {
		b.WriteString(" " + protoName(s.Protocol))
	}
	if !s.LocalPorts.Any() {
		b.WriteString(" local port " + s.LocalPorts.String())
	}
	if !s.RemotePorts.Any() {
		b.WriteString(" remote port " + s.RemotePorts.String())
	}
	return b.String()
}

// TS returns the selector in swanctl's local_ts/remote_ts syntax, e.g.
// "10.1.0.0/24[tcp]" and "10.2.0.0/24[tcp/443]".
func (s Selector) TS() (local, remote string) {
	return ts(s.Local, s.Protocol, s.LocalPorts), ts(s.Remote, s.Protocol, s.RemotePorts)
}

func ts(p netip.Prefix, proto uint8, ports PortRange) string {
	if proto == 0 {
		return p.String()
	}
	pr := protoName(proto)
	if ports.Any() {
		return p.String() + "[" + pr + "]"
	}
	return p.String() + "[" + pr + "/" + ports.String() + "]"
}

var protoNames = map[string]uint8{"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132}

func protoName(p uint8) string {
	for n, v := range protoNames {
		if v == p {
			return n
		}
	}
	return strconv.Itoa(int(p))
}

// portsAllowed says ports mean something for protocol p.
func portsAllowed(p uint8) bool { return p == 6 || p == 17 || p == 132 }

// parseProtocol reads "any", "tcp", "udp", "icmp", "icmpv6", "sctp" or a
// number 1..255 ("" is any).
func parseProtocol(s string) (uint8, error) {
	switch s {
	case "", "any":
		return 0, nil
	}
	if p, ok := protoNames[s]; ok {
		return p, nil
	}
	if p, ok := protoNames[strings.ToLower(s)]; ok {
		return 0, fmt.Errorf("protocol %q is in capitals; write %q", s, protoName(p))
	}
	n, err := strconv.Atoi(s)
	switch {
	case err != nil:
		return 0, fmt.Errorf(`protocol %q is unknown; write "any", "tcp", "udp", "icmp", "icmpv6", "sctp" or an IP protocol number`, s)
	case n == 0:
		return 0, fmt.Errorf(`protocol 0 is ambiguous; write "any" for every protocol`)
	case n < 0 || n > 255:
		return 0, fmt.Errorf("protocol %d is not an IP protocol number; write 1 to 255", n)
	}
	return uint8(n), nil
}

// parsePorts reads "" (any), "443" or "1000-2000".
func parsePorts(s string) (PortRange, error) {
	if s == "" {
		return PortRange{}, nil
	}
	num := func(t string) (uint16, error) {
		n, err := strconv.Atoi(t)
		if strings.TrimLeft(t, "0123456789") != "" {
			err = strconv.ErrSyntax // no signs or spaces
		}
		switch {
		case err != nil:
			return 0, fmt.Errorf(`ports %q: %q is not a port number; write one port ("443") or one range ("1000-2000")`, s, t)
		case n == 0:
			return 0, fmt.Errorf(`ports %q: port 0 is not a port; leave the key out (or "") for any port`, s)
		case n < 0 || n > 65535:
			return 0, fmt.Errorf("ports %q: %d is not a port; write 1 to 65535", s, n)
		}
		return uint16(n), nil
	}
	if strings.Contains(s, ",") {
		return PortRange{}, fmt.Errorf(`ports %q lists several ports; write one port or one range ("1000-2000") and use one entry per range`, s)
	}
	loS, hiS, isRange := strings.Cut(s, "-")
	lo, err := num(loS)
	if err != nil {
		return PortRange{}, err
	}
	if !isRange {
		return PortRange{lo, lo}, nil
	}
	hi, err := num(hiS)
	if err != nil {
		return PortRange{}, err
	}
	if hi < lo {
		return PortRange{}, fmt.Errorf("ports %q run backwards; write \"%d-%d\"", s, hi, lo)
	}
	return PortRange{lo, hi}, nil
}

// parseCIDR reads a prefix, refusing bare addresses and host bits.
func parseCIDR(s string) (netip.Prefix, error) {
	if s == "" {
		return netip.Prefix{}, fmt.Errorf(`missing; write a CIDR such as "10.1.0.0/24" ("0.0.0.0/0" or "::/0" for any)`)
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		if a, aerr := netip.ParseAddr(s); aerr == nil {
			return netip.Prefix{}, fmt.Errorf("%q is an address, not a CIDR; write %q for this host alone", s, netip.PrefixFrom(a, a.BitLen()).String())
		}
		return netip.Prefix{}, fmt.Errorf(`%q is not a CIDR; write one such as "10.1.0.0/24" or "2001:db8::/48"`, s)
	}
	if p.Addr().Zone() != "" {
		return netip.Prefix{}, fmt.Errorf("%q has a zone; write the prefix without %%%s", s, p.Addr().Zone())
	}
	if m := p.Masked(); m != p {
		return netip.Prefix{}, fmt.Errorf("%q has host bits set; write %q", s, m.String())
	}
	return p, nil
}

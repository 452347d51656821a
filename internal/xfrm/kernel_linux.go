package xfrm

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/obol-ipsec/obol/plugins"
)

// Netlink reads policies from the kernel of the current network namespace.
type Netlink struct{}

// Policies lists all XFRM policies.
func (Netlink) Policies(ctx context.Context) ([]plugins.Policy, error) {
	ps, err := netlink.XfrmPolicyList(netlink.FAMILY_ALL)
	if err != nil {
		return nil, err
	}
	out := make([]plugins.Policy, 0, len(ps))
	for _, p := range ps {
		out = append(out, fromNetlink(p))
	}
	return out, nil
}

func fromNetlink(p netlink.XfrmPolicy) plugins.Policy {
	pol := plugins.Policy{
		Src:      prefixOf(p.Src),
		Dst:      prefixOf(p.Dst),
		Proto:    uint8(p.Proto),
		Dir:      dirName(p.Dir),
		Priority: uint32(p.Priority),
	}
	switch {
	case p.Action == netlink.XFRM_POLICY_BLOCK:
		pol.Action = "block"
	case len(p.Tmpls) > 0:
		pol.Action = "trap"
	default:
		pol.Action = "allow"
	}
	if p.Mark != nil {
		pol.Mark = p.Mark.Value
	}
	return pol
}

func prefixOf(n *net.IPNet) netip.Prefix {
	if n == nil {
		return netip.Prefix{}
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

func dirName(d netlink.Dir) string {
	switch d {
	case netlink.XFRM_DIR_IN:
		return "in"
	case netlink.XFRM_DIR_OUT:
		return "out"
	case netlink.XFRM_DIR_FWD:
		return "fwd"
	}
	return fmt.Sprintf("dir%d", d)
}

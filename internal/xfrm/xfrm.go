// Package xfrm is obold's built-in XFRM module: it tells which datapath
// charon uses and compares the kernel policies obold wants with those the
// kernel holds. obold's own policies carry its mark, so it never mistakes
// charon's or an operator's policies for its own.
package xfrm

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/obol-ipsec/obol/plugins"
)

// Kernel lists XFRM policies. The netlink implementation is in
// kernel_linux.go; tests use a fake.
type Kernel interface {
	Policies(ctx context.Context) ([]plugins.Policy, error)
}

// Checker implements plugins.XFRMChecker.
type Checker struct {
	Kernel Kernel
	// Mark identifies obold's policies in the kernel.
	Mark uint32
}

var _ plugins.XFRMChecker = (*Checker)(nil)

// Datapath decides from charon's plugins: kernel-libipsec takes over IPsec
// processing when loaded (userspace ESP on a TUN device); otherwise
// kernel-netlink installs SAs in the kernel.
func (c *Checker) Datapath(ctx context.Context, charonPlugins []string) (plugins.Datapath, error) {
	switch {
	case slices.Contains(charonPlugins, "kernel-libipsec"):
		return plugins.DatapathUserspace, nil
	case slices.Contains(charonPlugins, "kernel-netlink"):
		return plugins.DatapathKernel, nil
	}
	return "", fmt.Errorf("charon loaded neither kernel-netlink nor kernel-libipsec (plugins: %v): it cannot install SAs; load one of them in strongswan.conf", charonPlugins)
}

// Check compares want with the kernel's policies that carry obold's mark.
// Missing: wanted but absent. Stale: obold's, absent from want. Extra:
// matching a wanted selector but different in action or priority.
func (c *Checker) Check(ctx context.Context, want []plugins.Policy) (plugins.Report, error) {
	have, err := c.Kernel.Policies(ctx)
	if err != nil {
		return plugins.Report{}, fmt.Errorf("list kernel XFRM policies: %w; obold needs CAP_NET_ADMIN", err)
	}
	var ours []plugins.Policy
	for _, p := range have {
		if p.Mark == c.Mark && c.Mark != 0 {
			ours = append(ours, p)
		}
	}
	return compare(want, ours), nil
}

type selector struct {
	src, dst netip.Prefix
	proto    uint8
	dir      string
}

func keyOf(p plugins.Policy) selector { return selector{p.Src, p.Dst, p.Proto, p.Dir} }

func compare(want, have []plugins.Policy) plugins.Report {
	var r plugins.Report
	haveBy := map[selector]plugins.Policy{}
	for _, p := range have {
		haveBy[keyOf(p)] = p
	}
	wanted := map[selector]bool{}
	for _, w := range want {
		k := keyOf(w)
		wanted[k] = true
		h, ok := haveBy[k]
		switch {
		case !ok:
			r.Missing = append(r.Missing, w)
		case h.Action != w.Action || h.Priority != w.Priority:
			r.Extra = append(r.Extra, h)
		}
	}
	for _, h := range have {
		if !wanted[keyOf(h)] {
			r.Stale = append(r.Stale, h)
		}
	}
	return r
}

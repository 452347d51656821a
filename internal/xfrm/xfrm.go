// Package xfrm is obold's kernel layer for IPsec policies (Linux XFRM):
//
//   - it tells which datapath charon uses (Checker.Datapath);
//   - it installs and removes obold's policies — opportunistic traps, allow
//     and block shunts, bypasses, optionally labeled — and only obold's
//     (Installer, through the SPD interface; Netlink is the kernel, package
//     xfrmtest a fake);
//   - it hears the kernel's ACQUIREs (Listener) and decodes them (ParseAcquire);
//   - it compares what obold wants with what the kernel holds (Checker.Check).
//
// obold's policies are told apart by their priority band and their index
// tag (see Owner), never by the mark: an XFRM mark is a match on the
// packet's mark, so a marked policy would not apply to ordinary traffic.
package xfrm

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	"github.com/obol-ipsec/obol/plugins"
)

// Errors of the SPD and the Installer, for errors.Is.
var (
	// ErrExists: a policy with the same identity is already in the kernel.
	ErrExists = errors.New("policy exists")
	// ErrNotFound: no such policy in the kernel.
	ErrNotFound = errors.New("no such policy")
	// ErrNotOwned: the policy in the kernel is not obold's; obold leaves it alone.
	ErrNotOwned = errors.New("policy is not obold's")
	// ErrSecCtxUnsupported: the kernel accepted a security context and dropped
	// it (no active LSM with labeled IPsec, e.g. SELinux).
	ErrSecCtxUnsupported = errors.New("kernel drops security contexts")
)

// Kernel lists the XFRM policies of the SPD: all of them, obold's and
// others'.
type Kernel interface {
	Policies(ctx context.Context) ([]Policy, error)
}

// SPD is the kernel's security policy database, the OS boundary the
// Installer works through. Netlink implements it for the network namespace
// of the calling thread; xfrmtest.SPD is an in-memory fake that behaves like
// the kernel.
//
// A key Policy names a policy by Index when that is set (plus its mark and
// if_id), else by identity: direction, selector, mark, if_id and security
// context.
type SPD interface {
	Kernel
	GetPolicy(ctx context.Context, key Policy) (Policy, error)
	// AddPolicy is exclusive: ErrExists when the identity is taken.
	AddPolicy(ctx context.Context, p Policy) error
	// UpdatePolicy adds or replaces (the replaced policy's index is kept).
	UpdatePolicy(ctx context.Context, p Policy) error
	// DeletePolicy returns ErrNotFound when there is none.
	DeletePolicy(ctx context.Context, key Policy) error
}

// Checker implements plugins.XFRMChecker.
type Checker struct {
	Kernel Kernel
	// Owner tells obold's policies from others' (zero: DefaultOwner).
	Owner Owner
	// Log receives warnings about policies in obold's band that are not
	// obold's, and tagged policies outside the band, once per policy
	// (nil: slog.Default()).
	Log *slog.Logger

	mu     sync.Mutex
	warned map[uint32]bool // indexes warned about
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

// Check compares want with obold's policies in the kernel (see Owner).
// Missing: wanted, absent. Extra: obold's, with a wanted identity but another
// action, priority or lifetime. Stale: obold's, not wanted. Policies that are
// not obold's are never reported.
func (c *Checker) Check(ctx context.Context, want []plugins.Policy) (plugins.Report, error) {
	ws := make([]Policy, 0, len(want))
	for i, w := range want {
		p, err := FromPlugin(w)
		if err != nil {
			return plugins.Report{}, fmt.Errorf("xfrm: check: wanted policy %d: %w", i, err)
		}
		ws = append(ws, p)
	}
	r, err := c.CheckPolicies(ctx, ws)
	if err != nil {
		return plugins.Report{}, err
	}
	conv := func(ps []Policy) []plugins.Policy {
		var out []plugins.Policy
		for _, p := range ps {
			out = append(out, p.Plugin())
		}
		return out
	}
	return plugins.Report{Missing: conv(r.Missing), Extra: conv(r.Extra), Stale: conv(r.Stale)}, nil
}

// Report is Check's outcome with the package's own policies (kernel
// indexes, mark masks, times).
type Report struct {
	Missing, Extra, Stale []Policy
}

// OK says the kernel matches what obold wants.
func (r Report) OK() bool { return len(r.Missing)+len(r.Extra)+len(r.Stale) == 0 }

// CheckPolicies is Check with the package's Policy type.
func (c *Checker) CheckPolicies(ctx context.Context, want []Policy) (Report, error) {
	if c.Kernel == nil {
		return Report{}, errors.New("xfrm: check: no kernel to list policies from; set Checker.Kernel (xfrm.Netlink{})")
	}
	have, err := c.Kernel.Policies(ctx)
	if err != nil {
		return Report{}, fmt.Errorf("xfrm: check: list kernel XFRM policies: %w; obold needs CAP_NET_ADMIN", err)
	}
	log := c.Log
	if log == nil {
		log = slog.Default()
	}
	o := c.Owner.withDefaults()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.warned == nil {
		c.warned = map[uint32]bool{}
	}
	warned := c.warned
	c.warned = map[uint32]bool{} // forget policies that are gone
	var ours []Policy
	for _, p := range have {
		if warned[p.Index] {
			c.warned[p.Index] = true
			if !o.Owns(p) {
				continue
			}
		}
		switch {
		case o.Owns(p):
			ours = append(ours, p)
		case o.Band.Contains(p.Priority):
			c.warned[p.Index] = true
			log.Warn("xfrm: a policy that is not obold's uses obold's priority band; obold leaves it alone, but it competes with obold's policies",
				"policy", p.String(), "band_min", o.Band.Min, "band_max", o.Band.Max)
		case o.Tagged(p.Index):
			c.warned[p.Index] = true
			log.Warn("xfrm: a policy with obold's index tag lies outside obold's priority band (left from an older configuration?); obold leaves it alone: remove it with ip xfrm policy delete if it is obold's",
				"policy", p.String())
		}
	}
	return compare(want, ours), nil
}

// identity is what the kernel identifies a policy by.
type identity struct {
	src, dst         string
	proto            uint8
	sport, dport     uint16
	dir              Dir
	mark, mask, ifID uint32
	secCtx           string
}

func identityOf(p Policy) identity {
	q := p.normalized()
	return identity{
		src: q.Src.String(), dst: q.Dst.String(), proto: q.Proto, sport: q.SrcPort, dport: q.DstPort,
		dir: q.Dir, mark: q.Mark, mask: q.MarkMask, ifID: q.IfID, secCtx: q.SecCtx,
	}
}

// sameSettings says whether have carries want's action, priority and
// lifetime.
func sameSettings(have, want Policy) bool {
	return have.Action == want.Action && have.Priority == want.Priority &&
		lifetimeSeconds(have.Lifetime) == lifetimeSeconds(want.Lifetime)
}

func compare(want, have []Policy) Report {
	var r Report
	haveBy := map[identity]Policy{}
	for _, p := range have {
		haveBy[identityOf(p)] = p
	}
	wanted := map[identity]bool{}
	for _, w := range want {
		k := identityOf(w)
		if wanted[k] {
			continue
		}
		wanted[k] = true
		h, ok := haveBy[k]
		switch {
		case !ok:
			r.Missing = append(r.Missing, w)
		case !sameSettings(h, w):
			r.Extra = append(r.Extra, h)
		}
	}
	for _, h := range have {
		if !wanted[identityOf(h)] {
			r.Stale = append(r.Stale, h)
		}
	}
	byIndex := func(a, b Policy) int { return cmp.Compare(a.Index, b.Index) }
	slices.SortStableFunc(r.Extra, byIndex)
	slices.SortStableFunc(r.Stale, byIndex)
	return r
}

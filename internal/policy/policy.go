// Package policy decides what opportunistic encryption does for a
// destination: the OE policy groups of libreswan (block, clear,
// clear-or-private, private-or-clear, private), the most specific CIDR
// winning, with the host's own addresses, its resolver and IKE always exempt.
package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Group is an OE policy group.
type Group string

const (
	// Block drops all traffic to the destinations.
	Block Group = "block"
	// Clear never uses OE: traffic goes out in clear.
	Clear Group = "clear"
	// ClearOrPrivate does not initiate OE but answers it.
	ClearOrPrivate Group = "clear-or-private"
	// PrivateOrClear tries OE and falls back to clear when it fails.
	PrivateOrClear Group = "private-or-clear"
	// Private uses OE or nothing: traffic never leaves in clear.
	Private Group = "private"
)

// Groups lists the groups in the order an operator reads them.
var Groups = []Group{Block, Clear, ClearOrPrivate, PrivateOrClear, Private}

// Shunt is what happens to traffic while IKE runs or after it failed.
type Shunt string

const (
	Drop Shunt = "drop"
	Pass Shunt = "pass"
)

// Initiates tells whether obold starts OE for the group's destinations.
func (g Group) Initiates() bool { return g == PrivateOrClear || g == Private }

// Responds tells whether obold answers OE from the group's peers.
func (g Group) Responds() bool { return g == ClearOrPrivate || g == PrivateOrClear || g == Private }

// GroupConfig is one [[oe.group]] of obold.toml.
type GroupConfig struct {
	// Group is one of block, clear, clear-or-private, private-or-clear, private.
	Group string `toml:"group"`
	// CIDRs are the destinations of the group.
	CIDRs []string `toml:"cidrs"`
	// NegotiationShunt is what happens to traffic while IKE runs: "drop"
	// (default) or "pass" (private refuses pass: it would leak).
	NegotiationShunt string `toml:"negotiation_shunt"`
	// FailureShunt is what happens after OE failed: "drop" for private and
	// "pass" for private-or-clear by default; private refuses pass.
	FailureShunt string `toml:"failure_shunt"`
	// ShuntLifetime is how long a failure shunt stands before OE is tried
	// again (default "15m").
	ShuntLifetime string `toml:"shunt_lifetime"`
}

// Problem is a config error at a key path ("oe.group[1].cidrs").
type Problem struct{ Path, Msg string }

// Decision is the policy's answer for one destination.
type Decision struct {
	Group            Group
	CIDR             netip.Prefix // the matching CIDR; invalid when exempt or defaulted
	NegotiationShunt Shunt
	FailureShunt     Shunt
	ShuntLifetime    time.Duration
	// Exempt says why the destination is never subject to OE ("" if not).
	Exempt string
}

type rule struct {
	prefix netip.Prefix
	group  Group
	neg    Shunt
	fail   Shunt
	life   time.Duration
}

// Policy is a compiled set of groups. It is read-only after New.
type Policy struct {
	rules   []rule // most specific first
	exempts []exempt
}

type exempt struct {
	prefix netip.Prefix
	why    string
}

// DefaultShuntLifetime is libreswan's shuntlifetime default.
const DefaultShuntLifetime = 15 * time.Minute

// New compiles groups. Every problem is returned, with the key path to
// report it at. Exempt prefixes (own addresses, the resolver) are added with
// Exempt.
func New(at string, groups []GroupConfig) (*Policy, []Problem) {
	p := &Policy{}
	var ps []Problem
	seen := map[netip.Prefix]string{}
	for i, gc := range groups {
		gp := fmt.Sprintf("%s[%d]", at, i)
		g := Group(gc.Group)
		if !slices.Contains(Groups, g) {
			ps = append(ps, Problem{gp + ".group", fmt.Sprintf("%q is not a policy group; write one of %s", gc.Group, groupList())})
			continue
		}
		neg, fail := Drop, Drop
		if g == PrivateOrClear || g == Clear || g == ClearOrPrivate {
			fail = Pass
		}
		if g == Clear || g == ClearOrPrivate {
			neg = Pass
		}
		if g == Block {
			neg, fail = Drop, Drop
		}
		for _, f := range []struct {
			key string
			val string
			dst *Shunt
		}{{"negotiation_shunt", gc.NegotiationShunt, &neg}, {"failure_shunt", gc.FailureShunt, &fail}} {
			switch f.val {
			case "":
			case "drop", "pass":
				*f.dst = Shunt(f.val)
			default:
				ps = append(ps, Problem{gp + "." + f.key, fmt.Sprintf("%q is not a shunt; write \"drop\" or \"pass\"", f.val)})
			}
			if (g == Private || g == Block) && *f.dst == Pass {
				ps = append(ps, Problem{gp + "." + f.key, fmt.Sprintf("%s = \"pass\" would let traffic out in clear, which group %q forbids; write \"drop\" or move the CIDRs to private-or-clear", f.key, g)})
			}
		}
		life := DefaultShuntLifetime
		if gc.ShuntLifetime != "" {
			d, err := time.ParseDuration(gc.ShuntLifetime)
			if err != nil || d <= 0 {
				ps = append(ps, Problem{gp + ".shunt_lifetime", fmt.Sprintf("%q is not a positive duration; write e.g. \"15m\" or \"30s\"", gc.ShuntLifetime)})
			} else {
				life = d
			}
		}
		if len(gc.CIDRs) == 0 {
			ps = append(ps, Problem{gp, fmt.Sprintf("group %q has no cidrs; add cidrs = [\"...\"] or remove the group", g)})
		}
		for _, c := range gc.CIDRs {
			pr, err := netip.ParsePrefix(c)
			if err != nil {
				ps = append(ps, Problem{gp + ".cidrs", fmt.Sprintf("%q is not a CIDR; write e.g. \"10.2.0.0/16\" or \"0.0.0.0/0\"", c)})
				continue
			}
			if pr.Masked() != pr {
				ps = append(ps, Problem{gp + ".cidrs", fmt.Sprintf("%q has host bits set; write %q", c, pr.Masked().String())})
				continue
			}
			if prev, dup := seen[pr]; dup {
				ps = append(ps, Problem{gp + ".cidrs", fmt.Sprintf("%s is in two groups (%s and %s): the most specific CIDR decides, and these are equal; keep it in one", pr, prev, g)})
				continue
			}
			seen[pr] = string(g)
			p.rules = append(p.rules, rule{prefix: pr, group: g, neg: neg, fail: fail, life: life})
		}
	}
	slices.SortStableFunc(p.rules, func(a, b rule) int { return b.prefix.Bits() - a.prefix.Bits() })
	return p, ps
}

func groupList() string {
	var q []string
	for _, g := range Groups {
		q = append(q, fmt.Sprintf("%q", g))
	}
	return strings.Join(q, ", ")
}

// Exempt marks destinations OE never touches, saying why (the host's own
// addresses, the resolver, ...). Call it before Decide is used.
func (p *Policy) Exempt(prefix netip.Prefix, why string) {
	p.exempts = append(p.exempts, exempt{prefix.Masked(), why})
}

// Decide returns the policy for traffic to dst. A destination no group
// covers is clear.
func (p *Policy) Decide(dst netip.Addr) Decision {
	dst = dst.Unmap()
	for _, e := range p.exempts {
		if e.prefix.Contains(dst) {
			return Decision{Group: Clear, NegotiationShunt: Pass, FailureShunt: Pass, Exempt: e.why}
		}
	}
	for _, r := range p.rules {
		if r.prefix.Contains(dst) {
			return Decision{Group: r.group, CIDR: r.prefix, NegotiationShunt: r.neg, FailureShunt: r.fail, ShuntLifetime: r.life}
		}
	}
	return Decision{Group: Clear, NegotiationShunt: Pass, FailureShunt: Pass}
}

// Prefixes lists the CIDRs of the groups that initiate OE (where obold
// installs traps) and of the blocked groups, most specific first.
func (p *Policy) Prefixes(groups ...Group) []netip.Prefix {
	var out []netip.Prefix
	for _, r := range p.rules {
		if slices.Contains(groups, r.group) {
			out = append(out, r.prefix)
		}
	}
	return out
}

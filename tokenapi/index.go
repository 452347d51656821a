package tokenapi

import (
	"net/netip"
	"slices"
)

// Index finds the CHILD_SA covering a flow without scanning every SA: SAs
// whose remote selectors are single hosts (OE, host-to-host) are found by
// the remote address; only the others (subnets, ranges) are scanned. The
// cost of a query so stays flat as SAs are added, as long as wide selectors
// stay few.
type Index struct {
	byRemote map[netip.Addr][]int
	wide     []int
	sas      []TokenSA
}

// NewIndex indexes sas (newest first: the first match wins).
func NewIndex(sas []TokenSA) *Index {
	ix := &Index{byRemote: map[netip.Addr][]int{}, sas: sas}
	for i, sa := range sas {
		hosts := len(sa.RemoteTS) > 0
		for _, ts := range sa.RemoteTS {
			if ts.From != ts.To {
				hosts = false
			}
		}
		if !hosts {
			ix.wide = append(ix.wide, i)
			continue
		}
		for _, ts := range sa.RemoteTS {
			ix.byRemote[ts.From] = append(ix.byRemote[ts.From], i)
		}
	}
	return ix
}

// Len is the number of SAs indexed.
func (ix *Index) Len() int { return len(ix.sas) }

// SAs returns the indexed SAs (shared: do not modify).
func (ix *Index) SAs() []TokenSA { return ix.sas }

// Find returns the first (newest) SA covering f.
func (ix *Index) Find(f Flow) (TokenSA, bool) {
	best := -1
	try := func(i int) {
		sa := &ix.sas[i]
		if (best < 0 || i < best) && coveredBy(sa.LocalTS, f.Local, f.Protocol) && coveredBy(sa.RemoteTS, f.Remote, f.Protocol) {
			best = i
		}
	}
	for _, i := range ix.byRemote[f.Remote.Addr().Unmap()] {
		try(i)
	}
	for _, i := range ix.wide {
		try(i)
	}
	if best < 0 {
		return TokenSA{}, false
	}
	return ix.sas[best], true
}

// FindLabeled returns the SA the kernel uses for f. Among the SAs covering
// f, the most specific selectors win, as charon's policy priorities make
// the kernel choose (narrower addresses, then a protocol, then ports); the
// newest among equals. With labeled SAs: the best whose label is f.Label
// (the socket's peer security context); without a socket label, the best,
// plus one SA per distinct label when SAs with different labels cover f
// (the caller cannot tell which the kernel uses, so it must not claim a
// label).
func (ix *Index) FindLabeled(f Flow) (TokenSA, []Child, bool) {
	var cover []int
	add := func(i int) {
		sa := &ix.sas[i]
		if coveredBy(sa.LocalTS, f.Local, f.Protocol) && coveredBy(sa.RemoteTS, f.Remote, f.Protocol) {
			cover = append(cover, i)
		}
	}
	for _, i := range ix.byRemote[f.Remote.Addr().Unmap()] {
		add(i)
	}
	for _, i := range ix.wide {
		add(i)
	}
	if len(cover) == 0 {
		return TokenSA{}, nil, false
	}
	spec := make(map[int]int, len(cover))
	for _, i := range cover {
		spec[i] = specificity(ix.sas[i].LocalTS, f.Local, f.Protocol) + specificity(ix.sas[i].RemoteTS, f.Remote, f.Protocol)
	}
	slices.SortFunc(cover, func(a, b int) int {
		if spec[a] != spec[b] {
			return spec[b] - spec[a] // more specific first
		}
		return a - b // newest first
	})
	if f.Label != "" {
		for _, i := range cover {
			if ix.sas[i].Child.Label == f.Label {
				return ix.sas[i], nil, true
			}
		}
		// No SA carries the socket's label: the newest unlabeled one, if
		// any, is what the flow can use.
		for _, i := range cover {
			if ix.sas[i].Child.Label == "" {
				return ix.sas[i], nil, true
			}
		}
		return ix.sas[cover[0]], nil, true
	}
	var cands []Child
	seen := map[string]bool{}
	for _, i := range cover {
		if l := ix.sas[i].Child.Label; !seen[l] {
			seen[l] = true
			cands = append(cands, ix.sas[i].Child)
		}
	}
	if len(cands) < 2 {
		cands = nil
	}
	return ix.sas[cover[0]], cands, true
}

// specificity scores the most specific selector of list that covers ap:
// fixed address bits first, then a protocol, then a port range, like
// charon's policy priorities.
func specificity(list []TS, ap netip.AddrPort, proto uint8) int {
	best := 0
	for _, ts := range list {
		if !ts.Covers(ap, proto) {
			continue
		}
		score := fixedBits(ts.From, ts.To) * 4
		if ts.Proto != 0 {
			score += 2
		}
		if ts.FromPort != 0 || ts.ToPort != 0xFFFF {
			score++
		}
		best = max(best, score)
	}
	return best
}

// fixedBits counts the leading bits from and to share: the prefix length
// of a subnet, a lower bound for a range.
func fixedBits(from, to netip.Addr) int {
	a, b := from.AsSlice(), to.AsSlice()
	n := 0
	for i := range a {
		x := a[i] ^ b[i]
		if x == 0 {
			n += 8
			continue
		}
		for x&0x80 == 0 {
			n++
			x <<= 1
		}
		break
	}
	return n
}

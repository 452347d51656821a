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
func (ix *Index) FindLabeled(f Flow) (TokenSA, []TokenSA, bool) {
	// One pass without allocation: the query path stays as cheap as Find.
	type pick struct{ i, spec int }
	none := pick{i: -1}
	best, withLabel, unlabeled := none, none, none
	better := func(p pick, c pick) bool { return p.i < 0 || c.spec > p.spec || c.spec == p.spec && c.i < p.i }
	first, labelsDiffer := "", false
	n := 0
	consider := func(i int) {
		sa := &ix.sas[i]
		if !coveredBy(sa.LocalTS, f.Local, f.Protocol) || !coveredBy(sa.RemoteTS, f.Remote, f.Protocol) {
			return
		}
		c := pick{i: i, spec: specificity(sa.LocalTS, f.Local, f.Protocol) + specificity(sa.RemoteTS, f.Remote, f.Protocol)}
		if better(best, c) {
			best = c
		}
		l := sa.Child.Label
		if f.Label != "" && l == f.Label && better(withLabel, c) {
			withLabel = c
		}
		if l == "" && better(unlabeled, c) {
			unlabeled = c
		}
		if n == 0 {
			first = l
		} else if l != first {
			labelsDiffer = true
		}
		n++
	}
	for _, i := range ix.byRemote[f.Remote.Addr().Unmap()] {
		consider(i)
	}
	for _, i := range ix.wide {
		consider(i)
	}
	switch {
	case best.i < 0:
		return TokenSA{}, nil, false
	case f.Label != "" && withLabel.i >= 0:
		return ix.sas[withLabel.i], nil, true
	case f.Label != "" && unlabeled.i >= 0:
		// No SA carries the socket's label: an unlabeled one is what the
		// flow can use.
		return ix.sas[unlabeled.i], nil, true
	case f.Label != "" || !labelsDiffer:
		return ix.sas[best.i], nil, true
	}
	// Rare: SAs with different labels cover the flow and the socket's label
	// is unknown. One candidate per label, the best of each first.
	var cover []pick
	collect := func(i int) {
		sa := &ix.sas[i]
		if coveredBy(sa.LocalTS, f.Local, f.Protocol) && coveredBy(sa.RemoteTS, f.Remote, f.Protocol) {
			cover = append(cover, pick{i: i, spec: specificity(sa.LocalTS, f.Local, f.Protocol) + specificity(sa.RemoteTS, f.Remote, f.Protocol)})
		}
	}
	for _, i := range ix.byRemote[f.Remote.Addr().Unmap()] {
		collect(i)
	}
	for _, i := range ix.wide {
		collect(i)
	}
	slices.SortFunc(cover, func(a, b pick) int {
		if a.spec != b.spec {
			return b.spec - a.spec
		}
		return a.i - b.i
	})
	var cands []TokenSA
	seen := map[string]bool{}
	for _, c := range cover {
		if l := ix.sas[c.i].Child.Label; !seen[l] {
			seen[l] = true
			cands = append(cands, ix.sas[c.i])
		}
	}
	return ix.sas[best.i], cands, true
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

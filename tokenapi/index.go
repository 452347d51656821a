package tokenapi

import "net/netip"

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

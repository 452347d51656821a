package tokenapi

import (
	"net/netip"
	"slices"
)

// Index finds the CHILD_SA covering a flow without scanning every SA. SAs
// whose remote selectors are single hosts (OE, host-to-host) are found by
// the remote address, and, when their selectors also pin one port, by that
// port too: many SAs to one peer that differ only by port (one per service,
// as a server or as a client sees them) stay one map lookup apart. Only SAs
// with wide remote selectors (subnets, ranges) are scanned. The cost of a
// query so stays flat as SAs are added, as long as wide selectors stay few.
type Index struct {
	// byRemotePort: remote host and port, for SAs whose remote selectors
	// each pin one host and one port.
	byRemotePort map[hostPort][]int
	// byLocalPort: remote host and local port, for SAs to single remote
	// hosts whose local selectors each pin one port.
	byLocalPort map[hostPort][]int
	// byRemote: the other SAs to single remote hosts.
	byRemote map[netip.Addr][]int
	wide     []int
	sas      []TokenSA
}

type hostPort struct {
	addr netip.Addr
	port uint16
}

// maxPortKeys bounds the keys one SA adds (remote hosts x local ports):
// beyond it the SA is indexed by remote host alone.
const maxPortKeys = 16

// NewIndex indexes sas (newest first: the first match wins).
func NewIndex(sas []TokenSA) *Index {
	ix := &Index{
		byRemotePort: map[hostPort][]int{},
		byLocalPort:  map[hostPort][]int{},
		byRemote:     map[netip.Addr][]int{},
		sas:          sas,
	}
	for i, sa := range sas {
		if !allHosts(sa.RemoteTS) {
			ix.wide = append(ix.wide, i)
			continue
		}
		switch {
		case allOnePort(sa.RemoteTS):
			for _, ts := range sa.RemoteTS {
				k := hostPort{ts.From, ts.FromPort}
				ix.byRemotePort[k] = append(ix.byRemotePort[k], i)
			}
		case allOnePort(sa.LocalTS) && len(sa.RemoteTS)*len(sa.LocalTS) <= maxPortKeys:
			for _, r := range sa.RemoteTS {
				for _, l := range sa.LocalTS {
					k := hostPort{r.From, l.FromPort}
					ix.byLocalPort[k] = append(ix.byLocalPort[k], i)
				}
			}
		default:
			for _, ts := range sa.RemoteTS {
				ix.byRemote[ts.From] = append(ix.byRemote[ts.From], i)
			}
		}
	}
	return ix
}

// allHosts: a non-empty list of selectors that each cover one address.
func allHosts(list []TS) bool {
	for _, ts := range list {
		if ts.From != ts.To {
			return false
		}
	}
	return len(list) > 0
}

// allOnePort: a non-empty list of selectors that each pin a protocol and
// one port (a port means nothing without a protocol).
func allOnePort(list []TS) bool {
	for _, ts := range list {
		if ts.Proto == 0 || ts.FromPort != ts.ToPort {
			return false
		}
	}
	return len(list) > 0
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
	ix.candidates(f, try)
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
	i, cands, ok := ix.findLabeled(f)
	if !ok {
		return TokenSA{}, nil, false
	}
	return ix.sas[i], cands, true
}

// findLabeled is FindLabeled answering with the chosen SA's position.
func (ix *Index) findLabeled(f Flow) (int, []TokenSA, bool) {
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
	ix.candidates(f, consider)
	switch {
	case best.i < 0:
		return -1, nil, false
	case f.Label != "" && withLabel.i >= 0:
		return withLabel.i, nil, true
	case f.Label != "" && unlabeled.i >= 0:
		// No SA carries the socket's label: an unlabeled one is what the
		// flow can use.
		return unlabeled.i, nil, true
	case f.Label != "" || !labelsDiffer:
		return best.i, nil, true
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
	ix.candidates(f, collect)
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
	return best.i, cands, true
}

// candidates calls try with every SA that may cover f: those kept under
// f's remote host and ports, and the wide ones (an SA sits in one of these
// lists; one with two selectors on the same host and port may come twice,
// which changes no answer).
func (ix *Index) candidates(f Flow, try func(int)) {
	remote := f.Remote.Addr().Unmap()
	for _, i := range ix.byRemotePort[hostPort{remote, f.Remote.Port()}] {
		try(i)
	}
	for _, i := range ix.byLocalPort[hostPort{remote, f.Local.Port()}] {
		try(i)
	}
	for _, i := range ix.byRemote[remote] {
		try(i)
	}
	for _, i := range ix.wide {
		try(i)
	}
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

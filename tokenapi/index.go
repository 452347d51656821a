package tokenapi

import "net/netip"

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
	if best < 0 {
		return TokenSA{}, false
	}
	return ix.sas[best], true
}

package tokenapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"

	"github.com/obol-ipsec/obol/plugins"
)

// TokenSA is one installed CHILD_SA as the token API sees it.
type TokenSA = plugins.TokenSA

// TS is a traffic selector: an address range, a protocol (0 any) and a
// port range.
type TS = plugins.TrafficSelector

// ParseTS reads a traffic selector as charon's list-sas prints it:
// "10.1.0.0/16", "10.0.0.1..10.0.0.9", "192.0.2.1/32[tcp/http]",
// "0.0.0.0/0[udp]", "::/0[17/1024-65535]". Service names come from
// /etc/services; ICMP type/code ports and OPAQUE are taken as any port.
func ParseTS(s string) (TS, error) {
	addr, rest, _ := strings.Cut(s, "[")
	ts := TS{ToPort: 0xFFFF}
	if lo, hi, ok := strings.Cut(addr, ".."); ok {
		a, err1 := netip.ParseAddr(lo)
		b, err2 := netip.ParseAddr(hi)
		if err1 != nil || err2 != nil || a.BitLen() != b.BitLen() || b.Less(a) {
			return TS{}, fmt.Errorf("traffic selector %q: bad address range", s)
		}
		ts.From, ts.To = a, b
	} else {
		p, err := netip.ParsePrefix(addr)
		if err != nil {
			a, err2 := netip.ParseAddr(addr)
			if err2 != nil {
				return TS{}, fmt.Errorf("traffic selector %q: %w", s, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		p = p.Masked()
		ts.From, ts.To = p.Addr(), lastAddr(p)
	}
	if rest == "" {
		return ts, nil
	}
	spec, ok := strings.CutSuffix(rest, "]")
	if !ok {
		return TS{}, fmt.Errorf("traffic selector %q: missing ]", s)
	}
	proto, port, hasPort := strings.Cut(spec, "/")
	switch proto {
	case "tcp":
		ts.Proto = 6
	case "udp":
		ts.Proto = 17
	case "sctp":
		ts.Proto = 132
	case "icmp":
		ts.Proto = 1
	case "ipv6-icmp", "icmp6":
		ts.Proto = 58
	default:
		n, err := strconv.ParseUint(proto, 10, 8)
		if err != nil {
			return TS{}, fmt.Errorf("traffic selector %q: unknown protocol %q", s, proto)
		}
		ts.Proto = uint8(n)
	}
	if !hasPort || port == "OPAQUE" || ts.Proto == 1 || ts.Proto == 58 {
		return ts, nil
	}
	lo, hi, isRange := strings.Cut(port, "-")
	from, err := parsePort(lo, proto)
	if err != nil {
		return TS{}, fmt.Errorf("traffic selector %q: %w", s, err)
	}
	to := from
	if isRange {
		if to, err = parsePort(hi, proto); err != nil || to < from {
			return TS{}, fmt.Errorf("traffic selector %q: bad port range", s)
		}
	}
	ts.FromPort, ts.ToPort = from, to
	return ts, nil
}

func parsePort(s, proto string) (uint16, error) {
	if n, err := strconv.ParseUint(s, 10, 16); err == nil {
		return uint16(n), nil
	}
	n, err := net.LookupPort(proto, s)
	if err != nil {
		return 0, fmt.Errorf("unknown port %q: %w", s, err)
	}
	return uint16(n), nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func coveredBy(list []TS, ap netip.AddrPort, proto uint8) bool {
	for _, ts := range list {
		if ts.Covers(ap, proto) {
			return true
		}
	}
	return false
}

// HostFacts answers flows from host: the first (newest) CHILD_SA whose
// local and remote selectors cover the flow, else the host's WhyNot. It
// keeps its own index of the host's last snapshot and asks for a new one
// only when the host's generation moved, so a query costs one index lookup.
func HostFacts(host plugins.TokenHost) Facts {
	return &hostFacts{host: host}
}

type hostFacts struct {
	host plugins.TokenHost
	mu   sync.Mutex // held across a rebuild: concurrent queries share it
	ix   *Index
	gen  uint64
	// memoBase is the Protection.Memo of ix's first SA; every index gets
	// fresh numbers, so a Memo never names two different SAs.
	memoBase, nextMemo uint64
}

// index returns the index for the host's current generation.
func (f *hostFacts) index(ctx context.Context) (*Index, error) {
	g := f.host.Generation()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ix != nil && f.gen == g {
		return f.ix, nil
	}
	snap, err := f.host.TokenSAs(ctx)
	if err != nil {
		return nil, err
	}
	f.ix, f.gen = NewIndex(snap.SAs), snap.Generation
	f.memoBase = f.nextMemo + 1
	f.nextMemo += uint64(len(snap.SAs)) + 1
	return f.ix, nil
}

// protectionNow answers a flow that an SA of the current index covers
// without waiting for anything: no snapshot to fetch, no lock held by a
// rebuild. Anything else goes the long way, through Protection.
func (f *hostFacts) protectionNow(fl Flow) (Protection, bool) {
	g := f.host.Generation()
	if !f.mu.TryLock() {
		return Protection{}, false
	}
	ix, base, current := f.ix, f.memoBase, f.ix != nil && f.gen == g
	f.mu.Unlock()
	if !current {
		return Protection{}, false
	}
	return find(ix, base, fl)
}

// find answers fl from ix when an SA covers it.
func find(ix *Index, base uint64, fl Flow) (Protection, bool) {
	i, cands, ok := ix.findLabeled(fl)
	if !ok {
		return Protection{}, false
	}
	sa := &ix.sas[i]
	p := Protection{Protected: true, Child: sa.Child, Peer: sa.Peer}
	if len(cands) == 0 {
		p.Memo = base + uint64(i)
	}
	for _, c := range cands {
		p.LabelCandidates = append(p.LabelCandidates, c.Child)
		if !bytes.Equal(identityKey(c.Peer, DeriveAuthMethod(c.Peer)), identityKey(sa.Peer, DeriveAuthMethod(sa.Peer))) {
			p.PeerUnknown = true
		}
	}
	return p, true
}

// Protection implements Facts.
func (f *hostFacts) Protection(ctx context.Context, fl Flow) (Protection, error) {
	ix, err := f.index(ctx)
	if err != nil {
		return Protection{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	f.mu.Lock()
	base := f.memoBase
	if f.ix != ix {
		base = 0 // rebuilt meanwhile: ix's numbers are gone, promise nothing
	}
	f.mu.Unlock()
	if p, ok := find(ix, base, fl); ok {
		if base == 0 {
			p.Memo = 0
		}
		return p, nil
	}
	why, text, err := f.host.WhyNot(ctx, fl)
	if err != nil {
		return Protection{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	return Protection{Why: why, WhyText: text}, nil
}

// Changes implements ChangeFeed: the host's change stream, or nil when the
// host has none.
func (f *hostFacts) Changes(ctx context.Context) <-chan plugins.TokenChange {
	if src, ok := f.host.(plugins.TokenChangeSource); ok {
		return src.TokenChanges(ctx)
	}
	return nil
}

// Module is the built-in token API module: plugins.TokenAPI over a host
// that also implements Host.
type Module struct {
	Config Config
	Log    *slog.Logger
}

var _ plugins.TokenAPI = (*Module)(nil)

// Serve listens on Config.Socket and serves until ctx ends.
func (m *Module) Serve(ctx context.Context, host plugins.TokenHost) error {
	if host == nil {
		return errors.New("tokenapi: Serve needs obold's TokenHost")
	}
	srv, err := NewServer(m.Config, HostFacts(host), m.Log)
	if err != nil {
		return err
	}
	srv.SetProtector(host)
	ln, err := srv.Listen()
	if err != nil {
		return err
	}
	return srv.Serve(ctx, ln)
}

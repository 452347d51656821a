package tokenapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// Host is what the token API needs from obold. It is the proposed
// extension of plugins.TokenHost (README.md, "What obold must provide"):
// obold's TokenHost satisfies it once it has these methods, and Module
// then serves without further glue.
type Host interface {
	// TokenSAs returns the installed CHILD_SAs, newest first, with their
	// IKE peer facts, from obold's event-maintained cache (it must not
	// call charon: it runs once per query).
	TokenSAs(ctx context.Context) ([]TokenSA, error)
	// WhyNot explains a flow no CHILD_SA covers: obold's trap policies,
	// OE state for the remote address, label decisions, the last
	// negotiation failure.
	WhyNot(ctx context.Context, f Flow) (wire.Reason, string, error)
}

// TokenSA is one installed CHILD_SA as the token API sees it.
type TokenSA struct {
	Child             Child
	Peer              Peer
	LocalTS, RemoteTS []TS
}

// TS is a traffic selector: an address range, a protocol (0 any) and a
// port range.
type TS struct {
	From, To         netip.Addr
	Proto            uint8
	FromPort, ToPort uint16
}

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

// Covers says whether ap (with protocol proto) is inside ts.
func (ts TS) Covers(ap netip.AddrPort, proto uint8) bool {
	a := ap.Addr().Unmap()
	if a.BitLen() != ts.From.BitLen() || a.Less(ts.From) || ts.To.Less(a) {
		return false
	}
	if ts.Proto != 0 && ts.Proto != proto {
		return false
	}
	return ap.Port() >= ts.FromPort && ap.Port() <= ts.ToPort
}

func coveredBy(list []TS, ap netip.AddrPort, proto uint8) bool {
	for _, ts := range list {
		if ts.Covers(ap, proto) {
			return true
		}
	}
	return false
}

// HostFacts answers flows from a Host: the first (newest) CHILD_SA whose
// local and remote selectors cover the flow, else the host's WhyNot.
func HostFacts(h Host) Facts {
	return FactsFunc(func(ctx context.Context, f Flow) (Protection, error) {
		var ix *Index
		var err error
		if ih, ok := h.(IndexedHost); ok {
			ix, err = ih.TokenIndex(ctx)
		} else {
			var sas []TokenSA
			sas, err = h.TokenSAs(ctx)
			ix = NewIndex(sas)
		}
		if err != nil {
			return Protection{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		if sa, ok := ix.Find(f); ok {
			return Protection{Protected: true, Child: sa.Child, Peer: sa.Peer}, nil
		}
		why, text, err := h.WhyNot(ctx, f)
		if err != nil {
			return Protection{}, fmt.Errorf("%w: %w", ErrUnavailable, err)
		}
		return Protection{Why: why, WhyText: text}, nil
	})
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
	h, ok := host.(Host)
	if !ok {
		return errors.New("tokenapi: obold's TokenHost lacks TokenSAs and WhyNot (tokenapi.Host); the token API cannot run with this obold")
	}
	srv, err := NewServer(m.Config, HostFacts(h), m.Log)
	if err != nil {
		return err
	}
	ln, err := srv.Listen()
	if err != nil {
		return err
	}
	return srv.Serve(ctx, ln)
}

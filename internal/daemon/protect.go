package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/internal/policy"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/wire"
	"github.com/obol-ipsec/obol/vici"
)

// libipsecDevice is kernel-libipsec's TUN device (charon's default name).
const libipsecDevice = "ipsec0"

// Protect implements plugins.TokenHost: reuse an SA covering the flow, or
// bring one up (OE for the pair, else a configured child whose selectors
// cover it); for CLEAR, judge the request against system policy.
func (h *tokenHost) Protect(ctx context.Context, r plugins.TokenProtect) (plugins.TokenProtectOutcome, error) {
	h.d.mu.Lock()
	eng := h.d.oe
	h.d.mu.Unlock()
	var out plugins.TokenProtectOutcome
	f := r.Flow
	var dec *policy.Decision
	if eng != nil {
		d := eng.Policy().Decide(f.Remote.Addr().Unmap())
		if d.Exempt == "" {
			dec = &d
		}
	}
	sa, covered, err := h.covering(ctx, f)
	if err != nil {
		return out, err
	}
	if r.Level == wire.LevelClear {
		return h.judgeClear(ctx, r, out, sa, covered, dec)
	}
	if covered {
		h.outer(ctx, &out, sa)
		return out, nil
	}
	if dec != nil && dec.Group == policy.Block {
		return why(out, wire.ReasonBlocked, "policy group block covers "+f.Remote.Addr().String()+": its traffic is dropped"), nil
	}
	// The administrator's conns first: a configured tunnel is what
	// policy says for the flow; OE only where none covers it.
	conn, child, ok, err := h.configuredChild(ctx, f)
	if err != nil {
		return out, err
	}
	if ok {
		return h.initiate(ctx, out, f, conn, child)
	}
	if eng != nil {
		t, err := eng.Request(ctx, xfrm.Pair{Src: f.Local.Addr().Unmap(), Dst: f.Remote.Addr().Unmap()})
		var ne *oe.NotEligibleError
		switch {
		case errors.As(err, &ne):
			// OE does not apply here either: nothing covers the flow
		case err != nil:
			if ctx.Err() != nil {
				return why(out, wire.ReasonNoSA, "OE for the flow did not finish in time: "+err.Error()), nil
			}
			return why(out, wire.ReasonNegotiationFailed, err.Error()), nil
		case t.State == oe.StateFailed:
			return why(out, oeReason(t.Reason), t.Reason), nil
		default:
			if sa, ok, err := h.coveringNow(ctx, f, t.Conn); err == nil && ok {
				h.outer(ctx, &out, sa)
			}
			return out, nil
		}
	}
	return why(out, wire.ReasonNoPolicy, "no OE and no configured conn covers "+f.Local.String()+" -> "+f.Remote.String()), nil
}

// initiate brings up a configured conn's child for f.
func (h *tokenHost) initiate(ctx context.Context, out plugins.TokenProtectOutcome, f plugins.TokenFlow, conn, child string) (plugins.TokenProtectOutcome, error) {
	h.d.mu.Lock()
	charon := h.d.charon
	h.d.mu.Unlock()
	if err := charon.Initiate(ctx, conn, child); err != nil {
		reason := wire.ReasonNegotiationFailed
		if authFailure(err.Error()) {
			reason = wire.ReasonAuthFailed
		}
		return why(out, reason, fmt.Sprintf("initiating conn %s child %s: %v", conn, child, err)), nil
	}
	if sa, ok, err := h.coveringNow(ctx, f, conn); err == nil && ok {
		h.outer(ctx, &out, sa)
	}
	return out, nil
}

// PinTarget implements plugins.TokenHost: charon's datapath, and on the
// userspace one its TUN device, which must exist.
func (h *tokenHost) PinTarget(ctx context.Context) (plugins.TokenPinTarget, error) {
	h.d.mu.Lock()
	t := plugins.TokenPinTarget{Datapath: plugins.Datapath(h.d.state.Datapath)}
	h.d.mu.Unlock()
	switch t.Datapath {
	case plugins.DatapathUserspace:
		t.Device = libipsecDevice
		if _, err := net.InterfaceByName(libipsecDevice); err != nil {
			return t, fmt.Errorf("charon's TUN device %s is missing (%v); is kernel-libipsec loaded?", libipsecDevice, err)
		}
		t.ClearMark = charonClearMark()
	case plugins.DatapathKernel:
	default:
		return t, fmt.Errorf("charon's datapath is not known yet (is charon connected?)")
	}
	return t, nil
}

// charonRouteTable is charon's routing table for installed routes
// (kernel-netlink's default).
const charonRouteTable = 220

// charonClearMark finds the fwmark charon's routing rule skips ("not
// fwmark M lookup 220"): packets with it are routed around the tunnel
// routes. 0 when there is no such rule.
func charonClearMark() uint32 {
	rules, err := netlink.RuleList(unix.AF_INET)
	if err != nil {
		return 0
	}
	for _, r := range rules {
		if r.Table == charonRouteTable && r.Invert && r.Mark != 0 {
			return r.Mark
		}
	}
	return 0
}

// judgeClear: a flow may go clear only where system policy lets it, and
// asking for less than policy needs privilege. private, block and
// configured tunnels win over everyone.
func (h *tokenHost) judgeClear(ctx context.Context, r plugins.TokenProtect, out plugins.TokenProtectOutcome, sa plugins.TokenSA, covered bool, dec *policy.Decision) (plugins.TokenProtectOutcome, error) {
	if covered && !strings.HasPrefix(sa.Child.IKEName, h.oePrefix()) {
		return why(out, wire.ReasonPolicyWins, "configured tunnel "+sa.Child.IKEName+" covers the flow; nobody can take a flow out of it"), nil
	}
	if !covered {
		if conn, _, ok, err := h.configuredChild(ctx, r.Flow); err != nil {
			return out, err
		} else if ok {
			return why(out, wire.ReasonPolicyWins, "configured conn "+conn+" covers the flow; nobody can take a flow out of it"), nil
		}
	}
	if dec == nil {
		return out, nil // no OE policy for it: clear is what policy gives anyway
	}
	switch dec.Group {
	case policy.Private, policy.Block:
		return why(out, wire.ReasonPolicyWins, fmt.Sprintf("policy group %s covers %s; nobody can lower it", dec.Group, r.Flow.Remote.Addr())), nil
	case policy.ClearOrPrivate, policy.PrivateOrClear:
		if covered {
			return why(out, wire.ReasonPolicyWins, "an OE tunnel carries this pair already; obold does not take one socket out of it"), nil
		}
		if !r.MayLower {
			return why(out, wire.ReasonDenied, fmt.Sprintf("policy group %s may protect %s; asking for clear needs CAP_NET_ADMIN or a tokenapi.lower_groups group", dec.Group, r.Flow.Remote.Addr())), nil
		}
	}
	return out, nil
}

func why(out plugins.TokenProtectOutcome, r wire.Reason, text string) plugins.TokenProtectOutcome {
	out.Why, out.WhyText = r, text
	return out
}

// oeReason maps an OE failure to its WHY.
func oeReason(reason string) wire.Reason {
	switch {
	case strings.Contains(reason, "no OE records"):
		return wire.ReasonOENoRecords
	case strings.HasPrefix(reason, "DNS:") && (strings.Contains(reason, "timeout") || strings.Contains(reason, "deadline")):
		return wire.ReasonDNSTimeout
	case strings.Contains(reason, "unusable"):
		return wire.ReasonOEUnusable
	case authFailure(reason):
		return wire.ReasonAuthFailed
	}
	return wire.ReasonNegotiationFailed
}

// authFailure tells whether charon's words (an initiate error with its
// log lines) say authentication failed, on either side.
func authFailure(s string) bool {
	s = strings.ToLower(s)
	for _, w := range []string{"authentication_failed", "auth_failed", "authentication failed", "signature validation failed", "none matched", "no trusted"} {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// covering returns the newest installed SA covering f.
func (h *tokenHost) covering(ctx context.Context, f plugins.TokenFlow) (plugins.TokenSA, bool, error) {
	snap, err := h.TokenSAs(ctx)
	if err != nil {
		return plugins.TokenSA{}, false, fmt.Errorf("list-sas: %w", err)
	}
	sa, ok := tokenapi.NewIndex(snap.SAs).Find(f)
	return sa, ok, nil
}

// outer fills the SA's IKE addresses (for a per-socket ESP template) on
// the kernel datapath; the userspace pin needs none.
func (h *tokenHost) outer(ctx context.Context, out *plugins.TokenProtectOutcome, sa plugins.TokenSA) {
	h.d.mu.Lock()
	kernel := h.d.state.Datapath == string(plugins.DatapathKernel)
	h.d.mu.Unlock()
	if !kernel {
		return
	}
	sas, err := h.d.charon.ListSAs(ctx, vici.SASelector{IKE: sa.Child.IKEName})
	if err != nil || len(sas) == 0 {
		return
	}
	out.OuterLocal, out.OuterRemote = sas[0].LocalHost, sas[0].RemoteHost
}

// configuredChild finds a loaded conn (obold's or swanctl's, OE conns
// aside) with a child whose selectors cover f.
func (h *tokenHost) configuredChild(ctx context.Context, f plugins.TokenFlow) (conn, child string, ok bool, err error) {
	cis, err := h.d.charon.ListConns(ctx, "")
	if err != nil {
		return "", "", false, fmt.Errorf("list-conns: %w", err)
	}
	oePrefix := h.oePrefix()
	for _, ci := range cis {
		if strings.HasPrefix(ci.Name, oePrefix) {
			continue
		}
		for _, ch := range ci.Children {
			if selectorsCover(ch.LocalTS, ci.LocalAddrs, f.Local, f.Protocol) && selectorsCover(ch.RemoteTS, ci.RemoteAddrs, f.Remote, f.Protocol) {
				return ci.Name, ch.Name, true, nil
			}
		}
	}
	return "", "", false, nil
}

// selectorsCover: one of list (as list-conns prints selectors) covers ap;
// "dynamic" stands for the conn's own addresses, which must name ap's
// address (a %any conn cannot be initiated towards a chosen host).
func selectorsCover(list, addrs []string, ap netip.AddrPort, proto uint8) bool {
	for _, s := range list {
		if base, _, _ := strings.Cut(s, "["); base == "dynamic" {
			for _, a := range addrs {
				if x, err := netip.ParseAddr(a); err == nil && x == ap.Addr().Unmap() {
					return true
				}
			}
			continue
		}
		if ts, err := tokenapi.ParseTS(s); err == nil && ts.Covers(ap, proto) {
			return true
		}
	}
	return false
}

func (h *tokenHost) oePrefix() string {
	h.d.mu.Lock()
	defer h.d.mu.Unlock()
	return h.d.cfg.Obold.ConnPrefix + "oe-"
}

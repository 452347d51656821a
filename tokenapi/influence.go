package tokenapi

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/internal/peercred"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// protect answers PROTECT: the host reuses or brings up an SA (or judges a
// CLEAR request against system policy), the socket is pinned, then the
// flow's pToken after the action is judged against what was asked. fd is
// closed when the pin is set: obold keeps no copy of the socket.
func (s *Server) protect(ctx context.Context, cl *clientConn, id uint32, fd int, level wire.Level, peerID string) []byte {
	defer unix.Close(fd)
	flow, err := InspectFD(fd)
	if err != nil {
		var re *reqError
		if errors.As(err, &re) {
			return s.errorReply(id, re.code, re.text)
		}
		return s.errorReply(id, wire.ErrCodeInternal, err.Error())
	}
	if rerr := s.ptokenRoom(cl); rerr != nil {
		return s.errorReply(id, rerr.code, rerr.text)
	}
	log := s.log.With("flow", flow, "require", level)
	if cl.cred != nil {
		log = log.With("pid", cl.cred.Pid, "uid", cl.cred.Uid)
	}
	mayLower := false
	if level == wire.LevelClear {
		var basis string
		mayLower, basis = s.mayLower(cl)
		log = log.With("may_lower", mayLower, "basis", basis)
	}
	pctx, cancel := context.WithTimeout(ctx, s.cfg.ProtectTimeout)
	defer cancel()
	target, err := s.protector.PinTarget(pctx)
	if err != nil {
		log.Warn("tokenapi: PROTECT: datapath unknown", "err", err)
		return s.errorReply(id, wire.ErrCodeUnavailable, "obold cannot tell charon's datapath now ("+err.Error()+"); the socket was not changed; retry shortly")
	}
	var pin wire.Pin
	var iface string
	if level != wire.LevelClear {
		// Pinned before any IKE runs: while the SA comes up, the socket's
		// packets wait (or are dropped and retransmitted), never go clear.
		if pin, iface, err = pinProtected(fd, target, flow.Local.Addr(), flow.Remote.Addr()); err != nil {
			log.Error("tokenapi: PROTECT could not pin the socket", "err", err)
			return s.errorReply(id, wire.ErrCodePinFailed, "obold could not pin the socket ("+err.Error()+"); its traffic is NOT held back: close it")
		}
	}
	out, err := s.protector.Protect(pctx, ProtectRequest{Flow: flow, Level: level, PeerID: peerID, MayLower: mayLower})
	if err != nil {
		log.Warn("tokenapi: PROTECT failed", "err", err)
		if pin != wire.PinNone {
			return s.errorReply(id, wire.ErrCodeUnavailable, "obold cannot act on IPsec right now ("+err.Error()+"); the socket is pinned (nothing leaves in clear); retry shortly")
		}
		return s.errorReply(id, wire.ErrCodeUnavailable, "obold cannot act on IPsec right now ("+err.Error()+"); the socket was not changed; retry shortly")
	}
	switch {
	case level == wire.LevelClear && out.Why == wire.ReasonNone:
		pin, iface, err = wire.PinBypass, "", pinBypass(fd, flow.Local.Addr())
		if err == nil && target.Datapath == plugins.DatapathUserspace && target.ClearMark != 0 {
			// Routing comes before XFRM: without charon's mark a tunnel
			// route for the pair (table 220) would still take the socket.
			err = pinMark(fd, target.ClearMark)
		}
	case level == wire.LevelClear:
		// Refused: nothing of this socket leaves in clear either.
		pin, iface, err = pinProtected(fd, target, flow.Local.Addr(), flow.Remote.Addr())
	case pin == wire.PinXFRM && out.OuterLocal.IsValid() && out.OuterRemote.IsValid() &&
		(out.OuterLocal != flow.Local.Addr() || out.OuterRemote != flow.Remote.Addr()):
		// A gateway tunnel: require ESP between its outer addresses
		// (setting the policy again replaces it).
		pin, iface, err = pinProtected(fd, target, out.OuterLocal, out.OuterRemote)
	}
	if err != nil {
		log.Error("tokenapi: PROTECT could not pin the socket", "err", err)
		return s.errorReply(id, wire.ErrCodePinFailed, "obold could not pin the socket ("+err.Error()+"); its traffic may NOT be held back: close it")
	}
	qctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	p, err := s.facts.Protection(qctx, flow)
	cancel()
	if err != nil {
		log.Warn("tokenapi: no facts after PROTECT", "err", err)
		return s.errorReply(id, wire.ErrCodeUnavailable, "the socket is pinned, but IPsec state is unavailable right now; query it again shortly")
	}
	granted, why, whyText := judge(level, peerID, out, p, s.cfg.UntrustedCiphers)
	if granted == wire.LevelNone && !p.Protected {
		p.Why, p.WhyText = why, whyText // the pToken's WHY is the refusal's
	}
	log.Info("tokenapi: PROTECT answered", "granted", granted, "why", why, "pin", pin, "peer", p.Peer.RemoteID)
	a := s.assessProtection(flow, p)
	shown := a.state
	if granted == wire.LevelNone && p.Protected {
		// The reply's WHY is the refusal's; the pToken itself (PTOKEN_GET)
		// keeps what it says of the SA (LABEL_UNKNOWN, say).
		shown.why, shown.whyText = wire.ReasonNone, ""
	}
	return s.newPToken(cl, id, wire.TypeProtectReply, a, shown, func(b *wire.Builder) {
		b.U8(wire.AttrGranted, uint8(granted)).U8(wire.AttrPin, uint8(pin)).String(wire.AttrPinIface, iface)
		if p.Protected {
			b.String(wire.AttrRemoteID, p.Peer.RemoteID)
			if granted == wire.LevelNone {
				b.U16(wire.AttrWhyCode, uint16(why)).String(wire.AttrWhyText, whyText)
			}
		}
	})
}

// judge compares what protects the flow now with what was asked: the level
// granted (the one in force, which may be more than asked), or NONE and why.
func judge(level wire.Level, peerID string, out ProtectOutcome, p Protection, untrusted []string) (wire.Level, wire.Reason, string) {
	if level == wire.LevelClear {
		if out.Why != wire.ReasonNone {
			return wire.LevelNone, out.Why, out.WhyText
		}
		return wire.LevelClear, wire.ReasonNone, ""
	}
	if !p.Protected {
		if out.Why != wire.ReasonNone {
			return wire.LevelNone, out.Why, out.WhyText
		}
		return wire.LevelNone, p.Why, p.WhyText
	}
	if peerID != "" && !SameIdentity(peerID, p.Peer.RemoteID) {
		return wire.LevelNone, wire.ReasonPeerMismatch, fmt.Sprintf("the SA's authenticated peer is %s, not %s", quote(p.Peer.RemoteID), quote(peerID))
	}
	how := Classify(p, untrusted)
	auth := DeriveAuthMethod(p.Peer).Method
	authenticated := auth != wire.AuthNone && auth != wire.AuthBTNS
	var have wire.Level
	switch {
	case how.Privacy && how.Integrity && authenticated:
		have = wire.LevelEncryption
	case how.Privacy && how.Integrity:
		have = wire.LevelBTNS
	case how.Integrity:
		have = wire.LevelIntegrity
	}
	ok := false
	switch level {
	case wire.LevelEncryption:
		ok = have == wire.LevelEncryption
	case wire.LevelBTNS:
		ok = have == wire.LevelEncryption || have == wire.LevelBTNS
	case wire.LevelIntegrity:
		ok = have != wire.LevelNone
	}
	if !ok {
		return wire.LevelNone, wire.ReasonInsufficient, fmt.Sprintf("the SA (conn %s) gives %s with the peer authenticated by %s; %s was asked", p.Child.IKEName, have, auth, level)
	}
	return have, wire.ReasonNone, ""
}

// SameIdentity compares IKE identities as people write them: charon prints
// FQDN ids without the "@" swanctl.conf uses; case does not matter for
// names.
func SameIdentity(a, b string) bool {
	norm := func(s string) string { return strings.ToLower(strings.TrimPrefix(strings.TrimSpace(s), "@")) }
	return norm(a) == norm(b)
}

// mayLower says whether the client may ask for less than system policy:
// CAP_NET_ADMIN in its effective set, or membership of a lower_groups
// group, read through its pidfd (not a pid that may be recycled).
func (s *Server) mayLower(cl *clientConn) (bool, string) {
	if cl.conn == nil {
		return false, "no client connection to read privileges from"
	}
	proc, err := peercred.ProcessOf(cl.conn)
	if err != nil {
		return false, "privileges unknown: " + err.Error()
	}
	if proc.HasCap(unix.CAP_NET_ADMIN) {
		return true, "CAP_NET_ADMIN"
	}
	for _, g := range s.lowerGIDs {
		if slices.Contains(proc.GIDs, g) {
			return true, fmt.Sprintf("member of group %d (tokenapi.lower_groups)", g)
		}
	}
	return false, "neither CAP_NET_ADMIN nor a tokenapi.lower_groups group"
}

package plugins

import (
	"fmt"
	"net/netip"

	"github.com/obol-ipsec/obol/plugins/pluginpb"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// Bounds of what crosses the TokenHost contract: a message past them is
// garbage, not a bigger host.
const (
	maxTokenSAs    = 1 << 16
	maxTokenTS     = 256  // traffic selectors per side of one SA
	maxTokenString = 4096 // identities, DNs, names, texts
	maxTokenKey    = 16 << 10
	maxTokenRounds = 16
)

// TokenSnapshotTo is the wire form of snap.
func TokenSnapshotTo(snap TokenSnapshot) *pluginpb.TokenSnapshot {
	out := &pluginpb.TokenSnapshot{Generation: snap.Generation, Sas: make([]*pluginpb.TokenSA, 0, len(snap.SAs))}
	for _, sa := range snap.SAs {
		c, p, e := sa.Child, sa.Peer, sa.Peer.Evidence
		psa := &pluginpb.TokenSA{
			Child: &pluginpb.TokenChild{IkeName: c.IKEName, Name: c.Name, Protocol: c.Protocol, Mode: c.Mode, EncrAlg: c.EncrAlg, EncrKey: int32(c.EncrKey),
				IntegAlg: c.IntegAlg, IntegKey: int32(c.IntegKey), Ipcomp: c.IPComp, Encap: c.Encap, Label: c.Label},
			Peer: &pluginpb.TokenPeer{RemoteId: p.RemoteID, RemoteEapId: p.RemoteEAPID, RemoteXauthId: p.RemoteXAuthID, KeyNote: p.KeyNote,
				PeerKey: publicKeyTo(p.PeerKey), OurKey: publicKeyTo(p.OurKey),
				Evidence: &pluginpb.AuthEvidence{ConnClass: e.ConnClass, RoundClasses: e.RoundClasses, PinnedKey: e.PinnedKey, SecretOwners: int32(e.SecretOwners),
					Oe: e.OE, Dnssec: e.DNSSEC, OeMethod: e.OEMethod, LogMethod: e.LogMethod, TrustedCaDn: e.TrustedCADN, TrustedCertDn: e.TrustedCertDN,
					PeerCertDn: e.PeerCertDN, Fetched: e.Fetched}},
			LocalTs: selectorsTo(sa.LocalTS), RemoteTs: selectorsTo(sa.RemoteTS),
		}
		out.Sas = append(out.Sas, psa)
	}
	return out
}

func publicKeyTo(k PublicKey) *pluginpb.PublicKey {
	if k.Algorithm == "" && len(k.Data) == 0 {
		return nil
	}
	return &pluginpb.PublicKey{Algorithm: k.Algorithm, Data: k.Data}
}

func selectorsTo(ts []TrafficSelector) []*pluginpb.TrafficSelector {
	out := make([]*pluginpb.TrafficSelector, 0, len(ts))
	for _, t := range ts {
		out = append(out, &pluginpb.TrafficSelector{From: t.From.String(), To: t.To.String(), Proto: uint32(t.Proto), FromPort: uint32(t.FromPort), ToPort: uint32(t.ToPort)})
	}
	return out
}

// TokenSnapshotFrom checks and decodes a snapshot; an error names the SA
// and the field that is wrong.
func TokenSnapshotFrom(in *pluginpb.TokenSnapshot) (TokenSnapshot, error) {
	if len(in.GetSas()) > maxTokenSAs {
		return TokenSnapshot{}, fmt.Errorf("%d SAs, more than %d", len(in.GetSas()), maxTokenSAs)
	}
	snap := TokenSnapshot{Generation: in.GetGeneration(), SAs: make([]TokenSA, 0, len(in.GetSas()))}
	for i, psa := range in.GetSas() {
		sa, err := tokenSAFrom(psa)
		if err != nil {
			return TokenSnapshot{}, fmt.Errorf("sa %d: %w", i, err)
		}
		snap.SAs = append(snap.SAs, sa)
	}
	return snap, nil
}

func tokenSAFrom(in *pluginpb.TokenSA) (TokenSA, error) {
	var sa TokenSA
	c := in.GetChild()
	if c == nil {
		return sa, fmt.Errorf("child: missing")
	}
	sa.Child = TokenChild{IKEName: c.GetIkeName(), Name: c.GetName(), Protocol: c.GetProtocol(), Mode: c.GetMode(), EncrAlg: c.GetEncrAlg(),
		EncrKey: int(c.GetEncrKey()), IntegAlg: c.GetIntegAlg(), IntegKey: int(c.GetIntegKey()), IPComp: c.GetIpcomp(), Encap: c.GetEncap(), Label: c.GetLabel()}
	switch sa.Child.Protocol {
	case "ESP", "AH", "":
	default:
		return sa, fmt.Errorf("child.protocol %q: want ESP or AH", sa.Child.Protocol)
	}
	if sa.Child.EncrKey < 0 || sa.Child.EncrKey > 1024 {
		return sa, fmt.Errorf("child.encr_key %d bits: want 0..1024", sa.Child.EncrKey)
	}
	if sa.Child.IntegKey < 0 || sa.Child.IntegKey > 1024 {
		return sa, fmt.Errorf("child.integ_key %d bits: want 0..1024", sa.Child.IntegKey)
	}
	p := in.GetPeer()
	e := p.GetEvidence()
	sa.Peer = TokenPeer{RemoteID: p.GetRemoteId(), RemoteEAPID: p.GetRemoteEapId(), RemoteXAuthID: p.GetRemoteXauthId(), KeyNote: p.GetKeyNote(),
		Evidence: AuthEvidence{ConnClass: e.GetConnClass(), RoundClasses: e.GetRoundClasses(), PinnedKey: e.GetPinnedKey(), SecretOwners: int(e.GetSecretOwners()),
			OE: e.GetOe(), DNSSEC: e.GetDnssec(), OEMethod: e.GetOeMethod(), LogMethod: e.GetLogMethod(), TrustedCADN: e.GetTrustedCaDn(),
			TrustedCertDN: e.GetTrustedCertDn(), PeerCertDN: e.GetPeerCertDn(), Fetched: e.GetFetched()}}
	if sa.Peer.Evidence.SecretOwners < -1 {
		return sa, fmt.Errorf("peer.evidence.secret_owners %d: want -1 or more", sa.Peer.Evidence.SecretOwners)
	}
	if len(sa.Peer.Evidence.RoundClasses) > maxTokenRounds {
		return sa, fmt.Errorf("peer.evidence.round_classes: %d rounds, more than %d", len(sa.Peer.Evidence.RoundClasses), maxTokenRounds)
	}
	if !ValidMethod(sa.Peer.Evidence.OEMethod) {
		return sa, fmt.Errorf("peer.evidence.oe_method %q: not an authentication method", sa.Peer.Evidence.OEMethod)
	}
	switch sa.Peer.Evidence.DNSSEC {
	case "", string(DNSSECSecure), string(DNSSECInsecure), string(DNSSECBogus):
	default:
		return sa, fmt.Errorf("peer.evidence.dnssec %q: want secure, insecure or bogus", sa.Peer.Evidence.DNSSEC)
	}
	for _, f := range []struct{ name, v string }{
		{"child.ike_name", sa.Child.IKEName}, {"child.name", sa.Child.Name}, {"child.mode", sa.Child.Mode}, {"child.encr_alg", sa.Child.EncrAlg},
		{"child.integ_alg", sa.Child.IntegAlg}, {"child.label", sa.Child.Label}, {"peer.remote_id", sa.Peer.RemoteID},
		{"peer.remote_eap_id", sa.Peer.RemoteEAPID}, {"peer.remote_xauth_id", sa.Peer.RemoteXAuthID}, {"peer.key_note", sa.Peer.KeyNote},
		{"peer.evidence.conn_class", sa.Peer.Evidence.ConnClass}, {"peer.evidence.log_method", sa.Peer.Evidence.LogMethod},
		{"peer.evidence.trusted_ca_dn", sa.Peer.Evidence.TrustedCADN}, {"peer.evidence.trusted_cert_dn", sa.Peer.Evidence.TrustedCertDN},
		{"peer.evidence.peer_cert_dn", sa.Peer.Evidence.PeerCertDN},
	} {
		if len(f.v) > maxTokenString {
			return sa, fmt.Errorf("%s: %d bytes, more than %d", f.name, len(f.v), maxTokenString)
		}
	}
	var err error
	if sa.Peer.PeerKey, err = tokenKeyFrom(p.GetPeerKey()); err != nil {
		return sa, fmt.Errorf("peer.peer_key: %w", err)
	}
	if sa.Peer.OurKey, err = tokenKeyFrom(p.GetOurKey()); err != nil {
		return sa, fmt.Errorf("peer.our_key: %w", err)
	}
	if sa.LocalTS, err = selectorsFrom(in.GetLocalTs()); err != nil {
		return sa, fmt.Errorf("local_ts %w", err)
	}
	if sa.RemoteTS, err = selectorsFrom(in.GetRemoteTs()); err != nil {
		return sa, fmt.Errorf("remote_ts %w", err)
	}
	return sa, nil
}

// tokenKeyFrom checks a key the token API may put into an iToken: any
// algorithm charon authenticated with (certificate keys come as DER), but
// Ed25519 keys are 32 bytes and nothing is huge.
func tokenKeyFrom(k *pluginpb.PublicKey) (PublicKey, error) {
	if k == nil {
		return PublicKey{}, nil
	}
	alg, data := k.GetAlgorithm(), k.GetData()
	switch {
	case alg == "" || len(alg) > 64:
		return PublicKey{}, fmt.Errorf("algorithm %q: want a name of 1..64 bytes", alg)
	case len(data) == 0 || len(data) > maxTokenKey:
		return PublicKey{}, fmt.Errorf("%s key of %d bytes: want 1..%d", alg, len(data), maxTokenKey)
	case alg == "ed25519" && len(data) != 32:
		return PublicKey{}, fmt.Errorf("ed25519 key of %d bytes, want 32", len(data))
	}
	return PublicKey{Algorithm: alg, Data: data}, nil
}

func selectorsFrom(in []*pluginpb.TrafficSelector) ([]TrafficSelector, error) {
	if len(in) > maxTokenTS {
		return nil, fmt.Errorf("%d selectors, more than %d", len(in), maxTokenTS)
	}
	out := make([]TrafficSelector, 0, len(in))
	for i, t := range in {
		from, err := netip.ParseAddr(t.GetFrom())
		if err != nil {
			return nil, fmt.Errorf("%d: from %q: %w", i, t.GetFrom(), err)
		}
		to, err := netip.ParseAddr(t.GetTo())
		if err != nil {
			return nil, fmt.Errorf("%d: to %q: %w", i, t.GetTo(), err)
		}
		if from.Zone() != "" || to.Zone() != "" {
			return nil, fmt.Errorf("%d: %s-%s: addresses with a zone", i, from, to)
		}
		if from.BitLen() != to.BitLen() || to.Less(from) {
			return nil, fmt.Errorf("%d: %s-%s is no address range", i, from, to)
		}
		if t.GetProto() > 255 {
			return nil, fmt.Errorf("%d: proto %d: want 0..255", i, t.GetProto())
		}
		if t.GetFromPort() > 65535 || t.GetToPort() > 65535 || t.GetToPort() < t.GetFromPort() {
			return nil, fmt.Errorf("%d: ports %d-%d: want a range within 0..65535", i, t.GetFromPort(), t.GetToPort())
		}
		out = append(out, TrafficSelector{From: from, To: to, Proto: uint8(t.GetProto()), FromPort: uint16(t.GetFromPort()), ToPort: uint16(t.GetToPort())})
	}
	return out, nil
}

func tokenFlowTo(f TokenFlow) *pluginpb.TokenFlow {
	return &pluginpb.TokenFlow{Local: f.Local.String(), Remote: f.Remote.String(), Protocol: uint32(f.Protocol), Label: f.Label}
}

// TokenFlowFrom checks and decodes a flow the token API module asks about.
func TokenFlowFrom(in *pluginpb.TokenFlow) (TokenFlow, error) {
	local, err := netip.ParseAddrPort(in.GetLocal())
	if err != nil {
		return TokenFlow{}, fmt.Errorf("flow local %q: want address:port: %w", in.GetLocal(), err)
	}
	remote, err := netip.ParseAddrPort(in.GetRemote())
	if err != nil {
		return TokenFlow{}, fmt.Errorf("flow remote %q: want address:port: %w", in.GetRemote(), err)
	}
	if local.Addr().Is4In6() || remote.Addr().Is4In6() {
		return TokenFlow{}, fmt.Errorf("flow %s -> %s: IPv4-mapped addresses must be unmapped", local, remote)
	}
	if local.Addr().BitLen() != remote.Addr().BitLen() {
		return TokenFlow{}, fmt.Errorf("flow %s -> %s: addresses of two families", local, remote)
	}
	if in.GetProtocol() > 255 {
		return TokenFlow{}, fmt.Errorf("flow protocol %d: want 0..255", in.GetProtocol())
	}
	if len(in.GetLabel()) > maxTokenString {
		return TokenFlow{}, fmt.Errorf("flow label: %d bytes, more than %d", len(in.GetLabel()), maxTokenString)
	}
	return TokenFlow{Local: local, Remote: remote, Protocol: uint8(in.GetProtocol()), Label: in.GetLabel()}, nil
}

func tokenProtectFrom(in *pluginpb.TokenProtectRequest) (TokenProtect, error) {
	f, err := TokenFlowFrom(in.GetFlow())
	if err != nil {
		return TokenProtect{}, err
	}
	if in.GetLevel() < uint32(wire.LevelEncryption) || in.GetLevel() > uint32(wire.LevelClear) {
		return TokenProtect{}, fmt.Errorf("level %d: want ENCRYPTION, INTEGRITY, BTNS or CLEAR (1..4)", in.GetLevel())
	}
	if len(in.GetPeerId()) > maxTokenString {
		return TokenProtect{}, fmt.Errorf("peer_id: %d bytes, more than %d", len(in.GetPeerId()), maxTokenString)
	}
	return TokenProtect{Flow: f, Level: wire.Level(in.GetLevel()), PeerID: in.GetPeerId(), MayLower: in.GetMayLower()}, nil
}

func tokenProtectOutcomeFrom(in *pluginpb.TokenProtectOutcome) (TokenProtectOutcome, error) {
	if in.GetWhy() > 0xffff {
		return TokenProtectOutcome{}, fmt.Errorf("why %d: not a WHY reason", in.GetWhy())
	}
	if len(in.GetWhyText()) > maxTokenString {
		return TokenProtectOutcome{}, fmt.Errorf("why_text: %d bytes, more than %d", len(in.GetWhyText()), maxTokenString)
	}
	out := TokenProtectOutcome{Why: wire.Reason(in.GetWhy()), WhyText: in.GetWhyText()}
	for _, a := range []struct {
		name string
		in   string
		out  *netip.Addr
	}{{"outer_local", in.GetOuterLocal(), &out.OuterLocal}, {"outer_remote", in.GetOuterRemote(), &out.OuterRemote}} {
		if a.in == "" {
			continue
		}
		addr, err := netip.ParseAddr(a.in)
		if err != nil {
			return TokenProtectOutcome{}, fmt.Errorf("%s %q: %w", a.name, a.in, err)
		}
		*a.out = addr
	}
	return out, nil
}

// tokenChangeFrom decodes the change of a HostUpdate; nil when it has none.
func tokenChangeFrom(in *pluginpb.TokenChange) (*TokenChange, error) {
	if in == nil {
		return nil, nil
	}
	c := TokenChange{Kind: TokenChangeKind(in.GetKind()), IKEName: in.GetIkeName(), Child: in.GetChild(), Text: in.GetText()}
	switch c.Kind {
	case TokenChangeUp, TokenChangeDown, TokenChangeRekeyed, TokenChangeRekeyFailed, TokenChangeReset, TokenChangeLost:
	default:
		return nil, fmt.Errorf("change kind %q: want up, down, rekeyed, rekey-failed, reset or lost", c.Kind)
	}
	if len(c.IKEName)+len(c.Child) > maxTokenString || len(c.Text) > maxTokenString {
		return nil, fmt.Errorf("change of %s: names or text longer than %d bytes", c.Kind, maxTokenString)
	}
	return &c, nil
}

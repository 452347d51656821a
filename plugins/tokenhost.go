package plugins

import (
	"context"
	"net/netip"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// TokenAPI serves the application token API (specs/btns-abstract-api.txt)
// on its own socket until ctx ends, asking host about the IPsec state.
type TokenAPI interface {
	Serve(ctx context.Context, host TokenHost) error
}

// TokenHost is what obold offers the token API module: the host's CHILD_SAs
// (swanctl's and obold's) with what is known of each peer, and why a flow
// has none. No keys and no SPIs cross this contract.
type TokenHost interface {
	// TokenSAs returns the installed CHILD_SAs, newest first, and the
	// generation they are current for. It may ask charon, so a module calls
	// it only when Generation has moved since its last snapshot.
	TokenSAs(ctx context.Context) (TokenSnapshot, error)
	// Generation changes whenever the SAs or what is known of their peers
	// may have changed. It never blocks: a module checks it on every query
	// and keeps using its own index of the last snapshot while it stays.
	Generation() uint64
	// WhyNot explains a flow no CHILD_SA covers: trap policies, the OE
	// verdict for the remote address, label decisions, the last failure.
	WhyNot(ctx context.Context, f TokenFlow) (wire.Reason, string, error)
	// Protect makes the host's part of a PROTECT request happen: for a
	// protection level it reuses an SA covering the flow or brings one up
	// (OE for the pair, or a configured conn's child whose selectors cover
	// it), waiting until ctx ends; for CLEAR it says whether system policy
	// lets the flow go clear. The module checks the level and peer itself
	// against the SA it then finds, and pins the socket.
	Protect(ctx context.Context, r TokenProtect) (TokenProtectOutcome, error)
	// PinTarget says where ESP runs, so the module can pin a socket before
	// asking Protect (no packet slips out in clear while IKE runs).
	PinTarget(ctx context.Context) (TokenPinTarget, error)
}

// TokenPinTarget is what a socket's pin depends on.
type TokenPinTarget struct {
	// Datapath is charon's ("kernel" or "userspace"); Device is its TUN
	// device on the userspace datapath.
	Datapath Datapath
	Device   string
	// ClearMark (userspace datapath) is the fwmark charon's routing rule
	// exempts from its table (the mark of charon's own sockets): a socket
	// granted CLEAR carries it, so no tunnel route takes it. 0: none found.
	ClearMark uint32
}

// TokenProtect is a PROTECT request as the host sees it.
type TokenProtect struct {
	Flow  TokenFlow
	Level wire.Level
	// PeerID is the identity asked for ("" any); an OE tunnel is brought
	// up only when the peer's published identity can match.
	PeerID string
	// MayLower: the caller has the privilege to ask for less than policy
	// (CAP_NET_ADMIN or a tokenapi.lower_groups group).
	MayLower bool
}

// TokenProtectOutcome is what the host did or why it could not.
type TokenProtectOutcome struct {
	// Why and WhyText: no SA could be had (protection levels) or policy
	// refuses to let the flow go clear (CLEAR); ReasonNone when done.
	Why     wire.Reason
	WhyText string
	// OuterLocal and OuterRemote are the covering SA's IKE addresses (for
	// a per-socket ESP template), when known.
	OuterLocal, OuterRemote netip.Addr
}

// TokenSnapshot is the CHILD_SAs as of one generation.
type TokenSnapshot struct {
	Generation uint64
	SAs        []TokenSA // newest first: the first covering SA wins
}

// TokenFlow is a socket's flow as the token API read it from the socket.
type TokenFlow struct {
	Local, Remote netip.AddrPort // IPv4-mapped addresses are unmapped
	Protocol      uint8          // 6 TCP, 17 UDP, 132 SCTP
	// Label is the socket's peer security context (SO_PEERSEC), "" when
	// the socket has none or it cannot be read.
	Label string
}

// TokenSA is one installed CHILD_SA as the token API sees it.
type TokenSA struct {
	Child             TokenChild
	Peer              TokenPeer
	LocalTS, RemoteTS []TrafficSelector
}

// TokenChild is what protects a flow: the CHILD_SA's algorithms and mode.
type TokenChild struct {
	IKEName  string // the conn
	Name     string // the child config
	Protocol string // "ESP" or "AH"
	Mode     string // TUNNEL, TRANSPORT, BEET
	EncrAlg  string // charon's name: AES_GCM_16, AES_CBC, NULL, ...; "" for AH
	EncrKey  int    // key size in bits
	IntegAlg string // "" with AEAD
	IntegKey int
	IPComp   bool   // IPComp CPIs are present
	Encap    bool   // UDP encapsulation
	Label    string // the SA's security label, "" when unlabeled
}

// TokenPeer is what is known of the authenticated IKE peer.
type TokenPeer struct {
	RemoteID      string // IKE identity
	RemoteEAPID   string
	RemoteXAuthID string
	Evidence      AuthEvidence
	// PeerKey and OurKey are the two IKE public keys when known (OE keys,
	// pinned raw keys, certificate keys). Either may be empty.
	PeerKey PublicKey
	OurKey  PublicKey
	// KeyNote says why a public key the peer or we authenticated with is
	// unknown (e.g. a certificate charon no longer holds), for the audit
	// string; "" when both are known or no public keys were used.
	KeyNote string
}

// AuthEvidence is what obold can tell about how the peer was authenticated.
// VICI has no per-SA authentication method, so it is pieced together from
// the matched conn (list-conns) and charon's level-1 log lines.
type AuthEvidence struct {
	// ConnClass is the auth class of the conn's first remote round as
	// list-conns reports it: "public key", "pre-shared key", "EAP", "XAuth",
	// "any". Later rounds go to RoundClasses.
	ConnClass    string
	RoundClasses []string
	// PinnedKey: the round pins raw public keys configured by the
	// administrator (list-conns lists the round's ID as its certs).
	PinnedKey bool
	// SecretOwners counts the peer identities the matched IKE pre-shared
	// key is bound to; 0 means a wildcard secret (any identity), -1 that
	// obold cannot see them (a secret swanctl loaded).
	SecretOwners int
	// OE: the conn is obold's opportunistic conn; DNSSEC is the verdict
	// on the DNS answer that gave the peer's key ("secure", "insecure").
	OE     bool
	DNSSEC string
	// OEMethod is how obold's auth methods trusted the OE peer's keys
	// (plugins.MethodLeapOfFaith, ...); "" means by DNSSEC alone.
	OEMethod string
	// LogMethod is METHOD from "authentication of 'ID' with METHOD
	// successful" for the peer's ID.
	LogMethod string
	// TrustedCADN is DN from `using trusted ca certificate "DN"` (the CA
	// that verified an inline peer certificate).
	TrustedCADN string
	// TrustedCertDN is DN from `using trusted certificate "DN"`: the peer's
	// own certificate (or pinned key) was in the local trusted store.
	TrustedCertDN string
	// PeerCertDN is the subject of the peer's end-entity certificate when
	// one was used (`using certificate "DN"`).
	PeerCertDN string
	// Fetched: the certificate came from an HTTP/LDAP fetch (CDP/AIA or a
	// cert URL), not from the IKE exchange.
	Fetched bool
}

// TrafficSelector is an address range, a protocol (0 any) and a port range.
type TrafficSelector struct {
	From, To         netip.Addr
	Proto            uint8
	FromPort, ToPort uint16
}

// Covers says whether ap (with protocol proto) is inside ts.
func (ts TrafficSelector) Covers(ap netip.AddrPort, proto uint8) bool {
	a := ap.Addr().Unmap()
	if a.BitLen() != ts.From.BitLen() || a.Less(ts.From) || ts.To.Less(a) {
		return false
	}
	if ts.Proto != 0 && ts.Proto != proto {
		return false
	}
	return ap.Port() >= ts.FromPort && ap.Port() <= ts.ToPort
}

// TokenGenerationWatcher is optional for a TokenHost: it tells at once
// when Generation moves, so a token API module served as a plugin learns it
// from one stream instead of polling obold. Hosts without it are polled
// every GenerationPollEvery.
type TokenGenerationWatcher interface {
	// GenerationMoved returns a channel that is closed once Generation
	// differs from g (at once when it already does).
	GenerationMoved(g uint64) <-chan struct{}
}

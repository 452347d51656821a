// Package tokenapi is obol's application token API (specs/btns-abstract-api.txt,
// specs/ipsec-api-requirements.txt): a server on a unix SOCK_SEQPACKET
// socket to which a program passes one of its own sockets (SCM_RIGHTS) and
// learns HOW the socket's flow is protected (pToken), WHO the authenticated
// peer is (iToken) and WHY it is not protected. The wire format is in
// PROTOCOL.md and package wire; the Go client is package client.
//
// The server knows nothing of charon: obold hands it a Facts implementation
// that maps a flow to the CHILD_SA and IKE peer covering it.
package tokenapi

import (
	"context"
	"errors"
	"net/netip"

	"github.com/obol-ipsec/obol/plugins"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// Flow is what the server read from the application's socket.
type Flow struct {
	Local, Remote netip.AddrPort // IPv4-mapped addresses are unmapped
	Protocol      uint8          // 6 TCP, 17 UDP, 132 SCTP
}

// Facts answers for one flow. obold implements it from list-sas, list-conns
// and the log events it keeps (see README.md, "What obold provides").
type Facts interface {
	// Protection returns what protects f now. A nil error with
	// Protected false must carry a Why. An error means the facts are not
	// available (charon away); wrap ErrUnavailable then.
	Protection(ctx context.Context, f Flow) (Protection, error)
}

// FactsFunc adapts a function to Facts.
type FactsFunc func(ctx context.Context, f Flow) (Protection, error)

// Protection implements Facts.
func (fn FactsFunc) Protection(ctx context.Context, f Flow) (Protection, error) { return fn(ctx, f) }

// ErrUnavailable: the facts cannot be had now (charon is away); the client
// gets UNAVAILABLE and may retry.
var ErrUnavailable = errors.New("IPsec state unavailable")

// Protection is the state of one flow. It never holds keys or SPIs.
type Protection struct {
	Protected bool
	// Why and WhyText explain an unprotected flow.
	Why     wire.Reason
	WhyText string
	Child   Child
	Peer    Peer
}

// Child is the CHILD_SA a protected flow uses.
type Child struct {
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

// Peer is what is known of the authenticated IKE peer.
type Peer struct {
	RemoteID      string // IKE identity
	RemoteEAPID   string
	RemoteXAuthID string
	Evidence      Evidence
	// PeerKey and OurKey are the two IKE public keys when known (OE keys,
	// pinned raw keys, certificate keys). Either may be empty.
	PeerKey PublicKey
	OurKey  PublicKey
}

// Evidence is what obold can tell about how the peer was authenticated.
// VICI has no per-SA authentication method, so it is pieced together from
// the matched conn (list-conns) and charon's level-1 log lines.
type Evidence struct {
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

// PublicKey is a raw public key: RFC 3110 wire form for "rsa", 32 raw bytes
// for "ed25519", DER SubjectPublicKeyInfo for anything else. It is the
// resolver contract's type, so OE keys pass through unchanged.
type PublicKey = plugins.PublicKey

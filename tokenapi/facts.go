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

	"github.com/obol-ipsec/obol/plugins"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// Flow is what the server read from the application's socket.
type Flow = plugins.TokenFlow

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
	// LabelCandidates, when it holds more than one CHILD_SA, says that
	// CHILD_SAs with different security labels cover the flow and the
	// socket's label did not pick one: Child is only the newest of them.
	LabelCandidates []Child
	// PeerUnknown: those CHILD_SAs belong to different peers, so the flow's
	// peer is not known either.
	PeerUnknown bool
	// Memo, when not 0, names Child and Peer exactly: answers with equal
	// Memos carry equal Child and Peer, so the server reuses what it
	// derived from them. 0 means the facts make no such promise.
	Memo uint64
}

// quickFacts is a Facts that can often answer from what it already holds,
// without blocking; ok false means: ask Protection, with a deadline.
type quickFacts interface {
	protectionNow(f Flow) (p Protection, ok bool)
}

// Child is the CHILD_SA a protected flow uses.
type Child = plugins.TokenChild

// Peer is what is known of the authenticated IKE peer.
type Peer = plugins.TokenPeer

// Evidence is what obold can tell about how the peer was authenticated.
type Evidence = plugins.AuthEvidence

// PublicKey is a raw public key: RFC 3110 wire form for "rsa", 32 raw bytes
// for "ed25519", DER SubjectPublicKeyInfo for anything else. It is the
// resolver contract's type, so OE keys pass through unchanged.
type PublicKey = plugins.PublicKey

// ProtectOutcome is the host's answer to a PROTECT request.
type ProtectOutcome = plugins.TokenProtectOutcome

// ProtectRequest is a PROTECT request as the host sees it.
type ProtectRequest = plugins.TokenProtect

// PinTarget is what a socket's pin depends on.
type PinTarget = plugins.TokenPinTarget

// Protector is the host's side of PROTECT (plugins.TokenHost.Protect and
// PinTarget). A server without one answers PROTECT with UNKNOWN_TYPE.
type Protector interface {
	Protect(ctx context.Context, r ProtectRequest) (ProtectOutcome, error)
	PinTarget(ctx context.Context) (PinTarget, error)
}

package wire

import (
	"fmt"
	"strings"
)

// ErrorCode is the value of AttrErrorCode in an ERROR reply.
type ErrorCode uint16

// Error codes (PROTOCOL.md, "Errors").
const (
	ErrCodeBadMessage         ErrorCode = 1
	ErrCodeUnsupportedVersion ErrorCode = 2
	ErrCodeUnknownType        ErrorCode = 3
	ErrCodeNoFD               ErrorCode = 4
	ErrCodeTooManyFDs         ErrorCode = 5
	ErrCodeNotSocket          ErrorCode = 6
	ErrCodeNotInet            ErrorCode = 7
	ErrCodeNotConnected       ErrorCode = 8
	ErrCodeUnsupportedProto   ErrorCode = 9
	ErrCodeUnknownHandle      ErrorCode = 10
	ErrCodeLimit              ErrorCode = 11
	ErrCodeUnavailable        ErrorCode = 12
	ErrCodeInternal           ErrorCode = 13
	ErrCodeDenied             ErrorCode = 14
	// ErrCodeAddressMismatch: PTOKEN_QUERY_FROM named a local address that
	// is not the socket's (nor, for a wildcard socket, one of the host's).
	ErrCodeAddressMismatch ErrorCode = 25
	// ErrCodeNoEvents: this server has no source of SA changes.
	ErrCodeNoEvents ErrorCode = 26
)

var errorNames = map[ErrorCode]string{
	ErrCodeBadMessage: "BAD_MESSAGE", ErrCodeUnsupportedVersion: "UNSUPPORTED_VERSION",
	ErrCodeUnknownType: "UNKNOWN_TYPE", ErrCodeNoFD: "NO_FD", ErrCodeTooManyFDs: "TOO_MANY_FDS",
	ErrCodeNotSocket: "NOT_SOCKET", ErrCodeNotInet: "NOT_INET", ErrCodeNotConnected: "NOT_CONNECTED",
	ErrCodeUnsupportedProto: "UNSUPPORTED_PROTOCOL", ErrCodeUnknownHandle: "UNKNOWN_HANDLE",
	ErrCodeLimit: "LIMIT", ErrCodeUnavailable: "UNAVAILABLE", ErrCodeInternal: "INTERNAL",
	ErrCodeDenied: "DENIED", ErrCodeBadLevel: "BAD_LEVEL", ErrCodePinFailed: "PIN_FAILED",
	ErrCodeAddressMismatch: "ADDRESS_MISMATCH", ErrCodeNoEvents: "NO_EVENTS",
}

func (c ErrorCode) String() string {
	if s, ok := errorNames[c]; ok {
		return s
	}
	return fmt.Sprintf("ERROR_%d", uint16(c))
}

// Reason says WHY a flow is not protected (AttrWhyCode).
type Reason uint16

// WHY reasons (PROTOCOL.md, "WHY reasons").
const (
	ReasonNone              Reason = 0 // the flow is protected
	ReasonNoPolicy          Reason = 1 // no IPsec policy covers the flow: clear by configuration
	ReasonNoSA              Reason = 2 // a policy covers it but no SA is established (yet)
	ReasonNegotiationFailed Reason = 3 // IKE or CHILD_SA negotiation failed
	ReasonAuthFailed        Reason = 4 // the peer or we failed authentication
	ReasonLabelDenied       Reason = 5 // the label policy refused the flow's label
	ReasonOENoRecords       Reason = 6 // opportunistic: the peer publishes no IPsec records
	ReasonOEUnusable        Reason = 7 // opportunistic: DNS answer bogus, or insecure while DNSSEC is required
	ReasonLocal             Reason = 8 // host-local traffic (loopback) never passes IPsec
	ReasonBlocked           Reason = 9 // policy blocks the flow
	ReasonUnknown           Reason = 10
	// ReasonLabelUnknown: several CHILD_SAs with different security labels
	// cover the flow and the socket's own label (SO_PEERSEC) cannot be
	// read, so the answer names no label. It may come with a protected flow.
	ReasonLabelUnknown Reason = 25
)

var reasonNames = map[Reason]string{
	ReasonNone: "NONE", ReasonNoPolicy: "NO_POLICY", ReasonNoSA: "NO_SA",
	ReasonNegotiationFailed: "NEGOTIATION_FAILED", ReasonAuthFailed: "AUTH_FAILED",
	ReasonLabelDenied: "LABEL_DENIED", ReasonOENoRecords: "OE_NO_RECORDS",
	ReasonOEUnusable: "OE_UNUSABLE", ReasonLocal: "LOCAL", ReasonBlocked: "BLOCKED",
	ReasonUnknown: "UNKNOWN", ReasonPeerMismatch: "PEER_MISMATCH", ReasonDenied: "DENIED",
	ReasonPolicyWins: "POLICY_WINS", ReasonDNSTimeout: "DNS_TIMEOUT", ReasonInsufficient: "INSUFFICIENT",
	ReasonLabelUnknown: "LABEL_UNKNOWN",
}

func (r Reason) String() string {
	if s, ok := reasonNames[r]; ok {
		return s
	}
	return fmt.Sprintf("REASON_%d", uint16(r))
}

// AuthMethod is an iToken's authenticationMethod (btns-abstract-api §7).
type AuthMethod uint8

// Authentication methods, in the spec's order.
const (
	AuthNone         AuthMethod = 0
	AuthBTNS         AuthMethod = 1
	AuthLeapOfFaith  AuthMethod = 2
	AuthPresharedKey AuthMethod = 3
	AuthGroupKey     AuthMethod = 4
	AuthXAuth        AuthMethod = 5
	AuthEAP          AuthMethod = 6
	AuthPKIXTrusted  AuthMethod = 7
	AuthPKIXInline   AuthMethod = 8
	AuthPKIXOffline  AuthMethod = 9
	AuthDNSSEC       AuthMethod = 10
)

var authNames = [...]string{
	"NONE", "BTNS", "LEAPOFFAITH", "PRESHAREDKEY", "GROUPKEY", "XAUTH", "EAP",
	"PKIX_TRUSTED", "PKIX_INLINE", "PKIX_OFFLINE", "DNSSEC",
}

func (a AuthMethod) String() string {
	if int(a) < len(authNames) {
		return authNames[a]
	}
	return fmt.Sprintf("AUTH_%d", uint8(a))
}

// EventKind says what happened to a subscribed flow (AttrEventKind).
type EventKind uint8

// Event kinds (PROTOCOL.md, "Events and datagrams").
const (
	EventUp                EventKind = 1 // an SA now covers the flow
	EventDown              EventKind = 2 // no SA covers the flow any more
	EventRekeyed           EventKind = 3 // the CHILD_SA was rekeyed; the peer is the same
	EventRekeyFailed       EventKind = 4 // charon failed to rekey the SA and will retry
	EventIdentityChanged   EventKind = 5 // the flow's iToken changed
	EventProtectionChanged EventKind = 6 // privacy, integrity, compression or label changed
)

var eventNames = map[EventKind]string{
	EventUp: "UP", EventDown: "DOWN", EventRekeyed: "REKEYED", EventRekeyFailed: "REKEY_FAILED",
	EventIdentityChanged: "IDENTITY_CHANGED", EventProtectionChanged: "PROTECTION_CHANGED",
}

func (k EventKind) String() string {
	if s, ok := eventNames[k]; ok {
		return s
	}
	return fmt.Sprintf("EVENT_%d", uint8(k))
}

// Level is a protection level a PROTECT request asks for (AttrRequire) and
// the one granted (AttrGranted).
type Level uint8

// Protection levels (PROTECT.md, "Influence").
const (
	LevelNone       Level = 0 // granted: nothing (the request was refused)
	LevelEncryption Level = 1 // privacy and integrity, the peer authenticated (not BTNS/NONE)
	LevelIntegrity  Level = 2 // at least integrity; an encrypting SA satisfies it
	LevelBTNS       Level = 3 // privacy and integrity, an unauthenticated peer is fine
	LevelClear      Level = 4 // no IPsec for this socket: less than policy may want, needs privilege
)

var levelNames = [...]string{"NONE", "ENCRYPTION", "INTEGRITY", "BTNS", "CLEAR"}

func (l Level) String() string {
	if int(l) < len(levelNames) {
		return levelNames[l]
	}
	return fmt.Sprintf("LEVEL_%d", uint8(l))
}

// ParseLevel reads a level name as obolctl takes it ("encryption",
// "integrity", "btns", "clear"), case-insensitively.
func ParseLevel(s string) (Level, error) {
	for i, n := range levelNames[1:] {
		if strings.EqualFold(s, n) {
			return Level(i + 1), nil
		}
	}
	return LevelNone, fmt.Errorf("unknown protection level %q; use encryption, integrity, btns or clear", s)
}

// Pin is how obold fixed a socket after PROTECT (AttrPin).
type Pin uint8

// Pins.
const (
	PinNone   Pin = 0 // nothing was set on the socket
	PinDevice Pin = 1 // SO_BINDTODEVICE to charon's TUN device (userspace ESP): no route out in clear
	PinXFRM   Pin = 2 // per-socket XFRM policies requiring ESP, both directions (kernel ESP)
	PinBypass Pin = 3 // per-socket XFRM bypass policies: the socket's traffic stays clear (CLEAR granted)
)

var pinNames = [...]string{"NONE", "DEVICE", "XFRM", "BYPASS"}

func (p Pin) String() string {
	if int(p) < len(pinNames) {
		return pinNames[p]
	}
	return fmt.Sprintf("PIN_%d", uint8(p))
}

// WHY reasons of PROTECT refusals (tok-influence's range, 20-24).
const (
	ReasonPeerMismatch Reason = 20 // the SA's authenticated peer is not the identity asked for
	ReasonDenied       Reason = 21 // lowering protection needs CAP_NET_ADMIN or a lower_groups group
	ReasonPolicyWins   Reason = 22 // system policy (private, block, a configured tunnel) cannot be lowered
	ReasonDNSTimeout   Reason = 23 // opportunistic: the DNS lookup for the peer's records timed out
	ReasonInsufficient Reason = 24 // an SA covers the flow but is weaker than asked (no privacy, no authentication)
)

// Error codes of PROTECT (tok-influence's range, 20-24).
const (
	ErrCodeBadLevel  ErrorCode = 20 // REQUIRE missing or not a known Level
	ErrCodePinFailed ErrorCode = 21 // the socket could not be pinned; it was not changed
)

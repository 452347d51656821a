package tokenapi

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"strings"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// AuthFacts is the WHO of an iToken: the authentication method and the
// evidence the application may see.
type AuthFacts struct {
	Method wire.AuthMethod
	CertDN string // PKIX methods: the peer's certificate subject
	CADN   string // PKIX_INLINE/PKIX_OFFLINE: the CA that verified it
	// Basis is one line saying how Method was decided, for auditString.
	Basis string
}

// DeriveAuthMethod maps evidence to an authenticationMethod. It never
// claims more than the evidence shows: without proof of how a public key
// was trusted the answer is NONE. The rules, first match wins:
//
//  1. an XAuth round or remote_xauth_id: XAUTH;
//  2. an EAP round or remote_eap_id: EAP;
//  3. pre-shared key: GROUPKEY when the secret serves several identities
//     or any identity (SecretOwners != 1), else PRESHAREDKEY;
//  4. public key, obold's OE conn: what the auth method that gave the key
//     said (LEAPOFFAITH, PRESHAREDKEY for static keys, NONE), else DNSSEC
//     when the DNS answer was secure, BTNS otherwise (a key from
//     unvalidated DNS is an unverified key);
//  5. public key with a raw key the administrator pinned in the conn:
//     PRESHAREDKEY. The key was configured out of band for this one peer,
//     which is the trust of a unique pre-shared key; pubKeyID tells it
//     apart from a real PSK, and no PKIX DN is claimed;
//  6. public key whose certificate was itself in the trusted store
//     (`using trusted certificate`): PKIX_TRUSTED, even when charon then
//     also chains it to a CA;
//  7. public key verified by a trusted CA: PKIX_OFFLINE when the
//     certificate was fetched (HTTP/LDAP), else PKIX_INLINE;
//  8. anything else (null auth, missing log lines): NONE.
func DeriveAuthMethod(p Peer) AuthFacts {
	ev := p.Evidence
	classes := append([]string{ev.ConnClass}, ev.RoundClasses...)
	has := func(want string) bool {
		for _, c := range classes {
			if strings.EqualFold(c, want) || strings.HasPrefix(strings.ToLower(c), strings.ToLower(want)+"-") {
				return true
			}
		}
		return false
	}
	logm := strings.ToLower(ev.LogMethod)
	switch {
	case p.RemoteXAuthID != "" || has("xauth"):
		return AuthFacts{Method: wire.AuthXAuth, CertDN: ev.PeerCertDN, CADN: ev.TrustedCADN, Basis: "XAuth user " + quoteOr(p.RemoteXAuthID, p.RemoteID)}
	case p.RemoteEAPID != "" || has("eap") || strings.Contains(logm, "eap"):
		return AuthFacts{Method: wire.AuthEAP, CertDN: ev.PeerCertDN, CADN: ev.TrustedCADN, Basis: "EAP identity " + quoteOr(p.RemoteEAPID, p.RemoteID)}
	case has("pre-shared key") || logm == "pre-shared key":
		if ev.SecretOwners == 1 {
			return AuthFacts{Method: wire.AuthPresharedKey, Basis: "pre-shared key unique to the peer"}
		}
		if ev.SecretOwners == 0 {
			return AuthFacts{Method: wire.AuthGroupKey, Basis: "pre-shared key for any identity"}
		}
		if ev.SecretOwners < 0 {
			return AuthFacts{Method: wire.AuthGroupKey, Basis: "pre-shared key whose owners obold cannot see (loaded by swanctl): not claimed unique"}
		}
		return AuthFacts{Method: wire.AuthGroupKey, Basis: "pre-shared key shared by several identities"}
	case !has("public key") && !isSignature(logm):
		return AuthFacts{Method: wire.AuthNone, Basis: "peer not authenticated (auth class " + quoteOr(ev.ConnClass, "none") + ")"}
	case ev.OE && ev.OEMethod == plugins.MethodLeapOfFaith:
		return AuthFacts{Method: wire.AuthLeapOfFaith, Basis: "public key trusted at first contact and unchanged since (leap of faith)"}
	case ev.OE && ev.OEMethod == plugins.MethodPresharedKey:
		return AuthFacts{Method: wire.AuthPresharedKey, Basis: "public key the administrator provided for this peer (static keys)"}
	case ev.OE && ev.OEMethod == plugins.MethodNone:
		return AuthFacts{Method: wire.AuthNone, Basis: "public key nothing vouches for (auth method said NONE)"}
	case ev.OE && strings.EqualFold(ev.DNSSEC, "secure"):
		return AuthFacts{Method: wire.AuthDNSSEC, Basis: "public key from DNSSEC-secure DNS"}
	case ev.OE:
		return AuthFacts{Method: wire.AuthBTNS, Basis: "public key from DNS without DNSSEC validation"}
	case ev.PinnedKey:
		return AuthFacts{Method: wire.AuthPresharedKey, Basis: "public key pinned by the administrator"}
	case ev.TrustedCertDN != "":
		// charon found the peer's own certificate among the trusted ones;
		// a CA chain it may build after that only serves authorization
		// rules, the trust came from the local store.
		return AuthFacts{Method: wire.AuthPKIXTrusted, CertDN: ev.TrustedCertDN, Basis: "certificate in the trusted store"}
	case ev.TrustedCADN != "" && ev.Fetched:
		return AuthFacts{Method: wire.AuthPKIXOffline, CertDN: ev.PeerCertDN, CADN: ev.TrustedCADN, Basis: "fetched certificate verified by CA " + quote(ev.TrustedCADN)}
	case ev.TrustedCADN != "":
		return AuthFacts{Method: wire.AuthPKIXInline, CertDN: ev.PeerCertDN, CADN: ev.TrustedCADN, Basis: "certificate verified by CA " + quote(ev.TrustedCADN)}
	}
	return AuthFacts{Method: wire.AuthNone, Basis: "public key authentication without trust evidence"}
}

func isSignature(m string) bool {
	return strings.Contains(m, "signature") || strings.Contains(m, "rsa") || strings.Contains(m, "ecdsa") || strings.Contains(m, "ed25519") || strings.Contains(m, "ed448")
}

func quote(s string) string { return "'" + s + "'" }

func quoteOr(s, alt string) string {
	if s == "" {
		return quote(alt)
	}
	return quote(s)
}

// PubKeyID is the spec's "somewhat unique identifier" for a public key: the
// first 9 base64 digits of the RSA modulus from its RFC 3110 form; for
// Ed25519 the first 9 base64 digits of the 32 raw key bytes (the key has
// no modulus; the raw bytes are what DNS publishes, RFC 8080); for other
// algorithms the first 9 base64 digits of the SHA-256 of the DER key.
// "" when the key is absent or malformed.
func PubKeyID(k PublicKey) string {
	var b []byte
	switch strings.ToLower(k.Algorithm) {
	case "":
		return ""
	case "rsa":
		b = rsaModulus(k.Data)
	case "ed25519":
		if len(k.Data) == 32 {
			b = k.Data
		}
	default:
		if len(k.Data) > 0 {
			sum := sha256.Sum256(k.Data)
			b = sum[:]
		}
	}
	if len(b) == 0 {
		return ""
	}
	s := base64.StdEncoding.EncodeToString(b)
	if len(s) > 9 {
		s = s[:9]
	}
	return s
}

// rsaModulus returns the modulus of an RFC 3110 key: a one-byte exponent
// length (or 0 and a two-byte length), the exponent, the modulus.
func rsaModulus(d []byte) []byte {
	if len(d) < 1 {
		return nil
	}
	n, off := int(d[0]), 1
	if n == 0 {
		if len(d) < 3 {
			return nil
		}
		n, off = int(binary.BigEndian.Uint16(d[1:3])), 3
	}
	if n == 0 || len(d) <= off+n {
		return nil
	}
	return d[off+n:]
}

// ChannelBinding is the two IKE public keys in a canonical order, so both
// ends compute the same bytes: each key encoded as a 2-byte big-endian
// length followed by its bytes (the PublicKey.Data form), the two encodings
// sorted bytewise and concatenated. The length prefix keeps the
// concatenation unambiguous (an RFC 3110 key does not delimit its
// modulus). nil unless both keys are known.
func ChannelBinding(a, b PublicKey) []byte {
	if len(a.Data) == 0 || len(b.Data) == 0 || len(a.Data) > 0xFFFF || len(b.Data) > 0xFFFF {
		return nil
	}
	enc := func(k PublicKey) []byte {
		return append(binary.BigEndian.AppendUint16(nil, uint16(len(k.Data))), k.Data...)
	}
	x, y := enc(a), enc(b)
	if bytes.Compare(x, y) > 0 {
		x, y = y, x
	}
	return append(x, y...)
}

// identityKey is what makes two authentications "the same peer": the
// method, the IKE identity, the EAP/XAuth identity, the certificate and CA
// DNs and the peer key. Rekeying and re-authentication keep all of them.
func identityKey(p Peer, a AuthFacts) []byte {
	h := sha256.New()
	field := func(s string) {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(s))))
		h.Write([]byte(s))
	}
	field(a.Method.String())
	field(p.RemoteID)
	field(p.RemoteEAPID)
	field(p.RemoteXAuthID)
	field(a.CertDN)
	field(a.CADN)
	field(strings.ToLower(p.PeerKey.Algorithm))
	field(string(p.PeerKey.Data))
	return h.Sum(nil)
}

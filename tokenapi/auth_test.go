package tokenapi

import (
	"bytes"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

func TestDeriveAuthMethod(t *testing.T) {
	tests := []struct {
		name       string
		peer       Peer
		want       wire.AuthMethod
		certDN, ca string
	}{
		{"no evidence", Peer{}, wire.AuthNone, "", ""},
		{"null auth", Peer{Evidence: Evidence{ConnClass: "any"}}, wire.AuthNone, "", ""},
		{"xauth id", Peer{RemoteXAuthID: "joe", Evidence: Evidence{ConnClass: "pre-shared key", SecretOwners: 5}}, wire.AuthXAuth, "", ""},
		{"xauth round", Peer{Evidence: Evidence{ConnClass: "public key", RoundClasses: []string{"XAuth"}}}, wire.AuthXAuth, "", ""},
		{"eap id", Peer{RemoteEAPID: "joe@example.org", Evidence: Evidence{ConnClass: "public key", TrustedCADN: "CN=CA"}}, wire.AuthEAP, "", "CN=CA"},
		{"eap class", Peer{Evidence: Evidence{ConnClass: "EAP"}}, wire.AuthEAP, "", ""},
		{"eap-tls class", Peer{Evidence: Evidence{ConnClass: "eap-tls"}}, wire.AuthEAP, "", ""},
		{"unique psk", Peer{Evidence: Evidence{ConnClass: "pre-shared key", SecretOwners: 1}}, wire.AuthPresharedKey, "", ""},
		{"group psk", Peer{Evidence: Evidence{ConnClass: "pre-shared key", SecretOwners: 3}}, wire.AuthGroupKey, "", ""},
		{"wildcard psk", Peer{Evidence: Evidence{ConnClass: "pre-shared key"}}, wire.AuthGroupKey, "", ""},
		{"psk with owners unseen", Peer{Evidence: Evidence{ConnClass: "pre-shared key", SecretOwners: -1}}, wire.AuthGroupKey, "", ""},
		{"psk from log only", Peer{Evidence: Evidence{LogMethod: "pre-shared key", SecretOwners: 1}}, wire.AuthPresharedKey, "", ""},
		{"oe dnssec", Peer{Evidence: Evidence{ConnClass: "public key", OE: true, DNSSEC: "secure", PinnedKey: true}}, wire.AuthDNSSEC, "", ""},
		{"oe insecure", Peer{Evidence: Evidence{ConnClass: "public key", OE: true, DNSSEC: "insecure", PinnedKey: true}}, wire.AuthBTNS, "", ""},
		{"oe leap of faith", Peer{Evidence: Evidence{ConnClass: "public key", OE: true, DNSSEC: "insecure", OEMethod: "LEAPOFFAITH", PinnedKey: true}}, wire.AuthLeapOfFaith, "", ""},
		{"oe static key", Peer{Evidence: Evidence{ConnClass: "public key", OE: true, OEMethod: "PRESHAREDKEY", PinnedKey: true}}, wire.AuthPresharedKey, "", ""},
		{"oe method none", Peer{Evidence: Evidence{ConnClass: "public key", OE: true, DNSSEC: "secure", OEMethod: "NONE", PinnedKey: true}}, wire.AuthNone, "", ""},
		{"pinned raw key", Peer{Evidence: Evidence{ConnClass: "public key", PinnedKey: true, TrustedCertDN: "moon"}}, wire.AuthPresharedKey, "", ""},
		{"ca verified inline", Peer{Evidence: Evidence{ConnClass: "public key", TrustedCADN: "C=CH, CN=CA", PeerCertDN: "CN=moon"}}, wire.AuthPKIXInline, "CN=moon", "C=CH, CN=CA"},
		{"ca verified fetched", Peer{Evidence: Evidence{ConnClass: "public key", TrustedCADN: "CN=CA", PeerCertDN: "CN=moon", Fetched: true}}, wire.AuthPKIXOffline, "CN=moon", "CN=CA"},
		{"trusted end cert chained to a CA", Peer{Evidence: Evidence{ConnClass: "public key", TrustedCertDN: "CN=moon", TrustedCADN: "CN=CA"}}, wire.AuthPKIXTrusted, "CN=moon", ""},
		{"trusted end cert", Peer{Evidence: Evidence{ConnClass: "public key", TrustedCertDN: "CN=moon"}}, wire.AuthPKIXTrusted, "CN=moon", ""},
		{"signature from log, no trust evidence", Peer{Evidence: Evidence{LogMethod: "RSA_EMSA_PKCS1_SHA2_256"}}, wire.AuthNone, "", ""},
		{"ed25519 log with CA", Peer{Evidence: Evidence{LogMethod: "ED25519", TrustedCADN: "CN=CA"}}, wire.AuthPKIXInline, "", "CN=CA"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := DeriveAuthMethod(tc.peer)
			if got.Method != tc.want || got.CertDN != tc.certDN || got.CADN != tc.ca {
				t.Fatalf("got %v cert %q ca %q (%s), want %v cert %q ca %q", got.Method, got.CertDN, got.CADN, got.Basis, tc.want, tc.certDN, tc.ca)
			}
			if got.Basis == "" {
				t.Error("no basis for the audit string")
			}
		})
	}
}

func TestPubKeyID(t *testing.T) {
	modulus := bytes.Repeat([]byte{0xAB, 0xCD, 0xEF}, 86)
	rsa := append([]byte{3, 1, 0, 1}, modulus...)
	rsaLong := append([]byte{0, 0, 3, 1, 0, 1}, modulus...)
	ed := bytes.Repeat([]byte{7}, 32)
	tests := []struct {
		name string
		k    PublicKey
		want string
	}{
		{"rsa", PublicKey{Algorithm: "rsa", Data: rsa}, base64.StdEncoding.EncodeToString(modulus)[:9]},
		{"rsa long exponent length", PublicKey{Algorithm: "RSA", Data: rsaLong}, base64.StdEncoding.EncodeToString(modulus)[:9]},
		{"ed25519", PublicKey{Algorithm: "ed25519", Data: ed}, base64.StdEncoding.EncodeToString(ed)[:9]},
		{"ed25519 wrong size", PublicKey{Algorithm: "ed25519", Data: ed[:31]}, ""},
		{"rsa truncated", PublicKey{Algorithm: "rsa", Data: []byte{3, 1, 0, 1}}, ""},
		{"rsa empty", PublicKey{Algorithm: "rsa", Data: nil}, ""},
		{"none", PublicKey{}, ""},
	}
	for _, tc := range tests {
		if got := PubKeyID(tc.k); got != tc.want {
			t.Errorf("%s: PubKeyID %q, want %q", tc.name, got, tc.want)
		}
	}
	if got := PubKeyID(PublicKey{Algorithm: "ecdsa", Data: []byte{1, 2}}); len(got) != 9 {
		t.Errorf("ecdsa: %q", got)
	}
}

func TestChannelBinding(t *testing.T) {
	a := PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{2}, 32)}
	b := PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{1}, 32)}
	ab, ba := ChannelBinding(a, b), ChannelBinding(b, a)
	if !bytes.Equal(ab, ba) {
		t.Fatal("channel binding depends on which end computes it")
	}
	want := append(append([]byte{0, 32}, b.Data...), append([]byte{0, 32}, a.Data...)...)
	if !bytes.Equal(ab, want) {
		t.Fatalf("got %x want %x", ab, want)
	}
	if ChannelBinding(a, PublicKey{}) != nil {
		t.Error("binding with one key missing")
	}
}

func TestClassify(t *testing.T) {
	prot := func(c Child) Protection { return Protection{Protected: true, Child: c} }
	untrusted := []string{"3des_cbc", "AES_CBC_128"}
	tests := []struct {
		name string
		p    Protection
		want HowFacts
	}{
		{"unprotected", Protection{Why: wire.ReasonNoPolicy}, HowFacts{}},
		{"gcm", prot(Child{Protocol: "ESP", EncrAlg: "AES_GCM_16", EncrKey: 256}), HowFacts{Privacy: true, Integrity: true}},
		{"chacha", prot(Child{Protocol: "ESP", EncrAlg: "CHACHA20_POLY1305", EncrKey: 256}), HowFacts{Privacy: true, Integrity: true}},
		{"cbc+sha", prot(Child{Protocol: "ESP", EncrAlg: "AES_CBC", EncrKey: 256, IntegAlg: "HMAC_SHA2_256_128"}), HowFacts{Privacy: true, Integrity: true}},
		{"cbc no integ", prot(Child{Protocol: "ESP", EncrAlg: "AES_CBC", EncrKey: 256}), HowFacts{Privacy: true}},
		{"esp null", prot(Child{Protocol: "ESP", EncrAlg: "NULL", IntegAlg: "HMAC_SHA2_256_128"}), HowFacts{Integrity: true}},
		{"gmac", prot(Child{Protocol: "ESP", EncrAlg: "NULL_AES_GMAC", EncrKey: 128}), HowFacts{Integrity: true}},
		{"ah", prot(Child{Protocol: "AH", IntegAlg: "HMAC_SHA2_256_128"}), HowFacts{Integrity: true}},
		{"untrusted name", prot(Child{Protocol: "ESP", EncrAlg: "3DES_CBC", IntegAlg: "HMAC_SHA1_96"}), HowFacts{Integrity: true}},
		{"untrusted size", prot(Child{Protocol: "ESP", EncrAlg: "AES_CBC", EncrKey: 128, IntegAlg: "HMAC_SHA1_96"}), HowFacts{Integrity: true}},
		{"trusted other size", prot(Child{Protocol: "ESP", EncrAlg: "AES_CBC", EncrKey: 256, IntegAlg: "HMAC_SHA1_96"}), HowFacts{Privacy: true, Integrity: true}},
		{"ipcomp", prot(Child{Protocol: "ESP", EncrAlg: "AES_GCM_16", EncrKey: 128, IPComp: true}), HowFacts{Privacy: true, Integrity: true, Compression: true}},
	}
	for _, tc := range tests {
		if got := Classify(tc.p, untrusted); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}
}

func TestIdentityKeyStable(t *testing.T) {
	p := Peer{RemoteID: "moon", PeerKey: PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{1}, 32)}, Evidence: Evidence{ConnClass: "public key", OE: true, DNSSEC: "secure"}}
	a := DeriveAuthMethod(p)
	rekeyed := p
	rekeyed.OurKey = PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{9}, 32)}
	if !bytes.Equal(identityKey(p, a), identityKey(rekeyed, DeriveAuthMethod(rekeyed))) {
		t.Error("identity changed with facts that do not name the peer")
	}
	other := p
	other.PeerKey.Data = bytes.Repeat([]byte{2}, 32)
	if bytes.Equal(identityKey(p, a), identityKey(other, DeriveAuthMethod(other))) {
		t.Error("another peer key gives the same identity")
	}
}

// The iToken's audit string names the peer key when known and says why
// when a public key is unknown; it never carries the key itself.
func TestAuditIToken(t *testing.T) {
	ed := PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{9}, 32)}
	tests := []struct {
		name      string
		peer      Peer
		want, not []string
	}{
		{"key known", Peer{RemoteID: "192.0.2.12", PeerKey: ed, Evidence: Evidence{ConnClass: "public key", PinnedKey: true}},
			[]string{"'192.0.2.12'", "PRESHAREDKEY", "key ed25519:" + PubKeyID(ed)}, []string{"unknown", base64.StdEncoding.EncodeToString(ed.Data)}},
		{"key unknown", Peer{RemoteID: "CN=b", KeyNote: "peer key unknown (2 different keys match \"CN=b\")",
			Evidence: Evidence{ConnClass: "public key", TrustedCADN: "CN=CA", PeerCertDN: "CN=b"}},
			[]string{"PKIX_INLINE", "peer key unknown (2 different keys match", "no pubKeyID/channelBinding claimed"}, []string{"key ed25519"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := auditIToken(tc.peer, DeriveAuthMethod(tc.peer))
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("audit %q lacks %q", got, w)
				}
			}
			for _, n := range tc.not {
				if strings.Contains(got, n) {
					t.Errorf("audit %q has %q", got, n)
				}
			}
		})
	}
}

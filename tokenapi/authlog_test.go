package tokenapi

import (
	"reflect"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

func TestAuthLog(t *testing.T) {
	tests := []struct {
		name  string
		lines []string
		want  Evidence
		done  bool
		auth  wire.AuthMethod
	}{
		{"inline certificate with CRL check", []string{
			"received end entity cert \"CN=moon\"",
			"  using certificate \"CN=moon\"",
			"  using trusted ca certificate \"C=CH, O=Lab, CN=Lab Root CA\"",
			"checking certificate status of \"CN=moon\"",
			"  fetching crl from 'http://crl.example/root.crl' ...",
			"  using trusted certificate \"C=CH, O=Lab, CN=Lab Root CA\"",
			"  crl correctly signed by \"C=CH, O=Lab, CN=Lab Root CA\"",
			"certificate status is good",
			"  reached self-signed root ca with a path length of 0",
			"authentication of 'CN=moon' with RSA_EMSA_PKCS1_SHA2_256 successful",
			"  using trusted certificate \"CN=other\"",
		}, Evidence{ConnClass: "public key", PeerCertDN: "CN=moon", TrustedCADN: "C=CH, O=Lab, CN=Lab Root CA", LogMethod: "RSA_EMSA_PKCS1_SHA2_256"}, true, wire.AuthPKIXInline},
		{"trusted peer certificate", []string{
			"authentication of 'sun' (myself) with ED25519 successful",
			"  using trusted certificate \"CN=sun\"",
			"authentication of 'CN=sun' with ED25519 successful",
		}, Evidence{ConnClass: "public key", TrustedCertDN: "CN=sun", LogMethod: "ED25519"}, true, wire.AuthPKIXTrusted},
		{"fetched certificate", []string{
			"  fetching certificate from 'http://certs.example/moon.der' ...",
			"  using certificate \"CN=moon\"",
			"  using trusted ca certificate \"CN=CA\"",
			"authentication of 'moon' with RSA signature successful",
		}, Evidence{ConnClass: "public key", Fetched: true, PeerCertDN: "CN=moon", TrustedCADN: "CN=CA", LogMethod: "RSA signature"}, true, wire.AuthPKIXOffline},
		{"psk", []string{"authentication of 'gw' with pre-shared key successful"},
			Evidence{ConnClass: "pre-shared key", LogMethod: "pre-shared key"}, true, wire.AuthGroupKey},
		{"not finished", []string{"  using certificate \"CN=moon\""}, Evidence{ConnClass: "public key", PeerCertDN: "CN=moon"}, false, wire.AuthNone},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := AuthLog{Evidence: Evidence{ConnClass: tc.want.ConnClass}}
			for _, line := range tc.lines {
				l.Feed(line)
			}
			if l.Done != tc.done {
				t.Errorf("done %v", l.Done)
			}
			got := l.Evidence
			if got.PeerCertDN != tc.want.PeerCertDN || got.TrustedCADN != tc.want.TrustedCADN || got.TrustedCertDN != tc.want.TrustedCertDN || got.LogMethod != tc.want.LogMethod || got.Fetched != tc.want.Fetched {
				t.Errorf("evidence %+v\nwant     %+v", got, tc.want)
			}
			if m := DeriveAuthMethod(Peer{Evidence: got}).Method; m != tc.auth {
				t.Errorf("method %s, want %s", m, tc.auth)
			}
		})
	}
}

// FuzzAuthLog: charon's log lines (any text) never panic the evidence
// parser; nothing is taken from lines after the peer's success line, and a
// DN is only ever text that stood between quotes.
func FuzzAuthLog(f *testing.F) {
	f.Add(`  using certificate "C=CH, CN=b"`, `  using trusted ca certificate "CN=CA"`, "authentication of 'CN=b' with ED25519 successful")
	f.Add(`  using trusted certificate "192.0.2.12"`, "authentication of '192.0.2.11' (myself) with RSA successful", "authentication of '192.0.2.12' with ED25519 successful")
	f.Add(`using certificate "`, `"`, "authentication of '")
	f.Fuzz(func(t *testing.T, a, b, c string) {
		var l AuthLog
		for _, m := range []string{a, b, c} {
			before := l.Evidence
			done := l.Done
			l.Feed(m)
			if done && !reflect.DeepEqual(l.Evidence, before) {
				t.Fatalf("evidence changed after the success line: %+v -> %+v", before, l.Evidence)
			}
		}
		for _, dn := range []string{l.Evidence.PeerCertDN, l.Evidence.TrustedCADN, l.Evidence.TrustedCertDN} {
			if dn != "" && !strings.Contains(a+b+c, `"`+dn+`"`) {
				t.Fatalf("DN %q was not quoted in the input", dn)
			}
		}
	})
}

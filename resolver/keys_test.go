package resolver

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/plugins"
)

func readPEM(t *testing.T, path string) any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		t.Fatalf("%s: no PEM", path)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

// The vectors in testdata come from strongSwan 5.9.8's pki: the public
// keys (pki --pub), the RSA key's DNS form (pki --pub --outform dnskey) and
// their "subjkey" ids (pki --keyid).
func TestKeysMatchStrongSwan(t *testing.T) {
	cases := []struct {
		pemFile, dnskey, keyID string
	}{
		{"testdata/rsa2048.pub.pem", vectorRSA(t), "0fbdc4f00059689fa8b5240e2c3847809a778d7b"},
		{"testdata/ed25519.pub.pem", "", "1d9c9f4e2c05458bdcd10c558a460b9ec67f7499"},
	}
	for _, tc := range cases {
		t.Run(tc.pemFile, func(t *testing.T) {
			pub := readPEM(t, tc.pemFile)
			k, err := NewPublicKey(pub)
			if err != nil {
				t.Fatal(err)
			}
			if tc.dnskey != "" && b64(k.Data) != tc.dnskey {
				t.Errorf("EncodeRFC3110 = %s…, pki says %s…", b64(k.Data)[:40], tc.dnskey[:40])
			}
			id, err := KeyID(k)
			if err != nil || id != tc.keyID {
				t.Errorf("KeyID = %s, %v; pki --keyid says %s", id, err, tc.keyID)
			}
			p, err := PEM(k)
			if err != nil {
				t.Fatal(err)
			}
			want, _ := os.ReadFile(tc.pemFile)
			if !bytes.Equal(p, want) {
				t.Errorf("PEM =\n%s\npki --pub wrote\n%s", p, want)
			}
		})
	}
}

func TestRFC3110RoundTrip(t *testing.T) {
	for i := range 2 {
		pub := testRSA(t, i)
		got, err := ParseRFC3110(EncodeRFC3110(pub))
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(pub) {
			t.Errorf("key %d: round trip changed the key", i)
		}
	}
	// A long exponent uses the three-byte length form.
	big := &rsa.PublicKey{N: testRSA(t, 0).N, E: 65537}
	enc := EncodeRFC3110(big)
	long := append([]byte{0, 0, 3}, enc[1:]...)
	if got, err := ParseRFC3110(long); err != nil || !got.Equal(big) {
		t.Errorf("three-byte exponent length: %v", err)
	}
}

func TestParseRFC3110Errors(t *testing.T) {
	n := testRSA(t, 0).N.Bytes()
	even := append([]byte(nil), n...)
	even[len(even)-1] &^= 1
	cases := []struct {
		name string
		data []byte
		want string
	}{
		{"empty", nil, "empty"},
		{"cut in the long length", []byte{0, 1}, "exponent length"},
		{"zero exponent length", []byte{0, 0, 0, 1, 2}, "zero-length exponent"},
		{"cut in the exponent", []byte{3, 1, 0}, "ends inside its exponent"},
		{"no modulus", []byte{3, 1, 0, 1}, "no modulus"},
		{"even exponent", append([]byte{1, 4}, n...), "exponent 4"},
		{"exponent 1", append([]byte{1, 1}, n...), "exponent 1"},
		{"huge exponent", append([]byte{5, 1, 0, 0, 0, 1}, n...), "exponent 4294967297"},
		{"small modulus", append([]byte{1, 3}, n[:64]...), "512 bits"},
		{"even modulus", append([]byte{1, 3}, even...), "even"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseRFC3110(tc.data)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseRFC3110 error = %v, want one mentioning %q", err, tc.want)
			}
		})
	}
}

func TestKeyConversions(t *testing.T) {
	ed := testEd25519(0)
	for _, k := range []plugins.PublicKey{rsaKey(testRSA(t, 1)), edKey(ed)} {
		der, err := PKIX(k)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := x509.ParsePKIXPublicKey(der)
		if err != nil {
			t.Fatal(err)
		}
		back, err := NewPublicKey(pub)
		if err != nil || back.Algorithm != k.Algorithm || !bytes.Equal(back.Data, k.Data) {
			t.Errorf("%s: PKIX round trip: %v", k.Algorithm, err)
		}
		id1, _ := KeyID(k)
		id2, _ := KeyID(back)
		if len(id1) != 40 || id1 != id2 {
			t.Errorf("%s: KeyID %q vs %q", k.Algorithm, id1, id2)
		}
	}
	if _, err := PEM(plugins.PublicKey{Algorithm: "dsa", Data: []byte{1}}); err == nil || !strings.Contains(err.Error(), `"dsa" is not supported`) {
		t.Errorf("unknown algorithm: %v", err)
	}
	if _, err := PEM(plugins.PublicKey{Algorithm: AlgEd25519, Data: make([]byte, 31)}); err == nil {
		t.Error("31-byte Ed25519 key accepted")
	}
	if _, err := NewPublicKey(ed25519.PublicKey(make([]byte, 5))); err == nil {
		t.Error("5-byte Ed25519 key accepted")
	}
	if _, err := NewPublicKey("not a key"); err == nil {
		t.Error("a string accepted as a key")
	}
}

package tokenapi

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/resolver"
)

func TestKeyFromSPKI(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	ck, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spki := func(k any) []byte {
		b, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	ecDER := spki(&ck.PublicKey)
	tests := []struct {
		name    string
		der     []byte
		want    PublicKey
		wantErr bool
	}{
		{"rsa", spki(&rk.PublicKey), PublicKey{Algorithm: "rsa", Data: resolver.EncodeRFC3110(&rk.PublicKey)}, false},
		{"ed25519", spki(ek.Public()), PublicKey{Algorithm: "ed25519", Data: ek.Public().(ed25519.PublicKey)}, false},
		{"ecdsa", ecDER, PublicKey{Algorithm: "ecdsa", Data: ecDER}, false},
		{"empty", nil, PublicKey{}, true},
		{"garbage", []byte{0x30, 0x03, 1, 2, 3}, PublicKey{}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := KeyFromSPKI(tc.der)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if !SameKey(got, tc.want) {
				t.Fatalf("got %s/%x, want %s/%x", got.Algorithm, got.Data, tc.want.Algorithm, tc.want.Data)
			}
		})
	}
	// RSA: pubKeyID is of the modulus, as for an OE key from DNS.
	k, _ := KeyFromSPKI(spki(&rk.PublicKey))
	if PubKeyID(k) == "" {
		t.Error("no pubKeyID for an RSA key")
	}
}

func TestKeyFromCert(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	for _, isCA := range []bool{false, true} {
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "hostb"},
			NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true, IsCA: isCA}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
		if err != nil {
			t.Fatal(err)
		}
		k, ca, err := KeyFromCert(der)
		if err != nil || ca != isCA || !SameKey(k, PublicKey{Algorithm: "ed25519", Data: pub}) {
			t.Fatalf("isCA %v: got %v %v %v", isCA, k, ca, err)
		}
	}
	if _, _, err := KeyFromCert([]byte("not a cert")); err == nil {
		t.Error("garbage accepted as a certificate")
	}
}

// FuzzKeyFromVICI: the DER blobs of list-certs never panic the parsers, and
// a key they accept has data pubKeyID can use.
func FuzzKeyFromVICI(f *testing.F) {
	_, ek, _ := ed25519.GenerateKey(rand.Reader)
	b, _ := x509.MarshalPKIXPublicKey(ek.Public())
	f.Add(b)
	f.Add([]byte{0x30, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		if k, err := KeyFromSPKI(der); err == nil && (len(k.Data) == 0 || k.Algorithm == "") {
			t.Fatalf("accepted an empty key: %+v", k)
		}
		if k, _, err := KeyFromCert(der); err == nil && len(k.Data) == 0 {
			t.Fatalf("accepted a certificate without a key: %+v", k)
		}
	})
}

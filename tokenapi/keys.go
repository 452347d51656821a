package tokenapi

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"fmt"

	"github.com/obol-ipsec/obol/resolver"
)

// KeyFromSPKI turns a DER SubjectPublicKeyInfo (a raw public key as charon
// lists it) into the form pubKeyID and channelBinding use: RFC 3110 for
// RSA, the 32 raw bytes for Ed25519, the DER itself for other algorithms.
func KeyFromSPKI(der []byte) (PublicKey, error) {
	if len(der) == 0 {
		return PublicKey{}, errors.New("public key: no data")
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return PublicKey{}, fmt.Errorf("public key: not a DER SubjectPublicKeyInfo: %w", err)
	}
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return PublicKey{Algorithm: resolver.AlgRSA, Data: resolver.EncodeRFC3110(k)}, nil
	case ed25519.PublicKey:
		return PublicKey{Algorithm: resolver.AlgEd25519, Data: append([]byte(nil), k...)}, nil
	case *ecdsa.PublicKey:
		return PublicKey{Algorithm: "ecdsa", Data: append([]byte(nil), der...)}, nil
	default:
		return PublicKey{Algorithm: fmt.Sprintf("%T", pub), Data: append([]byte(nil), der...)}, nil
	}
}

// KeyFromCert returns the public key of a DER X.509 certificate, and
// whether the certificate is a CA's.
func KeyFromCert(der []byte) (PublicKey, bool, error) {
	if len(der) == 0 {
		return PublicKey{}, false, errors.New("certificate: no data")
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		return PublicKey{}, false, fmt.Errorf("certificate: not DER X.509: %w", err)
	}
	k, err := KeyFromSPKI(c.RawSubjectPublicKeyInfo)
	if err != nil {
		return PublicKey{}, false, fmt.Errorf("certificate %q: %w", c.Subject, err)
	}
	return k, c.IsCA, nil
}

// SameKey says whether a and b are the same key.
func SameKey(a, b PublicKey) bool {
	return a.Algorithm == b.Algorithm && string(a.Data) == string(b.Data)
}

package resolver

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"unicode/utf8"

	"github.com/obol-ipsec/obol/plugins"
)

// Key algorithms as plugins.PublicKey names them.
const (
	AlgRSA     = "rsa"     // Data: RFC 3110 wire form
	AlgEd25519 = "ed25519" // Data: the 32-byte public key (RFC 8032)
)

// Limits on RSA keys taken from DNS. Smaller keys are too weak to trust;
// larger ones cost charon too much to verify.
const (
	MinRSABits = 2048
	MaxRSABits = 16384
)

// ParseRFC3110 decodes an RSA public key in RFC 3110 form (the key field of
// KEY, IPSECKEY algorithm 2 and X-IPsec-Server TXT records): an exponent
// length (one byte, or zero then two bytes), the exponent, the modulus, all
// big-endian. The key must have between MinRSABits and MaxRSABits bits and
// an odd exponent from 3 to 2^31-1.
func ParseRFC3110(b []byte) (*rsa.PublicKey, error) {
	if len(b) == 0 {
		return nil, errors.New("RSA key is empty")
	}
	elen, off := int(b[0]), 1
	if elen == 0 {
		if len(b) < 3 {
			return nil, errors.New("RSA key ends inside its exponent length")
		}
		elen, off = int(b[1])<<8|int(b[2]), 3
	}
	if elen == 0 {
		return nil, errors.New("RSA key has a zero-length exponent")
	}
	if len(b) < off+elen {
		return nil, fmt.Errorf("RSA key ends inside its exponent (%d of %d bytes)", len(b)-off, elen)
	}
	e := new(big.Int).SetBytes(b[off : off+elen])
	mod := b[off+elen:]
	if len(mod) == 0 {
		return nil, errors.New("RSA key has no modulus")
	}
	if !e.IsInt64() || e.Int64() < 3 || e.Int64() > 1<<31-1 || e.Bit(0) == 0 {
		return nil, fmt.Errorf("RSA exponent %s is not an odd number from 3 to 2^31-1", shorten(e.String(), 24))
	}
	n := new(big.Int).SetBytes(mod)
	if bits := n.BitLen(); bits < MinRSABits || bits > MaxRSABits {
		return nil, fmt.Errorf("RSA key has %d bits; keys from %d to %d bits are accepted", bits, MinRSABits, MaxRSABits)
	}
	if n.Bit(0) == 0 {
		return nil, errors.New("RSA modulus is even: not an RSA key")
	}
	return &rsa.PublicKey{N: n, E: int(e.Int64())}, nil
}

// EncodeRFC3110 is ParseRFC3110's inverse: the form to publish in DNS.
func EncodeRFC3110(k *rsa.PublicKey) []byte {
	e := big.NewInt(int64(k.E)).Bytes()
	n := k.N.Bytes()
	var out []byte
	if len(e) <= 255 {
		out = append(make([]byte, 0, 1+len(e)+len(n)), byte(len(e)))
	} else {
		out = append(make([]byte, 0, 3+len(e)+len(n)), 0, byte(len(e)>>8), byte(len(e)))
	}
	return append(append(out, e...), n...)
}

// NewPublicKey turns an *rsa.PublicKey or ed25519.PublicKey into the DNS
// form obol passes around.
func NewPublicKey(pub crypto.PublicKey) (plugins.PublicKey, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return plugins.PublicKey{Algorithm: AlgRSA, Data: EncodeRFC3110(k)}, nil
	case ed25519.PublicKey:
		if len(k) != ed25519.PublicKeySize {
			return plugins.PublicKey{}, fmt.Errorf("Ed25519 key has %d bytes, want %d", len(k), ed25519.PublicKeySize)
		}
		return plugins.PublicKey{Algorithm: AlgEd25519, Data: append([]byte(nil), k...)}, nil
	default:
		return plugins.PublicKey{}, fmt.Errorf("%T keys cannot be published for obol; use RSA or Ed25519", pub)
	}
}

// CryptoKey decodes a DNS key into an *rsa.PublicKey or ed25519.PublicKey.
func CryptoKey(k plugins.PublicKey) (crypto.PublicKey, error) {
	switch k.Algorithm {
	case AlgRSA:
		return ParseRFC3110(k.Data)
	case AlgEd25519:
		if len(k.Data) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("Ed25519 key has %d bytes, want %d", len(k.Data), ed25519.PublicKeySize)
		}
		return ed25519.PublicKey(append([]byte(nil), k.Data...)), nil
	default:
		return nil, fmt.Errorf("key algorithm %q is not supported; obol uses %q and %q", k.Algorithm, AlgRSA, AlgEd25519)
	}
}

// PKIX returns the key as a DER SubjectPublicKeyInfo, which charon takes in
// a conn's remote pubkeys (over VICI pass it as string(der)).
func PKIX(k plugins.PublicKey) ([]byte, error) {
	pub, err := CryptoKey(k)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("encoding the %s key as PKIX: %w", k.Algorithm, err)
	}
	return der, nil
}

// PEM returns PKIX as a "PUBLIC KEY" PEM block (what `pki --pub` writes).
func PEM(k plugins.PublicKey) ([]byte, error) {
	der, err := PKIX(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// KeyID is a stable identifier of a key: the SHA-1 of its subjectPublicKey
// in lowercase hex. It equals what `pki --keyid` prints as "subjkey" and
// the key identity (ID_KEY_ID, "@#<hex>" in swanctl) charon gives a raw
// public key loaded without an id.
func KeyID(k plugins.PublicKey) (string, error) {
	pub, err := CryptoKey(k)
	if err != nil {
		return "", err
	}
	var spk []byte
	switch p := pub.(type) {
	case *rsa.PublicKey:
		spk = x509.MarshalPKCS1PublicKey(p)
	case ed25519.PublicKey:
		spk = p
	}
	sum := sha1.Sum(spk)
	return hex.EncodeToString(sum[:]), nil
}

// shorten cuts s to at most n bytes (on a rune boundary) for messages.
func shorten(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

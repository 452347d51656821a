// Package keyfile reads the private keys obol is given (PEM: PKCS#8,
// PKCS#1 or SEC1) and derives their public halves.
package keyfile

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// PublicPEM derives the public key (PKIX, PEM) from a PEM private key.
// charon binds a raw-key identity to its private key only through the
// conn's local pubkeys, so obold sends the public half along with the key.
func PublicPEM(privPEM []byte) ([]byte, error) {
	signer, err := Signer(privPEM)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("encode public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// Signer parses a PEM private key.
func Signer(privPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(privPEM)
	if block == nil {
		return nil, errors.New("no PEM block found; give a PEM private key (pki --gen --outform pem)")
	}
	var key any
	var err error
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("PEM block %q is not a private key; give an RSA, ECDSA or Ed25519 private key", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", block.Type, err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("%T cannot sign; give an RSA, ECDSA or Ed25519 private key", key)
	}
	return signer, nil
}

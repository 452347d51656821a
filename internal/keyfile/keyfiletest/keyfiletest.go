// Package keyfiletest writes private keys for tests, as strongswan-pki
// writes them (PKCS#8 PEM).
package keyfiletest

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
)

// Ed25519 writes an Ed25519 private key to dir/name and returns its path.
// An empty seed makes a random key; a seed makes the same key every time
// (for golden output).
func Ed25519(t testing.TB, dir, name, seed string) string {
	t.Helper()
	var priv ed25519.PrivateKey
	if seed == "" {
		var err error
		if _, priv, err = ed25519.GenerateKey(rand.Reader); err != nil {
			t.Fatal(err)
		}
	} else {
		s := sha256.Sum256([]byte(seed))
		priv = ed25519.NewKeyFromSeed(s[:])
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

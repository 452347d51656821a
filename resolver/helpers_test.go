package resolver

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

// Test keys: RSA keys take a while to generate, so a few are made once per
// test binary; Ed25519 keys come from fixed seeds.
var (
	rsaOnce sync.Once
	rsaKeys [3]*rsa.PrivateKey
)

func testRSA(t testing.TB, i int) *rsa.PublicKey {
	t.Helper()
	rsaOnce.Do(func() {
		for j := range rsaKeys {
			k, err := rsa.GenerateKey(rand.Reader, 2048)
			if err != nil {
				panic(err)
			}
			rsaKeys[j] = k
		}
	})
	return &rsaKeys[i].PublicKey
}

func testEd25519(i int) ed25519.PublicKey {
	seed := sha256.Sum256([]byte(fmt.Sprintf("obol resolver test key %d", i)))
	return ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey)
}

func b64(b []byte) string { return base64.StdEncoding.EncodeToString(b) }

func rsaB64(k *rsa.PublicKey) string { return b64(EncodeRFC3110(k)) }

func rsaKey(k *rsa.PublicKey) plugins.PublicKey {
	return plugins.PublicKey{Algorithm: AlgRSA, Data: EncodeRFC3110(k)}
}

func edKey(k ed25519.PublicKey) plugins.PublicKey {
	return plugins.PublicKey{Algorithm: AlgEd25519, Data: []byte(k)}
}

// txt builds a TXT record line whose text is split into character-strings
// of at most 255 bytes, as a zone holding a long key must.
func txt(owner string, ttl int, text string) string {
	var parts []string
	for len(text) > 255 {
		parts = append(parts, `"`+text[:255]+`"`)
		text = text[255:]
	}
	parts = append(parts, `"`+text+`"`)
	return fmt.Sprintf("%s %d IN TXT %s", owner, ttl, strings.Join(parts, " "))
}

// fakeClock is the cache's clock in tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// newTest makes a Resolver on a fake server with a fake clock; mod edits
// the config first.
func newTest(t testing.TB, fake *resolvertest.Server, mod func(*Config)) (*Resolver, *fakeClock) {
	t.Helper()
	cfg := Defaults()
	cfg.Timeout = Duration(2 * time.Second)
	if mod != nil {
		mod(&cfg)
	}
	clock := newClock()
	r, err := New(cfg, Options{Transport: fake, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r, clock
}

func mustAdd(t testing.TB, fake *resolvertest.Server, lines ...string) {
	t.Helper()
	if err := fake.Add(lines...); err != nil {
		t.Fatal(err)
	}
}

// checkKey says whether a key from an answer is one charon can use.
func checkKey(k plugins.PublicKey) error {
	_, err := CryptoKey(k)
	return err
}

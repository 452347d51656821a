package main

import (
	"bufio"
	"bytes"
	"context"
	"log"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/tokenapitest"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// startTokenAPI serves the token API on a temp socket; every flow gets p.
func startTokenAPI(t *testing.T, p tokenapi.Protection) string {
	t.Helper()
	facts := tokenapi.FactsFunc(func(context.Context, tokenapi.Flow) (tokenapi.Protection, error) { return p, nil })
	_, sock := tokenapitest.Serve(t, tokenapi.Config{UntrustedCiphers: []string{"3DES_CBC"}}, facts)
	return sock
}

func TestServe(t *testing.T) {
	peer := tokenapi.Peer{
		RemoteID: "CN=sun",
		PeerKey:  tokenapi.PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{0xA}, 32)},
		OurKey:   tokenapi.PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{0x1}, 32)},
		Evidence: tokenapi.Evidence{ConnClass: "public key", TrustedCADN: "CN=Lab CA", PeerCertDN: "CN=sun"},
	}
	tests := []struct {
		name     string
		p        *tokenapi.Protection // nil: no token API at all
		greeting string
		printed  []string
	}{
		{"private", &tokenapi.Protection{Protected: true, Peer: peer, Child: tokenapi.Child{Protocol: "ESP", EncrAlg: "AES_GCM_16", EncrKey: 256}},
			"is private (IPsec)", []string{"protected:   true (privacy true, integrity true, compression false)", "peer:        CN=sun", "auth method: PKIX_INLINE",
				"CA DN:       CN=Lab CA", "binding:     0020", "(68 bytes)", "iToken:      "}},
		{"untrusted cipher", &tokenapi.Protection{Protected: true, Peer: peer, Child: tokenapi.Child{Protocol: "ESP", EncrAlg: "3DES_CBC", EncrKey: 192, IntegAlg: "HMAC_SHA1_96"}},
			"NOT private (the SA has no confidentiality", []string{"protected:   true (privacy false, integrity true", "peer:        CN=sun"}},
		{"clear", &tokenapi.Protection{Why: wire.ReasonNoPolicy, WhyText: "no conn covers it"},
			"NOT private (NO_POLICY: no conn covers it)", []string{"protected:   false", "why:         NO_POLICY: no conn covers it", "peer:        - (no authenticated peer)"}},
		{"no obold", nil, "could not tell", []string{"error:", "is obold running"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "absent.sock")
			if tt.p != nil {
				sock = startTokenAPI(t, *tt.p)
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- serve(ctx, ln, sock, log.New(&out, "", 0)) }()

			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			greeting, err := bufio.NewReader(c).ReadString('\n')
			if err != nil {
				t.Fatalf("no greeting: %v", err)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("serve: %v", err)
			}
			if !strings.HasPrefix(greeting, "hello "+c.LocalAddr().String()) || !strings.Contains(greeting, tt.greeting) {
				t.Errorf("greeting %q, want one to %s with %q", greeting, c.LocalAddr(), tt.greeting)
			}
			printed := out.String()
			for _, s := range append(tt.printed, "client "+c.LocalAddr().String()) {
				if !strings.Contains(printed, s) {
					t.Errorf("printed block lacks %q:\n%s", s, printed)
				}
			}
		})
	}
}

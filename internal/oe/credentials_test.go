package oe

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

func testCA(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "corp CA"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// What an auth method gives besides raw keys becomes the conn's auth: a
// PSK for both ends (loaded bound to the two identities, unloaded with the
// conn), or CAs the gateway's certificate must chain to.
func TestCredentialsBesidesKeys(t *testing.T) {
	psk := []byte("0123456789abcdef0123456789abcdef")
	ca := testCA(t)
	tests := []struct {
		name  string
		gw    plugins.Gateway
		check func(t *testing.T, c vici.Conn, shared map[string]vici.Shared)
	}{
		{"psk", plugins.Gateway{Precedence: 10, Addr: netip.MustParseAddr("192.0.2.2"), PSK: psk, Source: "static"},
			func(t *testing.T, c vici.Conn, shared map[string]vici.Shared) {
				if c.Local[0].Auth != "psk" || c.Remote[0].Auth != "psk" || len(c.Local[0].Pubkeys)+len(c.Remote[0].Pubkeys) != 0 {
					t.Errorf("auth %+v / %+v", c.Local[0], c.Remote[0])
				}
				sh, ok := shared[c.Name+"-psk"]
				if !ok || string(sh.Data) != string(psk) || sh.Type != "ike" || strings.Join(sh.Owners, ",") != "192.0.2.1,192.0.2.2" {
					t.Errorf("shared %+v", shared)
				}
			}},
		{"ca", plugins.Gateway{Precedence: 10, Addr: netip.MustParseAddr("192.0.2.2"), CACerts: [][]byte{ca}, Source: "corp"},
			func(t *testing.T, c vici.Conn, shared map[string]vici.Shared) {
				r := c.Remote[0]
				if r.Auth != "pubkey" || r.ID != "192.0.2.2" || len(r.CACerts) != 1 || !strings.Contains(string(r.CACerts[0]), "BEGIN CERTIFICATE") || len(r.Pubkeys) != 0 {
					t.Errorf("remote auth %+v", r)
				}
				if c.Local[0].Auth != "pubkey" || len(c.Local[0].Pubkeys) != 1 || len(shared) != 0 {
					t.Errorf("local auth %+v, shared %v", c.Local[0], shared)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, "private=10.2.0.0/16", nil)
			r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{tc.gw}, Method: plugins.MethodPresharedKey})
			r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
			tu := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
			c, ok := r.ch.conn(tu.Conn)
			if !ok {
				t.Fatal("no conn")
			}
			r.ch.mu.Lock()
			shared := map[string]vici.Shared{}
			for k, v := range r.ch.shared {
				shared[k] = v
			}
			r.ch.mu.Unlock()
			tc.check(t, c, shared)
			// The peer's Delete: conn and secret go.
			r.e.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: &vici.IKESA{Name: tu.Conn}})
			r.ch.mu.Lock()
			defer r.ch.mu.Unlock()
			if _, ok := r.ch.conns[tu.Conn]; ok || len(r.ch.shared) != 0 {
				t.Errorf("after the Delete: conn loaded %v, secrets %v", ok, r.ch.shared)
			}
		})
	}
}

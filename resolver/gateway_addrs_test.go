package resolver

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

// A gateway named by FQDN gets its addresses from the FQDN's A and AAAA
// records (IKE goes there), and the answer is only as trusted as the least
// trusted record used.
func TestFQDNGatewayAddresses(t *testing.T) {
	r0 := testRSA(t, 0)
	ed := testEd25519(3)
	cases := []struct {
		name      string
		gwZone    resolvertest.Validation
		require   bool
		records   []string
		wantAddrs []string // nil: the gateway is left out
		wantKeys  []plugins.PublicKey
		status    plugins.DNSSECStatus
		skipped   string
	}{
		{
			name:   "A and AAAA, key in the TXT",
			gwZone: resolvertest.Secure,
			records: []string{
				txt(peerName, 300, "X-IPsec-Server(10)=@gw.gw.test "+rsaB64(r0)),
				"gw.gw.test. 300 IN A 198.51.100.7",
				"gw.gw.test. 300 IN AAAA 2001:db8::7",
			},
			wantAddrs: []string{"198.51.100.7", "2001:db8::7"},
			wantKeys:  []plugins.PublicKey{rsaKey(r0)},
			status:    plugins.DNSSECSecure,
		},
		{
			name:   "keyless TXT: the key is an IPSECKEY at the FQDN",
			gwZone: resolvertest.Secure,
			records: []string{
				txt(peerName, 300, "X-IPsec-Server(10)=@gw.gw.test"),
				"gw.gw.test. 300 IN IPSECKEY 10 0 4 . " + b64(ed),
				"gw.gw.test. 300 IN A 198.51.100.7",
			},
			wantAddrs: []string{"198.51.100.7"},
			wantKeys:  []plugins.PublicKey{edKey(ed)},
			status:    plugins.DNSSECSecure,
		},
		{
			name:   "IPSECKEY gateway type 3, key at the FQDN as KEY",
			gwZone: resolvertest.Secure,
			records: []string{
				peerName + " 300 IN IPSECKEY 10 3 0 gw.gw.test. ",
				"gw.gw.test. 300 IN KEY 16896 4 5 " + rsaB64(r0),
				"gw.gw.test. 300 IN A 198.51.100.7",
			},
			wantAddrs: []string{"198.51.100.7"},
			wantKeys:  []plugins.PublicKey{rsaKey(r0)},
			status:    plugins.DNSSECSecure,
		},
		{
			name:   "no address records: the peer itself (an end node with an FQDN identity)",
			gwZone: resolvertest.Secure,
			records: []string{
				txt(peerName, 300, "X-IPsec-Server(10)=@gw.gw.test "+rsaB64(r0)),
			},
			wantAddrs: []string{},
			wantKeys:  []plugins.PublicKey{rsaKey(r0)},
			status:    plugins.DNSSECSecure,
		},
		{
			name:   "unsigned address records lower the status",
			gwZone: resolvertest.Insecure,
			records: []string{
				txt(peerName, 300, "X-IPsec-Server(10)=@gw.gw.test "+rsaB64(r0)),
				"gw.gw.test. 300 IN A 198.51.100.7",
			},
			wantAddrs: []string{"198.51.100.7"},
			wantKeys:  []plugins.PublicKey{rsaKey(r0)},
			status:    plugins.DNSSECInsecure,
		},
		{
			name:    "unsigned address records under require_dnssec: left out",
			gwZone:  resolvertest.Insecure,
			require: true,
			records: []string{
				txt(peerName, 300, "X-IPsec-Server(10)=@gw.gw.test "+rsaB64(r0)),
				"gw.gw.test. 300 IN A 198.51.100.7",
			},
			status:  plugins.DNSSECSecure,
			skipped: "for its address, A at gw.gw.test. is not DNSSEC-validated and require_dnssec is on",
		},
		{
			name:   "bogus address records: left out",
			gwZone: resolvertest.Bogus,
			records: []string{
				txt(peerName, 300, "X-IPsec-Server(10)=@gw.gw.test "+rsaB64(r0)),
				"gw.gw.test. 300 IN A 198.51.100.7",
			},
			status:  plugins.DNSSECSecure,
			skipped: "for its address, A at gw.gw.test. did not validate",
		},
		{
			name:   "an address no gateway can have is skipped",
			gwZone: resolvertest.Secure,
			records: []string{
				txt(peerName, 300, "X-IPsec-Server(10)=@gw.gw.test "+rsaB64(r0)),
				"gw.gw.test. 300 IN A 127.0.0.1",
				"gw.gw.test. 300 IN A 198.51.100.8",
			},
			wantAddrs: []string{"198.51.100.8"},
			wantKeys:  []plugins.PublicKey{rsaKey(r0)},
			status:    plugins.DNSSECSecure,
			skipped:   `gw.gw.test. A "127.0.0.1": 127.0.0.1 (loopback or link-local) cannot be a gateway's address`,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := resolvertest.New()
			fake.AddZone(revZone, resolvertest.Secure)
			fake.AddZone("gw.test.", tc.gwZone)
			mustAdd(t, fake, tc.records...)
			r, _ := newTest(t, fake, func(c *Config) { c.RequireDNSSEC = tc.require })
			a, err := r.Resolve(context.Background(), plugins.LookupQuery{Addr: peer})
			if tc.wantAddrs == nil {
				if len(a.Gateways) != 0 || err != nil && !errors.Is(err, ErrServerFailure) {
					t.Fatalf("got %s, %v; want the gateway left out", describe(a.Gateways), err)
				}
			} else {
				if err != nil || len(a.Gateways) != 1 {
					t.Fatalf("got %s, %v", describe(a.Gateways), err)
				}
				g := a.Gateways[0]
				var got []string
				for _, ad := range g.Addrs {
					got = append(got, ad.String())
				}
				if g.FQDN != "gw.gw.test." || g.Addr.IsValid() || !slices.Equal(got, tc.wantAddrs) && len(got)+len(tc.wantAddrs) > 0 {
					t.Errorf("gateway %+v addrs %v; want @gw.gw.test. at %v", g, got, tc.wantAddrs)
				}
				if !slices.EqualFunc(g.Keys, tc.wantKeys, func(a, b plugins.PublicKey) bool {
					return a.Algorithm == b.Algorithm && string(a.Data) == string(b.Data)
				}) {
					t.Errorf("keys %v, want %v", g.Keys, tc.wantKeys)
				}
			}
			if a.DNSSEC != tc.status {
				t.Errorf("status %s, want %s", a.DNSSEC, tc.status)
			}
			if tc.skipped != "" && !containsLine(a.Skipped, tc.skipped) {
				t.Errorf("skipped %q; want a line with %q", a.Skipped, tc.skipped)
			}
		})
	}
}

// The gateway's address records are cached like the rest: a second lookup
// asks DNS nothing.
func TestFQDNGatewayAddressesCached(t *testing.T) {
	fake := resolvertest.New()
	fake.AddZone(revZone, resolvertest.Secure)
	fake.AddZone("gw.test.", resolvertest.Secure)
	mustAdd(t, fake, txt(peerName, 300, "X-IPsec-Server(10)=@gw.gw.test "+rsaB64(testRSA(t, 0))), "gw.gw.test. 300 IN A 198.51.100.7")
	r, _ := newTest(t, fake, nil)
	for i := range 2 {
		a, err := r.Resolve(context.Background(), plugins.LookupQuery{Addr: peer})
		if err != nil || len(a.Gateways) != 1 || len(a.Gateways[0].Addrs) != 1 {
			t.Fatalf("lookup %d: %s, %v", i, describe(a.Gateways), err)
		}
		if i == 1 && !a.FromCache {
			t.Errorf("second lookup asked DNS again (log %q)", fake.Log())
		}
	}
	if n := fake.Count("gw.gw.test.", dns.TypeA); n != 1 {
		t.Errorf("A at gw.gw.test. asked %d times, want 1", n)
	}
}

func TestParseAddrRR(t *testing.T) {
	cases := []struct {
		rr   string
		want string // "" for an error
	}{
		{"gw.test. 60 IN A 192.0.2.1", "192.0.2.1"},
		{"gw.test. 60 IN AAAA 2001:db8::1", "2001:db8::1"},
		{"gw.test. 60 IN A 0.0.0.0", ""},
		{"gw.test. 60 IN A 224.0.0.1", ""},
		{"gw.test. 60 IN A 255.255.255.255", ""},
		{"gw.test. 60 IN A 127.0.0.1", ""},
		{"gw.test. 60 IN AAAA ::ffff:192.0.2.1", ""},
		{"gw.test. 60 IN AAAA fe80::1", ""},
		{"gw.test. 60 IN AAAA ::", ""},
		{"gw.test. 60 IN TXT \"x\"", ""},
	}
	for _, tc := range cases {
		rr, err := dns.NewRR(tc.rr)
		if err != nil {
			t.Fatal(err)
		}
		a, err := parseAddrRR(rr)
		switch {
		case tc.want == "" && err == nil:
			t.Errorf("%s: got %s, want an error", tc.rr, a)
		case tc.want != "" && (err != nil || a != netip.MustParseAddr(tc.want)):
			t.Errorf("%s: got %s, %v; want %s", tc.rr, a, err, tc.want)
		case err != nil && !strings.Contains(err.Error(), " "):
			t.Errorf("%s: error %q says nothing", tc.rr, err)
		}
	}
}

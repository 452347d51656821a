package oe

import (
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/policy"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

func lookupKey(i byte) string {
	seed := sha256.Sum256([]byte{'o', 'e', i})
	return base64.StdEncoding.EncodeToString(ed25519.NewKeyFromSeed(seed[:]).Public().(ed25519.PublicKey))
}

// lookupEngine is an engine (not started: Lookup needs none of charon or
// the kernel) over the real resolver and a fake validating resolver.
func lookupEngine(t *testing.T, res plugins.Resolver) *Engine {
	t.Helper()
	cfg := Config{Address: "192.0.2.1", KeyFile: "k.pem", Protect: []string{"10.1.0.0/24"}, DNS: resolver.Defaults()}
	cfg.DNS.Server = "192.0.2.53:53"
	for _, g := range []policy.GroupConfig{
		{Group: "private-or-clear", CIDRs: []string{"10.2.0.0/16"}},
		{Group: "private", CIDRs: []string{"10.3.0.0/16"}, ShuntLifetime: "5m"},
		{Group: "clear", CIDRs: []string{"10.4.0.0/16"}},
		{Group: "block", CIDRs: []string{"10.9.0.0/16"}},
		{Group: "clear-or-private", CIDRs: []string{"192.0.2.0/24"}},
	} {
		cfg.Groups = append(cfg.Groups, g)
	}
	e, err := New(cfg, Params{Resolver: res, Prefix: "obol-", Now: func() time.Time { return time.Unix(1_800_000_000, 0) }})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func lookupDNS(t *testing.T) *resolver.Resolver {
	t.Helper()
	fake := resolvertest.New()
	fake.AddZone("2.0.192.in-addr.arpa.", resolvertest.Secure)
	fake.AddZone("10.in-addr.arpa.", resolvertest.Secure)
	fake.AddZone("org.", resolvertest.Secure)
	fake.AddZone("12.0.3.10.in-addr.arpa.", resolvertest.Bogus)
	fake.AddZone("13.0.3.10.in-addr.arpa.", resolvertest.Broken)
	fake.AddZone("14.0.3.10.in-addr.arpa.", resolvertest.Insecure)
	k2, k3 := lookupKey(2), lookupKey(3)
	err := fake.Add(
		"2.2.0.192.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.2 "+k2,
		"3.2.0.192.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.3 "+k3,
		"10.0.2.10.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.2 "+k2,
		`20.0.2.10.in-addr.arpa. 300 IN TXT "X-IPsec-Server(10)=@gw.example.org"`,
		"gw.example.org. 300 IN KEY 16896 4 15 "+k2,
		"30.0.2.10.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.2 "+k2,
		"30.0.2.10.in-addr.arpa. 300 IN IPSECKEY 20 1 4 192.0.2.3 "+k3,
		`30.0.2.10.in-addr.arpa. 300 IN TXT "X-IPsec-Server(ten)=192.0.2.2"`,
		"12.0.3.10.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.2 "+k2,
		"14.0.3.10.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.2 "+k2,
	)
	if err != nil {
		t.Fatal(err)
	}
	cfg := resolver.Defaults()
	cfg.RequireDNSSEC = true
	cfg.Timeout = resolver.Duration(2 * time.Second)
	r, err := resolver.New(cfg, resolver.Options{Transport: fake})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestLookupExplains(t *testing.T) {
	e := lookupEngine(t, lookupDNS(t))
	tests := []struct {
		addr      string
		action    string
		details   []string // substrings, in any detail
		responder string   // substring
		gateways  int
		skipped   int
	}{
		{"10.2.0.10", "would initiate OE to gateway 192.0.2.2 (IPSECKEY, DNSSEC secure)",
			[]string{"group private-or-clear (10.2.0.0/16); while IKE runs its traffic is dropped (negotiation_shunt drop)", "if every gateway fails: its traffic is sent in clear for 15m0s (failure_shunt pass)"},
			"would refuse OE from it as initiator: 10.0.2.10.in-addr.arpa. names no key for the address itself (KEY or IPSECKEY) nor an @FQDN identity; would accept it behind gateway 192.0.2.2 (delegated in its reverse map)", 1, 0},
		{"10.2.0.30", "would initiate OE to gateway 192.0.2.2 (IPSECKEY, DNSSEC secure)",
			[]string{"if IKE with it fails: then gateway 192.0.2.3"}, "", 2, 1},
		{"10.2.0.11", "would send in clear: private-or-clear and no OE records",
			[]string{"for 15m0s (shunt_lifetime) its traffic is sent in clear"}, "", 0, 0},
		{"10.2.0.20", "would initiate OE to 10.2.0.20 itself, identity @gw.example.org (TXT, DNSSEC secure)", nil,
			"would answer OE from it as @gw.example.org, authenticating it with the key from TXT (DNSSEC secure)", 1, 0},
		{"10.3.0.11", "would drop: private and no OE records", []string{"for 5m0s (shunt_lifetime) its traffic is dropped"}, "would refuse OE from it as initiator: 11.0.3.10.in-addr.arpa. names no key", 0, 0},
		{"10.3.0.12", "would drop: private and the DNS answer is unusable (DNSSEC bogus)", nil, "would refuse OE from it: its key cannot be looked up (the DNS answer is unusable (DNSSEC bogus))", 0, 0},
		{"10.3.0.13", "would drop: private and DNS did not answer", nil, "its key cannot be looked up (DNS did not answer)", 0, 0},
		{"10.3.0.14", "would drop: private and the DNS answer is unusable (DNSSEC insecure)", nil, "", 0, 0},
		{"10.4.0.1", "would send in clear: group clear (10.4.0.0/16)", nil, "group clear does not answer OE", 0, 0},
		{"203.0.113.1", "would send in clear: group clear (no [[oe.group]] covers it)", nil, "", 0, 0},
		{"10.9.0.1", "would drop: group block (10.9.0.0/16)", nil, "group block does not answer OE", 0, 0},
		{"192.0.2.2", "would send in clear: group clear-or-private (192.0.2.0/24)", []string{"answers OE from it but never starts OE"},
			"would answer OE from it, authenticating it with the key from IPSECKEY (DNSSEC secure)", 1, 0},
		{"192.0.2.7", "would send in clear: group clear-or-private (192.0.2.0/24)", nil, "would refuse OE from it as initiator", 0, 0},
		{"192.0.2.53", "exempt: the DNS resolver", []string{"OE never applies to it"}, "would not answer OE from it (exempt: the DNS resolver)", 0, 0},
		{"192.0.2.1", "exempt: this host's IKE address", nil, "", 0, 0},
		{"10.1.0.5", "exempt: this gateway's own LAN", nil, "", 0, 0},
		{"::ffff:10.9.0.1", "would drop: group block (10.9.0.0/16)", nil, "", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			l := e.Lookup(context.Background(), netip.MustParseAddr(tt.addr))
			if l.Action != tt.action {
				t.Errorf("action = %q\nwant     %q", l.Action, tt.action)
			}
			all := strings.Join(l.Details, "\n")
			for _, d := range tt.details {
				if !strings.Contains(all, d) {
					t.Errorf("details %q\nlack %q", l.Details, d)
				}
			}
			if !strings.Contains(l.Responder, tt.responder) {
				t.Errorf("responder = %q, want it to contain %q", l.Responder, tt.responder)
			}
			if len(l.Answer.Gateways) != tt.gateways || len(l.Answer.Skipped) != tt.skipped {
				t.Errorf("answer: %d gateways, %d skipped (%q); want %d, %d", len(l.Answer.Gateways), len(l.Answer.Skipped), l.Answer.Skipped, tt.gateways, tt.skipped)
			}
			if !strings.HasSuffix(l.Answer.Name, ".arpa.") || l.Addr.Is4In6() {
				t.Errorf("name %q, addr %s", l.Answer.Name, l.Addr)
			}
		})
	}
	// The second lookup of an address is answered from the cache.
	if l := e.Lookup(context.Background(), netip.MustParseAddr("10.2.0.10")); !l.Answer.FromCache {
		t.Error("second lookup did not come from the cache")
	}
}

// plainDNS is a resolver module without Resolve's detail.
type plainDNS struct {
	ans plugins.LookupAnswer
	err error
}

func (p plainDNS) Lookup(context.Context, plugins.LookupQuery) (plugins.LookupAnswer, error) {
	return p.ans, p.err
}

func TestLookupPlainResolverAndBackoff(t *testing.T) {
	e := lookupEngine(t, plainDNS{err: errors.New("i/o timeout")})
	dst := netip.MustParseAddr("10.3.0.99")
	e.mu.Lock()
	e.backoff[dst] = backoff{until: time.Unix(1_800_000_060, 0), next: time.Minute}
	e.mu.Unlock()
	l := e.Lookup(context.Background(), dst)
	if l.Action != "would drop: private and DNS did not answer" || l.DNSErr == nil || l.Answer.Name != "99.0.3.10.in-addr.arpa." {
		t.Errorf("lookup = %+v", l)
	}
	if !strings.Contains(strings.Join(l.Details, "\n"), "backing off after a failure until") {
		t.Errorf("details %q lack the backoff", l.Details)
	}

	e = lookupEngine(t, nil)
	if l := e.Lookup(context.Background(), dst); l.DNSErr == nil || !strings.Contains(l.DNSErr.Error(), "no resolver module") {
		t.Errorf("without a resolver: %+v", l)
	}
}

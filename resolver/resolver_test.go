package resolver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

const (
	revZone  = "2.0.192.in-addr.arpa."
	peerName = "11.2.0.192.in-addr.arpa."
	fwdZone  = "example.test."
)

var peer = netip.MustParseAddr("192.0.2.11")

// labZones is a fake with the reverse zone of 192.0.2.0/24 and example.test.
func labZones(t testing.TB, v resolvertest.Validation, records ...string) *resolvertest.Server {
	t.Helper()
	fake := resolvertest.New()
	fake.AddZone(revZone, v)
	fake.AddZone(fwdZone, v)
	mustAdd(t, fake, records...)
	return fake
}

// gw is an expected gateway: id is the address or "@fqdn".
type gw struct {
	prec   int
	id     string
	source string
	keys   []plugins.PublicKey
}

func checkGateways(t *testing.T, got []plugins.Gateway, want []gw) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d gateways %s, want %d", len(got), describe(got), len(want))
	}
	for i, w := range want {
		g := got[i]
		id := "@" + g.FQDN
		if g.Addr.IsValid() {
			id = g.Addr.String()
		}
		if g.Precedence != w.prec || id != w.id || g.Source != w.source {
			t.Errorf("gateway %d = %d %s %s, want %d %s %s", i, g.Precedence, id, g.Source, w.prec, w.id, w.source)
		}
		if g.Addr.IsValid() && g.FQDN != "" {
			t.Errorf("gateway %d has both an address and an FQDN", i)
		}
		if len(g.Keys) != len(w.keys) {
			t.Errorf("gateway %d has %d keys, want %d", i, len(g.Keys), len(w.keys))
			continue
		}
		for j, k := range w.keys {
			if g.Keys[j].Algorithm != k.Algorithm || !bytes.Equal(g.Keys[j].Data, k.Data) {
				gid, _ := KeyID(g.Keys[j])
				wid, _ := KeyID(k)
				t.Errorf("gateway %d key %d = %s %s, want %s %s", i, j, g.Keys[j].Algorithm, gid, k.Algorithm, wid)
			}
		}
	}
}

func describe(gws []plugins.Gateway) string {
	var parts []string
	for _, g := range gws {
		parts = append(parts, fmt.Sprintf("{%d %v%s %s %d keys}", g.Precedence, g.Addr, g.FQDN, g.Source, len(g.Keys)))
	}
	return "[" + strings.Join(parts, " ") + "]"
}

func TestLookupSelection(t *testing.T) {
	r0, r1, r2 := testRSA(t, 0), testRSA(t, 1), testRSA(t, 2)
	e0, e1 := testEd25519(0), testEd25519(1)
	K := func(ks ...plugins.PublicKey) []plugins.PublicKey { return ks }
	server := func(p int, gw string, key string) string {
		s := fmt.Sprintf("X-IPsec-Server(%d)=%s", p, gw)
		if key != "" {
			s += " " + key
		}
		return txt(peerName, 300, s)
	}
	cases := []struct {
		name    string
		q       plugins.LookupQuery
		zones   map[string]string // extra zone -> name (secure)
		records []string
		want    []gw
		skipped []string // substrings, each in some Skipped line
	}{
		{
			name: "lowest precedence first",
			records: []string{
				server(20, "192.0.2.1", rsaB64(r0)),
				peerName + " 300 IN IPSECKEY 10 1 4 192.0.2.2 " + b64(e0),
			},
			want: []gw{{10, "192.0.2.2", "IPSECKEY", K(edKey(e0))}, {20, "192.0.2.1", "TXT", K(rsaKey(r0))}},
		},
		{
			name: "ties: addresses ascending, then names",
			records: []string{
				server(10, "@gw.example.test", rsaB64(r2)),
				server(10, "192.0.2.9", rsaB64(r0)),
				server(10, "192.0.2.3", rsaB64(r1)),
			},
			want: []gw{{10, "192.0.2.3", "TXT", K(rsaKey(r1))}, {10, "192.0.2.9", "TXT", K(rsaKey(r0))}, {10, "@gw.example.test.", "TXT", K(rsaKey(r2))}},
		},
		{
			name: "rollover: every key of a gateway",
			records: []string{
				server(10, "192.0.2.2", rsaB64(r0)),
				server(10, "192.0.2.2", rsaB64(r1)),
				peerName + " 300 IN IPSECKEY 10 1 4 192.0.2.2 " + b64(e0),
			},
			want: []gw{{10, "192.0.2.2", "IPSECKEY+TXT", sortedKeys(edKey(e0), rsaKey(r0), rsaKey(r1))}},
		},
		{
			name: "a key published twice is listed once",
			records: []string{
				server(10, "192.0.2.2", rsaB64(r0)),
				server(30, "192.0.2.2", rsaB64(r0)),
				peerName + " 300 IN IPSECKEY 10 1 2 192.0.2.2 " + rsaB64(r0),
			},
			want: []gw{{10, "192.0.2.2", "IPSECKEY+TXT", K(rsaKey(r0))}},
		},
		{
			name: "keyless TXT: KEY records at the gateway's reverse name",
			records: []string{
				server(10, "192.0.2.2", ""),
				"2.2.0.192.in-addr.arpa. 300 IN KEY 16896 4 5 " + rsaB64(r1),
				"2.2.0.192.in-addr.arpa. 300 IN KEY 16896 4 5 " + rsaB64(r2),
			},
			want: []gw{{10, "192.0.2.2", "TXT", sortedKeys(rsaKey(r1), rsaKey(r2))}},
		},
		{
			name: "keyless @FQDN: KEY records at the FQDN",
			records: []string{
				server(10, "@gw.example.test", ""),
				"gw.example.test. 300 IN KEY 16896 4 15 " + b64(e1),
			},
			want: []gw{{10, "@gw.example.test.", "TXT", K(edKey(e1))}},
		},
		{
			name: "keyless IPSECKEY (algorithm 0): KEY at the gateway",
			records: []string{
				peerName + " 300 IN IPSECKEY 5 3 0 gw.example.test.",
				"gw.example.test. 300 IN KEY 16896 4 15 " + b64(e1),
			},
			want: []gw{{5, "@gw.example.test.", "IPSECKEY", K(edKey(e1))}},
		},
		{
			name: "keyless gateway without a KEY record is skipped",
			records: []string{
				server(10, "192.0.2.5", ""),
				server(20, "192.0.2.1", rsaB64(r0)),
			},
			want:    []gw{{20, "192.0.2.1", "TXT", K(rsaKey(r0))}},
			skipped: []string{"gateway 192.0.2.5 (TXT, precedence 10) has no key in its record and 5.2.0.192.in-addr.arpa. has no usable KEY record"},
		},
		{
			name: "KEY at the peer: the peer is its own gateway, after delegations",
			records: []string{
				peerName + " 300 IN KEY 16896 4 5 " + rsaB64(r0),
				server(50000, "192.0.2.1", rsaB64(r1)),
			},
			want: []gw{{50000, "192.0.2.1", "TXT", K(rsaKey(r1))}, {KeyOnlyPrecedence, "192.0.2.11", "KEY", K(rsaKey(r0))}},
		},
		{
			name: "IPSECKEY without gateway and the peer's KEY merge",
			records: []string{
				peerName + " 300 IN IPSECKEY 10 0 4 . " + b64(e0),
				peerName + " 300 IN KEY 16896 4 5 " + rsaB64(r0),
			},
			want: []gw{{10, "192.0.2.11", "IPSECKEY+KEY", K(edKey(e0), rsaKey(r0))}},
		},
		{
			name: "malformed records are skipped with a reason, never fatal",
			records: []string{
				txt(peerName, 300, "X-IPsec-Server(ten)=192.0.2.1 "+rsaB64(r0)),
				txt(peerName, 300, "X-IPsec-Server(10)192.0.2.1 "+rsaB64(r0)),
				txt(peerName, 300, "X-IPsec-Server(10)=192.0.2.1 not*base64"),
				peerName + " 300 IN IPSECKEY 10 1 3 192.0.2.1 " + b64(e0),
				peerName + " 300 IN KEY 16896 3 5 " + rsaB64(r0),
				server(40, "192.0.2.1", rsaB64(r1)),
			},
			want: []gw{{40, "192.0.2.1", "TXT", K(rsaKey(r1))}},
			skipped: []string{
				`precedence "ten" is not a number`,
				`missing "=" after the precedence`,
				"key is not valid base64",
				"algorithm 3 (ECDSA) is not supported",
				"protocol 3 is neither IPsec (4) nor any (255)",
			},
		},
		{
			name:    "other applications' TXT records are ignored",
			records: []string{txt(peerName, 300, "v=spf1 -all"), txt(peerName, 300, "hosta")},
		},
		{
			name:  "classless reverse delegation (RFC 2317 CNAME)",
			zones: map[string]string{"0-25.2.0.192.in-addr.arpa.": ""},
			records: []string{
				peerName + " 300 IN CNAME 11.0-25.2.0.192.in-addr.arpa.",
				"11.0-25.2.0.192.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.2 " + b64(e0),
			},
			want: []gw{{10, "192.0.2.2", "IPSECKEY", K(edKey(e0))}},
		},
		{
			name:  "IPv6 peer in ip6.arpa",
			q:     plugins.LookupQuery{Addr: netip.MustParseAddr("2001:db8::11")},
			zones: map[string]string{"8.b.d.0.1.0.0.2.ip6.arpa.": ""},
			records: []string{
				"1.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 300 IN IPSECKEY 10 2 4 2001:db8::1 " + b64(e0),
			},
			want: []gw{{10, "2001:db8::1", "IPSECKEY", K(edKey(e0))}},
		},
		{
			name: "forward lookup of an @FQDN identity",
			q:    plugins.LookupQuery{FQDN: "@Host.Example.Test"},
			records: []string{
				"host.example.test. 300 IN KEY 16896 4 5 " + rsaB64(r0),
				"host.example.test. 300 IN IPSECKEY 10 1 4 192.0.2.2 " + b64(e0),
				txt("host.example.test.", 300, "X-IPsec-Server(1)=192.0.2.1 "+rsaB64(r1)), // not asked: TXT lives in the reverse map
			},
			want: []gw{{10, "192.0.2.2", "IPSECKEY", K(edKey(e0))}, {KeyOnlyPrecedence, "@host.example.test.", "KEY", K(rsaKey(r0))}},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := labZones(t, resolvertest.Secure)
			for z := range tc.zones {
				fake.AddZone(z, resolvertest.Secure)
			}
			mustAdd(t, fake, tc.records...)
			r, _ := newTest(t, fake, nil)
			q := tc.q
			if !q.Addr.IsValid() && q.FQDN == "" {
				q.Addr = peer
			}
			a, err := r.Resolve(context.Background(), q)
			if err != nil {
				t.Fatalf("Resolve: %v", err)
			}
			if a.DNSSEC != plugins.DNSSECSecure || a.Unusable != "" {
				t.Errorf("DNSSEC %s, unusable %q; want secure", a.DNSSEC, a.Unusable)
			}
			checkGateways(t, a.Gateways, tc.want)
			if len(tc.skipped) != len(a.Skipped) {
				t.Errorf("skipped %d records, want %d:\n%s", len(a.Skipped), len(tc.skipped), strings.Join(a.Skipped, "\n"))
			}
			for _, want := range tc.skipped {
				if !containsLine(a.Skipped, want) {
					t.Errorf("no skip reason mentions %q:\n%s", want, strings.Join(a.Skipped, "\n"))
				}
			}
			// The contract's view is the same answer.
			la, err := r.Lookup(context.Background(), q)
			if err != nil || len(la.Gateways) != len(a.Gateways) || la.DNSSEC != a.DNSSEC {
				t.Errorf("Lookup = %d gateways, %s, %v", len(la.Gateways), la.DNSSEC, err)
			}
		})
	}
}

// sortedKeys orders keys as an answer lists keys of one precedence:
// algorithm name, then data.
func sortedKeys(ks ...plugins.PublicKey) []plugins.PublicKey {
	out := append([]plugins.PublicKey(nil), ks...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			a, b := out[i], out[j]
			if b.Algorithm < a.Algorithm || b.Algorithm == a.Algorithm && bytes.Compare(b.Data, a.Data) < 0 {
				out[i], out[j] = b, a
			}
		}
	}
	return out
}

func containsLine(lines []string, sub string) bool {
	for _, l := range lines {
		if strings.Contains(l, sub) {
			return true
		}
	}
	return false
}

func TestAnswerKeysAreCopies(t *testing.T) {
	e0 := testEd25519(0)
	fake := labZones(t, resolvertest.Secure, peerName+" 300 IN IPSECKEY 10 1 4 192.0.2.2 "+b64(e0))
	r, _ := newTest(t, fake, nil)
	a, err := r.Lookup(context.Background(), plugins.LookupQuery{Addr: peer})
	if err != nil {
		t.Fatal(err)
	}
	a.Gateways[0].Keys[0].Data[0] ^= 0xff // a careless caller
	b, err := r.Lookup(context.Background(), plugins.LookupQuery{Addr: peer})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b.Gateways[0].Keys[0].Data, e0) {
		t.Error("changing an answer's key changed the cached key")
	}
}

func TestBadQueries(t *testing.T) {
	r, _ := newTest(t, resolvertest.New(), nil)
	for _, q := range []plugins.LookupQuery{
		{},
		{Addr: peer, FQDN: "x.example"},
		{FQDN: "bad name.example"},
		{FQDN: "@"},
	} {
		if _, err := r.Lookup(context.Background(), q); err == nil {
			t.Errorf("Lookup(%+v) succeeded", q)
		}
	}
}

func TestDNSSECStatus(t *testing.T) {
	key := b64(testEd25519(0))
	record := peerName + " 300 IN IPSECKEY 10 1 4 192.0.2.2 " + key
	edeHandler := func(code uint16) resolvertest.Handler {
		return func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
			r := new(dns.Msg)
			r.SetRcode(q, dns.RcodeServerFailure)
			r.SetEdns0(1232, true)
			opt := r.IsEdns0()
			opt.Option = append(opt.Option, &dns.EDNS0_EDE{InfoCode: code, ExtraText: "test"})
			return r, nil
		}
	}
	cases := []struct {
		name     string
		v        resolvertest.Validation
		require  bool
		handler  resolvertest.Handler
		status   plugins.DNSSECStatus
		gateways int
		err      error // nil: no error
		cdQuery  bool  // a query with checking disabled was sent
	}{
		{name: "AD bit: secure", v: resolvertest.Secure, status: plugins.DNSSECSecure, gateways: 1},
		{name: "AD bit: secure, required", v: resolvertest.Secure, require: true, status: plugins.DNSSECSecure, gateways: 1},
		{name: "no AD: insecure, usable", v: resolvertest.Insecure, status: plugins.DNSSECInsecure, gateways: 1},
		{name: "no AD under require_dnssec: refused", v: resolvertest.Insecure, require: true, status: plugins.DNSSECInsecure, err: ErrInsecure},
		{name: "SERVFAIL, data with CD: bogus", v: resolvertest.Bogus, status: plugins.DNSSECBogus, err: ErrBogus, cdQuery: true},
		{name: "bogus under require_dnssec", v: resolvertest.Bogus, require: true, status: plugins.DNSSECBogus, err: ErrBogus, cdQuery: true},
		{name: "SERVFAIL also with CD: server failure, not bogus", v: resolvertest.Broken, err: ErrServerFailure, cdQuery: true},
		{name: "EDE DNSSEC Bogus", v: resolvertest.Secure, handler: edeHandler(dns.ExtendedErrorCodeDNSBogus), status: plugins.DNSSECBogus, err: ErrBogus},
		{name: "EDE signature expired", v: resolvertest.Secure, handler: edeHandler(dns.ExtendedErrorCodeSignatureExpired), status: plugins.DNSSECBogus, err: ErrBogus},
		{name: "EDE no reachable authority", v: resolvertest.Secure, handler: edeHandler(dns.ExtendedErrorCodeNoReachableAuthority), err: ErrServerFailure},
		{name: "REFUSED", v: resolvertest.Secure, handler: func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
			return new(dns.Msg).SetRcode(q, dns.RcodeRefused), nil
		}, err: ErrServerFailure},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := labZones(t, tc.v, record)
			fake.SetHandler(tc.handler)
			r, _ := newTest(t, fake, func(c *Config) { c.RequireDNSSEC = tc.require })
			a, err := r.Resolve(context.Background(), plugins.LookupQuery{Addr: peer})
			if tc.err == nil && err != nil || tc.err != nil && !errors.Is(err, tc.err) {
				t.Fatalf("error = %v, want %v", err, tc.err)
			}
			if tc.err == ErrServerFailure && errors.Is(err, ErrBogus) {
				t.Errorf("a server failure reported as bogus: %v", err)
			}
			if a.DNSSEC != tc.status || len(a.Gateways) != tc.gateways {
				t.Errorf("got %s with %d gateways, want %s with %d", a.DNSSEC, len(a.Gateways), tc.status, tc.gateways)
			}
			var ue *UnusableError
			if errors.Is(tc.err, ErrBogus) || errors.Is(tc.err, ErrInsecure) {
				if !errors.As(err, &ue) || ue.Status != tc.status || ue.Reason == "" || a.Unusable != ue.Reason {
					t.Errorf("want an *UnusableError with status and reason; got %#v, answer reason %q", err, a.Unusable)
				}
				if a.TTL <= 0 {
					t.Errorf("unusable answer has TTL %v; it should say how long the verdict holds", a.TTL)
				}
				la, lerr := r.Lookup(context.Background(), plugins.LookupQuery{Addr: peer})
				if !errors.Is(lerr, tc.err) || la.DNSSEC != tc.status || len(la.Gateways) != 0 {
					t.Errorf("Lookup = %s, %d gateways, %v", la.DNSSEC, len(la.Gateways), lerr)
				}
			}
			sawCD := false
			for _, l := range fake.Log() {
				sawCD = sawCD || strings.HasSuffix(l, "+cd")
			}
			if sawCD != tc.cdQuery {
				t.Errorf("checking-disabled query sent: %v, want %v (log %q)", sawCD, tc.cdQuery, fake.Log())
			}
		})
	}
}

// Keys fetched for a gateway count towards the answer's status.
func TestDNSSECOfGatewayKeys(t *testing.T) {
	r0, r1 := testRSA(t, 0), testRSA(t, 1)
	setup := func(t *testing.T, keyZone resolvertest.Validation, require bool) (Answer, error) {
		fake := resolvertest.New()
		fake.AddZone(revZone, resolvertest.Secure)
		fake.AddZone("gw.test.", keyZone)
		mustAdd(t, fake,
			txt(peerName, 300, "X-IPsec-Server(10)=@a.gw.test"),
			txt(peerName, 300, "X-IPsec-Server(20)=192.0.2.1 "+rsaB64(r1)),
			"a.gw.test. 300 IN KEY 16896 4 5 "+rsaB64(r0),
		)
		r, _ := newTest(t, fake, func(c *Config) { c.RequireDNSSEC = require })
		return r.Resolve(context.Background(), plugins.LookupQuery{Addr: peer})
	}
	t.Run("insecure key zone lowers the status", func(t *testing.T) {
		a, err := setup(t, resolvertest.Insecure, false)
		if err != nil || a.DNSSEC != plugins.DNSSECInsecure || len(a.Gateways) != 2 {
			t.Fatalf("got %s, %s, %v", a.DNSSEC, describe(a.Gateways), err)
		}
	})
	t.Run("insecure key zone under require_dnssec drops that gateway", func(t *testing.T) {
		a, err := setup(t, resolvertest.Insecure, true)
		if err != nil || a.DNSSEC != plugins.DNSSECSecure {
			t.Fatalf("got %s, %v", a.DNSSEC, err)
		}
		checkGateways(t, a.Gateways, []gw{{20, "192.0.2.1", "TXT", []plugins.PublicKey{rsaKey(r1)}}})
		if !containsLine(a.Skipped, "KEY at a.gw.test. is not DNSSEC-validated and require_dnssec is on") {
			t.Errorf("skipped: %q", a.Skipped)
		}
	})
	t.Run("bogus key zone drops that gateway", func(t *testing.T) {
		a, err := setup(t, resolvertest.Bogus, false)
		if err != nil || a.DNSSEC != plugins.DNSSECSecure || len(a.Gateways) != 1 {
			t.Fatalf("got %s, %s, %v", a.DNSSEC, describe(a.Gateways), err)
		}
		if !containsLine(a.Skipped, "KEY at a.gw.test. did not validate") {
			t.Errorf("skipped: %q", a.Skipped)
		}
		if a.TTL != time.Duration(Defaults().BogusTTL) {
			t.Errorf("TTL %v; the answer holds only as long as the bogus verdict (%v)", a.TTL, Defaults().BogusTTL)
		}
	})
	t.Run("failed key lookup: other gateways, short TTL", func(t *testing.T) {
		a, err := setup(t, resolvertest.Broken, false)
		if err != nil || a.DNSSEC != plugins.DNSSECSecure || len(a.Gateways) != 1 {
			t.Fatalf("got %s, %s, %v", a.DNSSEC, describe(a.Gateways), err)
		}
		if !containsLine(a.Skipped, "looking up KEY at a.gw.test. failed") || a.TTL != time.Duration(Defaults().MinTTL) {
			t.Errorf("TTL %v, skipped %q; want min_ttl and the failure", a.TTL, a.Skipped)
		}
	})
	t.Run("failed key lookup with no other gateway is an error", func(t *testing.T) {
		fake := resolvertest.New()
		fake.AddZone(revZone, resolvertest.Secure)
		fake.AddZone("gw.test.", resolvertest.Broken)
		mustAdd(t, fake, txt(peerName, 300, "X-IPsec-Server(10)=@a.gw.test"))
		r, _ := newTest(t, fake, nil)
		a, err := r.Resolve(context.Background(), plugins.LookupQuery{Addr: peer})
		if !errors.Is(err, ErrServerFailure) || len(a.Gateways) != 0 {
			t.Fatalf("got %s, %v; want ErrServerFailure: an empty answer would claim \"no IPsec here\"", describe(a.Gateways), err)
		}
	})
}

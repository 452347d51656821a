package resolver

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

func FuzzParseServerTXT(f *testing.F) {
	key := vectorRSA(f)
	for _, s := range []string{
		"X-IPsec-Server(10)=192.0.2.1 " + key,
		"X-IPsec-Server(10)=192.0.2.1",
		"x-ipsec-server ( 7 ) = @gw.example.org " + key[:50] + " " + key[50:],
		"X-IPsec-Server(5)=2001:db8::1",
		"X-IPsec-Server(ten)=192.0.2.1",
		"X-IPsec-Server(10)192.0.2.1",
		"X-IPsec-Server(10)=@",
		"X-IPsec-Server(10)=192.0.2.1 AQID",
		"v=spf1 -all",
		"",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, text string) {
		rec, err := ParseServerTXT(text)
		if err != nil {
			if err != ErrNotServerRecord && err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if rec.Precedence < 0 || rec.Precedence > MaxTXTPrecedence {
			t.Fatalf("precedence %d out of range", rec.Precedence)
		}
		if rec.Addr.IsValid() == (rec.FQDN != "") {
			t.Fatalf("want exactly one of address and FQDN: %+v", rec)
		}
		if rec.FQDN != "" && (!strings.HasSuffix(rec.FQDN, ".") || rec.FQDN != strings.ToLower(rec.FQDN)) {
			t.Fatalf("FQDN %q not canonical", rec.FQDN)
		}
		if rec.Key != nil {
			if err := checkKey(*rec.Key); err != nil {
				t.Fatalf("accepted a key that does not parse: %v", err)
			}
		}
		// What was accepted, written back canonically, parses the same.
		gw := "@" + rec.FQDN
		if rec.Addr.IsValid() {
			gw = rec.Addr.String()
		}
		again := fmt.Sprintf("X-IPsec-Server(%d)=%s", rec.Precedence, gw)
		if rec.Key != nil {
			again += " " + b64(rec.Key.Data)
		}
		rec2, err := ParseServerTXT(again)
		if err != nil || rec2.Precedence != rec.Precedence || rec2.Addr != rec.Addr || rec2.FQDN != rec.FQDN || (rec2.Key == nil) != (rec.Key == nil) {
			t.Fatalf("canonical form %q parses as %+v, %v; want %+v", again, rec2, err, rec)
		}
	})
}

// FuzzAnswer feeds arbitrary DNS messages to the answer processing: as the
// answer to each question a lookup asks, and through a whole lookup.
func FuzzAnswer(f *testing.F) {
	r0 := testRSA(f, 0)
	seeds := [][]string{
		{peerName + " 300 IN IPSECKEY 10 1 4 192.0.2.2 " + b64(testEd25519(0))},
		{txt(peerName, 300, "X-IPsec-Server(10)=192.0.2.1 "+rsaB64(r0)), txt(peerName, 60, "X-IPsec-Server(10)=@gw.example.test")},
		{peerName + " 300 IN KEY 16896 4 5 " + rsaB64(r0), peerName + " 300 IN KEY 16896 4 15 " + b64(testEd25519(1))},
		{peerName + " 300 IN CNAME x.2.0.192.in-addr.arpa.", "x.2.0.192.in-addr.arpa. 30 IN IPSECKEY 1 3 4 gw.example.test. " + b64(testEd25519(2))},
		{peerName + " 300 IN IPSECKEY 10 0 2 . " + rsaB64(r0)},
		nil, // NXDOMAIN
	}
	for _, rrs := range seeds {
		fake := labZones(f, resolvertest.Secure, rrs...)
		for _, qt := range reverseTypes {
			r, err := fake.Exchange(context.Background(), newQuery(qkey{peerName, qt}, false))
			if err != nil {
				f.Fatal(err)
			}
			wire, err := r.Pack()
			if err != nil {
				f.Fatal(err)
			}
			f.Add(wire)
		}
	}
	f.Add([]byte{})
	f.Add([]byte{0, 0, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0})

	cfg := Defaults()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, wire []byte) {
		msg := new(dns.Msg)
		if msg.Unpack(wire) != nil {
			return
		}
		for _, qt := range reverseTypes {
			k := qkey{peerName, qt}
			for _, m := range []*dns.Msg{msg, asAnswerTo(msg, newQuery(k, false))} {
				e, err := processAnswer(k, m, now, &cfg)
				if err != nil {
					continue
				}
				lo, hi := now.Add(time.Duration(cfg.MinTTL)), now.Add(max(time.Duration(cfg.MaxTTL), time.Duration(cfg.MaxNegativeTTL)))
				if e.expires.Before(lo) || e.expires.After(hi) {
					t.Fatalf("expiry %v outside [%v, %v]", e.expires, lo, hi)
				}
				for _, d := range e.dels {
					for _, key := range d.keys {
						if err := checkKey(key); err != nil {
							t.Fatalf("a bad key got through: %v", err)
						}
					}
				}
			}
		}

		// A whole lookup whose every answer is this message.
		fake := resolvertest.New()
		fake.SetHandler(func(_ context.Context, q *dns.Msg) (*dns.Msg, error) {
			return asAnswerTo(msg, q), nil
		})
		r, err := New(cfg, Options{Transport: fake, Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		a, err := r.Resolve(context.Background(), plugins.LookupQuery{Addr: peer})
		if err == nil && a.DNSSEC != plugins.DNSSECSecure && a.DNSSEC != plugins.DNSSECInsecure {
			t.Fatalf("usable answer with status %q", a.DNSSEC)
		}
		if err != nil && len(a.Gateways) > 0 && a.Unusable != "" {
			t.Fatalf("unusable answer with gateways")
		}
		if !slices.IsSortedFunc(a.Gateways, compareGateways) {
			t.Fatalf("gateways out of order: %s", describe(a.Gateways))
		}
		for _, g := range a.Gateways {
			if len(g.Keys) == 0 {
				t.Fatalf("gateway without keys: %s", describe(a.Gateways))
			}
			for _, k := range g.Keys {
				if _, err := PEM(k); err != nil {
					t.Fatalf("answer key does not convert for charon: %v", err)
				}
			}
		}
	})
}

// asAnswerTo makes m look like the answer to q (ID, question), so its
// body gets processed rather than refused as an answer to something else.
func asAnswerTo(m, q *dns.Msg) *dns.Msg {
	c := m.Copy()
	c.Id = q.Id
	c.Response = true
	c.Question = slices.Clone(q.Question)
	return c
}

// FuzzAddrAnswer: any answer to a gateway's A or AAAA question processes
// without panicking, and only addresses a gateway can have get through.
func FuzzAddrAnswer(f *testing.F) {
	for _, rrs := range [][]string{
		{"gw.example.test. 300 IN A 192.0.2.1", "gw.example.test. 300 IN A 192.0.2.2"},
		{"gw.example.test. 300 IN AAAA 2001:db8::1"},
		{"gw.example.test. 300 IN CNAME other.example.test.", "other.example.test. 60 IN A 198.51.100.1"},
		{"gw.example.test. 300 IN A 127.0.0.1"},
	} {
		m := new(dns.Msg)
		m.SetQuestion("gw.example.test.", dns.TypeA)
		for _, s := range rrs {
			rr, err := dns.NewRR(s)
			if err != nil {
				f.Fatal(err)
			}
			m.Answer = append(m.Answer, rr)
		}
		wire, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire)
	}
	cfg := Defaults()
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, wire []byte) {
		msg := new(dns.Msg)
		if msg.Unpack(wire) != nil {
			return
		}
		for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
			k := qkey{"gw.example.test.", qt}
			e, err := processAnswer(k, asAnswerTo(msg, newQuery(k, false)), now, &cfg)
			if err != nil {
				continue
			}
			for _, a := range e.addrs {
				if !a.IsValid() || a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || a.Is4In6() {
					t.Fatalf("address %s got through", a)
				}
			}
			if len(e.dels) > 0 {
				t.Fatalf("address answer produced delegations")
			}
		}
	})
}

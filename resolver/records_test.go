package resolver

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"math/big"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/miekg/dns"
)

// vectorRSA is a fixed 2048-bit RSA key in RFC 3110 base64, as
// `pki --pub --outform dnskey` printed it (testdata/rsa2048.dnskey).
func vectorRSA(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("testdata/rsa2048.dnskey")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// weakRSA is a well-formed RFC 3110 key with a 1024-bit modulus.
func weakRSA(t testing.TB) string {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 1023))
	if err != nil {
		t.Fatal(err)
	}
	n.SetBit(n, 1023, 1).SetBit(n, 0, 1)
	return b64(append([]byte{3, 1, 0, 1}, n.Bytes()...))
}

func TestParseServerTXT(t *testing.T) {
	key := vectorRSA(t)
	keyBytes, _ := b64decode(key)
	spaced := key[:100] + "  " + key[100:200] + "\t" + key[200:]
	type want struct {
		prec int
		addr string
		fqdn string
		key  bool
	}
	valid := []struct {
		name, text string
		want       want
	}{
		{"ipv4 with key", "X-IPsec-Server(10)=192.0.2.1 " + key, want{10, "192.0.2.1", "", true}},
		{"ipv4 without key", "X-IPsec-Server(10)=192.0.2.1", want{10, "192.0.2.1", "", false}},
		{"whitespace everywhere", "  x-ipsec-server ( 7 ) =  192.0.2.1   " + spaced + "  ", want{7, "192.0.2.1", "", true}},
		{"tabs and newlines", "X-IPsec-Server\t(1)\n=\t192.0.2.9\n", want{1, "192.0.2.9", "", false}},
		{"fqdn with key", "X-IPsec-Server(0)=@GW.Example.org. " + key, want{0, "", "gw.example.org.", true}},
		{"fqdn without key", "X-IPsec-Server(3)=@gw_1.example.org", want{3, "", "gw_1.example.org.", false}},
		{"ipv6", "X-IPsec-Server(5)=2001:DB8::1", want{5, "2001:db8::1", "", false}},
		{"ipv4-mapped ipv6 is ipv4", "X-IPsec-Server(5)=::ffff:192.0.2.7", want{5, "192.0.2.7", "", false}},
		{"largest precedence", "X-IPsec-Server(65535)=192.0.2.1", want{65535, "192.0.2.1", "", false}},
		{"leading zeros", "X-IPsec-Server(007)=192.0.2.1", want{7, "192.0.2.1", "", false}},
	}
	for _, tc := range valid {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := ParseServerTXT(tc.text)
			if err != nil {
				t.Fatalf("ParseServerTXT: %v", err)
			}
			if rec.Precedence != tc.want.prec || rec.FQDN != tc.want.fqdn {
				t.Errorf("got precedence %d fqdn %q, want %d %q", rec.Precedence, rec.FQDN, tc.want.prec, tc.want.fqdn)
			}
			if tc.want.addr == "" && rec.Addr.IsValid() || tc.want.addr != "" && rec.Addr != netip.MustParseAddr(tc.want.addr) {
				t.Errorf("got addr %v, want %q", rec.Addr, tc.want.addr)
			}
			if (rec.Key != nil) != tc.want.key {
				t.Fatalf("got key %v, want key: %v", rec.Key != nil, tc.want.key)
			}
			if rec.Key != nil && (rec.Key.Algorithm != AlgRSA || !bytes.Equal(rec.Key.Data, keyBytes)) {
				t.Errorf("key = %s %x…, want the vector", rec.Key.Algorithm, rec.Key.Data[:8])
			}
		})
	}

	for _, text := range []string{"", "v=spf1 -all", "hosta", "X-IPsec-Serve(1)=192.0.2.1", "obol lab"} {
		if _, err := ParseServerTXT(text); err != ErrNotServerRecord {
			t.Errorf("ParseServerTXT(%q) = %v, want ErrNotServerRecord", text, err)
		}
	}

	weak := weakRSA(t)
	malformed := []struct{ name, text, want string }{
		{"missing (", "X-IPsec-Server10)=192.0.2.1", `missing "("`},
		{"suffix on tag", "X-IPsec-Servers(10)=192.0.2.1", `missing "("`},
		{"missing )", "X-IPsec-Server(10=192.0.2.1", `missing ")"`},
		{"empty precedence", "X-IPsec-Server()=192.0.2.1", `precedence "" is not a number`},
		{"word precedence", "X-IPsec-Server(ten)=192.0.2.1", `precedence "ten"`},
		{"negative precedence", "X-IPsec-Server(-1)=192.0.2.1", `precedence "-1"`},
		{"precedence too large", "X-IPsec-Server(65536)=192.0.2.1", `precedence "65536"`},
		{"precedence with sign", "X-IPsec-Server(+5)=192.0.2.1", `precedence "+5"`},
		{"missing =", "X-IPsec-Server(10)192.0.2.1 " + key, `missing "="`},
		{"colon for =", "X-IPsec-Server(10):192.0.2.1", `missing "="`},
		{"no gateway", "X-IPsec-Server(10)=  ", "no gateway"},
		{"bad address", "X-IPsec-Server(10)=192.0.2.300", "neither an IP address nor @FQDN"},
		{"name without @", "X-IPsec-Server(10)=gw.example.org " + key, "neither an IP address nor @FQDN"},
		{"zone in address", "X-IPsec-Server(10)=fe80::1%eth0", "neither an IP address nor @FQDN"},
		{"unspecified address", "X-IPsec-Server(10)=0.0.0.0", "cannot be a peer's address"},
		{"multicast address", "X-IPsec-Server(10)=224.0.0.1", "cannot be a peer's address"},
		{"empty fqdn", "X-IPsec-Server(10)=@ " + key, "empty name"},
		{"empty label", "X-IPsec-Server(10)=@gw..example.org", "empty label"},
		{"bad character in fqdn", "X-IPsec-Server(10)=@gw!.example.org", "character '!'"},
		{"bad base64", "X-IPsec-Server(10)=192.0.2.1 !!notbase64!!", "not valid base64"},
		{"truncated base64", "X-IPsec-Server(10)=192.0.2.1 " + key[:len(key)-3], "not valid base64"},
		{"key too short", "X-IPsec-Server(10)=192.0.2.1 AQID", "RSA"},
		{"weak key", "X-IPsec-Server(10)=192.0.2.1 " + weak, "1024 bits"},
		{"trailing junk after key", "X-IPsec-Server(10)=192.0.2.1 " + key + " extra", "not valid base64"},
	}
	for _, tc := range malformed {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseServerTXT(tc.text)
			if err == nil || err == ErrNotServerRecord {
				t.Fatalf("ParseServerTXT(%q) = %v, want an error about %q", tc.text, err, tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func b64decode(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }

func TestParseTXTMultiString(t *testing.T) {
	key := vectorRSA(t)
	text := "X-IPsec-Server(10)=192.0.2.2 " + key
	rr, err := dns.NewRR(txt("11.2.0.192.in-addr.arpa.", 300, text))
	if err != nil {
		t.Fatal(err)
	}
	if n := len(rr.(*dns.TXT).Txt); n < 2 {
		t.Fatalf("test record has %d strings, want several", n)
	}
	d, err := parseTXT(rr.(*dns.TXT))
	if err != nil {
		t.Fatalf("parseTXT: %v", err)
	}
	if d.prec != 10 || d.addr != netip.MustParseAddr("192.0.2.2") || len(d.keys) != 1 || d.source != SourceTXT {
		t.Errorf("got %+v", d)
	}

	// A split inside a token joins without a space; escaped whitespace
	// (\009, a tab) is whitespace.
	rr, err = dns.NewRR(`x.example. 300 IN TXT "X-IPsec-Ser" "ver(4)=\009192.0.2.3"`)
	if err != nil {
		t.Fatal(err)
	}
	d, err = parseTXT(rr.(*dns.TXT))
	if err != nil || d.prec != 4 || d.addr != netip.MustParseAddr("192.0.2.3") {
		t.Errorf("split record: %+v, %v", d, err)
	}
}

func TestParseKEY(t *testing.T) {
	rsaVec := vectorRSA(t)
	ed := b64(testEd25519(1))
	cases := []struct {
		name    string
		rr      string
		wantAlg string // "" means skipped
		wantErr string
	}{
		{"ipsec rsa/sha1", "16896 4 5 " + rsaVec, AlgRSA, ""},
		{"any protocol", "16896 255 5 " + rsaVec, AlgRSA, ""},
		{"rsa/md5 as in the OE draft", "16896 4 1 " + rsaVec, AlgRSA, ""},
		{"rsa/sha256", "16896 4 8 " + rsaVec, AlgRSA, ""},
		{"user key flags", "0 4 5 " + rsaVec, AlgRSA, ""},
		{"ed25519", "16896 4 15 " + ed, AlgEd25519, ""},
		{"dnssec protocol", "16896 3 5 " + rsaVec, "", "protocol 3 is neither IPsec (4) nor any (255)"},
		{"email protocol", "16896 2 5 " + rsaVec, "", "protocol 2"},
		{"ecdsa", "16896 4 13 " + ed, "", "algorithm 13 (ECDSAP256SHA256) is not supported"},
		{"ed448", "16896 4 16 " + ed, "", "algorithm 16 (ED448) is not supported"},
		{"dsa", "16896 4 3 " + rsaVec, "", "algorithm 3 (DSA) is not supported"},
		{"unknown algorithm", "16896 4 200 " + rsaVec, "", "algorithm 200 (unknown)"},
		{"no key flag", "49664 4 5 " + rsaVec, "", `"no key"`},
		{"no authentication flag", "33280 4 5 " + rsaVec, "", "forbid authentication"},
		{"zone key", "16640 4 5 " + rsaVec, "", "zone key"},
		{"reserved name type", "17152 4 5 " + rsaVec, "", "reserved name type"},
		{"extension flag", "20992 4 5 " + rsaVec, "", "extension bit"},
		{"ed25519 wrong size", "16896 4 15 " + b64(make([]byte, 31)), "", "31 bytes"},
		{"rsa algorithm, ed25519 data", "16896 4 5 " + ed, "", "algorithm 5: RSA"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rr, err := dns.NewRR("peer.example. 300 IN KEY " + tc.rr)
			if err != nil {
				t.Fatal(err)
			}
			k, err := parseKEY(rr.(*dns.KEY))
			if tc.wantAlg != "" {
				if err != nil || k.Algorithm != tc.wantAlg {
					t.Fatalf("parseKEY = %s, %v; want a %s key", k.Algorithm, err, tc.wantAlg)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("parseKEY error = %v, want one mentioning %q", err, tc.wantErr)
			}
		})
	}
	// Bad base64 cannot come through zone-file parsing: build it.
	bad := &dns.KEY{DNSKEY: dns.DNSKEY{Hdr: dns.RR_Header{Name: "x.", Rrtype: dns.TypeKEY, Class: dns.ClassINET}, Flags: 0x4200, Protocol: 4, Algorithm: 5, PublicKey: "!!!"}}
	if _, err := parseKEY(bad); err == nil || !strings.Contains(err.Error(), "base64") {
		t.Errorf("bad base64: %v", err)
	}
}

func TestParseIPSECKEY(t *testing.T) {
	rsaVec := vectorRSA(t)
	ed := b64(testEd25519(2))
	cases := []struct {
		name     string
		rr       string
		wantSelf bool
		wantAddr string
		wantFQDN string
		wantAlg  string // "" with wantErr "": a gateway without key
		wantErr  string
	}{
		{"ipv4 rsa", "10 1 2 192.0.2.1 " + rsaVec, false, "192.0.2.1", "", AlgRSA, ""},
		{"ipv6 ed25519", "20 2 4 2001:db8::7 " + ed, false, "2001:db8::7", "", AlgEd25519, ""},
		{"name ed25519", "30 3 4 GW.example.org. " + ed, false, "", "gw.example.org.", AlgEd25519, ""},
		{"no gateway: the peer itself", "5 0 2 . " + rsaVec, true, "", "", AlgRSA, ""},
		{"gateway without key", "10 1 0 192.0.2.1", false, "192.0.2.1", "", "", ""},
		{"dsa", "10 1 1 192.0.2.1 " + rsaVec, false, "", "", "", "algorithm 1 (DSA) is not supported"},
		{"ecdsa", "10 1 3 192.0.2.1 " + ed, false, "", "", "", "algorithm 3 (ECDSA) is not supported"},
		{"ed448", "10 1 4 192.0.2.1 " + b64(make([]byte, 57)), false, "", "", "", "Ed448"},
		{"eddsa wrong size", "10 1 4 192.0.2.1 " + b64(make([]byte, 40)), false, "", "", "", "40 bytes"},
		{"unknown algorithm", "10 1 9 192.0.2.1 " + ed, false, "", "", "", "algorithm 9 is unknown"},
		{"rsa that is not", "10 1 2 192.0.2.1 " + ed, false, "", "", "", "algorithm 2: RSA"},
		{"neither gateway nor key", "10 0 0 .", false, "", "", "", "neither a gateway"},
		{"multicast gateway", "10 1 2 239.1.1.1 " + rsaVec, false, "", "", "", "cannot be a peer's address"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rr, err := dns.NewRR("11.2.0.192.in-addr.arpa. 300 IN IPSECKEY " + tc.rr)
			if err != nil {
				t.Fatal(err)
			}
			checkIPSECKEY(t, rr.(*dns.IPSECKEY), tc.wantSelf, tc.wantAddr, tc.wantFQDN, tc.wantAlg, tc.wantErr)
		})
	}
	// Forms zone-file parsing refuses: build them.
	hdr := dns.RR_Header{Name: "x.", Rrtype: dns.TypeIPSECKEY, Class: dns.ClassINET}
	t.Run("unknown gateway type", func(t *testing.T) {
		checkIPSECKEY(t, &dns.IPSECKEY{Hdr: hdr, Precedence: 1, GatewayType: 4, Algorithm: 4, PublicKey: ed}, false, "", "", "", "gateway type 4 is unknown")
	})
	t.Run("ipv4 type holding ipv6", func(t *testing.T) {
		checkIPSECKEY(t, &dns.IPSECKEY{Hdr: hdr, GatewayType: 1, GatewayAddr: netip.MustParseAddr("2001:db8::1").AsSlice(), Algorithm: 4, PublicKey: ed}, false, "", "", "", "holds 2001:db8::1")
	})
	t.Run("no address", func(t *testing.T) {
		checkIPSECKEY(t, &dns.IPSECKEY{Hdr: hdr, GatewayType: 2, Algorithm: 4, PublicKey: ed}, false, "", "", "", "no valid address")
	})
	t.Run("bad gateway name", func(t *testing.T) {
		checkIPSECKEY(t, &dns.IPSECKEY{Hdr: hdr, GatewayType: 3, GatewayHost: ".", Algorithm: 4, PublicKey: ed}, false, "", "", "", "empty name")
	})
	t.Run("bad base64", func(t *testing.T) {
		checkIPSECKEY(t, &dns.IPSECKEY{Hdr: hdr, GatewayType: 0, Algorithm: 4, PublicKey: "%%%"}, false, "", "", "", "base64")
	})
	t.Run("algorithm 0 with a key", func(t *testing.T) {
		checkIPSECKEY(t, &dns.IPSECKEY{Hdr: hdr, GatewayType: 1, GatewayAddr: netip.MustParseAddr("192.0.2.1").AsSlice(), Algorithm: 0, PublicKey: ed}, false, "", "", "", "algorithm 0 says no key")
	})
	t.Run("empty key", func(t *testing.T) {
		checkIPSECKEY(t, &dns.IPSECKEY{Hdr: hdr, GatewayType: 0, Algorithm: 2}, false, "", "", "", "key is empty")
	})
}

func checkIPSECKEY(t *testing.T, rr *dns.IPSECKEY, wantSelf bool, wantAddr, wantFQDN, wantAlg, wantErr string) {
	t.Helper()
	d, err := parseIPSECKEY(rr)
	if wantErr != "" {
		if err == nil || !strings.Contains(err.Error(), wantErr) {
			t.Fatalf("parseIPSECKEY error = %v, want one mentioning %q", err, wantErr)
		}
		return
	}
	if err != nil {
		t.Fatalf("parseIPSECKEY: %v", err)
	}
	if d.self != wantSelf || d.fqdn != wantFQDN || d.source != SourceIPSECKEY || d.prec != int(rr.Precedence) {
		t.Errorf("got %+v", d)
	}
	if wantAddr == "" && d.addr.IsValid() || wantAddr != "" && d.addr != netip.MustParseAddr(wantAddr) {
		t.Errorf("addr = %v, want %q", d.addr, wantAddr)
	}
	switch {
	case wantAlg == "" && len(d.keys) != 0:
		t.Errorf("keys = %v, want none", d.keys)
	case wantAlg != "" && (len(d.keys) != 1 || d.keys[0].Algorithm != wantAlg):
		t.Errorf("keys = %v, want one %s key", d.keys, wantAlg)
	}
}

func TestParseRRs(t *testing.T) {
	rsaVec := vectorRSA(t)
	ed := b64(testEd25519(3))
	var rrs []dns.RR
	for _, l := range []string{
		"n. 300 IN KEY 16896 4 5 " + rsaVec,
		"n. 300 IN KEY 16896 3 5 " + rsaVec, // skipped: protocol
		"n. 300 IN KEY 16896 4 15 " + ed,
		`n. 300 IN TXT "v=spf1 -all"`, // ignored
		`n. 300 IN TXT "X-IPsec-Server(x)=192.0.2.1"`,
		"n. 300 IN TXT \"X-IPsec-Server(2)=192.0.2.1\"",
	} {
		rr, err := dns.NewRR(l)
		if err != nil {
			t.Fatal(err)
		}
		rrs = append(rrs, rr)
	}
	dels, skipped, ignored := parseRRs("n.", rrs)
	if len(dels) != 2 || ignored != 1 || len(skipped) != 2 {
		t.Fatalf("got %d delegations, %d skipped %q, %d ignored; want 2, 2, 1", len(dels), len(skipped), skipped, ignored)
	}
	if !dels[0].self || dels[0].source != SourceKEY || len(dels[0].keys) != 2 || dels[0].prec != KeyOnlyPrecedence {
		t.Errorf("KEY records: %+v, want one self delegation with 2 keys", dels[0])
	}
	for _, want := range []string{`n. KEY "16896 3 5 AwEAAdY36`, `n. TXT "X-IPsec-Server(x)=192.0.2.1": precedence "x"`} {
		found := false
		for _, s := range skipped {
			found = found || strings.HasPrefix(s, want)
		}
		if !found {
			t.Errorf("no skip reason starts with %q in %q", want, skipped)
		}
	}
}

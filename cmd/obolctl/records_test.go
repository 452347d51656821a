package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"github.com/obol-ipsec/obol/internal/keyfile/keyfiletest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// rsaTestKey is the committed 2048-bit test key (never used elsewhere).
const rsaTestKey = "testdata/rsa2048-test-only.pem"

// writeEd25519 writes the test's Ed25519 key, made from a fixed seed so the
// golden files stay valid.
func writeEd25519(t *testing.T, dir string) string {
	return keyfiletest.Ed25519(t, dir, "ed25519.pem", "obolctl records test key")
}

func writeFile(t *testing.T, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func absPath(t *testing.T, p string) string {
	t.Helper()
	a, err := filepath.Abs(p)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

const oeGroups = `
[[oe.group]]
group = "private-or-clear"
cidrs = ["0.0.0.0/0"]
`

const oeGroups6 = `
[[oe.group]]
group = "private-or-clear"
cidrs = ["::/0"]
`

// recordsCase is one host whose records are checked against a golden file
// and read back by the resolver.
type recordsCase struct {
	name    string
	args    []string // more obolctl records flags
	rsa     bool     // the committed RSA key; else the seeded Ed25519 key
	oe      string   // [oe] keys besides key_file
	groups  string   // [[oe.group]] tables; "" for oeGroups
	self    string   // the address whose reverse map holds the host's key
	self6   string   // a dual-stack host's IPv6 address, whose ip6.arpa map holds it too
	fqdn    string   // the identity's FQDN, if any
	clients []string
}

var recordsCases = []recordsCase{
	{name: "rsa-gateway", rsa: true, oe: `address = "192.0.2.1"` + "\n" + `protect = ["10.1.0.0/24", "10.5.0.0/16"]`, self: "192.0.2.1",
		args: []string{"--client", "10.1.0.10,10.1.0.11", "--client", "10.1.0.10"}, clients: []string{"10.1.0.10", "10.1.0.11", "10.5.0.1"}},
	{name: "ed25519-gateway", oe: `address = "192.0.2.1"` + "\n" + `protect = ["10.1.0.0/24", "2001:db8:1::/64"]`, self: "192.0.2.1", clients: []string{"10.1.0.1", "2001:db8:1::1"}},
	{name: "ed25519-fqdn", oe: `address = "192.0.2.11"` + "\n" + `identity = "@Host.Example.org"` + "\n" + `protect = ["198.51.100.7/32"]`, self: "192.0.2.11", fqdn: "host.example.org.", clients: []string{"198.51.100.7"}},
	{name: "rsa-ipv6-host", rsa: true, oe: `address = "2001:db8::11"`, groups: oeGroups6, self: "2001:db8::11"},
	{name: "ed25519-dual-stack", oe: `address = "192.0.2.11"` + "\n" + `address6 = "2001:db8::11"`, groups: oeGroups + oeGroups6, self: "192.0.2.11", self6: "2001:db8::11"},
	{name: "ed25519-dual-stack-fqdn", oe: `address = "192.0.2.12"` + "\n" + `address6 = "2001:db8::12"` + "\n" + `identity = "@hostb.example.org"`, groups: oeGroups + oeGroups6, self: "192.0.2.12", self6: "2001:db8::12", fqdn: "hostb.example.org."},
	{name: "rsa-fqdn-host", rsa: true, oe: `address = "192.0.2.12"` + "\n" + `identity = "@hostb.example.org."`, self: "192.0.2.12", fqdn: "hostb.example.org."},
}

// recordsOutput runs obolctl records on a config for c in a temp dir and
// returns its output with the dir replaced by "DIR".
func recordsOutput(t *testing.T, c recordsCase, extra ...string) string {
	t.Helper()
	dir := t.TempDir()
	key := absPath(t, rsaTestKey)
	if !c.rsa {
		key = writeEd25519(t, dir)
	}
	groups := c.groups
	if groups == "" {
		groups = oeGroups
	}
	cfg := writeFile(t, dir, "obold.toml", []byte(fmt.Sprintf("[oe]\n%s\nkey_file = %q\n[oe.dns]\nserver = \"192.0.2.53\"\n%s", c.oe, key, groups)))
	args := append(append([]string{"records", "--config", cfg}, c.args...), extra...)
	return strings.ReplaceAll(expectRun(t, args, 0, nil, ""), dir, "DIR")
}

func TestRecordsGolden(t *testing.T) {
	for _, c := range recordsCases {
		t.Run(c.name, func(t *testing.T) {
			got := recordsOutput(t, c)
			golden := filepath.Join("testdata", "records-"+c.name+".golden")
			if *update {
				if err := os.WriteFile(golden, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test -update to write it)", err)
			}
			if got != string(want) {
				t.Errorf("output differs from %s (go test -update rewrites it):\n%s", golden, got)
			}
		})
	}
}

// TestRecordsRoundTrip serves the printed records from a fake validating
// resolver and checks that obol's resolver reads the host's key back from
// each: the reverse map, the FQDN, and the clients' delegations.
func TestRecordsRoundTrip(t *testing.T) {
	for _, c := range recordsCases {
		t.Run(c.name, func(t *testing.T) {
			var want plugins.PublicKey
			var err error
			if c.rsa {
				want, err = resolver.NewPublicKey(loadPublic(t, rsaTestKey))
			} else {
				dir := t.TempDir()
				want, err = resolver.NewPublicKey(loadPublic(t, writeEd25519(t, dir)))
			}
			if err != nil {
				t.Fatal(err)
			}
			out := recordsOutput(t, c)
			fake := resolvertest.New()
			for _, z := range []string{"arpa.", "org."} {
				fake.AddZone(z, resolvertest.Secure)
			}
			// Record by record: miekg/dns's ZoneParser (v1.1.73) swallows
			// the line after an IPSECKEY record ("garbage after rdata");
			// knot loads the same text as one zone.
			n := 0
			for i, line := range strings.Split(out, "\n") {
				if line == "" || strings.HasPrefix(line, ";") {
					continue
				}
				rr, err := dns.NewRR(line)
				if err != nil || rr == nil {
					t.Fatalf("line %d is not a zone-file record (%v): %s", i+1, err, line)
				}
				if txt, isTXT := rr.(*dns.TXT); isTXT {
					for _, s := range txt.Txt {
						if len(s) > 255 {
							t.Errorf("TXT character-string of %d bytes: %q", len(s), s)
						}
					}
				}
				if err := fake.AddRR(rr); err != nil {
					t.Fatal(err)
				}
				n++
			}
			if n == 0 {
				t.Fatal("no records printed")
			}
			r, err := resolver.New(resolver.Defaults(), resolver.Options{Transport: fake})
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			self := netip.MustParseAddr(c.self)
			gateway := plugins.Gateway{Addr: self}
			if c.fqdn != "" {
				gateway = plugins.Gateway{FQDN: c.fqdn}
			}
			check := func(q plugins.LookupQuery, wantGW plugins.Gateway) {
				t.Helper()
				a, err := r.Resolve(context.Background(), q)
				if err != nil {
					t.Fatalf("resolve %+v: %v", q, err)
				}
				if len(a.Skipped) > 0 {
					t.Errorf("resolve %+v skipped records: %q", q, a.Skipped)
				}
				if len(a.Gateways) != 1 {
					t.Fatalf("resolve %+v: gateways %+v, want one", q, a.Gateways)
				}
				g := a.Gateways[0]
				if g.Addr != wantGW.Addr || g.FQDN != wantGW.FQDN || len(g.Keys) != 1 || g.Keys[0].Algorithm != want.Algorithm || !bytes.Equal(g.Keys[0].Data, want.Data) {
					t.Errorf("resolve %+v: gateway %+v, want %v%s with the host's %s key", q, g, wantGW.Addr, wantGW.FQDN, want.Algorithm)
				}
			}
			// An @FQDN host's reverse map points to its identity.
			check(plugins.LookupQuery{Addr: self}, gateway)
			if c.self6 != "" {
				// Its IPv6 address too, in ip6.arpa: with an address
				// identity the gateway is that IPv6 address itself.
				gw6 := plugins.Gateway{Addr: netip.MustParseAddr(c.self6)}
				if c.fqdn != "" {
					gw6 = gateway
				}
				check(plugins.LookupQuery{Addr: netip.MustParseAddr(c.self6)}, gw6)
			}
			if c.fqdn != "" {
				check(plugins.LookupQuery{FQDN: c.fqdn}, plugins.Gateway{FQDN: c.fqdn})
			}
			for _, cl := range c.clients {
				check(plugins.LookupQuery{Addr: netip.MustParseAddr(cl)}, gateway)
			}
		})
	}
}

func loadPublic(t *testing.T, path string) crypto.PublicKey {
	t.Helper()
	pub, err := readPublicKey(path)
	if err != nil {
		t.Fatal(err)
	}
	return pub
}

func TestRecordsJSON(t *testing.T) {
	out := recordsOutput(t, recordsCases[1], "--json")
	var r hostRecords
	if err := json.Unmarshal([]byte(out), &r); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	if r.Address != "192.0.2.1" || r.Key.Algorithm != "ed25519" || len(r.Key.KeyID) != 40 || len(r.Sections) != 3 {
		t.Errorf("--json = %+v", r)
	}
	if rec := r.Sections[0].Records[1]; rec.Owner != "1.2.0.192.in-addr.arpa." || rec.Type != "KEY" || !strings.HasPrefix(rec.Data, "16896 4 15 ") {
		t.Errorf("KEY record = %+v", rec)
	}
}

func TestRecordsErrors(t *testing.T) {
	dir := t.TempDir()
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecDER, err := x509.MarshalECPrivateKey(ec)
	if err != nil {
		t.Fatal(err)
	}
	weakKey := writeFile(t, dir, "weak.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(weak)}))
	ecKey := writeFile(t, dir, "ec.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: ecDER}))
	notPEM := writeFile(t, dir, "junk.pem", []byte("not a key\n"))
	good := writeEd25519(t, dir)
	tests := []struct {
		name string
		oe   string
		want string
	}{
		{"no key_file", `address = "192.0.2.1"`, "[oe] has no key_file; make a key"},
		{"no address", fmt.Sprintf("key_file = %q", good), `[oe] address "" is not an IP address`},
		{"weak RSA", fmt.Sprintf("address = \"192.0.2.1\"\nkey_file = %q", weakKey), "RSA key has 1024 bits; keys from 2048 to 16384 bits are accepted; peers would skip this key"},
		{"ECDSA", fmt.Sprintf("address = \"192.0.2.1\"\nkey_file = %q", ecKey), "is an ECDSA key, which OE peers cannot take from DNS"},
		{"not PEM", fmt.Sprintf("address = \"192.0.2.1\"\nkey_file = %q", notPEM), "no PEM block found"},
		{"bad protect", fmt.Sprintf("address = \"192.0.2.1\"\nkey_file = %q\nprotect = [\"10.1.0.0\"]", good), `protect[0] "10.1.0.0" is not a CIDR`},
		{"bad identity", fmt.Sprintf("address = \"192.0.2.1\"\nkey_file = %q\nidentity = \"@bad name\"", good), `identity "@bad name" is not @ and a host name`},
		{"config problems", "adress = \"192.0.2.1\"", `unknown key "adress"`},
		{"client outside protect", fmt.Sprintf("address = \"192.0.2.1\"\nkey_file = %q\nprotect = [\"10.1.0.0/24\"]\n#client 10.2.0.10", good), `--client 10.2.0.10 is in no protect network of [oe] (10.1.0.0/24)`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Without [[oe.group]] obold's config check leaves [oe] alone;
			// records checks what it needs itself.
			cfg := writeFile(t, t.TempDir(), "obold.toml", []byte("[oe]\n"+tt.oe+"\n"))
			args := []string{"records", "--config", cfg}
			if _, cl, ok := strings.Cut(tt.oe, "#client "); ok {
				args = append(args, "--client", cl)
			}
			expectRun(t, args, 1, nil, tt.want)
		})
	}
}

func TestRecordsWithoutGroups(t *testing.T) {
	dir := t.TempDir()
	cfg := writeFile(t, dir, "obold.toml", []byte(fmt.Sprintf("[oe]\naddress = \"192.0.2.1\"\nkey_file = %q\n", writeEd25519(t, dir))))
	expectRun(t, []string{"records", "--config", cfg}, 0, []string{"; note:     [oe] has no [[oe.group]] yet", "IN KEY"}, "")
}

func TestSplitTXT(t *testing.T) {
	for _, n := range []int{0, 1, 255, 256, 510, 511, 1000} {
		s := strings.Repeat("a", n)
		parts := splitTXT(s)
		if strings.Join(parts, "") != s {
			t.Errorf("splitTXT(%d bytes) loses text", n)
		}
		for _, p := range parts {
			if len(p) > 255 {
				t.Errorf("splitTXT(%d bytes) has a part of %d", n, len(p))
			}
		}
		if want := max(1, (n+254)/255); len(parts) != want {
			t.Errorf("splitTXT(%d bytes) = %d parts, want %d", n, len(parts), want)
		}
	}
}

// TestRecordsExampleConfigs runs records on configs/oe-*.toml, with their
// key path pointed at a test key, as given and with the commented @FQDN
// identity turned on.
func TestRecordsExampleConfigs(t *testing.T) {
	files, err := filepath.Glob("../../configs/oe-*.toml")
	if err != nil || len(files) == 0 {
		t.Fatalf("configs/oe-*.toml = %v, %v", files, err)
	}
	dir := t.TempDir()
	key := writeEd25519(t, dir)
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text := strings.ReplaceAll(string(data), "/etc/obol/oe-key.pem", key)
		for _, variant := range []struct{ name, text, want string }{
			{"address", text, ".in-addr.arpa. IN KEY      16896 4 15 "},
			{"fqdn", strings.Replace(text, "# identity = ", "identity = ", 1), ".example.org. IN KEY      16896 4 15 "},
		} {
			t.Run(filepath.Base(f)+"/"+variant.name, func(t *testing.T) {
				cfg := writeFile(t, t.TempDir(), filepath.Base(f), []byte(variant.text))
				out := expectRun(t, []string{"records", "--config", cfg}, 0, []string{variant.want}, "")
				for _, line := range strings.Split(out, "\n") {
					if line != "" && !strings.HasPrefix(line, ";") {
						if _, err := dns.NewRR(line); err != nil {
							t.Errorf("%v: %s", err, line)
						}
					}
				}
			})
		}
	}
}

func TestRecordsBadClientFlag(t *testing.T) {
	expectRun(t, []string{"records", "--client", "10.1.0.x"}, 2, nil, `invalid value "10.1.0.x" for flag -client: "10.1.0.x" is not an IP address`)
}

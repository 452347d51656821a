package authmethod

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"math/big"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
)

func edKey(seed byte) plugins.PublicKey {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	return plugins.PublicKey{Algorithm: "ed25519", Data: ed25519.NewKeyFromSeed(s).Public().(ed25519.PublicKey)}
}

// fakeDNS answers from a table it can change between calls.
type fakeDNS struct {
	mu  sync.Mutex
	ans map[netip.Addr]plugins.LookupAnswer
	err error
}

func (f *fakeDNS) Lookup(_ context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ans[q.Addr], f.err
}

func (f *fakeDNS) set(a string, ans plugins.LookupAnswer) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ans == nil {
		f.ans = map[netip.Addr]plugins.LookupAnswer{}
	}
	f.ans[netip.MustParseAddr(a)] = ans
}

func answer(dnssec plugins.DNSSECStatus, gw string, keys ...plugins.PublicKey) plugins.LookupAnswer {
	return plugins.LookupAnswer{DNSSEC: dnssec, TTL: time.Minute, Name: "x.in-addr.arpa.",
		Gateways: []plugins.Gateway{{Precedence: 10, Addr: netip.MustParseAddr(gw), Keys: keys, Source: "IPSECKEY"}}}
}

func q(a string) plugins.LookupQuery { return plugins.LookupQuery{Addr: netip.MustParseAddr(a)} }

func TestChain(t *testing.T) {
	none := plugins.AuthMethodFunc(func(context.Context, plugins.LookupQuery) (plugins.LookupAnswer, error) {
		return plugins.LookupAnswer{Name: "none", TTL: time.Minute, Skipped: []string{"none: nothing"}}, nil
	})
	failing := plugins.AuthMethodFunc(func(context.Context, plugins.LookupQuery) (plugins.LookupAnswer, error) {
		return plugins.LookupAnswer{}, errors.New("DNS timeout")
	})
	refusing := plugins.AuthMethodFunc(func(context.Context, plugins.LookupQuery) (plugins.LookupAnswer, error) {
		return plugins.LookupAnswer{Unusable: "key changed"}, nil
	})
	secure := &fakeDNS{}
	secure.set("192.0.2.12", answer(plugins.DNSSECSecure, "192.0.2.12", edKey(1)))
	insecure := &fakeDNS{}
	insecure.set("192.0.2.12", answer(plugins.DNSSECInsecure, "192.0.2.12", edKey(1)))
	tests := []struct {
		name       string
		chain      Chain
		method     string
		gateways   int
		errWant    string
		unusable   bool
		skippedHas string
	}{
		{"dns secure", Chain{{"dns", DNS{secure}}}, plugins.MethodDNSSEC, 1, "", false, ""},
		{"dns insecure is BTNS", Chain{{"dns", DNS{insecure}}}, plugins.MethodBTNS, 1, "", false, ""},
		{"no opinion passes on", Chain{{"none", none}, {"dns", DNS{secure}}}, plugins.MethodDNSSEC, 1, "", false, "none: nothing"},
		{"an error passes on", Chain{{"broken", failing}, {"dns", DNS{secure}}}, plugins.MethodDNSSEC, 1, "", false, ""},
		{"a refusal stops the chain", Chain{{"lof", refusing}, {"dns", DNS{secure}}}, "", 0, "auth method lof: lof: key changed", true, ""},
		{"nobody vouches", Chain{{"none", none}}, "", 0, "", false, "none: nothing"},
		{"only errors", Chain{{"broken", failing}}, "", 0, "auth method broken: DNS timeout", false, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ans, err := tc.chain.Lookup(context.Background(), q("192.0.2.12"))
			if (tc.errWant == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.errWant) {
				t.Fatalf("err %v, want %q", err, tc.errWant)
			}
			if ans.Method != tc.method || len(ans.Gateways) != tc.gateways || (ans.Unusable != "") != tc.unusable {
				t.Fatalf("answer %+v", ans)
			}
			if tc.skippedHas != "" && !strings.Contains(strings.Join(ans.Skipped, ";"), tc.skippedHas) {
				t.Errorf("skipped %v lacks %q", ans.Skipped, tc.skippedHas)
			}
		})
	}
}

func TestStaticDir(t *testing.T) {
	dir := t.TempDir()
	k1 := base64.StdEncoding.EncodeToString(edKey(1).Data)
	os.WriteFile(filepath.Join(dir, "192.0.2.12"), []byte("# hostb\ned25519 "+k1+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "10.2.0.10"), []byte("gateway 192.0.2.2\ned25519 "+k1+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "hostc.example.org"), []byte("ed25519 "+k1+"\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "192.0.2.13"), []byte("ed25519 notbase64!\n"), 0o644)
	s := StaticDir{Dir: dir}
	tests := []struct {
		q       plugins.LookupQuery
		gw      string
		errWant string
	}{
		{q("192.0.2.12"), "192.0.2.12", ""},
		{q("10.2.0.10"), "192.0.2.2", ""},
		{plugins.LookupQuery{FQDN: "hostc.example.org."}, "@hostc.example.org", ""},
		{q("192.0.2.99"), "", ""},
		{q("192.0.2.13"), "", "192.0.2.13:1: ed25519 key: not base64"},
		{plugins.LookupQuery{FQDN: "../etc/passwd"}, "", "cannot name a key file"},
	}
	for _, tc := range tests {
		ans, err := s.Credentials(context.Background(), tc.q)
		if (tc.errWant == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.errWant) {
			t.Errorf("%+v: err %v, want %q", tc.q, err, tc.errWant)
			continue
		}
		if tc.gw == "" {
			if len(ans.Gateways) != 0 {
				t.Errorf("%+v: gateways %+v, want none", tc.q, ans.Gateways)
			}
			continue
		}
		if len(ans.Gateways) != 1 || gatewayID(ans.Gateways[0]) != tc.gw || ans.Method != plugins.MethodPresharedKey || len(ans.Gateways[0].Keys) != 1 {
			t.Errorf("%+v: answer %+v, want gateway %s", tc.q, ans, tc.gw)
		}
	}
}

func TestParseKeyFile(t *testing.T) {
	k := base64.StdEncoding.EncodeToString(edKey(1).Data)
	tests := []struct{ in, errWant string }{
		{"ed25519 " + k, ""},
		{"gateway @gw.example.org.\ned25519 " + k + "\ned25519 " + k, ""},
		{"", "0: no key"},
		{"ed25519", "1: \"ed25519\": want two fields"},
		{"gateway 192.0.2.1\ngateway 192.0.2.2\ned25519 " + k, "2: a second gateway line"},
		{"gateway nowhere\n", "1: gateway \"nowhere\" is neither"},
		{"ed25519 AAAA", "1: ed25519 key:"},
		{"rsa AAAA", "1: rsa key:"},
		{"dsa " + k, "1: unknown keyword \"dsa\""},
		{"psk " + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")), ""},
		{"psk " + base64.StdEncoding.EncodeToString([]byte("short")), "1: psk of 5 bytes"},
		{"psk " + base64.StdEncoding.EncodeToString([]byte("0123456789abcdef")) + "\ned25519 " + k, "0: keys, psk and ca are alternatives"},
		{"ca corp.pem", ""},
		{"ca ../../etc/ca.pem", "1: ca \"../../etc/ca.pem\": name a file"},
	}
	for _, tc := range tests {
		_, err := ParseKeyFile([]byte(tc.in))
		if (tc.errWant == "") != (err == nil) || err != nil && !strings.HasPrefix(err.Error(), tc.errWant) {
			t.Errorf("%q: err %v, want %q", tc.in, err, tc.errWant)
		}
	}
}

func TestLeapOfFaith(t *testing.T) {
	dns := &fakeDNS{}
	store := filepath.Join(t.TempDir(), "pins.json")
	clock := time.Date(2026, 11, 23, 12, 0, 0, 0, time.UTC)
	newLOF := func(allow bool) *LeapOfFaith {
		return &LeapOfFaith{Resolver: dns, Store: store, AllowKeyChange: allow, Now: func() time.Time { return clock }}
	}
	l := newLOF(false)
	ctx := context.Background()
	ask := func(l *LeapOfFaith) (plugins.LookupAnswer, error) { return l.Credentials(ctx, q("192.0.2.12")) }

	dns.set("192.0.2.12", answer(plugins.DNSSECInsecure, "192.0.2.12", edKey(1)))
	if ans, err := ask(l); err != nil || ans.Method != plugins.MethodLeapOfFaith || len(ans.Gateways) != 1 {
		t.Fatalf("first contact: %+v, %v", ans, err)
	}
	// Rollover: the old key plus a new one; only the pinned one is used.
	dns.set("192.0.2.12", answer(plugins.DNSSECInsecure, "192.0.2.12", edKey(2), edKey(1)))
	if ans, err := ask(l); err != nil || len(ans.Gateways[0].Keys) != 1 || ans.Gateways[0].Keys[0].Data[0] != edKey(1).Data[0] {
		t.Fatalf("rollover: %+v, %v", ans, err)
	}
	// A changed key is refused, also by a new instance reading the store.
	dns.set("192.0.2.12", answer(plugins.DNSSECInsecure, "192.0.2.12", edKey(3)))
	for _, inst := range []*LeapOfFaith{l, newLOF(false)} {
		ans, err := ask(inst)
		if err == nil || !strings.Contains(ans.Unusable, "changed since first contact at 2026-11-23T12:00:00Z") || len(ans.Gateways) != 0 {
			t.Fatalf("changed key: %+v, %v", ans, err)
		}
	}
	// Unless policy allows the change.
	if ans, err := ask(newLOF(true)); err != nil || ans.Method != plugins.MethodLeapOfFaith {
		t.Fatalf("allowed change: %+v, %v", ans, err)
	}
	// A validated answer needs no faith and becomes the pin.
	dns.set("192.0.2.12", answer(plugins.DNSSECSecure, "192.0.2.12", edKey(4)))
	if ans, err := ask(newLOF(false)); err != nil || ans.Method != plugins.MethodDNSSEC {
		t.Fatalf("secure: %+v, %v", ans, err)
	}
	dns.set("192.0.2.12", answer(plugins.DNSSECInsecure, "192.0.2.12", edKey(4)))
	if ans, err := ask(newLOF(false)); err != nil || ans.Method != plugins.MethodLeapOfFaith {
		t.Fatalf("after the secure pin: %+v, %v", ans, err)
	}
	// No records: no opinion (nothing pinned).
	if ans, err := l.Credentials(ctx, q("192.0.2.99")); err != nil || len(ans.Gateways) != 0 || ans.Unusable != "" {
		t.Fatalf("no records: %+v, %v", ans, err)
	}
	if fi, err := os.Stat(store); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("store: %v, %v", fi, err)
	}
	// A broken store is an error that says so, never an empty pin set.
	os.WriteFile(store, []byte(`{"version":1,"pins":{"x":{"keys":[]}}}`), 0o600)
	if _, err := ask(newLOF(false)); err == nil || !strings.Contains(err.Error(), "has no keys") {
		t.Fatalf("broken store: %v", err)
	}
}

func FuzzParseKeyFile(f *testing.F) {
	k := base64.StdEncoding.EncodeToString(edKey(1).Data)
	f.Add([]byte("gateway 192.0.2.1\ned25519 " + k))
	f.Add([]byte("rsa AwEAAQ==\n# c\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		gw, err := ParseKeyFile(b)
		if err == nil && len(gw.Keys)+len(gw.PSK)+len(gw.CACerts) == 0 {
			t.Fatal("a key file without credentials was accepted")
		}
	})
}

func FuzzParsePins(f *testing.F) {
	f.Add([]byte(`{"version":1,"pins":{"192.0.2.12":{"keys":[{"Algorithm":"ed25519","Data":"AAAA"}]}}}`))
	f.Add([]byte(`{"version":2}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		pins, err := ParsePins(b)
		if err == nil {
			for _, p := range pins {
				if len(p.Keys) == 0 {
					t.Fatal("a pin without keys was accepted")
				}
			}
		}
	})
}

func TestStaticDirPSKAndCA(t *testing.T) {
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "corp CA"}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(dir, "corp.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(dir, "192.0.2.14"), []byte("psk "+base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123"))+"\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "192.0.2.15"), []byte("ca corp.pem\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "192.0.2.16"), []byte("ca missing.pem\n"), 0o644)
	s := StaticDir{Dir: dir}
	ans, err := s.Credentials(context.Background(), q("192.0.2.14"))
	if err != nil || len(ans.Gateways) != 1 || string(ans.Gateways[0].PSK) != "0123456789abcdef0123" || ans.Method != plugins.MethodPresharedKey {
		t.Errorf("psk: %+v, %v", ans, err)
	}
	ans, err = s.Credentials(context.Background(), q("192.0.2.15"))
	if err != nil || len(ans.Gateways) != 1 || len(ans.Gateways[0].CACerts) != 1 || string(ans.Gateways[0].CACerts[0]) != string(der) || ans.Method != "" {
		t.Errorf("ca: %+v, %v", ans, err)
	}
	if _, err := s.Credentials(context.Background(), q("192.0.2.16")); err == nil || !strings.Contains(err.Error(), "missing.pem") {
		t.Errorf("missing CA file: %v", err)
	}
}

package daemon

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/obol-ipsec/obol/internal/keyfile/keyfiletest"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/config"
	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
)

// cannedDNS answers every lookup with the same gateways.
type cannedDNS struct{ gws []plugins.Gateway }

func (c cannedDNS) Lookup(_ context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	return plugins.LookupAnswer{Gateways: c.gws, DNSSEC: plugins.DNSSECSecure, TTL: 300 * time.Second, Name: "10.0.2.10.in-addr.arpa."}, nil
}

func oeTestConfig(t *testing.T) *config.Config {
	t.Helper()
	dir := t.TempDir()
	key := keyfiletest.Ed25519(t, dir, "oe-key.pem", "")
	cfg, err := config.Parse(filepath.Join(dir, "obold.toml"), []byte(fmt.Sprintf(`
[oe]
address = "192.0.2.1"
key_file = %q
[oe.dns]
server = "192.0.2.53"
[[oe.group]]
group = "private-or-clear"
cidrs = ["10.2.0.0/16"]
`, key)))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

func callLookup(t *testing.T, d *Daemon, params string) (control.OELookup, error) {
	t.Helper()
	res, err := d.Handlers()[control.MethodOELookup](context.Background(), json.RawMessage(params))
	if err != nil {
		return control.OELookup{}, err
	}
	// Through JSON, as obolctl gets it.
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var l control.OELookup
	if err := json.Unmarshal(b, &l); err != nil {
		t.Fatal(err)
	}
	return l, nil
}

func TestOELookupErrors(t *testing.T) {
	off := newTestDaemon(t, testConfig(t, ""), newFake())
	notRunning := newTestDaemon(t, oeTestConfig(t), newFake())
	tests := []struct {
		name   string
		d      *Daemon
		params string
		code   string
		msg    string
	}{
		{"OE off", off, `{"addr":"10.2.0.10"}`, control.CodeOEOff, "OE is off: "},
		{"OE not running", notRunning, `{"addr":"10.2.0.10"}`, control.CodeOEOff, "OE is configured but not running"},
		{"not an address", notRunning, `{"addr":"10.2.0"}`, control.CodeBadRequest, `"10.2.0" is not an IP address`},
		{"no address", off, ``, control.CodeBadRequest, `"" is not an IP address`},
		{"zone", off, `{"addr":"fe80::1%eth0"}`, control.CodeBadRequest, "is not an IP address"},
		{"bad params", off, `[1]`, control.CodeBadRequest, `params must be {"addr":"IP"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := callLookup(t, tt.d, tt.params)
			var ce *control.Error
			if !errors.As(err, &ce) || ce.Code != tt.code || !strings.Contains(ce.Message, tt.msg) {
				t.Errorf("error = %v, want code %s with %q", err, tt.code, tt.msg)
			}
		})
	}
}

func TestOELookupAnswer(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey := plugins.PublicKey{Algorithm: resolver.AlgRSA, Data: resolver.EncodeRFC3110(&rk.PublicKey)}
	edKey := plugins.PublicKey{Algorithm: resolver.AlgEd25519, Data: edPub}
	gw := plugins.Gateway{Precedence: 10, Addr: netip.MustParseAddr("192.0.2.2"), Source: "IPSECKEY+TXT", Keys: []plugins.PublicKey{rsaKey, edKey}}
	cfg := oeTestConfig(t)
	d := newTestDaemon(t, cfg, newFake())
	eng, err := oe.New(cfg.OE, oe.Params{Resolver: cannedDNS{gws: []plugins.Gateway{gw}}, Prefix: "obol-"})
	if err != nil {
		t.Fatal(err)
	}
	d.mu.Lock()
	d.oe = eng
	d.mu.Unlock()

	l, err := callLookup(t, d, `{"addr":"10.2.0.10"}`)
	if err != nil {
		t.Fatal(err)
	}
	if l.Addr != "10.2.0.10" || l.Policy.Group != "private-or-clear" || l.Policy.CIDR != "10.2.0.0/16" || l.Policy.FailureShunt != "pass" || l.Policy.ShuntLifetime != 15*time.Minute {
		t.Errorf("policy = %+v", l.Policy)
	}
	if l.Action != "would initiate OE to gateway 192.0.2.2 (IPSECKEY+TXT, DNSSEC secure)" || l.Responder == "" || len(l.Details) == 0 {
		t.Errorf("action %q, details %q, responder %q", l.Action, l.Details, l.Responder)
	}
	if l.DNS.Name != "10.0.2.10.in-addr.arpa." || l.DNS.DNSSEC != "secure" || l.DNS.TTL != 300*time.Second || l.DNS.Error != "" || len(l.DNS.Gateways) != 1 {
		t.Fatalf("dns = %+v", l.DNS)
	}
	g := l.DNS.Gateways[0]
	rsaID, _ := resolver.KeyID(rsaKey)
	edID, _ := resolver.KeyID(edKey)
	if g.Address != "192.0.2.2" || g.Precedence != 10 || g.Source != "IPSECKEY+TXT" || len(g.Keys) != 2 ||
		g.Keys[0] != (control.OELookupKey{Algorithm: "rsa", Bits: 2048, KeyID: rsaID}) ||
		g.Keys[1] != (control.OELookupKey{Algorithm: "ed25519", KeyID: edID}) {
		t.Errorf("gateway = %+v", g)
	}
	raw, _ := json.Marshal(l)
	for _, k := range []plugins.PublicKey{rsaKey, edKey} {
		if strings.Contains(string(raw), base64.StdEncoding.EncodeToString(k.Data)) {
			t.Errorf("the answer carries raw key bytes: %s", raw)
		}
	}
}

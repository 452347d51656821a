// Package pluginstest is the conformance suite of obol's module contracts:
// the same checks run against a module built in (a plain Go value) and
// served by an external go-plugin process, and both must give the same
// answers. It also holds deterministic fixtures — obol's own built-in
// modules over fake DNS and a fake kernel — that a test plugin process can
// rebuild identically.
package pluginstest

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/obol-ipsec/obol/internal/authmethod"
	"github.com/obol-ipsec/obol/internal/labels"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

// fixtureKey is a fixed Ed25519 public key (from a fixed seed).
func fixtureKey(seed byte) []byte {
	s := make([]byte, ed25519.SeedSize)
	for i := range s {
		s[i] = seed
	}
	return ed25519.NewKeyFromSeed(s).Public().(ed25519.PublicKey)
}

// ResolverFixture is obol's built-in resolver over a fake validating DNS
// server with four peers: 192.0.2.12 (secure IPSECKEY), 192.0.2.13 (two
// gateways, insecure zone), 198.51.100.7 (bogus zone) and
// 192.0.2.99 (no records).
func ResolverFixture() (plugins.Resolver, error) {
	dns := resolvertest.New()
	dns.AddZone("2.0.192.in-addr.arpa.", resolvertest.Secure)
	dns.AddZone("100.51.198.in-addr.arpa.", resolvertest.Bogus)
	k1 := base64.StdEncoding.EncodeToString(fixtureKey(1))
	k2 := base64.StdEncoding.EncodeToString(fixtureKey(2))
	if err := dns.Add(
		"12.2.0.192.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.12 "+k1,
		"7.100.51.198.in-addr.arpa. 300 IN IPSECKEY 10 1 4 198.51.100.7 "+k1,
	); err != nil {
		return nil, fmt.Errorf("pluginstest: resolver fixture: %w", err)
	}
	dns.AddZone("13.2.0.192.in-addr.arpa.", resolvertest.Insecure)
	if err := dns.Add(
		"13.2.0.192.in-addr.arpa. 300 IN IPSECKEY 20 1 4 192.0.2.1 "+k1,
		"13.2.0.192.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.2 "+k2,
	); err != nil {
		return nil, fmt.Errorf("pluginstest: resolver fixture: %w", err)
	}
	cfg := resolver.Defaults()
	cfg.Timeout = resolver.Duration(2 * time.Second)
	return resolver.New(cfg, resolver.Options{Transport: dns})
}

// LabelsFixture is obol's built-in label policy with one SELinux entry and
// one Smack entry (simple mode: no SELinux on the host).
func LabelsFixture() (plugins.LabelPolicy, error) {
	return labels.New(labels.Config{
		Mode:  "simple",
		Allow: []labels.AllowRule{{Source: "httpd_t", Target: "ipsec_spd_t"}},
		Entries: []labels.EntryConfig{
			{Name: "web", Local: "10.1.0.0/24", Remote: "10.2.0.0/24", Protocol: "tcp", RemotePorts: "443", Required: true,
				Context: "system_u:object_r:ipsec_spd_t:s0-s3:c0.c127", Labels: []string{"system_u:system_r:httpd_t:s1", "system_u:system_r:httpd_t:s2:c1"}},
			{Name: "smack-lan", Local: "10.3.0.0/24", Remote: "10.4.0.0/24", Required: true, DOI: "smack", Labels: []string{"WebData"}},
		},
	}, noSELinux{})
}

type noSELinux struct{}

func (noSELinux) SELinuxActive() bool { return false }

// XFRMFixture is obol's built-in XFRM checker over a fixed kernel: one
// policy of obold's that is still wanted, one of obold's that is not
// (stale), and one of another owner.
func XFRMFixture() plugins.XFRMChecker {
	owner := xfrm.DefaultOwner()
	k := fixedKernel{
		{Src: netip.MustParsePrefix("192.0.2.11/32"), Dst: netip.MustParsePrefix("192.0.2.12/32"), Dir: xfrm.DirOut, Action: xfrm.Allow,
			Priority: owner.Band.Min + 10, Index: 0xb0000000 | 0x11},
		{Src: netip.MustParsePrefix("192.0.2.11/32"), Dst: netip.MustParsePrefix("192.0.2.77/32"), Dir: xfrm.DirOut, Action: xfrm.Block,
			Priority: owner.Band.Min + 20, Index: 0xb0000000 | 0x21},
		{Src: netip.MustParsePrefix("10.0.0.0/8"), Dst: netip.MustParsePrefix("10.0.0.0/8"), Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: 50, Index: 0x31},
	}
	return &xfrm.Checker{Kernel: k, Owner: owner}
}

type fixedKernel []xfrm.Policy

func (k fixedKernel) Policies(context.Context) ([]xfrm.Policy, error) {
	return append([]xfrm.Policy(nil), k...), nil
}

// WriteAuthFixture fills dir with the static keys the AuthMethod suite
// expects: 192.0.2.12 (its own gateway, key 1) and 10.2.0.10 (behind
// gateway 192.0.2.2, key 2).
func WriteAuthFixture(dir string) error {
	files := map[string]string{
		"192.0.2.12": "ed25519 " + base64.StdEncoding.EncodeToString(fixtureKey(1)) + "\n",
		"10.2.0.10":  "gateway 192.0.2.2\ned25519 " + base64.StdEncoding.EncodeToString(fixtureKey(2)) + "\n",
		"192.0.2.13": "ed25519 broken!\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return fmt.Errorf("pluginstest: auth fixture: %w", err)
		}
	}
	return nil
}

// AuthFixture is obol's built-in static keys method over a directory that
// WriteAuthFixture filled.
func AuthFixture(dir string) plugins.AuthMethod { return authmethod.StaticDir{Dir: dir} }

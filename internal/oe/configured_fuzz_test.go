package oe

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/vici"
)

// FuzzParseConfigured: whatever list-conns reports for a conn's remote
// addresses, identities and selectors, parsing never panics, wildcards never
// become a peer, and a conn's own identity always collides with it.
func FuzzParseConfigured(f *testing.F) {
	for _, s := range [][3]string{
		{"192.0.2.2", "192.0.2.2", "10.2.0.0/24"},
		{"%any", "@GW.example.org.", "dynamic"},
		{"198.51.100.0/28, 203.0.113.9", "%any6", "0.0.0.0/0[tcp/80]"},
		{"2001:db8::/32", "@#0a1b2c", "::/0"},
		{"", "*@example.org", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, addrs, id, ts string) {
		c := parseConfigured(vici.ConnInfo{Name: "x", RemoteAddrs: []string{addrs}, Remote: []vici.AuthInfo{{ID: id}},
			Children: []vici.ChildInfo{{RemoteTS: []string{ts}}}})
		for _, p := range c.addrs {
			if !p.IsValid() || p.Bits() == 0 {
				t.Fatalf("remote_addrs %q gave %v: a wildcard became a peer", addrs, p)
			}
		}
		for _, cid := range c.ids {
			if cid == "" || cid == "%any" || strings.Contains(cid, "*") {
				t.Fatalf("identity %q kept as %q", id, cid)
			}
		}
		if canonicalID(id) != "" {
			if name, _ := collision([]configuredConn{c}, id, netip.Addr{}, netip.Addr{}); name != "x" {
				t.Fatalf("identity %q does not collide with itself", id)
			}
		}
	})
}

package oe

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

func fqdnGateway(t *testing.T, fqdn string, prec int, addrs ...string) plugins.Gateway {
	g := gateway(t, "192.0.2.1", prec)
	g.Addr, g.FQDN, g.Source = netip.Addr{}, fqdn, "TXT"
	for _, a := range addrs {
		g.Addrs = append(g.Addrs, netip.MustParseAddr(a))
	}
	return g
}

// A gateway named by FQDN protects other clients: IKE goes to the FQDN's
// address from DNS (of our address's family), the remote identity is the
// FQDN, the selectors are the client pair.
func TestInitiatorFQDNGatewayForAClient(t *testing.T) {
	cases := []struct {
		name     string
		gw       plugins.Gateway
		wantAddr string // "" when no tunnel may come up
		wantGW   string
		reason   string
	}{
		{"FQDN with addresses: the first of our family", fqdnGateway(t, "gwb.example.test.", 10, "2001:db8::2", "192.0.2.2", "192.0.2.3"), "192.0.2.2", "@gwb.example.test (192.0.2.2)", ""},
		{"FQDN without addresses: the destination itself", fqdnGateway(t, "bob.example.test.", 10), "10.2.0.10", "@bob.example.test (10.2.0.10)", ""},
		{"FQDN with IPv6 addresses only: not reachable from an IPv4 address", fqdnGateway(t, "gwb.example.test.", 10, "2001:db8::2"), "", "", "hold none of a family this host has an IKE address for"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := newRig(t, "private=10.2.0.0/16", nil)
			r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{tc.gw}, DNSSEC: plugins.DNSSECSecure})
			r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
			if tc.wantAddr == "" {
				tu := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateFailed)
				if !strings.Contains(tu.Reason, tc.reason) {
					t.Errorf("reason %q, want %q", tu.Reason, tc.reason)
				}
				if len(r.ch.initiated) != 0 {
					t.Errorf("initiated %v", r.ch.initiated)
				}
				return
			}
			tu := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
			if tu.Gateway != tc.wantGW {
				t.Errorf("gateway %q, want %q", tu.Gateway, tc.wantGW)
			}
			c, _ := r.ch.conn(tu.Conn)
			want := "@" + strings.TrimSuffix(tc.gw.FQDN, ".")
			if c.RemoteAddrs[0] != tc.wantAddr || c.Remote[0].ID != want || len(c.Remote[0].Pubkeys) != 1 ||
				c.Children[0].LocalTS[0] != "10.1.0.10/32" || c.Children[0].RemoteTS[0] != "10.2.0.10/32" {
				t.Errorf("conn remote %v id %q ts %v -> %v", c.RemoteAddrs, c.Remote[0].ID, c.Children[0].LocalTS, c.Children[0].RemoteTS)
			}
			if l := r.e.Lookup(t.Context(), netip.MustParseAddr("10.2.0.10")); !strings.Contains(l.Action, "would initiate OE to") || !strings.Contains(l.Action, tc.wantAddr) {
				t.Errorf("lookup action %q", l.Action)
			}
		})
	}
}

// The responder's delegation check compares identities: a client whose
// reverse map names @FQDN is accepted behind an initiator that proved that
// FQDN, whatever its address; a client naming another FQDN is refused, and
// the reason shows in the tunnel list.
func TestResponderDelegationByFQDN(t *testing.T) {
	r := newRig(t, "private-or-clear=0.0.0.0/0", nil)
	peer := netip.MustParseAddr("192.0.2.2")
	self := fqdnGateway(t, "gwb.example.test.", 10)
	r.dns.set(peer, plugins.LookupAnswer{Gateways: []plugins.Gateway{self}, DNSSEC: plugins.DNSSECSecure})
	r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "192.0.2.2 is initiating an IKE_SA"}})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, ok := r.ch.conn("obol-oe-r-192-0-2-2"); ok {
			if c.Remote[0].ID != "@gwb.example.test" {
				t.Fatalf("responder conn remote id %q", c.Remote[0].ID)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no responder conn")
		}
		time.Sleep(2 * time.Millisecond)
	}
	childUp := func(id uint32, client, provedID string) {
		r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &vici.IKESA{Name: "obol-oe-r-192-0-2-2", RemoteHost: peer, RemoteID: provedID,
			Children: []vici.ChildSA{{Name: "accept", UniqueID: id, LocalTS: []string{"10.1.0.10/32"}, RemoteTS: []string{client + "/32"}}}}})
	}
	// bob names the initiator by FQDN (with an address that is not the
	// initiator's: identities count, not addresses).
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{fqdnGateway(t, "GWB.example.test.", 10, "198.51.100.9")}})
	childUp(1, "10.2.0.10", "gwb.example.test")
	if len(r.ch.terminated) != 0 || len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32")) != 1 {
		t.Fatalf("client delegating by FQDN refused: terminated %+v", r.ch.terminated)
	}
	// The same client behind an initiator that proved another identity.
	childUp(2, "10.2.0.10", "192.0.2.2")
	if len(r.ch.terminated) != 1 || r.ch.terminated[0].ChildID != 2 {
		t.Fatalf("client delegating to an FQDN the initiator did not prove: terminated %+v", r.ch.terminated)
	}
	// carol names another FQDN gateway: refused, with the reason listed.
	r.dns.set(netip.MustParseAddr("10.2.0.11"), plugins.LookupAnswer{Gateways: []plugins.Gateway{fqdnGateway(t, "gwc.example.test.", 10, "192.0.2.2")}})
	childUp(3, "10.2.0.11", "gwb.example.test")
	if len(r.ch.terminated) != 2 || r.ch.terminated[1].ChildID != 3 {
		t.Fatalf("client of another FQDN gateway not closed: terminated %+v", r.ch.terminated)
	}
	var reason string
	for _, tu := range r.e.Tunnels() {
		if tu.Role == "responder" && tu.Reason != "" {
			reason = tu.Reason
		}
	}
	if want := "refused client 10.2.0.11/32: 10.2.0.11's reverse map names gateway @gwc.example.test, not 192.0.2.2 (identity @gwb.example.test)"; reason != want {
		t.Errorf("reason %q\nwant   %q", reason, want)
	}
}

func TestCanonicalFQDN(t *testing.T) {
	for in, want := range map[string]string{
		"@GW.Example.test.": "gw.example.test",
		"gw.example.test":   "gw.example.test",
		"192.0.2.1":         "",
		"2001:db8::1":       "",
		"":                  "",
	} {
		if got := canonicalFQDN(in); got != want {
			t.Errorf("canonicalFQDN(%q) = %q, want %q", in, got, want)
		}
	}
}

// The peer closes the CHILD_SA before charon's answer to initiate reaches
// obold (a responder refusing the client): the pair must not be allowed
// past the trap, and under private the failure shunt drops its traffic.
func TestChildClosedBeforeInitiateReturns(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}, DNSSEC: plugins.DNSSECSecure})
	r.ch.onInitiate = func(ike string) {
		r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: false, SA: &vici.IKESA{Name: ike}})
	}
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	tu := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateFailed)
	if !strings.Contains(tu.Reason, "the peer closed the CHILD_SA as soon as it was up") {
		t.Errorf("reason %q", tu.Reason)
	}
	if n := len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32")) + len(r.policies(t, xfrm.Allow, "10.2.0.10/32", "10.1.0.10/32")); n != 0 {
		t.Errorf("%d allow policies for a pair whose CHILD_SA is gone", n)
	}
	if len(r.policies(t, xfrm.Block, "10.1.0.10/32", "10.2.0.10/32")) != 1 {
		t.Error("no block shunt under private")
	}
}

// obolctl lookup for a client behind an FQDN gateway: the initiator goes to
// the gateway's address; as responder obold would accept the client behind
// the gateway that proves the FQDN.
func TestLookupFQDNGatewayClient(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{fqdnGateway(t, "gwb.example.test.", 10, "192.0.2.2")}, DNSSEC: plugins.DNSSECSecure})
	l := r.e.Lookup(t.Context(), netip.MustParseAddr("10.2.0.10"))
	if !strings.Contains(l.Action, "would initiate OE to gateway @gwb.example.test (192.0.2.2)") {
		t.Errorf("action %q", l.Action)
	}
	r2 := newRig(t, "clear-or-private=10.2.0.0/16", nil)
	r2.dns.set(netip.MustParseAddr("10.2.0.10"), r.dns.answers[netip.MustParseAddr("10.2.0.10")])
	l = r2.e.Lookup(t.Context(), netip.MustParseAddr("10.2.0.10"))
	if !strings.Contains(l.Responder, "would accept it behind gateway @gwb.example.test (when it proves that identity)") {
		t.Errorf("responder %q", l.Responder)
	}
}

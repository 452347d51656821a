package oe

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

// siteConn is a swanctl site-to-site conn to gwb for 10.2.0.0/24.
func siteConn() vici.ConnInfo {
	return vici.ConnInfo{Name: "gw-gw", RemoteAddrs: []string{"192.0.2.2"},
		Remote:   []vici.AuthInfo{{Class: "pre-shared key", ID: "192.0.2.2"}},
		Children: []vici.ChildInfo{{Name: "net", LocalTS: []string{"10.1.0.0/24"}, RemoteTS: []string{"10.2.0.0/24"}}}}
}

func TestCollision(t *testing.T) {
	conns := []configuredConn{
		parseConfigured(siteConn()),
		parseConfigured(vici.ConnInfo{Name: "rw", RemoteAddrs: []string{"%any"}, Remote: []vici.AuthInfo{{ID: "@Carol.Example.ORG"}},
			Children: []vici.ChildInfo{{RemoteTS: []string{"dynamic"}}}}),
		parseConfigured(vici.ConnInfo{Name: "any", RemoteAddrs: []string{"0.0.0.0/0"}, Remote: []vici.AuthInfo{{ID: "%any"}}}),
		parseConfigured(vici.ConnInfo{Name: "range", RemoteAddrs: []string{"198.51.100.0/28, 203.0.113.9"}}),
	}
	cases := []struct {
		name          string
		id, peer, dst string
		want          string // conn name, "" for none
	}{
		{"destination inside a configured remote_ts", "192.0.2.9", "192.0.2.9", "10.2.0.10", "gw-gw"},
		{"same remote id (IP)", "192.0.2.2", "192.0.2.77", "10.3.0.1", "gw-gw"},
		{"peer address in remote_addrs", "@gw.example.test", "192.0.2.2", "10.3.0.1", "gw-gw"},
		{"same FQDN id, any case and form", "@carol.example.org.", "192.0.2.50", "10.3.0.1", "rw"},
		{"remote_addrs ranges and lists", "192.0.2.60", "203.0.113.9", "10.3.0.1", "range"},
		{"%any, 0.0.0.0/0 and dynamic name no peer", "192.0.2.60", "192.0.2.60", "10.3.0.1", ""},
		{"nothing in common", "@bob.example.test", "192.0.2.12", "192.0.2.12", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var peer, dst netip.Addr
			if tc.peer != "" {
				peer = netip.MustParseAddr(tc.peer)
			}
			if tc.dst != "" {
				dst = netip.MustParseAddr(tc.dst)
			}
			got, why := collision(conns, tc.id, peer, dst)
			if got != tc.want || (got != "") != (why != "") {
				t.Errorf("collision = %q (%s), want %q", got, why, tc.want)
			}
		})
	}
}

// A destination a configured conn covers is refused before DNS is even
// asked; with that conn's tunnel up its traffic goes there, without it the
// failure shunt drops it (private).
func TestInitiatorRefusesConfiguredDestination(t *testing.T) {
	for _, up := range []bool{true, false} {
		t.Run(map[bool]string{true: "configured tunnel up", false: "configured tunnel down"}[up], func(t *testing.T) {
			r := newRig(t, "private=10.2.0.0/16", nil)
			r.setConfigured([]vici.ConnInfo{siteConn()})
			if up {
				r.ch.sas = []vici.IKESA{{Name: "gw-gw", Children: []vici.ChildSA{{State: "INSTALLED", RemoteTS: []string{"10.2.0.0/24"}}}}}
			}
			r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.9", 10)}})
			r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
			tu := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateFailed)
			if !strings.Contains(tu.Reason, `OE refused: configured conn "gw-gw" has remote_ts 10.2.0.0/24 covering 10.2.0.10`) {
				t.Errorf("reason %q", tu.Reason)
			}
			if why, ok := r.e.Failure(netip.MustParseAddr("10.2.0.10")); !ok || why != tu.Reason {
				t.Errorf("Failure (token API WHY) = %q, %v", why, ok)
			}
			if r.dns.queries != 0 || len(r.ch.initiated) != 0 {
				t.Errorf("DNS asked %d times, initiated %v", r.dns.queries, r.ch.initiated)
			}
			for name := range r.ch.conns {
				if name != "obol-oe-accept" {
					t.Errorf("OE conn %s loaded beside a configured one", name)
				}
			}
			allow, block := r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32"), r.policies(t, xfrm.Block, "10.1.0.10/32", "10.2.0.10/32")
			switch {
			case up && (len(allow) != 1 || len(block) != 0 || allow[0].Lifetime > configuredAllowLife):
				t.Errorf("configured tunnel up: allow %v block %v; want one short allow into it", allow, block)
			case !up && (len(allow) != 0 || len(block) != 1):
				t.Errorf("configured tunnel down: allow %v block %v; want the private drop", allow, block)
			}
		})
	}
}

// A gateway whose identity or address a configured conn uses is skipped;
// the next one is tried.
func TestInitiatorSkipsConfiguredGateway(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.setConfigured([]vici.ConnInfo{{Name: "peer-b", RemoteAddrs: []string{"%any"}, Remote: []vici.AuthInfo{{ID: "192.0.2.2"}}}})
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10), gateway(t, "192.0.2.3", 20)}})
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	tu := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
	if tu.Gateway != "192.0.2.3" || len(r.ch.initiated) != 1 {
		t.Errorf("tunnel %+v initiated %v", tu, r.ch.initiated)
	}
	// With no other gateway: refused, with the reason.
	r.setConfigured(append(r.ch.configured, vici.ConnInfo{Name: "peer-c", RemoteAddrs: []string{"192.0.2.3"}}))
	r.e.forgetConfigured()
	r.dns.set(netip.MustParseAddr("10.2.0.11"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10), gateway(t, "192.0.2.3", 20)}})
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.11", 0))
	f := r.tunnel(t, "10.1.0.10", "10.2.0.11", StateFailed)
	for _, want := range []string{`gateway 192.0.2.2: OE refused: configured conn "peer-b" has the same remote identity 192.0.2.2`, `gateway 192.0.2.3: OE refused: configured conn "peer-c" has remote_addrs 192.0.2.3/32 covering the peer 192.0.2.3`} {
		if !strings.Contains(f.Reason, want) {
			t.Errorf("reason %q\nlacks %q", f.Reason, want)
		}
	}
}

// The responder never loads a conn for an initiator a configured conn is
// for, and refuses clients a configured conn covers.
func TestResponderRefusesConfiguredPeer(t *testing.T) {
	r := newRig(t, "private-or-clear=0.0.0.0/0", nil)
	r.setConfigured([]vici.ConnInfo{siteConn()})
	r.dns.set(netip.MustParseAddr("192.0.2.2"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 65536)}})
	r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "192.0.2.2 is initiating an IKE_SA"}})
	tu := r.tunnel(t, "192.0.2.1", "192.0.2.2", StateFailed)
	if !strings.Contains(tu.Reason, `refused initiator: OE refused: configured conn "gw-gw" has the same remote identity 192.0.2.2`) {
		t.Errorf("reason %q", tu.Reason)
	}
	if _, ok := r.ch.conn("obol-oe-r-192-0-2-2"); ok {
		t.Error("responder conn loaded for a configured peer")
	}

	// Another initiator brings a client inside the configured remote_ts.
	r.dns.set(netip.MustParseAddr("192.0.2.7"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.7", 65536)}})
	r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "192.0.2.7 is initiating an IKE_SA"}})
	r.tunnel(t, "192.0.2.1", "192.0.2.7", StateNegotiating)
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.7", 10)}})
	r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &vici.IKESA{Name: "obol-oe-r-192-0-2-7", RemoteHost: netip.MustParseAddr("192.0.2.7"), RemoteID: "192.0.2.7",
		Children: []vici.ChildSA{{Name: "accept", UniqueID: 5, LocalTS: []string{"10.1.0.10/32"}, RemoteTS: []string{"10.2.0.10/32"}}}}})
	if len(r.ch.terminated) != 1 || r.ch.terminated[0].ChildID != 5 {
		t.Fatalf("client of a configured conn not closed: %+v", r.ch.terminated)
	}
}

// list-conns is cached: a burst of ACQUIREs asks charon once; a failing
// list-conns refuses OE (never a guess) and is not cached.
func TestConfiguredCache(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.dns.set(netip.MustParseAddr("10.2.2.1"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}})
	for i := range 50 {
		dst := netip.AddrFrom4([4]byte{10, 2, 1, byte(i + 1)})
		r.dns.set(dst, plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}})
	}
	for i := range 50 {
		r.e.HandleAcquire(acquire("10.1.0.10", netip.AddrFrom4([4]byte{10, 2, 1, byte(i + 1)}).String(), 0))
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		r.ch.mu.Lock()
		n := len(r.ch.initiated)
		r.ch.mu.Unlock()
		if n == 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 50 initiated", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	r.ch.mu.Lock()
	calls := r.ch.listConns
	r.ch.mu.Unlock()
	if calls != 1 {
		t.Errorf("list-conns called %d times for 50 ACQUIREs, want 1", calls)
	}
	r.setListErr(errors.New("charon went away"))
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.2.1", 0))
	f := r.tunnel(t, "10.1.0.10", "10.2.2.1", StateFailed)
	if !strings.Contains(f.Reason, "list charon's configured conns") || !strings.Contains(f.Reason, "charon went away") {
		t.Errorf("reason %q", f.Reason)
	}
	r.e.cfgMu.Lock()
	cached := !r.e.cfgSet.fetched.IsZero()
	r.e.cfgMu.Unlock()
	if cached {
		t.Error("a failed list-conns was cached")
	}
}

// The configured tunnel a refused pair was let into goes down: the allow
// goes at once and the private drop takes its place.
func TestConfiguredTunnelDownDropsAllow(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.setConfigured([]vici.ConnInfo{siteConn()})
	r.ch.sas = []vici.IKESA{{Name: "gw-gw", Children: []vici.ChildSA{{State: "INSTALLED", RemoteTS: []string{"10.2.0.0/24"}}}}}
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	r.tunnel(t, "10.1.0.10", "10.2.0.10", StateFailed)
	if len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32")) != 1 {
		t.Fatal("no allow into the configured tunnel")
	}
	r.e.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, Up: false, SA: &vici.IKESA{Name: "gw-gw"}})
	if n := len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32")); n != 0 || len(r.policies(t, xfrm.Block, "10.1.0.10/32", "10.2.0.10/32")) != 1 {
		t.Fatalf("after the configured tunnel went down: %d allows, want none and one block", n)
	}
	if why, _ := r.e.Failure(netip.MustParseAddr("10.2.0.10")); !strings.Contains(why, `conn "gw-gw" has no tunnel up for it now`) {
		t.Errorf("reason %q", why)
	}
}

// A configured conn for any peer (%any) has SAs with real identities: OE
// must not authenticate one of them (its INITIAL_CONTACT would make charon
// destroy the configured SA).
func TestInitiatorRefusesPeerOfLiveConfiguredSA(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.setConfigured([]vici.ConnInfo{{Name: "rw", RemoteAddrs: []string{"%any"}, Remote: []vici.AuthInfo{{ID: "%any"}}}})
	r.ch.sas = []vici.IKESA{
		{Name: "rw", State: "ESTABLISHED", RemoteID: "gw.example.test", RemoteHost: netip.MustParseAddr("198.51.100.4")},
		// A half-open SA has no conn yet: it may be the OE peer itself.
		{Name: "(unnamed)", State: "CONNECTING", RemoteID: "10.2.0.10", RemoteHost: netip.MustParseAddr("192.0.2.40")},
	}
	gw := fqdnGateway(t, "gw.example.test.", 10, "192.0.2.40")
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gw}})
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	f := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateFailed)
	if want := `OE refused: configured conn "rw" has an SA up with the same peer identity @gw.example.test`; !strings.Contains(f.Reason, want) {
		t.Errorf("reason %q\nlacks %q", f.Reason, want)
	}
	if len(r.ch.initiated) != 0 {
		t.Errorf("initiated %v", r.ch.initiated)
	}
}

// obolctl lookup says OE would be refused for a destination a configured
// conn covers.
func TestLookupExplainsConfiguredRefusal(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.setConfigured([]vici.ConnInfo{siteConn()})
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.9", 10)}})
	l := r.e.Lookup(t.Context(), netip.MustParseAddr("10.2.0.10"))
	if want := `would refuse OE: configured conn "gw-gw" has remote_ts 10.2.0.0/24 covering 10.2.0.10`; !strings.HasPrefix(l.Action, want) {
		t.Errorf("action %q\nwant %q...", l.Action, want)
	}
	if l := r.e.Lookup(t.Context(), netip.MustParseAddr("10.2.1.10")); strings.Contains(l.Action, "refuse") {
		t.Errorf("10.2.1.10 is outside the configured conn: %q", l.Action)
	}
}

// The initiator's own half-open IKE_SA (no conn yet) is no configured peer.
func TestResponderIgnoresHalfOpenSA(t *testing.T) {
	r := newRig(t, "private-or-clear=0.0.0.0/0", nil)
	r.ch.sas = []vici.IKESA{{Name: "(unnamed)", State: "CONNECTING", RemoteHost: netip.MustParseAddr("192.0.2.2"), RemoteID: "192.0.2.2"}}
	r.dns.set(netip.MustParseAddr("192.0.2.2"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 65536)}})
	r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "192.0.2.2 is initiating an IKE_SA"}})
	r.tunnel(t, "192.0.2.1", "192.0.2.2", StateNegotiating)
	if _, ok := r.ch.conn("obol-oe-r-192-0-2-2"); !ok {
		t.Fatal("no responder conn for an initiator whose half-open SA is listed")
	}
}

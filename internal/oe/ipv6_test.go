package oe

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/policy"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/vici"
)

// dualStack makes the rig's host dual-stack: 192.0.2.1 and 2001:db8::1.
func dualStack(c *Config) { c.Address6 = "2001:db8::1" }

// TestIPv6BasePolicies: a dual-stack host that traps all of ::/0 keeps
// IPv6 itself working (NDP and router messages, link-local, multicast, its
// own addresses, IKE over IPv6), each bypass winning over the trap.
func TestIPv6BasePolicies(t *testing.T) {
	r := newRig(t, "private-or-clear=::/0;private=10.2.0.0/16;block=2001:db8:bad::/48", dualStack)
	ps, err := r.spd.Policies(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	find := func(action xfrm.Action, src, dst string, proto uint8, sport, dport uint16) *xfrm.Policy {
		for i, p := range ps {
			if p.Action == action && p.Src.String() == src && p.Dst.String() == dst && p.Proto == proto && p.SrcPort == sport && p.DstPort == dport && p.Dir == xfrm.DirOut {
				return &ps[i]
			}
		}
		return nil
	}
	trap := find(xfrm.Trap, "::/0", "::/0", 0, 0, 0)
	if trap == nil {
		t.Fatalf("no ::/0 trap: %v", ps)
	}
	tests := []struct {
		name             string
		action           xfrm.Action
		src, dst         string
		proto            uint8
		sport, dport     uint16
		beatsTheIPv6Trap bool
		absent           bool
	}{
		{"IPv4 trap", xfrm.Trap, "0.0.0.0/0", "10.2.0.0/16", 0, 0, 0, false, false},
		{"IPv6 block", xfrm.Block, "::/0", "2001:db8:bad::/48", 0, 0, 0, true, false},
		{"router solicitation", xfrm.Allow, "::/0", "::/0", 58, 133, 0, true, false},
		{"router advertisement", xfrm.Allow, "::/0", "::/0", 58, 134, 0, true, false},
		{"neighbour solicitation", xfrm.Allow, "::/0", "::/0", 58, 135, 0, true, false},
		{"neighbour advertisement", xfrm.Allow, "::/0", "::/0", 58, 136, 0, true, false},
		{"redirect", xfrm.Allow, "::/0", "::/0", 58, 137, 0, true, false},
		{"echo request is not bypassed", xfrm.Allow, "::/0", "::/0", 58, 128, 0, false, true},
		{"link-local", xfrm.Allow, "::/0", "fe80::/10", 0, 0, 0, true, false},
		{"multicast", xfrm.Allow, "::/0", "ff00::/8", 0, 0, 0, true, false},
		{"own IPv6 address", xfrm.Allow, "::/0", "2001:db8::1/128", 0, 0, 0, true, false},
		{"own loopback ::1", xfrm.Allow, "::/0", "::1/128", 0, 0, 0, true, false},
		{"own link-local address: fe80::/10 covers it", xfrm.Allow, "::/0", "fe80::1/128", 0, 0, 0, false, true},
		{"own IPv4 address is under no trap", xfrm.Allow, "0.0.0.0/0", "192.0.2.1/32", 0, 0, 0, false, true},
		{"IKE to 500 over IPv6", xfrm.Allow, "::/0", "::/0", 17, 0, 500, true, false},
		{"IKE from 4500 over IPv6", xfrm.Allow, "::/0", "::/0", 17, 4500, 0, true, false},
		{"IKE to 500 over IPv4", xfrm.Allow, "0.0.0.0/0", "0.0.0.0/0", 17, 0, 500, false, false},
		{"resolver over IPv4", xfrm.Allow, "0.0.0.0/0", "192.0.2.53/32", 0, 0, 0, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := find(tt.action, tt.src, tt.dst, tt.proto, tt.sport, tt.dport)
			if tt.absent {
				if p != nil {
					t.Fatalf("unexpected policy %s", p)
				}
				return
			}
			if p == nil {
				t.Fatalf("missing %s %s -> %s proto %d %d/%d", tt.action, tt.src, tt.dst, tt.proto, tt.sport, tt.dport)
			}
			if tt.beatsTheIPv6Trap && p.Priority >= trap.Priority {
				t.Errorf("%s has priority %d, not above the trap's %d", p, p.Priority, trap.Priority)
			}
		})
	}
	acc, ok := r.ch.conn("obol-oe-accept")
	if !ok || strings.Join(acc.LocalAddrs, ",") != "192.0.2.1,2001:db8::1" || !strings.Contains(strings.Join(acc.RemoteAddrs, ","), "::/0") {
		t.Errorf("acceptor conn %+v", acc)
	}
	if err := r.e.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ps, _ := r.spd.Policies(context.Background()); len(ps) != 0 {
		t.Errorf("after Stop the kernel still has %d of obold's policies", len(ps))
	}
}

// TestIPv4OnlyHasNoIPv6Policies: a host without address6 installs nothing
// IPv6 (an IPv4-only host's IPv6, if any, is none of OE's business).
func TestIPv4OnlyHasNoIPv6Policies(t *testing.T) {
	r := newRig(t, "private-or-clear=0.0.0.0/0", nil)
	ps, _ := r.spd.Policies(context.Background())
	for _, p := range ps {
		if p.Family() == 6 {
			t.Errorf("IPv6 policy on an IPv4-only host: %s", p)
		}
	}
	// Under a 0.0.0.0/0 trap, the host's own addresses are bypassed.
	for _, own := range []string{"192.0.2.1/32", "10.2.99.1/32"} {
		if len(r.policies(t, xfrm.Allow, "0.0.0.0/0", own)) != 1 {
			t.Errorf("own address %s not bypassed under the 0.0.0.0/0 trap", own)
		}
	}
}

// TestIPv6Initiator: the IKE address and identity follow the gateway's
// family; the child's selectors are the pair, whatever its family.
func TestIPv6Initiator(t *testing.T) {
	tests := []struct {
		name          string
		mutate        func(*Config)
		src, dst, gw  string
		wantLocal     string // IKE address; "" when OE must fail
		wantID        string
		wantTS        [2]string
		wantFailWords string
	}{
		{name: "IPv6 pair, IPv6 gateway", mutate: dualStack, src: "2001:db8::1", dst: "2001:db8:2::10", gw: "2001:db8:2::1",
			wantLocal: "2001:db8::1", wantID: "2001:db8::1", wantTS: [2]string{"2001:db8::1/128", "2001:db8:2::10/128"}},
		{name: "IPv4 pair on a dual-stack host", mutate: dualStack, src: "10.1.0.10", dst: "10.2.0.10", gw: "192.0.2.2",
			wantLocal: "192.0.2.1", wantID: "192.0.2.1", wantTS: [2]string{"10.1.0.10/32", "10.2.0.10/32"}},
		{name: "IPv6 pair through an IPv4 gateway", mutate: dualStack, src: "2001:db8::1", dst: "2001:db8:2::10", gw: "192.0.2.2",
			wantLocal: "192.0.2.1", wantID: "192.0.2.1", wantTS: [2]string{"2001:db8::1/128", "2001:db8:2::10/128"}},
		{name: "FQDN identity on both families", mutate: func(c *Config) { dualStack(c); c.Identity = "@host.example.org" }, src: "2001:db8::1", dst: "2001:db8:2::10", gw: "2001:db8:2::1",
			wantLocal: "2001:db8::1", wantID: "@host.example.org", wantTS: [2]string{"2001:db8::1/128", "2001:db8:2::10/128"}},
		{name: "IPv4-only host, IPv6 gateway", src: "10.1.0.10", dst: "10.2.0.10", gw: "2001:db8:2::1", wantFailWords: "no IKE address of that family; add address6"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			groups := "private=10.2.0.0/16"
			if tt.mutate != nil {
				groups += ";private=2001:db8:2::/48"
			}
			r := newRig(t, groups, tt.mutate)
			r.dns.set(netip.MustParseAddr(tt.dst), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, tt.gw, 10)}, DNSSEC: plugins.DNSSECSecure})
			r.e.HandleAcquire(acquire(tt.src, tt.dst, 0))
			pair := xfrm.Pair{Src: netip.MustParseAddr(tt.src), Dst: netip.MustParseAddr(tt.dst)}
			if tt.wantFailWords != "" {
				tu := r.tunnel(t, tt.src, tt.dst, StateFailed)
				if !strings.Contains(tu.Reason, tt.wantFailWords) {
					t.Errorf("reason %q, want %q", tu.Reason, tt.wantFailWords)
				}
				if len(r.policies(t, xfrm.Block, hostPrefix(pair.Src).String(), hostPrefix(pair.Dst).String())) != 1 {
					t.Error("no drop shunt under private")
				}
				return
			}
			r.tunnel(t, tt.src, tt.dst, StateUp)
			c, ok := r.ch.conn(r.e.ConnName("initiator", pair))
			if !ok {
				t.Fatalf("no conn %s: %v", r.e.ConnName("initiator", pair), r.ch.conns)
			}
			if c.LocalAddrs[0] != tt.wantLocal || c.Local[0].ID != tt.wantID || c.RemoteAddrs[0] != tt.gw || c.Remote[0].ID != tt.gw {
				t.Errorf("conn local %v id %s remote %v id %s", c.LocalAddrs, c.Local[0].ID, c.RemoteAddrs, c.Remote[0].ID)
			}
			if c.Children[0].LocalTS[0] != tt.wantTS[0] || c.Children[0].RemoteTS[0] != tt.wantTS[1] {
				t.Errorf("child TS %v -> %v", c.Children[0].LocalTS, c.Children[0].RemoteTS)
			}
			// Userspace datapath: the pair is allowed past the traps, both ways.
			if len(r.policies(t, xfrm.Allow, tt.wantTS[0], tt.wantTS[1])) != 1 || len(r.policies(t, xfrm.Allow, tt.wantTS[1], tt.wantTS[0])) != 1 {
				t.Errorf("no per-pair allows for %s", pair)
			}
		})
	}
}

// TestIPv6Responder: an IPv6 initiator (charon logs it with its port in
// brackets) gets a conn from our IPv6 address with our IPv6 identity, and
// its child is allowed past the ::/0 trap.
func TestIPv6Responder(t *testing.T) {
	r := newRig(t, "private-or-clear=::/0", dualStack)
	peer := netip.MustParseAddr("2001:db8::2")
	r.dns.set(peer, plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, peer.String(), 10)}, DNSSEC: plugins.DNSSECSecure})
	r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "2001:db8::2[500] is initiating an IKE_SA"}})
	var c vici.Conn
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ok bool
		if c, ok = r.ch.conn("obol-oe-r-2001-db8--2"); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if len(c.LocalAddrs) != 1 || c.LocalAddrs[0] != "2001:db8::1" || c.Local[0].ID != "2001:db8::1" || c.Remote[0].ID != "2001:db8::2" {
		t.Fatalf("responder conn %+v", c)
	}
	if strings.Join(c.Children[0].LocalTS, ",") != "2001:db8::1/128,192.0.2.1/32,10.1.0.0/24" || strings.Join(c.Children[0].RemoteTS, ",") != "::/0,0.0.0.0/0" {
		t.Errorf("responder child TS %v -> %v", c.Children[0].LocalTS, c.Children[0].RemoteTS)
	}
	r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &vici.IKESA{Name: "obol-oe-r-2001-db8--2", RemoteHost: peer,
		Children: []vici.ChildSA{{Name: "accept", UniqueID: 3, LocalTS: []string{"2001:db8::1/128"}, RemoteTS: []string{"2001:db8::2/128"}}}}})
	tu := r.tunnel(t, "2001:db8::1", "2001:db8::2", StateUp)
	if tu.Role != "responder" || tu.Group != policy.PrivateOrClear {
		t.Errorf("responder tunnel %+v", tu)
	}
	if len(r.policies(t, xfrm.Allow, "2001:db8::1/128", "2001:db8::2/128")) != 1 || len(r.policies(t, xfrm.Allow, "2001:db8::2/128", "2001:db8::1/128")) != 1 {
		t.Error("no per-pair allows for the IPv6 responder")
	}
	// An IPv4-only host ignores IPv6 initiators: it has no address to answer from.
	r4 := newRig(t, "private-or-clear=0.0.0.0/0", nil)
	r4.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "2001:db8::2[500] is initiating an IKE_SA"}})
	if tus := r4.e.Tunnels(); len(tus) != 0 {
		t.Errorf("IPv4-only host tracks an IPv6 initiator: %+v", tus)
	}
}

// TestConfigIPv6: address6 and the groups' families are checked, each
// problem at its key.
func TestConfigIPv6(t *testing.T) {
	base := func(mutate func(*Config)) Config {
		c := Config{Address: "192.0.2.1", KeyFile: "k.pem", Groups: []policy.GroupConfig{groupConfig("private-or-clear", "::/0")}, DNS: resolver.Defaults()}
		c.DNS.Server = "192.0.2.53:53"
		mutate(&c)
		return c
	}
	tests := []struct {
		name     string
		cfg      Config
		wantPath string // "" for no problem
		wantMsg  string
	}{
		{"dual stack", base(func(c *Config) { c.Address6 = "2001:db8::1" }), "", ""},
		{"IPv6 only", base(func(c *Config) { c.Address = "2001:db8::1" }), "", ""},
		{"IPv6 group without address6", base(func(c *Config) {}), "oe.group[0].cidrs", "add address6"},
		{"IPv6 block without address6 is fine", base(func(c *Config) { c.Groups = []policy.GroupConfig{groupConfig("block", "::/0")} }), "", ""},
		{"IPv4 group on an IPv6-only host", base(func(c *Config) {
			c.Address = "2001:db8::1"
			c.Groups = []policy.GroupConfig{groupConfig("private", "10.0.0.0/8")}
		}), "oe.group[0].cidrs", "address is IPv6"},
		{"address6 not IPv6", base(func(c *Config) { c.Address6 = "192.0.2.2" }), "oe.address6", "not a global IPv6 address"},
		{"address6 garbage", base(func(c *Config) { c.Address6 = "2001:db8::zz" }), "oe.address6", "not a global IPv6 address"},
		{"address6 mapped IPv4", base(func(c *Config) { c.Address6 = "::ffff:192.0.2.2" }), "oe.address6", "not a global IPv6 address"},
		{"address6 link-local", base(func(c *Config) { c.Address6 = "fe80::1" }), "oe.address6", "not a global unicast address"},
		{"address6 with a zone", base(func(c *Config) { c.Address6 = "fe80::1%eth0" }), "oe.address6", "not a global IPv6 address"},
		{"two IPv6 addresses", base(func(c *Config) { c.Address = "2001:db8::2"; c.Address6 = "2001:db8::1" }), "oe.address6", "address is an IPv6 address already"},
		{"address identity with address6", base(func(c *Config) { c.Address6 = "2001:db8::1"; c.Identity = "192.0.2.1" }), "oe.identity", "speaks IKE from two addresses"},
		{"FQDN identity with address6", base(func(c *Config) { c.Address6 = "2001:db8::1"; c.Identity = "@h.example.org" }), "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ps := tt.cfg.Validate()
			if tt.wantPath == "" {
				if len(ps) != 0 {
					t.Fatalf("problems %+v", ps)
				}
				return
			}
			for _, p := range ps {
				if p.Path == tt.wantPath && strings.Contains(p.Msg, tt.wantMsg) {
					return
				}
			}
			t.Errorf("problems %+v, want %s: ...%s...", ps, tt.wantPath, tt.wantMsg)
		})
	}
}

// TestLookupIPv6: obolctl lookup for IPv6 destinations says what the
// engine would do, including when a gateway's family has no IKE address
// here.
func TestLookupIPv6(t *testing.T) {
	dst := netip.MustParseAddr("2001:db8:2::10")
	tests := []struct {
		name          string
		address       string
		address6      string
		gw            string
		wantAction    string
		wantResponder string
	}{
		{"dual stack, IPv6 gateway", "192.0.2.1", "2001:db8::1", "2001:db8:2::1", "would initiate OE to gateway 2001:db8:2::1 (IPSECKEY, DNSSEC secure)", "would accept it behind gateway 2001:db8:2::1"},
		{"dual stack, the destination itself", "192.0.2.1", "2001:db8::1", dst.String(), "would initiate OE to gateway 2001:db8:2::10", "would answer OE from it, authenticating it with the key from IPSECKEY"},
		{"IPv6-only host, IPv4 gateway", "2001:db8::1", "", "192.0.2.2", "would drop: private and its gateways are of an address family this host has no IKE address for", "would refuse OE from it as initiator"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := Config{Address: tt.address, Address6: tt.address6, KeyFile: "k.pem", DNS: resolver.Defaults(),
				Groups: []policy.GroupConfig{groupConfig("private", "::/0")}}
			cfg.DNS.Server = "192.0.2.53:53"
			res := &fakeDNS{answers: map[netip.Addr]plugins.LookupAnswer{}, errs: map[netip.Addr]error{}}
			res.answers[dst] = plugins.LookupAnswer{Name: "0.1.0.0.ip6.arpa.", Gateways: []plugins.Gateway{gateway(t, tt.gw, 10)}, DNSSEC: plugins.DNSSECSecure}
			e, err := New(cfg, Params{Resolver: res, Prefix: "obol-"})
			if err != nil {
				t.Fatal(err)
			}
			l := e.Lookup(context.Background(), dst)
			if l.Decision.Group != policy.Private || !strings.HasPrefix(l.Action, tt.wantAction) || !strings.Contains(l.Responder, tt.wantResponder) {
				t.Errorf("lookup %s:\naction    %q\nresponder %q\nwant      %q / %q", dst, l.Action, l.Responder, tt.wantAction, tt.wantResponder)
			}
		})
	}
}

// TestAdoptIPv6: a restarted obold adopts IPv6 tunnels, initiator and
// responder, with their per-pair allows; the responder pair's source is
// our IPv6 address.
func TestAdoptIPv6(t *testing.T) {
	r := newRig(t, "private-or-clear=::/0", dualStack)
	a6, b6, c6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2"), netip.MustParseAddr("2001:db8::3")
	r.dns.set(b6, plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, b6.String(), 10)}})
	r.e.HandleAcquire(acquire(a6.String(), b6.String(), 0))
	up := r.tunnel(t, a6.String(), b6.String(), StateUp)
	r.e.Leave()
	r.ch.sas = []vici.IKESA{
		{Name: up.Conn, RemoteHost: b6, RemoteID: b6.String(),
			Children: []vici.ChildSA{{Name: "oe", State: "INSTALLED", LocalTS: []string{"2001:db8::1/128"}, RemoteTS: []string{"2001:db8::2/128"}}}},
		{Name: "obol-oe-r-2001-db8--3", RemoteHost: c6, RemoteID: c6.String(),
			Children: []vici.ChildSA{{Name: "accept", State: "INSTALLED", LocalTS: []string{"2001:db8::1/128"}, RemoteTS: []string{"2001:db8::3/128"}}}},
	}
	e2, err := New(r.e.cfg, Params{Charon: r.ch, Kernel: r.e.p.Kernel, Resolver: r.dns, Userspace: true, Prefix: "obol-", PubPEM: []byte("PUB"), Log: r.e.log, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := map[xfrm.Pair]string{}
	for _, tu := range e2.Tunnels() {
		if tu.State == StateUp {
			got[tu.Pair] = tu.Role
		}
	}
	want := map[xfrm.Pair]string{{Src: a6, Dst: b6}: "initiator", {Src: a6, Dst: c6}: "responder"}
	if len(got) != len(want) || got[xfrm.Pair{Src: a6, Dst: b6}] != "initiator" || got[xfrm.Pair{Src: a6, Dst: c6}] != "responder" {
		t.Fatalf("adopted %v, want %v", got, want)
	}
	if n := len(r.policies(t, xfrm.Allow, "2001:db8::1/128", "2001:db8::2/128")) + len(r.policies(t, xfrm.Allow, "2001:db8::2/128", "2001:db8::1/128")); n != 2 {
		t.Fatalf("%d IPv6 allow policies for the adopted pair, want 2", n)
	}
	e2.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: &vici.IKESA{Name: up.Conn}})
	if n := len(r.policies(t, xfrm.Allow, "2001:db8::1/128", "2001:db8::2/128")) + len(r.policies(t, xfrm.Allow, "2001:db8::2/128", "2001:db8::1/128")); n != 0 {
		t.Errorf("%d IPv6 allow policies left after the adopted tunnel's Delete", n)
	}
}

// TestIPv6OverIPv4Responder: an IPv4 initiator asks for an IPv6 pair. Its
// IPv6 address is a client of its IPv4 IKE address: accepted only when
// that address's ip6.arpa map names the initiator as its gateway.
func TestIPv6OverIPv4Responder(t *testing.T) {
	r := newRig(t, "private-or-clear=::/0;clear-or-private=192.0.2.0/24", dualStack)
	peer := netip.MustParseAddr("192.0.2.2")
	r.dns.set(peer, plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, peer.String(), 10)}, DNSSEC: plugins.DNSSECSecure})
	r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "192.0.2.2[500] is initiating an IKE_SA"}})
	var c vici.Conn
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ok bool
		if c, ok = r.ch.conn("obol-oe-r-192-0-2-2"); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if c.LocalAddrs[0] != "192.0.2.1" || strings.Join(c.Children[0].LocalTS, ",") != "192.0.2.1/32,2001:db8::1/128,10.1.0.0/24" || strings.Join(c.Children[0].RemoteTS, ",") != "0.0.0.0/0,::/0" {
		t.Fatalf("responder conn %+v", c)
	}
	tests := []struct {
		name      string
		client    string
		gateway   string // what the client's ip6.arpa map names
		child     uint32
		wantAllow bool
	}{
		{"delegated to the initiator", "2001:db8::2", "192.0.2.2", 5, true},
		{"delegated elsewhere", "2001:db8::3", "192.0.2.99", 6, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := netip.MustParseAddr(tt.client)
			r.dns.set(client, plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, tt.gateway, 10)}})
			before := len(r.ch.terminated)
			r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &vici.IKESA{Name: "obol-oe-r-192-0-2-2", RemoteHost: peer,
				Children: []vici.ChildSA{{Name: "accept", UniqueID: tt.child, LocalTS: []string{"2001:db8::1/128"}, RemoteTS: []string{tt.client + "/128"}}}}})
			allowed := len(r.policies(t, xfrm.Allow, "2001:db8::1/128", tt.client+"/128")) == 1 && len(r.policies(t, xfrm.Allow, tt.client+"/128", "2001:db8::1/128")) == 1
			terminated := len(r.ch.terminated) > before && r.ch.terminated[len(r.ch.terminated)-1].ChildID == tt.child
			if allowed != tt.wantAllow || terminated == tt.wantAllow {
				t.Errorf("allowed %v terminated %v, want allowed %v", allowed, terminated, tt.wantAllow)
			}
		})
	}
}

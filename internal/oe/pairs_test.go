package oe

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

// TestInitiatorConnAccepts: an initiator conn carries the accepting child,
// and a CHILD_SA the peer puts into that conn's IKE_SA (charon reuses the
// IKE_SA between two gateways for every pair) is checked like a
// responder's: delegation, and the conn's gateway keys vouched for by the
// client's record or the gateway's own DNS.
func TestInitiatorConnAccepts(t *testing.T) {
	gwb := netip.MustParseAddr("192.0.2.2")
	tests := []struct {
		name string
		// client's gateway keys: "same" (the conn's), "other", or from the
		// gateway's own reverse map only ("own").
		client, own string
		delegate    string // the gateway the client's reverse map names
		accepted    bool
	}{
		{name: "same key in the client's record", client: "same", delegate: "192.0.2.2", accepted: true},
		{name: "key vouched by the gateway's own DNS", client: "other", own: "same", delegate: "192.0.2.2", accepted: true},
		{name: "key vouched by nobody but another client", client: "other", own: "other", delegate: "192.0.2.2"},
		{name: "client delegates elsewhere", client: "same", delegate: "192.0.2.99"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, "private=10.2.0.0/16;clear-or-private=192.0.2.0/24", nil)
			first := gateway(t, "192.0.2.2", 10)
			r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{first}})
			r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
			up := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
			c, _ := r.ch.conn(up.Conn)
			if len(c.Children) != 2 || c.Children[1].Name != acceptorChild || c.Children[1].LocalTS[1] != "10.1.0.0/24" || c.Children[1].RemoteTS[0] != "0.0.0.0/0" {
				t.Fatalf("initiator conn children %+v", c.Children)
			}
			keyed := func(addr, which string) plugins.Gateway {
				g := gateway(t, addr, 10)
				if which == "same" {
					g.Keys = first.Keys
				}
				return g
			}
			r.dns.set(netip.MustParseAddr("10.2.0.11"), plugins.LookupAnswer{Gateways: []plugins.Gateway{keyed(tt.delegate, tt.client)}})
			if tt.own != "" {
				r.dns.set(gwb, plugins.LookupAnswer{Gateways: []plugins.Gateway{keyed("192.0.2.2", tt.own)}})
			}
			id := uint32(20 + i)
			r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &vici.IKESA{Name: up.Conn, RemoteHost: gwb, RemoteID: "192.0.2.2",
				Children: []vici.ChildSA{{Name: acceptorChild, UniqueID: id, LocalTS: []string{"10.1.0.11/32"}, RemoteTS: []string{"10.2.0.11/32"}}}}})
			allowed := len(r.policies(t, xfrm.Allow, "10.1.0.11/32", "10.2.0.11/32")) == 1
			closed := len(r.ch.terminated) == 1 && r.ch.terminated[0].ChildID == id
			if allowed != tt.accepted || closed == tt.accepted {
				t.Fatalf("allowed %v closed %v (terminated %+v), want accepted %v; tunnels %+v", allowed, closed, r.ch.terminated, tt.accepted, r.e.Tunnels())
			}
			pair := xfrm.Pair{Src: netip.MustParseAddr("10.1.0.11"), Dst: netip.MustParseAddr("10.2.0.11")}
			var got *Tunnel
			for _, tu := range r.e.Tunnels() {
				if tu.Pair == pair {
					got = &tu
				}
			}
			switch {
			case tt.accepted && (got == nil || got.State != StateUp || got.Role != "responder" || got.Gateway != "192.0.2.2"):
				t.Fatalf("accepted pair %+v", got)
			case !tt.accepted && (got == nil || got.State != StateFailed || got.Reason == ""):
				t.Fatalf("refused pair %+v", got)
			}
			// A refused client's record goes after a shunt lifetime.
			r.advance(16 * time.Minute)
			r.e.Tick(context.Background())
			for _, tu := range r.e.Tunnels() {
				if tu.Pair == pair && tu.State == StateFailed {
					t.Fatalf("refused client's record kept: %+v", tu)
				}
			}
		})
	}
}

// TestPairsShareIKESA: two pairs' CHILD_SAs in one IKE_SA. An idle pair's
// teardown closes its CHILD_SA only; the last one closes the IKE_SA. A
// CHILD_SA going down forgets its pair only.
func TestPairsShareIKESA(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16;clear-or-private=192.0.2.0/24", func(c *Config) { c.InitialLifespan = Duration(time.Minute) })
	gw := gateway(t, "192.0.2.2", 10)
	for _, d := range []string{"10.2.0.10", "10.2.0.11", "10.2.0.12"} {
		r.dns.set(netip.MustParseAddr(d), plugins.LookupAnswer{Gateways: []plugins.Gateway{gw}})
	}
	child := func(id uint32, name, dst string, use time.Duration) vici.ChildSA {
		return vici.ChildSA{Name: name, UniqueID: id, State: "INSTALLED", LocalTS: []string{"10.1.0.10/32"}, RemoteTS: []string{dst + "/32"}, UseIn: use, UseOut: use}
	}
	// Both pairs' CHILD_SAs sit in the IKE_SA of the first pair's conn.
	ike := "obol-oe-10-1-0-10-10-2-0-10"
	r.ch.sas = []vici.IKESA{{Name: ike, UniqueID: 4, RemoteHost: netip.MustParseAddr("192.0.2.2"), RemoteID: "192.0.2.2",
		Children: []vici.ChildSA{child(1, "oe", "10.2.0.10", 2*time.Minute), child(2, "oe", "10.2.0.11", time.Second), child(3, "oe", "10.2.0.12", time.Second)}}}
	for _, d := range []string{"10.2.0.10", "10.2.0.11", "10.2.0.12"} {
		r.e.HandleAcquire(acquire("10.1.0.10", d, 0))
		r.tunnel(t, "10.1.0.10", d, StateUp)
	}
	if tu := r.tunnel(t, "10.1.0.10", "10.2.0.11", StateUp); tu.Conn != "obol-oe-10-1-0-10-10-2-0-11" {
		t.Fatalf("second pair %+v", tu)
	}
	// The first pair is idle: its CHILD_SA alone is closed.
	r.advance(61 * time.Second)
	r.e.Tick(context.Background())
	if len(r.ch.terminated) != 1 || r.ch.terminated[0] != (vici.SASelector{ChildID: 1}) {
		t.Fatalf("idle pair: terminated %+v", r.ch.terminated)
	}
	if len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.11/32")) != 1 {
		t.Fatal("the busy pair lost its allow")
	}
	// The third pair's CHILD_SA goes down: only it is forgotten.
	r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, SA: &vici.IKESA{Name: ike, Children: []vici.ChildSA{child(3, "oe", "10.2.0.12", 0)}}})
	for _, tu := range r.e.Tunnels() {
		if tu.Pair.Dst.String() != "10.2.0.11" {
			t.Fatalf("left %+v", r.e.Tunnels())
		}
	}
	// The last pair idle: its CHILD_SA is the IKE_SA's last, so the IKE_SA goes.
	r.ch.mu.Lock()
	r.ch.sas = []vici.IKESA{{Name: ike, UniqueID: 4, Children: []vici.ChildSA{child(2, "oe", "10.2.0.11", 15*time.Minute)}}}
	r.ch.mu.Unlock()
	r.advance(20*time.Minute + time.Second) // it was busy: the busy lifespan
	r.e.Tick(context.Background())
	if len(r.ch.terminated) != 2 || r.ch.terminated[1] != (vici.SASelector{IKEID: 4}) || len(r.e.Tunnels()) != 0 {
		t.Fatalf("last pair: terminated %+v tunnels %+v", r.ch.terminated, r.e.Tunnels())
	}
}

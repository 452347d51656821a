package tokenapi_test

import (
	"context"
	"net"
	"testing"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/client"
	"github.com/obol-ipsec/obol/tokenapi/tokenapitest"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// upProtector brings the SA of port up when asked, as obold's host does: the
// facts change and charon's up event follows.
type upProtector struct {
	facts *tokenapitest.ChangeFacts
	port  int
	up    tokenapi.Protection
}

func (p *upProtector) PinTarget(context.Context) (tokenapi.PinTarget, error) {
	return tokenapi.PinTarget{Datapath: "userspace", Device: "lo"}, nil
}

func (p *upProtector) Protect(context.Context, tokenapi.ProtectRequest) (tokenapi.ProtectOutcome, error) {
	p.facts.Set(p.port, p.up)
	p.facts.Notify(plugins.TokenChange{Kind: plugins.TokenChangeUp, IKEName: p.up.Child.IKEName, Child: p.up.Child.Name})
	return tokenapi.ProtectOutcome{}, nil
}

// TestProtectWithEvents: one server answers PROTECT and pushes events; the
// SA a PROTECT brings up is an UP event for a subscriber of the flow, and
// the PROTECT reply on the other connection is not disturbed by it.
func TestProtectWithEvents(t *testing.T) {
	facts := tokenapitest.NewChangeFacts()
	ln := listen(t)
	port := ln.Addr().(*net.TCPAddr).Port
	facts.Set(port, tokenapi.Protection{Why: wire.ReasonNoSA, WhyText: "trap installed, no SA yet"})
	up := tokenapi.Protection{Protected: true, Child: gcm, Peer: peerA}
	_, sock := tokenapitest.ServeProtect(t, tokenapi.Config{}, facts, &upProtector{facts: facts, port: port, up: up})
	conn := dialTCP(t, ln)

	ev, err := client.DialEvents(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	sid, now, err := ev.Subscribe(ctx(t), conn)
	if err != nil {
		t.Fatal(err)
	}
	if now.Protected || now.Why != wire.ReasonNoSA {
		t.Fatalf("SUBSCRIBED before PROTECT: %+v", now)
	}

	c, err := client.Dial(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	g, err := c.Protect(ctx(t), conn, client.Request{Level: wire.LevelBTNS})
	if err != nil {
		t.Fatal(err)
	}
	if g.Refused() || g.Pin != wire.PinDevice || g.Iface != "lo" || !g.PToken.Protected || g.PeerID != peerA.RemoteID {
		t.Fatalf("grant %+v", g)
	}
	if dev := boundDevice(t, conn); dev != "lo" {
		t.Errorf("socket bound to %q, want lo", dev)
	}
	e := nextEvent(t, ev)
	if e.Subscription != sid || e.Kind != wire.EventUp || !e.State.Protected || e.State.IToken != g.PToken.IToken {
		t.Fatalf("event %s %+v, want UP of subscription %d with iToken %d", e.Kind, e, sid, g.PToken.IToken)
	}
}

// TestProtectRefusedLabelUnknown: a refused PROTECT names one reason, the
// refusal's, even where the flow's pToken carries LABEL_UNKNOWN; PTOKEN_GET
// still tells the pToken's own.
func TestProtectRefusedLabelUnknown(t *testing.T) {
	facts := tokenapitest.NewPortFacts()
	ln := listen(t)
	weak := tokenapi.Child{IKEName: "lab", Name: "b", Protocol: "ESP", EncrAlg: "NULL", IntegAlg: "HMAC_SHA2_256_128", Label: "label_b"}
	strong := gcm
	strong.Label = "label_a"
	facts.Set(ln.Addr().(*net.TCPAddr).Port, tokenapi.Protection{Protected: true, Child: strong, Peer: peerA, LabelCandidates: []tokenapi.Child{strong, weak}})
	_, sock := tokenapitest.ServeProtect(t, tokenapi.Config{}, facts, &fakeProtector{target: tokenapi.PinTarget{Datapath: "userspace", Device: "lo"}})
	c, err := client.Dial(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	conn := dialTCP(t, ln)
	g, err := c.Protect(ctx(t), conn, client.Request{Level: wire.LevelBTNS, PeerID: "@someone-else.example"})
	if err != nil {
		t.Fatal(err)
	}
	if !g.Refused() || g.PToken.Why != wire.ReasonPeerMismatch || g.PToken.Label != "" {
		t.Fatalf("grant %+v, want refused with PEER_MISMATCH and no label", g)
	}
	pt, err := c.Get(ctx(t), g.PToken.Handle)
	if err != nil {
		t.Fatal(err)
	}
	if !pt.Protected || pt.Why != wire.ReasonLabelUnknown {
		t.Errorf("PTOKEN_GET %+v, want the pToken's own LABEL_UNKNOWN", pt)
	}
}

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/tokenapi/client"
	tokenwire "github.com/obol-ipsec/obol/tokenapi/wire"
)

// tokenAPIConf enables the token API on a node's own socket.
func tokenAPIConf(n *lab.Node) (sock, conf string) {
	sock = filepath.Join(n.Dir, "token.sock")
	return sock, fmt.Sprintf("[tokenapi]\nenabled = true\nsocket = %q\n", sock)
}

// swanctlHostsWeak is swanctlHosts plus a child "weak" for the pair's TCP
// with ESP-NULL: integrity, no privacy. Its selectors are narrower than
// "host"'s, so the responder picks it for a CHILD_SA that proposes them.
func swanctlHostsWeak(local, remote string) string {
	return strings.Replace(swanctlHosts(local, remote), "    children {\n", fmt.Sprintf(`    children {
      weak {
        local_ts = %s/32[tcp]
        remote_ts = %s/32[tcp]
        esp_proposals = null-sha256
      }
`, local, remote), 1)
}

// waitEvent returns the next event or fails after 15 s.
func waitEvent(t *testing.T, side string, ev *client.Events) client.Event {
	t.Helper()
	select {
	case e, ok := <-ev.C():
		if !ok {
			t.Fatalf("%s: events connection ended: %v", side, ev.Err())
		}
		t.Logf("%s: event %s: %s", side, e.Kind, e.State.Audit)
		return e
	case <-time.After(15 * time.Second):
		t.Fatalf("%s: no event within 15s", side)
	}
	return client.Event{}
}

// TestTokenAPIEvents: programs at both ends of a swanctl tunnel subscribe
// for their TCP connection and see a forced rekey (same iToken), the
// tunnel's termination and its re-initiation, each as one event. A UDP
// server on hostb learns, per datagram, that hosta's came through the
// tunnel and the resolver host's did not.
func TestTokenAPIEvents(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ha, hb, dnsNode := l.Node(lab.HostA), l.Node(lab.HostB), l.Node(lab.DNS)
	loadSwanctl(t, ha, swanctlHostsWeak("192.0.2.11", "192.0.2.12"))
	loadSwanctl(t, hb, swanctlHostsWeak("192.0.2.12", "192.0.2.11"))
	sockA, confA := tokenAPIConf(ha)
	sockB, confB := tokenAPIConf(hb)
	oa := startObold(t, ha, confA)
	ob := startObold(t, hb, confB)
	swanctl(t, ha, "--initiate", "--child", "host")

	ca, cb := tcpPair(t, ctx, ha, hb, "192.0.2.12:7011")

	evA, err := client.DialEvents(ctx, sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer evA.Close()
	evB, err := client.DialEvents(ctx, sockB)
	if err != nil {
		t.Fatal(err)
	}
	defer evB.Close()
	type end struct {
		name   string
		ev     *client.Events
		sub    client.SubscriptionID
		itoken client.ITokenHandle
		peer   string
	}
	ends := []*end{{name: "hosta", ev: evA, peer: "192.0.2.12"}, {name: "hostb", ev: evB, peer: "192.0.2.11"}}
	for i, c := range []net.Conn{ca, cb} {
		e := ends[i]
		sid, now, err := e.ev.Subscribe(ctx, c.(*net.TCPConn))
		if err != nil {
			t.Fatalf("%s: subscribe: %v", e.name, err)
		}
		if !now.Protected || !now.Privacy || now.IToken == 0 {
			t.Fatalf("%s: subscribed flow %+v", e.name, now)
		}
		it, err := e.ev.IToken(ctx, now.IToken)
		if err != nil || it.RemoteID != e.peer {
			t.Fatalf("%s: iToken %+v, %v", e.name, it, err)
		}
		e.sub, e.itoken = sid, now.IToken
	}
	expect := func(step string, kind tokenwire.EventKind, protected bool) {
		t.Helper()
		for _, e := range ends {
			got := waitEvent(t, e.name, e.ev)
			if got.Subscription != e.sub || got.Kind != kind || got.State.Protected != protected {
				t.Fatalf("%s at %s: %s on %d (%+v), want %s on %d", step, e.name, got.Kind, got.Subscription, got.State, kind, e.sub)
			}
			if protected && got.State.IToken != e.itoken {
				t.Errorf("%s at %s: iToken %v, want the same peer's %v", step, e.name, got.State.IToken, e.itoken)
			}
			if !protected && (got.State.IToken != 0 || got.State.Why == tokenwire.ReasonNone || got.State.WhyText == "") {
				t.Errorf("%s at %s: down state %+v", step, e.name, got.State)
			}
		}
	}

	swanctl(t, ha, "--rekey", "--child", "host")
	expect("rekey", tokenwire.EventRekeyed, true)
	swanctl(t, ha, "--terminate", "--ike", "hh")
	expect("terminate", tokenwire.EventDown, false)
	swanctl(t, ha, "--initiate", "--child", "host")
	expect("re-initiate", tokenwire.EventUp, true)
	// A second CHILD_SA for the pair with ESP-NULL: the newest covers the
	// flow, which keeps its peer but loses privacy; when it goes, privacy
	// is back. Both are protection changes at both ends.
	swanctl(t, ha, "--initiate", "--child", "weak")
	for _, e := range ends {
		got := waitEvent(t, e.name, e.ev)
		if got.Kind != tokenwire.EventProtectionChanged || !got.State.Protected || got.State.Privacy || !got.State.Integrity || got.State.IToken != e.itoken {
			t.Fatalf("weak child at %s: %s %+v", e.name, got.Kind, got.State)
		}
	}
	swanctl(t, ha, "--terminate", "--child", "weak")
	for _, e := range ends {
		got := waitEvent(t, e.name, e.ev)
		if got.Kind != tokenwire.EventProtectionChanged || !got.State.Privacy || got.State.IToken != e.itoken {
			t.Fatalf("weak child gone at %s: %s %+v", e.name, got.Kind, got.State)
		}
	}
	// Nothing else happened to the flow: no further event.
	for _, e := range ends {
		select {
		case got := <-e.ev.C():
			t.Errorf("%s: unexpected event %s (%s)", e.name, got.Kind, got.State.Audit)
		case <-time.After(1500 * time.Millisecond):
		}
	}
	for _, e := range ends {
		if err := e.ev.Unsubscribe(ctx, e.sub); err != nil {
			t.Errorf("%s: unsubscribe: %v", e.name, err)
		}
	}

	// Per-datagram pTokens: a UDP server bound to the wildcard address.
	clear := wire(t, l, "udp port 7012 and host 192.0.2.11")
	encrypted := wire(t, l, "udp port 4500 and host 192.0.2.11 and host 192.0.2.12")
	pc, err := hb.ListenPacket(ctx, "udp4", "0.0.0.0:7012")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	tb, err := client.Dial(ctx, sockB)
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	for _, s := range []struct {
		node      *lab.Node
		from      string
		protected bool
	}{{ha, "192.0.2.11", true}, {dnsNode, "192.0.2.53", false}} {
		u, err := s.node.Dial(ctx, "udp4", "192.0.2.12:7012")
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		if _, err := u.Write([]byte("datagram from " + s.from)); err != nil {
			t.Fatal(err)
		}
		buf := make([]byte, 128)
		rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
		n, from, pt, err := tb.ReadFromUDP(rctx, pc.(*net.UDPConn), buf)
		rcancel()
		if err != nil {
			t.Fatalf("datagram from %s: %v", s.from, err)
		}
		if from.Addr() != netip.MustParseAddr(s.from) || string(buf[:n]) != "datagram from "+s.from {
			t.Fatalf("read %q from %v, want from %s", buf[:n], from, s.from)
		}
		t.Logf("datagram from %v: %s", from, pt.Audit)
		if s.protected {
			if !pt.Protected || !pt.Privacy || !pt.Integrity || pt.IToken == 0 {
				t.Errorf("datagram from %s: %+v", s.from, pt)
			}
			it, err := tb.IToken(ctx, pt.IToken)
			if err != nil || it.RemoteID != s.from {
				t.Errorf("datagram from %s: iToken %+v, %v", s.from, it, err)
			}
		} else if pt.Protected || pt.Privacy || pt.Why != tokenwire.ReasonNoPolicy || !strings.Contains(pt.WhyText, s.from) {
			t.Errorf("clear datagram from %s: %+v", s.from, pt)
		}
	}
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Errorf("hosta's datagram went in clear:\n%s", strings.Join(lines, "\n"))
	}
	if lines := stopCapture(t, encrypted); len(lines) == 0 {
		t.Error("no ESP-in-UDP on the wire: hosta's datagram did not cross the tunnel")
	}
	oa.stop()
	ob.stop()
}

// TestTokenAPILabelUnknown: two labeled CHILD_SAs (label_mode simple) cover
// one host pair. This kernel has no active LSM, so a socket's SO_PEERSEC
// cannot be read: the pToken must not claim either label, and says why.
func TestTokenAPILabelUnknown(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	secret := []byte("labeled-hosts-secret-0123456789\n")
	pa, err := ha.WriteFile("peer.psk", secret)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := hb.WriteFile("peer.psk", secret)
	if err != nil {
		t.Fatal(err)
	}
	sockA, confA := tokenAPIConf(ha)
	oa := startObold(t, ha, labeledHost("192.0.2.11", "192.0.2.12", "s1", []string{labelS0, labelS1}, pa)+confA)
	ob := startObold(t, hb, labeledHost("192.0.2.12", "192.0.2.11", "s1", []string{labelS0, labelS1}, pb))
	for _, label := range []string{labelS0, labelS1} {
		if ans := labelsRequest(t, oa, label); !ans.Allowed || !ans.Established {
			t.Fatalf("%s: %+v", label, ans)
		}
	}
	// A connected UDP socket needs no traffic to have a flow; a TCP one
	// is what SO_PEERSEC is read from.
	u, err := ha.Dial(ctx, "udp4", "192.0.2.12:7013")
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	tc, _ := tcpPair(t, ctx, ha, hb, "192.0.2.12:7014")
	ca, err := client.Dial(ctx, sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	for name, c := range map[string]net.Conn{"udp": u, "tcp": tc} {
		var pt client.PToken
		switch c := c.(type) {
		case *net.UDPConn:
			pt, err = ca.PToken(ctx, c)
		case *net.TCPConn:
			pt, err = ca.PToken(ctx, c)
		}
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		t.Logf("%s: %s", name, pt.Audit)
		if !pt.Protected || pt.Label != "" || pt.Why != tokenwire.ReasonLabelUnknown || strings.Contains(pt.Audit, "label=") {
			t.Errorf("%s: %+v, want protected, no label, WHY LABEL_UNKNOWN", name, pt)
		}
		for _, want := range []string{labelS0, labelS1, "SO_PEERSEC"} {
			if !strings.Contains(pt.WhyText, want) || !strings.Contains(pt.Audit, want) {
				t.Errorf("%s: WHY %q / AUDIT %q do not mention %q", name, pt.WhyText, pt.Audit, want)
			}
		}
	}
	oa.stop()
	ob.stop()
}

// TestTokenAPIRekeyFailed: a real failed rekey. hosta's child asks for
// PFS (x25519), hostb's does not: the CHILD_SA comes up (IKE_AUTH carries no
// key exchange), but its rekey is refused with NO_PROPOSAL_CHOSEN and charon
// 5.9.8 logs "CHILD_SA rekeying failed, trying again in N seconds" while it
// keeps the old SA. hosta's subscriber hears REKEY_FAILED with charon's line
// and the flow still protected by the same peer.
func TestTokenAPIRekeyFailed(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	loadSwanctl(t, ha, strings.Replace(swanctlHosts("192.0.2.11", "192.0.2.12"), "esp_proposals = aes256gcm16", "esp_proposals = aes256gcm16-x25519", 1))
	loadSwanctl(t, hb, swanctlHosts("192.0.2.12", "192.0.2.11"))
	sockA, confA := tokenAPIConf(ha)
	oa := startObold(t, ha, confA)
	swanctl(t, ha, "--initiate", "--child", "host")

	c, _ := tcpPair(t, ctx, ha, hb, "192.0.2.12:7015")
	ev, err := client.DialEvents(ctx, sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	sub, now, err := ev.Subscribe(ctx, c.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	if !now.Protected || now.IToken == 0 {
		t.Fatalf("subscribed flow %+v", now)
	}
	swanctl(t, ha, "--rekey", "--child", "host")
	got := waitEvent(t, "hosta", ev)
	if got.Subscription != sub || got.Kind != tokenwire.EventRekeyFailed || !got.State.Protected || got.State.IToken != now.IToken ||
		got.State.Why != tokenwire.ReasonNegotiationFailed || !strings.Contains(got.State.WhyText, "CHILD_SA rekeying failed") {
		t.Fatalf("after a refused rekey: %s %+v", got.Kind, got.State)
	}
	t.Logf("charon said: %s", got.State.WhyText)
	oa.stop()
}

// swanctlAlt adds to swanctlHosts a second conn "alt" between the same
// hosts under other identities (FQDNs, its own PSK) whose child covers
// only the pair's TCP: more specific than "host", so it takes TCP flows.
func swanctlAlt(local, remote, localID, remoteID string) string {
	return swanctlHosts(local, remote) + fmt.Sprintf(`connections {
  alt {
    version = 2
    local_addrs = %[1]s
    remote_addrs = %[2]s
    local {
      auth = psk
      id = %[3]s
    }
    remote {
      auth = psk
      id = %[4]s
    }
    children {
      alt {
        local_ts = %[1]s/32[tcp]
        remote_ts = %[2]s/32[tcp]
        esp_proposals = aes256gcm16
      }
    }
  }
}
secrets {
  ike-alt {
    id-a = %[3]s
    id-b = %[4]s
    secret = "token-api-alt-secret-0123456789"
  }
}
`, local, remote, localID, remoteID)
}

// TestTokenAPIIdentityChanged: while a TCP flow is protected by the "hh"
// IKE_SA, a second IKE_SA under other identities takes it over (its
// selectors are narrower); both ends hear IDENTITY_CHANGED with the new
// peer's iToken, and the old peer's iToken again when it goes.
func TestTokenAPIIdentityChanged(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	loadSwanctl(t, ha, swanctlAlt("192.0.2.11", "192.0.2.12", "hosta.lab.example", "hostb.lab.example"))
	loadSwanctl(t, hb, swanctlAlt("192.0.2.12", "192.0.2.11", "hostb.lab.example", "hosta.lab.example"))
	sockA, confA := tokenAPIConf(ha)
	sockB, confB := tokenAPIConf(hb)
	oa := startObold(t, ha, confA)
	ob := startObold(t, hb, confB)
	swanctl(t, ha, "--initiate", "--child", "host")

	ca, cb := tcpPair(t, ctx, ha, hb, "192.0.2.12:7016")
	type end struct {
		name, oldID, newID string
		ev                 *client.Events
		first              client.ITokenHandle
	}
	ends := []*end{{name: "hosta", oldID: "192.0.2.12", newID: "hostb.lab.example"}, {name: "hostb", oldID: "192.0.2.11", newID: "hosta.lab.example"}}
	for i, sock := range []string{sockA, sockB} {
		e := ends[i]
		var err error
		if e.ev, err = client.DialEvents(ctx, sock); err != nil {
			t.Fatal(err)
		}
		defer e.ev.Close()
		_, now, err := e.ev.Subscribe(ctx, []net.Conn{ca, cb}[i].(*net.TCPConn))
		if err != nil {
			t.Fatal(err)
		}
		e.first = now.IToken
	}
	swanctl(t, ha, "--initiate", "--child", "alt")
	for _, e := range ends {
		got := waitEvent(t, e.name, e.ev)
		if got.Kind != tokenwire.EventIdentityChanged || !got.State.Protected || got.State.IToken == e.first || got.State.IToken == 0 {
			t.Fatalf("%s: %s %+v", e.name, got.Kind, got.State)
		}
		it, err := e.ev.IToken(ctx, got.State.IToken)
		if err != nil || it.RemoteID != e.newID {
			t.Errorf("%s: new peer %+v, %v; want %s", e.name, it, err, e.newID)
		}
	}
	swanctl(t, ha, "--terminate", "--ike", "alt")
	for _, e := range ends {
		got := waitEvent(t, e.name, e.ev)
		if got.Kind != tokenwire.EventIdentityChanged || got.State.IToken != e.first {
			t.Fatalf("%s after alt went: %s %+v, want the first iToken %v", e.name, got.Kind, got.State, e.first)
		}
		it, err := e.ev.IToken(ctx, got.State.IToken)
		if err != nil || it.RemoteID != e.oldID {
			t.Errorf("%s: peer %+v, %v; want %s", e.name, it, err, e.oldID)
		}
	}
	oa.stop()
	ob.stop()
}

package tokenapi_test

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/client"
	"github.com/obol-ipsec/obol/tokenapi/tokenapitest"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// listen opens a loopback listener that accepts and holds connections.
func listen(t testing.TB) *net.TCPListener {
	t.Helper()
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	return ln
}

func dialTCP(t testing.TB, ln *net.TCPListener) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func nextEvent(t *testing.T, ev *client.Events) client.Event {
	t.Helper()
	select {
	case e, ok := <-ev.C():
		if !ok {
			t.Fatalf("events connection ended: %v", ev.Err())
		}
		return e
	case <-time.After(3 * time.Second):
		t.Fatal("no event within 3s")
	}
	return client.Event{}
}

func noEvent(t *testing.T, ev *client.Events, within time.Duration) {
	t.Helper()
	select {
	case e := <-ev.C():
		t.Fatalf("unexpected event %s %+v", e.Kind, e.State)
	case <-time.After(within):
	}
}

// TestEvents: a subscriber learns of down, up, rekey, a failed rekey, a new
// peer and weaker protection of its flow, each once, and nothing after it
// unsubscribes.
func TestEvents(t *testing.T) {
	facts := tokenapitest.NewChangeFacts()
	_, sock := tokenapitest.Serve(t, tokenapi.Config{}, facts)
	ln := listen(t)
	port := ln.Addr().(*net.TCPAddr).Port
	facts.Set(port, tokenapi.Protection{Protected: true, Child: gcm, Peer: peerA})
	c := dialTCP(t, ln)
	ev, err := client.DialEvents(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	sid, now, err := ev.Subscribe(ctx(t), c)
	if err != nil {
		t.Fatal(err)
	}
	if sid == 0 || !now.Protected || !now.Privacy || now.IToken == 0 || now.Handle != 0 {
		t.Fatalf("SUBSCRIBED: id %d, %+v", sid, now)
	}
	peerAToken := now.IToken

	steps := []struct {
		name   string
		set    *tokenapi.Protection
		change plugins.TokenChange
		want   []wire.EventKind
	}{
		{"down", &tokenapi.Protection{Why: wire.ReasonNoSA, WhyText: "CHILD_SA deleted"}, plugins.TokenChange{Kind: plugins.TokenChangeDown, IKEName: "obol-oe-1", Child: "oe"}, []wire.EventKind{wire.EventDown}},
		{"up", &tokenapi.Protection{Protected: true, Child: gcm, Peer: peerA}, plugins.TokenChange{Kind: plugins.TokenChangeUp, IKEName: "obol-oe-1", Child: "oe"}, []wire.EventKind{wire.EventUp}},
		{"rekeyed", nil, plugins.TokenChange{Kind: plugins.TokenChangeRekeyed, IKEName: "obol-oe-1", Child: "oe"}, []wire.EventKind{wire.EventRekeyed}},
		{"other conn rekeyed", nil, plugins.TokenChange{Kind: plugins.TokenChangeRekeyed, IKEName: "other", Child: "oe"}, nil},
		{"IKE_SA rekeyed", nil, plugins.TokenChange{Kind: plugins.TokenChangeRekeyed, IKEName: "obol-oe-1"}, nil},
		{"rekey failed", nil, plugins.TokenChange{Kind: plugins.TokenChangeRekeyFailed, IKEName: "obol-oe-1", Text: "CHILD_SA rekeying failed, trying again in 28 seconds"}, []wire.EventKind{wire.EventRekeyFailed}},
		{"new peer", &tokenapi.Protection{Protected: true, Child: gcm, Peer: peerB}, plugins.TokenChange{Kind: plugins.TokenChangeReset}, []wire.EventKind{wire.EventIdentityChanged}},
		{"weaker", &tokenapi.Protection{Protected: true, Child: tokenapi.Child{IKEName: "obol-oe-1", Name: "oe", Protocol: "ESP", EncrAlg: "NULL", IntegAlg: "HMAC_SHA2_256_128"}, Peer: peerB}, plugins.TokenChange{Kind: plugins.TokenChangeLost}, []wire.EventKind{wire.EventProtectionChanged}},
		{"nothing changed", nil, plugins.TokenChange{Kind: plugins.TokenChangeUp, IKEName: "x"}, nil},
	}
	var lastIToken client.ITokenHandle
	for _, st := range steps {
		if st.set != nil {
			facts.Set(port, *st.set)
		}
		facts.Notify(st.change)
		for _, want := range st.want {
			e := nextEvent(t, ev)
			if e.Subscription != sid || e.Kind != want {
				t.Fatalf("%s: event %s on %d, want %s on %d", st.name, e.Kind, e.Subscription, want, sid)
			}
			switch want {
			case wire.EventDown:
				if e.State.Protected || e.State.IToken != 0 || e.State.Why != wire.ReasonNoSA {
					t.Errorf("%s: state %+v", st.name, e.State)
				}
			case wire.EventUp, wire.EventRekeyed:
				if !e.State.Protected || e.State.IToken != peerAToken {
					t.Errorf("%s: state %+v, want iToken %v", st.name, e.State, peerAToken)
				}
			case wire.EventRekeyFailed:
				if !e.State.Protected || e.State.Why != wire.ReasonNegotiationFailed || e.State.WhyText == "" {
					t.Errorf("%s: state %+v", st.name, e.State)
				}
			case wire.EventIdentityChanged:
				if e.State.IToken == peerAToken || e.State.IToken == 0 {
					t.Errorf("%s: iToken %v", st.name, e.State.IToken)
				}
				// The subscription holds the new iToken: its properties
				// are visible on the events connection.
				it, err := ev.IToken(ctx(t), e.State.IToken)
				if err != nil || it.RemoteID != "CN=moon" {
					t.Errorf("%s: IToken: %+v, %v", st.name, it, err)
				}
			case wire.EventProtectionChanged:
				if e.State.Privacy || !e.State.Integrity {
					t.Errorf("%s: state %+v", st.name, e.State)
				}
			}
			lastIToken = e.State.IToken
		}
		if len(st.want) == 0 {
			noEvent(t, ev, 200*time.Millisecond)
		}
	}
	// peerA's iToken is no longer held by anything of this connection.
	if _, err := ev.IToken(ctx(t), peerAToken); !client.IsCode(err, wire.ErrCodeUnknownHandle) {
		t.Errorf("old iToken after identity change: %v", err)
	}
	if err := ev.Unsubscribe(ctx(t), sid); err != nil {
		t.Fatal(err)
	}
	if _, err := ev.IToken(ctx(t), lastIToken); !client.IsCode(err, wire.ErrCodeUnknownHandle) {
		t.Errorf("iToken after unsubscribe: %v", err)
	}
	if err := ev.Unsubscribe(ctx(t), sid); !client.IsCode(err, wire.ErrCodeUnknownHandle) {
		t.Errorf("second unsubscribe: %v", err)
	}
	facts.Set(port, tokenapi.Protection{Why: wire.ReasonNoSA})
	facts.Notify(plugins.TokenChange{Kind: plugins.TokenChangeDown})
	noEvent(t, ev, 300*time.Millisecond)
}

// TestSubscribeRefusals: no feed, a listening socket, too many
// subscriptions, no descriptor.
func TestSubscribeRefusals(t *testing.T) {
	ln := listen(t)
	t.Run("no feed", func(t *testing.T) {
		facts := tokenapitest.NewPortFacts()
		_, sock := tokenapitest.Serve(t, tokenapi.Config{}, facts)
		ev, err := client.DialEvents(ctx(t), sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ev.Close()
		if _, _, err := ev.Subscribe(ctx(t), dialTCP(t, ln)); !client.IsCode(err, wire.ErrCodeNoEvents) {
			t.Errorf("got %v, want NO_EVENTS", err)
		}
	})
	facts := tokenapitest.NewChangeFacts()
	_, sock := tokenapitest.Serve(t, tokenapi.Config{MaxSubscriptions: 2}, facts)
	ev, err := client.DialEvents(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ev.Close()
	if _, _, err := ev.Subscribe(ctx(t), ln); !client.IsCode(err, wire.ErrCodeNotConnected) {
		t.Errorf("listening socket: %v", err)
	}
	c := dialTCP(t, ln)
	for i := range 2 {
		if _, _, err := ev.Subscribe(ctx(t), c); err != nil {
			t.Fatalf("subscription %d: %v", i, err)
		}
	}
	if _, _, err := ev.Subscribe(ctx(t), c); !client.IsCode(err, wire.ErrCodeLimit) {
		t.Errorf("third subscription: %v", err)
	}
}

// TestSlowEventReaderDropped: a client that never reads its events is
// disconnected once the socket and its queue are full, not buffered for.
func TestSlowEventReaderDropped(t *testing.T) {
	facts := tokenapitest.NewChangeFacts()
	srv, sock := tokenapitest.Serve(t, tokenapi.Config{MaxQueuedEvents: 70, MaxSubscriptions: 64}, facts)
	ln := listen(t)
	port := ln.Addr().(*net.TCPAddr).Port
	up := tokenapi.Protection{Protected: true, Child: gcm, Peer: peerA}
	down := tokenapi.Protection{Why: wire.ReasonNoSA}
	facts.Set(port, up)
	c := dialTCP(t, ln)
	raw, err := net.Dial("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	rc, _ := c.SyscallConn()
	buf := make([]byte, wire.MaxMessage)
	const subs = 64 // each change of the flow is 64 events
	for i := range subs {
		req, _ := wire.NewBuilder(wire.TypeSubscribe, uint32(i+1)).Bytes()
		rc.Control(func(fd uintptr) {
			_, _, err = raw.(*net.UnixConn).WriteMsgUnix(req, syscall.UnixRights(int(fd)), nil)
		})
		if err != nil {
			t.Fatal(err)
		}
		n, err := raw.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		if m, err := wire.Decode(buf[:n]); err != nil || m.Type != wire.TypeSubscribed {
			t.Fatalf("subscribe: %s %v", m.Type, err)
		}
	}
	// The flow goes down and up again and again; the client reads nothing.
	flips := 0
	for srv.Stats().Clients != 0 {
		if flips == 50 {
			t.Fatalf("a client that reads nothing is still connected after %d events", flips*subs)
		}
		if flips%2 == 0 {
			facts.Set(port, down)
		} else {
			facts.Set(port, up)
		}
		facts.Notify(plugins.TokenChange{Kind: plugins.TokenChangeReset})
		flips++
		time.Sleep(2 * settle)
	}
	// What was delivered before the drop is intact, then the end.
	got := 0
	raw.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		n, err := raw.Read(buf)
		if err != nil || n == 0 {
			break
		}
		if m, err := wire.Decode(buf[:n]); err != nil || m.Type != wire.TypeEvent {
			t.Fatalf("after drop: %s %v", m.Type, err)
		}
		got++
	}
	if got == 0 || got >= flips*subs {
		t.Errorf("%d of %d events delivered before the drop, want some but not all", got, flips*subs)
	}
	t.Logf("dropped after %d events, %d were in the socket", flips*subs, got)
}

// settle is a little more than the server's settle delay.
const settle = 60 * time.Millisecond

// TestPTokenQueryFrom: an unconnected UDP server learns the pToken of each
// datagram's sender, bound to one address or to the wildcard; wrong local
// addresses and wrong sockets are refused.
func TestPTokenQueryFrom(t *testing.T) {
	facts := tokenapitest.NewPortFacts()
	_, sock := tokenapitest.Serve(t, tokenapi.Config{}, facts)
	cl, err := client.Dial(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	protectedSender, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer protectedSender.Close()
	clearSender, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer clearSender.Close()
	facts.Set(protectedSender.LocalAddr().(*net.UDPAddr).Port, tokenapi.Protection{Protected: true, Child: gcm, Peer: peerA})

	for _, bind := range []string{"127.0.0.1", "0.0.0.0"} {
		t.Run(bind, func(t *testing.T) {
			srv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(bind)})
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Close()
			to := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: srv.LocalAddr().(*net.UDPAddr).Port}
			for _, tc := range []struct {
				from      *net.UDPConn
				protected bool
			}{{protectedSender, true}, {clearSender, false}} {
				if _, err := tc.from.WriteToUDP([]byte("hello"), to); err != nil {
					t.Fatal(err)
				}
				buf := make([]byte, 64)
				n, from, pt, err := cl.ReadFromUDP(ctx(t), srv, buf)
				if err != nil {
					t.Fatal(err)
				}
				if string(buf[:n]) != "hello" || from != tc.from.LocalAddr().(*net.UDPAddr).AddrPort() {
					t.Errorf("read %q from %v", buf[:n], from)
				}
				if pt.Protected != tc.protected || pt.Privacy != tc.protected || (!tc.protected && pt.Why != wire.ReasonNoPolicy) {
					t.Errorf("sender %v: %+v", from, pt)
				}
			}
			_, err = cl.PTokenFrom(ctx(t), srv, netip.MustParseAddrPort("127.0.0.1:9"), netip.MustParseAddr("192.0.2.99"))
			if !client.IsCode(err, wire.ErrCodeAddressMismatch) {
				t.Errorf("foreign local address: %v", err)
			}
		})
	}
	t.Run("wildcard without LOCAL_ADDR", func(t *testing.T) {
		srv, err := net.ListenUDP("udp4", &net.UDPAddr{})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		_, err = cl.PTokenFrom(ctx(t), srv, netip.MustParseAddrPort("127.0.0.1:9"), netip.Addr{})
		if !client.IsCode(err, wire.ErrCodeAddressMismatch) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("TCP socket", func(t *testing.T) {
		_, err := cl.PTokenFrom(ctx(t), dialTCP(t, listen(t)), netip.MustParseAddrPort("127.0.0.1:9"), netip.Addr{})
		if !client.IsCode(err, wire.ErrCodeUnsupportedProto) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("connected to another peer", func(t *testing.T) {
		u, err := net.DialUDP("udp4", nil, protectedSender.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer u.Close()
		_, err = cl.PTokenFrom(ctx(t), u, clearSender.LocalAddr().(*net.UDPAddr).AddrPort(), netip.Addr{})
		if !client.IsCode(err, wire.ErrCodeAddressMismatch) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("no sender", func(t *testing.T) {
		_, err := cl.PTokenFrom(ctx(t), clearSender, netip.AddrPort{}, netip.Addr{})
		if !client.IsCode(err, wire.ErrCodeBadMessage) {
			t.Errorf("got %v", err)
		}
	})
	t.Run("cancelled read", func(t *testing.T) {
		c, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, _, _, err := cl.ReadFromUDP(c, clearSender, make([]byte, 8))
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("got %v", err)
		}
	})
}

// TestLabelUnknown: when SAs with different labels cover a flow and the
// socket's label is unknown, the pToken claims no label, says why, and
// claims only the protection all of them give.
func TestLabelUnknown(t *testing.T) {
	facts := tokenapitest.NewPortFacts()
	_, sock := tokenapitest.Serve(t, tokenapi.Config{}, facts)
	ln := listen(t)
	weak := tokenapi.Child{IKEName: "lab", Name: "b", Protocol: "ESP", EncrAlg: "NULL", IntegAlg: "HMAC_SHA2_256_128", Label: "label_b"}
	strong := gcm
	strong.Label = "label_a"
	facts.Set(ln.Addr().(*net.TCPAddr).Port, tokenapi.Protection{Protected: true, Child: strong, Peer: peerA, LabelCandidates: []tokenapi.Child{strong, weak}})
	cl, err := client.Dial(ctx(t), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	pt, err := cl.PToken(ctx(t), dialTCP(t, ln))
	if err != nil {
		t.Fatal(err)
	}
	if !pt.Protected || pt.Label != "" || pt.Why != wire.ReasonLabelUnknown || pt.Privacy || !pt.Integrity || pt.Compression || strings.Contains(pt.Audit, "label=") {
		t.Errorf("pToken %+v", pt)
	}
	for _, s := range []string{"label_a", "label_b", "SO_PEERSEC"} {
		if !strings.Contains(pt.WhyText, s) || !strings.Contains(pt.Audit, s) {
			t.Errorf("WHY %q / AUDIT %q lack %q", pt.WhyText, pt.Audit, s)
		}
	}
	if pt.IToken == 0 {
		t.Error("one peer behind both SAs, yet no iToken")
	}
}

// TestLabelUnknownTwoPeers: through HostFacts, labeled SAs of two different
// peers cover a flow and the socket's label is unknown: neither label nor
// peer is claimed.
func TestLabelUnknownTwoPeers(t *testing.T) {
	ln := listen(t)
	ts := func(s string) []tokenapi.TS {
		x, err := tokenapi.ParseTS(s)
		if err != nil {
			t.Fatal(err)
		}
		return []tokenapi.TS{x}
	}
	mk := func(label string, peer tokenapi.Peer) tokenapi.TokenSA {
		c := gcm
		c.Label = label
		return tokenapi.TokenSA{Child: c, Peer: peer, LocalTS: ts("127.0.0.1/32"), RemoteTS: ts("127.0.0.1/32")}
	}
	for _, tc := range []struct {
		name     string
		sas      []tokenapi.TokenSA
		wantPeer bool
	}{
		{"one peer", []tokenapi.TokenSA{mk("label_a", peerA), mk("label_b", peerA)}, true},
		{"two peers", []tokenapi.TokenSA{mk("label_a", peerA), mk("label_b", peerB)}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			host := &staticHost{sas: tc.sas}
			_, sock := tokenapitest.Serve(t, tokenapi.Config{}, tokenapi.HostFacts(host))
			cl, err := client.Dial(ctx(t), sock)
			if err != nil {
				t.Fatal(err)
			}
			defer cl.Close()
			pt, err := cl.PToken(ctx(t), dialTCP(t, ln))
			if err != nil {
				t.Fatal(err)
			}
			if !pt.Protected || pt.Label != "" || pt.Why != wire.ReasonLabelUnknown || (pt.IToken != 0) != tc.wantPeer {
				t.Errorf("%+v", pt)
			}
			if !tc.wantPeer && !strings.Contains(pt.WhyText, "different peers") {
				t.Errorf("WHY %q does not say the peers differ", pt.WhyText)
			}
		})
	}
}

// staticHost is a plugins.TokenHost with fixed SAs.
type staticHost struct{ sas []tokenapi.TokenSA }

func (h *staticHost) TokenSAs(context.Context) (plugins.TokenSnapshot, error) {
	return plugins.TokenSnapshot{Generation: 1, SAs: h.sas}, nil
}
func (h *staticHost) Generation() uint64 { return 1 }
func (h *staticHost) WhyNot(context.Context, plugins.TokenFlow) (wire.Reason, string, error) {
	return wire.ReasonNoPolicy, "no SA", nil
}
func (h *staticHost) Protect(context.Context, plugins.TokenProtect) (plugins.TokenProtectOutcome, error) {
	return plugins.TokenProtectOutcome{}, errors.New("staticHost does not act on IPsec")
}
func (h *staticHost) PinTarget(context.Context) (plugins.TokenPinTarget, error) {
	return plugins.TokenPinTarget{}, errors.New("staticHost has no datapath")
}

package pluginstest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi/client"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// TokenHostFixture is a TokenHost (with a change stream and generation
// notices, like obold's) whose SAs cover loopback TCP listeners it opens:
// "web" (a peer whose certificate is trusted), "db" (a pre-shared key peer), "late" (no SA
// until AddLate) and "clear" (never covered: WhyNot answers).
type TokenHostFixture struct {
	Web, DB, Late, Clear *net.TCPListener

	gen       atomic.Uint64
	snapshots atomic.Int32 // TokenSAs calls
	whyNots   atomic.Int32

	mu    sync.Mutex
	sas   []plugins.TokenSA
	moved chan struct{} // closed when gen moves
	subs  map[chan plugins.TokenChange]struct{}
}

var (
	_ plugins.TokenHost              = (*TokenHostFixture)(nil)
	_ plugins.TokenChangeSource      = (*TokenHostFixture)(nil)
	_ plugins.TokenGenerationWatcher = (*TokenHostFixture)(nil)
)

// NewTokenHostFixture opens the fixture's listeners (closed when the test
// ends) and its two SAs.
func NewTokenHostFixture(t testing.TB) *TokenHostFixture {
	t.Helper()
	h := &TokenHostFixture{moved: make(chan struct{}), subs: map[chan plugins.TokenChange]struct{}{}}
	for _, ln := range []**net.TCPListener{&h.Web, &h.DB, &h.Late, &h.Clear} {
		l, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
			}
		}()
		*ln = l
	}
	h.gen.Store(1)
	h.sas = []plugins.TokenSA{
		fixtureSA("web", h.Web, plugins.TokenPeer{RemoteID: "web.example", PeerKey: plugins.PublicKey{Algorithm: "ed25519", Data: fixtureKey(1)},
			OurKey:   plugins.PublicKey{Algorithm: "ed25519", Data: fixtureKey(2)},
			Evidence: plugins.AuthEvidence{ConnClass: "public key", TrustedCertDN: "CN=web.example", LogMethod: "ED25519 signature"}}),
		fixtureSA("db", h.DB, plugins.TokenPeer{RemoteID: "db.example",
			Evidence: plugins.AuthEvidence{ConnClass: "pre-shared key", SecretOwners: 1, LogMethod: "pre-shared key"}}),
	}
	return h
}

func port(ln *net.TCPListener) uint16 { return uint16(ln.Addr().(*net.TCPAddr).Port) }

// fixtureSA covers connections to ln from any loopback port.
func fixtureSA(name string, ln *net.TCPListener, peer plugins.TokenPeer) plugins.TokenSA {
	lo := netip.MustParseAddr("127.0.0.1")
	return plugins.TokenSA{
		Child: plugins.TokenChild{IKEName: name, Name: name, Protocol: "ESP", Mode: "TUNNEL", EncrAlg: "AES_GCM_16", EncrKey: 256},
		Peer:  peer,
		// A client's socket: local is any port, remote is the listener.
		LocalTS:  []plugins.TrafficSelector{{From: lo, To: lo, Proto: 6, FromPort: 0, ToPort: 65535}},
		RemoteTS: []plugins.TrafficSelector{{From: lo, To: lo, Proto: 6, FromPort: port(ln), ToPort: port(ln)}},
	}
}

// AddLate brings up the SA covering Late, as charon would: the generation
// moves, then an "up" change is sent.
func (h *TokenHostFixture) AddLate() {
	h.mu.Lock()
	h.sas = append([]plugins.TokenSA{fixtureSA("late", h.Late, plugins.TokenPeer{RemoteID: "late.example",
		Evidence: plugins.AuthEvidence{ConnClass: "pre-shared key", SecretOwners: 1, LogMethod: "pre-shared key"}})}, h.sas...)
	h.gen.Add(1)
	close(h.moved)
	h.moved = make(chan struct{})
	for ch := range h.subs {
		select {
		case ch <- plugins.TokenChange{Kind: plugins.TokenChangeUp, IKEName: "late", Child: "late"}:
		default:
		}
	}
	h.mu.Unlock()
}

// Snapshots counts TokenSAs calls.
func (h *TokenHostFixture) Snapshots() int { return int(h.snapshots.Load()) }

// HostCalls counts the calls that can be RPCs in plugin form (TokenSAs
// and WhyNot; Generation is streamed).
func (h *TokenHostFixture) HostCalls() int { return int(h.snapshots.Load() + h.whyNots.Load()) }

// TokenSAs implements plugins.TokenHost.
func (h *TokenHostFixture) TokenSAs(context.Context) (plugins.TokenSnapshot, error) {
	h.snapshots.Add(1)
	h.mu.Lock()
	defer h.mu.Unlock()
	return plugins.TokenSnapshot{Generation: h.gen.Load(), SAs: append([]plugins.TokenSA(nil), h.sas...)}, nil
}

// Generation implements plugins.TokenHost.
func (h *TokenHostFixture) Generation() uint64 { return h.gen.Load() }

// GenerationMoved implements plugins.TokenGenerationWatcher.
func (h *TokenHostFixture) GenerationMoved(g uint64) <-chan struct{} {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.gen.Load() != g {
		c := make(chan struct{})
		close(c)
		return c
	}
	return h.moved
}

// WhyNot implements plugins.TokenHost.
func (h *TokenHostFixture) WhyNot(_ context.Context, f plugins.TokenFlow) (wire.Reason, string, error) {
	h.whyNots.Add(1)
	return wire.ReasonOENoRecords, fmt.Sprintf("fixture: no IPSECKEY for %s port %d", f.Remote.Addr(), f.Remote.Port()), nil
}

// Protect implements plugins.TokenHost: no conn covers anything.
func (h *TokenHostFixture) Protect(context.Context, plugins.TokenProtect) (plugins.TokenProtectOutcome, error) {
	return plugins.TokenProtectOutcome{Why: wire.ReasonNoPolicy, WhyText: "fixture: no conn covers the flow"}, nil
}

// PinTarget implements plugins.TokenHost.
func (h *TokenHostFixture) PinTarget(context.Context) (plugins.TokenPinTarget, error) {
	return plugins.TokenPinTarget{Datapath: plugins.DatapathUserspace, Device: "lo"}, nil
}

// TokenChanges implements plugins.TokenChangeSource.
func (h *TokenHostFixture) TokenChanges(ctx context.Context) <-chan plugins.TokenChange {
	ch := make(chan plugins.TokenChange, 16)
	h.mu.Lock()
	h.subs[ch] = struct{}{}
	h.mu.Unlock()
	go func() {
		<-ctx.Done()
		h.mu.Lock()
		delete(h.subs, ch)
		close(ch)
		h.mu.Unlock()
	}()
	return ch
}

// DialToken connects to the token API socket at sock, waiting up to 10s
// for the module to listen (a plugin process starts, or restarts, first).
func DialToken(t testing.TB, sock string) *client.Client {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := client.Dial(ctx, sock)
		cancel()
		if err == nil {
			t.Cleanup(func() { c.Close() })
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("the token API module does not listen on %s: %v", sock, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func dialTCP(t testing.TB, ln *net.TCPListener) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TokenAPI checks the TokenAPI contract on a module that serves h at sock
// (built in, or in a plugin process with h brokered back): pTokens and
// iTokens of two SAs with their peers, the WhyNot path, no snapshot per
// query, a generation move seen by the following queries, and events.
func TokenAPI(t *testing.T, sock string, h *TokenHostFixture) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := DialToken(t, sock)

	t.Run("pToken and iToken name each peer", func(t *testing.T) {
		for _, tc := range []struct {
			ln     *net.TCPListener
			id     string
			method wire.AuthMethod
		}{{h.Web, "web.example", wire.AuthPKIXTrusted}, {h.DB, "db.example", wire.AuthPresharedKey}} {
			pt, err := c.PToken(ctx, dialTCP(t, tc.ln))
			if err != nil {
				t.Fatal(err)
			}
			if !pt.Protected || !pt.Privacy || !pt.Integrity || pt.IToken == 0 || !strings.Contains(pt.Audit, "AES_GCM_16") {
				t.Fatalf("%s: pToken %+v", tc.id, pt)
			}
			it, err := c.IToken(ctx, pt.IToken)
			if err != nil {
				t.Fatal(err)
			}
			if it.RemoteID != tc.id || it.AuthMethod != tc.method {
				t.Fatalf("iToken %+v, want %s by %s", it, tc.id, tc.method)
			}
		}
	})
	t.Run("no SA: the host's WhyNot", func(t *testing.T) {
		pt, err := c.PToken(ctx, dialTCP(t, h.Clear))
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf("fixture: no IPSECKEY for 127.0.0.1 port %d", port(h.Clear))
		if pt.Protected || pt.Privacy || pt.IToken != 0 || pt.Why != wire.ReasonOENoRecords || pt.WhyText != want {
			t.Fatalf("pToken %+v, want OE_NO_RECORDS %q", pt, want)
		}
	})
	t.Run("queries in one generation take no new snapshot", func(t *testing.T) {
		conn := dialTCP(t, h.Web)
		before := h.Snapshots()
		for range 50 {
			pt, err := c.PToken(ctx, conn)
			if err != nil || !pt.Protected {
				t.Fatalf("pToken %+v, %v", pt, err)
			}
			if err := c.Release(ctx, pt.Handle); err != nil {
				t.Fatal(err)
			}
		}
		if n := h.Snapshots() - before; n != 0 {
			t.Fatalf("50 queries in one generation took %d snapshots, want 0", n)
		}
	})
	t.Run("a new SA: event, and the next queries see it", func(t *testing.T) {
		ev, err := client.DialEvents(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		defer ev.Close()
		conn := dialTCP(t, h.Late)
		sid, pt, err := ev.Subscribe(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if pt.Protected {
			t.Fatalf("before the SA: %+v", pt)
		}
		before := h.Snapshots()
		h.AddLate()
		select {
		case e, ok := <-ev.C():
			if !ok {
				t.Fatalf("events connection closed: %v", ev.Err())
			}
			if e.Subscription != sid || e.Kind != wire.EventUp || !e.State.Protected {
				t.Fatalf("event %+v, want UP of subscription %d", e, sid)
			}
		case <-ctx.Done():
			t.Fatal("no UP event after the SA came up")
		}
		// The event was sent after the module saw the new generation, so
		// a query now must see the SA too.
		pt, err = c.PToken(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if !pt.Protected || pt.IToken == 0 {
			t.Fatalf("after the SA came up: %+v", pt)
		}
		it, err := c.IToken(ctx, pt.IToken)
		if err != nil || it.RemoteID != "late.example" {
			t.Fatalf("iToken %+v, %v", it, err)
		}
		if n := h.Snapshots() - before; n < 1 || n > 2 {
			t.Fatalf("a generation move took %d snapshots, want 1 (2 if the event and the query raced)", n)
		}
	})
	t.Run("PROTECT asks the host", func(t *testing.T) {
		g, err := c.Protect(ctx, dialTCP(t, h.Clear), client.Request{Level: wire.LevelEncryption})
		if err != nil {
			t.Fatal(err)
		}
		// The host's refusal reaches the application; the socket stays
		// pinned (PinTarget) so nothing leaves in clear.
		if !g.Refused() || g.PToken.Why != wire.ReasonNoPolicy || !strings.Contains(g.PToken.WhyText, "fixture: no conn covers") || g.Pin == 0 {
			t.Fatalf("PROTECT of an uncovered flow: %+v", g)
		}
	})
}

package tokenapi_test

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/client"
	"github.com/obol-ipsec/obol/tokenapi/tokenapitest"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// fakeProtector answers PROTECT with a fixed outcome and records requests.
type fakeProtector struct {
	mu     sync.Mutex
	target tokenapi.PinTarget
	out    tokenapi.ProtectOutcome
	reqs   []tokenapi.ProtectRequest
}

func (f *fakeProtector) PinTarget(context.Context) (tokenapi.PinTarget, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.target, nil
}

func (f *fakeProtector) Protect(_ context.Context, r tokenapi.ProtectRequest) (tokenapi.ProtectOutcome, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reqs = append(f.reqs, r)
	return f.out, nil
}

func (f *fakeProtector) set(t tokenapi.PinTarget, o tokenapi.ProtectOutcome) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.target, f.out = t, o
}

func (f *fakeProtector) last() tokenapi.ProtectRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.reqs[len(f.reqs)-1]
}

// boundDevice reads SO_BINDTODEVICE back from the application's socket.
func boundDevice(t *testing.T, c *net.TCPConn) string {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var dev string
	var gerr error
	rc.Control(func(fd uintptr) { dev, gerr = unix.GetsockoptString(int(fd), unix.SOL_SOCKET, unix.SO_BINDTODEVICE) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return dev
}

func TestProtect(t *testing.T) {
	facts := tokenapitest.NewPortFacts()
	lns := tokenapitest.Listeners(t, facts, map[string]tokenapi.Protection{
		"oe":    {Protected: true, Child: gcm, Peer: peerA},
		"null":  {Protected: true, Child: tokenapi.Child{IKEName: "n", Protocol: "ESP", EncrAlg: "NULL", IntegAlg: "HMAC_SHA2_256_128", IntegKey: 128}, Peer: peerB},
		"clear": {Why: wire.ReasonNoPolicy, WhyText: "no policy"},
	})
	prot := &fakeProtector{}
	_, sock := tokenapitest.ServeProtect(t, tokenapi.Config{}, facts, prot)
	userspace := tokenapi.PinTarget{Datapath: "userspace", Device: "lo"}
	kernel := tokenapi.PinTarget{Datapath: "kernel"}
	loop := netip.MustParseAddr("127.0.0.1")
	done := tokenapi.ProtectOutcome{}
	tests := []struct {
		name    string
		scen    string
		req     client.Request
		target  tokenapi.PinTarget
		out     tokenapi.ProtectOutcome
		granted wire.Level
		why     wire.Reason
		pin     wire.Pin
	}{
		{"reuse an OE SA", "oe", client.Request{Level: wire.LevelEncryption}, userspace, done, wire.LevelEncryption, 0, wire.PinDevice},
		{"named peer matches (@, case)", "oe", client.Request{Level: wire.LevelBTNS, PeerID: "192.0.2.2"}, userspace, done, wire.LevelEncryption, 0, wire.PinDevice},
		{"named peer differs", "oe", client.Request{Level: wire.LevelEncryption, PeerID: "@moon.example"}, userspace, done, wire.LevelNone, wire.ReasonPeerMismatch, wire.PinDevice},
		{"ESP-NULL is not encryption", "null", client.Request{Level: wire.LevelEncryption}, userspace, done, wire.LevelNone, wire.ReasonInsufficient, wire.PinDevice},
		{"ESP-NULL gives integrity", "null", client.Request{Level: wire.LevelIntegrity}, userspace, done, wire.LevelIntegrity, 0, wire.PinDevice},
		{"no OE records: refused, pinned", "clear", client.Request{Level: wire.LevelEncryption}, userspace, tokenapi.ProtectOutcome{Why: wire.ReasonOENoRecords, WhyText: "no OE records for 127.0.0.1"}, wire.LevelNone, wire.ReasonOENoRecords, wire.PinDevice},
		{"kernel ESP: XFRM pin", "oe", client.Request{Level: wire.LevelEncryption}, kernel, tokenapi.ProtectOutcome{OuterLocal: loop, OuterRemote: loop}, wire.LevelEncryption, 0, wire.PinXFRM},
		{"kernel ESP, gateway outer addresses", "oe", client.Request{Level: wire.LevelEncryption}, kernel, tokenapi.ProtectOutcome{OuterLocal: netip.MustParseAddr("192.0.2.1"), OuterRemote: netip.MustParseAddr("192.0.2.2")}, wire.LevelEncryption, 0, wire.PinXFRM},
		{"clear granted: bypass", "clear", client.Request{Level: wire.LevelClear}, userspace, done, wire.LevelClear, 0, wire.PinBypass},
		{"clear denied: still pinned", "clear", client.Request{Level: wire.LevelClear}, userspace, tokenapi.ProtectOutcome{Why: wire.ReasonDenied, WhyText: "needs privilege"}, wire.LevelNone, wire.ReasonDenied, wire.PinDevice},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := client.Dial(ctx, sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			conn, err := net.DialTCP("tcp", nil, lns[tt.scen].Addr().(*net.TCPAddr))
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			prot.set(tt.target, tt.out)
			g, err := c.Protect(ctx, conn, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if g.Granted != tt.granted || g.Pin != tt.pin || (tt.granted == wire.LevelNone && g.PToken.Why != tt.why) {
				t.Fatalf("grant %+v, want granted %s why %s pin %s", g, tt.granted, tt.why, tt.pin)
			}
			r := prot.last()
			if r.Level != tt.req.Level || r.PeerID != tt.req.PeerID || r.Flow.Remote.Port() != uint16(lns[tt.scen].Addr().(*net.TCPAddr).Port) {
				t.Errorf("the host got %+v", r)
			}
			if tt.req.Level == wire.LevelClear && !r.MayLower {
				t.Errorf("a root caller (CAP_NET_ADMIN) was not allowed to lower: %+v", r)
			}
			if dev := boundDevice(t, conn); (tt.pin == wire.PinDevice) != (dev == "lo") {
				t.Errorf("socket bound to %q with pin %s", dev, tt.pin)
			}
			if g.PToken.Protected && g.PeerID != peerOf(tt.scen) {
				t.Errorf("peer %q", g.PeerID)
			}
			// The grant's pToken is a live one, answered alone by PTOKEN_GET.
			pt, err := c.Get(ctx, g.PToken.Handle)
			if err != nil || pt.Protected != g.PToken.Protected || pt.Audit != g.PToken.Audit {
				t.Errorf("PTOKEN_GET: %+v %v, want %+v", pt, err, g.PToken)
			}
		})
	}
}

func peerOf(scen string) string {
	switch scen {
	case "oe":
		return peerA.RemoteID
	case "null":
		return peerB.RemoteID
	}
	return ""
}

// TestProtectErrors: bad requests leave the socket alone.
func TestProtectErrors(t *testing.T) {
	facts := tokenapitest.NewPortFacts()
	lns := tokenapitest.Listeners(t, facts, map[string]tokenapi.Protection{"x": {Why: wire.ReasonNoPolicy}})
	_, sock := tokenapitest.ServeProtect(t, tokenapi.Config{}, facts, &fakeProtector{target: tokenapi.PinTarget{Datapath: "userspace", Device: "lo"}})
	_, plain := tokenapitest.Serve(t, tokenapi.Config{}, facts)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := net.DialTCP("tcp", nil, lns["x"].Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tests := []struct {
		name string
		sock string
		req  client.Request
		code wire.ErrorCode
	}{
		{"no level", sock, client.Request{}, wire.ErrCodeBadLevel},
		{"unknown level", sock, client.Request{Level: 9}, wire.ErrCodeBadLevel},
		{"server without influence", plain, client.Request{Level: wire.LevelEncryption}, wire.ErrCodeUnknownType},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := client.Dial(ctx, tt.sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Protect(ctx, conn, tt.req); !client.IsCode(err, tt.code) {
				t.Fatalf("err = %v, want %s", err, tt.code)
			}
			if dev := boundDevice(t, conn); dev != "" {
				t.Errorf("socket bound to %q after an error", dev)
			}
		})
	}
}

package tokenapi_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/client"
	"github.com/obol-ipsec/obol/tokenapi/tokenapitest"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

func key(b byte) tokenapi.PublicKey {
	return tokenapi.PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{b}, 32)}
}

var (
	peerA = tokenapi.Peer{RemoteID: "192.0.2.2", PeerKey: key(0xA), OurKey: key(0x1),
		Evidence: tokenapi.Evidence{ConnClass: "public key", OE: true, DNSSEC: "secure", PinnedKey: true}}
	peerB = tokenapi.Peer{RemoteID: "CN=moon", Evidence: tokenapi.Evidence{ConnClass: "public key", TrustedCADN: "CN=Lab CA", PeerCertDN: "CN=moon"}}
	gcm   = tokenapi.Child{IKEName: "obol-oe-1", Name: "oe", Protocol: "ESP", Mode: "TRANSPORT", EncrAlg: "AES_GCM_16", EncrKey: 256, IPComp: true, Label: "system_u:object_r:x_t:s0"}
)

type env struct {
	srv   *tokenapi.Server
	facts *tokenapitest.PortFacts
	sock  string
	lns   map[string]*net.TCPListener
}

// newEnv starts a server and one loopback listener per scenario; facts
// are keyed by each listener's port.
func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{facts: tokenapitest.NewPortFacts()}
	scen := map[string]tokenapi.Protection{
		"a1":    {Protected: true, Child: gcm, Peer: peerA},
		"a2":    {Protected: true, Child: tokenapi.Child{IKEName: "obol-oe-1", Name: "oe", Protocol: "ESP", EncrAlg: "CHACHA20_POLY1305", EncrKey: 256}, Peer: peerA},
		"b":     {Protected: true, Child: gcm, Peer: peerB},
		"null":  {Protected: true, Child: tokenapi.Child{Protocol: "ESP", EncrAlg: "NULL", IntegAlg: "HMAC_SHA2_256_128", IntegKey: 128}, Peer: peerA},
		"3des":  {Protected: true, Child: tokenapi.Child{Protocol: "ESP", EncrAlg: "3DES_CBC", EncrKey: 192, IntegAlg: "HMAC_SHA1_96"}, Peer: peerB},
		"clear": {Why: wire.ReasonNoSA, WhyText: "trap installed, IKE_SA negotiating"},
	}
	e.lns = tokenapitest.Listeners(t, e.facts, scen)
	e.srv, e.sock = tokenapitest.Serve(t, tokenapi.Config{UntrustedCiphers: []string{"3DES_CBC"}, MaxPTokens: 8}, e.facts)
	return e
}

func (e *env) dial(t testing.TB, name string) *net.TCPConn {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, e.lns[name].Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) client(t testing.TB) *client.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, e.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctx(t testing.TB) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	t.Cleanup(cancel)
	return c
}

func TestPTokens(t *testing.T) {
	e := newEnv(t)
	c := e.client(t)
	tests := []struct {
		conn                             string
		protected, privacy, integ, compr bool
		why                              wire.Reason
		method                           wire.AuthMethod
	}{
		{"a1", true, true, true, true, wire.ReasonNone, wire.AuthDNSSEC},
		{"a2", true, true, true, false, wire.ReasonNone, wire.AuthDNSSEC},
		{"b", true, true, true, true, wire.ReasonNone, wire.AuthPKIXInline},
		{"null", true, false, true, false, wire.ReasonNone, wire.AuthDNSSEC},
		{"3des", true, false, true, false, wire.ReasonNone, wire.AuthPKIXInline},
		{"clear", false, false, false, false, wire.ReasonNoSA, wire.AuthNone},
	}
	for _, tc := range tests {
		t.Run(tc.conn, func(t *testing.T) {
			pt, err := c.PToken(ctx(t), e.dial(t, tc.conn))
			if err != nil {
				t.Fatal(err)
			}
			if pt.Protected != tc.protected || pt.Privacy != tc.privacy || pt.Integrity != tc.integ || pt.Compression != tc.compr || pt.Why != tc.why {
				t.Fatalf("pToken %+v", pt)
			}
			if pt.Handle == 0 || pt.Audit == "" {
				t.Fatalf("pToken without handle or audit: %+v", pt)
			}
			if !tc.protected {
				if pt.IToken != 0 || pt.WhyText == "" {
					t.Fatalf("unprotected pToken %+v", pt)
				}
				return
			}
			it, err := c.IToken(ctx(t), pt.IToken)
			if err != nil {
				t.Fatal(err)
			}
			if it.AuthMethod != tc.method || it.Handle != pt.IToken || it.Audit == "" {
				t.Fatalf("iToken %+v", it)
			}
			again, err := c.Get(ctx(t), pt.Handle)
			if err != nil || again != pt {
				t.Fatalf("Get: %v %+v, want %+v", err, again, pt)
			}
		})
	}
}

func TestITokenIdentity(t *testing.T) {
	e := newEnv(t)
	c1, c2 := e.client(t), e.client(t)
	p1, err := c1.PToken(ctx(t), e.dial(t, "a1"))
	if err != nil {
		t.Fatal(err)
	}
	p2, err := c2.PToken(ctx(t), e.dial(t, "a2")) // same peer, another SA, another client
	if err != nil {
		t.Fatal(err)
	}
	pb, err := c1.PToken(ctx(t), e.dial(t, "b"))
	if err != nil {
		t.Fatal(err)
	}
	if p1.IToken == 0 || p1.IToken != p2.IToken {
		t.Errorf("same peer, iTokens %x and %x", p1.IToken, p2.IToken)
	}
	if pb.IToken == p1.IToken {
		t.Errorf("different peers share iToken %x", pb.IToken)
	}
	it, err := c1.IToken(ctx(t), p1.IToken)
	if err != nil {
		t.Fatal(err)
	}
	if it.PubKeyID != "CgoKCgoKC" { // base64 of 0x0a bytes
		t.Errorf("pubKeyID %q", it.PubKeyID)
	}
	if want := tokenapi.ChannelBinding(peerA.PeerKey, peerA.OurKey); !bytes.Equal(it.ChannelBinding, want) || len(want) != 68 {
		t.Errorf("channel binding %x", it.ChannelBinding)
	}
	ib, err := c1.IToken(ctx(t), pb.IToken)
	if err != nil {
		t.Fatal(err)
	}
	if ib.CertDN != "CN=moon" || ib.CADN != "CN=Lab CA" || ib.RemoteID != "CN=moon" {
		t.Errorf("PKIX iToken %+v", ib)
	}
	// A client may only read iTokens it learned from its own pTokens.
	if _, err := c2.IToken(ctx(t), pb.IToken); !client.IsCode(err, wire.ErrCodeUnknownHandle) {
		t.Errorf("foreign iToken: %v", err)
	}
	// pToken handles are per connection.
	if _, err := c2.Get(ctx(t), pb.Handle); !client.IsCode(err, wire.ErrCodeUnknownHandle) {
		t.Errorf("foreign pToken: %v", err)
	}
	// Release frees a handle and forgets the iToken once no pToken holds it.
	if err := c1.Release(ctx(t), pb.Handle); err != nil {
		t.Fatal(err)
	}
	if _, err := c1.Get(ctx(t), pb.Handle); !client.IsCode(err, wire.ErrCodeUnknownHandle) {
		t.Errorf("released pToken: %v", err)
	}
	if _, err := c1.IToken(ctx(t), pb.IToken); !client.IsCode(err, wire.ErrCodeUnknownHandle) {
		t.Errorf("iToken of released pToken: %v", err)
	}
}

func TestHandlesFreedOnDisconnect(t *testing.T) {
	e := newEnv(t)
	c := e.client(t)
	for _, n := range []string{"a1", "a2", "b", "clear"} {
		if _, err := c.PToken(ctx(t), e.dial(t, n)); err != nil {
			t.Fatal(err)
		}
	}
	if st := e.srv.Stats(); st != (tokenapi.Stats{Clients: 1, PTokens: 4, ITokens: 2}) {
		t.Fatalf("stats %+v", st)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for e.srv.Stats() != (tokenapi.Stats{}) {
		if time.Now().After(deadline) {
			t.Fatalf("after disconnect: %+v", e.srv.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestPTokenLimit(t *testing.T) {
	e := newEnv(t)
	c := e.client(t)
	conn := e.dial(t, "a1")
	for i := range 9 {
		_, err := c.PToken(ctx(t), conn)
		if i < 8 && err != nil {
			t.Fatal(err)
		}
		if i == 8 && !client.IsCode(err, wire.ErrCodeLimit) {
			t.Fatalf("pToken beyond max_ptokens_per_client: %v", err)
		}
	}
}

func TestRefusals(t *testing.T) {
	e := newEnv(t)
	c := e.client(t)
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := c.PToken(ctx(t), r); !client.IsCode(err, wire.ErrCodeNotSocket) {
		t.Errorf("pipe: %v", err)
	}
	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	if _, err := c.PToken(ctx(t), udp); !client.IsCode(err, wire.ErrCodeNotConnected) {
		t.Errorf("unconnected udp: %v", err)
	}
	if _, err := c.PToken(ctx(t), e.lns["a1"]); !client.IsCode(err, wire.ErrCodeNotConnected) {
		t.Errorf("listener: %v", err)
	}
	// A connected UDP socket works.
	cu, err := net.DialUDP("udp", nil, udp.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer cu.Close()
	if pt, err := c.PToken(ctx(t), cu); err != nil || pt.Protected || pt.Why != wire.ReasonNoPolicy {
		t.Errorf("connected udp: %v %+v", err, pt)
	}
	// The server side of an accepted connection (MPTCP with Go's
	// listeners) works too.
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	e.facts.Set(ln.Addr().(*net.TCPAddr).Port, tokenapi.Protection{Protected: true, Child: gcm, Peer: peerB})
	go func() {
		d, err := net.Dial("tcp4", ln.Addr().String())
		if err == nil {
			time.Sleep(time.Second)
			d.Close()
		}
	}()
	acc, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer acc.Close()
	if pt, err := c.PToken(ctx(t), acc.(*net.TCPConn)); err != nil || !pt.Privacy {
		t.Errorf("accepted conn: %v %+v", err, pt)
	}
}

// raw sends one hand-made request without the Go client's help.
func raw(t *testing.T, sock string, req []byte) wire.Message {
	t.Helper()
	c, err := net.Dial("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(req); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, wire.MaxMessage)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	m, err := wire.Decode(buf[:n])
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRawRequests(t *testing.T) {
	e := newEnv(t)
	// A descriptor number in the body is no proof of ownership.
	fdNumber := uint64(e.dial(t, "a1").RemoteAddr().(*net.TCPAddr).Port)
	noFD, _ := wire.NewBuilder(wire.TypePTokenQuery, 5).U64(999, fdNumber).Bytes()
	v2, _ := wire.NewBuilder(wire.TypePTokenQuery, 6).Bytes()
	v2[4] = 2
	unknown, _ := wire.NewBuilder(wire.Type(0x42), 7).Bytes()
	critical, _ := wire.NewBuilder(wire.TypePTokenGet, 8).U64(wire.AttrPToken, 1).U8(0x8000|500, 1).Bytes()
	noHandle, _ := wire.NewBuilder(wire.TypeITokenGet, 9).Bytes()
	tests := []struct {
		name string
		req  []byte
		code wire.ErrorCode
		id   uint32
	}{
		{"no fd", noFD, wire.ErrCodeNoFD, 5},
		{"version", v2, wire.ErrCodeUnsupportedVersion, 6},
		{"unknown type", unknown, wire.ErrCodeUnknownType, 7},
		{"critical attribute", critical, wire.ErrCodeBadMessage, 8},
		{"missing handle", noHandle, wire.ErrCodeBadMessage, 9},
		{"garbage", []byte("GET / HTTP/1.0\r\n\r\n"), wire.ErrCodeBadMessage, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := raw(t, e.sock, tc.req)
			code, _ := m.U16(wire.AttrErrorCode)
			if m.Type != wire.TypeError || wire.ErrorCode(code) != tc.code || m.ID != tc.id || m.String(wire.AttrErrorText) == "" {
				t.Fatalf("reply %s id %d code %s %q", m.Type, m.ID, wire.ErrorCode(code), m.String(wire.AttrErrorText))
			}
			if tc.code == wire.ErrCodeUnsupportedVersion {
				if v, _ := m.U8(wire.AttrMaxVersion); v != wire.Version {
					t.Errorf("max version %d", v)
				}
			}
		})
	}
}

func openFDs(t testing.TB) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("count open descriptors: %v", err)
	}
	return len(ents)
}

// The server never keeps a passed socket past its request.
func TestPassedSocketsNotKept(t *testing.T) {
	e := newEnv(t)
	c := e.client(t)
	conn := e.dial(t, "a1")
	if _, err := c.PToken(ctx(t), conn); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	for range 50 {
		pt, err := c.PToken(ctx(t), conn)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Release(ctx(t), pt.Handle); err != nil {
			t.Fatal(err)
		}
	}
	if after := openFDs(t); after != before {
		t.Fatalf("open descriptors %d -> %d: passed sockets leak", before, after)
	}
}

// allowListClientEnv makes the test binary act as a client of the socket
// it names and exit 0 only if the server refused it (see TestMain).
const allowListClientEnv = "TOKENAPI_TEST_DENIED_CLIENT"

func TestMain(m *testing.M) {
	if sock := os.Getenv(allowListClientEnv); sock != "" {
		os.Exit(deniedClient(sock))
	}
	os.Exit(m.Run())
}

func deniedClient(sock string) int {
	cx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := client.Dial(cx, sock)
	if err != nil {
		fmt.Fprintln(os.Stderr, "dial:", err)
		return 2
	}
	defer c.Close()
	if _, err := c.Get(cx, 1); !client.IsCode(err, wire.ErrCodeDenied) {
		fmt.Fprintln(os.Stderr, "not denied:", err)
		return 1
	}
	return 0
}

// A uid outside allow_uids is refused. Root is always admitted, so the
// client runs as a child process with uid and gid 65534.
func TestAllowList(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test needs root to run its client as another user; run it as root (make test does)")
	}
	facts := tokenapitest.NewPortFacts()
	dir, err := os.MkdirTemp("", "tokenapi-allow-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "d.sock")
	srv, err := tokenapi.NewServer(tokenapi.Config{Socket: sock, AllowUIDs: []uint32{4242}}, facts, nil)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	cx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go srv.Serve(cx, ln)
	// The test binary lives in go's private build directory: give the
	// child a copy it may run.
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "client.test")
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^$")
	cmd.Env = append(os.Environ(), allowListClientEnv+"="+sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("a uid not in allow_uids was not refused: %v\n%s", err, out)
	}
}

func TestConfigValidate(t *testing.T) {
	for _, cfg := range []tokenapi.Config{
		{Socket: "relative.sock"},
		{Socket: "/" + string(bytes.Repeat([]byte("x"), 120))},
		{Socket: "/run/x", Mode: 0o1777},
		{Socket: "/run/x", UntrustedCiphers: []string{""}},
		{Socket: "/run/x", MaxSubscriptions: -1},
		{Socket: "/run/x", MaxQueuedEvents: -1},
	} {
		if _, err := tokenapi.NewServer(cfg, tokenapitest.NewPortFacts(), nil); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}

// BenchmarkPTokenQuery is one PTOKEN_QUERY round trip over the unix
// socket: fd passing, socket inspection, facts lookup, reply; the pToken
// is released in the same loop so the handle table stays small.
func BenchmarkPTokenQuery(b *testing.B) {
	e := newEnv(b)
	c := e.client(b)
	conn := e.dial(b, "a1")
	cx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		pt, err := c.PToken(cx, conn)
		if err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := c.Release(cx, pt.Handle); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

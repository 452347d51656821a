// Package ctest tests the C client of the token API (tokenapi/c) against a
// real tokenapi.Server, with the same requests through the Go client
// (tokenapi/client) as the reference, and against a fake server that sends
// malformed replies. It builds the C code with gcc and runs the test driver
// under valgrind when valgrind is installed.
package ctest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/client"
	"github.com/obol-ipsec/obol/tokenapi/tokenapitest"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// cflags are the warnings the C code must build clean with.
var cflags = []string{"-Wall", "-Wextra", "-Werror", "-std=c11", "-D_GNU_SOURCE", "-O2", "-g"}

type binaries struct {
	driver, server string
}

// build compiles the library (C11 and C99), archives it like the Makefile
// does, and links the test driver and the example server.
func build(t *testing.T) binaries {
	t.Helper()
	if _, err := exec.LookPath("gcc"); err != nil {
		t.Fatalf("gcc is needed to test the C client (make deps installs it): %v", err)
	}
	src, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	run := func(name string, args ...string) {
		t.Helper()
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
		}
	}
	obj, lib := filepath.Join(dir, "ipsec_token.o"), filepath.Join(dir, "libipsec_token.a")
	run("gcc", append(cflags, "-c", filepath.Join(src, "ipsec_token.c"), "-o", obj)...)
	run("gcc", "-Wall", "-Wextra", "-Werror", "-pedantic", "-std=c99", "-c", filepath.Join(src, "ipsec_token.c"), "-o", filepath.Join(dir, "c99.o"))
	run("ar", "rcs", lib, obj)
	b := binaries{driver: filepath.Join(dir, "testdriver"), server: filepath.Join(dir, "example_server")}
	run("gcc", append(cflags, "-I", src, filepath.Join(src, "testdriver.c"), lib, "-o", b.driver)...)
	run("gcc", append(cflags, "-I", src, filepath.Join(src, "example_server.c"), lib, "-o", b.server)...)
	return b
}

// runDriver runs the C driver with files as descriptors 3, 4, ... and
// returns its output. Under valgrind any memory error or leak fails.
func runDriver(t *testing.T, b binaries, sock string, files []*os.File, ops []string) string {
	t.Helper()
	args := append([]string{sock}, ops...)
	name := b.driver
	if vg, err := exec.LookPath("valgrind"); err == nil {
		args = append([]string{"-q", "--error-exitcode=1", "--leak-check=full", b.driver}, args...)
		name = vg
	}
	cmd := exec.Command(name, args...)
	cmd.ExtraFiles = files
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s %v: %v\nstdout:\n%s\nstderr:\n%s", name, args, err, stdout.String(), stderr.String())
	}
	if stderr.Len() > 0 {
		t.Fatalf("driver wrote to stderr:\n%s", stderr.String())
	}
	return stdout.String()
}

func TestValgrindUsed(t *testing.T) {
	if _, err := exec.LookPath("valgrind"); err != nil {
		t.Log("valgrind not installed: the C driver runs without memory checking")
		return
	}
	t.Log("valgrind installed: the C driver runs under valgrind --error-exitcode=1 --leak-check=full")
}

// esc is testdriver.c's esc: bytes outside printable ASCII and '\' as \xNN.
func esc(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c < 0x7f && c != '\\' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "\\x%02x", c)
		}
	}
	return b.String()
}

func ptLines(w *strings.Builder, pt client.PToken) {
	fmt.Fprintf(w, "pt.handle=%d\npt.itoken=%d\n", pt.Handle, pt.IToken)
	fmt.Fprintf(w, "pt.protected=%t\npt.privacy=%t\npt.integrity=%t\npt.compression=%t\n", pt.Protected, pt.Privacy, pt.Integrity, pt.Compression)
	fmt.Fprintf(w, "pt.why=%s\npt.why_text=%s\npt.audit=%s\npt.label=%s\n", pt.Why, esc(pt.WhyText), esc(pt.Audit), esc(pt.Label))
}

func itLines(w *strings.Builder, it client.IToken) {
	fmt.Fprintf(w, "it.handle=%d\nit.auth=%s\nit.remote_id=%s\nit.cert_dn=%s\nit.ca_dn=%s\nit.pubkey_id=%s\nit.channel_binding=%s\nit.audit=%s\n",
		it.Handle, it.AuthMethod, esc(it.RemoteID), esc(it.CertDN), esc(it.CADN), esc(it.PubKeyID), hex.EncodeToString(it.ChannelBinding), esc(it.Audit))
}

// goRun runs ops like testdriver.c does, with the Go client, and prints
// the same lines.
func goRun(t *testing.T, sock string, files []*os.File, ops []string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var w strings.Builder
	var lastPT client.PTokenHandle
	var lastIT client.ITokenHandle
	var events *client.Events // opened by the first sub op, like the C driver's one connection
	var lastSub client.SubscriptionID
	defer func() {
		if events != nil {
			events.Close()
		}
	}()
	file := func(op string, n uint64) *os.File {
		i := int(n) - 3
		if i < 0 || i >= len(files) {
			t.Fatalf("op %q: no such descriptor", op)
		}
		return files[i]
	}
	num := func(op string, def uint64) uint64 {
		_, a, ok := strings.Cut(op, ":")
		if !ok {
			return def
		}
		v, err := strconv.ParseUint(a, 10, 64)
		if err != nil {
			t.Fatalf("op %q: %v", op, err)
		}
		return v
	}
	for _, op := range ops {
		fmt.Fprintf(&w, "op=%s\n", op)
		var err error
		switch {
		case strings.HasPrefix(op, "q:"):
			i := int(num(op, 0)) - 3
			if i < 0 || i >= len(files) {
				t.Fatalf("op %q: no such descriptor", op)
			}
			var pt client.PToken
			if pt, err = c.PToken(ctx, files[i]); err == nil {
				ptLines(&w, pt)
				lastPT, lastIT = pt.Handle, pt.IToken
			}
		case strings.HasPrefix(op, "p:"):
			parts := strings.SplitN(op, ":", 4)
			fd, _ := strconv.Atoi(parts[1])
			level, _ := strconv.Atoi(parts[2])
			req := client.Request{Level: wire.Level(level)}
			if len(parts) == 4 {
				req.PeerID = parts[3]
			}
			if fd-3 < 0 || fd-3 >= len(files) {
				t.Fatalf("op %q: no such descriptor", op)
			}
			var g client.Grant
			if g, err = c.Protect(ctx, files[fd-3], req); err == nil {
				why, whyText := wire.ReasonNone, ""
				if g.Refused() {
					why, whyText = g.PToken.Why, g.PToken.WhyText
				}
				fmt.Fprintf(&w, "g.granted=%s\ng.why=%s\ng.why_text=%s\ng.pin=%s\ng.pin_iface=%s\ng.peer_id=%s\n",
					g.Granted, why, esc(whyText), g.Pin, esc(g.Iface), esc(g.PeerID))
				ptLines(&w, g.PToken)
				lastPT, lastIT = g.PToken.Handle, g.PToken.IToken
			}
		case strings.HasPrefix(op, "get"):
			var pt client.PToken
			if pt, err = c.Get(ctx, client.PTokenHandle(num(op, uint64(lastPT)))); err == nil {
				ptLines(&w, pt)
			}
		case strings.HasPrefix(op, "rel"):
			h := num(op, uint64(lastPT))
			if err = c.Release(ctx, client.PTokenHandle(h)); err == nil {
				fmt.Fprintf(&w, "released=%d\n", h)
			}
		case strings.HasPrefix(op, "it"):
			var it client.IToken
			if events != nil {
				it, err = events.IToken(ctx, client.ITokenHandle(num(op, uint64(lastIT))))
			} else {
				it, err = c.IToken(ctx, client.ITokenHandle(num(op, uint64(lastIT))))
			}
			if err == nil {
				itLines(&w, it)
			}
		case strings.HasPrefix(op, "sub:"):
			if events == nil {
				if events, err = client.DialEvents(ctx, sock); err != nil {
					t.Fatal(err)
				}
			}
			var sid client.SubscriptionID
			var pt client.PToken
			if sid, pt, err = events.Subscribe(ctx, file(op, num(op, 0))); err == nil {
				fmt.Fprintf(&w, "sub=%d\n", sid)
				ptLines(&w, pt)
				lastSub, lastIT = sid, pt.IToken
			}
		case strings.HasPrefix(op, "unsub"):
			id := num(op, uint64(lastSub))
			if err = events.Unsubscribe(ctx, client.SubscriptionID(id)); err == nil {
				fmt.Fprintf(&w, "unsubscribed=%d\n", id)
			}
		case op == "ev":
			select {
			case ev, ok := <-events.C():
				if !ok {
					t.Fatalf("events ended: %v", events.Err())
				}
				fmt.Fprintf(&w, "ev.sub=%d\nev.kind=%s\n", ev.Subscription, ev.Kind)
				ptLines(&w, ev.State)
				lastIT = ev.State.IToken
			case <-ctx.Done():
				t.Fatalf("op ev: no event")
			}
		case strings.HasPrefix(op, "poll:"):
			// The Go client's events wait in C; poll's answer is whether
			// one is there within the time.
			deadline := time.Now().Add(time.Duration(num(op, 0)) * time.Millisecond)
			for len(events.C()) == 0 && time.Now().Before(deadline) {
				time.Sleep(5 * time.Millisecond)
			}
			fmt.Fprintf(&w, "readable=%t\n", len(events.C()) > 0)
		case strings.HasPrefix(op, "poke:"):
			fmt.Fprintf(&w, "poked=%s\n", pokeTest(t, op[len("poke:"):]))
		case strings.HasPrefix(op, "from:"):
			parts := strings.Split(op[len("from:"):], ":")
			fd, _ := strconv.ParseUint(parts[0], 10, 64)
			port, _ := strconv.ParseUint(parts[2], 10, 16)
			from := netip.AddrPortFrom(netip.MustParseAddr(parts[1]), uint16(port))
			var local netip.Addr
			if len(parts) > 3 {
				local = netip.MustParseAddr(parts[3])
			}
			var pt client.PToken
			if pt, err = c.PTokenFrom(ctx, file(op, fd), from, local); err == nil {
				ptLines(&w, pt)
				lastPT, lastIT = pt.Handle, pt.IToken
			}
		case strings.HasPrefix(op, "recv:"):
			pc, ferr := net.FilePacketConn(file(op, num(op, 0)))
			if ferr != nil {
				t.Fatal(ferr)
			}
			buf := make([]byte, 256)
			n, from, pt, rerr := c.ReadFromUDP(ctx, pc.(*net.UDPConn), buf)
			pc.Close()
			err = rerr
			if n > 0 || err == nil {
				fmt.Fprintf(&w, "dgram.data=%s\ndgram.from=%s\n", esc(string(buf[:n])), from)
			}
			if err == nil {
				ptLines(&w, pt)
				lastPT, lastIT = pt.Handle, pt.IToken
			}
		default:
			t.Fatalf("goRun: op %q", op)
		}
		if err != nil {
			var e *client.Error
			if !errors.As(err, &e) {
				t.Fatalf("op %q: Go client: %v", op, err)
			}
			fmt.Fprintf(&w, "err=%s\n", e.Code)
		}
	}
	return w.String()
}

func key(b byte) tokenapi.PublicKey {
	return tokenapi.PublicKey{Algorithm: "ed25519", Data: bytes.Repeat([]byte{b}, 32)}
}

var (
	peerOE   = tokenapi.Peer{RemoteID: "192.0.2.2", PeerKey: key(0xA), OurKey: key(0x1), Evidence: tokenapi.Evidence{ConnClass: "public key", OE: true, DNSSEC: "secure"}}
	peerPKIX = tokenapi.Peer{RemoteID: "CN=moon, O=Lab", Evidence: tokenapi.Evidence{ConnClass: "public key", TrustedCADN: "CN=Lab CA", PeerCertDN: "CN=moon, O=Lab"}}
	gcm      = tokenapi.Child{IKEName: "obol-oe-1", Name: "oe", Protocol: "ESP", Mode: "TRANSPORT", EncrAlg: "AES_GCM_16", EncrKey: 256, IPComp: true, Label: "system_u:object_r:x_t:s0"}
	scenes   = map[string]tokenapi.Protection{
		"gcm":   {Protected: true, Child: gcm, Peer: peerOE},
		"pkix":  {Protected: true, Child: gcm, Peer: peerPKIX},
		"null":  {Protected: true, Child: tokenapi.Child{Protocol: "ESP", EncrAlg: "NULL", IntegAlg: "HMAC_SHA2_256_128", IntegKey: 128}, Peer: peerOE},
		"3des":  {Protected: true, Child: tokenapi.Child{Protocol: "ESP", EncrAlg: "3DES_CBC", EncrKey: 192, IntegAlg: "HMAC_SHA1_96"}, Peer: peerPKIX},
		"clear": {Why: wire.ReasonNoSA, WhyText: "trap installed, IKE_SA negotiating\n(\"quoted\" \\ ünïcode)"},
	}
)

type env struct {
	sock  string
	facts *tokenapitest.PortFacts
	lns   map[string]*net.TCPListener
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{facts: tokenapitest.NewPortFacts()}
	e.lns = tokenapitest.Listeners(t, e.facts, scenes)
	_, e.sock = tokenapitest.ServeProtect(t, tokenapi.Config{UntrustedCiphers: []string{"3DES_CBC"}, MaxPTokens: 8}, e.facts, loopProtector{})
	return e
}

// loopProtector answers PROTECT as the userspace datapath with lo standing
// in for the TUN device; CLEAR is refused (a configured tunnel wins).
type loopProtector struct{}

func (loopProtector) PinTarget(context.Context) (tokenapi.PinTarget, error) {
	return tokenapi.PinTarget{Datapath: "userspace", Device: "lo"}, nil
}

func (loopProtector) Protect(_ context.Context, r tokenapi.ProtectRequest) (tokenapi.ProtectOutcome, error) {
	var out tokenapi.ProtectOutcome
	if r.Level == wire.LevelClear {
		out.Why, out.WhyText = wire.ReasonPolicyWins, "configured tunnel \"moon\" covers the flow"
	}
	return out, nil
}

// file returns a descriptor of the client side of a TCP connection to the
// listener of scene name.
func (e *env) file(t *testing.T, name string) *os.File {
	t.Helper()
	c, err := net.DialTCP("tcp", nil, e.lns[name].Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	f, err := c.File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// TestSameAsGoClient runs each op list through the C driver and the Go
// client on the same sockets and requires identical output, plus lines
// that pin the expected values.
func TestSameAsGoClient(t *testing.T) {
	b := build(t)
	e := newEnv(t)
	pipeR, pipeW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pipeR.Close(); pipeW.Close() })
	pair, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	unixA, unixB := os.NewFile(uintptr(pair[0]), "unixA"), os.NewFile(uintptr(pair[1]), "unixB")
	t.Cleanup(func() { unixA.Close(); unixB.Close() })
	listenFile := func() *os.File {
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		f, err := ln.File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	udpFile := func() *os.File {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		f, err := c.File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	nine := make([]string, 9)
	for i := range nine {
		nine[i] = "q:3"
	}

	tests := []struct {
		name  string
		files func() []*os.File
		ops   []string
		want  []string // lines the output must contain
	}{
		{"protected", func() []*os.File { return []*os.File{e.file(t, "gcm")} },
			[]string{"q:3", "it", "get", "rel", "get", "it"},
			[]string{"pt.handle=1", "pt.protected=true", "pt.privacy=true", "pt.integrity=true", "pt.compression=true", "pt.why=NONE",
				"pt.label=system_u:object_r:x_t:s0", "it.auth=DNSSEC", "it.remote_id=192.0.2.2", "it.pubkey_id=", "it.channel_binding=", "released=1", "err=UNKNOWN_HANDLE"}},
		{"pkix", func() []*os.File { return []*os.File{e.file(t, "pkix")} },
			[]string{"q:3", "it"},
			[]string{"pt.privacy=true", "it.auth=PKIX_INLINE", "it.cert_dn=CN=moon, O=Lab", "it.ca_dn=CN=Lab CA", "it.audit="}},
		{"esp-null", func() []*os.File { return []*os.File{e.file(t, "null")} },
			[]string{"q:3", "it"},
			[]string{"pt.protected=true", "pt.privacy=false", "pt.integrity=true", "it.auth=DNSSEC"}},
		{"untrusted-cipher", func() []*os.File { return []*os.File{e.file(t, "3des")} },
			[]string{"q:3", "it"},
			[]string{"pt.protected=true", "pt.privacy=false", "pt.integrity=true"}},
		{"unprotected", func() []*os.File { return []*os.File{e.file(t, "clear")} },
			[]string{"q:3", "it", "get"},
			[]string{"pt.protected=false", "pt.privacy=false", "pt.itoken=0", "pt.why=NO_SA",
				`pt.why_text=trap installed, IKE_SA negotiating\x0a("quoted" \x5c \xc3\xbcn\xc3\xafcode)`, "err=UNKNOWN_HANDLE"}},
		{"udp-no-policy", func() []*os.File { return []*os.File{udpFile()} },
			[]string{"q:3"},
			[]string{"pt.protected=false", "pt.why=NO_POLICY", "pt.why_text=no conn covers 127.0.0.1:9"}},
		{"two-sockets", func() []*os.File { return []*os.File{e.file(t, "gcm"), e.file(t, "null")} },
			[]string{"q:3", "q:4", "get:1", "rel:1", "get:1", "get:2", "it"},
			[]string{"pt.handle=2", "released=1", "err=UNKNOWN_HANDLE", "it.auth=DNSSEC"}},
		{"not-socket", func() []*os.File { return []*os.File{pipeR} }, []string{"q:3"}, []string{"err=NOT_SOCKET"}},
		{"not-inet", func() []*os.File { return []*os.File{unixA} }, []string{"q:3"}, []string{"err=NOT_INET"}},
		{"listening", func() []*os.File { return []*os.File{listenFile()} }, []string{"q:3"}, []string{"err=NOT_CONNECTED"}},
		{"unknown-handles", nil, []string{"get:99", "rel:99", "it:12345", "it:0"}, []string{"err=UNKNOWN_HANDLE"}},
		{"limit", func() []*os.File { return []*os.File{e.file(t, "gcm")} }, nine, []string{"pt.handle=8", "err=LIMIT"}},
		{"protect-granted", func() []*os.File { return []*os.File{e.file(t, "gcm")} },
			[]string{"p:3:1:192.0.2.2", "get", "it"},
			[]string{"g.granted=ENCRYPTION", "g.why=NONE", "g.pin=DEVICE", "g.pin_iface=lo", "g.peer_id=192.0.2.2", "pt.handle=1", "pt.privacy=true", "it.auth=DNSSEC"}},
		{"protect-peer-mismatch", func() []*os.File { return []*os.File{e.file(t, "pkix")} },
			[]string{"p:3:3:@sun.example"},
			[]string{"g.granted=NONE", "g.why=PEER_MISMATCH", "g.why_text=the SA's authenticated peer is 'CN=moon, O=Lab', not '@sun.example'", "g.pin=DEVICE", "g.peer_id=CN=moon, O=Lab"}},
		{"protect-insufficient", func() []*os.File { return []*os.File{e.file(t, "null")} },
			[]string{"p:3:1", "p:3:2"},
			[]string{"g.why=INSUFFICIENT", "g.granted=INTEGRITY"}},
		{"protect-no-sa", func() []*os.File { return []*os.File{e.file(t, "clear")} },
			[]string{"p:3:3"},
			[]string{"g.granted=NONE", "g.why=NO_SA", "pt.why=NO_SA", "pt.itoken=0", "g.pin=DEVICE"}},
		{"protect-clear-refused", func() []*os.File { return []*os.File{e.file(t, "clear")} },
			[]string{"p:3:4"},
			[]string{"g.granted=NONE", "g.why=POLICY_WINS", `g.why_text=configured tunnel "moon" covers the flow`, "pt.why=POLICY_WINS"}},
		{"protect-bad-level", func() []*os.File { return []*os.File{e.file(t, "gcm")} },
			[]string{"p:3:0", "p:3:9"},
			[]string{"err=BAD_LEVEL"}},
		{"protect-not-socket", func() []*os.File { return []*os.File{pipeR} }, []string{"p:3:1"}, []string{"err=NOT_SOCKET"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var files []*os.File
			if tc.files != nil {
				files = tc.files()
			}
			got := runDriver(t, b, e.sock, files, tc.ops)
			want := goRun(t, e.sock, files, tc.ops)
			if got != want {
				t.Fatalf("C and Go clients differ\nC:\n%s\nGo:\n%s", got, want)
			}
			lines := strings.Split(got, "\n")
			for _, w := range tc.want {
				found := false
				for _, l := range lines {
					// "key=" asks for a non-empty value, anything else for the line.
					if l == w && !strings.HasSuffix(w, "=") || strings.HasSuffix(w, "=") && strings.HasPrefix(l, w) && len(l) > len(w) {
						found = true
					}
				}
				if !found {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

// TestCOnly covers what only the C API has: invalid and closed descriptors.
func TestCOnly(t *testing.T) {
	b := build(t)
	e := newEnv(t)
	tests := []struct {
		name string
		ops  []string
		want string
	}{
		{"closed-fd", []string{"q:100"}, "op=q:100\nerr=SYSTEM\nerrno=9\n"},
		{"then-works", []string{"q:100", "get:1"}, "op=q:100\nerr=SYSTEM\nerrno=9\nop=get:1\nerr=UNKNOWN_HANDLE\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := runDriver(t, b, e.sock, nil, tc.ops); got != tc.want {
				t.Fatalf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}

// tlv is one raw attribute of a crafted reply.
type tlv struct {
	t uint16
	v []byte
}

func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

// raw builds a message without any checks, so replies can be malformed.
func raw(typ wire.Type, id uint32, attrs ...tlv) []byte {
	b := binary.BigEndian.AppendUint32(nil, wire.Magic)
	b = append(b, wire.Version, byte(typ), 0, 0)
	b = binary.BigEndian.AppendUint32(b, id)
	b = binary.BigEndian.AppendUint32(b, 0)
	for _, a := range attrs {
		b = binary.BigEndian.AppendUint16(b, a.t)
		b = binary.BigEndian.AppendUint16(b, uint16(len(a.v)))
		b = append(b, a.v...)
	}
	binary.BigEndian.PutUint32(b[12:16], uint32(len(b)-wire.HeaderLen))
	return b
}

// itReply is a good ITOKEN_REPLY for iToken 7 with extra attributes.
func itReply(id uint32, extra ...tlv) []byte {
	a := []tlv{{wire.AttrIToken, u64(7)}, {wire.AttrAuthMethod, []byte{8}}}
	return raw(wire.TypeITokenReply, id, append(a, extra...)...)
}

func mutate(b []byte, f func([]byte)) []byte { f(b); return b }

const goodIT = "op=it:7\nit.handle=7\nit.auth=PKIX_INLINE\nit.remote_id=moon\nit.cert_dn=\nit.ca_dn=\nit.pubkey_id=\nit.channel_binding=0102\nit.audit=\n"
const badIT = "op=it:7\nerr=BAD_REPLY\n"

// TestStrictDecoding serves crafted replies from a fake server.
func TestStrictDecoding(t *testing.T) {
	b := build(t)
	rid := tlv{wire.AttrRemoteID, []byte("moon")}
	cb := tlv{wire.AttrChannelBinding, []byte{1, 2}}
	many := []tlv{rid, cb}
	for len(many) < wire.MaxAttrs-1 {
		many = append(many, tlv{0x0100, nil})
	}
	tests := []struct {
		name    string
		ops     []string
		replies func(id uint32) [][]byte // nil: no reply; empty: close
		want    string
	}{
		{"good", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id, rid, cb)} }, goodIT},
		{"unknown-non-critical-skipped", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{itReply(id, tlv{0x0100, []byte("future")}, rid, tlv{0x7fff, nil}, cb)}
		}, goodIT},
		{"known-with-critical-bit", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{itReply(id, tlv{wire.AttrRemoteID | wire.AttrCritical, []byte("moon")}, cb)}
		}, goodIT},
		{"first-of-a-type-counts", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id, rid, tlv{wire.AttrRemoteID, []byte("sun")}, cb)} }, goodIT},
		{"64-attributes", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id, many[:wire.MaxAttrs-2]...)} }, goodIT},
		{"late-reply-skipped", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{itReply(id+100, tlv{wire.AttrRemoteID, []byte("old")}), itReply(id, rid, cb)}
		}, goodIT},
		{"event-before-reply-kept", []string{"it:7", "poll:0", "ev"}, func(id uint32) [][]byte {
			if id != 1 {
				return nil
			}
			return [][]byte{raw(wire.TypeEvent, 0, tlv{wire.AttrSubscription, u64(4)}, tlv{wire.AttrEventKind, []byte{2}}, tlv{wire.AttrWhyCode, u16(2)}), itReply(id, rid, cb)}
		}, goodIT + "op=poll:0\nreadable=true\nop=ev\nev.sub=4\nev.kind=DOWN\npt.handle=0\npt.itoken=0\npt.protected=false\npt.privacy=false\npt.integrity=false\npt.compression=false\npt.why=NO_SA\npt.why_text=\npt.audit=\npt.label=\n"},
		{"event-without-kind", []string{"it:7", "ev"}, func(id uint32) [][]byte {
			return [][]byte{raw(wire.TypeEvent, 0, tlv{wire.AttrSubscription, u64(4)}), itReply(id, rid, cb)}
		}, goodIT + "op=ev\nerr=BAD_REPLY\n"},
		{"address-of-5-bytes", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{itReply(id, rid, tlv{wire.AttrPeerAddr, []byte{1, 2, 3, 4, 5}})}
		}, badIT},
		{"65-attributes", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id, many...)} }, badIT},
		{"unknown-critical", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id, rid, tlv{0x8100, []byte{1}})} }, badIT},
		{"bad-magic", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{mutate(itReply(id), func(b []byte) { b[0] = 'X' })} }, badIT},
		{"bad-version", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{mutate(itReply(id), func(b []byte) { b[4] = 2 })} }, badIT},
		{"flags", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{mutate(itReply(id), func(b []byte) { b[7] = 1 })} }, badIT},
		{"body-length", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{mutate(itReply(id), func(b []byte) { b[15]++ })} }, badIT},
		{"short", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id)[:15]} }, badIT},
		{"attr-overrun", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{mutate(itReply(id, rid), func(b []byte) { b[len(b)-5] = 5 })}
		}, badIT},
		{"trailing-bytes", []string{"it:7"}, func(id uint32) [][]byte {
			b := append(itReply(id), 0, 1, 0)
			binary.BigEndian.PutUint32(b[12:16], uint32(len(b)-wire.HeaderLen))
			return [][]byte{b}
		}, badIT},
		{"u8-size", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{raw(wire.TypeITokenReply, id, tlv{wire.AttrIToken, u64(7)}, tlv{wire.AttrAuthMethod, []byte{0, 8}})}
		}, badIT},
		{"u64-size", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{raw(wire.TypeITokenReply, id, tlv{wire.AttrIToken, u64(7)[1:]})}
		}, badIT},
		{"string-nul", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id, tlv{wire.AttrRemoteID, []byte("mo\x00on")})} }, badIT},
		{"string-overlong-utf8", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id, tlv{wire.AttrAudit, []byte{'a', 0xc0, 0x80}})} }, badIT},
		{"string-surrogate", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id, tlv{wire.AttrAudit, []byte{0xed, 0xa0, 0x80}})} }, badIT},
		{"string-truncated-utf8", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{itReply(id, tlv{wire.AttrAudit, []byte{'a', 0xe2, 0x82}})} }, badIT},
		{"string-too-long", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{itReply(id, tlv{wire.AttrAudit, bytes.Repeat([]byte("a"), wire.MaxString+1)})}
		}, badIT},
		{"blob-too-long", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{itReply(id, tlv{wire.AttrChannelBinding, make([]byte, wire.MaxBlob+1)})}
		}, badIT},
		{"datagram-too-long", []string{"it:7"}, func(id uint32) [][]byte {
			var a []tlv
			for i := 0; i < 9; i++ {
				a = append(a, tlv{0x0100, make([]byte, 8000)})
			}
			return [][]byte{itReply(id, a...)}
		}, badIT},
		{"other-itoken", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{raw(wire.TypeITokenReply, id, tlv{wire.AttrIToken, u64(8)})}
		}, badIT},
		{"wrong-type", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{raw(wire.TypeOK, id)} }, badIT},
		{"id-0-not-error", []string{"it:7"}, func(uint32) [][]byte { return [][]byte{itReply(0, rid)} }, badIT},
		{"error-id-0", []string{"it:7"}, func(uint32) [][]byte {
			return [][]byte{raw(wire.TypeError, 0, tlv{wire.AttrErrorCode, u16(uint16(wire.ErrCodeLimit))}, tlv{wire.AttrErrorText, []byte("too many clients")})}
		}, "op=it:7\nerr=LIMIT\n"},
		{"error-unknown-code", []string{"it:7"}, func(id uint32) [][]byte {
			return [][]byte{raw(wire.TypeError, id, tlv{wire.AttrErrorCode, u16(77)}, tlv{wire.AttrErrorText, []byte("new")})}
		}, "op=it:7\nerr=77\n"},
		{"error-without-code", []string{"it:7"}, func(id uint32) [][]byte { return [][]byte{raw(wire.TypeError, id)} }, badIT},
		{"bool-2", []string{"q:3"}, func(id uint32) [][]byte {
			return [][]byte{raw(wire.TypePTokenReply, id, tlv{wire.AttrPToken, u64(1)}, tlv{wire.AttrPrivacy, []byte{2}})}
		}, "op=q:3\nerr=BAD_REPLY\n"},
		{"ptoken-without-handle", []string{"q:3"}, func(id uint32) [][]byte {
			return [][]byte{raw(wire.TypePTokenReply, id, tlv{wire.AttrPrivacy, []byte{1}})}
		}, "op=q:3\nerr=BAD_REPLY\n"},
		{"ptoken-minimal", []string{"q:3", "get:1"}, func(id uint32) [][]byte {
			return [][]byte{raw(wire.TypePTokenReply, id, tlv{wire.AttrPToken, u64(1)}, tlv{wire.AttrPrivacy, []byte{1}}, tlv{wire.AttrWhyCode, u16(99)})}
		}, "op=q:3\npt.handle=1\npt.itoken=0\npt.protected=false\npt.privacy=true\npt.integrity=false\npt.compression=false\npt.why=99\npt.why_text=\npt.audit=\npt.label=\n" +
			"op=get:1\npt.handle=1\npt.itoken=0\npt.protected=false\npt.privacy=true\npt.integrity=false\npt.compression=false\npt.why=99\npt.why_text=\npt.audit=\npt.label=\n"},
		{"timeout", []string{"timeout:300", "it:7"}, func(uint32) [][]byte { return nil }, fmt.Sprintf("op=timeout:300\nop=it:7\nerr=TIMEOUT\nerrno=%d\n", syscall.EAGAIN)},
		{"closed", []string{"it:7"}, func(uint32) [][]byte { return [][]byte{} }, "op=it:7\nerr=CLOSED\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sock := filepath.Join(t.TempDir(), "fake.sock")
			ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			served := make(chan error, 1)
			go func() { served <- fakeServe(ln, tc.replies) }()
			f, err := os.Open(os.DevNull) // the fake does not look at the descriptor
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			got := runDriver(t, b, sock, []*os.File{f}, tc.ops)
			if got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
			if err := <-served; err != nil {
				t.Error(err)
			}
		})
	}
}

// fakeServe answers the requests of one client with replies(id) and checks
// that the C library encodes them correctly: a valid message, ids from 1,
// exactly one descriptor with PTOKEN_QUERY and none otherwise.
func fakeServe(ln *net.UnixListener, replies func(id uint32) [][]byte) error {
	c, err := ln.AcceptUnix()
	if err != nil {
		return err
	}
	defer c.Close()
	buf, oob := make([]byte, wire.MaxMessage+1), make([]byte, 256)
	var want uint32 = 1
	for {
		n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
		if err != nil || n == 0 {
			return nil // the driver is done
		}
		nfd := 0
		if msgs, err := syscall.ParseSocketControlMessage(oob[:oobn]); err == nil {
			for _, m := range msgs {
				fds, _ := syscall.ParseUnixRights(&m)
				for _, fd := range fds {
					syscall.Close(fd)
				}
				nfd += len(fds)
			}
		}
		m, err := wire.Decode(buf[:n])
		if err != nil {
			return fmt.Errorf("C request does not decode: %v", err)
		}
		if m.ID != want {
			return fmt.Errorf("request id %d, want %d", m.ID, want)
		}
		want++
		if wantFD := map[bool]int{true: 1, false: 0}[m.Type == wire.TypePTokenQuery]; nfd != wantFD {
			return fmt.Errorf("%s with %d descriptors, want %d", m.Type, nfd, wantFD)
		}
		switch m.Type {
		case wire.TypePTokenGet, wire.TypePTokenRelease:
			if _, ok := m.U64(wire.AttrPToken); !ok || len(m.Attrs) != 1 {
				return fmt.Errorf("%s attributes %v", m.Type, m.Attrs)
			}
		case wire.TypeITokenGet:
			if v, ok := m.U64(wire.AttrIToken); !ok || v != 7 || len(m.Attrs) != 1 {
				return fmt.Errorf("%s attributes %v", m.Type, m.Attrs)
			}
		case wire.TypePTokenQuery:
			if len(m.Attrs) != 0 {
				return fmt.Errorf("PTOKEN_QUERY with attributes %v", m.Attrs)
			}
		}
		rs := replies(m.ID)
		if rs == nil {
			continue // no answer: the client times out
		}
		if len(rs) == 0 {
			return nil // close
		}
		for _, r := range rs {
			if _, err := c.Write(r); err != nil {
				return err
			}
		}
	}
}

// TestExampleServer runs example_server against a real server and checks
// the lines it prints for a protected client.
func TestExampleServer(t *testing.T) {
	b := build(t)
	e := newEnv(t)
	cmd := exec.Command(b.server, "0", e.sock)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	next := func() string {
		t.Helper()
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("example_server exited; stderr:\n%s", stderr.String())
			}
			return l
		case <-time.After(10 * time.Second):
			t.Fatal("no line from example_server")
		}
		return ""
	}
	var port int
	if _, err := fmt.Sscanf(next(), "listening on %d", &port); err != nil {
		t.Fatal(err)
	}
	e.facts.Set(port, scenes["pkix"]) // the server side's local port
	for _, want := range [][]string{
		{"ptoken handle=1 protected=yes privacy=yes integrity=yes compression=yes", " auth=PKIX_INLINE ", `cert_dn="CN=moon, O=Lab"`},
		{"ptoken handle=2 protected=yes", " auth=PKIX_INLINE "}, // handles are never reused
	} {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
		if err != nil {
			t.Fatal(err)
		}
		greeting, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if greeting != "hello from example_server\n" {
			t.Fatalf("greeting %q", greeting)
		}
		pt, it := next(), next()
		got := pt + "\n" + it
		for _, w := range want {
			if !strings.Contains(got, w) {
				t.Errorf("example_server printed\n%s\nwithout %q", got, w)
			}
		}
	}
}

// pokeTest does what testdriver.c's poke op does: it asks the test's
// poke server (OBOL_POKE_PORT) to change the IPsec state and waits.
func pokeTest(t *testing.T, word string) string {
	t.Helper()
	port, _ := strconv.Atoi(os.Getenv("OBOL_POKE_PORT"))
	u, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	if _, err := u.Write([]byte(word)); err != nil {
		t.Fatal(err)
	}
	u.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := u.Read(buf)
	if err != nil {
		t.Fatalf("poke %s: %v", word, err)
	}
	return string(buf[:n])
}

// TestEventsAndDatagramsSameAsGoClient: subscriptions, events and
// per-datagram pTokens through the C driver and the Go client give the
// same lines. The drivers change the IPsec state between their requests
// through a poke server of this test.
func TestEventsAndDatagramsSameAsGoClient(t *testing.T) {
	b := build(t)
	facts := tokenapitest.NewChangeFacts()
	_, sock := tokenapitest.Serve(t, tokenapi.Config{}, facts)
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	evPort := ln.Addr().(*net.TCPAddr).Port
	up := scenes["gcm"]
	facts.Set(evPort, up)
	tcpFile := func() *os.File {
		c, err := net.DialTCP("tcp", nil, ln.Addr().(*net.TCPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		f, err := c.File()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { f.Close() })
		return f
	}
	udp := func(ip string) *net.UDPConn {
		u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(ip)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { u.Close() })
		return u
	}
	protSender, clearSender := udp("127.0.0.1"), udp("127.0.0.1")
	facts.Set(protSender.LocalAddr().(*net.UDPAddr).Port, scenes["pkix"])
	server := udp("0.0.0.0") // wildcard: the local address comes from IP_PKTINFO
	serverFile, err := server.File()
	if err != nil {
		t.Fatal(err)
	}
	defer serverFile.Close()
	bound := udp("127.0.0.1")
	boundFile, err := bound.File()
	if err != nil {
		t.Fatal(err)
	}
	defer boundFile.Close()
	serverAddr := &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: server.LocalAddr().(*net.UDPAddr).Port}

	pokes, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pokes.Close()
	t.Setenv("OBOL_POKE_PORT", strconv.Itoa(pokes.LocalAddr().(*net.UDPAddr).Port))
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pokes.ReadFromUDP(buf)
			if err != nil {
				return
			}
			switch string(buf[:n]) {
			case "down":
				facts.Set(evPort, tokenapi.Protection{Why: wire.ReasonNoSA, WhyText: "CHILD_SA deleted"})
				facts.Notify(tokenapi.Change{Kind: "down", IKEName: "obol-oe-1", Child: "oe"})
			case "up":
				facts.Set(evPort, up)
				facts.Notify(tokenapi.Change{Kind: "up", IKEName: "obol-oe-1", Child: "oe"})
			case "rekey":
				facts.Notify(tokenapi.Change{Kind: "rekeyed", IKEName: "obol-oe-1", Child: "oe"})
			case "rekeyfail":
				facts.Notify(tokenapi.Change{Kind: "rekey-failed", IKEName: "obol-oe-1", Text: "CHILD_SA rekeying failed, trying again in 25 seconds"})
			case "dgram-prot":
				protSender.WriteToUDP([]byte("from the tunnel"), serverAddr)
			case "dgram-clear":
				clearSender.WriteToUDP([]byte("in clear"), serverAddr)
			}
			time.Sleep(10 * time.Millisecond) // let the datagram land before the driver reads
			pokes.WriteToUDP([]byte("ok"), from)
		}
	}()
	prot := protSender.LocalAddr().(*net.UDPAddr).Port
	tests := []struct {
		name  string
		files func() []*os.File
		ops   []string
		want  []string
	}{
		{"events", func() []*os.File { return []*os.File{tcpFile()} },
			[]string{"sub:3", "it", "poll:100", "poke:rekey", "poll:3000", "ev", "poke:down", "ev", "poke:up", "ev", "it", "poke:rekeyfail", "ev", "unsub", "unsub", "it"},
			[]string{"sub=1", "readable=false", "readable=true", "ev.kind=REKEYED", "ev.kind=DOWN", "ev.kind=UP", "ev.kind=REKEY_FAILED", "pt.why=NEGOTIATION_FAILED",
				"pt.why_text=CHILD_SA rekeying failed, trying again in 25 seconds", "it.auth=DNSSEC", "unsubscribed=1", "err=UNKNOWN_HANDLE"}},
		{"subscribe-refused", func() []*os.File { return []*os.File{serverFile} }, []string{"sub:3"}, []string{"err=NOT_CONNECTED"}},
		{"datagrams", func() []*os.File { return []*os.File{serverFile} },
			[]string{"poke:dgram-prot", "recv:3", "it", "poke:dgram-clear", "recv:3"},
			[]string{"dgram.data=from the tunnel", "pt.protected=true", "it.auth=PKIX_INLINE", "dgram.data=in clear", "pt.why=NO_POLICY"}},
		{"from", func() []*os.File { return []*os.File{boundFile, serverFile} },
			[]string{fmt.Sprintf("from:3:127.0.0.1:%d", prot), fmt.Sprintf("from:3:127.0.0.1:%d:192.0.2.1", prot),
				fmt.Sprintf("from:4:127.0.0.1:%d", prot), fmt.Sprintf("from:4:127.0.0.1:%d:127.0.0.1", prot)},
			[]string{"pt.protected=true", "err=ADDRESS_MISMATCH"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := tc.files()
			got := runDriver(t, b, sock, files, tc.ops)
			want := goRun(t, sock, files, tc.ops)
			if got != want {
				t.Fatalf("C and Go clients differ\nC:\n%s\nGo:\n%s", got, want)
			}
			for _, w := range tc.want {
				if !strings.Contains(got, "\n"+w) {
					t.Errorf("output lacks %q:\n%s", w, got)
				}
			}
		})
	}
}

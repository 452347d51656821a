package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/tokenapi/client"
	tokenwire "github.com/obol-ipsec/obol/tokenapi/wire"
)

// influenceHost is an OE host whose whole segment is clear-or-private: no
// tunnel exists until someone asks for one; 192.0.2.99 (nobody there) is
// private, and members of group 4242 may ask for less than policy.
func influenceHost(addr, keyFile, tokenSock string) string {
	return fmt.Sprintf(`
[oe]
address = %q
key_file = %q
initial_lifespan = "60s"
busy_lifespan = "60s"
[oe.dns]
server = "192.0.2.53:53"
require_dnssec = true
[[oe.group]]
group = "private"
cidrs = ["192.0.2.99/32"]
[[oe.group]]
group = "clear-or-private"
cidrs = ["192.0.2.0/24"]
[tokenapi]
enabled = true
socket = %q
lower_groups = ["4242"]
protect_timeout = "30s"
`, addr, keyFile, tokenSock)
}

// sink accepts TCP connections on ln and counts what each sends.
type sink struct {
	got chan int // bytes per closed connection
}

func newSink(t *testing.T, ln net.Listener) *sink {
	s := &sink{got: make(chan int, 16)}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				s.got <- int(n)
			}()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return s
}

// expect waits for the sink to report a closed connection of want bytes.
func (s *sink) expect(t *testing.T, ctx context.Context, want int) {
	t.Helper()
	select {
	case n := <-s.got:
		if n != want {
			t.Fatalf("the sink got %d bytes, want %d", n, want)
		}
	case <-ctx.Done():
		t.Fatal("the sink never got the data")
	}
}

// dialTCP connects from n and returns the connection and its local port.
func dialTCP(t *testing.T, ctx context.Context, n *lab.Node, addr string) (*net.TCPConn, int) {
	t.Helper()
	c, err := n.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("%s: dial %s: %v", n.Name, addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn), c.LocalAddr().(*net.TCPAddr).Port
}

// writeFor writes to c every 100 ms for d, ignoring errors (a pinned
// socket with no SA may block or fail: what matters is the wire).
func writeFor(c net.Conn, d time.Duration) {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		c.Write([]byte(strings.Repeat("pinned socket data ", 50)))
		time.Sleep(100 * time.Millisecond)
	}
}

// TestTokenProtect: programs ask obold for protection on their sockets.
// Encryption to an OE peer brings the tunnel up and pins the socket, so
// after the tunnel is torn down its sends still never appear in clear; a
// peer without OE records, and a wrong peer identity, are refused with WHY
// and pinned; lowering protection needs privilege and never beats a
// private destination; a caller cannot inspect a socket it does not hold.
func TestTokenProtect(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 180*time.Second)
	defer cancel()
	ha, hb, gwa := l.Node(lab.HostA), l.Node(lab.HostB), l.Node(lab.GWA)
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	if err := l.SetZone(ctx, lab.Zone{Name: "2.0.192.in-addr.arpa.", Records: []string{
		"11 300 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns,
		"12 300 IN IPSECKEY 10 1 2 192.0.2.12 " + kb.dns,
	}}); err != nil {
		t.Fatal(err)
	}
	// A directory an unprivileged caller can reach (the lab's is 0700).
	sockDir, err := os.MkdirTemp("", "obol-infl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(sockDir) })
	if err := os.Chmod(sockDir, 0o755); err != nil {
		t.Fatal(err)
	}
	tokenA := filepath.Join(sockDir, "a.sock")
	oa := startObold(t, ha, influenceHost("192.0.2.11", ka.pemFile, tokenA))
	startObold(t, hb, influenceHost("192.0.2.12", kb.pemFile, filepath.Join(sockDir, "b.sock")))

	lnB, err := hb.Listen(ctx, "tcp", "192.0.2.12:7101")
	if err != nil {
		t.Fatal(err)
	}
	sinkB := newSink(t, lnB)
	lnB2, err := hb.Listen(ctx, "tcp", "192.0.2.12:7100") // for every other socket
	if err != nil {
		t.Fatal(err)
	}
	newSink(t, lnB2)
	lnG, err := gwa.Listen(ctx, "tcp", "192.0.2.1:7102")
	if err != nil {
		t.Fatal(err)
	}
	newSink(t, lnG)
	tc, err := client.Dial(ctx, tokenA)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()

	// Before asking: clear-or-private, so the connection is in clear.
	conn, _ := dialTCP(t, ctx, ha, "192.0.2.12:7101")
	control, _ := dialTCP(t, ctx, ha, "192.0.2.12:7100") // never pinned
	if pt, err := tc.PToken(ctx, conn); err != nil || pt.Protected {
		t.Fatalf("before PROTECT: %+v %v (want clear)", pt, err)
	}

	// 1. Encryption, from hostb by its address identity: OE comes up.
	g, err := tc.Protect(ctx, conn, client.Request{Level: tokenwire.LevelEncryption, PeerID: "192.0.2.12"})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("grant: %+v", g)
	if g.Granted != tokenwire.LevelEncryption || g.Pin != tokenwire.PinDevice || g.Iface != "ipsec0" || g.PeerID != "192.0.2.12" ||
		!g.PToken.Protected || !g.PToken.Privacy || g.PToken.IToken == 0 {
		t.Fatalf("grant %+v: want ENCRYPTION by 192.0.2.12, pinned to ipsec0", g)
	}
	var tunnel oe.Tunnel
	for _, tu := range oa.oeList() {
		if tu.Role == "initiator" && tu.State == oe.StateUp && tu.Pair.Dst.String() == "192.0.2.12" {
			tunnel = tu
		}
	}
	if tunnel.Conn == "" {
		t.Fatalf("no OE tunnel up on hosta after PROTECT: %+v", oa.oeList())
	}
	clear := wire(t, l, "ip and host 192.0.2.11 and host 192.0.2.12 and not (udp port 500 or udp port 4500)")
	esp := wire(t, l, "udp port 4500 and host 192.0.2.11 and host 192.0.2.12")
	payload := strings.Repeat("x", 256<<10)
	if _, err := conn.Write([]byte(payload)); err != nil {
		t.Fatalf("write through the tunnel: %v", err)
	}

	// 2. A named identity the peer does not have: refused, still pinned.
	other, _ := dialTCP(t, ctx, ha, "192.0.2.12:7100")
	g2, err := tc.Protect(ctx, other, client.Request{Level: tokenwire.LevelEncryption, PeerID: "@mallory.example.test"})
	if err != nil {
		t.Fatal(err)
	}
	if !g2.Refused() || g2.PToken.Why != tokenwire.ReasonPeerMismatch || g2.Pin != tokenwire.PinDevice || !strings.Contains(g2.PToken.WhyText, "192.0.2.12") {
		t.Fatalf("wrong identity: %+v, want PEER_MISMATCH naming 192.0.2.12", g2)
	}
	other.Close()

	// Data crossed, and only as ESP.
	conn.CloseWrite()
	sinkB.expect(t, ctx, len(payload))
	assertEncrypted(t, clear, esp)

	// 3. The tunnel goes away; the pinned socket's sends stay off the
	// wire, while the unpinned control connection's appear in clear (so the
	// capture would have seen them).
	conn2, port2 := dialTCP(t, ctx, ha, "192.0.2.12:7100")
	if g3, err := tc.Protect(ctx, conn2, client.Request{Level: tokenwire.LevelEncryption}); err != nil || g3.Granted != tokenwire.LevelEncryption {
		t.Fatalf("second socket: %+v %v", g3, err)
	}
	swanctl(t, ha, "--terminate", "--ike", tunnel.Conn)
	deadline := time.Now().Add(15 * time.Second)
	for strings.Contains(swanctl(t, ha, "--list-sas"), tunnel.Conn) {
		if time.Now().After(deadline) {
			t.Fatalf("tunnel %s not terminated", tunnel.Conn)
		}
		time.Sleep(100 * time.Millisecond)
	}
	pinned := wire(t, l, fmt.Sprintf("src host 192.0.2.11 and tcp src port %d", port2))
	unpinned := wire(t, l, fmt.Sprintf("src host 192.0.2.11 and tcp src port %d", control.LocalAddr().(*net.TCPAddr).Port))
	go writeFor(control, 2*time.Second)
	writeFor(conn2, 3*time.Second)
	if lines := stopCapture(t, pinned); len(lines) > 0 {
		t.Fatalf("the pinned socket sent %d packets in clear after the tunnel went away, e.g.\n%s", len(lines), strings.Join(lines[:min(5, len(lines))], "\n"))
	}
	if lines := stopCapture(t, unpinned); len(lines) == 0 {
		t.Fatal("the unpinned control connection sent nothing in clear either: the capture proves nothing")
	}

	// 4. Encryption to a peer without OE records: refused with
	// OE_NO_RECORDS, and none of its packets leave in clear.
	noRec, portG := dialTCP(t, ctx, ha, "192.0.2.1:7102")
	g4, err := tc.Protect(ctx, noRec, client.Request{Level: tokenwire.LevelEncryption})
	if err != nil {
		t.Fatal(err)
	}
	if !g4.Refused() || g4.PToken.Why != tokenwire.ReasonOENoRecords || g4.Pin != tokenwire.PinDevice {
		t.Fatalf("no records: %+v, want OE_NO_RECORDS, pinned", g4)
	}
	leak := wire(t, l, fmt.Sprintf("src host 192.0.2.11 and tcp src port %d", portG))
	writeFor(noRec, 2*time.Second)
	if lines := stopCapture(t, leak); len(lines) > 0 {
		t.Fatalf("a refused socket sent %d packets in clear, e.g.\n%s", len(lines), strings.Join(lines[:min(5, len(lines))], "\n"))
	}

	// 5. Nobody lowers a private destination, not even root.
	priv, err := ha.Dial(ctx, "udp", "192.0.2.99:9")
	if err != nil {
		t.Fatal(err)
	}
	defer priv.Close()
	g5, err := tc.Protect(ctx, priv.(*net.UDPConn), client.Request{Level: tokenwire.LevelClear})
	if err != nil {
		t.Fatal(err)
	}
	if !g5.Refused() || g5.PToken.Why != tokenwire.ReasonPolicyWins {
		t.Fatalf("clear for a private destination: %+v, want POLICY_WINS", g5)
	}

	// 6. Lowering clear-or-private: uid nobody is refused (DENIED), a
	// member of lower_groups is granted CLEAR with a bypass pin.
	obolctl := filepath.Join(binDir, "obolctl")
	type grantJSON struct {
		Grant *struct{ Granted, Pin, Why string }
	}
	asNobody := func(groups string, args ...string) (grantJSON, string, error) {
		t.Helper()
		gr := "--clear-groups"
		if groups != "" {
			gr = "--groups=" + groups
		}
		argv := append([]string{"setpriv", "--reuid=65534", "--regid=65534", gr, "--", obolctl}, args...)
		out, err := ha.Exec(ctx, argv...)
		var r grantJSON
		if i := bytes.IndexByte(out, '{'); i >= 0 {
			json.NewDecoder(bytes.NewReader(out[i:])).Decode(&r)
		}
		return r, string(out), err
	}
	r, out, err := asNobody("", "token", "connect", "192.0.2.1:7102", "--require", "clear", "--token-socket", tokenA, "--json")
	if err == nil || r.Grant == nil || r.Grant.Granted != "NONE" || r.Grant.Why != "DENIED" {
		t.Fatalf("nobody lowering: err %v, report %+v\n%s", err, r.Grant, out)
	}
	r, out, err = asNobody("4242", "token", "connect", "192.0.2.1:7102", "--require", "clear", "--token-socket", tokenA, "--json")
	if err != nil || r.Grant == nil || r.Grant.Granted != "CLEAR" || r.Grant.Pin != "BYPASS" {
		t.Fatalf("lower_groups member lowering: err %v, report %+v\n%s", err, r.Grant, out)
	}

	// 7. A caller cannot ask about a socket it does not hold: nobody cannot
	// take this test's descriptor, root can.
	rc, err := conn2.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd uintptr
	rc.Control(func(f uintptr) { fd = f })
	inspect := []string{"token", "inspect", "--pid", strconv.Itoa(os.Getpid()), "--fd", strconv.Itoa(int(fd)), "--token-socket", tokenA}
	if _, out, err := asNobody("4242", inspect...); err == nil || !strings.Contains(out, "permit") {
		t.Fatalf("nobody inspected another process's socket: err %v\n%s", err, out)
	}
	if out, err := exec.CommandContext(ctx, obolctl, inspect...).CombinedOutput(); err != nil {
		t.Fatalf("root could not inspect the socket: %v\n%s", err, out)
	}
}

// TestTokenProtectSwanctl: without OE, a request for encryption initiates
// the swanctl child whose selectors cover the flow (loaded, not up); the
// configured tunnel then cannot be lowered, even by root; a flow nothing
// covers is refused with NO_POLICY, and pinned.
func TestTokenProtectSwanctl(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	loadSwanctl(t, ha, swanctlHosts("192.0.2.11", "192.0.2.12"))
	loadSwanctl(t, hb, swanctlHosts("192.0.2.12", "192.0.2.11"))
	sockA := filepath.Join(ha.Dir, "token.sock")
	startObold(t, ha, fmt.Sprintf("[tokenapi]\nenabled = true\nsocket = %q\n", sockA))
	startObold(t, hb, fmt.Sprintf("[tokenapi]\nenabled = true\nsocket = %q\n", filepath.Join(hb.Dir, "token.sock")))
	if out := swanctl(t, ha, "--list-sas"); strings.Contains(out, "hh:") {
		t.Fatalf("the tunnel is up before anyone asked:\n%s", out)
	}
	ln, err := hb.Listen(ctx, "tcp", "192.0.2.12:7201")
	if err != nil {
		t.Fatal(err)
	}
	sinkB := newSink(t, ln)
	tc, err := client.Dial(ctx, sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()

	conn, _ := dialTCP(t, ctx, ha, "192.0.2.12:7201")
	g, err := tc.Protect(ctx, conn, client.Request{Level: tokenwire.LevelEncryption, PeerID: "192.0.2.12"})
	if err != nil {
		t.Fatal(err)
	}
	if g.Granted != tokenwire.LevelEncryption || g.Pin != tokenwire.PinDevice || g.PeerID != "192.0.2.12" || !strings.Contains(g.PToken.Audit, "conn=hh child=host") {
		t.Fatalf("grant %+v: want ENCRYPTION through conn hh", g)
	}
	clear := wire(t, l, "ip and host 192.0.2.11 and host 192.0.2.12 and not (udp port 500 or udp port 4500)")
	esp := wire(t, l, "udp port 4500 and host 192.0.2.11 and host 192.0.2.12")
	payload := strings.Repeat("y", 256<<10)
	if _, err := conn.Write([]byte(payload)); err != nil {
		t.Fatal(err)
	}
	conn.CloseWrite()
	sinkB.expect(t, ctx, len(payload))
	assertEncrypted(t, clear, esp)

	// The configured tunnel wins over everyone, root included.
	other, _ := dialTCP(t, ctx, ha, "192.0.2.12:7201")
	g2, err := tc.Protect(ctx, other, client.Request{Level: tokenwire.LevelClear})
	if err != nil {
		t.Fatal(err)
	}
	if !g2.Refused() || g2.PToken.Why != tokenwire.ReasonPolicyWins || !strings.Contains(g2.PToken.WhyText, "hh") || g2.Pin != tokenwire.PinDevice {
		t.Fatalf("lowering a configured tunnel: %+v, want POLICY_WINS naming hh", g2)
	}

	// Nothing covers 192.0.2.1: NO_POLICY, and the socket is pinned.
	udp, err := ha.Dial(ctx, "udp", "192.0.2.1:9")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	g3, err := tc.Protect(ctx, udp.(*net.UDPConn), client.Request{Level: tokenwire.LevelBTNS})
	if err != nil {
		t.Fatal(err)
	}
	if !g3.Refused() || g3.PToken.Why != tokenwire.ReasonNoPolicy || g3.Pin != tokenwire.PinDevice {
		t.Fatalf("uncovered flow: %+v, want NO_POLICY, pinned", g3)
	}
	leak := wire(t, l, fmt.Sprintf("src host 192.0.2.11 and udp src port %d", udp.LocalAddr().(*net.UDPAddr).Port))
	for i := 0; i < 10; i++ {
		udp.Write([]byte("refused datagram"))
		time.Sleep(50 * time.Millisecond)
	}
	if lines := stopCapture(t, leak); len(lines) > 0 {
		t.Fatalf("a refused socket sent %d datagrams in clear:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}

// TestTokenProtectLowerBypass: where policy would protect a destination
// (private-or-clear, hostb publishes its key), a privileged caller's CLEAR
// grant really takes its socket out: with the OE tunnel to hostb up, its
// datagrams cross in clear while another socket's go only as ESP.
func TestTokenProtectLowerBypass(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	if err := l.SetZone(ctx, lab.Zone{Name: "2.0.192.in-addr.arpa.", Records: []string{
		"11 300 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns,
		"12 300 IN IPSECKEY 10 1 2 192.0.2.12 " + kb.dns,
	}}); err != nil {
		t.Fatal(err)
	}
	sockA := filepath.Join(ha.Dir, "token.sock")
	conf := func(addr, key, sock string) string {
		return fmt.Sprintf(`
[oe]
address = %q
key_file = %q
[oe.dns]
server = "192.0.2.53:53"
require_dnssec = true
[[oe.group]]
group = "private-or-clear"
cidrs = ["192.0.2.0/24"]
[tokenapi]
enabled = true
socket = %q
`, addr, key, sock)
	}
	oa := startObold(t, ha, conf("192.0.2.11", ka.pemFile, sockA))
	startObold(t, hb, conf("192.0.2.12", kb.pemFile, filepath.Join(hb.Dir, "token.sock")))
	tc, err := client.Dial(ctx, sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	// Receivers on hostb, so it answers nothing (an ICMP unreachable would
	// be hostb's own traffic, subject to hostb's private-or-clear).
	for _, port := range []string{"7301", "7302"} {
		pc, err := hb.ListenPacket(ctx, "udp", "192.0.2.12:"+port)
		if err != nil {
			t.Fatal(err)
		}
		defer pc.Close()
	}

	lowered, err := ha.Dial(ctx, "udp", "192.0.2.12:7301")
	if err != nil {
		t.Fatal(err)
	}
	defer lowered.Close()
	g, err := tc.Protect(ctx, lowered.(*net.UDPConn), client.Request{Level: tokenwire.LevelClear})
	if err != nil {
		t.Fatal(err)
	}
	if g.Granted != tokenwire.LevelClear || g.Pin != tokenwire.PinBypass || g.PToken.Protected {
		t.Fatalf("root asking for clear under private-or-clear: %+v, want CLEAR with a bypass pin", g)
	}
	// An unpinned socket to the same host is trapped and brings OE up.
	plain, err := ha.Dial(ctx, "udp", "192.0.2.12:7302")
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		plain.Write([]byte("policy applies"))
		up := false
		for _, tu := range oa.oeList() {
			up = up || (tu.State == oe.StateUp && tu.Pair.Dst.String() == "192.0.2.12")
		}
		if up {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("an unpinned socket's datagrams did not bring OE up: %+v", oa.oeList())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// With the tunnel up, the lowered socket still crosses in clear, the
	// other one only as ESP.
	lowClear := wire(t, l, "src host 192.0.2.11 and dst host 192.0.2.12 and udp dst port 7301")
	plainClear := wire(t, l, "src host 192.0.2.11 and dst host 192.0.2.12 and udp dst port 7302")
	esp := wire(t, l, "udp port 4500 and src host 192.0.2.11 and dst host 192.0.2.12")
	for i := 0; i < 20; i++ {
		lowered.Write([]byte("deliberately clear"))
		plain.Write([]byte("policy applies"))
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(300 * time.Millisecond)
	if lines := stopCapture(t, lowClear); len(lines) != 20 {
		t.Fatalf("%d of 20 lowered datagrams crossed in clear, want all:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if lines := stopCapture(t, plainClear); len(lines) > 0 {
		t.Fatalf("the unpinned socket sent %d datagrams in clear with the tunnel up:\n%s", len(lines), strings.Join(lines, "\n"))
	}
	if lines := stopCapture(t, esp); len(lines) < 20 {
		t.Fatalf("only %d ESP packets for the unpinned socket's 20 datagrams", len(lines))
	}
}

// TestTokenProtectDNSTimeout: when the resolver never answers, a request
// for encryption is refused with DNS_TIMEOUT, and the socket stays pinned.
func TestTokenProtectDNSTimeout(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ha, hb, gwa := l.Node(lab.HostA), l.Node(lab.HostB), l.Node(lab.GWA)
	ka := newOEKey(t, ha)
	// A "resolver" that reads queries and never answers.
	silent, err := gwa.ListenPacket(ctx, "udp", "192.0.2.1:5353")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	sockA := filepath.Join(ha.Dir, "token.sock")
	startObold(t, ha, fmt.Sprintf(`
[oe]
address = "192.0.2.11"
key_file = %q
[oe.dns]
server = "192.0.2.1:5353"
timeout = "1s"
[[oe.group]]
group = "clear-or-private"
cidrs = ["192.0.2.0/24"]
[tokenapi]
enabled = true
socket = %q
`, ka.pemFile, sockA))
	ln, err := hb.Listen(ctx, "tcp", "192.0.2.12:7401")
	if err != nil {
		t.Fatal(err)
	}
	newSink(t, ln)
	tc, err := client.Dial(ctx, sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	conn, port := dialTCP(t, ctx, ha, "192.0.2.12:7401")
	g, err := tc.Protect(ctx, conn, client.Request{Level: tokenwire.LevelEncryption})
	if err != nil {
		t.Fatal(err)
	}
	if !g.Refused() || g.PToken.Why != tokenwire.ReasonDNSTimeout || g.Pin != tokenwire.PinDevice {
		t.Fatalf("silent resolver: %+v, want DNS_TIMEOUT, pinned", g)
	}
	leak := wire(t, l, fmt.Sprintf("src host 192.0.2.11 and tcp src port %d", port))
	writeFor(conn, time.Second)
	if lines := stopCapture(t, leak); len(lines) > 0 {
		t.Fatalf("a refused socket sent %d packets in clear:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}

// TestTokenProtectAuthFailed: DNS names the wrong key for hostb, so IKE
// authentication fails: refused with AUTH_FAILED and charon's words.
func TestTokenProtectAuthFailed(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	wrong := newOEKey(t, l.Node(lab.GWA)) // another key file: newOEKey writes one per node
	if err := l.SetZone(ctx, lab.Zone{Name: "2.0.192.in-addr.arpa.", Records: []string{
		"11 300 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns,
		"12 300 IN IPSECKEY 10 1 2 192.0.2.12 " + wrong.dns, // hostb signs with kb
	}}); err != nil {
		t.Fatal(err)
	}
	sockA := filepath.Join(ha.Dir, "token.sock")
	startObold(t, ha, influenceHost("192.0.2.11", ka.pemFile, sockA))
	startObold(t, hb, influenceHost("192.0.2.12", kb.pemFile, filepath.Join(hb.Dir, "token.sock")))
	ln, err := hb.Listen(ctx, "tcp", "192.0.2.12:7501")
	if err != nil {
		t.Fatal(err)
	}
	newSink(t, ln)
	tc, err := client.Dial(ctx, sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer tc.Close()
	conn, port := dialTCP(t, ctx, ha, "192.0.2.12:7501")
	g, err := tc.Protect(ctx, conn, client.Request{Level: tokenwire.LevelEncryption})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("refusal: %s: %s", g.PToken.Why, g.PToken.WhyText)
	if !g.Refused() || g.PToken.Why != tokenwire.ReasonAuthFailed || g.Pin != tokenwire.PinDevice {
		t.Fatalf("wrong key: %+v, want AUTH_FAILED, pinned", g)
	}
	leak := wire(t, l, fmt.Sprintf("src host 192.0.2.11 and tcp src port %d", port))
	writeFor(conn, time.Second)
	if lines := stopCapture(t, leak); len(lines) > 0 {
		t.Fatalf("a refused socket sent %d packets in clear:\n%s", len(lines), strings.Join(lines, "\n"))
	}
}

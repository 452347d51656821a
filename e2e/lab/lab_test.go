package lab

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// These tests build real labs: they need root. CI runs them as root, so not
// being root is a failure, not a skip.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("e2e/lab tests need root (network namespaces, charon, tcpdump): run them as root, e.g. `sudo go test ./e2e/lab/`")
	}
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func fullZones() []Zone {
	return []Zone{
		{Name: "example.test.", Records: []string{
			"bob 300 IN A 10.2.0.10",
			`bob 300 IN TXT "obol lab"`,
		}},
		{Name: "2.0.192.in-addr.arpa.", Records: []string{
			"11 300 IN PTR hosta.example.test.",
			`11 300 IN TXT "hosta"`,
		}},
		{Name: "plain.test", Unsigned: true, Records: []string{"www 300 IN A 192.0.2.12"}},
		{Name: "bogus.test.", Bogus: true, Records: []string{"x 300 IN A 192.0.2.99"}},
	}
}

// procID identifies one incarnation of a PID.
type procID struct {
	pid   int
	start string
	comm  string
}

// labProcesses lists every process inside the lab's namespaces right now.
func labProcesses(t *testing.T, id string) []procID {
	t.Helper()
	var out []procID
	for _, pids := range processesIn(namespacesOf(id)) {
		for _, pid := range pids {
			out = append(out, procID{pid, startTime(pid), comm(pid)})
		}
	}
	return out
}

// assertGone checks what the brief calls "nothing left": no namespace with
// the ID (per `ip netns list`), none of the given processes alive, and no
// process anywhere whose command line or environment mentions the ID.
func assertGone(t *testing.T, id string, procs []procID) {
	t.Helper()
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	if strings.Contains(string(out), id) {
		t.Errorf("namespaces of %s still listed:\n%s", id, out)
	}
	for _, p := range procs {
		if st := startTime(p.pid); st != "" && st == p.start && !isZombie(p.pid) {
			t.Errorf("process %d (%s) of lab %s still running", p.pid, p.comm, id)
		}
	}
	for _, pid := range pidsMentioning(id) {
		t.Errorf("process %d (%s) mentions lab %s in its command line or environment", pid, comm(pid), id)
	}
	if m, _ := filepath.Glob(filepath.Join(os.TempDir(), id+"-*")); len(m) > 0 {
		t.Errorf("lab directory left: %v", m)
	}
}

func pidsMentioning(id string) []int {
	var out []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() || isZombie(pid) {
			continue
		}
		for _, f := range []string{"cmdline", "environ"} {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, f))
			if strings.Contains(string(b), id) {
				out = append(out, pid)
				break
			}
		}
	}
	return out
}

func closeAndCheck(t *testing.T, l *Lab) {
	t.Helper()
	procs := labProcesses(t, l.ID)
	t0 := time.Now()
	err := l.Close()
	t.Logf("lab %s: Close took %v (%d processes were running)", l.ID, time.Since(t0).Round(time.Millisecond), len(procs))
	if err != nil {
		t.Errorf("Close: %v", err)
	}
	if left := l.Leftovers(); len(left) > 0 {
		t.Errorf("Leftovers after Close: %v", left)
	}
	assertGone(t, l.ID, procs)
	if _, err := os.Stat(l.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab directory %s not removed: %v", l.Dir, err)
	}
	if err2 := l.Close(); !errors.Is(err2, err) && (err2 != nil || err != nil) {
		t.Errorf("second Close returned %v, first %v", err2, err)
	}
}

// TestLab starts the full lab once and checks each part against real traffic.
func TestLab(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t0 := time.Now()
	l, err := Start(ctx, Options{Zones: fullZones(), Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("full lab %s: Start took %v", l.ID, time.Since(t0).Round(time.Millisecond))
	closed := false
	t.Cleanup(func() {
		if !closed {
			l.Close()
		}
	})

	t.Run("nodes", func(t *testing.T) {
		if !idPattern.MatchString(l.ID) {
			t.Errorf("ID %q does not match %v", l.ID, idPattern)
		}
		if len(l.Nodes()) != 8 {
			t.Errorf("%d nodes, want 8", len(l.Nodes()))
		}
		want := map[string]bool{GWA: true, GWB: true, HostA: true, HostB: true}
		for _, n := range l.Nodes() {
			if n.NS != l.ID+"-"+n.Name {
				t.Errorf("%s: NS %q", n.Name, n.NS)
			}
			if (n.VICI != "") != want[n.Name] {
				t.Errorf("%s: VICI %q", n.Name, n.VICI)
			}
			if _, err := os.Stat(filepath.Join(netnsDir, n.NS)); err != nil {
				t.Errorf("%s: %v", n.Name, err)
			}
		}
		if l.Node(GWA).Addr != GWAInet || l.Node(GWA).LAN != LANA || l.Node(GWB).LANAddr != GWBLAN || l.Node(Bob).Addr != BobAddr {
			t.Error("node addresses do not match the constants")
		}
		if got := l.DNSServer().String(); got != "192.0.2.53:53" {
			t.Errorf("DNSServer %s", got)
		}
		// The root namespace got no lab interface.
		out, err := exec.Command("ip", "-o", "link").CombinedOutput()
		if err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"lan0", "inet0", "br0"} {
			if strings.Contains(string(out), " "+name+"@") || strings.Contains(string(out), " "+name+":") {
				t.Errorf("interface %s in the root namespace:\n%s", name, out)
			}
		}
	})

	t.Run("dns with dig", func(t *testing.T) {
		for _, c := range []struct {
			name, qtype, status string
			ad                  bool
			answer              string
		}{
			{"bob.example.test", "A", "NOERROR", true, "10.2.0.10"},
			{"bob.example.test", "TXT", "NOERROR", true, `"obol lab"`},
			{"11.2.0.192.in-addr.arpa", "PTR", "NOERROR", true, "hosta.example.test."},
			{"11.2.0.192.in-addr.arpa", "TXT", "NOERROR", true, `"hosta"`},
			{"www.plain.test", "A", "NOERROR", false, "192.0.2.12"},
			{"x.bogus.test", "A", "SERVFAIL", false, ""},
		} {
			out, err := l.Node(HostA).Exec(ctx, "dig", "@192.0.2.53", "+dnssec", "+time=2", "+tries=1", c.name, c.qtype)
			if err != nil {
				t.Fatal(err)
			}
			s := string(out)
			if !strings.Contains(s, "status: "+c.status+",") {
				t.Errorf("%s %s: want status %s:\n%s", c.name, c.qtype, c.status, s)
			}
			flags := digFlags(s)
			if hasAD := strings.Contains(" "+flags+" ", " ad "); hasAD != c.ad {
				t.Errorf("%s %s: flags %q, want AD=%v", c.name, c.qtype, flags, c.ad)
			}
			if c.answer != "" && !strings.Contains(s, c.answer) {
				t.Errorf("%s %s: no %s in answer:\n%s", c.name, c.qtype, c.answer, s)
			}
			if c.ad && !strings.Contains(s, "RRSIG") {
				t.Errorf("%s %s: signed answer without RRSIG:\n%s", c.name, c.qtype, s)
			}
		}
	})

	t.Run("dns with miekg from alice and hostb", func(t *testing.T) {
		for _, node := range []string{Alice, HostB} {
			r, err := l.Node(node).QueryDNS(ctx, "bob.example.test.", dns.TypeA)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData || len(r.Answer) == 0 {
				t.Errorf("from %s: %v", node, r)
			}
			r, err = l.Node(node).QueryDNS(ctx, "www.plain.test.", dns.TypeA)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != dns.RcodeSuccess || r.AuthenticatedData {
				t.Errorf("unsigned zone from %s: want NOERROR without AD: %v", node, r)
			}
			r, err = l.Node(node).QueryDNS(ctx, "x.bogus.test.", dns.TypeA)
			if err != nil {
				t.Fatal(err)
			}
			if r.Rcode != dns.RcodeServerFailure {
				t.Errorf("bogus zone from %s: want SERVFAIL: %v", node, r)
			}
		}
	})

	t.Run("clear path seen on the wire", func(t *testing.T) {
		c, err := l.Capture(ctx, Inet, Bridge, "icmp")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := l.Node(Alice).Exec(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "2", BobAddr.String()); err != nil {
			c.Stop()
			t.Fatalf("alice cannot reach bob in clear: %v", err)
		}
		lines, err := c.Stop()
		if err != nil {
			t.Fatal(err)
		}
		req, rep := 0, 0
		for _, ln := range lines {
			if strings.Contains(ln, "10.1.0.10 > 10.2.0.10: ICMP echo request") {
				req++
			}
			if strings.Contains(ln, "10.2.0.10 > 10.1.0.10: ICMP echo reply") {
				rep++
			}
		}
		if req != 2 || rep != 2 {
			t.Errorf("br0 saw %d requests and %d replies, want 2 and 2:\n%s", req, rep, strings.Join(lines, "\n"))
		}
		// Gateways route, hosts see each other, hosts do not reach the LANs.
		if _, err := l.Node(HostA).Exec(ctx, "ping", "-c", "1", "-W", "2", HostBAddr.String()); err != nil {
			t.Error(err)
		}
		if _, err := l.Node(HostA).Exec(ctx, "ping", "-c", "1", "-W", "1", BobAddr.String()); err == nil {
			t.Error("hosta reaches bob: hosts should have no route to the LANs")
		}
	})

	t.Run("vici", func(t *testing.T) {
		for _, name := range DefaultCharon() {
			n := l.Node(name)
			out, err := n.Swanctl(ctx, "--stats")
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(out), "kernel-libipsec") || !strings.Contains(string(out), "IKE_SAs: 0 total") {
				t.Errorf("%s: unexpected stats:\n%s", name, out)
			}
			if err := viciPing(ctx, n.VICI); err != nil {
				t.Error(err)
			}
			// charon runs in the node's namespace.
			if p := n.Charon(); p == nil || !inNamespace(p.PID, n.NS) {
				t.Errorf("%s: charon %v not in %s", name, p, n.NS)
			}
		}
		if _, err := l.Node(Alice).Swanctl(ctx, "--stats"); err == nil {
			t.Error("Swanctl on a node without charon should fail")
		}
	})

	t.Run("charon restart", func(t *testing.T) {
		n := l.Node(HostA)
		old := n.Charon()
		if err := n.KillCharon(); err != nil {
			t.Fatal(err)
		}
		if !old.Exited() {
			t.Fatal("charon alive after KillCharon")
		}
		t0 := time.Now()
		if err := n.StartCharon(ctx); err != nil {
			t.Fatal(err)
		}
		t.Logf("charon restart after SIGKILL: %v", time.Since(t0).Round(time.Millisecond))
		if n.Charon().PID == old.PID {
			t.Error("same PID after restart")
		}
		if _, err := n.Swanctl(ctx, "--stats"); err != nil {
			t.Error(err)
		}
		// A clean stop, then start again.
		t0 = time.Now()
		if err := n.StopCharon(); err != nil {
			t.Fatal(err)
		}
		t.Logf("charon SIGTERM stop: %v", time.Since(t0).Round(time.Millisecond))
		if err := n.StartCharon(ctx); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("processes", func(t *testing.T) { testProcesses(ctx, t, l) })

	t.Run("sockets in namespaces", func(t *testing.T) {
		ln, err := l.Node(Bob).Listen(ctx, "tcp", "10.2.0.10:7000")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		go func() {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			io.Copy(c, c)
		}()
		c, err := l.Node(Alice).Dial(ctx, "tcp", "10.2.0.10:7000")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := c.LocalAddr().String(); !strings.HasPrefix(got, "10.1.0.10:") {
			t.Errorf("alice's socket has local address %s", got)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(c, "ping\n")
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Errorf("echo through the lab: %q, %v", line, err)
		}
	})

	t.Run("set zone", func(t *testing.T) {
		t0 := time.Now()
		if err := l.SetZone(ctx, Zone{Name: "late.test", Records: []string{"x 300 IN A 10.9.9.9"}}); err != nil {
			t.Fatal(err)
		}
		t.Logf("SetZone (new zone): %v", time.Since(t0).Round(time.Millisecond))
		r, err := l.Node(HostA).QueryDNS(ctx, "x.late.test", dns.TypeA)
		if err != nil {
			t.Fatal(err)
		}
		if !r.AuthenticatedData || firstA(r) != "10.9.9.9" {
			t.Errorf("late.test: %v", r)
		}
		z := fullZones()[0]
		z.Records = []string{"bob 300 IN A 10.2.0.99"}
		t0 = time.Now()
		if err := l.SetZone(ctx, z); err != nil {
			t.Fatal(err)
		}
		t.Logf("SetZone (replace): %v", time.Since(t0).Round(time.Millisecond))
		r, err = l.Node(HostA).QueryDNS(ctx, "bob.example.test", dns.TypeA)
		if err != nil {
			t.Fatal(err)
		}
		if !r.AuthenticatedData || firstA(r) != "10.2.0.99" {
			t.Errorf("replaced example.test: %v", r)
		}
		// A broken zone is refused and changes nothing.
		err = l.SetZone(ctx, Zone{Name: "example.test", Records: []string{"bob 300 IN A 10.2.0.300"}})
		if err == nil || !strings.Contains(err.Error(), "invalid") {
			t.Errorf("broken record: want an invalid-zone error, got %v", err)
		}
		r, err = l.Node(HostA).QueryDNS(ctx, "bob.example.test", dns.TypeA)
		if err != nil || !r.AuthenticatedData || len(r.Answer) == 0 {
			t.Errorf("after a refused SetZone: %v %v", r, err)
		}
	})

	closed = true
	closeAndCheck(t, l)
}

func firstA(r *dns.Msg) string {
	for _, rr := range r.Answer {
		if a, ok := rr.(*dns.A); ok {
			return a.A.String()
		}
	}
	return ""
}

func digFlags(out string) string {
	for _, line := range strings.Split(out, "\n") {
		if i := strings.Index(line, ";; flags: "); i >= 0 {
			f := line[i+len(";; flags: "):]
			if j := strings.IndexByte(f, ';'); j >= 0 {
				f = f[:j]
			}
			return f
		}
	}
	return ""
}

func inNamespace(pid int, ns string) bool {
	var st syscall.Stat_t
	if syscall.Stat(filepath.Join(netnsDir, ns), &st) != nil {
		return false
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
	return err == nil && link == fmt.Sprintf("net:[%d]", st.Ino)
}

func testProcesses(ctx context.Context, t *testing.T, l *Lab) {
	bob := l.Node(Bob)
	p, err := bob.Start(ctx, "sleeper", []string{"sleep", "1000"}, []string{"OBOL_LAB_TEST=1"})
	if err != nil {
		t.Fatal(err)
	}
	if p.Exited() || !inNamespace(p.PID, bob.NS) {
		t.Fatalf("sleeper %d not running in %s", p.PID, bob.NS)
	}
	if env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", p.PID)); !strings.Contains(string(env), "OBOL_LAB_TEST=1") {
		t.Error("env not passed")
	}
	if err := p.Stop(time.Second); err != nil || !p.Exited() {
		t.Fatalf("Stop: %v, exited %v", err, p.Exited())
	}
	var ee *exec.ExitError
	if err := p.Wait(ctx); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGTERM {
		t.Errorf("Wait after SIGTERM: %v", err)
	}

	// A process that ignores SIGTERM is SIGKILLed after the timeout.
	p, err = bob.Start(ctx, "stubborn", []string{"sh", "-c", `trap "" TERM; exec sleep 1000`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let sh install the trap
	t0 := time.Now()
	if err := p.Stop(300 * time.Millisecond); err != nil || !p.Exited() {
		t.Fatalf("Stop of a TERM-ignoring process: %v", err)
	}
	if d := time.Since(t0); d < 300*time.Millisecond {
		t.Errorf("stubborn process stopped after %v: SIGTERM was not ignored?", d)
	}
	if err := p.Wait(ctx); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("Wait after SIGKILL: %v", err)
	}

	// Kill, Signal, exit status and log.
	p, err = bob.Start(ctx, "victim", []string{"sleep", "1000"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Kill(); err != nil || !p.Exited() {
		t.Fatalf("Kill: %v", err)
	}
	p, err = bob.Start(ctx, "hup", []string{"sleep", "1000"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := p.Wait(wctx); !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGHUP {
		t.Errorf("Wait after SIGHUP: %v", err)
	}
	p, err = bob.Start(ctx, "talker", []string{"sh", "-c", "echo hello-log; echo err-log >&2; exit 3"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Wait(wctx); !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("Wait: %v, want exit status 3", err)
	}
	if b, _ := os.ReadFile(p.Log); !strings.Contains(string(b), "hello-log") || !strings.Contains(string(b), "err-log") || p.Log != filepath.Join(bob.Dir, "talker.log") {
		t.Errorf("log %s: %q", p.Log, b)
	}
	// Wait honours its context.
	p, err = bob.Start(ctx, "long", []string{"sleep", "1000"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	sctx, scancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer scancel()
	if err := p.Wait(sctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Wait with a short ctx: %v", err)
	}
	// Left running on purpose: Close must stop it.

	// Exec: output, error with output, ctx cancel.
	out, err := bob.Exec(ctx, "sh", "-c", "echo out; echo err >&2; exit 2")
	if err == nil || !strings.Contains(err.Error(), "err") || !strings.Contains(string(out), "out") {
		t.Errorf("Exec failing command: %q, %v", out, err)
	}
	ectx, ecancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer ecancel()
	t0 = time.Now()
	if _, err := bob.Exec(ectx, "sleep", "10"); err == nil || time.Since(t0) > 3*time.Second {
		t.Errorf("Exec with a cancelled ctx: %v after %v", err, time.Since(t0))
	}
	if p, err := bob.WriteFile("sub/x.conf", []byte("x")); err != nil || p != filepath.Join(bob.Dir, "sub/x.conf") {
		t.Errorf("WriteFile: %s %v", p, err)
	}
	if _, err := bob.WriteFile("../escape", []byte("x")); err == nil {
		t.Error("WriteFile outside the node directory accepted")
	}
}

// TestIPsecDatapaths proves the lab carries the tunnels the e2e tests need,
// with the charon settings it writes (fwmarks on gateways too): subnets
// between gateways, a /32 pair behind them (with the workaround), and
// host to host. On the wire only ESP-in-UDP may be seen.
func TestIPsecDatapaths(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	l, err := Start(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			l.Close()
		}
	})

	tunnel := func(t *testing.T, a, b *Node, localTS, remoteTS string, from *Node, to string, clear string) {
		t.Helper()
		for _, side := range []struct {
			n, peer *Node
			lts     string
			rts     string
		}{{a, b, localTS, remoteTS}, {b, a, remoteTS, localTS}} {
			conf := fmt.Sprintf(`connections {
	lab {
		local_addrs = %s
		remote_addrs = %s
		local {
			auth = psk
			id = %s
		}
		remote {
			auth = psk
			id = %s
		}
		children {
			lab {
				local_ts = %s
				remote_ts = %s
			}
		}
	}
}
secrets {
	ike-lab {
		id-a = %s
		id-b = %s
		secret = "obol-lab-test-psk"
	}
}
`, side.n.Addr, side.peer.Addr, side.n.Name, side.peer.Name, side.lts, side.rts, side.n.Name, side.peer.Name)
			f, err := side.n.WriteFile("swanctl.conf", []byte(conf))
			if err != nil {
				t.Fatal(err)
			}
			if out, err := side.n.Swanctl(ctx, "--load-all", "--file", f); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		}
		if out, err := a.Swanctl(ctx, "--initiate", "--child", "lab", "--timeout", "10"); err != nil {
			t.Fatalf("initiate: %v\n%s\n%s", err, out, tail(a.CharonLog(), 20))
		}
		c, err := l.Capture(ctx, Inet, Bridge, "icmp or udp")
		if err != nil {
			t.Fatal(err)
		}
		if out, err := from.Exec(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "2", to); err != nil {
			c.Stop()
			t.Fatalf("ping through the tunnel: %v\n%s\n%s", err, out, tail(a.CharonLog(), 20))
		}
		lines, err := c.Stop()
		if err != nil {
			t.Fatal(err)
		}
		esp := 0
		for _, ln := range lines {
			if strings.Contains(ln, clear) || strings.Contains(ln, "ICMP") {
				t.Errorf("clear packet on the wire: %s", ln)
			}
			if strings.Contains(ln, ".4500: UDP-encap: ESP") {
				esp++
			}
		}
		if esp < 6 {
			t.Errorf("%d ESP-in-UDP packets on the wire, want >= 6:\n%s", esp, strings.Join(lines, "\n"))
		}
		// Restart both charons: a fresh state for the next case.
		for _, n := range []*Node{a, b} {
			if err := n.StartCharon(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	gwa, gwb := l.Node(GWA), l.Node(GWB)
	t.Run("gateway subnets", func(t *testing.T) {
		tunnel(t, gwa, gwb, LANA.String(), LANB.String(), l.Node(Alice), BobAddr.String(), "10.1.0.10 > 10.2.0.10")
	})
	t.Run("host pair behind gateways with workaround", func(t *testing.T) {
		if err := l.RouteHostPairWorkaround(ctx); err != nil {
			t.Fatal(err)
		}
		if err := l.RouteHostPairWorkaround(ctx); err != nil {
			t.Fatalf("second call: %v", err)
		}
		tunnel(t, gwa, gwb, AliceAddr.String()+"/32", BobAddr.String()+"/32", l.Node(Alice), BobAddr.String(), "10.1.0.10 > 10.2.0.10")
	})
	t.Run("host to host", func(t *testing.T) {
		tunnel(t, l.Node(HostA), l.Node(HostB), "dynamic", "dynamic", l.Node(HostA), HostBAddr.String(), "192.0.2.11 > 192.0.2.12: ICMP")
	})
	closed = true
	closeAndCheck(t, l)
}

// TestParallelLabs starts two small labs at once: distinct IDs, separate
// wires, no DNS without zones, both clean after Close.
func TestParallelLabs(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	labs := make([]*Lab, 2)
	errs := make([]error, 2)
	var wg sync.WaitGroup
	t0 := time.Now()
	// The second lab also exercises Options.Dir (a directory it creates).
	dirs := []string{"", filepath.Join(t.TempDir(), "lab")}
	for i := range labs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			labs[i], errs[i] = Start(ctx, Options{Charon: []string{HostA}, Dir: dirs[i]})
		}()
	}
	wg.Wait()
	t.Logf("two labs in parallel: %v", time.Since(t0).Round(time.Millisecond))
	for i, err := range errs {
		if err != nil {
			for _, l := range labs {
				if l != nil {
					l.Close()
				}
			}
			t.Fatalf("lab %d: %v", i, err)
		}
	}
	a, b := labs[0], labs[1]
	if a.ID == b.ID || a.Dir == b.Dir {
		t.Fatalf("labs share ID or dir: %s %s", a.ID, b.ID)
	}
	if b.Dir != dirs[1] || b.Node(HostA).VICI != filepath.Join(dirs[1], HostA, "charon.vici") {
		t.Errorf("Options.Dir not used: %s, %s", b.Dir, b.Node(HostA).VICI)
	}
	for _, l := range labs {
		if p := processesIn([]string{l.Node(DNS).NS}); len(p) > 0 {
			t.Errorf("lab without zones runs processes in dns: %v", p)
		}
		if l.Node(GWA).VICI != "" || l.Node(HostA).VICI == "" {
			t.Error("Options.Charon not honoured")
		}
		if _, err := l.Node(HostA).Swanctl(ctx, "--stats"); err != nil {
			t.Error(err)
		}
	}
	// Traffic in one lab is not on the other's wire.
	ca, err := a.Capture(ctx, Inet, Bridge, "icmp")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := b.Capture(ctx, Inet, Bridge, "icmp")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Node(HostA).Exec(ctx, "ping", "-c", "2", "-i", "0.2", "-W", "2", HostBAddr.String()); err != nil {
		t.Error(err)
	}
	la, _ := ca.Stop()
	lb, _ := cb.Stop()
	if len(la) < 4 || len(lb) != 0 {
		t.Errorf("lab a saw %d ICMP packets (want 4), lab b %d (want 0):\n%s\n--\n%s", len(la), len(lb), strings.Join(la, "\n"), strings.Join(lb, "\n"))
	}
	// SetZone starts DNS in a lab that had none.
	if err := a.SetZone(ctx, Zone{Name: "late.test", Records: []string{"x 300 IN A 10.9.9.9"}}); err != nil {
		t.Fatal(err)
	}
	r, err := a.Node(HostA).QueryDNS(ctx, "x.late.test", dns.TypeA)
	if err != nil || !r.AuthenticatedData || firstA(r) != "10.9.9.9" {
		t.Errorf("DNS started by SetZone: %v %v", r, err)
	}
	if p := processesIn([]string{b.Node(DNS).NS}); len(p) > 0 {
		t.Errorf("SetZone on lab a started processes in lab b: %v", p)
	}

	wg.Add(2)
	for _, l := range labs {
		go func() {
			defer wg.Done()
			closeAndCheck(t, l)
		}()
	}
	wg.Wait()
}

// TestStartFailureLeavesNothing: a bad option makes Start fail, early or
// after DNS and the network are up, and nothing of the lab remains.
func TestStartFailureLeavesNothing(t *testing.T) {
	needRoot(t)
	good := Zone{Name: "ok.test.", Records: []string{"a 300 IN A 192.0.2.1"}}
	for _, c := range []struct {
		name string
		opts Options
		want string
	}{
		{"broken record", Options{Zones: []Zone{good, {Name: "broken.test", Records: []string{"x 300 IN A 10.2.0.300"}}}}, "zone-check"},
		{"broken charon config with DNS up", Options{Zones: []Zone{good}, CharonConf: "this is { not valid"}, "charon on"},
		{"unknown node", Options{Charon: []string{"carol"}}, "carol"},
		{"bogus and unsigned", Options{Zones: []Zone{{Name: "x.test", Bogus: true, Unsigned: true}}}, "Bogus"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			l, err := Start(ctx, c.opts)
			if err == nil {
				l.Close()
				t.Fatal("Start succeeded")
			}
			if l != nil {
				t.Error("Start returned a lab with its error")
			}
			var se *StartError
			if !errors.As(err, &se) || !idPattern.MatchString(se.ID) {
				t.Fatalf("error is not a *StartError with an ID: %v", err)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("error does not mention %q: %v", c.want, err)
			}
			t.Logf("%v", err)
			assertGone(t, se.ID, nil)
		})
	}
}

// TestChildrenDieWithTestBinary kills a test binary that holds a lab
// (SIGKILL: no Close, no defer) and checks that everything the lab started
// dies with it (Pdeathsig), then purges the namespaces it left.
func TestChildrenDieWithTestBinary(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperLab$", "-test.v")
	cmd.Env = append(os.Environ(), "OBOL_LAB_HELPER=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var info helperInfo
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if s, ok := strings.CutPrefix(sc.Text(), "HELPER "); ok {
			if err := json.Unmarshal([]byte(s), &info); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if info.ID == "" {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatal("helper did not report its lab")
	}
	var procs []procID
	for _, p := range info.Procs {
		procs = append(procs, procID{p.PID, p.Start, p.Comm})
	}
	t.Logf("helper lab %s runs %d processes: %v", info.ID, len(procs), info.Procs)
	if len(procs) < 5 {
		t.Errorf("helper lab runs only %d processes, want charon, knotd, unbound, tcpdump, sleep", len(procs))
	}
	cmd.Process.Kill()
	go io.Copy(io.Discard, stdout)
	cmd.Wait()

	deadline := time.Now().Add(5 * time.Second)
	for _, p := range procs {
		for {
			st := startTime(p.pid)
			if st == "" || st != p.start || isZombie(p.pid) {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("process %d (%s) outlived the test binary that started it", p.pid, p.comm)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	if err := Purge(ctx, info.ID); err != nil {
		t.Error(err)
	}
	if strings.HasPrefix(info.Dir, os.TempDir()) && strings.Contains(info.Dir, info.ID) {
		os.RemoveAll(info.Dir)
	}
	assertGone(t, info.ID, procs)
}

type helperInfo struct {
	ID    string
	Dir   string
	Procs []struct {
		PID   int
		Start string
		Comm  string
	}
}

// TestHelperLab is the body of TestChildrenDieWithTestBinary's child; run
// on its own it does nothing.
func TestHelperLab(t *testing.T) {
	if os.Getenv("OBOL_LAB_HELPER") != "1" {
		return
	}
	ctx := context.Background()
	l, err := Start(ctx, Options{Charon: []string{HostA}, Zones: []Zone{{Name: "h.test", Records: []string{"a 300 IN A 192.0.2.1"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.Node(HostB).Start(ctx, "sleeper", []string{"sleep", "1000"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Capture(ctx, Inet, Bridge, ""); err != nil {
		t.Fatal(err)
	}
	info := helperInfo{ID: l.ID, Dir: l.Dir}
	for _, p := range labProcesses(t, l.ID) {
		info.Procs = append(info.Procs, struct {
			PID   int
			Start string
			Comm  string
		}{p.pid, p.start, p.comm})
	}
	b, _ := json.Marshal(info)
	fmt.Printf("HELPER %s\n", b)
	time.Sleep(time.Minute) // killed by the parent long before
	l.Close()
}

// TestLabIPv6: with Options.IPv6, hosta, hostb and dns speak IPv6 on the
// internet segment (on-link, usable at once), unbound answers over IPv6
// and validates an ip6.arpa zone knot signs, and every other node keeps
// IPv6 off.
func TestLabIPv6(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rev, err := dns.ReverseAddr(HostAAddr6.String())
	if err != nil {
		t.Fatal(err)
	}
	const zone = "8.b.d.0.1.0.0.2.ip6.arpa."
	l, err := Start(ctx, Options{IPv6: true, Charon: []string{}, Logger: testLogger(t), Zones: []Zone{
		{Name: zone, Records: []string{strings.TrimSuffix(rev, "."+zone) + " 300 IN PTR hosta.example.test."}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAndCheck(t, l)

	for _, c := range []struct {
		node string
		want netip.Addr
	}{{HostA, HostAAddr6}, {HostB, HostBAddr6}, {DNS, DNSAddr6}, {GWA, netip.Addr{}}, {Alice, netip.Addr{}}, {Inet, netip.Addr{}}} {
		n := l.Node(c.node)
		if n.Addr6 != c.want {
			t.Errorf("%s: Addr6 %v, want %v", c.node, n.Addr6, c.want)
		}
		out, err := n.Exec(ctx, "sysctl", "-n", "net.ipv6.conf.all.disable_ipv6")
		if err != nil {
			t.Fatal(err)
		}
		if off := strings.TrimSpace(string(out)) == "1"; off == c.want.IsValid() {
			t.Errorf("%s: net.ipv6.conf.all.disable_ipv6 = %s", c.node, bytes.TrimSpace(out))
		}
	}
	// No DAD: the first ping goes through, in both directions.
	ha, hb := l.Node(HostA), l.Node(HostB)
	for _, p := range []struct {
		from *Node
		to   netip.Addr
	}{{ha, HostBAddr6}, {hb, HostAAddr6}, {ha, DNSAddr6}} {
		if out, err := p.from.Exec(ctx, "ping", "-6", "-c", "1", "-W", "2", p.to.String()); err != nil {
			t.Errorf("ping %s from %s: %v\n%s", p.to, p.from.Name, err, out)
		}
	}
	for _, q := range []struct {
		name  string
		query func(context.Context, string, uint16) (*dns.Msg, error)
	}{{"IPv6", ha.QueryDNS6}, {"IPv4", ha.QueryDNS}} {
		r, err := q.query(ctx, rev, dns.TypePTR)
		if err != nil {
			t.Fatalf("%s: %v", q.name, err)
		}
		if r.Rcode != dns.RcodeSuccess || !r.AuthenticatedData || len(r.Answer) == 0 {
			t.Errorf("%s: PTR %s: rcode %s AD %v answer %v", q.name, rev, dns.RcodeToString[r.Rcode], r.AuthenticatedData, r.Answer)
		}
	}
	if l.DNSServer6() != netip.AddrPortFrom(DNSAddr6, DNSPort) {
		t.Errorf("DNSServer6 %v", l.DNSServer6())
	}
}

// TestAddHostsBehind: extra hosts behind gwb answer from the internet side
// (routes everywhere, the addresses on bob), and bad arguments say what is
// wrong without changing anything.
func TestAddHostsBehind(t *testing.T) {
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	l, err := Start(ctx, Options{Charon: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	defer closeAndCheck(t, l)
	for _, bad := range []struct {
		gw     string
		prefix string
		n      int
		want   string
	}{
		{HostA, "10.2.1.0/24", 3, "not a gateway"},
		{GWB, "10.2.0.128/25", 3, "overlaps"},
		{GWB, "10.2.1.0/30", 3, "do not fit"},
		{GWB, "10.2.1.0/24", 0, "do not fit"},
	} {
		if _, err := l.AddHostsBehind(ctx, bad.gw, netip.MustParsePrefix(bad.prefix), bad.n); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("AddHostsBehind(%s, %s, %d): %v, want %q", bad.gw, bad.prefix, bad.n, err, bad.want)
		}
	}
	addrs, err := l.AddHostsBehind(ctx, GWB, netip.MustParsePrefix("10.2.1.0/24"), 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 3 || addrs[0].String() != "10.2.1.1" || addrs[2].String() != "10.2.1.3" {
		t.Fatalf("addresses %v", addrs)
	}
	for _, from := range []string{HostA, GWA, Alice} {
		for _, a := range addrs {
			if out, err := l.Node(from).Exec(ctx, "ping", "-c", "1", "-W", "2", a.String()); err != nil {
				t.Errorf("%s cannot reach %s: %v\n%s", from, a, err, out)
			}
		}
	}
}

package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/tokenapi/client"
	tokenwire "github.com/obol-ipsec/obol/tokenapi/wire"
)

// pluginChildren lists the pids of obol-module processes obold started.
func pluginChildren(t *testing.T, obold int) []int {
	t.Helper()
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", obold))
	for _, f := range tasks {
		b, _ := os.ReadFile(f)
		for _, s := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(s)
			if err != nil {
				continue
			}
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); strings.HasSuffix(exe, "/obol-module") {
				out = append(out, pid)
			}
		}
	}
	return out
}

// TestOEResolverPlugin: host OE with hosta's resolver running as an
// external go-plugin process (obol-module). The plugin is killed mid-run;
// obold restarts it, and the next tunnel setup (a fresh DNS lookup in the
// new process) succeeds, with nothing in clear under `private`.
func TestOEResolverPlugin(t *testing.T) {
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
	cfgA := filepath.Join(ha.Dir, "obold.toml")
	plugin := fmt.Sprintf("[modules.resolver]\nplugin = %q\nargs = [\"--config\", %q, \"resolver\"]\ncall_timeout = \"3s\"\n",
		filepath.Join(binDir, "obol-module"), cfgA)
	oa := startObold(t, ha, oeHost("192.0.2.11", "", "192.0.2.12", ka)+plugin)
	startObold(t, hb, oeHost("192.0.2.12", "", "192.0.2.11", kb))
	if oa.config != cfgA {
		t.Fatalf("obold's config is %s, the plugin reads %s", oa.config, cfgA)
	}
	clear := wire(t, l, "icmp and host 192.0.2.11 and host 192.0.2.12")

	first := reachOE(t, ctx, ha, oa, "192.0.2.12")
	if first.KeySource == "" || first.DNSSEC != "secure" {
		t.Errorf("tunnel from the plugin resolver's answer: %+v", first)
	}

	pids := pluginChildren(t, oa.proc.PID)
	if len(pids) != 1 {
		t.Fatalf("obold's obol-module children: %v, want one", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	var again []int
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		again = pluginChildren(t, oa.proc.PID)
		if len(again) == 1 && again[0] != pids[0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new resolver plugin 5s after the kill: children %v", again)
		}
	}
	oa.waitLog("module plugin restarted", 5*time.Second)
	st, err := oa.status()
	if err != nil || !strings.Contains(st.Obold.Modules["resolver"], "[resolver plugin "+filepath.Join(binDir, "obol-module")) ||
		!strings.Contains(st.Obold.Modules["resolver"], "restarts 1") {
		t.Errorf("obolctl status after the restart: modules %v, err %v", st.Obold.Modules, err)
	}

	// Close the tunnel; the next packet needs a new setup, and with it a
	// lookup in the new plugin process (its cache starts empty).
	swanctl(t, ha, "--terminate", "--ike", first.Conn)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		ts := oa.oeList()
		gone := true
		for _, tu := range ts {
			if tu.Pair.Dst.String() == "192.0.2.12" && tu.State == oe.StateUp {
				gone = false
			}
		}
		if gone {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the terminated tunnel is still listed up: %+v", ts)
		}
	}
	second := reachOE(t, ctx, ha, oa, "192.0.2.12")
	if second.DNSSEC != "secure" {
		t.Errorf("second tunnel: %+v", second)
	}
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Errorf("ICMP between the hosts went out in clear:\n%s", strings.Join(lines, "\n"))
	}
}

// TestTokenAPIPlugin: hosta's token API module runs as an external plugin
// (obol-module tokenapi) over a swanctl tunnel: an application hands it
// its TCP socket and learns the tunnel's peer. The plugin is killed; obold
// restarts it, it listens on the socket again, and a new client's query
// gets the same answer.
func TestTokenAPIPlugin(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	loadSwanctl(t, ha, swanctlHosts("192.0.2.11", "192.0.2.12"))
	loadSwanctl(t, hb, swanctlHosts("192.0.2.12", "192.0.2.11"))
	sock := filepath.Join(ha.Dir, "token.sock")
	cfgA := filepath.Join(ha.Dir, "obold.toml")
	oa := startObold(t, ha, fmt.Sprintf("[tokenapi]\nenabled = true\nsocket = %q\n[modules.tokenapi]\nplugin = %q\nargs = [\"--config\", %q, \"tokenapi\"]\n",
		sock, filepath.Join(binDir, "obol-module"), cfgA))
	oa.allowErrors = []string{"module plugin failed", "the plugin process exited", "token API plugin", "tokenapi plugin"}
	startObold(t, hb, "")

	ln, err := hb.Listen(ctx, "tcp", "192.0.2.12:7003")
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
			defer c.Close()
		}
	}()
	// query dials through the tunnel and asks the token API about it.
	query := func(what string) {
		t.Helper()
		c, err := client.Dial(ctx, sock)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		defer c.Close()
		conn, err := ha.Dial(ctx, "tcp", "192.0.2.12:7003")
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		pt, err := c.PToken(ctx, conn.(*net.TCPConn))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !pt.Protected || !pt.Privacy || pt.IToken == 0 {
			t.Fatalf("%s: pToken %+v", what, pt)
		}
		it, err := c.IToken(ctx, pt.IToken)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if it.RemoteID != "192.0.2.12" {
			t.Fatalf("%s: the peer is %q, want 192.0.2.12 (%s)", what, it.RemoteID, it.Audit)
		}
		t.Logf("%s: %s | %s", what, pt.Audit, it.Audit)
	}
	// Before the tunnel: the plugin's answer is obold's WhyNot, over
	// the brokered TokenHost.
	{
		c, err := pluginDial(ctx, sock)
		if err != nil {
			t.Fatal(err)
		}
		conn, err := ha.Dial(ctx, "tcp", "192.0.2.12:7003")
		if err != nil {
			t.Fatal(err)
		}
		pt, err := c.PToken(ctx, conn.(*net.TCPConn))
		conn.Close()
		c.Close()
		if err != nil || pt.Protected || pt.Why == tokenwire.ReasonNone || pt.WhyText == "" {
			t.Fatalf("before the tunnel: %+v, %v", pt, err)
		}
		t.Logf("before the tunnel: %s: %s", pt.Why, pt.WhyText)
	}
	// The tunnel comes up: obold's generation moves, the Watch stream
	// tells the plugin, and its next query sees the SA.
	swanctl(t, ha, "--initiate", "--child", "host")
	query("plugin")

	pids := pluginChildren(t, oa.proc.PID)
	if len(pids) != 1 {
		t.Fatalf("obold's obol-module children: %v, want one", pids)
	}
	if err := syscall.Kill(pids[0], syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		again := pluginChildren(t, oa.proc.PID)
		if len(again) == 1 && again[0] != pids[0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no new token API plugin 5s after the kill: children %v", again)
		}
	}
	oa.waitLog("module plugin restarted", 5*time.Second)
	// The new process listens again once it has served its first Watch.
	var lastErr error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var c *client.Client
		if c, lastErr = client.Dial(ctx, sock); lastErr == nil {
			c.Close()
			break
		}
	}
	if lastErr != nil {
		t.Fatalf("the restarted plugin does not listen on %s: %v", sock, lastErr)
	}
	query("restarted plugin")

	// A reload keeps the running token API plugin (its socket and
	// clients): the same process answers after it.
	running := pluginChildren(t, oa.proc.PID)
	if err := oa.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	oa.waitLog("reloaded", 10*time.Second)
	if after := pluginChildren(t, oa.proc.PID); len(after) != 1 || len(running) != 1 || after[0] != running[0] {
		t.Fatalf("token API plugin across a reload: %v before, %v after; want the same one process", running, after)
	}
	query("after a reload")
	st, err := oa.status()
	if err != nil || !strings.Contains(st.Obold.Modules["tokenapi"], "plugin "+filepath.Join(binDir, "obol-module")) ||
		!strings.Contains(st.Obold.Modules["tokenapi"], "restarts 1") {
		t.Errorf("obolctl status after the restart: modules %v, err %v", st.Obold.Modules, err)
	}
	oa.stop()
}

// pluginDial connects to a token API socket a plugin process may still be
// opening.
func pluginDial(ctx context.Context, sock string) (*client.Client, error) {
	var err error
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var c *client.Client
		if c, err = client.Dial(ctx, sock); err == nil {
			return c, nil
		}
	}
	return nil, err
}

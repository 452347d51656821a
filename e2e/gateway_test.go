package e2e

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/e2e/scenario"
	"github.com/obol-ipsec/obol/internal/control"
)

func loadSwanctl(t *testing.T, n *lab.Node, conf string) {
	t.Helper()
	path, err := n.WriteFile("swanctl.conf", []byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	swanctl(t, n, "--load-all", "--file", path)
}

// pingOK pings from node to dst and fails the test if no reply comes.
func pingOK(t *testing.T, from *lab.Node, dst string) {
	t.Helper()
	run(t, from, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst)
}

// tcpTransfer sends 1 MiB of random bytes from one node to another over TCP
// and checks that every byte arrived.
func tcpTransfer(t *testing.T, from, to *lab.Node, dst string, port int) {
	t.Helper()
	data := make([]byte, 1<<20)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	src, err := from.WriteFile("tcp-send.bin", data)
	if err != nil {
		t.Fatal(err)
	}
	recv := filepath.Join(to.Dir, "tcp-recv.bin")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// OpenBSD nc listens on IPv4 only unless told -6.
	family := ""
	if strings.Contains(dst, ":") {
		family = "-6 "
	}
	srv, err := to.Start(ctx, "nc-listen", []string{"sh", "-c", fmt.Sprintf("exec nc %s-l -p %d > %s", family, port, recv)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop(2 * time.Second)
	// Wait until the listener is there rather than guessing a delay.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _ := to.Exec(ctx, "ss", "-ltn", fmt.Sprintf("sport = :%d", port))
		if strings.Contains(string(out), fmt.Sprintf(":%d", port)) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("nc on %s did not listen on %d", to.Name, port)
		}
		time.Sleep(20 * time.Millisecond)
	}
	run(t, from, "sh", "-c", fmt.Sprintf("nc -N -w 10 %s %d < %s", dst, port, src))
	if err := srv.Wait(ctx); err != nil && !srv.Exited() {
		t.Fatalf("receiver did not finish: %v", err)
	}
	got, err := os.ReadFile(recv)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(data) || sha256.Sum256(got) != sha256.Sum256(data) {
		t.Fatalf("TCP transfer %s -> %s: received %d bytes, want %d identical bytes", from.Name, to.Name, len(got), len(data))
	}
}

// wire captures on the internet bridge, where every packet between the
// sites passes.
func wire(t *testing.T, l *lab.Lab, filter string) *lab.Capture {
	t.Helper()
	c, err := l.Capture(context.Background(), lab.Inet, "br0", filter)
	if err != nil {
		t.Fatalf("capture %q: %v", filter, err)
	}
	return c
}

// assertEncrypted fails the test if the clear capture saw any packet, or if
// the encrypted one saw too few for the traffic to have crossed the tunnel
// (a ping of 3 and a 1 MiB transfer make hundreds).
func assertEncrypted(t *testing.T, clear, encrypted *lab.Capture) {
	t.Helper()
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Fatalf("%d packets in clear on the wire (%s), e.g.:\n%s", len(lines), clear.Filter, strings.Join(lines[:min(5, len(lines))], "\n"))
	}
	if lines := stopCapture(t, encrypted); len(lines) < 100 {
		t.Fatalf("only %d encrypted packets on the wire (%s): the traffic did not cross the tunnel", len(lines), encrypted.Filter)
	}
}

func stopCapture(t *testing.T, c *lab.Capture) []string {
	t.Helper()
	lines, err := c.Stop()
	if err != nil {
		t.Fatalf("stop capture: %v", err)
	}
	return lines
}

// TestGatewayTunnel: a swanctl tunnel between the gateways carries alice's
// traffic to bob with nothing in clear on the wire; obold on both gateways
// reports it with the right ids and algorithms, sees its events, survives a
// charon restart, and its own conn comes and goes without disturbing swanctl's.
func TestGatewayTunnel(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.GWA, lab.GWB}})
	gwa, gwb, alice, bob := l.Node(lab.GWA), l.Node(lab.GWB), l.Node(lab.Alice), l.Node(lab.Bob)

	loadSwanctl(t, gwa, scenario.SwanctlGateway("192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24"))
	loadSwanctl(t, gwb, scenario.SwanctlGateway("192.0.2.2", "192.0.2.1", "10.2.0.0/24", "10.1.0.0/24"))

	// obold's own conn on gwa: loaded but never initiated, so it cannot
	// take gw-gw's traffic; it shows that obold and swanctl share charon.
	psk, err := gwa.WriteFile("standby.psk", []byte("obold-standby-secret-0123456789\n"))
	if err != nil {
		t.Fatal(err)
	}
	standby := fmt.Sprintf(`
[obold]
reconcile_interval = "200ms"

[[conn]]
name = "standby"
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
psk_file = %q
  [conn.local]
  auth = "psk"
  id = "standby-a"
  [conn.remote]
  auth = "psk"
  id = "standby-b"
  [[conn.child]]
  name = "lan"
  local_ts = ["10.1.0.0/25"]
  remote_ts = ["10.2.0.0/25"]
`, psk)
	oa := startObold(t, gwa, standby)
	ob := startObold(t, gwb, "")

	// The datapath here is userspace ESP: obold must say so.
	st, err := oa.status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Charon.Datapath != "userspace" || !strings.HasPrefix(st.Charon.Version, "5.") || st.Charon.Since.IsZero() || time.Since(st.Charon.Since) < 0 || len(st.Charon.Plugins) == 0 {
		t.Errorf("status: datapath %q version %q since %s plugins %d", st.Charon.Datapath, st.Charon.Version, st.Charon.Since, len(st.Charon.Plugins))
	}
	if !slices.Equal(st.Obold.OwnedConns, []string{"obol-standby"}) {
		t.Errorf("gwa owns %v, want [obol-standby]", st.Obold.OwnedConns)
	}

	clear := wire(t, l, "net 10.0.0.0/8")
	esp := wire(t, l, "udp port 4500 or esp")
	swanctl(t, gwa, "--initiate", "--child", "net")
	pingOK(t, alice, "10.2.0.10")
	tcpTransfer(t, alice, bob, "10.2.0.10", 5001)
	assertEncrypted(t, clear, esp)

	// obold on each side reports the tunnel with the right ids and algorithms.
	for _, side := range []struct {
		o             *obold
		local, remote string
		lts, rts      string
	}{
		{oa, "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24"},
		{ob, "192.0.2.2", "192.0.2.1", "10.2.0.0/24", "10.1.0.0/24"},
	} {
		sa := findSA(side.o.sas(), "gw-gw")
		if sa == nil {
			t.Fatalf("%s: obolctl sas has no gw-gw", side.o.node.Name)
		}
		checkGatewaySA(t, side.o.node.Name, sa, side.local, side.remote, side.lts, side.rts)
		evs := side.o.events()
		if !hasEvent(evs, "ike-updown", true, "gw-gw") || !hasEvent(evs, "child-updown", true, "gw-gw") {
			t.Errorf("%s: obold did not see the up events: %+v", side.o.node.Name, evs)
		}
		table, err := side.o.ctl("sas")
		if err != nil || !strings.Contains(string(table), "gw-gw #") || !strings.Contains(string(table), "TUNNEL ESP UDP-encap") || !strings.Contains(string(table), "AES_CBC-256") {
			t.Errorf("%s: obolctl sas table:\n%s (err %v)", side.o.node.Name, table, err)
		}
	}

	// charon dies and comes back: obold reconnects and reports again
	// within 2 s of charon answering.
	if err := gwa.KillCharon(); err != nil {
		t.Fatal(err)
	}
	oa.waitStatus(5*time.Second, func(s control.Status) bool { return !s.Charon.Connected })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := gwa.StartCharon(ctx); err != nil {
		t.Fatal(err)
	}
	took := oa.waitStatus(2*time.Second, func(s control.Status) bool {
		return s.Charon.Connected && s.Obold.Reconnects == 1 && slices.Contains(s.Obold.OwnedConns, "obol-standby")
	})
	t.Logf("obold reconnected and reloaded its conn %s after charon answered", took)
	// The operator reloads swanctl, which unloads every conn not in its
	// file (obold's too): obold puts its conn back.
	loadSwanctl(t, gwa, scenario.SwanctlGateway("192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24"))
	waitConns(t, oa, []control.ConnEntry{{Name: "gw-gw", Owner: "other"}, {Name: "obol-standby", Owner: "obold"}})

	swanctl(t, gwa, "--initiate", "--child", "net")
	pingOK(t, alice, "10.2.0.10")
	sa := findSA(oa.sas(), "gw-gw")
	if sa == nil {
		t.Fatal("after the restart obolctl sas has no gw-gw")
	}
	checkGatewaySA(t, "gwa after restart", sa, "192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24")
	evs := oa.events("disconnected", "connected")
	if len(evs) < 3 || evs[len(evs)-2].Kind != "disconnected" || evs[len(evs)-1].Kind != "connected" {
		t.Errorf("events around the restart: %+v", evs)
	}

	// A reload with a broken config is refused; obold keeps the running one.
	oa.writeConfig("[obold]\nreconcile_intervall = \"1s\"\n")
	oa.allowErrors = append(oa.allowErrors, "reload refused")
	if err := oa.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, oa, `reload refused: the config has errors`, `obold.toml:9: unknown key \"reconcile_intervall\" in [obold]; did you mean \"reconcile_interval\"?`)
	if st, err := oa.status(); err != nil || !slices.Equal(st.Obold.OwnedConns, []string{"obol-standby"}) {
		t.Fatalf("after a refused reload: owned %v, err %v", st.Obold.OwnedConns, err)
	}

	// obold's conn leaves on reload and on stop; swanctl's SA is untouched.
	before := findSA(oa.sas(), "gw-gw").UniqueID
	oa.writeConfig(`[obold]
reconcile_interval = "200ms"`)
	if err := oa.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitConns(t, oa, []control.ConnEntry{{Name: "gw-gw", Owner: "other"}})
	oa.stop()
	ob.stop()
	out := swanctl(t, gwa, "--list-conns")
	if !strings.Contains(out, "gw-gw:") || strings.Contains(out, "obol-") {
		t.Errorf("after obold stopped, charon's conns are:\n%s", out)
	}
	sasOut := swanctl(t, gwa, "--list-sas", "--ike", "gw-gw")
	if !strings.Contains(sasOut, fmt.Sprintf("gw-gw: #%d", before)) || !strings.Contains(sasOut, "ESTABLISHED") {
		t.Errorf("swanctl's SA changed while obold came and went:\n%s", sasOut)
	}
	pingOK(t, alice, "10.2.0.10")

	// The down events reach a new obold's view too: terminate and look.
	ob2 := startObold(t, gwb, "")
	swanctl(t, gwa, "--terminate", "--ike", "gw-gw")
	deadline := time.Now().Add(5 * time.Second)
	for !hasEvent(ob2.events(), "ike-updown", false, "gw-gw") {
		if time.Now().After(deadline) {
			t.Fatalf("obold on gwb did not see gw-gw go down: %+v", ob2.events())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if sa := findSA(ob2.sas(), "gw-gw"); sa != nil {
		t.Errorf("gw-gw still listed after terminate: %+v", sa)
	}
	ob2.stop()
}

func checkGatewaySA(t *testing.T, where string, sa *control.SA, local, remote, lts, rts string) {
	t.Helper()
	if sa.Owner != "other" || sa.State != "ESTABLISHED" || sa.Version != 2 {
		t.Errorf("%s: owner/state/version = %s/%s/%d", where, sa.Owner, sa.State, sa.Version)
	}
	if sa.LocalHost.String() != local || sa.RemoteHost.String() != remote || sa.LocalID != local || sa.RemoteID != remote {
		t.Errorf("%s: hosts/ids = %s[%s] %s[%s]", where, sa.LocalHost, sa.LocalID, sa.RemoteHost, sa.RemoteID)
	}
	if sa.EncrAlg != "AES_CBC" || sa.EncrKeySize != 256 || sa.IntegAlg != "HMAC_SHA2_256_128" || sa.PRFAlg != "PRF_HMAC_SHA2_256" || sa.DHGroup != "MODP_3072" {
		t.Errorf("%s: IKE algorithms = %s-%d %s %s %s", where, sa.EncrAlg, sa.EncrKeySize, sa.IntegAlg, sa.PRFAlg, sa.DHGroup)
	}
	if len(sa.Children) != 1 {
		t.Fatalf("%s: %d CHILD_SAs, want 1", where, len(sa.Children))
	}
	ch := sa.Children[0]
	if ch.Name != "net" || ch.State != "INSTALLED" || ch.Mode != "TUNNEL" || ch.Protocol != "ESP" || !ch.Encap {
		t.Errorf("%s: child = %s %s %s %s encap=%v", where, ch.Name, ch.State, ch.Mode, ch.Protocol, ch.Encap)
	}
	if ch.EncrAlg != "AES_CBC" || ch.EncrKeySize != 256 || ch.IntegAlg != "HMAC_SHA2_256_128" {
		t.Errorf("%s: ESP algorithms = %s-%d %s", where, ch.EncrAlg, ch.EncrKeySize, ch.IntegAlg)
	}
	if !slices.Equal(ch.LocalTS, []string{lts}) || !slices.Equal(ch.RemoteTS, []string{rts}) {
		t.Errorf("%s: TS = %v === %v", where, ch.LocalTS, ch.RemoteTS)
	}
	if ch.PacketsIn == 0 || ch.PacketsOut == 0 || ch.BytesIn == 0 {
		t.Errorf("%s: counters in %d/%dp out %d/%dp: traffic did not use the CHILD_SA", where, ch.BytesIn, ch.PacketsIn, ch.BytesOut, ch.PacketsOut)
	}
}

// waitLog waits until obold's log holds every one of subs, more often
// than it did when sighup was called (the log outlives restarts).
func waitLog(t *testing.T, o *obold, subs ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(o.proc.Log)
		missing := ""
		for _, s := range subs {
			if strings.Count(string(b), s) <= o.seen[s] {
				missing = s
			}
		}
		if missing == "" {
			for _, s := range subs {
				o.seen[s] = strings.Count(string(b), s)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("obold's log on %s lacks a new %q:\n%s", o.node.Name, missing, b)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitConns waits until obold lists exactly want (sorted by name).
func waitConns(t *testing.T, o *obold, want []control.ConnEntry) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	var got []control.ConnEntry
	for time.Now().Before(deadline) {
		got = nil
		o.ctlJSON(&got, "conns")
		slices.SortFunc(got, func(a, b control.ConnEntry) int { return strings.Compare(a.Name, b.Name) })
		if slices.Equal(got, want) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: conns = %+v, want %+v", o.node.Name, got, want)
}

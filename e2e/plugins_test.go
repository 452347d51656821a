package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/oe"
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
	// The kernel holds back a second ACQUIRE for a pair while the first
	// one's larval state lives (30s by default); the tunnel is set up twice.
	run(t, ha, "sysctl", "-qw", "net.core.xfrm_acq_expires=1")
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

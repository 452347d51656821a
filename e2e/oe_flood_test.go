package e2e

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
)

// rssKiB reads a process's resident set size.
func rssKiB(t testing.TB, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, _ := strconv.Atoi(strings.Fields(rest)[0])
			return n
		}
	}
	t.Fatalf("no VmRSS for %d", pid)
	return 0
}

// TestOEFlood: traffic to 1,000 destinations under a private group raises
// 1,000 ACQUIREs at once; obold answers each (here: no records, so a drop
// shunt), its memory stays bounded, and obolctl keeps answering throughout.
func TestOEFlood(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.GWA}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	gwa, alice := l.Node(lab.GWA), l.Node(lab.Alice)
	run(t, gwa, "ip", "route", "replace", "10.2.0.0/16", "via", "192.0.2.2")
	ka := newOEKey(t, gwa)
	if err := l.SetZone(ctx, lab.Zone{Name: "10.in-addr.arpa.", Records: []string{`10.0.1 300 IN TXT "not an OE record"`}}); err != nil {
		t.Fatal(err)
	}
	o := startObold(t, gwa, oeConfig("192.0.2.1", "10.1.0.0/24", ka, `
[[oe.group]]
group = "private"
cidrs = ["10.2.0.0/16"]
`))
	before := rssKiB(t, o.proc.PID)
	clear := wire(t, l, "ip and net 10.2.0.0/16")

	flood, err := alice.Start(ctx, "flood", []string{"bash", "-c",
		`for i in $(seq 0 999); do echo x > /dev/udp/10.2.$((4 + i / 250)).$((1 + i % 250))/9; done`}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// obolctl answers while the flood is handled.
	var slowest time.Duration
	for !flood.Exited() {
		start := time.Now()
		if _, err := o.status(); err != nil {
			t.Fatalf("obolctl status during the flood: %v", err)
		}
		slowest = max(slowest, time.Since(start))
	}
	deadline := time.Now().Add(60 * time.Second)
	var n int
	for {
		n = len(o.oeList())
		if n >= 1000 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if n < 1000 {
		t.Fatalf("obold handled %d of 1000 destinations", n)
	}
	after := rssKiB(t, o.proc.PID)
	t.Logf("1000 ACQUIREs: RSS %d KiB -> %d KiB; slowest obolctl status during the flood %s", before, after, slowest.Round(time.Millisecond))
	if after-before > 32*1024 {
		t.Errorf("obold grew by %d KiB for 1000 pairs", after-before)
	}
	if slowest > 2*time.Second {
		t.Errorf("obolctl status took %s during the flood", slowest)
	}
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Errorf("%d flood packets left in clear under private", len(lines))
	}
	// Each pair failed for a reason obolctl shows: DNS had no records, or
	// the cap on negotiations in progress (max_pending) was reached.
	reasons := map[string]int{}
	for _, tu := range o.oeList() {
		switch {
		case tu.State == "failed" && strings.Contains(tu.Reason, "no OE records"):
			reasons["no records"]++
		case tu.State == "failed" && strings.Contains(tu.Reason, "too many negotiations in progress"):
			reasons["max_pending"]++
		default:
			t.Errorf("unexpected pair: %+v", tu)
		}
	}
	t.Logf("outcomes: %v", reasons)
	if reasons["no records"] < 256 {
		t.Errorf("only %d negotiations ran (max_pending is 256)", reasons["no records"])
	}
	o.stop()
}

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/e2e/scenario"
	"github.com/obol-ipsec/obol/internal/oe"
)

// TestOEConfiguredPeer: a swanctl conn between the gateways carries
// 10.1.0.0/24 <-> 10.2.0.0/24, and DNS also publishes OE records for bob
// naming gwb with another key. obold on gwa refuses OE for bob (the reason
// in obolctl oe list names the swanctl conn), loads no OE conn, and the
// swanctl tunnel carries alice's traffic with nothing in clear. With the
// swanctl tunnel down, nothing leaves in clear under private either.
func TestOEConfiguredPeer(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.GWA, lab.GWB}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	gwa, gwb, alice, bob := l.Node(lab.GWA), l.Node(lab.GWB), l.Node(lab.Alice), l.Node(lab.Bob)
	loadSwanctl(t, gwa, scenario.SwanctlGateway("192.0.2.1", "192.0.2.2", "10.1.0.0/24", "10.2.0.0/24"))
	loadSwanctl(t, gwb, scenario.SwanctlGateway("192.0.2.2", "192.0.2.1", "10.2.0.0/24", "10.1.0.0/24"))

	ka, other := newOEKey(t, gwa), newOEKey(t, bob)
	for _, z := range oeZones(ka, other) { // gwb's records carry a key that is not gwb's
		if err := l.SetZone(ctx, z); err != nil {
			t.Fatalf("zone %s: %v", z.Name, err)
		}
	}
	oa := startObold(t, gwa, oeGateway("192.0.2.1", "10.1.0.0/24", "10.2.0.0/24", ka))
	swanctl(t, gwa, "--initiate", "--child", "net")

	clear := wire(t, l, "ip and net 10.0.0.0/8")
	esp := wire(t, l, "udp port 4500 and host 192.0.2.1 and host 192.0.2.2")
	// The first packet hits obold's trap; once OE is refused, the pair's
	// traffic goes to the swanctl tunnel.
	start := time.Now()
	for {
		if _, err := alice.Exec(ctx, "ping", "-c", "1", "-W", "1", "10.2.0.10"); err == nil {
			break
		}
		if time.Since(start) > 15*time.Second {
			t.Fatalf("alice never reached bob; gwa oe list %+v", oa.oeList())
		}
	}
	pingOK(t, alice, "10.2.0.10")
	tcpTransfer(t, alice, bob, "10.2.0.10", 5007)
	assertEncrypted(t, clear, esp)

	tu := waitOE(t, oa, "10.2.0.10", oe.StateFailed, time.Second)
	want := `OE refused: configured conn "gw-gw" has remote_ts 10.2.0.0/24 covering 10.2.0.10; OE never takes a configured conn's place (its traffic goes to conn "gw-gw"'s tunnel)`
	if tu.Reason != want {
		t.Errorf("gwa oe list reason %q\nwant %q", tu.Reason, want)
	}
	if table, err := oa.ctl("oe", "list"); err != nil || !strings.Contains(string(table), `configured conn "gw-gw"`) {
		t.Errorf("oe list table (err %v):\n%s", err, table)
	}
	sa := findSA(oa.sas(), "gw-gw")
	if sa == nil || len(sa.Children) == 0 || sa.Children[0].BytesOut < 1<<20 {
		t.Fatalf("the swanctl tunnel did not carry the transfer: %+v", sa)
	}
	if out := swanctl(t, gwa, "--list-conns"); strings.Contains(out, "obol-oe-10-") {
		t.Errorf("an OE conn was loaded beside the swanctl one:\n%s", out)
	}

	// The swanctl tunnel goes down: when the short allow into it expires,
	// the private group's drop holds the traffic; nothing leaves in clear.
	swanctl(t, gwa, "--terminate", "--ike", "gw-gw")
	clear = wire(t, l, "ip and net 10.0.0.0/8")
	deadline := time.Now().Add(20 * time.Second)
	for noticed := false; !noticed; {
		if time.Now().After(deadline) {
			t.Fatalf("gwa never noticed the swanctl tunnel down: %+v", oa.oeList())
		}
		_, _ = alice.Exec(ctx, "ping", "-c", "1", "-W", "1", "10.2.0.10")
		for _, tu := range oa.oeList() {
			noticed = noticed || (tu.Pair.Dst.String() == "10.2.0.10" && tu.State == oe.StateFailed &&
				strings.Contains(tu.Reason, `(conn "gw-gw" has no tunnel up for it now)`))
		}
	}
	for range 3 {
		if _, err := alice.Exec(ctx, "ping", "-c", "1", "-W", "1", "10.2.0.10"); err == nil {
			t.Fatal("alice reached bob with the swanctl tunnel down and OE refused")
		}
	}
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Fatalf("%d packets in clear with the swanctl tunnel down, e.g.:\n%s", len(lines), strings.Join(lines[:min(5, len(lines))], "\n"))
	}
	_ = gwb
	oa.stop()
}

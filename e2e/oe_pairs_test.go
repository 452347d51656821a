package e2e

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/oe"
)

// TestGatewayOEPairs: four client pairs between gwa and gwb, two started
// behind each gateway, the last two at the same time, while the first ones
// stay up. charon puts them all into the IKE_SAs between the gateways
// whichever side started them; every pair's traffic crosses encrypted,
// nothing 10.x is in clear on the internet, and obolctl oe list on both
// gateways lists every pair up.
func TestGatewayOEPairs(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.GWA, lab.GWB}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := l.RouteHostPairWorkaround(ctx); err != nil {
		t.Fatal(err)
	}
	gwa, gwb, alice, bob := l.Node(lab.GWA), l.Node(lab.GWB), l.Node(lab.Alice), l.Node(lab.Bob)
	// A second client address on each LAN, with the lab's 5.9.8 host-pair
	// workaround on its gateway as for the first.
	for _, c := range []struct {
		client, gw *lab.Node
		addr       string
	}{{alice, gwa, "10.1.0.11"}, {bob, gwb, "10.2.0.11"}} {
		run(t, c.client, "ip", "addr", "add", c.addr+"/24", "dev", lab.LANIf)
		run(t, c.gw, "ip", "addr", "add", c.addr+"/32", "dev", "lo")
		run(t, c.gw, "ip", "rule", "add", "pref", "10", "to", c.addr+"/32", "lookup", "main")
	}
	ka, kb := newOEKey(t, gwa), newOEKey(t, gwb)
	zones := oeZones(ka, kb)
	zones[1].Records = append(zones[1].Records,
		"11.0.1 300 IN TXT "+txtStrings("X-IPsec-Server(10)=192.0.2.1 "+ka.dns),
		"11.0.2 300 IN TXT "+txtStrings("X-IPsec-Server(10)=192.0.2.2 "+kb.dns))
	for _, z := range zones {
		if err := l.SetZone(ctx, z); err != nil {
			t.Fatalf("zone %s: %v", z.Name, err)
		}
	}
	oa := startObold(t, gwa, oeGateway("192.0.2.1", "10.1.0.0/24", "10.2.0.0/24", ka))
	ob := startObold(t, gwb, oeGateway("192.0.2.2", "10.2.0.0/24", "10.1.0.0/24", kb))

	type flow struct {
		from     *lab.Node
		src, dst string
	}
	reach := func(f flow) error {
		start := time.Now()
		for {
			if _, err := f.from.Exec(ctx, "ping", "-c", "1", "-W", "1", "-I", f.src, f.dst); err == nil {
				t.Logf("%s reached %s %s after the first packet", f.src, f.dst, time.Since(start).Round(time.Millisecond))
				return nil
			}
			if time.Since(start) > 20*time.Second {
				return fmt.Errorf("%s never reached %s", f.src, f.dst)
			}
		}
	}
	clear := wire(t, l, "ip and net 10.0.0.0/8")
	esp := wire(t, l, "udp port 4500 and host 192.0.2.1 and host 192.0.2.2")
	flows := []flow{
		{alice, "10.1.0.10", "10.2.0.10"}, // gwa starts the IKE_SA
		{bob, "10.2.0.11", "10.1.0.11"},   // gwb: a CHILD_SA in gwa's IKE_SA
		{alice, "10.1.0.11", "10.2.0.10"}, // these two at the same time
		{bob, "10.2.0.11", "10.1.0.10"},
	}
	for _, f := range flows[:2] {
		if err := reach(f); err != nil {
			t.Fatalf("%v; gwa: %+v gwb: %+v", err, oa.oeList(), ob.oeList())
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, f := range flows[2:] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = reach(f)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatalf("%v; gwa: %+v gwb: %+v", err, oa.oeList(), ob.oeList())
		}
	}
	// All four pairs carry traffic at once, both ways.
	for _, f := range flows {
		run(t, f.from, "ping", "-c", "30", "-i", "0.02", "-W", "2", "-I", f.src, f.dst)
	}
	tcpTransfer(t, bob, alice, "10.1.0.11", 5007)
	assertEncrypted(t, clear, esp)

	// Every pair is up on both gateways: started there (initiator) or
	// accepted from the other one (responder).
	want := []string{"10.1.0.10-10.2.0.10", "10.1.0.10-10.2.0.11", "10.1.0.11-10.2.0.10", "10.1.0.11-10.2.0.11"}
	for _, g := range []struct {
		o    *obold
		init []string // the pairs it started, as local->remote
	}{{oa, []string{"10.1.0.10->10.2.0.10", "10.1.0.11->10.2.0.10"}}, {ob, []string{"10.2.0.11->10.1.0.11", "10.2.0.11->10.1.0.10"}}} {
		var up []string
		roles := map[string]string{}
		for _, tu := range g.o.oeList() {
			if tu.State != oe.StateUp || !strings.HasPrefix(tu.Pair.Src.String(), "10.") {
				continue
			}
			a, b := tu.Pair.Src.String(), tu.Pair.Dst.String()
			roles[a+"->"+b] = tu.Role
			if b < a {
				a, b = b, a
			}
			up = append(up, a+"-"+b)
		}
		sort.Strings(up)
		if strings.Join(up, " ") != strings.Join(want, " ") {
			t.Errorf("%s: pairs up %v, want %v (oe list %+v)", g.o.node.Name, up, want, g.o.oeList())
		}
		for _, p := range g.init {
			if roles[p] != "initiator" {
				t.Errorf("%s: pair %s role %q, want initiator", g.o.node.Name, p, roles[p])
			}
		}
	}
	if table, err := oa.ctl("oe", "list"); err != nil || !strings.Contains(string(table), "10.1.0.11->10.2.0.11") {
		t.Errorf("gwa's oe list table does not show the pair gwb started (err %v):\n%s", err, table)
	}
	oa.stop()
	ob.stop()
	for _, n := range []*lab.Node{gwa, gwb} {
		if out := swanctl(t, n, "--list-sas"); strings.Contains(out, "obol-oe-") {
			t.Errorf("%s: OE SA left after obold stopped:\n%s", n.Name, out)
		}
	}
}

package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/oe"
)

// TestGatewayOEFQDN: gwb has the IKE identity @gwb.example.test and protects
// bob's addresses. alice reaches bob through a tunnel gwa set up to the
// FQDN's address (A record) with the FQDN's key (KEY record); gwb initiating
// for a client that delegates to @gwb.example.test is accepted by gwa
// because gwb proved that identity; a client whose reverse map names
// another FQDN gateway (at the same address) is refused, the reason shows in
// obolctl oe list, and nothing crosses in clear under private.
func TestGatewayOEFQDN(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.GWA, lab.GWB}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := l.RouteHostPairWorkaround(ctx); err != nil {
		t.Fatal(err)
	}
	gwa, gwb, alice, bob := l.Node(lab.GWA), l.Node(lab.GWB), l.Node(lab.Alice), l.Node(lab.Bob)
	// bob answers on two more addresses; gwb gets the same 5.9.8 host-pair
	// workaround for them as the lab gives it for bob's first address.
	for _, a := range []string{"10.2.0.11", "10.2.0.12"} {
		run(t, bob, "ip", "addr", "add", a+"/24", "dev", lab.LANIf)
		run(t, gwb, "ip", "addr", "add", a+"/32", "dev", "lo")
		run(t, gwb, "ip", "rule", "add", "pref", "10", "to", a+"/32", "lookup", "main")
	}
	ka, kb, kc := newOEKey(t, gwa), newOEKey(t, gwb), newOEKey(t, bob)
	for _, z := range []lab.Zone{
		{Name: "2.0.192.in-addr.arpa.", Records: []string{
			"1 300 IN IPSECKEY 10 1 2 192.0.2.1 " + ka.dns,
			// gwb's own reverse map names its FQDN identity, so gwa can
			// authenticate it when gwb initiates.
			`2 300 IN TXT "X-IPsec-Server(10)=@gwb.example.test"`,
		}},
		{Name: "10.in-addr.arpa.", Records: []string{
			"10.0.1 300 IN TXT " + txtStrings("X-IPsec-Server(10)=192.0.2.1 "+ka.dns),
			// Keyless: the key is gwb.example.test's KEY record.
			`10.0.2 300 IN TXT "X-IPsec-Server(10)=@gwb.example.test"`,
			// Another FQDN gateway: not gwb, whatever its address.
			`11.0.2 300 IN TXT "X-IPsec-Server(10)=@gwc.example.test"`,
			// IPSECKEY gateway type 3 (a name) with the key.
			"12.0.2 300 IN IPSECKEY 10 3 2 gwb.example.test. " + kb.dns,
		}},
		{Name: "example.test.", Records: []string{
			"gwb 300 IN A 192.0.2.2",
			"gwb 300 IN KEY 16896 4 5 " + kb.dns,
			"gwc 300 IN A 192.0.2.2",
			"gwc 300 IN KEY 16896 4 5 " + kc.dns,
		}},
	} {
		if err := l.SetZone(ctx, z); err != nil {
			t.Fatalf("zone %s: %v", z.Name, err)
		}
	}
	oa := startObold(t, gwa, oeGateway("192.0.2.1", "10.1.0.0/24", "10.2.0.0/24", ka))
	cfgB := strings.Replace(oeGateway("192.0.2.2", "10.2.0.0/24", "10.1.0.0/24", kb), "[oe]\n", "[oe]\nidentity = \"@gwb.example.test\"\n", 1)
	ob := startObold(t, gwb, cfgB)

	reach := func(from *lab.Node, src, dst string) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			if _, err := from.Exec(ctx, "ping", "-c", "1", "-W", "1", "-I", src, dst); err == nil {
				return time.Since(start)
			}
			if time.Since(start) > 20*time.Second {
				t.Fatalf("%s never reached %s from %s; gwa: %+v gwb: %+v", from.Name, dst, src, oa.oeList(), ob.oeList())
			}
		}
	}

	// alice -> bob: gwa finds @gwb.example.test in bob's reverse map, its
	// address in the A record and its key in the KEY record.
	clear := wire(t, l, "ip and net 10.0.0.0/8")
	esp := wire(t, l, "udp port 4500 and host 192.0.2.1 and host 192.0.2.2")
	t.Logf("alice reached bob %s after the first packet", reach(alice, "10.1.0.10", "10.2.0.10").Round(time.Millisecond))
	pingOK(t, alice, "10.2.0.10")
	tcpTransfer(t, alice, bob, "10.2.0.10", 5006)
	assertEncrypted(t, clear, esp)
	ti := waitOE(t, oa, "10.2.0.10", oe.StateUp, time.Second)
	if ti.Role != "initiator" || ti.Gateway != "@gwb.example.test (192.0.2.2)" || ti.DNSSEC != "secure" || ti.KeySource != "TXT" {
		t.Errorf("gwa's tunnel: %+v", ti)
	}
	if sa := findSA(oa.sas(), ti.Conn); sa == nil || sa.RemoteID != "gwb.example.test" || sa.RemoteHost.String() != "192.0.2.2" || sa.Children[0].RemoteTS[0] != "10.2.0.10/32" {
		t.Fatalf("gwa's SA: %+v", sa)
	}
	if out, err := oa.ctl("lookup", "10.2.0.10"); err != nil || !strings.Contains(string(out), "gateway @gwb.example.test (192.0.2.2)") {
		t.Errorf("obolctl lookup 10.2.0.10 (err %v):\n%s", err, out)
	}

	// The tunnel alice -> bob stays up while gwb starts pairs of its own:
	// charon on gwb puts them into the IKE_SA gwa started (peer configs
	// compare equal), and gwa takes them with its accepting child and
	// checks them like a responder.
	// bob's 10.2.0.11 names @gwc.example.test: gwb initiates for it to
	// alice, proves @gwb.example.test, and gwa closes the CHILD_SA. Under
	// private nothing of it crosses in clear.
	clear = wire(t, l, "ip and net 10.0.0.0/8")
	for range 4 {
		if _, err := bob.Exec(ctx, "ping", "-c", "1", "-W", "1", "-I", "10.2.0.11", "10.1.0.10"); err == nil {
			t.Fatalf("10.2.0.11 reached alice though its reverse map names another gateway")
		}
	}
	var refused oe.Tunnel
	deadline := time.Now().Add(10 * time.Second)
	for refused.Reason == "" && time.Now().Before(deadline) {
		for _, tu := range oa.oeList() {
			if tu.Role == "responder" && strings.Contains(tu.Reason, "refused client 10.2.0.11/32") {
				refused = tu
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	if want := "refused client 10.2.0.11/32: 10.2.0.11's reverse map names gateway @gwc.example.test, not 192.0.2.2 (identity @gwb.example.test)"; refused.Reason != want {
		t.Fatalf("gwa's responder reason %q\nwant %q\n(gwa oe list %+v)\n(gwb oe list %+v)", refused.Reason, want, oa.oeList(), ob.oeList())
	}
	if table, err := oa.ctl("oe", "list"); err != nil || !strings.Contains(string(table), "reverse map names gateway @gwc.example.test") {
		t.Errorf("oe list table does not show the refusal (err %v):\n%s", err, table)
	}
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Fatalf("%d packets in clear on the wire, e.g.:\n%s", len(lines), strings.Join(lines[:min(5, len(lines))], "\n"))
	}

	// bob's 10.2.0.12 names gwb.example.test (IPSECKEY gateway type 3):
	// gwa accepts it behind gwb because gwb proved that identity.
	clear = wire(t, l, "ip and net 10.0.0.0/8")
	esp = wire(t, l, "udp port 4500 and host 192.0.2.1 and host 192.0.2.2")
	reach(bob, "10.2.0.12", "10.1.0.10")
	run(t, bob, "ping", "-c", "150", "-i", "0.01", "-W", "2", "-I", "10.2.0.12", "10.1.0.10")
	assertEncrypted(t, clear, esp)
	tb := waitOE(t, ob, "10.1.0.10", oe.StateUp, time.Second)
	if tb.Pair.Src.String() != "10.2.0.12" || tb.Gateway != "192.0.2.1" {
		t.Errorf("gwb's tunnel for 10.2.0.12: %+v", ob.oeList())
	}
	// charon may put this CHILD_SA into the IKE_SA left from the refused
	// pair (peer configs compare equal): look for it by selectors.
	var proved bool
	for _, sa := range ob.sas() {
		for _, ch := range sa.Children {
			proved = proved || (sa.LocalID == "gwb.example.test" && len(ch.LocalTS) > 0 && ch.LocalTS[0] == "10.2.0.12/32" && ch.State == "INSTALLED")
		}
	}
	if !proved {
		t.Errorf("gwb has no installed CHILD_SA for 10.2.0.12 with identity gwb.example.test: %+v", ob.sas())
	}
	var accepted bool
	for _, sa := range oa.sas() {
		if strings.HasPrefix(sa.Name, "obol-oe-") && sa.RemoteID == "gwb.example.test" {
			for _, ch := range sa.Children {
				accepted = accepted || (len(ch.RemoteTS) > 0 && ch.RemoteTS[0] == "10.2.0.12/32" && ch.State == "INSTALLED")
			}
		}
	}
	if !accepted {
		t.Errorf("gwa has no installed CHILD_SA for 10.2.0.12 behind @gwb.example.test: %+v", oa.sas())
	}
	// Both pairs are up at once, in one direction each.
	pingOK(t, alice, "10.2.0.10")
	waitOE(t, oa, "10.2.0.10", oe.StateUp, time.Second)
	oa.stop()
	ob.stop()
}

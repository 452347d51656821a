package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/oe"
)

// ip6Zone is the lab's ip6.arpa reverse zone (2001:db8::/32).
const ip6Zone = "8.b.d.0.1.0.0.2.ip6.arpa."

// ip6Owner is a's owner name relative to ip6Zone.
func ip6Owner(t testing.TB, a netip.Addr) string {
	t.Helper()
	name, err := dns.ReverseAddr(a.String())
	if err != nil || !strings.HasSuffix(name, "."+ip6Zone) {
		t.Fatalf("reverse name of %s: %q %v", a, name, err)
	}
	return strings.TrimSuffix(name, "."+ip6Zone)
}

// oeHost6 is a dual-stack OE host: IKE from v4 and v6, IPv6 everywhere
// private-or-clear (a ::/0 trap: NDP, link-local, multicast, the host's
// own addresses and a resolver reached over IPv6 must still work), private
// towards the addresses in private6.
func oeHost6(addr4, addr6 netip.Addr, key oeKey, resolver netip.AddrPort, private6 ...netip.Addr) string {
	var priv []string
	for _, a := range private6 {
		priv = append(priv, fmt.Sprintf("%q", netip.PrefixFrom(a, 128).String()))
	}
	groups := ""
	if len(priv) > 0 {
		groups = fmt.Sprintf("[[oe.group]]\ngroup = \"private\"\ncidrs = [%s]\nshunt_lifetime = \"1m\"\n", strings.Join(priv, ", "))
	}
	return fmt.Sprintf(`
[oe]
address = %q
address6 = %q
key_file = %q
initial_lifespan = "30s"
[oe.dns]
server = %q
require_dnssec = true
%s[[oe.group]]
group = "private-or-clear"
cidrs = ["::/0"]
[[oe.group]]
group = "clear-or-private"
cidrs = ["192.0.2.0/24"]
`, addr4, addr6, key.pemFile, resolver.String(), groups)
}

// TestHostOEIPv6: host OE over IPv6 between hosta and hostb from DNS
// alone (IPSECKEY with an IPv6 gateway in the signed ip6.arpa zone). Both
// hosts trap all of ::/0, so neighbour discovery must survive the traps.
// Ping and TCP cross, the wire shows only IKE and ESP-in-UDP between
// their IPv6 addresses, obolctl oe list and lookup tell the story, and
// under private an IPv6 destination without records gets nothing at all.
func TestHostOEIPv6(t *testing.T) {
	l := startLab(t, lab.Options{IPv6: true, Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	a6, b6, dns6 := lab.HostAAddr6, lab.HostBAddr6, lab.DNSAddr6
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	// Only the hosts publish keys; the dns node (2001:db8::53) has none.
	if err := l.SetZone(ctx, lab.Zone{Name: ip6Zone, Records: []string{
		ip6Owner(t, a6) + " 300 IN IPSECKEY 10 2 2 " + a6.String() + " " + ka.dns,
		ip6Owner(t, b6) + " 300 IN IPSECKEY 10 2 2 " + b6.String() + " " + kb.dns,
	}}); err != nil {
		t.Fatal(err)
	}
	// hosta asks unbound over IPv4, hostb over IPv6 (through its ::/0 trap:
	// obold bypasses its resolver).
	oa := startObold(t, ha, oeHost6(lab.HostAAddr, a6, ka, l.DNSServer(), b6, dns6))
	ob := startObold(t, hb, oeHost6(lab.HostBAddr, b6, kb, l.DNSServer6()))
	// The hosts' own IPv6 addresses stay reachable under the ::/0 trap.
	for _, own := range []string{"::1", b6.String()} {
		run(t, hb, "ping", "-6", "-c", "1", "-W", "1", own)
	}

	// obolctl records prints the ip6.arpa records the zone above holds.
	recs, err := oa.ctl("records", "--config", oa.config)
	if err != nil {
		t.Fatalf("obolctl records: %v\n%s", err, recs)
	}
	wantRec := ip6Owner(t, a6) + "." + ip6Zone
	if !strings.Contains(string(recs), wantRec) || !strings.Contains(string(recs), "IPSECKEY 10 2 2 "+a6.String()+" "+ka.dns) {
		t.Errorf("obolctl records on hosta has no IPSECKEY at %s:\n%s", wantRec, recs)
	}

	// Traffic between the hosts' IPv6 addresses other than IKE (500, 4500)
	// and neighbour discovery is clear traffic.
	clear := wire(t, l, fmt.Sprintf("ip6 and host %s and host %s and not (udp port 500 or udp port 4500) and not (icmp6 and (ip6[40] >= 133 and ip6[40] <= 137))", a6, b6))
	esp := wire(t, l, fmt.Sprintf("ip6 and udp port 4500 and host %s and host %s", a6, b6))
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := ha.Exec(ctx, "ping", "-6", "-c", "1", "-W", "1", b6.String()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosta never reached %s: hosta %+v hostb %+v", b6, oa.oeList(), ob.oeList())
		}
	}
	run(t, ha, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", b6.String())
	run(t, hb, "ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", a6.String())
	tcpTransfer(t, ha, hb, b6.String(), 5006)
	assertEncrypted(t, clear, esp)

	var ti oe.Tunnel
	for _, tu := range oa.oeList() {
		if tu.Pair.Dst == b6 && tu.Role == "initiator" && tu.State == oe.StateUp {
			ti = tu
		}
	}
	if ti.Pair.Src != a6 || ti.Gateway != b6.String() || ti.DNSSEC != "secure" || !strings.Contains(ti.KeySource, "IPSECKEY") {
		t.Fatalf("hosta's IPv6 tunnel to %s: %+v (all: %+v)", b6, ti, oa.oeList())
	}
	sa := findSA(oa.sas(), ti.Conn)
	if sa == nil || sa.LocalID != a6.String() || sa.RemoteID != b6.String() {
		t.Fatalf("hosta's SA %s: %+v", ti.Conn, sa)
	}
	var tr oe.Tunnel
	for _, tu := range ob.oeList() {
		if tu.Pair.Dst == a6 && tu.Role == "responder" && tu.State == oe.StateUp {
			tr = tu
		}
	}
	if tr.Pair.Src != b6 || tr.Gateway != a6.String() || tr.DNSSEC != "secure" {
		t.Errorf("hostb's responder tunnel: %+v (all: %+v)", tr, ob.oeList())
	}
	// kernel-libipsec routes the pair through its TUN device in table 220
	// for IPv6 as for IPv4; IKE and ESP-in-UDP (fwmark 0x42) skip it.
	if out := run(t, ha, "ip", "-6", "route", "show", "table", "220"); !strings.Contains(out, b6.String()) {
		t.Errorf("hosta: no IPv6 route to %s in table 220:\n%s", b6, out)
	}
	if out := run(t, ha, "ip", "-6", "rule", "show"); !strings.Contains(out, "not from all fwmark 0x42 lookup 220") {
		t.Errorf("hosta: no IPv6 rule sending unmarked traffic to table 220:\n%s", out)
	}
	t.Logf("hosta table 220 (IPv6): %s", run(t, ha, "ip", "-6", "route", "show", "table", "220"))
	// Neighbour discovery went on under the ::/0 traps.
	if out := run(t, ha, "ip", "-6", "neigh", "show", b6.String()); !strings.Contains(out, "lladdr") {
		t.Errorf("hosta has no neighbour entry for %s: %q", b6, out)
	}

	// What obold installed for IPv6 (traps, bypasses, per-pair allows) is
	// what it says it wants.
	for _, o := range []*obold{oa, ob} {
		if out, err := o.ctl("xfrm", "check"); err != nil {
			t.Errorf("obolctl xfrm check on %s: %v\n%s", o.node.Name, err, out)
		}
	}
	if out := run(t, ha, "ip", "-6", "xfrm", "policy", "list"); !strings.Contains(out, "proto ipv6-icmp type 136") || !strings.Contains(out, "src "+a6.String()+"/128 dst "+b6.String()+"/128") {
		t.Errorf("hosta: no NA bypass or per-pair allow among its IPv6 policies:\n%s", out)
	}

	// The human forms name the IPv6 pair and gateway too.
	if out, err := oa.ctl("oe", "list"); err != nil || !strings.Contains(string(out), b6.String()) || !strings.Contains(string(out), "up") {
		t.Errorf("obolctl oe list on hosta: %v\n%s", err, out)
	}
	if out, err := oa.ctl("lookup", b6.String()); err != nil || !strings.Contains(string(out), "ip6.arpa") || !strings.Contains(string(out), "would initiate OE to gateway "+b6.String()) {
		t.Errorf("obolctl lookup %s on hosta: %v\n%s", b6, err, out)
	} else {
		t.Logf("obolctl lookup %s:\n%s", b6, out)
	}

	// obolctl lookup for an IPv6 address: ip6.arpa, the IPv6 gateway.
	var lk control.OELookup
	oa.ctlJSON(&lk, "lookup", b6.String())
	if lk.DNS.Name != ip6Owner(t, b6)+"."+ip6Zone || lk.DNS.DNSSEC != "secure" || len(lk.DNS.Gateways) != 1 || lk.DNS.Gateways[0].Address != b6.String() || lk.Policy.Group != "private" {
		t.Errorf("obolctl lookup %s: %+v", b6, lk)
	}

	// private, no records: hosta's traffic to the dns node's IPv6 address
	// never leaves, and oe list says why.
	leak := wire(t, l, fmt.Sprintf("ip6 and src host %s and dst host %s", a6, dns6))
	if out, err := ha.Exec(ctx, "ping", "-6", "-c", "3", "-i", "0.3", "-W", "1", dns6.String()); err == nil {
		t.Errorf("ping %s under private without records got through:\n%s", dns6, out)
	}
	var failed oe.Tunnel
	deadline = time.Now().Add(10 * time.Second)
	for failed.State != oe.StateFailed {
		for _, tu := range oa.oeList() {
			if tu.Pair.Dst == dns6 {
				failed = tu
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no failed pair for %s: %+v", dns6, oa.oeList())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if !strings.Contains(failed.Reason, "no OE records") || failed.Group != "private" {
		t.Errorf("failed pair for %s: %+v", dns6, failed)
	}
	if out, err := ha.Exec(ctx, "ping", "-6", "-c", "2", "-i", "0.3", "-W", "1", dns6.String()); err == nil {
		t.Errorf("ping %s got through the failure shunt:\n%s", dns6, out)
	}
	if lines := stopCapture(t, leak); len(lines) > 0 {
		t.Errorf("%d packets from hosta to %s on the wire under private:\n%s", len(lines), dns6, strings.Join(lines[:min(5, len(lines))], "\n"))
	}
	oa.stop()
	ob.stop()
	// Nothing of obold's is left in the kernel, for either family.
	for _, n := range []*lab.Node{ha, hb} {
		if out := run(t, n, "ip", "-6", "xfrm", "policy", "list"); strings.Contains(out, "::/0") {
			t.Errorf("%s: IPv6 policies left after obold stopped:\n%s", n.Name, out)
		}
	}
}

// TestHostOEIPv6OverIPv4: an IPv6 pair whose reverse maps name the hosts'
// IPv4 addresses as their gateways: IKE and ESP-in-UDP run over IPv4, the
// tunnel carries IPv6, and hostb accepts hosta's IPv6 address because its
// ip6.arpa map delegates to hosta's IPv4 address. Nothing IPv6 between the
// two addresses appears on the wire.
func TestHostOEIPv6OverIPv4(t *testing.T) {
	l := startLab(t, lab.Options{IPv6: true, Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	a6, b6 := lab.HostAAddr6, lab.HostBAddr6
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	for _, z := range []lab.Zone{
		{Name: "2.0.192.in-addr.arpa.", Records: []string{
			"11 300 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns,
			"12 300 IN IPSECKEY 10 1 2 192.0.2.12 " + kb.dns,
		}},
		{Name: ip6Zone, Records: []string{
			ip6Owner(t, a6) + " 300 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns,
			ip6Owner(t, b6) + " 300 IN IPSECKEY 10 1 2 192.0.2.12 " + kb.dns,
		}},
	} {
		if err := l.SetZone(ctx, z); err != nil {
			t.Fatalf("zone %s: %v", z.Name, err)
		}
	}
	oa := startObold(t, ha, oeHost6(lab.HostAAddr, a6, ka, l.DNSServer(), b6))
	ob := startObold(t, hb, oeHost6(lab.HostBAddr, b6, kb, l.DNSServer()))

	clear := wire(t, l, fmt.Sprintf("ip6 and host %s and host %s and not (icmp6 and (ip6[40] >= 133 and ip6[40] <= 137))", a6, b6))
	esp := wire(t, l, "ip and udp port 4500 and host 192.0.2.11 and host 192.0.2.12")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := ha.Exec(ctx, "ping", "-6", "-c", "1", "-W", "1", b6.String()); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("hosta never reached %s: hosta %+v hostb %+v", b6, oa.oeList(), ob.oeList())
		}
	}
	tcpTransfer(t, ha, hb, b6.String(), 5007)
	assertEncrypted(t, clear, esp)

	var ti oe.Tunnel
	for _, tu := range oa.oeList() {
		if tu.Pair.Dst == b6 && tu.State == oe.StateUp {
			ti = tu
		}
	}
	if ti.Pair.Src != a6 || ti.Gateway != lab.HostBAddr.String() {
		t.Fatalf("hosta's tunnel for %s: %+v (all: %+v)", b6, ti, oa.oeList())
	}
	sa := findSA(oa.sas(), ti.Conn)
	if sa == nil || sa.LocalID != lab.HostAAddr.String() || sa.RemoteID != lab.HostBAddr.String() {
		t.Fatalf("hosta's SA %s: %+v", ti.Conn, sa)
	}
	// hostb lists the IPv6 pair it accepted, behind hosta's IPv4 IKE
	// address.
	var tr oe.Tunnel
	for _, tu := range ob.oeList() {
		if tu.Role == "responder" && tu.State == oe.StateUp && tu.Pair.Dst == a6 {
			tr = tu
		}
	}
	if tr.Pair.Src != b6 || tr.Gateway != lab.HostAAddr.String() || tr.Reason != "" {
		t.Errorf("hostb's responder tunnel: %+v (all: %+v)", tr, ob.oeList())
	}
	if out := run(t, hb, "ip", "-6", "xfrm", "policy", "list"); !strings.Contains(out, "src "+b6.String()+"/128 dst "+a6.String()+"/128") {
		t.Errorf("hostb: no per-pair allow for the delegated IPv6 client:\n%s", out)
	}
	oa.stop()
	ob.stop()
}

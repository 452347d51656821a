package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/resolver"
)

// oeKey is a gateway's OE key: the PEM file obold loads and the RFC 3110
// form published in DNS.
type oeKey struct {
	pemFile string
	dns     string // base64 RFC 3110
}

func newOEKey(t testing.TB, n *lab.Node) oeKey {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	path, err := n.WriteFile("oe-key.pem", pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(k)}))
	if err != nil {
		t.Fatal(err)
	}
	return oeKey{pemFile: path, dns: base64.StdEncoding.EncodeToString(resolver.EncodeRFC3110(&k.PublicKey))}
}

// txtStrings splits a TXT value into character-strings of at most 255 bytes.
func txtStrings(s string) string {
	var parts []string
	for len(s) > 200 {
		parts = append(parts, `"`+s[:200]+`"`)
		s = s[200:]
	}
	return strings.Join(append(parts, `"`+s+`"`), " ")
}

// oeZones publishes the gateways' keys in their reverse map (IPSECKEY, RSA)
// and, in the clients' reverse map, the TXT delegation naming each client's
// gateway with its key.
func oeZones(a, b oeKey) []lab.Zone {
	return []lab.Zone{
		{Name: "2.0.192.in-addr.arpa.", Records: []string{
			"1 300 IN IPSECKEY 10 1 2 192.0.2.1 " + a.dns,
			"2 300 IN IPSECKEY 10 1 2 192.0.2.2 " + b.dns,
		}},
		{Name: "10.in-addr.arpa.", Records: []string{
			"10.0.1 300 IN TXT " + txtStrings("X-IPsec-Server(10)=192.0.2.1 "+a.dns),
			"10.0.2 300 IN TXT " + txtStrings("X-IPsec-Server(10)=192.0.2.2 "+b.dns),
		}},
	}
}

func oeGateway(addr, lan, other string, key oeKey) string {
	return oeConfig(addr, lan, key, fmt.Sprintf(`
[[oe.group]]
group = "private"
cidrs = [%q]
shunt_lifetime = "5s"
[[oe.group]]
group = "clear-or-private"
cidrs = ["192.0.2.0/24"]
`, other))
}

// oeConfig is [oe] for a gateway with the given policy groups.
func oeConfig(addr, lan string, key oeKey, groups string) string {
	return fmt.Sprintf(`
[oe]
address = %q
key_file = %q
protect = [%q]
[oe.dns]
server = "192.0.2.53:53"
require_dnssec = true
%s`, addr, key.pemFile, lan, groups)
}

func (o *obold) oeList() []oe.Tunnel {
	var ts []oe.Tunnel
	o.ctlJSON(&ts, "oe", "list")
	return ts
}

// TestGatewayOE: alice reaches bob through a tunnel obold set up from DNS
// alone (keys and delegations signed by knot, validated by unbound), with
// nothing 10.x in clear on the internet; obolctl oe list tells the story on
// both gateways; stopping obold removes its tunnels and kernel policies.
func TestGatewayOE(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.GWA, lab.GWB}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := l.RouteHostPairWorkaround(ctx); err != nil {
		t.Fatal(err)
	}
	gwa, gwb, alice, bob := l.Node(lab.GWA), l.Node(lab.GWB), l.Node(lab.Alice), l.Node(lab.Bob)
	ka, kb := newOEKey(t, gwa), newOEKey(t, gwb)
	for _, z := range oeZones(ka, kb) {
		if err := l.SetZone(ctx, z); err != nil {
			t.Fatalf("zone %s: %v", z.Name, err)
		}
	}
	oa := startObold(t, gwa, oeGateway("192.0.2.1", "10.1.0.0/24", "10.2.0.0/24", ka))
	ob := startObold(t, gwb, oeGateway("192.0.2.2", "10.2.0.0/24", "10.1.0.0/24", kb))

	clear := wire(t, l, "ip and net 10.0.0.0/8")
	esp := wire(t, l, "udp port 4500 and host 192.0.2.1 and host 192.0.2.2")
	// The first packets trigger OE and are held (private: nothing leaves
	// in clear while IKE runs); ping until the tunnel carries them.
	start := time.Now()
	for {
		if _, err := alice.Exec(ctx, "ping", "-c", "1", "-W", "1", "10.2.0.10"); err == nil {
			break
		}
		if time.Since(start) > 20*time.Second {
			t.Fatalf("alice never reached bob; gwa: %+v gwb: %+v", oa.oeList(), ob.oeList())
		}
	}
	t.Logf("first ping answered %s after the first packet", time.Since(start).Round(time.Millisecond))
	pingOK(t, alice, "10.2.0.10")
	tcpTransfer(t, alice, bob, "10.2.0.10", 5004)
	assertEncrypted(t, clear, esp)

	ta := oa.oeList()
	if len(ta) != 1 || ta[0].State != oe.StateUp || ta[0].Role != "initiator" || ta[0].Gateway != "192.0.2.2" || ta[0].DNSSEC != "secure" || ta[0].Group != "private" {
		t.Fatalf("gwa oe list: %+v", ta)
	}
	var resp *oe.Tunnel
	for i, tu := range ob.oeList() {
		if tu.Role == "responder" {
			resp = &ob.oeList()[i]
		}
	}
	if resp == nil || resp.State != oe.StateUp || resp.Gateway != "192.0.2.1" || resp.DNSSEC != "secure" {
		t.Fatalf("gwb oe list: %+v", ob.oeList())
	}
	if table, err := oa.ctl("oe", "list"); err != nil || !strings.Contains(string(table), "10.1.0.10->10.2.0.10") {
		t.Errorf("oe list table:\n%s (err %v)", table, err)
	}
	sa := findSA(oa.sas(), ta[0].Conn)
	if sa == nil || sa.RemoteID != "192.0.2.2" || sa.Owner != "obold" || sa.Children[0].LocalTS[0] != "10.1.0.10/32" {
		t.Fatalf("gwa's OE SA: %+v", sa)
	}

	// obolctl xfrm check: the kernel holds exactly what obold wants; a trap
	// deleted by hand shows as missing (exit status 1).
	if out, err := oa.ctl("xfrm", "check"); err != nil || !strings.Contains(string(out), "OK: the kernel holds exactly obold's policies") {
		t.Fatalf("xfrm check with the tunnel up: %v\n%s", err, out)
	}
	run(t, gwa, "ip", "xfrm", "policy", "delete", "dir", "out", "src", "0.0.0.0/0", "dst", "10.2.0.0/24")
	if out, err := oa.ctl("xfrm", "check"); err == nil || !strings.Contains(string(out), "MISSING  trap  0.0.0.0/0 -> 10.2.0.0/24") {
		t.Fatalf("xfrm check after deleting the trap: err %v\n%s", err, out)
	}

	// obold restarts with the tunnel up (on_stop = "leave"): traffic keeps
	// flowing, and the new obold adopts the tunnel.
	oa.writeConfig("[obold]\non_stop = \"leave\"\n" + oeGateway("192.0.2.1", "10.1.0.0/24", "10.2.0.0/24", ka))
	if err := oa.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, oa, "reloaded")
	oa.stop()
	pingOK(t, alice, "10.2.0.10")
	oa.start()
	adopted := oa.oeList()
	if len(adopted) != 1 || adopted[0].State != oe.StateUp || adopted[0].Conn != ta[0].Conn || adopted[0].Pair != ta[0].Pair {
		t.Fatalf("after the restart: %+v, want %+v adopted", adopted, ta[0])
	}
	waitLog(t, oa, "adopted OE tunnels left by an earlier obold")
	if out, err := oa.ctl("xfrm", "check"); err != nil {
		t.Errorf("xfrm check after the restart (the trap is back): %v\n%s", err, out)
	}
	pingOK(t, alice, "10.2.0.10")
	if sa2 := findSA(oa.sas(), ta[0].Conn); sa2 == nil || sa2.UniqueID != sa.UniqueID {
		t.Errorf("the IKE_SA changed across the restart: %+v -> %+v", sa.UniqueID, sa2)
	}

	// Stopping obold (on_stop = "remove" again) closes the tunnel and
	// leaves no policy of obold's.
	oa.writeConfig(oeGateway("192.0.2.1", "10.1.0.0/24", "10.2.0.0/24", ka))
	if err := oa.proc.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitLog(t, oa, "reloaded")
	oa.stop()
	ob.stop()
	for _, n := range []*lab.Node{gwa, gwb} {
		out := run(t, n, "ip", "xfrm", "policy", "list")
		if strings.Contains(out, "priority 10") && strings.Contains(out, "index 0xb0") || strings.Contains(out, "index 295") {
			t.Errorf("%s: obold's policies left:\n%s", n.Name, out)
		}
		if strings.Contains(swanctl(t, n, "--list-sas"), "obol-oe") {
			t.Errorf("%s: OE SA left after obold stopped", n.Name)
		}
	}
}

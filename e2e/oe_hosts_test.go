package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/e2e/scenario"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/tokenapi/client"
	tokenwire "github.com/obol-ipsec/obol/tokenapi/wire"
)

func oeHost(addr, identity, peer string, key oeKey) string {
	return scenario.OEHost(addr, identity, peer, key.pemFile, "initial_lifespan = \"4s\"\nbusy_lifespan = \"6s\"")
}

// TestHostOE: OE between two hosts, hosta with an IP identity (key in its
// reverse map) and hostb with an FQDN identity (its reverse map names
// @hostb.example.test, whose forward map holds the key), in both
// directions; a busy tunnel outlives its lifespan, an idle one is closed
// with a Delete that both sides act on.
func TestHostOE(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	for _, z := range []lab.Zone{
		{Name: "2.0.192.in-addr.arpa.", Records: []string{
			"11 300 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns,
			`12 300 IN TXT "X-IPsec-Server(10)=@hostb.example.test"`,
		}},
		{Name: "example.test.", Records: []string{"hostb 300 IN KEY 16896 4 5 " + kb.dns}}, // flags 0x4200, protocol 4 (IPsec), RSA
	} {
		if err := l.SetZone(ctx, z); err != nil {
			t.Fatalf("zone %s: %v", z.Name, err)
		}
	}
	tokenA, tokenB := filepath.Join(ha.Dir, "token.sock"), filepath.Join(hb.Dir, "token.sock")
	oa := startObold(t, ha, oeHost("192.0.2.11", "", "192.0.2.12", ka)+fmt.Sprintf("[tokenapi]\nenabled = true\nsocket = %q\n", tokenA))
	ob := startObold(t, hb, oeHost("192.0.2.12", "@hostb.example.test", "192.0.2.11", kb)+fmt.Sprintf("[tokenapi]\nenabled = true\nsocket = %q\n", tokenB))

	reach := func(from *lab.Node, dst string) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			if _, err := from.Exec(ctx, "ping", "-c", "1", "-W", "1", dst); err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never reached %s: hosta %+v hostb %+v", from.Name, dst, oa.oeList(), ob.oeList())
			}
		}
	}
	upPair := func(o *obold, role string) oe.Tunnel {
		t.Helper()
		for _, tu := range o.oeList() {
			if tu.Role == role && tu.State == oe.StateUp {
				return tu
			}
		}
		t.Fatalf("%s: no %s tunnel up: %+v", o.node.Name, role, o.oeList())
		return oe.Tunnel{}
	}

	// hosta (IP id) initiates to hostb (FQDN id).
	clear := wire(t, l, "ip and host 192.0.2.11 and host 192.0.2.12 and not (udp port 500 or udp port 4500)")
	esp := wire(t, l, "udp port 4500 and host 192.0.2.11 and host 192.0.2.12")
	reach(ha, "192.0.2.12")
	tcpTransfer(t, ha, hb, "192.0.2.12", 5005)
	assertEncrypted(t, clear, esp)
	ti := upPair(oa, "initiator")
	if ti.Gateway != "@hostb.example.test (192.0.2.12)" || ti.DNSSEC != "secure" {
		t.Errorf("hosta's tunnel: %+v", ti)
	}
	sa := findSA(oa.sas(), ti.Conn)
	if sa == nil || sa.RemoteID != "hostb.example.test" || sa.LocalID != "192.0.2.11" {
		t.Fatalf("hosta's SA ids: %+v", sa)
	}
	if tr := upPair(ob, "responder"); tr.Gateway != "192.0.2.11" {
		t.Errorf("hostb's tunnel: %+v", tr)
	}
	checkOETokens(t, ctx, ha, hb, tokenA, tokenB)

	// Busy: pinging across the 4 s initial lifespan keeps the tunnel.
	run(t, ha, "ping", "-c", "35", "-i", "0.2", "-W", "1", "192.0.2.12")
	if got := upPair(oa, "initiator"); got.Conn != ti.Conn {
		t.Fatalf("busy tunnel replaced: %+v", got)
	}
	// Idle: no traffic for a whole span: hosta closes it with a Delete and
	// hostb, receiving it, forgets the pair too.
	deadline := time.Now().Add(25 * time.Second)
	for len(oa.oeList())+len(ob.oeList()) > 0 {
		if time.Now().After(deadline) {
			t.Fatalf("idle tunnel not closed: hosta %+v hostb %+v", oa.oeList(), ob.oeList())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for _, n := range []*lab.Node{ha, hb} {
		if out := swanctl(t, n, "--list-sas"); strings.Contains(out, "obol-oe-") {
			t.Errorf("%s: OE SA left after the idle close:\n%s", n.Name, out)
		}
	}

	// hostb (FQDN id) initiates to hosta (IP id).
	reach(hb, "192.0.2.11")
	tb := upPair(ob, "initiator")
	if tb.Gateway != "192.0.2.11" {
		t.Errorf("hostb's tunnel: %+v", tb)
	}
	if sa := findSA(ob.sas(), tb.Conn); sa == nil || sa.LocalID != "hostb.example.test" {
		t.Fatalf("hostb's SA: %+v", sa)
	}
	if tr := upPair(oa, "responder"); tr.Gateway != "@hostb.example.test (192.0.2.12)" {
		t.Errorf("hosta's responder tunnel: %+v", tr)
	}
	oa.stop()
	ob.stop()
}

// checkOETokens: programs at both ends of an OE tunnel learn that the peer
// was authenticated by a key from DNSSEC-secure DNS, and get the same
// channel binding (both public keys in a canonical order).
func checkOETokens(t *testing.T, ctx context.Context, ha, hb *lab.Node, tokenA, tokenB string) {
	t.Helper()
	c, s := tcpPair(t, ctx, ha, hb, "192.0.2.12:7003")
	var bindings [][]byte
	for _, side := range []struct {
		sock string
		conn net.Conn
		peer string
	}{{tokenA, c, "hostb.example.test"}, {tokenB, s, "192.0.2.11"}} {
		cl, err := client.Dial(ctx, side.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer cl.Close()
		pt, err := cl.PToken(ctx, side.conn.(*net.TCPConn))
		if err != nil {
			t.Fatal(err)
		}
		if !pt.Protected || !pt.Privacy || !pt.Integrity {
			t.Errorf("pToken at %s: %+v", side.sock, pt)
		}
		it, err := cl.IToken(ctx, pt.IToken)
		if err != nil {
			t.Fatal(err)
		}
		if it.AuthMethod != tokenwire.AuthDNSSEC || it.RemoteID != side.peer || it.PubKeyID == "" || len(it.ChannelBinding) == 0 {
			t.Errorf("iToken at %s: method %v id %q pubKeyID %q binding %d bytes (%s)", side.sock, it.AuthMethod, it.RemoteID, it.PubKeyID, len(it.ChannelBinding), it.Audit)
		}
		bindings = append(bindings, it.ChannelBinding)
	}
	if !bytes.Equal(bindings[0], bindings[1]) {
		t.Errorf("channel bindings differ between the ends:\n%x\n%x", bindings[0], bindings[1])
	}
}

package e2e

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/tokenapi/client"
	tokenwire "github.com/obol-ipsec/obol/tokenapi/wire"
)

// swanctlHosts is a host-to-host PSK tunnel "hh" for swanctl.
func swanctlHosts(local, remote string) string {
	return fmt.Sprintf(`connections {
  hh {
    version = 2
    local_addrs = %[1]s
    remote_addrs = %[2]s
    local {
      auth = psk
      id = %[1]s
    }
    remote {
      auth = psk
      id = %[2]s
    }
    children {
      host {
        local_ts = %[1]s/32
        remote_ts = %[2]s/32
        esp_proposals = aes256gcm16
      }
    }
  }
}
secrets {
  ike-hh {
    id-a = %[1]s
    id-b = %[2]s
    secret = "token-api-lab-secret-0123456789"
  }
}
`, local, remote)
}

// TestTokenAPI: programs at both ends of a swanctl tunnel hand obold their
// TCP socket and learn HOW it is protected and WHO the peer is; a clear
// connection says privacy false and why.
func TestTokenAPI(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ha, hb, dnsNode := l.Node(lab.HostA), l.Node(lab.HostB), l.Node(lab.DNS)
	loadSwanctl(t, ha, swanctlHosts("192.0.2.11", "192.0.2.12"))
	loadSwanctl(t, hb, swanctlHosts("192.0.2.12", "192.0.2.11"))
	tokenConf := func(n *lab.Node) (string, string) {
		sock := filepath.Join(n.Dir, "token.sock")
		return sock, fmt.Sprintf("[tokenapi]\nenabled = true\nsocket = %q\n", sock)
	}
	sockA, confA := tokenConf(ha)
	sockB, confB := tokenConf(hb)
	oa := startObold(t, ha, confA)
	ob := startObold(t, hb, confB)
	swanctl(t, ha, "--initiate", "--child", "host")

	ln, err := hb.Listen(ctx, "tcp", "192.0.2.12:7001")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 2)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	dial := func() (net.Conn, net.Conn) {
		c, err := ha.Dial(ctx, "tcp", "192.0.2.12:7001")
		if err != nil {
			t.Fatal(err)
		}
		select {
		case s := <-accepted:
			return c, s
		case <-ctx.Done():
			t.Fatal("no accept")
		}
		return nil, nil
	}
	ca, err := client.Dial(ctx, sockA)
	if err != nil {
		t.Fatal(err)
	}
	defer ca.Close()
	cb, err := client.Dial(ctx, sockB)
	if err != nil {
		t.Fatal(err)
	}
	defer cb.Close()

	c1, s1 := dial()
	defer c1.Close()
	defer s1.Close()
	pa, err := ca.PToken(ctx, c1.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	pb, err := cb.PToken(ctx, s1.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	for side, p := range map[string]client.PToken{"hosta": pa, "hostb": pb} {
		if !p.Protected || !p.Privacy || !p.Integrity || p.Compression || p.Why != tokenwire.ReasonNone {
			t.Errorf("%s pToken: %+v", side, p)
		}
	}
	ia, err := ca.IToken(ctx, pa.IToken)
	if err != nil {
		t.Fatal(err)
	}
	ib, err := cb.IToken(ctx, pb.IToken)
	if err != nil {
		t.Fatal(err)
	}
	if ia.RemoteID != "192.0.2.12" || ib.RemoteID != "192.0.2.11" {
		t.Errorf("WHO: hosta sees %q, hostb sees %q", ia.RemoteID, ib.RemoteID)
	}
	// swanctl's secret: obold cannot see whom else it names, so it does
	// not claim it unique.
	for side, it := range map[string]client.IToken{"hosta": ia, "hostb": ib} {
		if it.AuthMethod != tokenwire.AuthGroupKey || !strings.Contains(it.Audit, "cannot see") {
			t.Errorf("%s: authenticationMethod %v (%s) for swanctl's PSK peer", side, it.AuthMethod, it.Audit)
		}
	}
	// A second connection to the same peer: the same iToken.
	c2, s2 := dial()
	defer c2.Close()
	defer s2.Close()
	pa2, err := ca.PToken(ctx, c2.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	if pa2.IToken != pa.IToken || pa2.Handle == pa.Handle {
		t.Errorf("second connection: iToken %v vs %v, pToken %v vs %v", pa2.IToken, pa.IToken, pa2.Handle, pa.Handle)
	}

	// A clear connection (no SA to the resolver's host): privacy and
	// integrity false, with the reason.
	cc, _ := tcpPair(t, ctx, ha, dnsNode, "192.0.2.53:7002")
	pc, err := ca.PToken(ctx, cc.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	if pc.Protected || pc.Privacy || pc.Integrity || pc.Why != tokenwire.ReasonNoPolicy || pc.WhyText == "" {
		t.Errorf("clear connection: %+v", pc)
	}
	t.Logf("hosta: %s | %s", pa.Audit, ia.Audit)
	oa.stop()
	ob.stop()
}

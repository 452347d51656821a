package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/control"
)

// genKey makes an Ed25519 key pair on n with strongswan-pki and returns the
// paths of the private key and the public key (PEM).
func genKey(t *testing.T, n *lab.Node, name string) (priv, pub string) {
	t.Helper()
	priv = n.Dir + "/" + name + ".key.pem"
	pub = n.Dir + "/" + name + ".pub.pem"
	run(t, n, "sh", "-c", fmt.Sprintf("pki --gen --type ed25519 --outform pem > %s && pki --pub --in %s --outform pem > %s", priv, priv, pub))
	return priv, pub
}

func hostConn(localAddr, remoteAddr, key, peerPub, start string) string {
	return fmt.Sprintf(`
[[conn]]
name = "peer"
version = 2
local_addrs = [%[1]q]
remote_addrs = [%[2]q]
proposals = ["aes128-sha256-ecp256"]
  [conn.local]
  auth = "pubkey"
  id = %[1]q
  key_file = %[3]q
  [conn.remote]
  auth = "pubkey"
  id = %[2]q
  pubkeys = [%[4]q]
  [[conn.child]]
  name = "host"
  mode = "tunnel"
  local_ts = ["%[1]s/32"]
  remote_ts = ["%[2]s/32"]
  esp_proposals = ["aes128-sha256"]
  start_action = %[5]q
`, localAddr, remoteAddr, key, peerPub, start)
}

// TestHostToHostObolConn: obold's own conns (raw Ed25519 keys, host-to-host)
// establish a tunnel charon-to-charon, traffic crosses it encrypted, obolctl
// shows obold as the owner on both sides, and stopping obold removes its SA,
// conn and key while a swanctl conn on the same charon stays.
func TestHostToHostObolConn(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	aKey, aPub := genKey(t, ha, "hosta")
	bKey, bPub := genKey(t, hb, "hostb")
	// Each side gets the other's public key, as an operator would copy it.
	aPubAtB := copyFile(t, ha, aPub, hb, "hosta.pub.pem")
	bPubAtA := copyFile(t, hb, bPub, ha, "hostb.pub.pem")

	// A swanctl conn on hosta that obold must leave alone.
	rw := `connections {
  rw {
    remote_addrs = 192.0.2.99
    local {
      auth = psk
    }
    remote {
      auth = psk
    }
    children {
      rw {
        remote_ts = 10.99.0.0/16
      }
    }
  }
}
`
	loadSwanctl(t, ha, rw)

	// hostb's obold lets group nogroup use its control socket.
	ctlDir, err := os.MkdirTemp("", "obol-ctl-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(ctlDir) })
	if err := os.Chmod(ctlDir, 0o755); err != nil {
		t.Fatal(err)
	}
	ob := startOboldWith(t, &obold{node: hb, socket: filepath.Join(ctlDir, "obold.sock"), control: "group = \"nogroup\"\nmode = \"0660\""},
		hostConn("192.0.2.12", "192.0.2.11", bKey, aPubAtB, "none"))
	checkControlAccess(t, ob)
	// Anything between the hosts but IKE and ESP-in-UDP is clear text.
	clear := wire(t, l, "ip and host 192.0.2.11 and host 192.0.2.12 and not (udp port 500 or udp port 4500)")
	esp := wire(t, l, "udp port 4500 and host 192.0.2.11 and host 192.0.2.12")
	oa := startObold(t, ha, hostConn("192.0.2.11", "192.0.2.12", aKey, bPubAtA, "start"))

	// start_action = "start": charon initiates when obold loads the conn.
	var sa *control.SA
	deadline := time.Now().Add(10 * time.Second)
	for sa == nil || len(sa.Children) == 0 || sa.Children[0].State != "INSTALLED" {
		if time.Now().After(deadline) {
			t.Fatalf("obol-peer did not come up on hosta: %+v", oa.sas())
		}
		time.Sleep(50 * time.Millisecond)
		sa = findSA(oa.sas(), "obol-peer")
	}
	pingOK(t, ha, "192.0.2.12")
	tcpTransfer(t, hb, ha, "192.0.2.11", 5002)
	assertEncrypted(t, clear, esp)

	for _, side := range []struct {
		o             *obold
		local, remote string
	}{{oa, "192.0.2.11", "192.0.2.12"}, {ob, "192.0.2.12", "192.0.2.11"}} {
		sa := findSA(side.o.sas(), "obol-peer")
		if sa == nil {
			t.Fatalf("%s: no obol-peer SA", side.o.node.Name)
		}
		if sa.Owner != "obold" || sa.LocalID != side.local || sa.RemoteID != side.remote || sa.State != "ESTABLISHED" {
			t.Errorf("%s: SA = owner %s ids %s/%s state %s", side.o.node.Name, sa.Owner, sa.LocalID, sa.RemoteID, sa.State)
		}
		if sa.EncrAlg != "AES_CBC" || sa.EncrKeySize != 128 || sa.DHGroup != "ECP_256" {
			t.Errorf("%s: IKE algorithms %s-%d %s", side.o.node.Name, sa.EncrAlg, sa.EncrKeySize, sa.DHGroup)
		}
		ch := sa.Children[0]
		if ch.Name != "host" || !ch.Encap || ch.PacketsIn == 0 || ch.LocalTS[0] != side.local+"/32" {
			t.Errorf("%s: child %+v", side.o.node.Name, ch)
		}
	}
	if sa := findSA(oa.sas(), "obol-peer"); sa.Initiator != true {
		t.Error("hosta should be the initiator (start_action = start)")
	}

	// obold stops: its SA, conn and key go; swanctl's rw stays.
	oa.stop()
	out := swanctl(t, ha, "--list-sas")
	if strings.Contains(out, "obol-peer") {
		t.Errorf("obol-peer SA left after obold stopped:\n%s", out)
	}
	conns := swanctl(t, ha, "--list-conns")
	if strings.Contains(conns, "obol-peer") || !strings.Contains(conns, "rw:") {
		t.Errorf("conns after obold stopped:\n%s", conns)
	}
	// The peer's obold saw the tunnel go down.
	deadline = time.Now().Add(5 * time.Second)
	for !hasEvent(ob.events(), "ike-updown", false, "obol-peer") {
		if time.Now().After(deadline) {
			t.Fatalf("hostb's obold did not see the delete: %+v", ob.events())
		}
		time.Sleep(50 * time.Millisecond)
	}
	ob.stop()
}

// checkControlAccess: root and the configured group get answers, anyone
// else is refused, by the socket's mode and by obold's own SO_PEERCRED check.
func checkControlAccess(t *testing.T, o *obold) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	obolctl := filepath.Join(binDir, "obolctl")
	asUser := func(gid string, extra ...string) ([]byte, error) {
		argv := append([]string{"setpriv", "--reuid=65534", "--regid=" + gid, "--clear-groups"}, extra...)
		argv = append(argv, obolctl, "--socket", o.socket, "status")
		return o.node.Exec(ctx, argv...)
	}
	if out, err := asUser("65534"); err != nil || !strings.Contains(string(out), "charon:") {
		t.Errorf("a member of the control group was refused: %v\n%s", err, out)
	}
	if out, err := asUser("1"); err == nil || !strings.Contains(string(out), "permission denied") {
		t.Errorf("a stranger got in (or the refusal does not say why): %v\n%s", err, out)
	}
	st, err := os.Stat(o.socket)
	if err != nil || st.Mode().Perm() != 0o660 {
		t.Errorf("control socket mode = %v (err %v), want 0660", st.Mode().Perm(), err)
	}
}

func copyFile(t *testing.T, from *lab.Node, path string, to *lab.Node, name string) string {
	t.Helper()
	b := run(t, from, "cat", path)
	p, err := to.WriteFile(name, []byte(b))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

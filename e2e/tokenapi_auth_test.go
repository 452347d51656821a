package e2e

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/client"
	tokenwire "github.com/obol-ipsec/obol/tokenapi/wire"
)

// pkiTool runs strongswan-pki (a file tool: no namespace needed) and
// returns its stdout.
func pkiTool(t *testing.T, args ...string) []byte {
	t.Helper()
	out, err := exec.Command("pki", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		stderr := ""
		if errors.As(err, &ee) {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("pki %v: %v\n%s", args, err, stderr)
	}
	return out
}

// pemDER returns the DER of the first PEM block in file.
func pemDER(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		t.Fatalf("%s: no PEM block", file)
	}
	return blk.Bytes
}

const (
	dnA  = "C=CH, O=obol, CN=hosta"
	dnB  = "C=CH, O=obol, CN=hostb"
	dnCA = "C=CH, O=obol, CN=obol test CA"
)

// authCreds are the keys and certificates of one test run: hosta has an
// RSA key, hostb an Ed25519 key, both certified by an Ed25519 CA.
type authCreds struct {
	caCrt, aCrt, bCrt, aPub, bPub, aKey, bKey string
	keyA, keyB                                tokenapi.PublicKey // as the token API must report them
}

func makeAuthCreds(t *testing.T) authCreds {
	dir := t.TempDir()
	w := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	var c authCreds
	caKey := w("ca.key", pkiTool(t, "--gen", "--type", "ed25519", "--outform", "pem"))
	c.caCrt = w("ca.crt", pkiTool(t, "--self", "--in", caKey, "--dn", dnCA, "--ca", "--outform", "pem"))
	c.aKey = w("a.key", pkiTool(t, "--gen", "--type", "rsa", "--size", "2048", "--outform", "pem"))
	c.bKey = w("b.key", pkiTool(t, "--gen", "--type", "ed25519", "--outform", "pem"))
	c.aCrt = w("a.crt", pkiTool(t, "--issue", "--type", "priv", "--in", c.aKey, "--cacert", c.caCrt, "--cakey", caKey, "--dn", dnA, "--san", "192.0.2.11", "--outform", "pem"))
	c.bCrt = w("b.crt", pkiTool(t, "--issue", "--type", "priv", "--in", c.bKey, "--cacert", c.caCrt, "--cakey", caKey, "--dn", dnB, "--san", "192.0.2.12", "--outform", "pem"))
	c.aPub = w("a.pub", pkiTool(t, "--pub", "--in", c.aKey, "--outform", "pem"))
	c.bPub = w("b.pub", pkiTool(t, "--pub", "--in", c.bKey, "--outform", "pem"))
	var err error
	if c.keyA, err = tokenapi.KeyFromSPKI(pemDER(t, c.aPub)); err != nil {
		t.Fatal(err)
	}
	if c.keyB, err = tokenapi.KeyFromSPKI(pemDER(t, c.bPub)); err != nil {
		t.Fatal(err)
	}
	if c.keyA.Algorithm != "rsa" || c.keyB.Algorithm != "ed25519" {
		t.Fatalf("test keys: %s and %s, want rsa and ed25519", c.keyA.Algorithm, c.keyB.Algorithm)
	}
	return c
}

// swanctlPubkeyHosts is a host-to-host conn "hh" authenticated with public
// keys; localAuth/remoteAuth are the rounds' key or certificate options.
func swanctlPubkeyHosts(local, remote, localID, remoteID, localAuth, remoteAuth string) string {
	return fmt.Sprintf(`connections {
  hh {
    version = 2
    local_addrs = %[1]s
    remote_addrs = %[2]s
    local {
      auth = pubkey
      id = "%[3]s"
      %[5]s
    }
    remote {
      auth = pubkey
      id = "%[4]s"
      %[6]s
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
`, local, remote, localID, remoteID, localAuth, remoteAuth)
}

// authEnd is one end of the tunnel with a token API client and the TCP
// connections made so far.
type authEnd struct {
	node  *lab.Node
	sock  string // obold's token API socket
	token *client.Client
}

// TestTokenAPIAuth: swanctl tunnels authenticated with raw public keys
// and with X.509 certificates; at both ends the iToken tells the right
// authenticationMethod, DNs, pubKeyID, remote id, and the same
// channelBinding; it stays the same across IKE and CHILD_SA rekeying,
// re-authentication and a second TCP connection.
func TestTokenAPIAuth(t *testing.T) {
	creds := makeAuthCreds(t)
	type want struct {
		method       tokenwire.AuthMethod
		remoteID     string
		certDN, caDN string
		peerKey      tokenapi.PublicKey
	}
	tests := []struct {
		name   string
		confA  string
		confB  string
		wantA  want // what hosta learns of hostb
		wantB  want
		auditA string // must appear in hosta's iToken audit
		// After obold restarts on hosta it has not seen the IKE_SA's
		// authentication: what it may still tell, and its audit.
		restartA     want
		restartAudit string
	}{
		{
			// Raw keys pinned in the conn: out-of-band trust for one peer,
			// reported as PRESHAREDKEY with the key's pubKeyID.
			name:   "raw keys",
			confA:  swanctlPubkeyHosts("192.0.2.11", "192.0.2.12", "192.0.2.11", "192.0.2.12", "pubkeys = "+creds.aPub, "pubkeys = "+creds.bPub),
			confB:  swanctlPubkeyHosts("192.0.2.12", "192.0.2.11", "192.0.2.12", "192.0.2.11", "pubkeys = "+creds.bPub, "pubkeys = "+creds.aPub),
			wantA:  want{method: tokenwire.AuthPresharedKey, remoteID: "192.0.2.12", peerKey: creds.keyB},
			wantB:  want{method: tokenwire.AuthPresharedKey, remoteID: "192.0.2.11", peerKey: creds.keyA},
			auditA: "pinned",
			// The pinned keys are the conn's: still known.
			restartA:     want{method: tokenwire.AuthPresharedKey, remoteID: "192.0.2.12", peerKey: creds.keyB},
			restartAudit: "pinned",
		},
		{
			// Certificates sent in IKE, verified by the CA each end trusts.
			name:   "CA-issued certificates",
			confA:  swanctlPubkeyHosts("192.0.2.11", "192.0.2.12", dnA, dnB, "certs = "+creds.aCrt, "cacerts = "+creds.caCrt),
			confB:  swanctlPubkeyHosts("192.0.2.12", "192.0.2.11", dnB, dnA, "certs = "+creds.bCrt, "cacerts = "+creds.caCrt),
			wantA:  want{method: tokenwire.AuthPKIXInline, remoteID: dnB, certDN: dnB, caDN: dnCA, peerKey: creds.keyB},
			wantB:  want{method: tokenwire.AuthPKIXInline, remoteID: dnA, certDN: dnA, caDN: dnCA, peerKey: creds.keyA},
			auditA: dnCA,
			// Which certificate (and CA) the peer used is known only from
			// the log of its authentication: nothing is claimed.
			restartA:     want{method: tokenwire.AuthNone, remoteID: dnB},
			restartAudit: "peer key unknown",
		},
		{
			// The peer's own certificate is in the local trusted store
			// (remote certs), no CA is loaded.
			name:         "locally trusted peer certificate",
			confA:        swanctlPubkeyHosts("192.0.2.11", "192.0.2.12", dnA, dnB, "certs = "+creds.aCrt, "certs = "+creds.bCrt),
			confB:        swanctlPubkeyHosts("192.0.2.12", "192.0.2.11", dnB, dnA, "certs = "+creds.bCrt, "certs = "+creds.aCrt),
			wantA:        want{method: tokenwire.AuthPKIXTrusted, remoteID: dnB, certDN: dnB, peerKey: creds.keyB},
			wantB:        want{method: tokenwire.AuthPKIXTrusted, remoteID: dnA, certDN: dnA, peerKey: creds.keyA},
			auditA:       "trusted store",
			restartA:     want{method: tokenwire.AuthNone, remoteID: dnB},
			restartAudit: "peer key unknown",
		},
	}
	wantCB := tokenapi.ChannelBinding(creds.keyA, creds.keyB)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// make_before_break: re-authentication brings the new SAs up
			// before the old ones go, so no packet of the flow finds no
			// SA (on this datapath charon installs no trap to hold it).
			l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}, CharonConf: "make_before_break = yes\n"})
			ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
			defer cancel()
			ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
			// Each end's own private key goes where swanctl --load-all
			// finds it (private/ next to the conf file).
			for n, k := range map[*lab.Node]string{ha: creds.aKey, hb: creds.bKey} {
				b, err := os.ReadFile(k)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := n.WriteFile("private/own.key", b); err != nil {
					t.Fatal(err)
				}
			}
			loadSwanctl(t, ha, tc.confA)
			loadSwanctl(t, hb, tc.confB)
			ends := [2]authEnd{{node: ha}, {node: hb}}
			var obolds [2]*obold
			for i := range ends {
				n := ends[i].node
				ends[i].sock = filepath.Join(n.Dir, "token.sock")
				obolds[i] = startObold(t, n, fmt.Sprintf("[tokenapi]\nenabled = true\nsocket = %q\n", ends[i].sock))
				defer obolds[i].stop()
				c, err := client.Dial(ctx, ends[i].sock)
				if err != nil {
					t.Fatal(err)
				}
				defer func() { ends[i].token.Close() }()
				ends[i].token = c
			}
			swanctl(t, ha, "--initiate", "--child", "host")

			ln, err := hb.Listen(ctx, "tcp", "192.0.2.12:7011")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 4)
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					accepted <- c
				}
			}()
			dial := func() [2]*net.TCPConn {
				c, err := ha.Dial(ctx, "tcp", "192.0.2.12:7011")
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { c.Close() })
				select {
				case s := <-accepted:
					t.Cleanup(func() { s.Close() })
					return [2]*net.TCPConn{c.(*net.TCPConn), s.(*net.TCPConn)}
				case <-ctx.Done():
					t.Fatal("no accept")
				}
				return [2]*net.TCPConn{}
			}
			// check reads the iToken of p and compares it with w.
			check := func(step string, e authEnd, p client.PToken, w want) client.IToken {
				t.Helper()
				it, err := e.token.IToken(ctx, p.IToken)
				if err != nil {
					t.Fatalf("%s: %s iToken: %v", step, e.node.Name, err)
				}
				if it.AuthMethod != w.method || it.RemoteID != w.remoteID || it.CertDN != w.certDN || it.CADN != w.caDN {
					t.Errorf("%s: %s iToken: method %v remote %q cert %q CA %q; want %v %q %q %q (audit: %s)",
						step, e.node.Name, it.AuthMethod, it.RemoteID, it.CertDN, it.CADN, w.method, w.remoteID, w.certDN, w.caDN, it.Audit)
				}
				// No key known: no pubKeyID and no channelBinding, never a guess.
				wantID, cb := "", []byte(nil)
				if len(w.peerKey.Data) > 0 {
					wantID, cb = tokenapi.PubKeyID(w.peerKey), wantCB
					if len(wantID) != 9 {
						t.Fatalf("test key %s has pubKeyID %q", w.peerKey.Algorithm, wantID)
					}
				}
				if it.PubKeyID != wantID {
					t.Errorf("%s: %s pubKeyID %q, want %q (the peer's %s key; audit: %s)", step, e.node.Name, it.PubKeyID, wantID, w.peerKey.Algorithm, it.Audit)
				}
				if !bytes.Equal(it.ChannelBinding, cb) {
					t.Errorf("%s: %s channelBinding %x, want %x (audit: %s)", step, e.node.Name, it.ChannelBinding, cb, it.Audit)
				}
				return it
			}
			// itokens queries both ends of a TCP connection and checks
			// every property; it returns the two iTokens.
			itokens := func(step string, conn [2]*net.TCPConn) [2]client.IToken {
				t.Helper()
				var out [2]client.IToken
				for i, e := range ends {
					w := tc.wantA
					if i == 1 {
						w = tc.wantB
					}
					p, err := e.token.PToken(ctx, conn[i])
					if err != nil {
						t.Fatalf("%s: %s pToken: %v", step, e.node.Name, err)
					}
					if !p.Protected || !p.Privacy || !p.Integrity || p.IToken == 0 {
						t.Fatalf("%s: %s pToken: %+v", step, e.node.Name, p)
					}
					out[i] = check(step, e, p, w)
				}
				if !bytes.Equal(out[0].ChannelBinding, out[1].ChannelBinding) {
					t.Errorf("%s: channelBinding differs between the ends", step)
				}
				if !strings.Contains(out[0].Audit, tc.auditA) {
					t.Errorf("%s: hosta audit %q lacks %q", step, out[0].Audit, tc.auditA)
				}
				return out
			}

			// Nothing of the test's TCP traffic may cross the wire in
			// clear; ESP must carry it.
			clear := wire(t, l, "tcp port 7011")
			esp := wire(t, l, "udp port 4500 and host 192.0.2.11 and host 192.0.2.12")
			crossed := 0
			exchange := func(step string, conn [2]*net.TCPConn) {
				t.Helper()
				msg := []byte("obol " + step)
				for _, dir := range [][2]*net.TCPConn{{conn[0], conn[1]}, {conn[1], conn[0]}} {
					_ = dir[1].SetReadDeadline(time.Now().Add(10 * time.Second))
					if _, err := dir[0].Write(msg); err != nil {
						t.Fatalf("%s: write: %v", step, err)
					}
					got := make([]byte, len(msg))
					if _, err := io.ReadFull(dir[1], got); err != nil || !bytes.Equal(got, msg) {
						t.Fatalf("%s: read %q, %v; want %q", step, got, err, msg)
					}
				}
				crossed++
			}

			first := dial()
			exchange("first connection", first)
			base := itokens("first connection", first)
			t.Logf("hosta: %s", base[0].Audit)
			t.Logf("hostb: %s", base[1].Audit)
			same := func(step string, got [2]client.IToken) {
				t.Helper()
				for i := range got {
					if got[i].Handle != base[i].Handle {
						t.Errorf("%s: %s iToken %v, was %v", step, ends[i].node.Name, got[i].Handle, base[i].Handle)
					}
				}
			}
			second := dial()
			exchange("second connection", second)
			same("second connection", itokens("second connection", second))

			for _, rk := range []struct {
				step string
				args []string
			}{
				{"IKE rekey", []string{"--rekey", "--ike", "hh"}},
				{"CHILD_SA rekey", []string{"--rekey", "--child", "host"}},
				{"re-authentication", []string{"--rekey", "--reauth", "--ike", "hh"}},
			} {
				before := saIDs(t, ha)
				swanctl(t, ha, rk.args...)
				waitSAChange(ctx, t, ha, before, rk.step)
				waitSAChange(ctx, t, hb, saIDs(t, hb), "") // settles: hostb has one IKE_SA with an installed child
				if n := len(clear.Lines()); n > 0 {
					t.Errorf("%s: %d packets in clear on the wire so far", rk.step, n)
				}
				exchange(rk.step+", old connection", first)
				same(rk.step+", old connection", itokens(rk.step+", old connection", first))
				c := dial()
				exchange(rk.step+", new connection", c)
				same(rk.step+", new connection", itokens(rk.step+", new connection", c))
			}

			// obold restarts on hosta: it missed the authentication.
			ends[0].token.Close()
			obolds[0].stop()
			obolds[0].start()
			if ends[0].token, err = client.Dial(ctx, ends[0].sock); err != nil {
				t.Fatal(err)
			}
			p, err := ends[0].token.PToken(ctx, first[0])
			if err != nil || !p.Protected {
				t.Fatalf("after obold's restart: pToken %+v, %v", p, err)
			}
			if it := check("after obold's restart", ends[0], p, tc.restartA); !strings.Contains(it.Audit, tc.restartAudit) {
				t.Errorf("after obold's restart: audit %q lacks %q", it.Audit, tc.restartAudit)
			} else {
				t.Logf("hosta after obold's restart: %s", it.Audit)
			}

			if lines := stopCapture(t, clear); len(lines) > 0 {
				t.Errorf("%d packets of the test's TCP connections in clear on the wire, e.g.:\n%s", len(lines), strings.Join(lines[:min(5, len(lines))], "\n"))
			}
			// Each exchange is at least 4 ESP packets (data and ACK each way).
			if lines := stopCapture(t, esp); len(lines) < 4*crossed {
				t.Errorf("%d ESP packets on the wire for %d exchanges: the traffic did not cross the tunnel", len(lines), crossed)
			}
		})
	}
}

var (
	ikeSARe   = regexp.MustCompile(`(?m)^hh: #(\d+), ESTABLISHED`)
	childSARe = regexp.MustCompile(`(?m)^\s+host: #(\d+), reqid \d+, INSTALLED`)
)

// saState is the ESTABLISHED IKE_SAs and INSTALLED CHILD_SAs of conn hh.
type saState struct{ ike, child []string }

func saIDs(t *testing.T, n *lab.Node) saState {
	t.Helper()
	out := swanctl(t, n, "--list-sas")
	var s saState
	for _, m := range ikeSARe.FindAllStringSubmatch(out, -1) {
		s.ike = append(s.ike, m[1])
	}
	for _, m := range childSARe.FindAllStringSubmatch(out, -1) {
		s.child = append(s.child, m[1])
	}
	return s
}

// waitSAChange waits until n has exactly one established IKE_SA and one
// installed CHILD_SA of hh and, when step is set, until one of them is new.
func waitSAChange(ctx context.Context, t *testing.T, n *lab.Node, before saState, step string) {
	t.Helper()
	for {
		s := saIDs(t, n)
		if len(s.ike) == 1 && len(s.child) == 1 {
			if step == "" || len(before.ike) != 1 || len(before.child) != 1 || s.ike[0] != before.ike[0] || s.child[0] != before.child[0] {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s on %s: SAs did not settle: before %+v, now %+v", step, n.Name, before, s)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

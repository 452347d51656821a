package e2e

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/resolver"
)

// reachOE pings dst from n until it answers, then returns the up tunnel.
func reachOE(t *testing.T, ctx context.Context, n *lab.Node, o *obold, dst string) oe.Tunnel {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := n.Exec(ctx, "ping", "-c", "1", "-W", "1", dst); err == nil {
			return waitOE(t, o, dst, oe.StateUp, 5*time.Second)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never reached %s: %+v", n.Name, dst, o.oeList())
		}
	}
}

// TestOEStaticKeys: hosta finds hostb's key in its static keys directory;
// DNS publishes nothing for hostb. The tunnel comes up, and oe list says
// the key was provided by the administrator (PRESHAREDKEY).
func TestOEStaticKeys(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	// Only hosta's key is in DNS: hostb, the responder, looks it up there.
	if err := l.SetZone(ctx, lab.Zone{Name: "2.0.192.in-addr.arpa.", Records: []string{"11 300 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns}}); err != nil {
		t.Fatal(err)
	}
	keys := filepath.Join(ha.Dir, "keys")
	if err := os.MkdirAll(keys, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(keys, "192.0.2.12"), []byte("# hostb\nrsa "+kb.dns+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	auth := fmt.Sprintf("[auth]\nmethods = [\"static\", \"dns\"]\n[auth.static]\ndir = %q\n", keys)
	oa := startObold(t, ha, oeHost("192.0.2.11", "", "192.0.2.12", ka)+auth)
	startObold(t, hb, oeHost("192.0.2.12", "", "192.0.2.11", kb))
	clear := wire(t, l, "icmp and host 192.0.2.11 and host 192.0.2.12")
	tu := reachOE(t, ctx, ha, oa, "192.0.2.12")
	if tu.Method != "PRESHAREDKEY" || tu.KeySource != "static" {
		t.Errorf("tunnel from a static key: %+v", tu)
	}
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Errorf("ICMP went out in clear:\n%s", strings.Join(lines, "\n"))
	}
}

// TestOELeapOfFaith: an unsigned zone (no DNSSEC), hosta trusts hostb's key
// at first contact and pins it; when DNS later publishes another key for
// hostb, hosta refuses (nothing leaves in clear under private) and says
// why; the pin survives an obold restart.
func TestOELeapOfFaith(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	zone := func(keyB string) {
		t.Helper()
		if err := l.SetZone(ctx, lab.Zone{Name: "2.0.192.in-addr.arpa.", Unsigned: true, Records: []string{
			"11 1 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns,
			"12 1 IN IPSECKEY 10 1 2 192.0.2.12 " + keyB,
		}}); err != nil {
			t.Fatal(err)
		}
	}
	zone(kb.dns)
	insecure := func(s string) string { return strings.Replace(s, "require_dnssec = true", "require_dnssec = false", 1) }
	store := filepath.Join(ha.Dir, "pins.json")
	auth := fmt.Sprintf("[auth]\nmethods = [\"leap-of-faith\"]\n[auth.leap_of_faith]\nstore = %q\n", store)
	oa := startObold(t, ha, insecure(oeHost("192.0.2.11", "", "192.0.2.12", ka))+auth)
	startObold(t, hb, insecure(oeHost("192.0.2.12", "", "192.0.2.11", kb)))
	clear := wire(t, l, "icmp and host 192.0.2.11 and host 192.0.2.12")

	first := reachOE(t, ctx, ha, oa, "192.0.2.12")
	if first.Method != "LEAPOFFAITH" || first.DNSSEC != "insecure" {
		t.Fatalf("first contact: %+v", first)
	}
	pins, err := os.ReadFile(store)
	if err != nil || !strings.Contains(string(pins), `"192.0.2.12"`) {
		t.Fatalf("pin store after first contact: %v\n%s", err, pins)
	}

	// DNS now says hostb has another key: an attacker's, as far as hosta
	// can tell. Close the tunnel; the next setup must refuse it.
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	zone(base64.StdEncoding.EncodeToString(resolver.EncodeRFC3110(&other.PublicKey)))
	oa.stop()
	oa.start()                  // the pin must come from the store, not from memory
	time.Sleep(2 * time.Second) // the 1s TTL runs out in unbound's cache
	if _, err := ha.Exec(ctx, "ping", "-c", "2", "-W", "1", "192.0.2.12"); err == nil {
		t.Fatal("hostb answered although its key changed")
	}
	tu := waitOE(t, oa, "192.0.2.12", oe.StateFailed, 10*time.Second)
	if !strings.Contains(tu.Reason, "changed since first contact") {
		t.Errorf("refusal: %+v", tu)
	}
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Errorf("ICMP went out in clear:\n%s", strings.Join(lines, "\n"))
	}
}

// TestOEAuthPlugin: hosta's only auth method is the example plugin
// corpkeys (examples/plugins/corpkeys), an external go-plugin process that
// finds hostb's key in a signed company key zone; hostb publishes nothing
// in its reverse map. The tunnel comes up on the plugin's word, with the
// method it reported; an address the directory does not list gets no
// tunnel and nothing in clear.
func TestOEAuthPlugin(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	for _, z := range []lab.Zone{
		{Name: "2.0.192.in-addr.arpa.", Records: []string{"11 300 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns}},
		{Name: "keys.example.test.", Records: []string{"192-0-2-12 300 IN TXT " + txtStrings("rsa "+kb.dns)}},
	} {
		if err := l.SetZone(ctx, z); err != nil {
			t.Fatal(err)
		}
	}
	auth := fmt.Sprintf(`[auth]
methods = ["corpkeys"]
[[auth.plugin]]
name = "corpkeys"
plugin = %q
args = ["--server", "192.0.2.53:53", "--zone", "keys.example.test."]
`, filepath.Join(binDir, "corpkeys"))
	// Put gwa (192.0.2.1, no records anywhere) in hosta's private group
	// too, to see a refusal that leaves nothing in clear.
	cfgA := strings.Replace(oeHost("192.0.2.11", "", "192.0.2.12", ka), `cidrs = ["192.0.2.12/32"]`, `cidrs = ["192.0.2.12/32", "192.0.2.1/32"]`, 1)
	if !strings.Contains(cfgA, "192.0.2.1/32") {
		t.Fatal("could not add 192.0.2.1 to hosta's private group")
	}
	oa := startObold(t, ha, cfgA+auth)
	startObold(t, hb, oeHost("192.0.2.12", "", "192.0.2.11", kb))
	clear := wire(t, l, "icmp and host 192.0.2.11")
	tu := reachOE(t, ctx, ha, oa, "192.0.2.12")
	if tu.Method != "DNSSEC" || tu.KeySource != "corpkeys TXT" || tu.DNSSEC != "secure" {
		t.Errorf("tunnel on the plugin's word: %+v", tu)
	}
	if _, err := ha.Exec(ctx, "ping", "-c", "1", "-W", "1", "192.0.2.1"); err == nil {
		t.Error("192.0.2.1 answered although no method vouches for it under private")
	}
	failed := waitOE(t, oa, "192.0.2.1", oe.StateFailed, 10*time.Second)
	if !strings.Contains(failed.Reason, "no OE records") {
		t.Errorf("refusal: %+v", failed)
	}
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Errorf("ICMP went out in clear:\n%s", strings.Join(lines, "\n"))
	}
}

// TestOEStaticPSK: no DNS records at all; both hosts hold a pre-shared key
// for each other in their static keys directory. The tunnel comes up with
// PSK authentication at both ends, the secret bound to the two identities.
func TestOEStaticPSK(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	ka, kb := newOEKey(t, ha), newOEKey(t, hb)
	psk := base64.StdEncoding.EncodeToString([]byte("obol-lab-psk-0123456789abcdef"))
	auth := func(n *lab.Node, peer string) string {
		t.Helper()
		dir := filepath.Join(n.Dir, "keys")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, peer), []byte("psk "+psk+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("[auth]\nmethods = [\"static\"]\n[auth.static]\ndir = %q\n", dir)
	}
	oa := startObold(t, ha, oeHost("192.0.2.11", "", "192.0.2.12", ka)+auth(ha, "192.0.2.12"))
	ob := startObold(t, hb, oeHost("192.0.2.12", "", "192.0.2.11", kb)+auth(hb, "192.0.2.11"))
	clear := wire(t, l, "icmp and host 192.0.2.11 and host 192.0.2.12")
	tu := reachOE(t, ctx, ha, oa, "192.0.2.12")
	if tu.Method != "PRESHAREDKEY" || tu.KeySource != "static" {
		t.Errorf("initiator's tunnel: %+v", tu)
	}
	if rt := waitOE(t, ob, "192.0.2.11", oe.StateUp, 5*time.Second); rt.Method != "PRESHAREDKEY" {
		t.Errorf("responder's tunnel: %+v", rt)
	}
	for _, c := range []struct {
		n    *lab.Node
		peer string
	}{{ha, "192.0.2.12"}, {hb, "192.0.2.11"}} {
		log, err := os.ReadFile(filepath.Join(c.n.Dir, "charon.log"))
		if err != nil || !strings.Contains(string(log), "authentication of '"+c.peer+"' with pre-shared key successful") {
			t.Errorf("%s's charon did not authenticate %s with the pre-shared key (%v)", c.n.Name, c.peer, err)
		}
	}
	if lines := stopCapture(t, clear); len(lines) > 0 {
		t.Errorf("ICMP went out in clear:\n%s", strings.Join(lines, "\n"))
	}
}

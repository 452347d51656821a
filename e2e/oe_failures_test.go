package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/oe"
)

// waitOE polls obolctl oe list until a pair to dst is in state, and returns it.
func waitOE(t *testing.T, o *obold, dst string, state oe.State, limit time.Duration) oe.Tunnel {
	t.Helper()
	deadline := time.Now().Add(limit)
	var last []oe.Tunnel
	for time.Now().Before(deadline) {
		last = o.oeList()
		for _, tu := range last {
			if tu.Pair.Dst.String() == dst && tu.State == state {
				return tu
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: no %s pair to %s within %s: %+v", o.node.Name, state, dst, limit, last)
	return oe.Tunnel{}
}

// TestOEFailures: what OE does when it cannot protect a flow, for each
// policy, with nothing in clear where the policy says private.
func TestOEFailures(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.GWA, lab.GWB}})
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	if err := l.RouteHostPairWorkaround(ctx); err != nil {
		t.Fatal(err)
	}
	gwa, gwb, alice, bob := l.Node(lab.GWA), l.Node(lab.GWB), l.Node(lab.Alice), l.Node(lab.Bob)
	// bob answers on four more addresses, one per case.
	for _, a := range []string{"10.2.0.11", "10.2.0.12", "10.2.0.13", "10.2.0.14"} {
		run(t, bob, "ip", "addr", "add", a+"/24", "dev", lab.LANIf)
	}
	ka, kb, wrong := newOEKey(t, gwa), newOEKey(t, gwb), newOEKey(t, bob)
	zones := oeZones(ka, kb)
	// 10.2.0.13 names gwb with a key that is not gwb's.
	zones[1].Records = append(zones[1].Records, "13.0.2 300 IN TXT "+txtStrings("X-IPsec-Server(10)=192.0.2.2 "+wrong.dns))
	// 10.2.0.14's reverse map fails DNSSEC validation.
	zones = append(zones, lab.Zone{Name: "14.0.2.10.in-addr.arpa.", Bogus: true, Records: []string{"@ 300 IN TXT " + txtStrings("X-IPsec-Server(10)=192.0.2.2 "+kb.dns)}})
	for _, z := range zones {
		if err := l.SetZone(ctx, z); err != nil {
			t.Fatalf("zone %s: %v", z.Name, err)
		}
	}
	oa := startObold(t, gwa, oeConfig("192.0.2.1", "10.1.0.0/24", ka, `
[[oe.group]]
group = "private-or-clear"
cidrs = ["10.2.0.11/32"]
[[oe.group]]
group = "private"
cidrs = ["10.2.0.12/32"]
shunt_lifetime = "3s"
[[oe.group]]
group = "private"
cidrs = ["10.2.0.0/24"]
shunt_lifetime = "1m"
[[oe.group]]
group = "clear-or-private"
cidrs = ["192.0.2.0/24"]
`))
	ob := startObold(t, gwb, oeConfig("192.0.2.2", "10.2.0.0/24", kb, `
[[oe.group]]
group = "clear-or-private"
cidrs = ["10.1.0.0/24", "192.0.2.0/24"]
`))

	// private-or-clear without records: OE fails, the pass shunt lets the
	// traffic out in clear, and oe list says why.
	t.Run("private-or-clear falls back to clear", func(t *testing.T) {
		clear := wire(t, l, "icmp and host 10.2.0.11")
		deadline := time.Now().Add(10 * time.Second)
		for {
			if _, err := alice.Exec(ctx, "ping", "-c", "1", "-W", "1", "10.2.0.11"); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no clear fallback: %+v", oa.oeList())
			}
		}
		tu := waitOE(t, oa, "10.2.0.11", oe.StateFailed, 5*time.Second)
		if tu.Group != "private-or-clear" || !strings.Contains(tu.Reason, "no OE records") {
			t.Errorf("pair: %+v", tu)
		}
		if lines := stopCapture(t, clear); len(lines) == 0 {
			t.Error("the fallback did not go out in clear (or the capture saw nothing)")
		}
	})

	// private cases: nothing may leave in clear, whatever went wrong.
	for _, tc := range []struct {
		name, dst, reason string
		dnssec            string
	}{
		{"private without records drops", "10.2.0.12", "no OE records", "secure"},
		{"wrong key in DNS fails authentication", "10.2.0.13", "gateway 192.0.2.2", "secure"},
		{"bogus DNSSEC is refused", "10.2.0.14", "did not validate", "bogus"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clear := wire(t, l, "ip and host "+tc.dst+" and not udp port 4500")
			// One packet, then read the verdict before a 3 s shunt can expire
			// and a retry replace it.
			if out, err := alice.Exec(ctx, "ping", "-c", "1", "-W", "1", tc.dst); err == nil {
				t.Fatalf("a packet to %s got through: %s", tc.dst, out)
			}
			tu := waitOE(t, oa, tc.dst, oe.StateFailed, 15*time.Second)
			table, _ := oa.ctl("oe", "list")
			for i := 0; i < 2; i++ {
				if out, err := alice.Exec(ctx, "ping", "-c", "1", "-W", "1", tc.dst); err == nil {
					t.Fatalf("a packet to %s got through: %s", tc.dst, out)
				}
			}
			if tu.Group != "private" || !strings.Contains(tu.Reason, tc.reason) || string(tu.DNSSEC) != tc.dnssec {
				t.Errorf("pair: %+v", tu)
			}
			if !strings.Contains(string(table), "->"+tc.dst) || !strings.Contains(string(table), tc.reason) {
				t.Errorf("oe list table lacks %s or %q:\n%s", tc.dst, tc.reason, table)
			}
			if tc.dst == "10.2.0.12" {
				// The failure shunt expires after its lifetime (3 s here) and
				// the next packet tries OE again.
				deadline := time.Now().Add(20 * time.Second)
				for retried := false; !retried; {
					_, _ = alice.Exec(ctx, "ping", "-c", "1", "-W", "1", tc.dst)
					for _, again := range oa.oeList() {
						if again.Pair.Dst.String() == tc.dst && again.Since.After(tu.Since) {
							t.Logf("OE tried again %s after the first failure", again.Since.Sub(tu.Since).Round(time.Millisecond))
							retried = true
						}
					}
					if !retried && time.Now().After(deadline) {
						t.Fatalf("OE was not tried again after the shunt expired: %+v", oa.oeList())
					}
				}
			}
			if lines := stopCapture(t, clear); len(lines) > 0 {
				t.Fatalf("%d packets to %s in clear under private:\n%s", len(lines), tc.dst, strings.Join(lines, "\n"))
			}
		})
	}

	oa.stop()
	ob.stop()
}

package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/control"
)

const (
	labelS0 = "system_u:system_r:app_t:s0"
	labelS1 = "system_u:system_r:app_t:s1"
	labelS2 = "system_u:system_r:app_t:s2"
	labelS3 = "system_u:system_r:app_t:s3"
)

// labeledHost is an obold config for a host with a label policy whose
// entry covers the host pair, and a PSK conn whose children come from it.
func labeledHost(local, remote, high string, labels []string, psk string) string {
	return fmt.Sprintf(`
[labels]
mode = "simple"
[[labels.allow]]
source = "app_t"
target = "ipsec_spd_t"
[[labels.entry]]
name = "hosts"
local = "%[1]s/32"
remote = "%[2]s/32"
required = true
context = "system_u:object_r:ipsec_spd_t:s0-%[3]s"
labels = [%[4]s]

[[conn]]
name = "peer"
local_addrs = [%[1]q]
remote_addrs = [%[2]q]
psk_file = %[5]q
  [conn.local]
  auth = "psk"
  id = %[1]q
  [conn.remote]
  auth = "psk"
  id = %[2]q
  [[conn.child]]
  label_entry = "hosts"
  esp_proposals = ["aes128-sha256"]
`, local, remote, high, `"`+strings.Join(labels, `", "`)+`"`, psk)
}

func labelsRequest(t *testing.T, o *obold, label string) control.LabelsAnswer {
	t.Helper()
	out, err := o.ctl("labels", "request", "--local", "192.0.2.11", "--remote", "192.0.2.12", "--label", label, "--json")
	if err != nil {
		t.Fatalf("obolctl labels request %q: %v\n%s", label, err, out)
	}
	var ans control.LabelsAnswer
	if err := json.Unmarshal(out, &ans); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	return ans
}

// TestLabeledSAs: label_mode simple, real charon on both hosts. The same
// label gives a CHILD_SA and traffic flows; two labels give two CHILD_SAs on
// one IKE_SA; a label the peer's policy does not admit is refused with the
// reason; a flow above the entry's range is refused before charon is asked.
func TestLabeledSAs(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	secret := []byte("labeled-hosts-secret-0123456789\n")
	pa, err := ha.WriteFile("peer.psk", secret)
	if err != nil {
		t.Fatal(err)
	}
	pb, err := hb.WriteFile("peer.psk", secret)
	if err != nil {
		t.Fatal(err)
	}
	// hosta admits s0-s2; hostb admits only s0-s1, so s2 is hosta's alone.
	oa := startObold(t, ha, labeledHost("192.0.2.11", "192.0.2.12", "s2", []string{labelS0, labelS1, labelS2}, pa))
	ob := startObold(t, hb, labeledHost("192.0.2.12", "192.0.2.11", "s1", []string{labelS0, labelS1}, pb))

	// obolctl labels check explains the policy from the file.
	out, err := oa.ctl("labels", "check", oa.config)
	if err != nil || !strings.Contains(string(out), "ok      "+labelS2) || !strings.Contains(string(out), "allow app_t ipsec_spd_t:association polmatch") {
		t.Errorf("labels check:\n%s (err %v)", out, err)
	}

	clear := wire(t, l, "ip and host 192.0.2.11 and host 192.0.2.12 and not (udp port 500 or udp port 4500)")
	esp := wire(t, l, "udp port 4500 and host 192.0.2.11 and host 192.0.2.12")
	ans := labelsRequest(t, oa, labelS0)
	if !ans.Allowed || !ans.Established || ans.Entry != "hosts" || ans.Conn != "obol-peer" {
		t.Fatalf("s0: %+v", ans)
	}
	pingOK(t, ha, "192.0.2.12")
	tcpTransfer(t, ha, hb, "192.0.2.12", 5003)
	assertEncrypted(t, clear, esp)

	// A second label: a second CHILD_SA on the same IKE_SA.
	if ans := labelsRequest(t, oa, labelS1); !ans.Allowed || !ans.Established {
		t.Fatalf("s1: %+v", ans)
	}
	for _, o := range []*obold{oa, ob} {
		sa := findSA(o.sas(), "obol-peer")
		if sa == nil {
			t.Fatalf("%s: no obol-peer SA", o.node.Name)
		}
		got := map[string]bool{}
		for _, ch := range sa.Children {
			if ch.State == "INSTALLED" {
				got[ch.Label] = true
			}
		}
		if len(got) != 2 || !got[labelS0] || !got[labelS1] {
			t.Errorf("%s: CHILD_SA labels on IKE_SA #%d = %v, want s0 and s1", o.node.Name, sa.UniqueID, got)
		}
		if table, err := o.ctl("sas"); err != nil || !strings.Contains(string(table), "label="+labelS1) {
			t.Errorf("%s: obolctl sas does not show the label:\n%s", o.node.Name, table)
		}
	}

	// s2: hosta's policy admits it, hostb's does not: hostb's charon has no
	// child for it and refuses; the reason comes back to the caller.
	ans = labelsRequest(t, oa, labelS2)
	if !ans.Allowed || ans.Established || !strings.Contains(ans.Refused, "TS_UNACCEPTABLE") {
		t.Fatalf("s2 (the peer's policy refuses it): %+v", ans)
	}
	// hostb's own policy says why, for its operator.
	if out, err := ob.ctl("labels", "request", "--local", "192.0.2.12", "--remote", "192.0.2.11", "--label", labelS2); err != nil || !strings.Contains(string(out), "above the entry's high s1") {
		t.Errorf("hostb on s2: %v\n%s", err, out)
	}

	// s3 is above hosta's entry: refused before charon is asked, so no new
	// CHILD_SA appears anywhere.
	before := len(findSA(oa.sas(), "obol-peer").Children)
	ans = labelsRequest(t, oa, labelS3)
	if ans.Allowed || ans.Established || !strings.Contains(ans.Reason, "above the entry's high s2") || ans.Conn != "" {
		t.Fatalf("s3: %+v", ans)
	}
	if after := len(findSA(oa.sas(), "obol-peer").Children); after != before {
		t.Errorf("a refused label changed the CHILD_SAs: %d -> %d", before, after)
	}
	// An unlabeled flow on an entry that requires labels is refused too.
	if ans := labelsRequest(t, oa, ""); ans.Allowed || !strings.Contains(ans.Reason, "requires labeled SAs") {
		t.Fatalf("unlabeled: %+v", ans)
	}
	oa.stop()
	ob.stop()
}

package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/internal/control"
)

// TestOboldBeforeCharon: obold starts on a host where charon is not up yet,
// answers obolctl with a clear reason meanwhile, loads its conn as soon as
// charon answers, and keeps doing so across charon stopping cleanly.
func TestOboldBeforeCharon(t *testing.T) {
	l := startLab(t, lab.Options{Charon: []string{lab.HostA}})
	ha := l.Node(lab.HostA)
	if err := ha.StopCharon(); err != nil {
		t.Fatal(err)
	}
	psk, err := ha.WriteFile("p.psk", []byte("a-secret-for-the-early-conn-0123\n"))
	if err != nil {
		t.Fatal(err)
	}
	o := startOboldWith(t, &obold{node: ha, socket: filepath.Join(ha.Dir, "obold.sock"), charonDown: true}, `
[[conn]]
name = "early"
remote_addrs = ["192.0.2.12"]
psk_file = "`+psk+`"
  [conn.local]
  auth = "psk"
  [conn.remote]
  auth = "psk"
  [[conn.child]]
  name = "c"
  remote_ts = ["192.0.2.12/32"]
`)
	out, err := o.ctl("sas")
	if err == nil || !strings.Contains(string(out), "charon is not answering") || !strings.Contains(string(out), "reconnects by itself") {
		t.Fatalf("obolctl sas without charon: err %v, output:\n%s", err, out)
	}
	table, err := o.ctl("status")
	if err != nil || !strings.Contains(string(table), "NOT CONNECTED") {
		t.Fatalf("obolctl status without charon: %v\n%s", err, table)
	}

	for round := 1; round <= 2; round++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := ha.StartCharon(ctx); err != nil {
			cancel()
			t.Fatal(err)
		}
		cancel()
		took := o.waitStatus(2*time.Second, func(s control.Status) bool {
			return s.Charon.Connected && len(s.Obold.OwnedConns) == 1 && s.Obold.OwnedConns[0] == "obol-early"
		})
		t.Logf("round %d: obold loaded its conn %s after charon answered", round, took)
		if conns := swanctl(t, ha, "--list-conns"); !strings.Contains(conns, "obol-early:") {
			t.Fatalf("round %d: charon lacks obol-early:\n%s", round, conns)
		}
		if err := ha.StopCharon(); err != nil {
			t.Fatal(err)
		}
		o.waitStatus(5*time.Second, func(s control.Status) bool { return !s.Charon.Connected })
	}
	// Stopping obold while charon is away must not hang or fail.
	o.stop()
}

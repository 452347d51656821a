package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/labels"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

const labeledConf = `
[labels]
mode = "simple"
[[labels.allow]]
source = "app_t"
target = "ipsec_spd_t"
[[labels.entry]]
name = "hosts"
local = "192.0.2.11/32"
remote = "192.0.2.12/32"
required = true
context = "system_u:object_r:ipsec_spd_t:s0-s2"
labels = ["system_u:system_r:app_t:s0", "system_u:system_r:app_t:s1", "system_u:system_r:app_t:s2"]
[[conn]]
name = "peer"
psk_file = "psk"
  [conn.local]
  auth = "psk"
  [conn.remote]
  auth = "psk"
  [[conn.child]]
  label_entry = "hosts"
`

func TestLabeledFlow(t *testing.T) {
	cfg := testConfig(t, labeledConf)
	lp, err := labels.New(cfg.Labels, labels.FixedDetector(false))
	if err != nil {
		t.Fatal(err)
	}
	f := newFake()
	d := New(cfg, f, plugins.Modules{Labels: lp}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	conn := f.conns["obol-peer"]
	if len(conn.Children) != 3 {
		t.Fatalf("children = %+v, want one per label", conn.Children)
	}
	childOf := map[string]string{}
	for _, ch := range conn.Children {
		if !strings.HasPrefix(ch.Name, "hosts-l") || ch.LabelMode != "simple" || ch.LocalTS[0] != "192.0.2.11/32" || ch.RemoteTS[0] != "192.0.2.12/32" {
			t.Errorf("child %+v", ch)
		}
		childOf[ch.Label] = ch.Name
	}
	f.refuse = map[string]string{childOf["system_u:system_r:app_t:s2"]: "received TS_UNACCEPTABLE notify"}

	tests := []struct {
		name        string
		label       string
		allowed     bool
		established bool
		reason      string
		refused     string
	}{
		{"listed label", "system_u:system_r:app_t:s0", true, true, "may use entry", ""},
		{"peer refuses", "system_u:system_r:app_t:s2", true, false, "", "TS_UNACCEPTABLE"},
		{"above the entry", "system_u:system_r:app_t:s3", false, false, "above the entry's high s2", ""},
		{"no TE rule", "system_u:system_r:other_t:s0", false, false, "no TE rule lets type other_t use type ipsec_spd_t", ""},
		{"unlabeled", "", false, false, "requires labeled SAs", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.calls = nil
			ans, err := d.LabeledFlow(ctx, control.LabelsRequest{Local: "192.0.2.11", Remote: "192.0.2.12", Label: tt.label})
			if err != nil {
				t.Fatal(err)
			}
			if ans.Allowed != tt.allowed || ans.Established != tt.established || !strings.Contains(ans.Reason, tt.reason) || !strings.Contains(ans.Refused, tt.refused) {
				t.Fatalf("answer %+v", ans)
			}
			initiated := false
			for _, c := range f.calls {
				initiated = initiated || strings.HasPrefix(c, "initiate")
			}
			if initiated != tt.allowed {
				t.Errorf("initiated = %v for an answer with allowed = %v (calls %v)", initiated, tt.allowed, f.calls)
			}
		})
	}
	if _, err := d.LabeledFlow(ctx, control.LabelsRequest{Local: "nonsense", Remote: "192.0.2.12", Label: "x"}); err == nil {
		t.Error("a bad address was accepted")
	}
}

// fakeKernel is the kernel side for tests: ACQUIREs are sent by the test.
type fakeKernel struct {
	acq chan xfrm.Acquire
	exp chan xfrm.Policy
}

func (k *fakeKernel) Install(_ context.Context, p xfrm.Policy) (xfrm.Policy, error) { return p, nil }
func (k *fakeKernel) Remove(context.Context, xfrm.Policy) error                     { return nil }
func (k *fakeKernel) RemoveAll(context.Context) (int, error)                        { return 0, nil }
func (k *fakeKernel) List(context.Context) ([]xfrm.Policy, error)                   { return nil, nil }
func (k *fakeKernel) Acquires() <-chan xfrm.Acquire                                 { return k.acq }
func (k *fakeKernel) Expired() <-chan xfrm.Policy                                   { return k.exp }

// An ACQUIRE carrying a security context goes through the label policy
// before charon is asked for the CHILD_SA with that label.
func TestLabeledAcquire(t *testing.T) {
	cfg := testConfig(t, labeledConf)
	lp, err := labels.New(cfg.Labels, labels.FixedDetector(false))
	if err != nil {
		t.Fatal(err)
	}
	f := newFake()
	d := New(cfg, f, plugins.Modules{Labels: lp}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	k := &fakeKernel{acq: make(chan xfrm.Acquire, 4), exp: make(chan xfrm.Policy)}
	d.UseOEKernel(k)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan vici.Event, 1)
	events <- vici.Event{Kind: vici.EventConnected}
	go func() { _ = d.Run(ctx, events) }()
	waitFor(t, func() bool { return len(f.names()) == 1 })

	pair := func(label string) xfrm.Acquire {
		return xfrm.Acquire{Src: netip.MustParseAddr("192.0.2.11"), Dst: netip.MustParseAddr("192.0.2.12"), SecCtx: &xfrm.SecCtx{DOI: 1, Alg: 1, Context: label}}
	}
	k.acq <- pair("system_u:system_r:app_t:s3") // above the entry: refused, nothing initiated
	k.acq <- pair("system_u:system_r:app_t:s1")
	var initiated []string
	waitFor(t, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		initiated = nil
		for _, c := range f.calls {
			if strings.HasPrefix(c, "initiate ") {
				initiated = append(initiated, c)
			}
		}
		return len(initiated) > 0
	})
	want := "initiate obol-peer/"
	for _, ch := range f.conns["obol-peer"].Children {
		if ch.Label == "system_u:system_r:app_t:s1" {
			want += ch.Name
		}
	}
	time.Sleep(50 * time.Millisecond) // the refused one must not follow
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(initiated) != 1 || initiated[0] != want {
		t.Fatalf("initiated %v, want [%s]", initiated, want)
	}
}

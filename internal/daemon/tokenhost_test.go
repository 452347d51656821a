package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/vici"
)

// The token query path asks charon once per change, not once per query.
func TestTokenHostCache(t *testing.T) {
	f := newFake()
	d := New(testConfig(t, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	f.sas = []vici.IKESA{{Name: "obol-a", UniqueID: 1, RemoteID: "192.0.2.2", RemoteHost: netip.MustParseAddr("192.0.2.2"),
		Children: []vici.ChildSA{{Name: "net", State: "INSTALLED", Protocol: "ESP", Mode: "TUNNEL", EncrAlg: "AES_GCM_16", EncrKeySize: 256,
			LocalTS: []string{"10.1.0.0/24"}, RemoteTS: []string{"10.2.0.0/24"}}}}}
	h := d.tokens
	listSAs := func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		n := 0
		for _, c := range f.calls {
			if c == "list-sas" {
				n++
			}
		}
		return n
	}
	f.calls = nil
	for range 100 {
		snap, err := h.TokenSAs(ctx)
		if err != nil || len(snap.SAs) != 1 {
			t.Fatalf("TokenSAs = %+v, %v", snap, err)
		}
	}
	if n := listSAs(); n != 1 {
		t.Fatalf("100 queries asked charon %d times, want once", n)
	}
	gen := h.Generation()
	snap, _ := h.TokenSAs(ctx)
	if ev := snap.SAs[0].Peer.Evidence; ev.ConnClass != "pre-shared key" || ev.SecretOwners != 1 {
		t.Errorf("evidence for obold's own PSK conn: %+v", ev)
	}
	// An event: the next query sees the change.
	f.sas[0].Children[0].State = "DELETING"
	h.observe(vici.Event{Kind: vici.EventChildUpDown, SA: &f.sas[0]})
	if h.Generation() == gen {
		t.Fatal("child-updown did not move the generation")
	}
	if snap, _ := h.TokenSAs(ctx); len(snap.SAs) != 0 || listSAs() != 2 || snap.Generation != h.Generation() {
		t.Fatalf("after child-updown: %+v (list-sas %d, generation %d)", snap, listSAs(), h.Generation())
	}
	// Auth log lines are evidence too.
	h.observe(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: 1, Message: "authentication of '192.0.2.2' with pre-shared key successful"}})
	_, _ = h.TokenSAs(ctx)
	if listSAs() != 3 {
		t.Error("a log line for an IKE_SA did not refresh the cache")
	}
	// A flow no policy covers: why not.
	_, why, err := h.WhyNot(ctx, tokenapi.Flow{Local: netip.MustParseAddrPort("192.0.2.1:40000"), Remote: netip.MustParseAddrPort("198.51.100.7:443"), Protocol: 6})
	if err != nil || !strings.Contains(why, "no IPsec policy covers") {
		t.Errorf("WhyNot = %q, %v", why, err)
	}
}

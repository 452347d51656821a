package daemon

import (
	"context"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

func TestTokenChange(t *testing.T) {
	sa := &vici.IKESA{Name: "hh", UniqueID: 3, Children: []vici.ChildSA{{Name: "host"}}}
	tests := []struct {
		name string
		ev   vici.Event
		want plugins.TokenChange
		ok   bool
	}{
		{"child up", vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: sa}, plugins.TokenChange{Kind: plugins.TokenChangeUp, IKEName: "hh", Child: "host"}, true},
		{"child down", vici.Event{Kind: vici.EventChildUpDown, SA: sa}, plugins.TokenChange{Kind: plugins.TokenChangeDown, IKEName: "hh", Child: "host"}, true},
		{"IKE down", vici.Event{Kind: vici.EventIKEUpDown, SA: sa}, plugins.TokenChange{Kind: plugins.TokenChangeDown, IKEName: "hh"}, true},
		{"child rekey", vici.Event{Kind: vici.EventChildRekey, SA: sa}, plugins.TokenChange{Kind: plugins.TokenChangeRekeyed, IKEName: "hh", Child: "host"}, true},
		{"IKE rekey", vici.Event{Kind: vici.EventIKERekey, SA: sa}, plugins.TokenChange{Kind: plugins.TokenChangeRekeyed, IKEName: "hh"}, true},
		{"charon back", vici.Event{Kind: vici.EventConnected}, plugins.TokenChange{Kind: plugins.TokenChangeReset}, true},
		{"child rekey failed (charon 5.9.8 log line)",
			vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Group: "IKE", Level: 1, IKEName: "hh", IKEID: 3, Message: "CHILD_SA rekeying failed, trying again in 27 seconds"}},
			plugins.TokenChange{Kind: plugins.TokenChangeRekeyFailed, IKEName: "hh", Text: "CHILD_SA rekeying failed, trying again in 27 seconds"}, true},
		{"IKE rekey failed",
			vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{IKEName: "hh", Message: "IKE_SA rekeying failed, trying again in 30 seconds"}},
			plugins.TokenChange{Kind: plugins.TokenChangeRekeyFailed, IKEName: "hh", Text: "IKE_SA rekeying failed, trying again in 30 seconds"}, true},
		{"other log line", vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "sending packet"}}, plugins.TokenChange{}, false},
	}
	for _, tt := range tests {
		got, ok := tokenChange(tt.ev)
		if ok != tt.ok || got != tt.want {
			t.Errorf("%s: %+v, %v; want %+v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
}

// TestTokenChangesHub: a watcher sees changes after the generation moved,
// a full watcher is told it lost some, and cancelling closes its channel.
func TestTokenChangesHub(t *testing.T) {
	h := newTokenHost(nil)
	ctx, cancel := context.WithCancel(context.Background())
	ch := h.TokenChanges(ctx)
	g := h.Generation()
	h.observe(vici.Event{Kind: vici.EventChildRekey, SA: &vici.IKESA{Name: "hh", Children: []vici.ChildSA{{Name: "host"}}}})
	c := <-ch
	if c.Kind != plugins.TokenChangeRekeyed || h.Generation() == g {
		t.Fatalf("change %+v, generation %d -> %d", c, g, h.Generation())
	}
	for range changeQueue + 5 {
		h.observe(vici.Event{Kind: vici.EventConnected})
	}
	for range changeQueue {
		<-ch
	}
	h.observe(vici.Event{Kind: vici.EventConnected})
	if c := <-ch; c.Kind != plugins.TokenChangeLost {
		t.Fatalf("after overflow: %+v, want lost", c)
	}
	if c := <-ch; c.Kind != plugins.TokenChangeReset {
		t.Fatalf("after lost: %+v", c)
	}
	cancel()
	for range ch {
	}
}

// GenerationMoved wakes a waiter when the generation moves, at once when
// it already has.
func TestTokenHostGenerationMoved(t *testing.T) {
	h := newTokenHost(nil)
	g := h.Generation()
	ch := h.GenerationMoved(g)
	select {
	case <-ch:
		t.Fatal("woken before the generation moved")
	default:
	}
	h.moveGen()
	select {
	case <-ch:
	case <-time.After(time.Second):
		t.Fatal("not woken when the generation moved")
	}
	select {
	case <-h.GenerationMoved(g):
	default:
		t.Fatal("an old generation does not answer at once")
	}
}

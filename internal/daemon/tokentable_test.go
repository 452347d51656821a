package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/vici"
)

// charonModel is a charon as the token table sees it: its IKE_SAs (the
// truth a list-sas shows) and the events it sends when they change.
type charonModel struct {
	f      *fakeCharon
	rnd    *rand.Rand
	nextID uint32
	lines  map[uint32][]string // log lines per IKE_SA, kept across IKE rekeys
}

func (m *charonModel) id() uint32 { m.nextID++; return m.nextID }

func (m *charonModel) ikeOnly(sa vici.IKESA) *vici.IKESA {
	sa.Children = nil
	return &sa
}

func (m *charonModel) with(sa vici.IKESA, ch vici.ChildSA) *vici.IKESA {
	sa.Children = []vici.ChildSA{ch}
	return &sa
}

func (m *charonModel) child(port int) vici.ChildSA {
	return vici.ChildSA{Name: "net", UniqueID: m.id(), State: "INSTALLED", Protocol: "ESP", Mode: "TUNNEL", EncrAlg: "AES_GCM_16", EncrKeySize: 256,
		LocalTS: []string{"192.0.2.1/32"}, RemoteTS: []string{fmt.Sprintf("10.2.0.0/24[tcp/%d]", port)}}
}

// step changes charon at random and returns the events charon sends.
func (m *charonModel) step() []vici.Event {
	f := m.f
	f.mu.Lock()
	defer f.mu.Unlock()
	pick := func() int { return m.rnd.IntN(len(f.sas)) }
	op := m.rnd.IntN(9)
	if len(f.sas) == 0 {
		op = 0
	}
	switch op {
	case 0: // a new IKE_SA with its first CHILD_SA
		conn := []string{"obol-a", "obol-b", "swanctl-site"}[m.rnd.IntN(3)]
		id := m.id()
		sa := vici.IKESA{Name: conn, UniqueID: id, State: "ESTABLISHED", RemoteID: fmt.Sprintf("peer-%d", id), RemoteHost: netip.MustParseAddr("192.0.2.2")}
		ch := m.child(int(id))
		line := vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: id, IKEName: conn, Message: fmt.Sprintf("authentication of 'peer-%d' with pre-shared key successful", id)}}
		m.lines[id] = append(m.lines[id], line.Log.Message)
		sa.Children = []vici.ChildSA{ch}
		f.sas = append(f.sas, sa)
		evs := []vici.Event{line, {Kind: vici.EventIKEUpDown, Up: true, SA: m.ikeOnly(sa)}, {Kind: vici.EventChildUpDown, Up: true, SA: m.with(sa, ch)}}
		if m.rnd.IntN(2) == 0 { // charon's order of the two up events is not promised
			evs[1], evs[2] = evs[2], evs[1]
		}
		return evs
	case 1, 2: // another CHILD_SA
		i := pick()
		ch := m.child(int(m.nextID))
		f.sas[i].Children = append(slices.Clone(f.sas[i].Children), ch)
		return []vici.Event{{Kind: vici.EventChildUpDown, Up: true, SA: m.with(f.sas[i], ch)}}
	case 3: // a CHILD_SA goes
		i := pick()
		if len(f.sas[i].Children) == 0 {
			return nil
		}
		j := m.rnd.IntN(len(f.sas[i].Children))
		ch := f.sas[i].Children[j]
		f.sas[i].Children = slices.Delete(slices.Clone(f.sas[i].Children), j, j+1)
		ch.State = "DELETING"
		return []vici.Event{{Kind: vici.EventChildUpDown, SA: m.with(f.sas[i], ch)}}
	case 4, 5: // a CHILD_SA is rekeyed: the old one leaves without a child-updown
		i := pick()
		if len(f.sas[i].Children) == 0 {
			return nil
		}
		j := m.rnd.IntN(len(f.sas[i].Children))
		old := f.sas[i].Children[j]
		nc := old
		nc.UniqueID = m.id()
		kids := slices.Clone(f.sas[i].Children)
		kids[j] = nc
		f.sas[i].Children = kids
		old.State = "REKEYED"
		return []vici.Event{{Kind: vici.EventChildRekey, Old: m.with(f.sas[i], old), SA: m.with(f.sas[i], nc)}}
	case 6: // an IKE_SA is rekeyed: its CHILD_SAs move to the new one
		i := pick()
		old := f.sas[i]
		f.sas[i].UniqueID = m.id()
		m.lines[f.sas[i].UniqueID] = m.lines[old.UniqueID]
		delete(m.lines, old.UniqueID)
		return []vici.Event{{Kind: vici.EventIKERekey, Old: m.ikeOnly(old), SA: m.ikeOnly(f.sas[i])}}
	case 7: // an IKE_SA goes (with or without child-updowns first)
		i := pick()
		sa := f.sas[i]
		f.sas = slices.Delete(slices.Clone(f.sas), i, i+1)
		delete(m.lines, sa.UniqueID)
		var evs []vici.Event
		if m.rnd.IntN(2) == 0 {
			for _, ch := range sa.Children {
				ch.State = "DELETING"
				evs = append(evs, vici.Event{Kind: vici.EventChildUpDown, SA: m.with(sa, ch)})
			}
		}
		return append(evs, vici.Event{Kind: vici.EventIKEUpDown, SA: m.ikeOnly(sa)})
	default: // a log line (authentication evidence)
		sa := f.sas[pick()]
		msg := fmt.Sprintf("  using trusted certificate \"CN=%d\"", m.rnd.IntN(5))
		m.lines[sa.UniqueID] = append(m.lines[sa.UniqueID], msg)
		return []vici.Event{{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: sa.UniqueID, IKEName: sa.Name, Message: msg}}}
	}
}

// rebuilt is the snapshot a fresh obold makes with one list-sas of the
// model's charon (with the same log lines).
func (m *charonModel) rebuilt(t *testing.T, ctx context.Context) plugins.TokenSnapshot {
	t.Helper()
	d := New(testConfig(t, twoConns), m.f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := d.Reconcile(ctx); err != nil { // the same conns: obold's PSK owners
		t.Fatal(err)
	}
	for id, lines := range m.lines {
		for _, l := range lines {
			d.tokens.observe(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: id, Message: l}})
		}
	}
	snap, err := d.tokens.TokenSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return snap
}

func (f *fakeCharon) count(what string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, c := range f.calls {
		if c == what {
			n++
		}
	}
	return n
}

// The table fed by events gives the snapshot a full list-sas gives, for
// random sequences of charon's events, without asking list-sas again.
func TestTokenTableMatchesListing(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name  string
		seed  uint64
		steps int
		// reconnectEvery: an EventLost and an EventConnected with the
		// listing every that many steps (0: never).
		reconnectEvery int
	}{
		{"few", 1, 20, 0},
		{"many", 2, 400, 0},
		{"with reconnects", 3, 300, 37},
		{"other seed", 4, 300, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			d := New(testConfig(t, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err := d.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			m := &charonModel{f: f, rnd: rand.New(rand.NewPCG(tc.seed, 7)), lines: map[uint32][]string{}}
			h := d.tokens
			if _, err := h.TokenSAs(ctx); err != nil { // the first snapshot: one list-sas
				t.Fatal(err)
			}
			for i := range tc.steps {
				for _, ev := range m.step() {
					h.observe(ev)
				}
				if tc.reconnectEvery > 0 && i%tc.reconnectEvery == tc.reconnectEvery-1 {
					f.mu.Lock()
					sas := slices.Clone(f.sas)
					f.mu.Unlock()
					h.observe(vici.Event{Kind: vici.EventLost, Dropped: 3})
					// The new charon connection: the log evidence starts
					// afresh (ids may mean other IKE_SAs now).
					h.observe(vici.Event{Kind: vici.EventConnected, SAs: sas})
					for id := range m.lines {
						delete(m.lines, id)
					}
				}
				if i%5 != 4 && i != tc.steps-1 {
					continue
				}
				got, err := h.TokenSAs(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if got.Generation != h.Generation() {
					t.Fatalf("step %d: snapshot of generation %d, host at %d", i, got.Generation, h.Generation())
				}
				want := m.rebuilt(t, ctx)
				if !reflect.DeepEqual(got.SAs, want.SAs) {
					t.Fatalf("step %d: events gave %d SAs, a listing %d:\n%+v\nwant\n%+v", i, len(got.SAs), len(want.SAs), got.SAs, want.SAs)
				}
			}
			f.mu.Lock()
			n := 0
			for _, sa := range f.sas {
				n += len(sa.Children)
			}
			f.mu.Unlock()
			if n == 0 {
				t.Fatal("the sequence left no SAs: it tests nothing")
			}
			// Only the first snapshot and each fresh obold listed.
			if got, want := f.count("list-sas"), 1+tc.steps/5+btoi(tc.steps%5 != 0); got != want {
				t.Errorf("list-sas %d times, want %d (the first snapshot and the fresh obolds' only)", got, want)
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// What makes the host list the SAs itself, and what does not.
func TestTokenTableListSAs(t *testing.T) {
	ctx := context.Background()
	one := func(id, child uint32) vici.IKESA {
		return vici.IKESA{Name: "obol-a", UniqueID: id, RemoteID: "192.0.2.2", Children: []vici.ChildSA{{Name: "net", UniqueID: child, State: "INSTALLED",
			Protocol: "ESP", Mode: "TUNNEL", LocalTS: []string{"10.1.0.0/24"}, RemoteTS: []string{"10.2.0.0/24"}}}}
	}
	ptr := func(sa vici.IKESA) *vici.IKESA { return &sa }
	tests := []struct {
		name      string
		events    []vici.Event
		wantLists int // list-sas by the host after the first snapshot
		wantSAs   int
		wantAsk   bool // the host asked its background loop for a listing
	}{
		{"log lines", []vici.Event{
			{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: 1, Message: "authentication of '192.0.2.2' with pre-shared key successful"}},
			{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: 1, Message: "IKE_SA obol-a[1] established"}},
		}, 0, 1, false},
		{"child up and down", []vici.Event{
			{Kind: vici.EventChildUpDown, Up: true, SA: ptr(one(1, 8))},
			{Kind: vici.EventChildUpDown, SA: ptr(one(1, 7))},
		}, 0, 1, false},
		{"reconnect carries its listing", []vici.Event{
			{Kind: vici.EventDisconnected},
			{Kind: vici.EventConnected, SAs: []vici.IKESA{one(2, 9), one(3, 10)}},
		}, 0, 2, false},
		{"lost events, then the listing", []vici.Event{
			{Kind: vici.EventLost, Dropped: 5},
			{Kind: vici.EventConnected, SAs: []vici.IKESA{one(2, 9)}},
		}, 0, 1, false},
		{"charon gone: the next query lists", []vici.Event{
			{Kind: vici.EventDisconnected},
		}, 1, 1, false},
		{"rekey of an IKE_SA never seen", []vici.Event{
			{Kind: vici.EventIKERekey, Old: &vici.IKESA{Name: "obol-a", UniqueID: 40}, SA: &vici.IKESA{Name: "obol-a", UniqueID: 41}},
		}, 0, 1, true},
		{"child up not installed", []vici.Event{
			{Kind: vici.EventChildUpDown, Up: true, SA: &vici.IKESA{Name: "obol-a", UniqueID: 1, Children: []vici.ChildSA{{Name: "net", UniqueID: 9, State: "INSTALLING"}}}},
		}, 0, 1, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake()
			d := New(testConfig(t, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err := d.Reconcile(ctx); err != nil {
				t.Fatal(err)
			}
			f.sas = []vici.IKESA{one(1, 7)}
			h := d.tokens
			if snap, err := h.TokenSAs(ctx); err != nil || len(snap.SAs) != 1 {
				t.Fatalf("first snapshot: %+v, %v", snap, err)
			}
			before := f.count("list-sas")
			for _, ev := range tc.events {
				gen := h.Generation()
				h.observe(ev)
				if h.Generation() == gen {
					t.Errorf("%s did not move the generation", ev.Kind)
				}
			}
			snap, err := h.TokenSAs(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if got := f.count("list-sas") - before; got != tc.wantLists {
				t.Errorf("list-sas %d times, want %d", got, tc.wantLists)
			}
			if len(snap.SAs) != tc.wantSAs {
				t.Errorf("%d SAs, want %d: %+v", len(snap.SAs), tc.wantSAs, snap.SAs)
			}
			asked := len(h.resyncCh) > 0
			if asked != tc.wantAsk {
				t.Errorf("asked for a background listing: %v, want %v", asked, tc.wantAsk)
			}
		})
	}
}

// The background listing: periodic, and on request; events that arrive
// while it runs are applied over it (the listing may predate them).
func TestTokenTableBackgroundSync(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFake()
	d := New(testConfig(t, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	sa := vici.IKESA{Name: "obol-a", UniqueID: 1, RemoteID: "192.0.2.2", Children: []vici.ChildSA{{Name: "net", UniqueID: 7, State: "INSTALLED",
		Protocol: "ESP", Mode: "TUNNEL", LocalTS: []string{"10.1.0.0/24"}, RemoteTS: []string{"10.2.0.0/24"}}}}
	f.sas = []vici.IKESA{sa}
	h := d.tokens
	if _, err := h.TokenSAs(ctx); err != nil {
		t.Fatal(err)
	}
	// A child charon installed without obold hearing of it (a missed
	// event): the next background listing finds it.
	f.mu.Lock()
	f.sas[0].Children = append(slices.Clone(f.sas[0].Children), vici.ChildSA{Name: "net", UniqueID: 8, State: "INSTALLED", Protocol: "ESP", Mode: "TUNNEL",
		LocalTS: []string{"10.1.1.0/24"}, RemoteTS: []string{"10.2.1.0/24"}})
	// While that listing is on its way, child 7 goes: the listing still
	// shows it, the event says it is gone.
	gone := sa
	gone.Children = []vici.ChildSA{sa.Children[0]}
	gone.Children[0].State = "DELETING"
	f.listHook = func() {
		f.listHook = nil
		f.sas[0].Children = f.sas[0].Children[1:]
		h.observe(vici.Event{Kind: vici.EventChildUpDown, SA: &gone})
	}
	f.mu.Unlock()
	before := f.count("list-sas")
	go h.keepSynced(ctx, 20*time.Millisecond)
	deadline := time.Now().Add(10 * time.Second)
	for f.count("list-sas") == before {
		if time.Now().After(deadline) {
			t.Fatal("no background list-sas within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	h.syncMu.Lock() // the listing has been applied
	h.syncMu.Unlock()
	snap, err := h.TokenSAs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(snap.SAs) != 1 || snap.SAs[0].RemoteTS[0].From != netip.MustParseAddr("10.2.1.0") {
		t.Errorf("after the background listing: %+v, want child 8 alone", snap.SAs)
	}
}

// BenchmarkTokenTableUpdate: what a query waits for after a CHILD_SA
// rekey (one event), at 10 to 10,000 SAs (500 per IKE_SA, as in
// e2e BenchmarkTokenQuery): the host's snapshot (converting the one
// IKE_SA that changed, ordering all) and the module's tokenapi.NewIndex.
// Metrics: snapshot-us and index-us of the event path; x-full is a full
// rebuild from a listing (list-sas itself free here, seconds on
// kernel-libipsec at 10,000) over the event path, measured in the same run.
func BenchmarkTokenTableUpdate(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		b.Run(fmt.Sprintf("sas=%d", n), func(b *testing.B) {
			ctx := context.Background()
			f := newFake()
			d := New(testConfig(b, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
			if err := d.Reconcile(ctx); err != nil {
				b.Fatal(err)
			}
			m := &charonModel{f: f, rnd: rand.New(rand.NewPCG(1, 2)), lines: map[uint32][]string{}}
			for i := range n {
				if i%500 == 0 {
					id := m.id()
					f.sas = append(f.sas, vici.IKESA{Name: "obol-a", UniqueID: id, RemoteID: "192.0.2.2"})
				}
				last := &f.sas[len(f.sas)-1]
				last.Children = append(last.Children, m.child(40000+i))
			}
			h := d.tokens
			if _, err := h.TokenSAs(ctx); err != nil {
				b.Fatal(err)
			}
			full := func() time.Duration {
				fresh := New(testConfig(b, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
				start := time.Now()
				snap, err := fresh.tokens.TokenSAs(ctx)
				if err != nil || len(snap.SAs) != n {
					b.Fatalf("full rebuild: %d SAs, %v", len(snap.SAs), err)
				}
				return time.Since(start)
			}
			var snapT, indexT, fullT time.Duration
			rounds := 0
			for b.Loop() {
				sa := f.sas[rounds%len(f.sas)]
				old := sa.Children[0]
				nc := old
				nc.UniqueID = m.id()
				sa.Children = append([]vici.ChildSA{nc}, sa.Children[1:]...)
				f.sas[rounds%len(f.sas)] = sa
				old.State = "REKEYED"
				h.observe(vici.Event{Kind: vici.EventChildRekey, Old: m.with(sa, old), SA: m.with(sa, nc)})
				start := time.Now()
				snap, err := h.TokenSAs(ctx)
				if err != nil || len(snap.SAs) != n {
					b.Fatalf("%d SAs, %v", len(snap.SAs), err)
				}
				mid := time.Now()
				_ = tokenapi.NewIndex(snap.SAs)
				indexT += time.Since(mid)
				snapT += mid.Sub(start)
				if rounds%10 == 0 {
					fullT += full() * 10
				}
				rounds++
			}
			b.ReportMetric(float64(snapT.Microseconds())/float64(rounds), "snapshot-us")
			b.ReportMetric(float64(indexT.Microseconds())/float64(rounds), "index-us")
			b.ReportMetric(float64(fullT)/float64(snapT), "x-full")
		})
	}
}

// A new IKE_SA's conn is read in the background when it comes up, so the
// query after it does not wait for list-conns.
func TestTokenTableConnReadAhead(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f := newFake()
	d := New(testConfig(t, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	h := d.tokens
	if _, err := h.TokenSAs(ctx); err != nil {
		t.Fatal(err)
	}
	go h.keepSynced(ctx, time.Hour)
	sa := vici.IKESA{Name: "obol-b", UniqueID: 5, RemoteID: "192.0.2.3", Children: []vici.ChildSA{{Name: "net", UniqueID: 9, State: "INSTALLED",
		Protocol: "ESP", Mode: "TUNNEL", LocalTS: []string{"10.1.0.0/24"}, RemoteTS: []string{"10.3.0.0/24"}}}}
	before := f.count("list-conns")
	h.observe(vici.Event{Kind: vici.EventIKEUpDown, Up: true, SA: &vici.IKESA{Name: sa.Name, UniqueID: sa.UniqueID, RemoteID: sa.RemoteID}})
	h.observe(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &sa})
	deadline := time.Now().Add(10 * time.Second)
	for {
		h.mu.Lock()
		pending := len(h.forgetConns)
		h.mu.Unlock()
		if pending == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the conn was not read ahead within 10 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if n := f.count("list-conns") - before; n != 1 {
		t.Fatalf("read ahead: list-conns %d times, want 1", n)
	}
	snap, err := h.TokenSAs(ctx)
	if err != nil || len(snap.SAs) != 1 || snap.SAs[0].Peer.Evidence.ConnClass != "pre-shared key" {
		t.Fatalf("snapshot %+v, %v", snap, err)
	}
	if n := f.count("list-conns") - before; n != 1 {
		t.Errorf("the query read the conn again: list-conns %d times", n)
	}
}

// Right after charon brought an SA up (PROTECT), its event may not have
// reached obold yet: one list-sas of that conn finds the SA.
func TestTokenTableCoveringNow(t *testing.T) {
	ctx := context.Background()
	f := newFake()
	d := New(testConfig(t, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	h := d.tokens
	other := vici.IKESA{Name: "obol-b", UniqueID: 1, RemoteID: "192.0.2.3", Children: []vici.ChildSA{{Name: "net", UniqueID: 1, State: "INSTALLED",
		Protocol: "ESP", Mode: "TUNNEL", LocalTS: []string{"10.1.0.0/24"}, RemoteTS: []string{"10.3.0.0/24"}}}}
	f.sas = []vici.IKESA{other}
	if _, err := h.TokenSAs(ctx); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.sas = append(f.sas, vici.IKESA{Name: "obol-a", UniqueID: 2, RemoteID: "192.0.2.2", Children: []vici.ChildSA{{Name: "net", UniqueID: 2, State: "INSTALLED",
		Protocol: "ESP", Mode: "TUNNEL", LocalTS: []string{"10.1.0.0/24"}, RemoteTS: []string{"10.2.0.0/24"}}}})
	f.mu.Unlock()
	flow := plugins.TokenFlow{Local: netip.MustParseAddrPort("10.1.0.5:4000"), Remote: netip.MustParseAddrPort("10.2.0.7:443"), Protocol: 6}
	if _, ok, _ := h.covering(ctx, flow); ok {
		t.Fatal("the table knew the SA before any event or listing")
	}
	before := f.count("list-sas")
	sa, ok, err := h.coveringNow(ctx, flow, "obol-a")
	if err != nil || !ok || sa.Peer.RemoteID != "192.0.2.2" {
		t.Fatalf("coveringNow = %+v, %v, %v", sa, ok, err)
	}
	if n := f.count("list-sas") - before; n != 1 {
		t.Errorf("list-sas %d times, want 1", n)
	}
	if snap, _ := h.TokenSAs(ctx); len(snap.SAs) != 2 {
		t.Errorf("the other conn's SA went: %+v", snap.SAs)
	}
	// Found in the table: no list-sas.
	if _, ok, _ := h.coveringNow(ctx, flow, "obol-a"); !ok || f.count("list-sas")-before != 1 {
		t.Errorf("an SA in the table was listed again (list-sas %d)", f.count("list-sas")-before)
	}
}

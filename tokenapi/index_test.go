package tokenapi

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

func hostSA(name string, local, remote string) TokenSA {
	l, _ := ParseTS(local)
	r, _ := ParseTS(remote)
	return TokenSA{Child: Child{IKEName: name}, LocalTS: []TS{l}, RemoteTS: []TS{r}}
}

func TestIndexFind(t *testing.T) {
	sas := []TokenSA{
		hostSA("newest-host", "192.0.2.11/32", "192.0.2.12/32"),
		hostSA("subnet", "10.1.0.0/24", "10.2.0.0/24"),
		hostSA("older-host", "192.0.2.11/32", "192.0.2.12/32"),
		hostSA("tcp-only", "192.0.2.11/32", "192.0.2.13/32[tcp/443]"),
		// One peer, one SA per port: as the client sees them (remote port
		// pinned) and as the server does (local port pinned).
		hostSA("to-port-8001", "192.0.2.11/32", "192.0.2.14/32[tcp/8001]"),
		hostSA("to-port-8000", "192.0.2.11/32", "192.0.2.14/32[tcp/8000]"),
		hostSA("from-port-9001", "192.0.2.11/32[tcp/9001]", "192.0.2.15/32"),
		hostSA("from-port-9000", "192.0.2.11/32[tcp/9000]", "192.0.2.15/32"),
		// Older and wider than the per-port SAs: found when they miss.
		hostSA("any-port", "192.0.2.11/32", "192.0.2.14/32[tcp]"),
		hostSA("port-range", "192.0.2.11/32[tcp/9000-9999]", "192.0.2.15/32"),
	}
	ix := NewIndex(sas)
	flow := func(l, r string, proto uint8) Flow {
		return Flow{Local: netip.MustParseAddrPort(l), Remote: netip.MustParseAddrPort(r), Protocol: proto}
	}
	tests := []struct {
		f    Flow
		want string
	}{
		{flow("192.0.2.11:40000", "192.0.2.12:22", 6), "newest-host"},
		{flow("10.1.0.10:40000", "10.2.0.10:80", 6), "subnet"},
		{flow("192.0.2.11:40000", "192.0.2.13:443", 6), "tcp-only"},
		{flow("192.0.2.11:40000", "192.0.2.13:80", 6), ""},
		{flow("192.0.2.11:40000", "192.0.2.13:443", 17), ""},
		{flow("192.0.2.99:40000", "192.0.2.12:22", 6), ""},
		{flow("192.0.2.11:40000", "192.0.2.14:8000", 6), "to-port-8000"},
		{flow("192.0.2.11:40000", "192.0.2.14:8001", 6), "to-port-8001"},
		{flow("192.0.2.11:40000", "192.0.2.14:8002", 6), "any-port"},
		{flow("192.0.2.11:40000", "192.0.2.14:8000", 17), ""},
		{flow("192.0.2.11:9000", "192.0.2.15:50000", 6), "from-port-9000"},
		{flow("192.0.2.11:9001", "192.0.2.15:50000", 6), "from-port-9001"},
		{flow("192.0.2.11:9002", "192.0.2.15:50000", 6), "port-range"},
		{flow("192.0.2.11:9000", "192.0.2.16:50000", 6), ""},
	}
	for _, tt := range tests {
		sa, ok := ix.Find(tt.f)
		if got := sa.Child.IKEName; ok != (tt.want != "") || got != tt.want {
			t.Errorf("Find(%v) = %q, %v; want %q", tt.f, got, ok, tt.want)
		}
	}
}

// TestIndexFindMatchesScan: on random SAs (hosts, ports, ranges, subnets,
// several selectors each) the index answers what a scan of every SA in
// order answers.
func TestIndexFindMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	addr := func() netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(4))}) }
	ts := func() TS {
		a := addr()
		t := TS{From: a, To: a, ToPort: 0xFFFF}
		switch rng.IntN(6) {
		case 0: // subnet
			t.From, t.To = netip.AddrFrom4([4]byte{10, 0, 0, 0}), netip.AddrFrom4([4]byte{10, 0, 0, 3})
		case 1, 2: // one port
			t.Proto = []uint8{6, 17}[rng.IntN(2)]
			t.FromPort = uint16(1 + rng.IntN(4))
			t.ToPort = t.FromPort
		case 3: // port range
			t.Proto = 6
			t.FromPort, t.ToPort = 1, uint16(1+rng.IntN(4))
		case 4: // protocol only
			t.Proto = 6
		}
		return t
	}
	list := func() []TS {
		out := make([]TS, 1+rng.IntN(2))
		for i := range out {
			out[i] = ts()
		}
		return out
	}
	for round := range 200 {
		sas := make([]TokenSA, 1+rng.IntN(20))
		for i := range sas {
			sas[i] = TokenSA{Child: Child{Name: fmt.Sprint(i)}, LocalTS: list(), RemoteTS: list()}
		}
		ix := NewIndex(sas)
		for range 50 {
			f := Flow{
				Local:    netip.AddrPortFrom(addr(), uint16(1+rng.IntN(5))),
				Remote:   netip.AddrPortFrom(addr(), uint16(1+rng.IntN(5))),
				Protocol: []uint8{6, 17}[rng.IntN(2)],
			}
			want := ""
			for _, sa := range sas {
				if coveredBy(sa.LocalTS, f.Local, f.Protocol) && coveredBy(sa.RemoteTS, f.Remote, f.Protocol) {
					want = sa.Child.Name
					break
				}
			}
			sa, ok := ix.Find(f)
			if got := sa.Child.Name; ok != (want != "") || got != want {
				t.Fatalf("round %d: Find(%v) = %q, %v; a scan finds %q\nSAs: %+v", round, f, got, ok, want, sas)
			}
			// FindLabeled (no labels here): the most specific covering
			// SA, the first among equals, wherever the index keeps it.
			wantL, bestSpec := "", -1
			for _, sa := range sas {
				if coveredBy(sa.LocalTS, f.Local, f.Protocol) && coveredBy(sa.RemoteTS, f.Remote, f.Protocol) {
					if s := specificity(sa.LocalTS, f.Local, f.Protocol) + specificity(sa.RemoteTS, f.Remote, f.Protocol); s > bestSpec {
						wantL, bestSpec = sa.Child.Name, s
					}
				}
			}
			sa, _, ok = ix.FindLabeled(f)
			if got := sa.Child.Name; ok != (wantL != "") || got != wantL {
				t.Fatalf("round %d: FindLabeled(%v) = %q, %v; a scan finds %q\nSAs: %+v", round, f, got, ok, wantL, sas)
			}
		}
	}
}

// BenchmarkIndexFind: the lookup stays flat from 10 to 10,000 SAs, whether
// each SA goes to its own host (OE), or all go to one host and differ by
// the port, as a client (remote port) or a server (local port) sees them.
// The flow asked about is the oldest SA's (last in newest-first order).
func BenchmarkIndexFind(b *testing.B) {
	for _, shape := range []string{"hosts", "remote-ports", "local-ports"} {
		for _, n := range []int{10, 10000} {
			b.Run(fmt.Sprintf("%s/sas=%d", shape, n), func(b *testing.B) {
				sas := make([]TokenSA, n)
				for i := range sas {
					switch shape {
					case "hosts":
						sas[i] = hostSA("oe", "192.0.2.1/32", netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}).String()+"/32")
					case "remote-ports":
						sas[i] = hostSA("svc", "192.0.2.1/32", fmt.Sprintf("192.0.2.2/32[tcp/%d]", 10000+i))
					case "local-ports":
						sas[i] = hostSA("svc", fmt.Sprintf("192.0.2.1/32[tcp/%d]", 10000+i), "192.0.2.2/32")
					}
				}
				last := uint16(10000 + n - 1)
				f := map[string]Flow{
					"hosts":        {Local: netip.MustParseAddrPort("192.0.2.1:40000"), Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte((n - 1) >> 8), byte(n - 1)}), 443), Protocol: 6},
					"remote-ports": {Local: netip.MustParseAddrPort("192.0.2.1:40000"), Remote: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.2"), last), Protocol: 6},
					"local-ports":  {Local: netip.AddrPortFrom(netip.MustParseAddr("192.0.2.1"), last), Remote: netip.MustParseAddrPort("192.0.2.2:40000"), Protocol: 6},
				}[shape]
				ix := NewIndex(sas)
				for b.Loop() {
					if _, ok := ix.Find(f); !ok {
						b.Fatal("not found")
					}
				}
			})
		}
	}
}

// TestIndexFindLabeled: the socket's label picks among labeled SAs; without
// it, SAs with different labels are all reported as candidates.
func TestIndexFindLabeled(t *testing.T) {
	labeled := func(name, label string) TokenSA {
		sa := hostSA(name, "192.0.2.11/32", "192.0.2.12/32")
		sa.Child.Label = label
		return sa
	}
	flow := func(label string) Flow {
		return Flow{Local: netip.MustParseAddrPort("192.0.2.11:4000"), Remote: netip.MustParseAddrPort("192.0.2.12:22"), Protocol: 6, Label: label}
	}
	tests := []struct {
		name  string
		sas   []TokenSA
		label string
		want  string
		cands int
	}{
		{"label picks the older SA", []TokenSA{labeled("a", "label_a"), labeled("b", "label_b")}, "label_b", "b", 0},
		{"label picks the newer SA", []TokenSA{labeled("a", "label_a"), labeled("b", "label_b")}, "label_a", "a", 0},
		{"no socket label, two labels", []TokenSA{labeled("a", "label_a"), labeled("b", "label_b")}, "", "a", 2},
		{"no socket label, same label twice", []TokenSA{labeled("a", "label_a"), labeled("a2", "label_a")}, "", "a", 0},
		{"no socket label, labeled and unlabeled", []TokenSA{labeled("a", "label_a"), labeled("u", "")}, "", "a", 2},
		{"socket label matches nothing: the unlabeled SA", []TokenSA{labeled("a", "label_a"), labeled("u", "")}, "label_x", "u", 0},
		{"socket label matches nothing, all labeled", []TokenSA{labeled("a", "label_a"), labeled("b", "label_b")}, "label_x", "a", 0},
		{"unlabeled only", []TokenSA{labeled("u", "")}, "", "u", 0},
	}
	for _, tt := range tests {
		sa, cands, ok := NewIndex(tt.sas).FindLabeled(flow(tt.label))
		if !ok || sa.Child.IKEName != tt.want || len(cands) != tt.cands {
			t.Errorf("%s: %q, %d candidates, %v; want %q, %d", tt.name, sa.Child.IKEName, len(cands), ok, tt.want, tt.cands)
		}
	}
	// The most specific selectors win over the newest, as in the kernel.
	narrow := hostSA("tcp-only", "192.0.2.11/32[tcp]", "192.0.2.12/32[tcp]")
	subnet := hostSA("subnet", "192.0.2.0/24", "192.0.2.0/24")
	for _, sas := range [][]TokenSA{
		{labeled("host", ""), narrow, subnet},
		{subnet, narrow, labeled("host", "")},
	} {
		if sa, _, _ := NewIndex(sas).FindLabeled(flow("")); sa.Child.IKEName != "tcp-only" {
			t.Errorf("%v: %q, want the TCP-only SA", sas, sa.Child.IKEName)
		}
	}
	if sa, _, _ := NewIndex([]TokenSA{subnet, labeled("host", "")}).FindLabeled(flow("")); sa.Child.IKEName != "host" {
		t.Errorf("host vs subnet: %q", sa.Child.IKEName)
	}
	if _, _, ok := NewIndex(nil).FindLabeled(flow("")); ok {
		t.Error("empty index found an SA")
	}
}

// BenchmarkIndexFindLabeled: choosing by specificity and label costs about
// what Find costs; ratio is FindLabeled's time over Find's in the same run.
func BenchmarkIndexFindLabeled(b *testing.B) {
	for _, n := range []int{10, 10000} {
		b.Run(fmt.Sprintf("sas=%d", n), func(b *testing.B) {
			sas := make([]TokenSA, n)
			for i := range sas {
				sas[i] = hostSA("oe", "192.0.2.1/32", netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()+"/32")
			}
			ix := NewIndex(sas)
			f := Flow{Local: netip.MustParseAddrPort("192.0.2.1:40000"), Remote: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, byte((n - 1) >> 8), byte(n - 1)}), 443), Protocol: 6}
			const rounds = 1000
			var base, labeled time.Duration
			for b.Loop() {
				start := time.Now()
				for range rounds {
					if _, ok := ix.Find(f); !ok {
						b.Fatal("not found")
					}
				}
				mid := time.Now()
				for range rounds {
					if _, _, ok := ix.FindLabeled(f); !ok {
						b.Fatal("not found")
					}
				}
				base, labeled = base+mid.Sub(start), labeled+time.Since(mid)
			}
			b.ReportMetric(float64(labeled)/float64(base), "ratio-vs-Find")
		})
	}
}

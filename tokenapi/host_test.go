package tokenapi

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

func TestParseTS(t *testing.T) {
	ap := netip.MustParseAddrPort
	tests := []struct {
		ts    string
		in    []netip.AddrPort
		out   []netip.AddrPort
		proto uint8
	}{
		{"10.1.0.0/16", []netip.AddrPort{ap("10.1.0.0:1"), ap("10.1.255.255:65535")}, []netip.AddrPort{ap("10.2.0.0:1"), ap("[::1]:1")}, 6},
		{"10.1.2.3/16", []netip.AddrPort{ap("10.1.9.9:1")}, nil, 17},
		{"192.0.2.1", []netip.AddrPort{ap("192.0.2.1:5")}, []netip.AddrPort{ap("192.0.2.2:5")}, 6},
		{"10.0.0.2..10.0.0.4", []netip.AddrPort{ap("10.0.0.2:1"), ap("10.0.0.4:1")}, []netip.AddrPort{ap("10.0.0.1:1"), ap("10.0.0.5:1")}, 6},
		{"192.0.2.1/32[tcp/80]", []netip.AddrPort{ap("192.0.2.1:80")}, []netip.AddrPort{ap("192.0.2.1:81")}, 6},
		{"192.0.2.1/32[tcp/80]", nil, []netip.AddrPort{ap("192.0.2.1:80")}, 17},
		{"0.0.0.0/0[udp]", []netip.AddrPort{ap("1.2.3.4:53")}, nil, 17},
		{"::/0[17/1024-2048]", []netip.AddrPort{ap("[2001:db8::1]:1024"), ap("[2001:db8::1]:2048")}, []netip.AddrPort{ap("[2001:db8::1]:2049"), ap("1.2.3.4:1500")}, 17},
		{"2001:db8::/32[tcp/OPAQUE]", []netip.AddrPort{ap("[2001:db8::1]:9")}, nil, 6},
	}
	for _, tc := range tests {
		ts, err := ParseTS(tc.ts)
		if err != nil {
			t.Errorf("%s: %v", tc.ts, err)
			continue
		}
		for _, a := range tc.in {
			if !ts.Covers(a, tc.proto) {
				t.Errorf("%s does not cover %s/%d", tc.ts, a, tc.proto)
			}
		}
		for _, a := range tc.out {
			if ts.Covers(a, tc.proto) {
				t.Errorf("%s covers %s/%d", tc.ts, a, tc.proto)
			}
		}
	}
	for _, bad := range []string{"", "10.0.0.0/33", "10.0.0.5..10.0.0.1", "10.0.0.0/8[tcp/80", "10.0.0.0/8[nosuchproto]", "10.0.0.0/8[tcp/90-80]", "10.0.0.1..::1"} {
		if _, err := ParseTS(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

type fakeHost struct {
	sas   []TokenSA
	err   error
	gen   *atomic.Uint64 // nil: generation 0 forever
	calls *atomic.Int32  // TokenSAs calls, when set
}

func (h fakeHost) TokenSAs(context.Context) (plugins.TokenSnapshot, error) {
	if h.calls != nil {
		h.calls.Add(1)
	}
	return plugins.TokenSnapshot{Generation: h.Generation(), SAs: h.sas}, h.err
}
func (h fakeHost) Generation() uint64 {
	if h.gen == nil {
		return 0
	}
	return h.gen.Load()
}
func (h fakeHost) Protect(context.Context, ProtectRequest) (ProtectOutcome, error) {
	return ProtectOutcome{Why: wire.ReasonNoPolicy, WhyText: "fake host"}, nil
}

func (h fakeHost) PinTarget(context.Context) (PinTarget, error) {
	return PinTarget{Datapath: "userspace", Device: "lo"}, nil
}

func (h fakeHost) WhyNot(_ context.Context, f Flow) (wire.Reason, string, error) {
	return wire.ReasonOENoRecords, "no IPSECKEY for " + f.Remote.Addr().String(), nil
}

func mustTS(t *testing.T, s ...string) []TS {
	var out []TS
	for _, x := range s {
		ts, err := ParseTS(x)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ts)
	}
	return out
}

func TestHostFacts(t *testing.T) {
	h := fakeHost{sas: []TokenSA{
		{Child: Child{Name: "web"}, LocalTS: mustTS(t, "10.1.0.0/16[tcp/443]"), RemoteTS: mustTS(t, "10.2.0.0/16")},
		{Child: Child{Name: "all"}, LocalTS: mustTS(t, "10.1.0.0/16"), RemoteTS: mustTS(t, "10.2.0.0/16", "10.3.0.0/16")},
	}}
	f := HostFacts(h)
	tests := []struct {
		local, remote string
		child         string
	}{
		{"10.1.0.10:443", "10.2.0.10:50000", "web"},
		{"10.1.0.10:22", "10.2.0.10:50000", "all"},
		{"10.1.0.10:22", "10.3.0.10:50000", "all"},
		{"10.1.0.10:22", "10.4.0.10:50000", ""},
	}
	for _, tc := range tests {
		p, err := f.Protection(context.Background(), Flow{Local: netip.MustParseAddrPort(tc.local), Remote: netip.MustParseAddrPort(tc.remote), Protocol: 6})
		if err != nil {
			t.Fatal(err)
		}
		if p.Protected != (tc.child != "") || p.Child.Name != tc.child {
			t.Errorf("%s -> %s: %+v, want child %q", tc.local, tc.remote, p, tc.child)
		}
		if !p.Protected && (p.Why != wire.ReasonOENoRecords || !strings.Contains(p.WhyText, "10.4.0.10")) {
			t.Errorf("why: %+v", p)
		}
	}
	_, err := HostFacts(fakeHost{err: errors.New("charon away")}).Protection(context.Background(), Flow{})
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("host error: %v", err)
	}
}

// The facts keep their index while the host's generation stays, and take a
// new snapshot once it moves.
func TestHostFactsFollowGeneration(t *testing.T) {
	h := fakeHost{sas: []TokenSA{{Child: Child{Name: "all"}, LocalTS: mustTS(t, "10.1.0.0/16"), RemoteTS: mustTS(t, "10.2.0.0/16")}},
		gen: new(atomic.Uint64), calls: new(atomic.Int32)}
	f := HostFacts(h)
	flow := Flow{Local: netip.MustParseAddrPort("10.1.0.1:22"), Remote: netip.MustParseAddrPort("10.2.0.1:40000"), Protocol: 6}
	for range 50 {
		if p, err := f.Protection(context.Background(), flow); err != nil || !p.Protected {
			t.Fatalf("Protection = %+v, %v", p, err)
		}
	}
	if n := h.calls.Load(); n != 1 {
		t.Fatalf("50 queries in one generation took %d snapshots, want 1", n)
	}
	h.gen.Add(1)
	if _, err := f.Protection(context.Background(), flow); err != nil {
		t.Fatal(err)
	}
	if n := h.calls.Load(); n != 2 {
		t.Fatalf("a new generation took %d snapshots in all, want 2", n)
	}
}

func TestModuleNeedsHost(t *testing.T) {
	m := &Module{Config: Config{Socket: "/nonexistent/dir/t.sock"}}
	if err := m.Serve(context.Background(), nil); err == nil || !strings.Contains(err.Error(), "TokenHost") {
		t.Errorf("Serve without a host: %v", err)
	}
	if err := m.Serve(context.Background(), fakeHost{}); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("Serve without socket directory: %v", err)
	}
}

package xfrm

import (
	"encoding/hex"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// goldenDatagram reads a testdata/*.hex datagram (comment lines start with #).
func goldenDatagram(tb testing.TB, name string) []byte {
	tb.Helper()
	text, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		tb.Fatal(err)
	}
	var h strings.Builder
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, "#") {
			h.WriteString(strings.TrimSpace(line))
		}
	}
	dg, err := hex.DecodeString(h.String())
	if err != nil {
		tb.Fatal(err)
	}
	return dg
}

// TestGoldenAcquireIPv6 decodes an IPv6 ACQUIRE this kernel really sent
// (TestKernelAcquireIPv6 -xfrm.golden wrote it).
func TestGoldenAcquireIPv6(t *testing.T) {
	as, errs := DecodeAcquires(goldenDatagram(t, "acquire_ipv6.hex"))
	if len(errs) != 0 || len(as) != 1 {
		t.Fatalf("decoded %d, errors %v", len(as), errs)
	}
	a := as[0]
	if a.Pair().String() != "2001:db8:98::1->2001:db8:99::1" || a.Proto != 17 || a.DstPort != 9 || a.SAProto != protoESP ||
		a.SADst.String() != "2001:db8:99::1" || a.SASrc.String() != "2001:db8:98::1" {
		t.Errorf("decoded %s SA %d %s->%s", a, a.SAProto, a.SASrc, a.SADst)
	}
	if !DefaultOwner().Owns(a.Policy) || a.Policy.Src.String() != "::/0" || a.Policy.Dst.String() != "2001:db8:99::/48" || a.Policy.Action != Trap || a.Policy.Dir != DirOut {
		t.Errorf("policy %s", a.Policy)
	}
	if len(a.Templates) != 1 || a.Templates[0].Family != afInet6 || a.Templates[0].Mode != modeTransport || a.Templates[0].Dst.IsValid() {
		t.Errorf("templates %+v", a.Templates)
	}
	// The decoded ACQUIRE re-encodes to what the kernel sent (the payload
	// after the netlink header), so fakes feed the decoder real-looking
	// IPv6 messages.
	b, err := a.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	back, err := ParseAcquire(b)
	if err != nil || back.Pair() != a.Pair() || back.Policy != a.Policy || back.SADst != a.SADst {
		t.Errorf("round trip: %+v %v", back, err)
	}
}

// TestValidateICMP: ICMP types ride in the port fields, each protocol with
// its own family.
func TestValidateICMP(t *testing.T) {
	any6, any4 := netip.MustParsePrefix("::/0"), netip.MustParsePrefix("0.0.0.0/0")
	tests := []struct {
		name string
		p    Policy
		want string // "" for valid
	}{
		{"neighbour solicitation", Policy{Src: any6, Dst: any6, Proto: ProtoICMPv6, SrcPort: 135, Dir: DirOut, Action: Allow}, ""},
		{"ICMP echo over IPv4", Policy{Src: any4, Dst: any4, Proto: ProtoICMP, SrcPort: 8, Dir: DirOut, Action: Allow}, ""},
		{"ICMPv6 code", Policy{Src: any6, Dst: any6, Proto: ProtoICMPv6, SrcPort: 1, DstPort: 4, Dir: DirOut, Action: Allow}, ""},
		{"type above 255", Policy{Src: any6, Dst: any6, Proto: ProtoICMPv6, SrcPort: 300, Dir: DirOut, Action: Allow}, "above 255"},
		{"ICMPv6 on IPv4", Policy{Src: any4, Dst: any4, Proto: ProtoICMPv6, SrcPort: 135, Dir: DirOut, Action: Allow}, "does not fit an IPv4 selector"},
		{"ICMP on IPv6", Policy{Src: any6, Dst: any6, Proto: ProtoICMP, SrcPort: 8, Dir: DirOut, Action: Allow}, "does not fit an IPv6 selector"},
		{"ports on GRE", Policy{Src: any6, Dst: any6, Proto: 47, SrcPort: 8, Dir: DirOut, Action: Allow}, "ports need a protocol"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to mention %q", err, tt.want)
			}
		})
	}
}

// TestIPv6Bypass: what IPv6 needs under a ::/0 trap, all outbound allows,
// all valid, and nothing more (an echo request is OE's business).
func TestIPv6Bypass(t *testing.T) {
	ps := IPv6Bypass(1_000_256)
	var got []string
	for _, p := range ps {
		if err := p.Validate(); err != nil {
			t.Error(err)
		}
		if p.Dir != DirOut || p.Action != Allow || p.Priority != 1_000_256 || p.Family() != 6 {
			t.Errorf("bypass %s", p)
		}
		got = append(got, p.String())
	}
	want := []string{
		"src ::/0 dst ::/0 proto 58 sport 133 dir out allow priority 1000256",
		"src ::/0 dst ::/0 proto 58 sport 134 dir out allow priority 1000256",
		"src ::/0 dst ::/0 proto 58 sport 135 dir out allow priority 1000256",
		"src ::/0 dst ::/0 proto 58 sport 136 dir out allow priority 1000256",
		"src ::/0 dst ::/0 proto 58 sport 137 dir out allow priority 1000256",
		"src ::/0 dst fe80::/10 dir out allow priority 1000256",
		"src ::/0 dst ff00::/8 dir out allow priority 1000256",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("IPv6Bypass:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

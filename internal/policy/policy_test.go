package policy

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestDecide(t *testing.T) {
	p, ps := New("oe.group", []GroupConfig{
		{Group: "private-or-clear", CIDRs: []string{"0.0.0.0/0"}},
		{Group: "private", CIDRs: []string{"10.2.0.0/16"}, ShuntLifetime: "30s"},
		{Group: "clear", CIDRs: []string{"10.2.5.0/24"}},
		{Group: "block", CIDRs: []string{"10.2.5.66/32"}},
		{Group: "clear-or-private", CIDRs: []string{"192.0.2.0/24"}},
	})
	if len(ps) > 0 {
		t.Fatal(ps)
	}
	p.Exempt(netip.MustParsePrefix("192.0.2.1/32"), "the host's own address")
	p.Exempt(netip.MustParsePrefix("192.0.2.53/32"), "the resolver")
	tests := []struct {
		dst    string
		group  Group
		neg    Shunt
		fail   Shunt
		life   time.Duration
		exempt string
	}{
		{"198.51.100.7", PrivateOrClear, Drop, Pass, DefaultShuntLifetime, ""},
		{"10.2.0.10", Private, Drop, Drop, 30 * time.Second, ""},
		{"10.2.5.10", Clear, Pass, Pass, DefaultShuntLifetime, ""},
		{"10.2.5.66", Block, Drop, Drop, DefaultShuntLifetime, ""},
		{"192.0.2.9", ClearOrPrivate, Pass, Pass, DefaultShuntLifetime, ""},
		{"192.0.2.1", Clear, Pass, Pass, 0, "the host's own address"},
		{"192.0.2.53", Clear, Pass, Pass, 0, "the resolver"},
		{"::ffff:10.2.0.10", Private, Drop, Drop, 30 * time.Second, ""},
	}
	for _, tt := range tests {
		d := p.Decide(netip.MustParseAddr(tt.dst))
		if d.Group != tt.group || d.NegotiationShunt != tt.neg || d.FailureShunt != tt.fail || d.ShuntLifetime != tt.life || d.Exempt != tt.exempt {
			t.Errorf("Decide(%s) = %+v", tt.dst, d)
		}
	}
	if got := p.Prefixes(Private, PrivateOrClear); len(got) != 2 || got[0].String() != "10.2.0.0/16" {
		t.Errorf("trap prefixes = %v", got)
	}
	if !Private.Initiates() || ClearOrPrivate.Initiates() || !ClearOrPrivate.Responds() || Clear.Responds() {
		t.Error("group semantics")
	}
}

func TestProblems(t *testing.T) {
	tests := []struct {
		gc   GroupConfig
		path string
		msg  string
	}{
		{GroupConfig{Group: "privat", CIDRs: []string{"10.0.0.0/8"}}, "g[0].group", `"privat" is not a policy group`},
		{GroupConfig{Group: "private", CIDRs: []string{"10.0.0.0/8"}, FailureShunt: "pass"}, "g[0].failure_shunt", "would let traffic out in clear"},
		{GroupConfig{Group: "private", CIDRs: []string{"10.0.0.0/8"}, NegotiationShunt: "pass"}, "g[0].negotiation_shunt", "would let traffic out in clear"},
		{GroupConfig{Group: "private-or-clear", CIDRs: []string{"10.0.0.1/8"}}, "g[0].cidrs", `write "10.0.0.0/8"`},
		{GroupConfig{Group: "private-or-clear", CIDRs: []string{"ten"}}, "g[0].cidrs", "is not a CIDR"},
		{GroupConfig{Group: "private-or-clear", CIDRs: []string{"10.0.0.0/8"}, ShuntLifetime: "soon"}, "g[0].shunt_lifetime", "not a positive duration"},
		{GroupConfig{Group: "private-or-clear", CIDRs: []string{"10.0.0.0/8"}, FailureShunt: "reject"}, "g[0].failure_shunt", `write "drop" or "pass"`},
		{GroupConfig{Group: "private"}, "g[0]", "has no cidrs"},
	}
	for _, tt := range tests {
		_, ps := New("g", []GroupConfig{tt.gc})
		if len(ps) != 1 || ps[0].Path != tt.path || !strings.Contains(ps[0].Msg, tt.msg) {
			t.Errorf("%+v: problems %+v, want %s: %s", tt.gc, ps, tt.path, tt.msg)
		}
	}
	_, ps := New("g", []GroupConfig{{Group: "private", CIDRs: []string{"10.0.0.0/8"}}, {Group: "clear", CIDRs: []string{"10.0.0.0/8"}}})
	if len(ps) != 1 || ps[0].Path != "g[1].cidrs" || !strings.Contains(ps[0].Msg, "in two groups") {
		t.Errorf("duplicate CIDR: %+v", ps)
	}
}

func BenchmarkDecide(b *testing.B) {
	var gcs []GroupConfig
	for i := 0; i < 256; i++ {
		gcs = append(gcs, GroupConfig{Group: "private", CIDRs: []string{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i), 0, 0}), 16).String()}})
	}
	p, _ := New("g", gcs)
	dst := netip.MustParseAddr("10.200.3.4")
	for b.Loop() {
		p.Decide(dst)
	}
}

package daemon

import (
	"net/netip"
	"testing"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

func TestOEReason(t *testing.T) {
	tests := []struct {
		reason string
		want   wire.Reason
	}{
		{"no OE records for 192.0.2.1 in DNS (1.2.0.192.in-addr.arpa.)", wire.ReasonOENoRecords},
		{"DNS: query 1.2.0.192.in-addr.arpa.: i/o timeout", wire.ReasonDNSTimeout},
		{"DNS: lookup: context deadline exceeded", wire.ReasonDNSTimeout},
		{"DNS answer unusable: DNSSEC validation failed (bogus)", wire.ReasonOEUnusable},
		{"gateway 192.0.2.12: AUTHENTICATION_FAILED", wire.ReasonAuthFailed},
		{"gateway 192.0.2.12: NO_PROPOSAL_CHOSEN", wire.ReasonNegotiationFailed},
	}
	for _, tt := range tests {
		if got := oeReason(tt.reason); got != tt.want {
			t.Errorf("oeReason(%q) = %s, want %s", tt.reason, got, tt.want)
		}
	}
}

func TestSelectorsCover(t *testing.T) {
	ap := netip.MustParseAddrPort("192.0.2.12:443")
	tests := []struct {
		name  string
		ts    []string
		addrs []string
		want  bool
	}{
		{"host /32", []string{"192.0.2.12/32"}, nil, true},
		{"subnet with tcp", []string{"192.0.2.0/24[tcp]"}, nil, true},
		{"other protocol", []string{"192.0.2.0/24[udp]"}, nil, false},
		{"other port", []string{"192.0.2.12/32[tcp/80]"}, nil, false},
		{"dynamic, the conn's address", []string{"dynamic"}, []string{"192.0.2.12"}, true},
		{"dynamic, another address", []string{"dynamic"}, []string{"192.0.2.13"}, false},
		{"dynamic, %any", []string{"dynamic"}, []string{"%any"}, false},
		{"garbage", []string{"not a selector"}, nil, false},
	}
	for _, tt := range tests {
		if got := selectorsCover(tt.ts, tt.addrs, ap, 6); got != tt.want {
			t.Errorf("%s: got %v, want %v", tt.name, got, tt.want)
		}
	}
}

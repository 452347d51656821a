package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/plugins"
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
		// charon 5.9.8's words when the peer's key is not the one DNS gave.
		{`gateway 192.0.2.12: vici: initiate child "oe": charon says: establishing CHILD_SA 'oe' failed (charon log: authentication of '192.0.2.11' (myself) with RSA_EMSA_PKCS1_SHA2_256 successful; using trusted certificate "192.0.2.12"; signature validation failed, looking for another key)`, wire.ReasonAuthFailed},
		{"gateway 192.0.2.12: charon says: failed (charon log: received AUTHENTICATION_FAILED notify error)", wire.ReasonAuthFailed},
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

// TestProtectConfigured: without OE, a protection request initiates the
// configured child whose selectors cover the flow; that conn cannot be
// lowered by anyone; a flow nothing covers is NO_POLICY and may go clear.
func TestProtectConfigured(t *testing.T) {
	f := newFake()
	d := New(testConfig(t, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	covered := plugins.TokenFlow{Local: netip.MustParseAddrPort("10.1.0.5:40000"), Remote: netip.MustParseAddrPort("10.2.0.7:443"), Protocol: 6}
	elsewhere := plugins.TokenFlow{Local: netip.MustParseAddrPort("10.1.0.5:40001"), Remote: netip.MustParseAddrPort("198.51.100.1:443"), Protocol: 6}
	tests := []struct {
		name     string
		req      plugins.TokenProtect
		refuse   string
		why      wire.Reason
		initiate string
	}{
		{"covered: initiate its child", plugins.TokenProtect{Flow: covered, Level: wire.LevelEncryption}, "", wire.ReasonNone, "initiate obol-a/net"},
		{"initiate fails authentication", plugins.TokenProtect{Flow: covered, Level: wire.LevelBTNS}, "AUTHENTICATION_FAILED", wire.ReasonAuthFailed, "initiate obol-a/net"},
		{"initiate fails otherwise", plugins.TokenProtect{Flow: covered, Level: wire.LevelBTNS}, "TS_UNACCEPTABLE", wire.ReasonNegotiationFailed, "initiate obol-a/net"},
		{"nothing covers", plugins.TokenProtect{Flow: elsewhere, Level: wire.LevelEncryption}, "", wire.ReasonNoPolicy, ""},
		{"configured conn cannot be lowered, even privileged", plugins.TokenProtect{Flow: covered, Level: wire.LevelClear, MayLower: true}, "", wire.ReasonPolicyWins, ""},
		{"clear where policy is clear anyway", plugins.TokenProtect{Flow: elsewhere, Level: wire.LevelClear}, "", wire.ReasonNone, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.mu.Lock()
			f.calls, f.refuse = nil, map[string]string{}
			if tt.refuse != "" {
				f.refuse["net"] = tt.refuse
			}
			f.mu.Unlock()
			out, err := d.tokens.Protect(ctx, tt.req)
			if err != nil {
				t.Fatal(err)
			}
			if out.Why != tt.why {
				t.Fatalf("why %s (%s), want %s", out.Why, out.WhyText, tt.why)
			}
			f.mu.Lock()
			initiated := slices.ContainsFunc(f.calls, func(c string) bool { return strings.HasPrefix(c, "initiate") })
			got := slices.Contains(f.calls, tt.initiate)
			f.mu.Unlock()
			if tt.initiate != "" && !got || tt.initiate == "" && initiated {
				t.Errorf("calls %v, want initiate %q", f.calls, tt.initiate)
			}
		})
	}
}

func TestPinTarget(t *testing.T) {
	d := New(testConfig(t, twoConns), newFake(), plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if _, err := d.tokens.PinTarget(context.Background()); err == nil {
		t.Error("a pin target before the datapath is known")
	}
	d.mu.Lock()
	d.state.Datapath = string(plugins.DatapathKernel)
	d.mu.Unlock()
	if pt, err := d.tokens.PinTarget(context.Background()); err != nil || pt.Datapath != plugins.DatapathKernel || pt.Device != "" {
		t.Errorf("kernel: %+v %v", pt, err)
	}
}

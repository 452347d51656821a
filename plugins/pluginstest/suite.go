package pluginstest

import (
	"bytes"
	"context"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
)

func lookup(t *testing.T, r plugins.Resolver, addr string) (plugins.LookupAnswer, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return r.Lookup(ctx, plugins.LookupQuery{Addr: netip.MustParseAddr(addr)})
}

// Resolver checks the Resolver contract on r, which must answer like
// ResolverFixture (in process, or served by a plugin).
func Resolver(t *testing.T, r plugins.Resolver) {
	t.Run("secure IPSECKEY", func(t *testing.T) {
		ans, err := lookup(t, r, "192.0.2.12")
		if err != nil {
			t.Fatal(err)
		}
		if ans.DNSSEC != plugins.DNSSECSecure || ans.TTL <= 0 || ans.Name != "12.2.0.192.in-addr.arpa." || len(ans.Gateways) != 1 {
			t.Fatalf("answer %+v", ans)
		}
		gw := ans.Gateways[0]
		if gw.Addr != netip.MustParseAddr("192.0.2.12") || gw.Precedence != 10 || !strings.Contains(gw.Source, "IPSECKEY") ||
			len(gw.Keys) != 1 || gw.Keys[0].Algorithm != "ed25519" || !bytes.Equal(gw.Keys[0].Data, fixtureKey(1)) {
			t.Fatalf("gateway %+v", gw)
		}
	})
	t.Run("insecure, two gateways by precedence", func(t *testing.T) {
		ans, err := lookup(t, r, "192.0.2.13")
		if err != nil {
			t.Fatal(err)
		}
		if ans.DNSSEC != plugins.DNSSECInsecure || len(ans.Gateways) != 2 {
			t.Fatalf("answer %+v", ans)
		}
		g0, g1 := ans.Gateways[0], ans.Gateways[1]
		if g0.Precedence != 10 || g0.Addr != netip.MustParseAddr("192.0.2.2") || !bytes.Equal(g0.Keys[0].Data, fixtureKey(2)) ||
			g1.Precedence != 20 || g1.Addr != netip.MustParseAddr("192.0.2.1") || !bytes.Equal(g1.Keys[0].Data, fixtureKey(1)) {
			t.Fatalf("gateways %+v", ans.Gateways)
		}
	})
	t.Run("bogus is unusable, with an error", func(t *testing.T) {
		ans, err := lookup(t, r, "198.51.100.7")
		if err == nil || ans.DNSSEC != plugins.DNSSECBogus || ans.Unusable == "" || len(ans.Gateways) != 0 {
			t.Fatalf("answer %+v, err %v", ans, err)
		}
	})
	t.Run("no records", func(t *testing.T) {
		ans, err := lookup(t, r, "192.0.2.99")
		if err != nil || len(ans.Gateways) != 0 || ans.TTL <= 0 {
			t.Fatalf("answer %+v, err %v", ans, err)
		}
	})
	t.Run("expired deadline", func(t *testing.T) {
		ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
		defer cancel()
		if _, err := r.Lookup(ctx, plugins.LookupQuery{Addr: netip.MustParseAddr("192.0.2.98")}); err == nil {
			t.Fatal("a lookup past its deadline succeeded")
		}
	})
	t.Run("concurrent lookups agree", func(t *testing.T) {
		want, _ := lookup(t, r, "192.0.2.13")
		var wg sync.WaitGroup
		errs := make(chan string, 32)
		for range 32 {
			wg.Go(func() {
				got, err := lookup(t, r, "192.0.2.13")
				if err != nil || !reflect.DeepEqual(got.Gateways, want.Gateways) {
					errs <- "a concurrent lookup differs"
				}
			})
		}
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Fatal(e)
		}
	})
}

// LabelPolicy checks the LabelPolicy contract on lp, which must answer like
// LabelsFixture.
func LabelPolicy(t *testing.T, lp plugins.LabelPolicy) {
	ctx := context.Background()
	web := plugins.Flow{Local: netip.MustParsePrefix("10.1.0.5/32"), Remote: netip.MustParsePrefix("10.2.0.9/32"), Protocol: 6, RemotePort: 443}
	tests := []struct {
		name    string
		req     plugins.LabelRequest
		allowed bool
		entry   string
	}{
		{"listed label", plugins.LabelRequest{Flow: web, Label: "system_u:system_r:httpd_t:s1"}, true, "web"},
		{"level above the entry", plugins.LabelRequest{Flow: web, Label: "system_u:system_r:httpd_t:s4"}, false, "web"},
		{"no entry covers", plugins.LabelRequest{Flow: plugins.Flow{Local: netip.MustParsePrefix("10.9.0.1/32"), Remote: netip.MustParsePrefix("10.8.0.1/32")}, Label: "WebData"}, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := lp.Authorize(ctx, tc.req)
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed != tc.allowed || d.Entry != tc.entry || d.Reason == "" {
				t.Fatalf("decision %+v, want allowed %v by %q with a reason", d, tc.allowed, tc.entry)
			}
		})
	}
	t.Run("children", func(t *testing.T) {
		cs, err := lp.Children(ctx, "web")
		if err != nil || len(cs) != 2 {
			t.Fatalf("Children(web) = %+v, %v", cs, err)
		}
		labels := []string{cs[0].Label, cs[1].Label}
		slices.Sort(labels)
		if labels[0] != "system_u:system_r:httpd_t:s1" || cs[0].LabelMode != "simple" || cs[0].LocalTS == "" || cs[0].RemoteTS == "" {
			t.Fatalf("children %+v", cs)
		}
		if _, err := lp.Children(ctx, "no-such-entry"); err == nil {
			t.Fatal("Children of an unknown entry succeeded")
		}
	})
}

// XFRMChecker checks the XFRMChecker contract on x, which must answer like
// XFRMFixture.
func XFRMChecker(t *testing.T, x plugins.XFRMChecker) {
	ctx := context.Background()
	for _, tc := range []struct {
		plugins []string
		want    plugins.Datapath
	}{
		{[]string{"kernel-libipsec", "socket-default"}, plugins.DatapathUserspace},
		{[]string{"kernel-netlink", "socket-default"}, plugins.DatapathKernel},
	} {
		if dp, err := x.Datapath(ctx, tc.plugins); err != nil || dp != tc.want {
			t.Errorf("Datapath(%v) = %q, %v; want %q", tc.plugins, dp, err, tc.want)
		}
	}
	kept := plugins.Policy{Src: netip.MustParsePrefix("192.0.2.11/32"), Dst: netip.MustParsePrefix("192.0.2.12/32"), Dir: "out", Action: "allow", Priority: 1_000_010}
	missing := plugins.Policy{Src: netip.MustParsePrefix("192.0.2.11/32"), Dst: netip.MustParsePrefix("192.0.2.88/32"), Dir: "out", Action: "trap", Priority: 1_000_030}
	r, err := x.Check(ctx, []plugins.Policy{kept, missing})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Missing) != 1 || r.Missing[0].Dst != missing.Dst || r.Missing[0].Action != "trap" {
		t.Errorf("missing = %+v", r.Missing)
	}
	if len(r.Stale) != 1 || r.Stale[0].Dst != netip.MustParsePrefix("192.0.2.77/32") || r.Stale[0].Action != "block" {
		t.Errorf("stale = %+v", r.Stale)
	}
	for _, p := range append(r.Missing, r.Stale...) {
		if p.Dst == kept.Dst {
			t.Errorf("the policy that is in the kernel was reported: %+v", p)
		}
	}
	if ok := r.OK(); ok {
		t.Error("a report with a missing and a stale policy says OK")
	}
}

// AuthMethod checks the AuthMethod contract on m, which must answer like
// AuthFixture over a WriteAuthFixture directory.
func AuthMethod(t *testing.T, m plugins.AuthMethod) {
	ctx := context.Background()
	tests := []struct {
		name    string
		q       plugins.LookupQuery
		gateway string
		key     []byte
		errWant string
	}{
		{"peer is its own gateway", plugins.LookupQuery{Addr: netip.MustParseAddr("192.0.2.12")}, "192.0.2.12", fixtureKey(1), ""},
		{"peer behind a gateway", plugins.LookupQuery{Addr: netip.MustParseAddr("10.2.0.10")}, "192.0.2.2", fixtureKey(2), ""},
		{"no opinion", plugins.LookupQuery{Addr: netip.MustParseAddr("192.0.2.99")}, "", nil, ""},
		{"a broken key file is an error", plugins.LookupQuery{Addr: netip.MustParseAddr("192.0.2.13")}, "", nil, "not base64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ans, err := m.Credentials(ctx, tc.q)
			if (tc.errWant == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.errWant) {
				t.Fatalf("err %v, want %q", err, tc.errWant)
			}
			if tc.gateway == "" {
				if len(ans.Gateways) != 0 || ans.Unusable != "" {
					t.Fatalf("answer %+v, want no opinion", ans)
				}
				return
			}
			if len(ans.Gateways) != 1 || ans.Method != plugins.MethodPresharedKey {
				t.Fatalf("answer %+v", ans)
			}
			gw := ans.Gateways[0]
			if gw.Addr != netip.MustParseAddr(tc.gateway) || len(gw.Keys) != 1 || !bytes.Equal(gw.Keys[0].Data, tc.key) {
				t.Fatalf("gateway %+v, want %s with the fixture key", gw, tc.gateway)
			}
		})
	}
}

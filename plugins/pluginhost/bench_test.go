package pluginhost

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/plugins/pluginstest"
)

// BenchmarkModuleCall: one module call built in against the same call
// through go-plugin, side by side in one run; metric plugin/builtin is the
// ratio (why hot paths stay in process).
func BenchmarkModuleCall(b *testing.B) {
	ctx := context.Background()
	r, err := pluginstest.ResolverFixture()
	if err != nil {
		b.Fatal(err)
	}
	lp, err := pluginstest.LabelsFixture()
	if err != nil {
		b.Fatal(err)
	}
	s, _ := startPlugin(b, plugins.KindResolver, "modules", nil)
	sl, _ := startPlugin(b, plugins.KindLabels, "modules", nil)
	q := plugins.LookupQuery{Addr: netip.MustParseAddr("192.0.2.12")}
	lr := plugins.LabelRequest{Flow: plugins.Flow{Local: netip.MustParsePrefix("10.1.0.5/32"), Remote: netip.MustParsePrefix("10.2.0.9/32"), Protocol: 6, RemotePort: 443},
		Label: "system_u:system_r:httpd_t:s1"}
	calls := []struct {
		name             string
		builtin, plugged func() error
	}{
		{"resolver-cached-lookup",
			func() error { _, err := r.Lookup(ctx, q); return err },
			func() error { _, err := Resolver(s).Lookup(ctx, q); return err }},
		{"labels-authorize",
			func() error { _, err := lp.Authorize(ctx, lr); return err },
			func() error { _, err := LabelPolicy(sl).Authorize(ctx, lr); return err }},
	}
	for _, c := range calls {
		b.Run(c.name, func(b *testing.B) {
			timeIt := func(fn func() error) time.Duration {
				start := time.Now()
				for range b.N {
					if err := fn(); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(start) / time.Duration(b.N)
			}
			builtin := timeIt(c.builtin)
			plugged := timeIt(c.plugged)
			b.ReportMetric(float64(builtin.Nanoseconds()), "builtin-ns/call")
			b.ReportMetric(float64(plugged.Nanoseconds()), "plugin-ns/call")
			b.ReportMetric(float64(plugged)/float64(max(builtin, 1)), "plugin/builtin")
		})
	}
}

package pluginhost

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/plugins/pluginstest"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/client"
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

// BenchmarkTokenQuery: a pToken query (client, SCM_RIGHTS, the module's
// index, reply) against the module built in and against the module in a
// plugin process with obold's TokenHost brokered back, side by side. In
// one generation the plugin pays no RPC per query, so the ratio stays
// near 1 (the application talks to the plugin's socket directly).
func BenchmarkTokenQuery(b *testing.B) {
	h := pluginstest.NewTokenHostFixture(b)
	builtinSock := filepath.Join(b.TempDir(), "builtin.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- (&tokenapi.Module{Config: tokenapi.Config{Socket: builtinSock}.WithDefaults()}).Serve(ctx, h)
	}()
	b.Cleanup(func() { cancel(); <-done })
	_, pluginSock, _ := startTokenAPI(b, h)
	conn, err := net.DialTCP("tcp4", nil, h.Web.Addr().(*net.TCPAddr))
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	query := func(c *client.Client) func() error {
		return func() error {
			pt, err := c.PToken(ctx, conn)
			if err != nil {
				return err
			}
			if !pt.Protected {
				return fmt.Errorf("pToken %+v", pt)
			}
			return c.Release(ctx, pt.Handle)
		}
	}
	builtinQ, pluginQ := query(pluginstest.DialToken(b, builtinSock)), query(pluginstest.DialToken(b, pluginSock))
	timeIt := func(fn func() error) time.Duration {
		start := time.Now()
		for range b.N {
			if err := fn(); err != nil {
				b.Fatal(err)
			}
		}
		return time.Since(start) / time.Duration(b.N)
	}
	// Warm both indexes first: the first query of a generation takes the
	// snapshot.
	if err := builtinQ(); err != nil {
		b.Fatal(err)
	}
	if err := pluginQ(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	calls := h.HostCalls()
	builtin := timeIt(builtinQ)
	plugged := timeIt(pluginQ)
	// Neither form asked the host anything per query.
	b.ReportMetric(float64(h.HostCalls()-calls)/float64(2*b.N), "host-calls/query")
	b.ReportMetric(float64(builtin.Nanoseconds()), "builtin-ns/query")
	b.ReportMetric(float64(plugged.Nanoseconds()), "plugin-ns/query")
	b.ReportMetric(float64(plugged)/float64(max(builtin, 1)), "plugin/builtin")
}

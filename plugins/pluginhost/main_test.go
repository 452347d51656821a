package pluginhost

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	goplugin "github.com/hashicorp/go-plugin"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/plugins/pluginstest"
	"github.com/obol-ipsec/obol/tokenapi"
)

// The test binary doubles as the plugin: with OBOL_TESTPLUGIN set it serves
// instead of testing, so every test here talks to a real plugin process.
func TestMain(m *testing.M) {
	switch mode := os.Getenv("OBOL_TESTPLUGIN"); mode {
	case "":
		os.Exit(m.Run())
	case "modules":
		r, err := pluginstest.ResolverFixture()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		lp, err := pluginstest.LabelsFixture()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		plugins.ServeWith(plugins.Modules{Resolver: misbehaving{r}, Labels: lp, XFRM: pluginstest.XFRMFixture()},
			pluginstest.AuthFixture(os.Getenv("OBOL_TESTPLUGIN_AUTHDIR")))
	case "tokenapi":
		// The built-in module, listening where the test says.
		plugins.Serve(plugins.Modules{TokenAPI: &tokenapi.Module{Config: tokenapi.Config{Socket: os.Getenv("OBOL_TESTPLUGIN_TOKENSOCK")}.WithDefaults()}})
	case "badversion":
		hs := plugins.Handshake
		hs.ProtocolVersion = plugins.ProtocolVersion + 1
		r, _ := pluginstest.ResolverFixture()
		goplugin.Serve(&goplugin.ServeConfig{HandshakeConfig: hs, Plugins: goplugin.PluginSet{plugins.KindResolver: &plugins.ResolverPlugin{Impl: r}},
			GRPCServer: goplugin.DefaultGRPCServer})
	default:
		fmt.Fprintf(os.Stderr, "unknown OBOL_TESTPLUGIN %q\n", mode)
		os.Exit(2)
	}
	os.Exit(0)
}

// Addresses at which the test plugin misbehaves.
var (
	crashAddr   = netip.MustParseAddr("192.0.2.66")
	hangAddr    = netip.MustParseAddr("192.0.2.67")
	garbageAddr = netip.MustParseAddr("192.0.2.68")
)

// misbehaving is the fixture resolver, except that it crashes, hangs or
// answers garbage for three addresses.
type misbehaving struct{ plugins.Resolver }

func (m misbehaving) Lookup(ctx context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	switch q.Addr {
	case crashAddr:
		fmt.Fprintln(os.Stderr, "test plugin: crashing on purpose")
		os.Exit(3)
	case hangAddr:
		time.Sleep(time.Hour)
	case garbageAddr:
		// A gateway with neither address nor name: the contract forbids it.
		return plugins.LookupAnswer{Gateways: []plugins.Gateway{{Precedence: 10}}}, nil
	}
	return m.Resolver.Lookup(ctx, q)
}

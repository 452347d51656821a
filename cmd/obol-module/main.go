// Command obol-module serves one of obol's built-in modules as an external
// go-plugin process, configured by the same TOML as obold:
//
//	[modules.resolver]
//	plugin = "/usr/libexec/obol/obol-module"
//	args = ["--config", "/etc/obol/obold.toml", "resolver"]
//
// With "tokenapi" it runs the token API module: it listens on [tokenapi]
// socket itself and asks obold about SAs over the plugin connection.
//
// It isolates a module in its own process (its own crashes, memory and
// privileges) at the cost of an RPC per call; obold starts it, never a user.
package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/obol-ipsec/obol/internal/config"
	"github.com/obol-ipsec/obol/internal/labels"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/tokenapi"
)

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("obol-module", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/obol/obold.toml", "obold's TOML config (the module's section is read from it)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: obol-module [--config FILE] resolver|labels|xfrm|tokenapi  (started by obold as a go-plugin, not by hand)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 {
		fs.Usage()
		return 2
	}
	if os.Getenv(plugins.Handshake.MagicCookieKey) != plugins.Handshake.MagicCookieValue {
		fmt.Fprintln(stderr, "obol-module: this is an obol module plugin; obold starts it (name it in [modules.KIND] plugin)")
		return 1
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	var m plugins.Modules
	switch kind := fs.Arg(0); kind {
	case plugins.KindResolver:
		r, err := resolver.New(cfg.OE.DNS, resolver.Options{})
		if err != nil {
			fmt.Fprintf(stderr, "obol-module: resolver: %v\n", err)
			return 1
		}
		defer r.Close()
		m.Resolver = r
	case plugins.KindLabels:
		lp, err := labels.New(cfg.Labels, nil)
		if err != nil {
			fmt.Fprintf(stderr, "obol-module: label policy: %v\n", err)
			return 1
		}
		m.Labels = lp
	case plugins.KindXFRM:
		m.XFRM = &xfrm.Checker{Kernel: xfrm.Netlink{}}
	case plugins.KindTokenAPI:
		// The module listens on [tokenapi] socket in this process and asks
		// obold's TokenHost over the plugin connection.
		if !cfg.TokenAPI.Enabled {
			fmt.Fprintln(stderr, "obol-module: tokenapi: [tokenapi] is not enabled in the config")
			return 1
		}
		m.TokenAPI = &tokenapi.Module{Config: cfg.TokenAPI.Config.WithDefaults(), Log: pluginLog(stderr)}
	default:
		fmt.Fprintf(stderr, "obol-module: unknown module %q; want resolver, labels, xfrm or tokenapi\n", kind)
		return 2
	}
	plugins.Serve(m)
	return 0
}

// pluginLog writes slog records as go-plugin's JSON lines (@level,
// @message), which obold logs at their level with their fields.
func pluginLog(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{ReplaceAttr: func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) > 0 {
			return a
		}
		switch a.Key {
		case slog.TimeKey:
			return slog.Attr{}
		case slog.LevelKey:
			return slog.String("@level", strings.ToLower(a.Value.String()))
		case slog.MessageKey:
			return slog.String("@message", a.Value.String())
		}
		return a
	}}))
}

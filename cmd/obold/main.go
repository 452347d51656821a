// Command obold is obol's daemon: it runs beside charon, drives it over
// VICI and serves obolctl on a control socket.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"os/user"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/obol-ipsec/obol/internal/authmethod"
	"github.com/obol-ipsec/obol/internal/config"
	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/daemon"
	"github.com/obol-ipsec/obol/internal/labels"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/plugins/pluginhost"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/vici"
)

const usage = `obold: obol's daemon beside strongSwan's charon.

Usage:
  obold [--config FILE]          run (default config /etc/obol/obold.toml)
  obold --check-config FILE      check a config file and exit (0: good, 1: bad)
  obold --version

obold talks to charon over VICI, loads only conns named with its prefix
(obold.conn_prefix, default "obol-") and never touches what swanctl loaded.
Signals: SIGHUP reloads the config; SIGTERM/SIGINT stop obold, which first
removes what it loaded (unless obold.on_stop = "leave").

Flags:
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("obold", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("config", "/etc/obol/obold.toml", "config `FILE` (TOML)")
	check := fs.String("check-config", "", "check config `FILE` and exit")
	version := fs.Bool("version", false, "print the version and exit")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "obold: unexpected argument %q; see obold --help\n", fs.Arg(0))
		return 2
	}
	if *version {
		fmt.Fprintln(stdout, "obold", daemon.Version)
		return 0
	}
	if *check != "" {
		if _, err := config.Load(*check); err != nil {
			fmt.Fprintln(stderr, err)
			return 1
		}
		fmt.Fprintf(stdout, "%s: OK\n", *check)
		return 0
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 1
	}
	log := newLogger(cfg.Log, stderr)
	if err := serve(cfg, *cfgPath, log); err != nil {
		log.Error("obold stopped with an error", "err", err)
		return 1
	}
	return 0
}

func newLogger(c config.Log, w io.Writer) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level)) // config checked it
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func serve(cfg *config.Config, path string, log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)

	gid := -1
	if cfg.Control.Group != "" {
		g, err := user.LookupGroup(cfg.Control.Group)
		if err != nil {
			return fmt.Errorf("control group %q: %w", cfg.Control.Group, err)
		}
		gid, _ = strconv.Atoi(g.Gid)
	}
	ln, err := control.Listen(cfg.Control.Socket, os.FileMode(cfg.Control.Mode), gid)
	if err != nil {
		return err
	}

	vopts := vici.Options{Logger: log, CallTimeout: time.Duration(cfg.Charon.CallTimeout)}
	client := vici.NewClient(cfg.Charon.VICISocket, vopts)
	defer client.Close()
	modules, err := buildModules(cfg, log, moduleSet{})
	if err != nil {
		return err
	}
	var modMu sync.Mutex // the running set, replaced on reload
	defer func() {
		modMu.Lock()
		modules.Close()
		modules.closeTokenAPI()
		modMu.Unlock()
	}()
	d := daemon.New(cfg, client, modules.Modules, log)
	// The kernel side serves OE and labeled ACQUIREs.
	if cfg.OE.Enabled() || !cfg.Labels.Empty() {
		k, err := oeKernel(log)
		if err != nil {
			return err
		}
		defer k.Close()
		d.UseOEKernel(k)
	}

	srv := control.NewServer(d.Handlers(), gid, log)
	srvDone := make(chan error, 1)
	srvCtx, stopSrv := context.WithCancel(context.Background())
	defer stopSrv()
	go func() { srvDone <- srv.Serve(srvCtx, ln) }()

	// Reloads run beside the event loop; Reconcile serialises them.
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				nc, err := config.Load(path)
				if err != nil {
					log.Error("reload refused: the config has errors; keeping the running config", "err", err)
					continue
				}
				modMu.Lock()
				running := modules
				modMu.Unlock()
				nm, err := buildModules(nc, log, running)
				if err != nil {
					log.Error("reload refused: a module cannot start with the new config; keeping the running config", "err", err)
					continue
				}
				err = d.Reload(ctx, nc, nm.Modules)
				modMu.Lock()
				old := modules
				modules = nm
				modMu.Unlock()
				old.Close() // the daemon no longer calls the old set
				if err != nil {
					if ctx.Err() != nil {
						log.Info("reload cut short: obold is stopping")
						continue
					}
					log.Error("reload applied with errors", "err", err)
				} else {
					log.Info("reloaded", "config", path)
				}
			}
		}
	}()

	log.Info("obold started", "version", daemon.Version, "config", path, "vici", cfg.Charon.VICISocket, "control", cfg.Control.Socket)
	events := vici.WatchEvents(ctx, cfg.Charon.VICISocket, vopts)
	err = d.Run(ctx, events.C)
	stopSrv()
	if serr := <-srvDone; serr != nil && err == nil {
		err = serr
	}
	return err
}

// moduleSet is the modules obold runs with and what must be closed when
// they are replaced or obold stops (plugin processes, the resolver's cache).
type moduleSet struct {
	plugins.Modules
	closers []io.Closer
	// tokenAPI ends the token API plugin process. The token API module
	// runs for obold's whole life (its socket, its clients), so a reload
	// keeps it and only obold's exit ends it.
	tokenAPI io.Closer
}

func (s moduleSet) closeTokenAPI() {
	if s.tokenAPI != nil {
		s.tokenAPI.Close()
	}
}

// Close ends the set's plugin processes and built-in resources.
func (s moduleSet) Close() {
	for _, c := range s.closers {
		c.Close()
	}
}

// buildModules makes the modules cfg asks for: built in, or as an external
// go-plugin process where [modules.KIND] names one. obold uses them only
// through the plugins interfaces. The token API module of running (a
// reload's current set) is kept, not built again.
func buildModules(cfg *config.Config, log *slog.Logger, running moduleSet) (set moduleSet, err error) {
	defer func() {
		if err != nil {
			set.Close()
			if set.tokenAPI != running.tokenAPI {
				set.closeTokenAPI()
			}
		}
	}()
	external := func(kind string, p config.Plugin) (*pluginhost.Supervisor, error) {
		s, err := pluginhost.Start(context.Background(), pluginhost.Spec{Kind: kind, Path: p.Path, Args: p.Args, Env: p.Env,
			CallTimeout: time.Duration(p.CallTimeout), MaxBackoff: time.Duration(p.MaxBackoff), Log: log})
		if err != nil {
			return nil, err
		}
		set.closers = append(set.closers, s)
		log.Info("module runs as a plugin", "module", kind, "plugin", p.Path, "pid", s.PID())
		return s, nil
	}
	if cfg.Modules.XFRM.External() {
		s, err := external(plugins.KindXFRM, cfg.Modules.XFRM)
		if err != nil {
			return set, err
		}
		set.XFRM = pluginhost.XFRMChecker(s)
	} else {
		set.XFRM = &xfrm.Checker{Kernel: xfrm.Netlink{}}
	}
	if cfg.OE.Enabled() {
		if cfg.Modules.Resolver.External() {
			s, err := external(plugins.KindResolver, cfg.Modules.Resolver)
			if err != nil {
				return set, err
			}
			set.Resolver = pluginhost.Resolver(s)
		} else {
			r, err := resolver.New(cfg.OE.DNS, resolver.Options{})
			if err != nil {
				return set, fmt.Errorf("resolver: %w", err)
			}
			set.closers = append(set.closers, r)
			set.Resolver = r
		}
		// The OE engine asks the [auth] methods in order, DNS among them.
		chain, err := authChain(cfg.Auth, set.Resolver, external, log)
		if err != nil {
			return set, err
		}
		log.Info("OE auth methods", "methods", chain.Names())
		set.Resolver = chain
	}
	switch {
	case running.TokenAPI != nil:
		set.TokenAPI, set.tokenAPI = running.TokenAPI, running.tokenAPI
	case cfg.TokenAPI.Enabled && cfg.Modules.TokenAPI.External():
		// The plugin listens on [tokenapi] socket itself (it reads the
		// same config) and asks obold's TokenHost over the connection.
		s, err := external(plugins.KindTokenAPI, cfg.Modules.TokenAPI)
		if err != nil {
			return set, err
		}
		set.closers = set.closers[:len(set.closers)-1] // not closed on reload
		set.TokenAPI, set.tokenAPI = pluginhost.TokenAPI(s), s
	case cfg.TokenAPI.Enabled:
		set.TokenAPI = &tokenapi.Module{Config: cfg.TokenAPI.Config.WithDefaults(), Log: log.With("module", "tokenapi")}
	}
	if !cfg.Labels.Empty() {
		if cfg.Modules.Labels.External() {
			s, err := external(plugins.KindLabels, cfg.Modules.Labels)
			if err != nil {
				return set, err
			}
			set.Labels = pluginhost.LabelPolicy(s)
		} else {
			lp, err := labels.New(cfg.Labels, nil)
			if err != nil {
				return set, fmt.Errorf("label policy: %w", err)
			}
			set.Labels = lp
		}
	}
	return set, nil
}

// authChain builds the auth methods of [auth] in order over r (DNS).
func authChain(a config.AuthMethods, r plugins.Resolver, external func(string, config.Plugin) (*pluginhost.Supervisor, error), log *slog.Logger) (authmethod.Chain, error) {
	c := a.Config.WithDefaults()
	var chain authmethod.Chain
	for _, name := range c.Methods {
		switch name {
		case authmethod.NameDNS:
			chain = append(chain, authmethod.Named{Name: name, Method: authmethod.DNS{Resolver: r}})
		case authmethod.NameStatic:
			chain = append(chain, authmethod.Named{Name: name, Method: authmethod.StaticDir{Dir: c.Static.Dir}})
		case authmethod.NameLeapOfFaith:
			chain = append(chain, authmethod.Named{Name: name, Method: &authmethod.LeapOfFaith{Resolver: r, Store: c.LeapOfFaith.Store,
				AllowKeyChange: c.LeapOfFaith.AllowKeyChange, Log: log.With("auth", name)}})
		default:
			i := slices.IndexFunc(a.Plugins, func(p config.AuthPlugin) bool { return p.Name == name })
			if i < 0 {
				return nil, fmt.Errorf("auth method %q: no [[auth.plugin]] of that name", name) // config validation prevents it
			}
			s, err := external(plugins.KindAuth, a.Plugins[i].Plugin)
			if err != nil {
				return nil, fmt.Errorf("auth method %q: %w", name, err)
			}
			chain = append(chain, authmethod.Named{Name: name, Method: pluginhost.AuthMethod(s)})
		}
	}
	return chain, nil
}

// kernelOE joins obold's policy installer and the ACQUIRE listener: the
// kernel side of OE.
type kernelOE struct {
	*xfrm.Installer
	*xfrm.Listener
}

func oeKernel(log *slog.Logger) (kernelOE, error) {
	in, err := xfrm.NewInstaller(xfrm.Netlink{}, xfrm.DefaultOwner(), log)
	if err != nil {
		return kernelOE{}, fmt.Errorf("oe: kernel policies: %w; obold needs CAP_NET_ADMIN", err)
	}
	owner := xfrm.DefaultOwner()
	l, err := xfrm.Listen(context.Background(), xfrm.ListenConfig{Owner: &owner, Expiries: true, Log: log})
	if err != nil {
		return kernelOE{}, fmt.Errorf("oe: listen for ACQUIREs: %w; obold needs CAP_NET_ADMIN", err)
	}
	return kernelOE{in, l}, nil
}

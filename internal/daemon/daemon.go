// Package daemon is obold's core: it keeps charon loaded with the conns
// obold owns (those with its name prefix, never anyone else's), follows
// charon's events, resyncs after charon restarts, and answers obolctl.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/metrics"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/obol-ipsec/obol/internal/config"
	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

// Version is obold's release, set by the linker (-X).
var Version = "dev"

// Daemon is one obold.
type Daemon struct {
	log     *slog.Logger
	charon  Charon
	modules plugins.Modules
	started time.Time

	// reconcileMu serialises changes to charon (reload, resync, stop).
	reconcileMu sync.Mutex

	mu     sync.Mutex
	cfg    *config.Config
	loaded map[string]loadedConn // charon conn name -> what obold loaded
	state  control.CharonStatus
	ostate control.OboldStatus
	events *eventLog

	// OE: the kernel side (set by UseOEKernel), the engine once started,
	// and Run's context, which the engine lives in.
	oeKernel    OEKernel
	oe          *oe.Engine
	runCtx      context.Context
	feeding     bool
	labeledBusy map[string]bool

	tokens *tokenHost
}

// loadedConn is what obold put into charon for one conn, so it can take
// exactly that out again.
type loadedConn struct {
	children []vici.Child
	// pskPeers counts the peer identities its pre-shared key names.
	pskPeers int
	digest   [32]byte
	sharedID string
	keyID    string
}

// New makes a daemon; it does nothing until Run.
func New(cfg *config.Config, charon Charon, modules plugins.Modules, log *slog.Logger) *Daemon {
	d := &Daemon{
		log:     log,
		charon:  charon,
		modules: modules,
		started: time.Now(),
		cfg:     cfg,
		loaded:  map[string]loadedConn{},
		events:  newEventLog(1024),
	}
	d.tokens = newTokenHost(d)
	d.state.Socket = cfg.Charon.VICISocket
	d.ostate = control.OboldStatus{Version: Version, PID: os.Getpid(), Started: d.started, Config: cfg.File, ConnPrefix: cfg.Obold.ConnPrefix, Events: map[string]int{}}
	return d
}

// Run follows events until ctx ends, then removes what obold installed
// (unless on_stop = "leave"). events is the stream from vici.WatchEvents.
func (d *Daemon) Run(ctx context.Context, events <-chan vici.Event) error {
	d.mu.Lock()
	d.runCtx = ctx
	every := time.Duration(d.cfg.Obold.ReconcileInterval)
	d.mu.Unlock()
	tick := time.NewTicker(every)
	defer tick.Stop()
	d.mu.Lock()
	api := d.modules.TokenAPI
	d.mu.Unlock()
	if api != nil {
		// The token API's SA table: a full list-sas now and then, in the
		// background, as a safety net under charon's events.
		go d.tokens.keepSynced(ctx, tokenResyncInterval)
		// The token API module runs for obold's whole life; its socket goes
		// when ctx ends.
		go func() {
			if err := api.Serve(ctx, d.tokens); err != nil && ctx.Err() == nil {
				d.setError(err)
				d.log.Error("the token API stopped", "err", err)
			}
		}()
	}
	for {
		select {
		case <-ctx.Done():
			return d.stop()
		case <-tick.C:
			// Cheap (one get-conns when nothing changed) and catches conns
			// removed behind obold's back, e.g. by swanctl --load-all.
			if d.connected() {
				if err := d.Reconcile(ctx); err != nil {
					d.log.Warn("periodic check of obold's conns failed", "err", err)
				}
			}
		case ev, ok := <-events:
			if !ok {
				return d.stop()
			}
			d.handle(ctx, ev)
		}
	}
}

func (d *Daemon) handle(ctx context.Context, ev vici.Event) {
	d.events.add(ev)
	d.tokens.observe(ev)
	d.mu.Lock()
	d.ostate.Events[string(ev.Kind)]++
	eng := d.oe
	d.mu.Unlock()
	if eng != nil {
		eng.HandleEvent(ev)
	}
	switch ev.Kind {
	case vici.EventConnected:
		d.resync(ctx, ev)
	case vici.EventDisconnected:
		d.mu.Lock()
		wasUp := d.state.Connected
		d.state.Connected = false
		if ev.Err != nil {
			d.state.LastError = ev.Err.Error()
		}
		d.mu.Unlock()
		if wasUp {
			d.log.Warn("charon went away; obold keeps running and reconnects", "err", ev.Err)
		}
	case vici.EventLost:
		// An EventConnected with a fresh list-sas follows, so state heals.
		d.log.Warn("obold fell behind charon's events and missed some; resyncing", "dropped", ev.Dropped)
	case vici.EventIKEUpDown, vici.EventChildUpDown:
		if ev.SA != nil {
			d.log.Info("SA "+updown(ev.Up), "event", ev.Kind, "ike", ev.SA.Name, "id", ev.SA.UniqueID, "remote", ev.SA.RemoteID, "owner", d.owner(ev.SA.Name))
		}
	}
}

func updown(up bool) string {
	if up {
		return "up"
	}
	return "down"
}

// resync runs when the event stream (re)connects: charon may be a new
// process that lost obold's conns, so obold learns charon afresh and loads
// its conns again.
func (d *Daemon) resync(ctx context.Context, ev vici.Event) {
	start := time.Now()
	d.mu.Lock()
	if !d.ostate.LastResync.IsZero() {
		d.ostate.Reconnects++
	}
	d.mu.Unlock()
	if err := d.refreshCharon(ctx); err != nil {
		d.setError(err)
		d.log.Error("charon is answering events but not commands", "err", err)
		return
	}
	// A restarted charon has none of obold's conns: forget what we loaded.
	names, err := d.charon.ConnNames(ctx)
	if err != nil {
		d.setError(err)
		return
	}
	d.reconcileMu.Lock()
	d.mu.Lock()
	for name := range d.loaded {
		if !slices.Contains(names, name) {
			delete(d.loaded, name)
		}
	}
	d.mu.Unlock()
	d.reconcileMu.Unlock()
	if err := d.Reconcile(ctx); err != nil {
		d.log.Error("loading obold's conns after charon (re)connected failed", "err", err)
	}
	if err := d.startOE(ctx); err != nil {
		d.setError(err)
		d.log.Error("OE is not running", "err", err)
	}
	d.startFeed()
	took := time.Since(start)
	d.mu.Lock()
	d.ostate.LastResync = time.Now()
	d.ostate.ResyncTook = took
	d.mu.Unlock()
	d.log.Info("resynced with charon", "took", took, "sas", len(ev.SAs))
}

func (d *Daemon) refreshCharon(ctx context.Context) error {
	v, err := d.charon.Version(ctx)
	if err != nil {
		return err
	}
	st, err := d.charon.Stats(ctx)
	if err != nil {
		return err
	}
	var dp plugins.Datapath
	d.mu.Lock()
	xc := d.modules.XFRM
	d.mu.Unlock()
	if xc != nil {
		dp, err = xc.Datapath(ctx, st.Plugins)
		if err != nil {
			d.log.Warn("cannot tell charon's datapath", "err", err)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.state.Connected = true
	d.state.Daemon, d.state.Version = v.Daemon, v.Version
	d.state.Since, d.state.Uptime = st.Since, st.Uptime
	d.state.IKESAs, d.state.HalfOpen = st.IKESAs, st.HalfOpen
	d.state.Plugins = st.Plugins
	d.state.Datapath = string(dp)
	d.state.LastError = ""
	return nil
}

func (d *Daemon) setError(err error) {
	d.mu.Lock()
	d.ostate.LastError = err.Error()
	d.mu.Unlock()
}

// Owns tells whether a charon conn name is obold's.
func (d *Daemon) Owns(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return ownedName(d.cfg.Obold.ConnPrefix, name)
}

func ownedName(prefix, name string) bool { return prefix != "" && strings.HasPrefix(name, prefix) }

func (d *Daemon) owner(name string) string {
	if d.Owns(name) {
		return "obold"
	}
	return "other"
}

// Reload switches to cfg and the modules built for it, and brings charon in
// line with them. Settings that need a restart (sockets, prefix) are kept
// and reported.
func (d *Daemon) Reload(ctx context.Context, cfg *config.Config, modules plugins.Modules) error {
	d.mu.Lock()
	d.modules = modules
	old := d.cfg
	var keep []string
	if cfg.Charon.VICISocket != old.Charon.VICISocket {
		keep = append(keep, "charon.vici_socket")
		cfg.Charon.VICISocket = old.Charon.VICISocket
	}
	if cfg.Control != old.Control {
		keep = append(keep, "[control]")
		cfg.Control = old.Control
	}
	if cfg.Obold.ConnPrefix != old.Obold.ConnPrefix {
		keep = append(keep, "obold.conn_prefix")
		cfg.Obold.ConnPrefix = old.Obold.ConnPrefix
	}
	d.cfg = cfg
	d.mu.Unlock()
	d.tokens.forgetConnAuth()
	if len(keep) > 0 {
		d.log.Warn("these settings change only when obold restarts; keeping the old values", "keys", keep)
	}
	return d.Reconcile(ctx)
}

// Reconcile loads every configured conn that charon lacks or has in an old
// form, and unloads conns with obold's prefix that are no longer configured.
// Conns without the prefix are never touched. It returns every failure.
func (d *Daemon) Reconcile(ctx context.Context) error {
	d.reconcileMu.Lock()
	defer d.reconcileMu.Unlock()
	d.mu.Lock()
	cfg, lp := d.cfg, d.modules.Labels
	d.mu.Unlock()
	prefix := cfg.Obold.ConnPrefix

	var errs []error
	want := map[string]desiredConn{}
	for _, c := range cfg.Conns {
		dc, err := buildConn(ctx, prefix, c, lp)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		want[dc.conn.Name] = dc
	}
	names, err := d.charon.ConnNames(ctx)
	if err != nil {
		return fmt.Errorf("list charon's conns: %w", err)
	}
	for _, name := range names {
		if _, ok := want[name]; ok || !ownedName(prefix, name) || d.isOEConn(name) {
			continue
		}
		if err := d.unloadOwned(ctx, name); err != nil {
			errs = append(errs, err)
		}
	}
	for name, dc := range want {
		d.mu.Lock()
		prev, had := d.loaded[name]
		d.mu.Unlock()
		present := slices.Contains(names, name)
		if had && prev.digest == dc.digest && present {
			continue
		}
		if had && !present {
			d.log.Warn("obold's conn vanished from charon (swanctl --load-all unloads conns it does not know); loading it again", "name", name)
		}
		if err := d.load(ctx, dc); err != nil {
			errs = append(errs, err)
		}
	}
	err = errors.Join(errs...)
	if err != nil {
		d.setError(err)
	}
	return err
}

func (d *Daemon) load(ctx context.Context, dc desiredConn) error {
	name := dc.conn.Name
	lc := loadedConn{digest: dc.digest, children: dc.conn.Children}
	if dc.shared != nil {
		lc.pskPeers = len(dc.shared.Owners)
		if len(dc.conn.Local) > 0 && slices.Contains(dc.shared.Owners, dc.conn.Local[0].ID) {
			lc.pskPeers-- // our own identity is not a peer
		}
	}
	if dc.shared != nil {
		if err := d.charon.LoadShared(ctx, *dc.shared); err != nil {
			return fmt.Errorf("conn %s: load its pre-shared key: %w", name, err)
		}
		lc.sharedID = dc.shared.ID
	}
	if dc.key != nil {
		id, err := d.charon.LoadKey(ctx, *dc.key)
		if err != nil {
			return fmt.Errorf("conn %s: load its private key: %w", name, err)
		}
		lc.keyID = id
	}
	if err := d.charon.LoadConn(ctx, dc.conn); err != nil {
		return fmt.Errorf("conn %s: load into charon: %w", name, err)
	}
	d.mu.Lock()
	d.loaded[name] = lc
	d.mu.Unlock()
	d.log.Info("loaded conn", "name", name)
	return nil
}

// unloadOwned removes one of obold's conns, its SAs and its secrets. It
// refuses names without the prefix, whoever asks.
func (d *Daemon) unloadOwned(ctx context.Context, name string) error {
	d.mu.Lock()
	prefix := d.cfg.Obold.ConnPrefix
	lc := d.loaded[name]
	d.mu.Unlock()
	if !ownedName(prefix, name) {
		return fmt.Errorf("refusing to unload %q: it is not obold's (no %q prefix)", name, prefix)
	}
	var errs []error
	sas, err := d.charon.ListSAs(ctx, vici.SASelector{IKE: name})
	if err != nil {
		errs = append(errs, err)
	}
	for _, sa := range sas {
		if sa.Name != name {
			continue
		}
		if err := d.charon.Terminate(ctx, vici.SASelector{IKEID: sa.UniqueID}); err != nil {
			errs = append(errs, fmt.Errorf("conn %s: terminate IKE_SA #%d: %w", name, sa.UniqueID, err))
		}
	}
	if err := d.charon.UnloadConn(ctx, name); err != nil {
		errs = append(errs, fmt.Errorf("conn %s: unload: %w", name, err))
	}
	if lc.sharedID != "" {
		if err := d.charon.UnloadShared(ctx, lc.sharedID); err != nil {
			errs = append(errs, fmt.Errorf("conn %s: unload its pre-shared key: %w", name, err))
		}
	}
	if lc.keyID != "" && !d.keyStillUsed(name, lc.keyID) {
		if err := d.charon.UnloadKey(ctx, lc.keyID); err != nil {
			errs = append(errs, fmt.Errorf("conn %s: unload its private key: %w", name, err))
		}
	}
	d.mu.Lock()
	delete(d.loaded, name)
	d.mu.Unlock()
	d.log.Info("unloaded conn", "name", name)
	return errors.Join(errs...)
}

// keyStillUsed tells whether another of obold's conns uses the same key.
func (d *Daemon) keyStillUsed(except, keyID string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for n, lc := range d.loaded {
		if n != except && lc.keyID == keyID {
			return true
		}
	}
	return false
}

// stop removes what obold installed, unless configured to leave it.
func (d *Daemon) stop() error {
	d.mu.Lock()
	cfg := d.cfg
	connected := d.state.Connected
	d.mu.Unlock()
	d.mu.Lock()
	eng := d.oe
	d.mu.Unlock()
	if eng != nil && cfg.Obold.OnStop == config.OnStopLeave {
		eng.Leave() // the next obold adopts the tunnels
	} else if eng != nil {
		// Deletes to OE peers, then every kernel policy obold installed.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if err := eng.Stop(ctx); err != nil {
			d.log.Error("stopping OE", "err", err)
		}
		cancel()
	}
	if cfg.Obold.OnStop == config.OnStopLeave {
		d.log.Info("stopping; leaving obold's conns in charon (on_stop = \"leave\")")
		return nil
	}
	if !connected {
		d.log.Warn("stopping while charon is away: nothing to remove from it")
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d.reconcileMu.Lock()
	defer d.reconcileMu.Unlock()
	names, err := d.charon.ConnNames(ctx)
	if err != nil {
		return fmt.Errorf("stopping: list charon's conns to remove obold's: %w", err)
	}
	var errs []error
	for _, name := range names {
		if ownedName(cfg.Obold.ConnPrefix, name) {
			errs = append(errs, d.unloadOwned(ctx, name))
		}
	}
	d.log.Info("stopped; removed obold's conns from charon")
	return errors.Join(errs...)
}

// Handlers are the control methods obold serves.
func (d *Daemon) Handlers() map[string]control.Handler {
	return map[string]control.Handler{
		control.MethodStatus:    func(ctx context.Context, _ json.RawMessage) (any, error) { return d.Status(ctx), nil },
		control.MethodSAs:       func(ctx context.Context, _ json.RawMessage) (any, error) { return d.SAs(ctx) },
		control.MethodConns:     func(ctx context.Context, _ json.RawMessage) (any, error) { return d.Conns(ctx) },
		control.MethodOEList:    func(ctx context.Context, _ json.RawMessage) (any, error) { return d.OETunnels(), nil },
		control.MethodXFRMCheck: func(ctx context.Context, _ json.RawMessage) (any, error) { return d.XFRMCheck(ctx) },
		control.MethodLabelsRequest: func(ctx context.Context, p json.RawMessage) (any, error) {
			var r control.LabelsRequest
			if err := json.Unmarshal(p, &r); err != nil {
				return nil, &control.Error{Code: control.CodeBadRequest, Message: "labels-request: params must be {\"local\":...,\"remote\":...,\"label\":...}: " + err.Error()}
			}
			return d.LabeledFlow(ctx, r)
		},
		control.MethodEvents: func(ctx context.Context, p json.RawMessage) (any, error) {
			var ep control.EventsParams
			if len(p) > 0 {
				if err := json.Unmarshal(p, &ep); err != nil {
					return nil, &control.Error{Code: control.CodeBadRequest, Message: "events: params must be {\"kinds\":[...],\"limit\":N}: " + err.Error()}
				}
			}
			return d.events.list(ep), nil
		},
		control.MethodOELookup: d.handleOELookup,
	}
}

// Status reports obold's and charon's state. It asks charon for fresh
// numbers when it can, and says so when it cannot.
func (d *Daemon) Status(ctx context.Context) control.Status {
	if d.connected() {
		if err := d.refreshCharon(ctx); err != nil {
			d.mu.Lock()
			d.state.LastError = err.Error()
			d.mu.Unlock()
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	s := control.Status{Obold: d.ostate, Charon: d.state}
	s.Obold.Events = map[string]int{}
	for k, v := range d.ostate.Events {
		s.Obold.Events[k] = v
	}
	s.Obold.ConnPrefix = d.cfg.Obold.ConnPrefix
	s.Obold.Modules = map[string]string{}
	for name, m := range map[string]any{"resolver": d.modules.Resolver, "labels": d.modules.Labels, "xfrm": d.modules.XFRM, "tokenapi": d.modules.TokenAPI} {
		switch m := m.(type) {
		case nil:
			s.Obold.Modules[name] = "off"
		case plugins.Describer:
			s.Obold.Modules[name] = m.Describe()
		default:
			s.Obold.Modules[name] = "built-in"
		}
	}
	s.Obold.OwnedConns = []string{}
	for name := range d.loaded {
		s.Obold.OwnedConns = append(s.Obold.OwnedConns, name)
	}
	slices.Sort(s.Obold.OwnedConns)
	s.Obold.HeapInUse = heapInUse()
	return s
}

// heapInUse reads the Go heap's object bytes without stopping the world
// (runtime.ReadMemStats would).
func heapInUse() uint64 {
	m := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	metrics.Read(m)
	if m[0].Value.Kind() != metrics.KindUint64 {
		return 0
	}
	return m[0].Value.Uint64()
}

func (d *Daemon) connected() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.state.Connected
}

func (d *Daemon) charonDown(err error) error {
	return &control.Error{Code: control.CodeCharonDown, Message: fmt.Sprintf("charon is not answering at %s (%v); obold reconnects by itself once charon is back", d.state.Socket, err)}
}

// SAs lists every IKE_SA on the host, swanctl's included, with its owner.
func (d *Daemon) SAs(ctx context.Context) ([]control.SA, error) {
	sas, err := d.charon.ListSAs(ctx, vici.SASelector{})
	if err != nil {
		return nil, d.charonDown(err)
	}
	out := make([]control.SA, 0, len(sas))
	for _, sa := range sas {
		out = append(out, control.SA{Owner: d.owner(sa.Name), IKESA: sa})
	}
	return out, nil
}

// Conns lists every conn loaded in charon with its owner.
func (d *Daemon) Conns(ctx context.Context) ([]control.ConnEntry, error) {
	names, err := d.charon.ConnNames(ctx)
	if err != nil {
		return nil, d.charonDown(err)
	}
	out := make([]control.ConnEntry, 0, len(names))
	for _, n := range names {
		out = append(out, control.ConnEntry{Name: n, Owner: d.owner(n)})
	}
	return out, nil
}

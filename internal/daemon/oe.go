package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

// OEKernel is the kernel side of OE: obold's policy installer and the
// stream of ACQUIREs and expired shunts. cmd/obold builds it from
// xfrm.Installer and xfrm.Listener; tests use fakes.
type OEKernel interface {
	oe.Kernel
	Acquires() <-chan xfrm.Acquire
	Expired() <-chan xfrm.Policy
}

// UseOEKernel gives the daemon its kernel side for OE. Without it, or
// without [[oe.group]], obold runs no OE.
func (d *Daemon) UseOEKernel(k OEKernel) {
	d.mu.Lock()
	d.oeKernel = k
	d.mu.Unlock()
}

// isOEConn tells whether a conn is one of the OE engine's: obold's, but
// not in [[conn]], so Reconcile leaves it to the engine.
func (d *Daemon) isOEConn(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return strings.HasPrefix(name, d.cfg.Obold.ConnPrefix+"oe-")
}

// startOE loads our OE key into charon and, the first time, starts the
// engine and the loop feeding it ACQUIREs, expiries and ticks.
func (d *Daemon) startOE(ctx context.Context) error {
	d.mu.Lock()
	cfg, k, eng, res := d.cfg, d.oeKernel, d.oe, d.modules.Resolver
	datapath := d.state.Datapath
	d.mu.Unlock()
	if !cfg.OE.Enabled() || k == nil {
		return nil
	}
	keyPEM, err := os.ReadFile(cfg.OE.KeyFile)
	if err != nil {
		return fmt.Errorf("oe: read key_file: %w", err)
	}
	// A restarted charon lost the key: load it on every (re)connect.
	if _, err := d.charon.LoadKey(ctx, vici.Key{Type: "any", Data: keyPEM}); err != nil {
		return fmt.Errorf("oe: load our key into charon: %w", err)
	}
	if eng != nil {
		return nil
	}
	if res == nil {
		return fmt.Errorf("oe: [[oe.group]] is set but the resolver module is not running")
	}
	pub, err := publicKeyPEM(keyPEM)
	if err != nil {
		return fmt.Errorf("oe: key_file %s: %w", cfg.OE.KeyFile, err)
	}
	eng, err = oe.New(cfg.OE, oe.Params{
		Charon: d.charon, Kernel: k, Resolver: res,
		Userspace: datapath == string(plugins.DatapathUserspace),
		Prefix:    cfg.Obold.ConnPrefix, KeyPEM: keyPEM, PubPEM: pub, Log: d.log.With("module", "oe"),
		LocalAddrs: localAddrs(),
	})
	if err != nil {
		return err
	}
	if err := eng.Start(d.runCtx); err != nil {
		_ = eng.Stop(context.WithoutCancel(ctx))
		return err
	}
	d.mu.Lock()
	d.oe = eng
	d.mu.Unlock()
	go d.feedOE(d.runCtx, eng, k)
	return nil
}

// feedOE hands the engine what the kernel reports, and ticks its lifespans.
// The ACQUIRE path never waits on DNS or IKE: HandleAcquire returns at once.
func (d *Daemon) feedOE(ctx context.Context, eng *oe.Engine, k OEKernel) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case a, ok := <-k.Acquires():
			if !ok {
				return
			}
			eng.HandleAcquire(a)
		case p, ok := <-k.Expired():
			if ok {
				eng.ShuntExpired(p)
			}
		case <-tick.C:
			eng.Tick(ctx)
		}
	}
}

// OETunnels lists the OE engine's tunnels (empty when OE is off).
func (d *Daemon) OETunnels() []oe.Tunnel {
	d.mu.Lock()
	eng := d.oe
	d.mu.Unlock()
	if eng == nil {
		return []oe.Tunnel{}
	}
	return eng.Tunnels()
}

// localAddrs lists the host's own addresses (those of its network
// namespace), which OE must never trap.
func localAddrs() []netip.Addr {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

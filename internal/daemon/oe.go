package daemon

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/keyfile"
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
	pub, err := keyfile.PublicPEM(keyPEM)
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
	return nil
}

// startFeed starts, once, the loop that hands the kernel's reports to the
// OE engine and labeled ACQUIREs to the label policy.
func (d *Daemon) startFeed() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.oeKernel == nil || d.feeding {
		return
	}
	d.feeding = true
	go d.feed(d.runCtx, d.oeKernel)
}

// feed hands what the kernel reports to the OE engine (unlabeled ACQUIREs,
// expired shunts, lifespan ticks) and to the label policy (ACQUIREs that
// carry a security context). It never waits on DNS or IKE itself.
func (d *Daemon) feed(ctx context.Context, k OEKernel) {
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		d.mu.Lock()
		eng := d.oe
		d.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case a, ok := <-k.Acquires():
			if !ok {
				return
			}
			switch {
			case a.SecCtx != nil:
				d.labeledAcquire(ctx, a)
			case eng != nil:
				eng.HandleAcquire(a)
			}
		case p, ok := <-k.Expired():
			if ok && eng != nil {
				eng.ShuntExpired(p)
			}
		case <-tick.C:
			if eng != nil {
				eng.Tick(ctx)
			}
		}
	}
}

// maxLabeledInFlight bounds labeled ACQUIREs handled at once.
const maxLabeledInFlight = 64

// labeledAcquire runs the labeled-flow path for an ACQUIRE with a security
// context: the label policy authorizes the flow's label for the pair before
// charon is asked for the CHILD_SA carrying it. One at a time per pair and
// label; beyond maxLabeledInFlight, ACQUIREs are dropped (the kernel raises
// another for the next packet once the larval state expires).
func (d *Daemon) labeledAcquire(ctx context.Context, a xfrm.Acquire) {
	key := a.Pair().String() + "|" + a.SecCtx.Context
	d.mu.Lock()
	if d.labeledBusy == nil {
		d.labeledBusy = map[string]bool{}
	}
	if d.labeledBusy[key] || len(d.labeledBusy) >= maxLabeledInFlight {
		d.mu.Unlock()
		d.log.Debug("labeled ACQUIRE dropped: already handled or too many at once", "pair", a.Pair(), "label", a.SecCtx.Context)
		return
	}
	d.labeledBusy[key] = true
	d.mu.Unlock()
	go func() {
		defer func() {
			d.mu.Lock()
			delete(d.labeledBusy, key)
			d.mu.Unlock()
		}()
		ans, err := d.LabeledFlow(ctx, control.LabelsRequest{
			Local: a.Src.String(), Remote: a.Dst.String(), Protocol: a.Proto, RemotePort: a.DstPort, Label: a.SecCtx.Context,
		})
		switch {
		case err != nil:
			d.log.Warn("labeled ACQUIRE not handled", "pair", a.Pair(), "label", a.SecCtx.Context, "err", err)
		case !ans.Allowed || !ans.Established:
			d.log.Info("labeled ACQUIRE refused", "pair", a.Pair(), "label", a.SecCtx.Context, "reason", ans.Reason, "refused", ans.Refused)
		default:
			d.log.Info("labeled CHILD_SA up for an ACQUIRE", "pair", a.Pair(), "label", a.SecCtx.Context, "child", ans.Child)
		}
	}()
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

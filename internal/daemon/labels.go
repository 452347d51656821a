package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"strings"

	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

// LabeledFlow handles a flow carrying a data label, as a kernel ACQUIRE with
// a security context would bring it: the label policy authorizes the label
// for the flow before anything is asked of charon; then obold brings up the
// CHILD_SA of its conns that carries exactly this label and covers the flow.
func (d *Daemon) LabeledFlow(ctx context.Context, r control.LabelsRequest) (control.LabelsAnswer, error) {
	flow, err := parseFlow(r)
	if err != nil {
		return control.LabelsAnswer{}, &control.Error{Code: control.CodeBadRequest, Message: err.Error()}
	}
	d.mu.Lock()
	lp := d.modules.Labels
	d.mu.Unlock()
	if lp == nil {
		return control.LabelsAnswer{}, &control.Error{Code: control.CodeFailed, Message: "no label policy: add a [labels] section to obold's config"}
	}
	dec, err := lp.Authorize(ctx, plugins.LabelRequest{Flow: flow, Label: r.Label})
	if err != nil {
		return control.LabelsAnswer{}, err
	}
	ans := control.LabelsAnswer{Allowed: dec.Allowed, Entry: dec.Entry, Reason: dec.Reason}
	if !dec.Allowed {
		d.log.Info("labeled flow refused by the label policy", "flow", flowString(flow), "label", r.Label, "reason", dec.Reason)
		return ans, nil
	}
	conn, child, ok := d.childFor(flow, r.Label)
	if !ok {
		ans.Refused = fmt.Sprintf("no CHILD_SA config of obold's carries label %q for %s: name the entry in a [[conn.child]] label_entry and list the label in it", r.Label, flowString(flow))
		return ans, nil
	}
	ans.Conn, ans.Child = conn, child
	sas, err := d.charon.ListSAs(ctx, vici.SASelector{IKE: conn, Child: child})
	if err == nil && childUp(sas, conn, child) {
		ans.Established = true
		return ans, nil
	}
	if err := d.charon.Initiate(ctx, conn, child); err != nil {
		ans.Refused = refusal(err)
		d.log.Warn("labeled CHILD_SA refused", "conn", conn, "child", child, "label", r.Label, "why", ans.Refused)
		return ans, nil
	}
	ans.Established = true
	return ans, nil
}

// childFor finds obold's loaded child with this label whose selectors cover the flow.
func (d *Daemon) childFor(flow plugins.Flow, label string) (conn, child string, ok bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	label = strings.TrimSuffix(label, "\x00")
	for name, lc := range d.loaded {
		for _, ch := range lc.children {
			if ch.Label == label && tsCovers(ch.LocalTS, flow.Local) && tsCovers(ch.RemoteTS, flow.Remote) {
				return name, ch.Name, true
			}
		}
	}
	return "", "", false
}

// tsCovers tells whether one of the selectors (swanctl syntax, the
// [proto/port] part ignored) contains p.
func tsCovers(tss []string, p netip.Prefix) bool {
	for _, ts := range tss {
		base, _, _ := strings.Cut(ts, "[")
		if base == "dynamic" {
			return true // the IKE address: charon narrows it
		}
		tp, err := netip.ParsePrefix(base)
		if err != nil {
			a, aerr := netip.ParseAddr(base)
			if aerr != nil {
				continue
			}
			tp = netip.PrefixFrom(a, a.BitLen())
		}
		if tp.Bits() <= p.Bits() && tp.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

func childUp(sas []vici.IKESA, conn, child string) bool {
	for _, sa := range sas {
		if sa.Name != conn {
			continue
		}
		for _, ch := range sa.Children {
			if ch.Name == child && ch.State == "INSTALLED" {
				return true
			}
		}
	}
	return false
}

// refusal turns charon's initiate error into the reason an operator needs:
// the notify the peer sent, when charon logged one.
func refusal(err error) string {
	msg := err.Error()
	for _, notify := range []string{"TS_UNACCEPTABLE", "NO_PROPOSAL_CHOSEN", "AUTHENTICATION_FAILED", "INVALID_SYNTAX"} {
		if strings.Contains(msg, notify) {
			return "the peer refused with " + notify + " (for a labeled child: its policy does not admit this label): " + msg
		}
	}
	return msg
}

func parseFlow(r control.LabelsRequest) (plugins.Flow, error) {
	local, err := prefixOf(r.Local)
	if err != nil {
		return plugins.Flow{}, fmt.Errorf("local: %w", err)
	}
	remote, err := prefixOf(r.Remote)
	if err != nil {
		return plugins.Flow{}, fmt.Errorf("remote: %w", err)
	}
	return plugins.Flow{Local: local, Remote: remote, Protocol: r.Protocol, RemotePort: r.RemotePort}, nil
}

func prefixOf(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func flowString(f plugins.Flow) string { return f.Local.String() + " -> " + f.Remote.String() }

package daemon

import (
	"context"

	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/plugins"
)

// XFRMCheck compares the kernel policies obold means to have (OE's
// bypasses, traps, blocks, allows and shunts) with the kernel's, through
// the XFRM checks module.
func (d *Daemon) XFRMCheck(ctx context.Context) (control.XFRMReport, error) {
	d.mu.Lock()
	eng, xc, datapath := d.oe, d.modules.XFRM, d.state.Datapath
	d.mu.Unlock()
	if xc == nil {
		return control.XFRMReport{}, &control.Error{Code: control.CodeFailed, Message: "the XFRM checks module is not running"}
	}
	var want []plugins.Policy
	if eng != nil {
		for _, p := range eng.Wanted() {
			want = append(want, p.Plugin())
		}
	}
	r, err := xc.Check(ctx, want)
	if err != nil {
		return control.XFRMReport{}, err
	}
	return control.XFRMReport{Datapath: datapath, Wanted: len(want), OK: r.OK(), Missing: nonNil(r.Missing), Extra: nonNil(r.Extra), Stale: nonNil(r.Stale)}, nil
}

func nonNil(ps []plugins.Policy) []plugins.Policy {
	if ps == nil {
		return []plugins.Policy{}
	}
	return ps
}

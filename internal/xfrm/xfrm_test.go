package xfrm

import (
	"context"
	"errors"
	"net/netip"
	"testing"

	"github.com/obol-ipsec/obol/plugins"
)

func TestDatapath(t *testing.T) {
	tests := []struct {
		plugins []string
		want    plugins.Datapath
		wantErr bool
	}{
		{[]string{"aes", "kernel-netlink", "kernel-libipsec", "vici"}, plugins.DatapathUserspace, false},
		{[]string{"aes", "kernel-netlink", "socket-default"}, plugins.DatapathKernel, false},
		{[]string{"aes", "vici"}, "", true},
	}
	for _, tt := range tests {
		got, err := (&Checker{}).Datapath(context.Background(), tt.plugins)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("Datapath(%v) = %q, %v; want %q (err %v)", tt.plugins, got, err, tt.want, tt.wantErr)
		}
	}
}

type fakeKernel struct {
	ps  []plugins.Policy
	err error
}

func (f fakeKernel) Policies(context.Context) ([]plugins.Policy, error) { return f.ps, f.err }

func pol(src, dst, dir, action string, prio, mark uint32) plugins.Policy {
	return plugins.Policy{Src: netip.MustParsePrefix(src), Dst: netip.MustParsePrefix(dst), Dir: dir, Action: action, Priority: prio, Mark: mark}
}

func TestCheck(t *testing.T) {
	const mark = 0x0b01
	want := []plugins.Policy{
		pol("0.0.0.0/0", "10.2.0.0/16", "out", "trap", 100, mark),
		pol("10.1.0.0/24", "10.2.0.10/32", "out", "allow", 50, mark),
		pol("0.0.0.0/0", "192.0.2.53/32", "out", "allow", 10, mark),
	}
	kernel := []plugins.Policy{
		pol("0.0.0.0/0", "10.2.0.0/16", "out", "trap", 100, mark),    // as wanted
		pol("10.1.0.0/24", "10.2.0.10/32", "out", "allow", 60, mark), // wrong priority
		pol("10.1.0.0/24", "10.9.0.0/24", "out", "block", 20, mark),  // ours, no longer wanted
		pol("0.0.0.0/0", "192.0.2.53/32", "out", "allow", 10, 0),     // charon's: not ours
		pol("10.1.0.0/24", "10.2.0.0/24", "out", "trap", 1000, 0),    // swanctl's: not ours
	}
	r, err := (&Checker{Kernel: fakeKernel{ps: kernel}, Mark: mark}).Check(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Missing) != 1 || r.Missing[0].Dst != netip.MustParsePrefix("192.0.2.53/32") {
		t.Errorf("missing = %+v", r.Missing)
	}
	if len(r.Extra) != 1 || r.Extra[0].Priority != 60 {
		t.Errorf("extra = %+v", r.Extra)
	}
	if len(r.Stale) != 1 || r.Stale[0].Action != "block" {
		t.Errorf("stale = %+v", r.Stale)
	}
	if r.OK() {
		t.Error("report says OK")
	}
	r, _ = (&Checker{Kernel: fakeKernel{ps: want}, Mark: mark}).Check(context.Background(), want)
	if !r.OK() {
		t.Errorf("identical kernel: %+v", r)
	}
	if _, err := (&Checker{Kernel: fakeKernel{err: errors.New("EPERM")}, Mark: mark}).Check(context.Background(), want); err == nil {
		t.Error("kernel error swallowed")
	}
}

package xfrm_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/internal/xfrm/xfrmtest"
	"github.com/obol-ipsec/obol/plugins"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

var (
	any4  = netip.MustParsePrefix("0.0.0.0/0")
	trapN = netip.MustParsePrefix("10.99.0.0/16")
	band  = xfrm.DefaultBand
)

func trapPolicy() xfrm.Policy {
	return xfrm.Policy{Src: any4, Dst: trapN, Dir: xfrm.DirOut, Action: xfrm.Trap, Priority: band.Priority(xfrm.RoleTrap, any4, trapN)}
}

func shunt(dst string, act xfrm.Action, life time.Duration) xfrm.Policy {
	d := netip.MustParsePrefix(dst)
	return xfrm.Policy{Src: any4, Dst: d, Dir: xfrm.DirOut, Action: act, Priority: band.Priority(xfrm.RoleShunt, any4, d), Lifetime: life}
}

func newInstaller(t *testing.T, spd xfrm.SPD) *xfrm.Installer {
	t.Helper()
	in, err := xfrm.NewInstaller(spd, xfrm.Owner{}, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func wanted(ps ...xfrm.Policy) []plugins.Policy {
	var out []plugins.Policy
	for _, p := range ps {
		out = append(out, p.Plugin())
	}
	return out
}

func TestInstallCheckRemove(t *testing.T) {
	ctx := context.Background()
	spd := &xfrmtest.SPD{}
	// Not obold's: charon's pass policy, and a hand-written one inside
	// obold's band (kernel-numbered index).
	foreignLow := xfrm.Policy{Src: any4, Dst: netip.MustParsePrefix("192.0.2.53/32"), Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: 2000, Index: 8 | 1}
	foreignBand := xfrm.Policy{Src: any4, Dst: netip.MustParsePrefix("10.50.0.0/16"), Dir: xfrm.DirOut, Action: xfrm.Block, Priority: band.Min + 10, Index: 16 | 1}
	spd.Put(foreignLow)
	spd.Put(foreignBand)

	in := newInstaller(t, spd)
	want := append(xfrm.IKEBypass(4, band.Priority(xfrm.RoleBypass, any4, any4)),
		trapPolicy(),
		shunt("10.99.7.7/32", xfrm.Block, 0),
		shunt("10.99.8.8/32", xfrm.Allow, 0),
	)
	for _, p := range want {
		got, err := in.Install(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if !in.Owner().Owns(got) || got.Index>>24 != uint32(xfrm.DefaultTag) || got.Index&7 != uint32(p.Dir) {
			t.Errorf("installed %s: index %#x does not carry obold's tag", got, got.Index)
		}
	}
	ours, err := in.List(ctx)
	if err != nil || len(ours) != len(want) {
		t.Fatalf("List: %d policies, %v; want %d", len(ours), err, len(want))
	}

	chk := &xfrm.Checker{Kernel: spd, Log: quiet}
	r, err := chk.Check(ctx, wanted(want...))
	if err != nil || !r.OK() {
		t.Fatalf("Check after install: %+v, %v", r, err)
	}

	// Installing the same again changes nothing.
	before := spd.Ops()
	if _, err := in.Install(ctx, trapPolicy()); err != nil {
		t.Fatal(err)
	}
	if ops := spd.Ops()[len(before):]; len(ops) != 2 { // add (EEXIST), get
		t.Errorf("idempotent install did %v", ops)
	}

	// A new priority updates obold's policy in place, keeping its index.
	old, _ := spd.GetPolicy(ctx, trapPolicy())
	moved := trapPolicy()
	moved.Priority++
	got, err := in.Install(ctx, moved)
	if err != nil || got.Priority != moved.Priority || got.Index != old.Index {
		t.Errorf("update: %s, %v; was %s", got, err, old)
	}
	r, _ = chk.Check(ctx, wanted(want...))
	if len(r.Extra) != 1 || r.Extra[0].Priority != moved.Priority {
		t.Errorf("Check after priority change: %+v", r)
	}
	if _, err := in.Install(ctx, trapPolicy()); err != nil {
		t.Fatal(err)
	}

	// Deleted behind obold's back: Missing.
	if err := spd.DeletePolicy(ctx, shunt("10.99.7.7/32", xfrm.Block, 0)); err != nil {
		t.Fatal(err)
	}
	r, _ = chk.Check(ctx, wanted(want...))
	if len(r.Missing) != 1 || r.Missing[0].Dst.String() != "10.99.7.7/32" || len(r.Stale)+len(r.Extra) != 0 {
		t.Errorf("Check after a manual delete: %+v", r)
	}

	// Not wanted any more: Stale; foreign ones never show.
	r, _ = chk.Check(ctx, wanted(want[:len(want)-1]...))
	if len(r.Stale) != 1 || r.Stale[0].Dst.String() != "10.99.8.8/32" {
		t.Errorf("Check with one policy less: %+v", r)
	}

	// The foreign policy is never replaced or removed.
	clash := foreignBand
	clash.Index = 0
	clash.Priority = band.Priority(xfrm.RoleShunt, any4, clash.Dst)
	if _, err := in.Install(ctx, clash); !errors.Is(err, xfrm.ErrNotOwned) {
		t.Errorf("install over a foreign policy: %v, want ErrNotOwned", err)
	}
	if err := in.Remove(ctx, clash); !errors.Is(err, xfrm.ErrNotOwned) {
		t.Errorf("remove a foreign policy: %v, want ErrNotOwned", err)
	}

	// Remove is idempotent.
	if err := in.Remove(ctx, shunt("10.99.8.8/32", xfrm.Allow, 0)); err != nil {
		t.Fatal(err)
	}
	if err := in.Remove(ctx, shunt("10.99.8.8/32", xfrm.Allow, 0)); err != nil {
		t.Errorf("second remove: %v", err)
	}

	n, err := in.RemoveAll(ctx)
	if err != nil || n != len(want)-2 {
		t.Errorf("RemoveAll = %d, %v; want %d", n, err, len(want)-2)
	}
	left, _ := spd.Policies(ctx)
	if len(left) != 2 || left[0].Index != foreignLow.Index || left[1].Index != foreignBand.Index {
		t.Errorf("left after RemoveAll: %v", left)
	}
}

func TestInstallRefuses(t *testing.T) {
	in := newInstaller(t, &xfrmtest.SPD{})
	p := trapPolicy()
	p.Priority = 500
	if _, err := in.Install(context.Background(), p); err == nil {
		t.Error("priority outside the band accepted")
	}
	p = trapPolicy()
	p.Dir = xfrm.DirFwd
	if _, err := in.Install(context.Background(), p); err == nil {
		t.Error("fwd trap accepted")
	}
	if _, err := xfrm.NewInstaller(&xfrmtest.SPD{}, xfrm.Owner{Band: xfrm.Band{Min: 5, Max: 3}}, nil); err == nil {
		t.Error("empty band accepted")
	}
}

func TestInstallLeftoversAndIndexClash(t *testing.T) {
	ctx := context.Background()
	spd := &xfrmtest.SPD{}
	// An earlier obold left a policy behind.
	left := shunt("10.99.3.3/32", xfrm.Block, 0)
	left.Index = 0xb0000001 // slot 0, dir out
	spd.Put(left)
	in := newInstaller(t, spd)
	got, err := in.Install(ctx, trapPolicy())
	if err != nil {
		t.Fatal(err)
	}
	if got.Index == left.Index {
		t.Fatalf("reused the leftover's index %#x", got.Index)
	}
	// Someone else takes the index obold will ask for next: the kernel numbers
	// obold's policy itself; the installer notices and retries.
	next := got.Index + 8
	spd.Put(xfrm.Policy{Src: any4, Dst: netip.MustParsePrefix("10.77.0.0/16"), Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: 7, Index: next})
	got2, err := in.Install(ctx, shunt("10.99.4.4/32", xfrm.Block, 0))
	if err != nil {
		t.Fatal(err)
	}
	if got2.Index == next || !in.Owner().Owns(got2) {
		t.Errorf("second install got index %#x", got2.Index)
	}
	n, err := in.RemoveAll(ctx)
	if err != nil || n != 3 {
		t.Errorf("RemoveAll = %d, %v; want 3 (the leftover too)", n, err)
	}
}

func TestShuntLifetime(t *testing.T) {
	ctx := context.Background()
	now := time.Unix(1_800_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	spd := &xfrmtest.SPD{Now: clock}
	in := newInstaller(t, spd)
	s := shunt("10.99.5.5/32", xfrm.Block, 1500*time.Millisecond)
	got, err := in.Install(ctx, s)
	if err != nil {
		t.Fatal(err)
	}
	if got.Lifetime != 2*time.Second || !got.Added.Equal(now) {
		t.Errorf("installed %s added %v", got, got.Added)
	}
	chk := &xfrm.Checker{Kernel: spd, Log: quiet}
	if r, _ := chk.Check(ctx, wanted(s)); !r.OK() {
		t.Errorf("Check with lifetime: %+v", r)
	}
	mu.Lock()
	now = now.Add(2 * time.Second)
	mu.Unlock()
	if ours, _ := in.List(ctx); len(ours) != 0 {
		t.Errorf("expired shunt still there: %v", ours)
	}
	if r, _ := chk.Check(ctx, wanted(s)); len(r.Missing) != 1 {
		t.Errorf("Check after expiry: %+v (the engine drops expired shunts from want)", r)
	}
}

func TestSecCtx(t *testing.T) {
	ctx := context.Background()
	label := "system_u:object_r:ipsec_spd_t:s0"
	p := shunt("10.99.6.0/24", xfrm.Allow, 0)
	p.SecCtx = label

	t.Run("kernel keeps labels", func(t *testing.T) {
		spd := &xfrmtest.SPD{}
		in := newInstaller(t, spd)
		if ok, err := in.SecCtxSupported(ctx, label); !ok || err != nil {
			t.Errorf("SecCtxSupported = %v, %v", ok, err)
		}
		plain := p
		plain.SecCtx = ""
		for _, q := range []xfrm.Policy{p, plain} { // same selector, two identities
			if _, err := in.Install(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
		r, err := (&xfrm.Checker{Kernel: spd, Log: quiet}).Check(ctx, wanted(p, plain))
		if err != nil || !r.OK() {
			t.Errorf("Check: %+v %v", r, err)
		}
		if err := in.Remove(ctx, p); err != nil {
			t.Fatal(err)
		}
		if ours, _ := in.List(ctx); len(ours) != 1 || ours[0].SecCtx != "" {
			t.Errorf("after removing the labeled one: %v", ours)
		}
	})
	t.Run("kernel drops labels", func(t *testing.T) {
		spd := &xfrmtest.SPD{DropSecCtx: true}
		in := newInstaller(t, spd)
		if ok, err := in.SecCtxSupported(ctx, label); ok || err != nil {
			t.Errorf("SecCtxSupported = %v, %v", ok, err)
		}
		if _, err := in.Install(ctx, p); !errors.Is(err, xfrm.ErrSecCtxUnsupported) {
			t.Errorf("Install labeled: %v, want ErrSecCtxUnsupported", err)
		}
		if ps, _ := spd.Policies(ctx); len(ps) != 0 {
			t.Errorf("an unlabeled stand-in stayed: %v", ps)
		}
	})
}

func TestInstallerErrors(t *testing.T) {
	ctx := context.Background()
	boom := errors.New("EPERM")
	for _, op := range []string{"list", "add", "get"} {
		spd := &xfrmtest.SPD{Fail: func(o string, _ xfrm.Policy) error {
			if o == op {
				return boom
			}
			return nil
		}}
		in := newInstaller(t, spd)
		if _, err := in.Install(ctx, trapPolicy()); !errors.Is(err, boom) {
			t.Errorf("%s fails: Install err = %v", op, err)
		}
	}
	// RemoveAll goes on after a failure and reports it.
	spd := &xfrmtest.SPD{}
	in := newInstaller(t, spd)
	for _, d := range []string{"10.99.1.1/32", "10.99.1.2/32", "10.99.1.3/32"} {
		if _, err := in.Install(ctx, shunt(d, xfrm.Block, 0)); err != nil {
			t.Fatal(err)
		}
	}
	calls := 0
	spd.Fail = func(o string, _ xfrm.Policy) error {
		if o == "delete" {
			calls++
			if calls == 1 {
				return boom
			}
		}
		return nil
	}
	n, err := in.RemoveAll(ctx)
	if n != 2 || !errors.Is(err, boom) {
		t.Errorf("RemoveAll = %d, %v", n, err)
	}
}

func TestConcurrentInstall(t *testing.T) {
	ctx := context.Background()
	spd := &xfrmtest.SPD{}
	in := newInstaller(t, spd)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			d := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 99, 9, byte(i)}), 32)
			if _, err := in.Install(ctx, xfrm.Policy{Src: any4, Dst: d, Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: band.Priority(xfrm.RolePair, any4, d)}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	ours, _ := in.List(ctx)
	seen := map[uint32]bool{}
	for _, p := range ours {
		if seen[p.Index] {
			t.Errorf("index %#x twice", p.Index)
		}
		seen[p.Index] = true
	}
	if len(ours) != 50 {
		t.Errorf("%d policies, want 50", len(ours))
	}
}

func TestAcquireDatagram(t *testing.T) {
	a := xfrm.Acquire{
		Src: netip.MustParseAddr("10.98.0.1"), Dst: netip.MustParseAddr("10.99.1.1"), Proto: 17, DstPort: 9,
		Policy: trapPolicy(), Seq: 1,
	}
	b := a
	b.Dst = netip.MustParseAddr("10.99.1.2")
	dg, err := xfrmtest.AcquireDatagram(a, b)
	if err != nil {
		t.Fatal(err)
	}
	as, errs := xfrm.DecodeAcquires(dg)
	if len(errs) != 0 || len(as) != 2 || as[0].Pair() != a.Pair() || as[1].Pair() != b.Pair() {
		t.Errorf("decoded %v, %v", as, errs)
	}
}

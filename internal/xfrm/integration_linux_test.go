//go:build linux

package xfrm

// Integration tests against this machine's kernel, each in its own
// throwaway network namespace (root only; skipped otherwise).

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/plugins"
)

var writeGolden = flag.Bool("xfrm.golden", false, "write testdata/acquire_ipv4.hex from a real ACQUIRE")

var (
	anyV4    = netip.MustParsePrefix("0.0.0.0/0")
	trapNet  = netip.MustParsePrefix("10.99.0.0/16")
	localV0  = netip.MustParseAddr("10.98.0.1")
	trapPrio = DefaultBand.Priority(RoleTrap, anyV4, trapNet)
)

func obTrap() Policy {
	return Policy{Src: anyV4, Dst: trapNet, Dir: DirOut, Action: Trap, Priority: trapPrio}
}

// udpSender sends from 10.98.0.1 without connecting, so every datagram
// takes its own route and policy lookup.
func udpSender(t testing.TB) *net.UDPConn {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: localV0.AsSlice()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func sendTo(t testing.TB, c *net.UDPConn, dst string, port int) {
	t.Helper()
	// With net.core.xfrm_larval_drop=1 the datagram is dropped; the call
	// itself succeeds.
	if _, err := c.WriteToUDP([]byte("obol"), &net.UDPAddr{IP: net.ParseIP(dst), Port: port}); err != nil {
		t.Logf("send to %s:%d: %v", dst, port, err)
	}
}

func collect(t testing.TB, l *Listener, n int, extra time.Duration) []Acquire {
	t.Helper()
	var as []Acquire
	deadline := time.After(5 * time.Second)
	for len(as) < n {
		select {
		case a, ok := <-l.Acquires():
			if !ok {
				t.Fatalf("listener closed after %d ACQUIREs: %v", len(as), l.Err())
			}
			as = append(as, a)
		case <-deadline:
			t.Fatalf("got %d ACQUIREs in 5 s, want %d (stats %+v)", len(as), n, l.Stats())
		}
	}
	quiet := time.After(extra)
	for {
		select {
		case a := <-l.Acquires():
			as = append(as, a)
		case <-quiet:
			return as
		}
	}
}

func TestKernelAcquire(t *testing.T) {
	inNetns(t, func(ns *labNS) {
		ctx := context.Background()
		in, err := NewInstaller(Netlink{}, Owner{}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		trap, err := in.Install(ctx, obTrap())
		if err != nil {
			t.Fatal(err)
		}
		if out := ns.ip("xfrm", "policy", "list"); !strings.Contains(out, fmt.Sprintf("proto esp reqid %d mode transport", trap.ReqID)) || !DefaultOwner().IsReqID(trap.ReqID) {
			t.Errorf("ip xfrm policy list shows no transport-mode ESP template:\n%s", out)
		}
		owner := DefaultOwner()
		l, err := Listen(ctx, ListenConfig{Owner: &owner, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		raw, err := dial(groupAcquire)
		if err != nil {
			t.Fatal(err)
		}
		defer raw.Close()

		c := udpSender(t)
		sendTo(t, c, "10.99.1.1", 9)
		sendTo(t, c, "10.99.1.1", 53) // same pair, other port: no second ACQUIRE
		sendTo(t, c, "10.99.1.2", 9)
		sendTo(t, c, "10.99.1.2", 9)
		as := collect(t, l, 2, 300*time.Millisecond)
		if len(as) != 2 {
			t.Fatalf("got %d ACQUIREs, want one per destination: %v", len(as), as)
		}
		for i, dst := range []string{"10.99.1.1", "10.99.1.2"} {
			a := as[i]
			want := Pair{Src: localV0, Dst: netip.MustParseAddr(dst)}
			if a.Pair() != want {
				t.Errorf("ACQUIRE %d: pair %s, want %s", i, a.Pair(), want)
			}
			if a.SADst != want.Dst || a.SASrc != want.Src || a.SAProto != protoESP {
				t.Errorf("ACQUIRE %d: SA %d %s->%s", i, a.SAProto, a.SASrc, a.SADst)
			}
			if a.Proto != 17 || a.DstPort != 9 || a.SrcPort == 0 || a.Ifindex == 0 {
				t.Errorf("ACQUIRE %d: first packet proto %d ports %d->%d dev %d", i, a.Proto, a.SrcPort, a.DstPort, a.Ifindex)
			}
			if a.Policy.Index != trap.Index || a.Policy.Priority != trapPrio || a.Policy.Action != Trap || a.Policy.Dst != trapNet {
				t.Errorf("ACQUIRE %d: policy %s, want obold's trap %s", i, a.Policy, trap)
			}
			if len(a.Templates) != 1 || a.Templates[0].Mode != modeTransport || a.Templates[0].Proto != protoESP || !DefaultOwner().IsReqID(a.ReqID) {
				t.Errorf("ACQUIRE %d: templates %+v", i, a.Templates)
			}
			if a.SecCtx != nil {
				t.Errorf("ACQUIRE %d: security context %+v on an unlabeled flow", i, a.SecCtx)
			}
			if a.Seq == 0 || a.Received.IsZero() {
				t.Errorf("ACQUIRE %d: seq %d received %v", i, a.Seq, a.Received)
			}
		}
		if st := l.Stats(); st.Received != 2 || st.Delivered != 2 || st.Dropped+st.Overruns+st.DecodeErrors != 0 {
			t.Errorf("stats %+v", st)
		}

		// The same ACQUIRE read raw: the decoder agrees with the listener.
		raw.f.SetReadDeadline(time.Now().Add(2 * time.Second))
		dg, err := raw.recv()
		if err != nil {
			t.Fatal(err)
		}
		ras, errs := DecodeAcquires(dg)
		if len(errs) != 0 || len(ras) != 1 || ras[0].Pair() != as[0].Pair() || ras[0].Seq != as[0].Seq {
			t.Errorf("raw decode: %v %v", ras, errs)
		}
		if *writeGolden {
			path := filepath.Join("testdata", "acquire_ipv4.hex")
			os.MkdirAll("testdata", 0o755)
			h := hex.EncodeToString(dg)
			var lines []string
			for len(h) > 64 {
				lines, h = append(lines, h[:64]), h[64:]
			}
			lines = append(lines, h)
			text := "# A real XFRM_MSG_ACQUIRE datagram (nlmsghdr included) from Linux 6.18 for\n" +
				"# UDP 10.98.0.1 -> 10.99.1.1:9 trapped by obold's 0.0.0.0/0 -> 10.99.0.0/16\n" +
				"# policy; written by go test -run TestKernelAcquire -xfrm.golden (as root).\n" +
				strings.Join(lines, "\n") + "\n"
			if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %s", path)
		}

		// The larval states behind the two ACQUIREs.
		pend, err := Netlink{}.PendingAcquires(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var pairs []string
		for _, a := range pend {
			pairs = append(pairs, a.Pair().String())
			if !DefaultOwner().IsReqID(a.ReqID) || !a.Recovered {
				t.Errorf("pending %s: reqid %#x", a.Pair(), a.ReqID)
			}
		}
		slices.Sort(pairs)
		if strings.Join(pairs, " ") != "10.98.0.1->10.99.1.1 10.98.0.1->10.99.1.2" {
			t.Errorf("pending acquires %v", pairs)
		}

		if err := l.Close(); err != nil {
			t.Error(err)
		}
		if _, ok := <-l.Acquires(); ok {
			t.Error("Acquires() not closed after Close")
		}
		if err := l.Err(); err != nil {
			t.Errorf("Err after Close: %v", err)
		}
	})
}

func TestKernelListenerContext(t *testing.T) {
	inNetns(t, func(ns *labNS) {
		ctx, cancel := context.WithCancel(context.Background())
		l, err := Listen(ctx, ListenConfig{Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		cancel()
		select {
		case <-l.Done():
		case <-time.After(2 * time.Second):
			t.Fatal("listener still running 2 s after its context ended")
		}
		if err := l.Close(); err != nil {
			t.Error(err)
		}
	})
}

func TestKernelInstallCheck(t *testing.T) {
	inNetns(t, func(ns *labNS) {
		ctx := context.Background()
		k := Netlink{}
		in, err := NewInstaller(k, Owner{}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		// Foreign policies: one like charon's, one hand-written inside obold's band.
		ns.ip("xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "192.0.2.53/32", "dir", "out", "priority", "2000", "action", "allow")
		ns.ip("xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "10.50.0.0/16", "dir", "out", "priority", "1000010", "action", "block")

		bypass := DefaultBand.Priority(RoleBypass, anyV4, anyV4)
		want := append(IKEBypass(4, bypass),
			Policy{Src: anyV4, Dst: netip.MustParsePrefix("10.98.0.0/24"), Dir: DirOut, Action: Allow, Priority: bypass}, // the LAN
			obTrap(),
			Policy{Src: anyV4, Dst: netip.MustParsePrefix("10.99.7.7/32"), Dir: DirOut, Action: Block, Priority: DefaultBand.Priority(RoleShunt, anyV4, netip.MustParsePrefix("10.99.7.7/32"))},
			Policy{Src: netip.MustParsePrefix("10.98.0.1/32"), Dst: netip.MustParsePrefix("10.99.8.8/32"), Dir: DirOut, Action: Allow, Priority: DefaultBand.Priority(RolePair, anyV4, anyV4)},
		)
		for _, p := range want {
			got, err := in.Install(ctx, p)
			if err != nil {
				t.Fatal(err)
			}
			if !in.Owner().Owns(got) {
				t.Errorf("installed %s is not recognized as obold's", got)
			}
		}
		ours, err := in.List(ctx)
		if err != nil || len(ours) != len(want) {
			t.Fatalf("List: %d, %v; want %d", len(ours), err, len(want))
		}
		for _, p := range ours {
			if p.Added.IsZero() || time.Since(p.Added) > time.Minute {
				t.Errorf("%s: add time %v", p, p.Added)
			}
		}

		chk := &Checker{Kernel: k, Log: quiet}
		pw := make([]Policy, len(want))
		copy(pw, want)
		r, err := chk.Check(ctx, pluginPolicies(pw))
		if err != nil || !r.OK() {
			t.Fatalf("Check after install: %+v, %v", r, err)
		}

		// Deleted by hand: Missing, and nothing else.
		ns.ip("xfrm", "policy", "delete", "src", "0.0.0.0/0", "dst", "10.99.7.7/32", "dir", "out")
		r, err = chk.Check(ctx, pluginPolicies(pw))
		if err != nil || len(r.Missing) != 1 || r.Missing[0].Dst.String() != "10.99.7.7/32" || len(r.Extra)+len(r.Stale) != 0 {
			t.Errorf("Check after ip xfrm policy delete: %+v, %v", r, err)
		}
		// Changed by hand: Extra.
		ns.ip("xfrm", "policy", "update", "src", "10.98.0.1/32", "dst", "10.99.8.8/32", "dir", "out", "priority", "1025999", "action", "allow")
		r, _ = chk.Check(ctx, pluginPolicies(pw))
		if len(r.Extra) != 1 || r.Extra[0].Priority != 1025999 {
			t.Errorf("Check after ip xfrm policy update: %+v", r)
		}

		// A foreign policy with the selector of one of obold's: refused.
		ns.ip("xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "10.99.7.7/32", "dir", "out", "priority", "3000", "action", "allow")
		if _, err := in.Install(ctx, want[len(want)-2]); !errors.Is(err, ErrNotOwned) {
			t.Errorf("install over a foreign policy: %v", err)
		}

		n, err := in.RemoveAll(ctx)
		if err != nil || n != len(want)-1 {
			t.Errorf("RemoveAll = %d, %v; want %d", n, err, len(want)-1)
		}
		left, err := k.Policies(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var dsts []string
		for _, p := range left {
			dsts = append(dsts, p.Dst.String())
		}
		sort.Strings(dsts)
		if strings.Join(dsts, " ") != "10.50.0.0/16 10.99.7.7/32 192.0.2.53/32" {
			t.Errorf("left after RemoveAll: %v (want only the three foreign ones)\n%s", dsts, ns.ip("xfrm", "policy", "list"))
		}
	})
}

func pluginPolicies(ps []Policy) []plugins.Policy {
	var out []plugins.Policy
	for _, p := range ps {
		out = append(out, p.Plugin())
	}
	return out
}

// TestKernelSocketPolicies: per-socket policies (charon's kernel-netlink puts
// them on its IKE sockets) show in dumps with directions 3 and 4; obold lists
// them, never counts them as its own and never removes them.
func TestKernelSocketPolicies(t *testing.T) {
	inNetns(t, func(ns *labNS) {
		ctx := context.Background()
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fd)
		for _, dir := range []Dir{DirIn, DirOut} {
			b := make([]byte, sizeofUserpolicyInfo)
			putUserpolicyInfo(b, Policy{Src: anyV4, Dst: anyV4, Dir: dir, Action: Allow})
			if err := unix.SetsockoptString(fd, unix.IPPROTO_IP, unix.IP_XFRM_POLICY, string(b)); err != nil {
				t.Fatal(err)
			}
		}
		in, _ := NewInstaller(Netlink{}, Owner{}, quiet)
		if _, err := in.Install(ctx, obTrap()); err != nil {
			t.Fatal(err)
		}
		all, err := Netlink{}.Policies(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var dirs []string
		for _, p := range all {
			dirs = append(dirs, p.Dir.String())
		}
		slices.Sort(dirs)
		if strings.Join(dirs, ",") != "out,socket in,socket out" {
			t.Errorf("directions %v", dirs)
		}
		r, err := (&Checker{Kernel: Netlink{}, Log: quiet}).Check(ctx, pluginPolicies([]Policy{obTrap()}))
		if err != nil || !r.OK() {
			t.Errorf("Check: %+v %v", r, err)
		}
		if n, err := in.RemoveAll(ctx); n != 1 || err != nil {
			t.Errorf("RemoveAll = %d, %v", n, err)
		}
		if all, _ := (Netlink{}).Policies(ctx); len(all) != 2 {
			t.Errorf("socket policies gone: %v", all)
		}
	})
}

func TestKernelIndexClash(t *testing.T) {
	inNetns(t, func(ns *labNS) {
		ctx := context.Background()
		in, err := NewInstaller(Netlink{}, Owner{}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		first, err := in.Install(ctx, obTrap())
		if err != nil {
			t.Fatal(err)
		}
		// Take the index obold asks for next (the kernel keeps a requested
		// index only when it is free).
		next := first.Index + 8
		ns.ip("xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "10.77.0.0/16", "dir", "out", "priority", "7", "action", "allow", "index", fmt.Sprintf("%#x", next))
		p := Policy{Src: anyV4, Dst: netip.MustParsePrefix("10.99.4.4/32"), Dir: DirOut, Action: Block, Priority: DefaultBand.Priority(RoleShunt, anyV4, anyV4)}
		got, err := in.Install(ctx, p)
		if err != nil {
			t.Fatal(err)
		}
		if got.Index == next || !in.Owner().Owns(got) {
			t.Errorf("installed with index %#x", got.Index)
		}
		all, _ := Netlink{}.Policies(ctx)
		if len(all) != 3 {
			t.Errorf("%d policies, want 3 (no copy without obold's tag left):\n%s", len(all), ns.ip("-s", "xfrm", "policy", "list"))
		}
	})
}

func TestKernelLifetime(t *testing.T) {
	inNetns(t, func(ns *labNS) {
		ctx := context.Background()
		owner := DefaultOwner()
		l, err := Listen(ctx, ListenConfig{Owner: &owner, Expiries: true, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		in, err := NewInstaller(Netlink{}, owner, quiet)
		if err != nil {
			t.Fatal(err)
		}
		dst := netip.MustParsePrefix("10.99.5.5/32")
		s, err := in.Install(ctx, Policy{Src: anyV4, Dst: dst, Dir: DirOut, Action: Block, Priority: DefaultBand.Priority(RoleShunt, anyV4, dst), Lifetime: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if s.Lifetime != time.Second {
			t.Errorf("lifetime read back: %s", s.Lifetime)
		}
		start := time.Now()
		select {
		case p := <-l.Expired():
			if p.Index != s.Index || p.Dst != dst {
				t.Errorf("expired %s, want %s", p, s)
			}
			t.Logf("kernel deleted the 1 s shunt after %s", time.Since(start).Round(time.Millisecond))
		case <-time.After(5 * time.Second):
			t.Fatal("no POLEXPIRE within 5 s")
		}
		if ours, _ := in.List(ctx); len(ours) != 0 {
			t.Errorf("shunt still there: %v", ours)
		}
	})
}

func TestKernelSecCtx(t *testing.T) {
	inNetns(t, func(ns *labNS) {
		ctx := context.Background()
		in, err := NewInstaller(Netlink{}, Owner{}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		ok, err := in.SecCtxSupported(ctx, "system_u:object_r:ipsec_spd_t:s0")
		t.Logf("kernel keeps security contexts: %v (err %v)", ok, err)
		if _, serr := os.Stat("/sys/fs/selinux/enforce"); errors.Is(serr, os.ErrNotExist) {
			// No SELinux: the context is accepted and dropped.
			if ok || err != nil {
				t.Errorf("SecCtxSupported = %v, %v without SELinux", ok, err)
			}
			p := Policy{Src: anyV4, Dst: netip.MustParsePrefix("10.99.6.0/24"), Dir: DirOut, Action: Allow,
				Priority: DefaultBand.Priority(RolePair, anyV4, anyV4), SecCtx: "system_u:object_r:ipsec_spd_t:s0"}
			if _, err := in.Install(ctx, p); !errors.Is(err, ErrSecCtxUnsupported) {
				t.Errorf("labeled install: %v, want ErrSecCtxUnsupported", err)
			}
		}
		if all, _ := (Netlink{}).Policies(ctx); len(all) != 0 {
			t.Errorf("probe or labeled policy left behind: %v", all)
		}
	})
}

// TestKernelOverrun overruns the listener's socket with a burst of trapped
// pairs, alone and beside another ACQUIRE listener (as charon's
// kernel-netlink would be).
func TestKernelOverrun(t *testing.T) {
	for _, other := range []bool{false, true} {
		name := "alone"
		if other {
			name = "beside another listener"
		}
		t.Run(name, func(t *testing.T) { testOverrun(t, other) })
	}
}

func testOverrun(t *testing.T, otherListener bool) {
	inNetns(t, func(ns *labNS) {
		ctx := context.Background()
		in, err := NewInstaller(Netlink{}, Owner{}, quiet)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := in.Install(ctx, obTrap()); err != nil {
			t.Fatal(err)
		}
		// Someone else's trap (charon's, say), with its own reqid.
		ns.ip("route", "add", "10.97.0.0/16", "via", "10.98.0.2", "dev", "v0")
		ns.ip("xfrm", "policy", "add", "src", "0.0.0.0/0", "dst", "10.97.0.0/16", "dir", "out", "priority", "390000",
			"tmpl", "proto", "esp", "mode", "transport", "reqid", "7")
		if otherListener {
			o, err := dial(groupAcquire)
			if err != nil {
				t.Fatal(err)
			}
			o.setRcvBuf(16 << 20)
			drained := make(chan struct{})
			go func() {
				defer close(drained)
				for {
					if _, err := o.recv(); err != nil && !errors.Is(err, syscall.ENOBUFS) {
						return
					}
				}
			}()
			defer func() { o.Close(); <-drained }()
		}
		owner := DefaultOwner()
		// A tiny socket buffer (the kernel's minimum): a burst overruns it.
		l, err := Listen(ctx, ListenConfig{Owner: &owner, RcvBuf: 1, Queue: 2048, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		const n = 400
		dsts := make([]netip.Addr, n)
		for i := range dsts {
			dsts[i] = netip.AddrFrom4([4]byte{10, 99, byte(20 + i/200), byte(1 + i%200)})
		}
		c := udpSender(t)
		for i, d := range dsts {
			sendTo(t, c, d.String(), 9)
			if i%4 == 0 {
				sendTo(t, c, netip.AddrFrom4([4]byte{10, 97, 0, byte(1 + i/4)}).String(), 9)
			}
		}
		seen := map[Pair]bool{}
		drain := func(quietFor time.Duration) {
			for {
				select {
				case a := <-l.Acquires():
					if trapNet.Contains(a.Dst) {
						seen[a.Pair()] = true
					} else {
						t.Errorf("ACQUIRE from someone else's trap delivered: %s (recovered %v)", a, a.Recovered)
					}
				case <-time.After(quietFor):
					return
				}
			}
		}
		drain(300 * time.Millisecond)
		st := l.Stats()
		pend, _ := Netlink{}.PendingAcquires(ctx)
		t.Logf("burst of %d trapped pairs: %d delivered (%d recovered), %d larval states; stats %+v", n, len(seen), st.Recovered, len(pend), st)
		if st.Overruns == 0 {
			t.Log("the burst did not overrun the socket")
		} else {
			select {
			case <-l.Overruns():
			default:
				t.Error("overrun not signalled")
			}
		}
		if otherListener {
			// Every trapped pair has a larval state; recovery finds the lost ones.
			if len(seen) != n {
				t.Errorf("%d of %d pairs delivered", len(seen), n)
			}
			if st.Overruns > 0 && st.Recovered == 0 {
				t.Error("overrun without recovery")
			}
			return
		}
		// Alone: a lost ACQUIRE leaves no larval state; the next packet of the
		// pair (a retransmission) raises a new one.
		for _, a := range pend {
			if trapNet.Contains(a.Dst) && !seen[a.Pair()] {
				t.Errorf("larval state for %s, never delivered", a.Pair())
			}
		}
		for round := 0; round < 10 && len(seen) < n; round++ {
			for _, d := range dsts {
				if !seen[Pair{Src: localV0, Dst: d}] {
					sendTo(t, c, d.String(), 9)
					time.Sleep(200 * time.Microsecond) // paced, as retransmissions are
				}
			}
			drain(200 * time.Millisecond)
		}
		if len(seen) != n {
			t.Errorf("%d of %d pairs delivered after retransmissions; stats %+v", len(seen), n, l.Stats())
		}
	})
}

// TestKernelAcquireLatency measures packet -> ACQUIRE on the channel.
func TestKernelAcquireLatency(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	inNetns(t, func(ns *labNS) {
		ctx := context.Background()
		in, _ := NewInstaller(Netlink{}, Owner{}, quiet)
		if _, err := in.Install(ctx, obTrap()); err != nil {
			t.Fatal(err)
		}
		owner := DefaultOwner()
		l, err := Listen(ctx, ListenConfig{Owner: &owner, Log: quiet})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		c := udpSender(t)
		const n = 500
		toChan := make([]time.Duration, 0, n)
		toRead := make([]time.Duration, 0, n)
		for i := range n {
			dst := &net.UDPAddr{IP: net.IPv4(10, 99, byte(40+i/250), byte(1+i%250)), Port: 9}
			t0 := time.Now()
			c.WriteToUDP([]byte("x"), dst)
			select {
			case a := <-l.Acquires():
				toChan = append(toChan, time.Since(t0))
				toRead = append(toRead, a.Received.Sub(t0))
			case <-time.After(2 * time.Second):
				t.Fatalf("no ACQUIRE for %s", dst)
			}
		}
		t.Logf("packet -> ACQUIRE read from the socket: %s", percentiles(toRead))
		t.Logf("packet -> ACQUIRE on the channel:       %s", percentiles(toChan))
	})
}

func percentiles(ds []time.Duration) string {
	s := slices.Clone(ds)
	slices.Sort(s)
	p := func(q float64) time.Duration { return s[int(q*float64(len(s)-1))].Round(time.Microsecond) }
	return fmt.Sprintf("n=%d min %s median %s p90 %s p99 %s max %s", len(s), p(0), p(0.5), p(0.9), p(0.99), p(1))
}

func BenchmarkKernelAcquireLatency(b *testing.B) {
	inNetns(b, func(ns *labNS) {
		ctx := context.Background()
		in, _ := NewInstaller(Netlink{}, Owner{}, quiet)
		if _, err := in.Install(ctx, obTrap()); err != nil {
			b.Fatal(err)
		}
		owner := DefaultOwner()
		l, err := Listen(ctx, ListenConfig{Owner: &owner, Log: quiet})
		if err != nil {
			b.Fatal(err)
		}
		defer l.Close()
		c := udpSender(b)
		if b.N > 60000 {
			b.Skip("more destinations than 10.99.0.0/16 holds")
		}
		b.ResetTimer()
		for i := range b.N {
			dst := &net.UDPAddr{IP: net.IPv4(10, 99, byte(i/250), byte(1+i%250)), Port: 9}
			c.WriteToUDP([]byte("x"), dst)
			select {
			case <-l.Acquires():
			case <-time.After(2 * time.Second):
				b.Fatalf("no ACQUIRE for %s", dst)
			}
		}
	})
}

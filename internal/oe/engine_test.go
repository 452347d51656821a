package oe

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/internal/xfrm/xfrmtest"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/vici"
)

// fakeCharon records conns and initiations; fail makes Initiate to a
// remote address fail with the given error.
type fakeCharon struct {
	mu         sync.Mutex
	conns      map[string]vici.Conn
	shared     map[string]vici.Shared // pre-shared keys by id
	initiated  []string
	terminated []vici.SASelector
	fail       map[string]error
	sas        []vici.IKESA
	// onInitiate runs before Initiate returns, without the lock (charon's
	// events can arrive before the initiate command's answer).
	onInitiate func(ike string)
	// configured are the conns list-conns reports besides the loaded
	// ones; listConns counts the calls.
	configured []vici.ConnInfo
	listConns  int
	listErr    error
	// slots, if set, bounds concurrent initiates; each takes takes.
	slots chan struct{}
	takes time.Duration
	loads int // LoadConn calls
}

func (f *fakeCharon) ListConns(_ context.Context, name string) ([]vici.ConnInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.listConns++
	if f.listErr != nil {
		return nil, f.listErr
	}
	out := append([]vici.ConnInfo(nil), f.configured...)
	for _, c := range f.conns {
		out = append(out, vici.ConnInfo{Name: c.Name, RemoteAddrs: c.RemoteAddrs})
	}
	return out, nil
}

func (f *fakeCharon) LoadConn(_ context.Context, c vici.Conn) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conns[c.Name] = c
	f.loads++
	return nil
}

func (f *fakeCharon) loadCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.loads
}
func (f *fakeCharon) LoadShared(_ context.Context, sh vici.Shared) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.shared == nil {
		f.shared = map[string]vici.Shared{}
	}
	f.shared[sh.ID] = sh
	return nil
}
func (f *fakeCharon) UnloadShared(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.shared, id)
	return nil
}
func (f *fakeCharon) UnloadConn(_ context.Context, n string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.conns, n)
	return nil
}
func (f *fakeCharon) Initiate(ctx context.Context, ike, child string) error {
	if f.slots != nil {
		// Like the VICI client: a bounded number of initiates at once,
		// the wait counted against ctx.
		select {
		case f.slots <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { <-f.slots }()
		select {
		case <-time.After(f.takes):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	hook := f.onInitiate
	f.mu.Unlock()
	if hook != nil {
		hook(ike)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.initiated = append(f.initiated, ike)
	if err := f.fail[f.conns[ike].RemoteAddrs[0]]; err != nil {
		return err
	}
	return nil
}
func (f *fakeCharon) Terminate(_ context.Context, sel vici.SASelector) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.terminated = append(f.terminated, sel)
	return nil
}
func (f *fakeCharon) ListSAs(_ context.Context, sel vici.SASelector) ([]vici.IKESA, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sas, nil
}
func (f *fakeCharon) conn(name string) (vici.Conn, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, ok := f.conns[name]
	return c, ok
}

// fakeDNS answers from a map; a missing address has no records.
type fakeDNS struct {
	mu      sync.Mutex
	answers map[netip.Addr]plugins.LookupAnswer
	errs    map[netip.Addr]error
	block   chan struct{}
	queries int
}

// set gives a an answer; engine goroutines may be reading meanwhile.
func (r *fakeDNS) set(a netip.Addr, ans plugins.LookupAnswer) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.answers[a] = ans
}

func (r *fakeDNS) Lookup(ctx context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	r.mu.Lock()
	r.queries++
	a, err, block := r.answers[q.Addr], r.errs[q.Addr], r.block
	r.mu.Unlock()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return a, ctx.Err()
		}
	}
	return a, err
}

func gateway(t *testing.T, addr string, prec int) plugins.Gateway {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return plugins.Gateway{Precedence: prec, Addr: netip.MustParseAddr(addr), Keys: []plugins.PublicKey{{Algorithm: "ed25519", Data: pub}}, Source: "IPSECKEY"}
}

type rig struct {
	e   *Engine
	ch  *fakeCharon
	spd *xfrmtest.SPD
	dns *fakeDNS
	now time.Time
	mu  sync.Mutex
}

func (r *rig) clock() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.now
}

func (r *rig) advance(d time.Duration) {
	r.mu.Lock()
	r.now = r.now.Add(d)
	r.mu.Unlock()
}

func newRig(t *testing.T, groups string, mutate func(*Config)) *rig {
	t.Helper()
	r := &rig{ch: &fakeCharon{conns: map[string]vici.Conn{}, fail: map[string]error{}}, spd: &xfrmtest.SPD{}, dns: &fakeDNS{answers: map[netip.Addr]plugins.LookupAnswer{}, errs: map[netip.Addr]error{}}, now: time.Unix(1_800_000_000, 0)}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	in, err := xfrm.NewInstaller(r.spd, xfrm.DefaultOwner(), log)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Address: "192.0.2.1", KeyFile: "k.pem", Protect: []string{"10.1.0.0/24"}}
	cfg.DNS = resolver.Defaults()
	cfg.DNS.Server = "192.0.2.53:53"
	for _, g := range strings.Split(groups, ";") {
		name, cidr, _ := strings.Cut(g, "=")
		cfg.Groups = append(cfg.Groups, groupConfig(name, cidr))
	}
	if mutate != nil {
		mutate(&cfg)
	}
	e, err := New(cfg, Params{Charon: r.ch, Kernel: in, Resolver: r.dns, Userspace: true, Prefix: "obol-", PubPEM: []byte("PUB"), Log: log, Now: r.clock,
		LocalAddrs: []netip.Addr{netip.MustParseAddr("10.2.99.1"), netip.MustParseAddr("::1"), netip.MustParseAddr("fe80::1")}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	// Start reads charon's configured conns in the background; let it
	// finish so tests change the fake charon without racing it.
	e.mu.Lock()
	prefetched := e.cfgPrefetched
	e.mu.Unlock()
	<-prefetched
	r.e = e
	return r
}

// setConfigured changes the conns the fake charon has besides obold's, as
// swanctl --load-conns would, and drops the engine's cached list.
func (r *rig) setConfigured(cs []vici.ConnInfo) {
	r.ch.mu.Lock()
	r.ch.configured = cs
	r.ch.mu.Unlock()
	r.e.forgetConfigured()
}

// setListErr makes list-conns fail (charon away) from now on.
func (r *rig) setListErr(err error) {
	r.ch.mu.Lock()
	r.ch.listErr = err
	r.ch.mu.Unlock()
	r.e.forgetConfigured()
}

func (r *rig) tunnel(t *testing.T, src, dst string, want State) Tunnel {
	t.Helper()
	pair := xfrm.Pair{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst)}
	deadline := time.Now().Add(5 * time.Second)
	for {
		for _, tu := range r.e.Tunnels() {
			if tu.Pair == pair && tu.State == want {
				return tu
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pair %s never reached %s: %+v", pair, want, r.e.Tunnels())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func (r *rig) policies(t *testing.T, action xfrm.Action, src, dst string) []xfrm.Policy {
	t.Helper()
	ps, err := r.spd.Policies(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var out []xfrm.Policy
	for _, p := range ps {
		if p.Action == action && p.Src.String() == src && p.Dst.String() == dst {
			out = append(out, p)
		}
	}
	return out
}

func acquire(src, dst string, port uint16) xfrm.Acquire {
	return xfrm.Acquire{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), DstPort: port}
}

func TestStartInstallsBypassesTrapsBlocks(t *testing.T) {
	r := newRig(t, "private-or-clear=10.2.0.0/16;block=10.9.0.0/16", nil)
	if len(r.policies(t, xfrm.Trap, "0.0.0.0/0", "10.2.0.0/16")) != 1 {
		t.Error("no trap for the private-or-clear group")
	}
	if len(r.policies(t, xfrm.Block, "0.0.0.0/0", "10.9.0.0/16")) != 1 {
		t.Error("no block for the block group")
	}
	if len(r.policies(t, xfrm.Allow, "0.0.0.0/0", "192.0.2.53/32")) != 2 {
		t.Error("the resolver is not bypassed")
	}
	ike := 0
	ps, _ := r.spd.Policies(context.Background())
	for _, p := range ps {
		if p.Proto == 17 && (p.DstPort == 500 || p.SrcPort == 4500) {
			ike++
		}
	}
	if ike < 4 {
		t.Errorf("IKE bypasses: %d", ike)
	}
	acc, ok := r.ch.conn("obol-oe-accept")
	if !ok || acc.Remote[0].ID != noPeerID || len(acc.Remote[0].Pubkeys) != 0 || acc.RemoteAddrs[0] != "10.2.0.0/16" {
		t.Errorf("acceptor conn %+v", acc)
	}
	if err := r.e.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ps, _ := r.spd.Policies(context.Background()); len(ps) != 0 {
		t.Errorf("after Stop the kernel still has %d of obold's policies", len(ps))
	}
	if _, ok := r.ch.conn("obol-oe-accept"); ok {
		t.Error("acceptor conn left loaded")
	}
}

func TestInitiatorUp(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	gw := gateway(t, "192.0.2.2", 10)
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gw}, DNSSEC: plugins.DNSSECSecure})
	// Three ACQUIREs for one pair (different first ports): one negotiation.
	for _, port := range []uint16{0, 80, 443} {
		r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", port))
	}
	tu := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
	if tu.Gateway != "192.0.2.2" || tu.DNSSEC != plugins.DNSSECSecure || tu.Attempts != 1 || tu.KeySource != "IPSECKEY" {
		t.Errorf("tunnel %+v", tu)
	}
	c, ok := r.ch.conn("obol-oe-10-1-0-10-10-2-0-10")
	if !ok {
		t.Fatalf("conns %v", r.ch.conns)
	}
	if c.RemoteAddrs[0] != "192.0.2.2" || c.Remote[0].ID != "192.0.2.2" || len(c.Remote[0].Pubkeys) != 1 || !strings.Contains(string(c.Remote[0].Pubkeys[0]), "PUBLIC KEY") {
		t.Errorf("remote auth %+v", c.Remote[0])
	}
	if c.Local[0].ID != "192.0.2.1" || string(c.Local[0].Pubkeys[0]) != "PUB" || c.Children[0].LocalTS[0] != "10.1.0.10/32" || c.Children[0].RemoteTS[0] != "10.2.0.10/32" || c.Children[0].Mode != "tunnel" {
		t.Errorf("conn %+v", c)
	}
	if len(r.ch.initiated) != 1 {
		t.Errorf("initiated %v", r.ch.initiated)
	}
	// The key DNS gave is the peer's, for channel bindings (ours is no real
	// key in this rig, so ok is false).
	// ConnFacts gives keys only when both are known: ours is no real key
	// in this rig, so the tunnel's facts carry none.
	if f, ok := r.e.ConnFacts()["obol-oe-10-1-0-10-10-2-0-10"]; !ok || len(f.PeerKey.Data) != 0 {
		t.Errorf("ConnFacts: %+v, %v", f, ok)
	}
	r.e.mu.Lock()
	for _, tu := range r.e.tunnels {
		if !bytes.Equal(tu.peerKey.Data, gw.Keys[0].Data) {
			t.Errorf("the tunnel's peer key %x is not the gateway's DNS key", tu.peerKey.Data)
		}
	}
	r.e.ourKey = gw.Keys[0] // stand-in for ours
	r.e.mu.Unlock()
	if f := r.e.ConnFacts()["obol-oe-10-1-0-10-10-2-0-10"]; !bytes.Equal(f.PeerKey.Data, gw.Keys[0].Data) || len(f.OurKey.Data) == 0 {
		t.Errorf("ConnFacts with both keys known: %+v", f)
	}
	// Userspace datapath: both directions allowed past the trap.
	if len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32")) != 1 || len(r.policies(t, xfrm.Allow, "10.2.0.10/32", "10.1.0.10/32")) != 1 {
		t.Error("no per-pair allow policies")
	}
	// A Delete from the peer tears down both directions.
	r.e.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: &vici.IKESA{Name: "obol-oe-10-1-0-10-10-2-0-10"}})
	if len(r.e.Tunnels()) != 0 || len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32")) != 0 {
		t.Errorf("after the peer's Delete: %+v", r.e.Tunnels())
	}
	if _, ok := r.ch.conn("obol-oe-10-1-0-10-10-2-0-10"); ok {
		t.Error("conn left loaded")
	}
	// A crossed second Delete finds nothing and changes nothing.
	r.e.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: &vici.IKESA{Name: "obol-oe-10-1-0-10-10-2-0-10"}})
}

// TestPairsToOneGatewayAreNotDuplicates: many pairs behind one gateway
// have one IKE_SA each with the same identities; their conns, initiator
// and responder, must not let charon close them as duplicates.
func TestPairsToOneGatewayAreNotDuplicates(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16;clear-or-private=192.0.2.0/24", nil)
	gw := gateway(t, "192.0.2.2", 10)
	for _, dst := range []string{"10.2.0.10", "10.2.0.11", "10.2.0.12"} {
		r.dns.set(netip.MustParseAddr(dst), plugins.LookupAnswer{Gateways: []plugins.Gateway{gw}, DNSSEC: plugins.DNSSECSecure})
		r.e.HandleAcquire(acquire("10.1.0.10", dst, 0))
	}
	for _, dst := range []string{"10.2.0.10", "10.2.0.11", "10.2.0.12"} {
		r.tunnel(t, "10.1.0.10", dst, StateUp)
	}
	r.dns.set(netip.MustParseAddr("192.0.2.3"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.3", 10)}, DNSSEC: plugins.DNSSECSecure})
	r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "192.0.2.3 is initiating an IKE_SA"}})
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		if _, ok := r.ch.conn("obol-oe-r-192-0-2-3"); ok {
			break
		}
	}
	for _, name := range []string{"obol-oe-10-1-0-10-10-2-0-10", "obol-oe-10-1-0-10-10-2-0-11", "obol-oe-10-1-0-10-10-2-0-12", "obol-oe-r-192-0-2-3"} {
		c, ok := r.ch.conn(name)
		if !ok {
			t.Fatalf("conn %s not loaded: %v", name, r.ch.conns)
		}
		if c.Unique != "never" {
			t.Errorf("conn %s: unique = %q, want never (charon would close the other pairs' IKE_SAs as duplicates)", name, c.Unique)
		}
	}
}

// TestQueuedInitiatesKeepTheirIKETimeout: 12 setups at once, 4 initiates
// at a time taking 60 ms each, ike_timeout 150 ms: the ones that wait
// behind others still get their whole ike_timeout, so all come up.
func TestQueuedInitiatesKeepTheirIKETimeout(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", func(c *Config) { c.IKETimeout = Duration(150 * time.Millisecond) })
	r.ch.slots, r.ch.takes = make(chan struct{}, 4), 60*time.Millisecond
	gw := gateway(t, "192.0.2.2", 10)
	var dsts []string
	for i := range 12 {
		dst := fmt.Sprintf("10.2.0.%d", 10+i)
		dsts = append(dsts, dst)
		r.dns.set(netip.MustParseAddr(dst), plugins.LookupAnswer{Gateways: []plugins.Gateway{gw}, DNSSEC: plugins.DNSSECSecure})
		r.e.HandleAcquire(acquire("10.1.0.10", dst, 0))
	}
	for _, dst := range dsts {
		if tu := r.tunnel(t, "10.1.0.10", dst, StateUp); tu.Attempts != 1 {
			t.Errorf("%s came up after %d attempts, want 1", dst, tu.Attempts)
		}
	}
}

func TestOwnAddressesExempt(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.99.1", 0)) // one of the host's own addresses
	if len(r.e.Tunnels()) != 0 {
		t.Fatalf("OE tried for the host's own address: %+v", r.e.Tunnels())
	}
	if d := r.e.Policy().Decide(netip.MustParseAddr("192.0.2.53")); d.Exempt != "the DNS resolver" {
		t.Errorf("resolver: %+v", d)
	}
}

// A group CIDR that is exactly the resolver's address gets no trap: the
// kernel keeps one policy per selector, and the trap would replace the
// resolver's bypass (DNS cut off under private).
func TestGroupOnExemptAddressKeepsBypass(t *testing.T) {
	for _, groups := range []string{"private=192.0.2.53/32", "block=192.0.2.53/32"} {
		r := newRig(t, groups, nil)
		if n := len(r.policies(t, xfrm.Trap, "0.0.0.0/0", "192.0.2.53/32")) + len(r.policies(t, xfrm.Block, "0.0.0.0/0", "192.0.2.53/32")); n != 0 {
			t.Errorf("%s: %d trap/block policies on the resolver's own selector", groups, n)
		}
		if len(r.policies(t, xfrm.Allow, "0.0.0.0/0", "192.0.2.53/32")) != 2 {
			t.Errorf("%s: the resolver's bypass was lost", groups)
		}
	}
}

func TestFailoverToNextGateway(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10), gateway(t, "192.0.2.3", 20)}})
	r.ch.fail["192.0.2.2"] = errors.New("AUTHENTICATION_FAILED")
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	tu := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
	if tu.Gateway != "192.0.2.3" || tu.Attempts != initiateTries+1 { // every try on the first, one on the second
		t.Errorf("tunnel %+v", tu)
	}
}

// TestRetryWait: the responder's race (the peer's AUTHENTICATION_FAILED
// on the first try) is retried at once; anything else, and any later try,
// waits.
func TestRetryWait(t *testing.T) {
	race := errors.New(`vici: initiate child "oe" of conn "obol-oe-x": charon says: establishing CHILD_SA 'oe' failed (charon log: establishing CHILD_SA oe{3}; received AUTHENTICATION_FAILED notify error): check both peers' conns`)
	timeout := errors.New(`vici: initiate child "oe": charon says: establishing CHILD_SA 'oe' failed (charon log: giving up after 5 retransmits)`)
	tests := []struct {
		name string
		try  int
		err  error
		want time.Duration
	}{
		{"race, first retry", 1, race, 0},
		{"race, second retry", 2, race, retryPause},
		{"no answer", 1, timeout, retryPause},
		{"our own refusal", 1, errors.New("AUTHENTICATION_FAILED"), retryPause},
	}
	for _, tc := range tests {
		if got := retryWait(tc.try, tc.err); got != tc.want {
			t.Errorf("%s: retryWait = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFailureShunts(t *testing.T) {
	tests := []struct {
		name   string
		groups string
		dst    string
		dns    func(*fakeDNS)
		action xfrm.Action
		reason string
	}{
		{"private-or-clear without records -> pass", "private-or-clear=10.2.0.0/16", "10.2.0.10", nil, xfrm.Allow, "no OE records"},
		{"private without records -> drop", "private=10.2.0.0/16", "10.2.0.10", nil, xfrm.Block, "no OE records"},
		{"private, bogus DNSSEC -> drop", "private=10.2.0.0/16", "10.2.0.10", func(d *fakeDNS) {
			d.answers[netip.MustParseAddr("10.2.0.10")] = plugins.LookupAnswer{DNSSEC: plugins.DNSSECBogus, Unusable: "DNSSEC validation failed (bogus)"}
			d.errs[netip.MustParseAddr("10.2.0.10")] = errors.New("bogus")
		}, xfrm.Block, "unusable: DNSSEC validation failed"},
		{"private, IKE fails -> drop", "private=10.2.0.0/16", "10.2.0.10", func(d *fakeDNS) {}, xfrm.Block, "AUTHENTICATION_FAILED"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.groups, nil)
			if tt.dns != nil {
				tt.dns(r.dns)
			}
			if strings.Contains(tt.name, "IKE fails") {
				r.dns.set(netip.MustParseAddr(tt.dst), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}})
				r.ch.fail["192.0.2.2"] = errors.New("AUTHENTICATION_FAILED")
			}
			r.e.HandleAcquire(acquire("10.1.0.10", tt.dst, 0))
			tu := r.tunnel(t, "10.1.0.10", tt.dst, StateFailed)
			if !strings.Contains(tu.Reason, tt.reason) {
				t.Errorf("reason %q, want %q", tu.Reason, tt.reason)
			}
			ps := r.policies(t, tt.action, "10.1.0.10/32", tt.dst+"/32")
			if len(ps) != 1 || ps[0].Lifetime != 15*time.Minute {
				t.Fatalf("shunt %v %+v", tt.action, ps)
			}
			// The kernel expires the shunt: OE is tried again on the next packet.
			r.e.ShuntExpired(ps[0])
			if len(r.e.Tunnels()) != 0 {
				t.Errorf("after the shunt expired: %+v", r.e.Tunnels())
			}
		})
	}
}

func TestFloodIsBounded(t *testing.T) {
	r := newRig(t, "private=10.0.0.0/8", func(c *Config) { c.MaxPending = 16 })
	r.dns.block = make(chan struct{}) // DNS hangs: every negotiation stays pending
	for i := 0; i < 1000; i++ {
		r.e.HandleAcquire(acquire("192.0.2.1", fmt.Sprintf("10.%d.%d.1", 4+i/250, i%250), 0))
	}
	r.dns.mu.Lock()
	q := r.dns.queries
	r.dns.mu.Unlock()
	if q > 16 {
		t.Errorf("%d DNS queries in flight, cap is 16", q)
	}
	failed := 0
	for _, tu := range r.e.Tunnels() {
		if tu.State == StateFailed {
			failed++
		}
	}
	states := map[State]int{}
	for _, tu := range r.e.Tunnels() {
		states[tu.State]++
	}
	t.Logf("states %v", states)
	if failed < 1000-16 {
		t.Errorf("%d ACQUIREs got the failure shunt at once, want >= %d", failed, 1000-16)
	}
	close(r.dns.block)
}

func TestMaxTracked(t *testing.T) {
	r := newRig(t, "private=10.0.0.0/8", func(c *Config) { c.MaxPending = 4; c.MaxTracked = 10 })
	r.dns.block = make(chan struct{})
	defer close(r.dns.block)
	for i := 0; i < 50; i++ {
		r.e.HandleAcquire(acquire("192.0.2.1", fmt.Sprintf("10.9.0.%d", i+1), 0))
	}
	if n := len(r.e.Tunnels()); n != 10 {
		t.Fatalf("tracked %d pairs, max_tracked is 10", n)
	}
	// The untracked ones still got a drop shunt in the kernel.
	if got := len(r.policies(t, xfrm.Block, "192.0.2.1/32", "10.9.0.50/32")); got != 1 {
		t.Errorf("untracked pair has %d drop shunts, want 1", got)
	}
}

func TestResponderLoadsInitiatorKey(t *testing.T) {
	r := newRig(t, "private-or-clear=0.0.0.0/0", nil)
	r.dns.set(netip.MustParseAddr("192.0.2.2"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 65536)}, DNSSEC: plugins.DNSSECSecure})
	r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "192.0.2.2 is initiating an IKE_SA"}})
	var c vici.Conn
	deadline := time.Now().Add(5 * time.Second)
	for {
		var ok bool
		if c, ok = r.ch.conn("obol-oe-r-192-0-2-2"); ok || time.Now().After(deadline) {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	if c.Remote[0].ID != "192.0.2.2" || len(c.Remote[0].Pubkeys) != 1 || c.Children[0].LocalTS[1] != "10.1.0.0/24" {
		t.Fatalf("responder conn %+v", c)
	}
	// A client behind the initiator that does not delegate to it is cut off.
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.99", 10)}})
	r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &vici.IKESA{Name: "obol-oe-r-192-0-2-2", RemoteHost: netip.MustParseAddr("192.0.2.2"),
		Children: []vici.ChildSA{{Name: "accept", UniqueID: 7, LocalTS: []string{"10.1.0.10/32"}, RemoteTS: []string{"10.2.0.10/32"}}}}})
	if len(r.ch.terminated) != 1 || r.ch.terminated[0].ChildID != 7 {
		t.Fatalf("undelegated child not closed: %+v", r.ch.terminated)
	}
	// One that delegates is accepted and allowed past the traps.
	r.dns.set(netip.MustParseAddr("10.2.0.11"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}})
	r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &vici.IKESA{Name: "obol-oe-r-192-0-2-2", RemoteHost: netip.MustParseAddr("192.0.2.2"),
		Children: []vici.ChildSA{{Name: "accept", UniqueID: 8, LocalTS: []string{"10.1.0.10/32"}, RemoteTS: []string{"10.2.0.11/32"}}}}})
	if len(r.ch.terminated) != 1 || len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.11/32")) != 1 {
		t.Fatalf("delegated child: terminated %+v", r.ch.terminated)
	}
	// The initiator speaking for itself (host OE) needs no delegation and
	// is allowed past the traps too.
	r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &vici.IKESA{Name: "obol-oe-r-192-0-2-2", RemoteHost: netip.MustParseAddr("192.0.2.2"),
		Children: []vici.ChildSA{{Name: "accept", UniqueID: 9, LocalTS: []string{"192.0.2.1/32"}, RemoteTS: []string{"192.0.2.2/32"}}}}})
	if len(r.ch.terminated) != 1 || len(r.policies(t, xfrm.Allow, "192.0.2.1/32", "192.0.2.2/32")) != 1 || len(r.policies(t, xfrm.Allow, "192.0.2.2/32", "192.0.2.1/32")) != 1 {
		t.Fatalf("host OE responder: terminated %+v", r.ch.terminated)
	}
}

func TestLifespan(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", func(c *Config) {
		c.InitialLifespan = Duration(time.Minute)
		c.BusyLifespan = Duration(20 * time.Minute)
	})
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}})
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
	ctx := context.Background()
	// Busy at the end of the first minute (a packet 10 s ago): 20 more minutes.
	r.advance(61 * time.Second)
	r.ch.sas = []vici.IKESA{{Children: []vici.ChildSA{{Name: "oe", LocalTS: []string{"10.1.0.10/32"}, RemoteTS: []string{"10.2.0.10/32"}, UseIn: 10 * time.Second, UseOut: -1}}}}
	r.e.Tick(ctx)
	tu := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
	if tu.LifespanEnd.Sub(r.clock()) != 20*time.Minute {
		t.Fatalf("busy tunnel's next check in %s", tu.LifespanEnd.Sub(r.clock()))
	}
	// Idle for the whole second span: closed with a Delete.
	r.advance(20*time.Minute + time.Second)
	r.ch.sas = []vici.IKESA{{Children: []vici.ChildSA{{Name: "oe", LocalTS: []string{"10.1.0.10/32"}, RemoteTS: []string{"10.2.0.10/32"}, UseIn: 15 * time.Minute, UseOut: 15 * time.Minute}}}}
	r.e.Tick(ctx)
	if len(r.e.Tunnels()) != 0 || len(r.ch.terminated) != 1 || r.ch.terminated[0].IKE != "obol-oe-10-1-0-10-10-2-0-10" {
		t.Fatalf("idle tunnel: tunnels %+v terminated %+v", r.e.Tunnels(), r.ch.terminated)
	}
}

func TestAdoptAfterRestart(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}})
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	up := r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
	r.e.Leave()
	if len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32")) != 1 {
		t.Fatal("Leave removed the tunnel's allow policy")
	}
	// charon still has the SA; a new engine (a restarted obold) adopts it.
	r.ch.sas = []vici.IKESA{{Name: up.Conn, RemoteHost: netip.MustParseAddr("192.0.2.2"), RemoteID: "192.0.2.2",
		Children: []vici.ChildSA{{Name: "oe", State: "INSTALLED", LocalTS: []string{"10.1.0.10/32"}, RemoteTS: []string{"10.2.0.10/32"}}}}}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	in, err := xfrm.NewInstaller(r.spd, xfrm.DefaultOwner(), log)
	if err != nil {
		t.Fatal(err)
	}
	e2, err := New(r.e.cfg, Params{Charon: r.ch, Kernel: in, Resolver: r.dns, Userspace: true, Prefix: "obol-", PubPEM: []byte("PUB"), Log: log, Now: r.clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := e2.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ts := e2.Tunnels()
	if len(ts) != 1 || ts[0].State != StateUp || ts[0].Conn != up.Conn || ts[0].Gateway != "192.0.2.2" {
		t.Fatalf("adopted %+v", ts)
	}
	// A second ACQUIRE for the pair starts nothing new.
	e2.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	if n := len(r.ch.initiated); n != 1 {
		t.Errorf("initiated %d times", n)
	}
	// Its Delete cleans up what the first engine installed.
	e2.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: &vici.IKESA{Name: up.Conn}})
	if len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32"))+len(r.policies(t, xfrm.Allow, "10.2.0.10/32", "10.1.0.10/32")) != 0 {
		t.Error("adopted tunnel's allow policies left after its Delete")
	}
}

// TestRequest: a program's request starts OE where the group only responds
// (clear-or-private), waits for the outcome, reuses an up tunnel, reports a
// failure's reason, and refuses destinations OE does not apply to.
func TestRequest(t *testing.T) {
	tests := []struct {
		name      string
		groups    string
		dst       string
		records   bool
		ikeFail   bool
		state     State
		reason    string
		ineligile string
	}{
		{"clear-or-private with records -> up", "clear-or-private=10.2.0.0/16", "10.2.0.10", true, false, StateUp, "", ""},
		{"private-or-clear without records -> failed", "private-or-clear=10.2.0.0/16", "10.2.0.10", false, false, StateFailed, "no OE records", ""},
		{"private, IKE fails -> failed", "private=10.2.0.0/16", "10.2.0.10", true, true, StateFailed, "AUTHENTICATION_FAILED", ""},
		{"clear group -> not eligible", "clear=10.2.0.0/16", "10.2.0.10", true, false, "", "", "policy group is clear"},
		{"own address -> not eligible", "private=10.2.0.0/16", "10.2.99.1", true, false, "", "", "exempt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRig(t, tt.groups, nil)
			dst := netip.MustParseAddr(tt.dst)
			if tt.records {
				r.dns.set(dst, plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}, DNSSEC: plugins.DNSSECSecure})
			}
			if tt.ikeFail {
				r.ch.fail["192.0.2.2"] = errors.New("AUTHENTICATION_FAILED")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			pair := xfrm.Pair{Src: netip.MustParseAddr("10.1.0.10"), Dst: dst}
			tu, err := r.e.Request(ctx, pair)
			if tt.ineligile != "" {
				var ne *NotEligibleError
				if !errors.As(err, &ne) || !strings.Contains(err.Error(), tt.ineligile) {
					t.Fatalf("err = %v, want NotEligibleError with %q", err, tt.ineligile)
				}
				if len(r.e.Tunnels()) != 0 || len(r.ch.initiated) != 0 {
					t.Errorf("OE started anyway: %+v %v", r.e.Tunnels(), r.ch.initiated)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tu.State != tt.state || !strings.Contains(tu.Reason, tt.reason) || tu.Pair != pair {
				t.Fatalf("tunnel %+v, want state %s reason %q", tu, tt.state, tt.reason)
			}
			// Asking again reuses what stands: no second negotiation.
			n := len(r.ch.initiated)
			again, err := r.e.Request(ctx, pair)
			if err != nil || again.State != tt.state || len(r.ch.initiated) != n {
				t.Errorf("second request: %+v %v, initiations %d -> %d", again, err, n, len(r.ch.initiated))
			}
		})
	}
}

// TestRequestWaitsAndTimesOut: a request waits for a negotiation in
// progress and gives up when its context ends.
func TestRequestWaitsAndTimesOut(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.dns.block = make(chan struct{}) // DNS hangs
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := r.e.Request(ctx, xfrm.Pair{Src: netip.MustParseAddr("10.1.0.10"), Dst: netip.MustParseAddr("10.2.0.10")})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "resolving") {
		t.Fatalf("err = %v, want a deadline while resolving", err)
	}
	close(r.dns.block)
}

// TestConnLinger: a closed responder's conn stays loaded while its DNS
// answer is valid (at most conn_linger), so the same initiator's next
// IKE_SA finds it (no load-conn, no race with its IKE_AUTH); a changed key
// loads again; expiry and Stop unload it. Initiator conns are not parked.
func TestConnLinger(t *testing.T) {
	r := newRig(t, "private-or-clear=0.0.0.0/0", nil)
	peer := netip.MustParseAddr("192.0.2.2")
	conn := "obol-oe-r-192-0-2-2"
	answer := func() plugins.LookupAnswer {
		return plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 65536)}, DNSSEC: plugins.DNSSECSecure, TTL: 5 * time.Minute}
	}
	r.dns.set(peer, answer())
	base := r.ch.loadCount() // the acceptor conn
	hostSA := &vici.IKESA{Name: conn, RemoteHost: peer,
		Children: []vici.ChildSA{{Name: "accept", UniqueID: 9, LocalTS: []string{"192.0.2.1/32"}, RemoteTS: []string{"192.0.2.2/32"}}}}
	// The initiator comes, its tunnel comes up and is closed by a Delete.
	session := func() {
		t.Helper()
		r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "192.0.2.2 is initiating an IKE_SA"}})
		deadline := time.Now().Add(5 * time.Second)
		for {
			r.e.mu.Lock()
			tu := r.e.tunnels[xfrm.Pair{Src: netip.MustParseAddr("192.0.2.1"), Dst: peer}]
			settled := tu != nil && tu.State != StateResolving
			r.e.mu.Unlock()
			if settled {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the responder never settled")
			}
			time.Sleep(2 * time.Millisecond)
		}
		r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: hostSA})
		r.tunnel(t, "192.0.2.1", "192.0.2.2", StateUp)
		r.e.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: hostSA})
		if len(r.e.Tunnels()) != 0 || len(r.policies(t, xfrm.Allow, "192.0.2.1/32", "192.0.2.2/32")) != 0 {
			t.Fatalf("closed tunnel left state: %+v", r.e.Tunnels())
		}
	}
	session()
	if n := r.ch.loadCount() - base; n != 1 {
		t.Fatalf("first session: %d load-conns", n)
	}
	if _, ok := r.ch.conn(conn); !ok {
		t.Fatal("the conn was unloaded though its DNS answer is valid")
	}
	// The same initiator again: nothing to load.
	session()
	if n := r.ch.loadCount() - base; n != 1 {
		t.Errorf("the returning initiator's conn was loaded again (%d load-conns)", n)
	}
	// A new key in DNS: the parked conn is not the one wanted, load again.
	r.dns.set(peer, answer())
	session()
	if n := r.ch.loadCount() - base; n != 2 {
		t.Errorf("a changed key did not load the conn again (%d load-conns)", n)
	}
	// Left alone past conn_linger (2m, under the TTL): unloaded.
	r.advance(2*time.Minute + time.Second)
	r.e.Tick(context.Background())
	if _, ok := r.ch.conn(conn); ok {
		t.Error("the parked conn outlived conn_linger")
	}
	// An initiator's conn is never parked, whatever the TTL: it goes with
	// its tunnel.
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.3", 10)}, TTL: 5 * time.Minute})
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
	r.e.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: &vici.IKESA{Name: "obol-oe-10-1-0-10-10-2-0-10"}})
	if _, ok := r.ch.conn("obol-oe-10-1-0-10-10-2-0-10"); ok {
		t.Error("initiator conn left loaded")
	}
	// Parked at Stop: unloaded with everything else.
	session()
	if err := r.e.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.ch.conn(conn); ok {
		t.Error("Stop left a parked conn loaded")
	}
}

// TestConnLingerOff: conn_linger = "0s" unloads a closed responder's conn
// at once whatever the TTL.
func TestConnLingerOff(t *testing.T) {
	r := newRig(t, "private-or-clear=0.0.0.0/0", func(c *Config) {
		off := Duration(0)
		c.ConnLinger = &off
	})
	r.dns.set(netip.MustParseAddr("192.0.2.2"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 65536)}, TTL: 5 * time.Minute})
	r.e.HandleEvent(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "192.0.2.2 is initiating an IKE_SA"}})
	deadline := time.Now().Add(5 * time.Second)
	for _, ok := r.ch.conn("obol-oe-r-192-0-2-2"); !ok; _, ok = r.ch.conn("obol-oe-r-192-0-2-2") {
		if time.Now().After(deadline) {
			t.Fatal("no responder conn")
		}
		time.Sleep(2 * time.Millisecond)
	}
	hostSA := &vici.IKESA{Name: "obol-oe-r-192-0-2-2", RemoteHost: netip.MustParseAddr("192.0.2.2"),
		Children: []vici.ChildSA{{Name: "accept", UniqueID: 9, LocalTS: []string{"192.0.2.1/32"}, RemoteTS: []string{"192.0.2.2/32"}}}}
	r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: hostSA})
	r.e.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: hostSA})
	if _, ok := r.ch.conn("obol-oe-r-192-0-2-2"); ok {
		t.Error("responder conn left loaded with conn_linger off")
	}
}

// trapReqID is the reqid of the kernel trap covering dst.
func (r *rig) trapReqID(t *testing.T, dst string) uint32 {
	t.Helper()
	ps, err := r.spd.Policies(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	i := trapFor(ps, xfrm.Pair{Src: netip.MustParseAddr("10.1.0.10"), Dst: netip.MustParseAddr(dst)})
	if i < 0 {
		t.Fatalf("no trap covers %s: %v", dst, ps)
	}
	return ps[i].ReqID
}

// TestRearmAfterClose: when a pair's tunnel closes or its failure shunt
// expires, the trap covering it gets the next reqid generation in the
// kernel, so the pair's next packet raises a new ACQUIRE despite the
// larval state of its last one; the trap never leaves the kernel.
func TestRearmAfterClose(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	first := r.trapReqID(t, "10.2.0.10")
	if !xfrm.DefaultOwner().IsReqID(first) {
		t.Fatalf("trap reqid %#x is not obold's", first)
	}
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}})
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
	if got := r.trapReqID(t, "10.2.0.10"); got != first {
		t.Fatalf("trap re-armed while the tunnel is up: %#x", got)
	}
	r.e.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: &vici.IKESA{Name: "obol-oe-10-1-0-10-10-2-0-10"}})
	second := r.trapReqID(t, "10.2.0.10")
	if second != xfrm.NextReqID(first) {
		t.Fatalf("after the tunnel closed the trap's reqid is %#x, want %#x", second, xfrm.NextReqID(first))
	}
	if n := len(r.policies(t, xfrm.Trap, "0.0.0.0/0", "10.2.0.0/16")); n != 1 {
		t.Fatalf("%d traps for the group after re-arming", n)
	}
	// A failure, then its shunt expires: re-armed again.
	r.ch.fail["192.0.2.2"] = errors.New("AUTHENTICATION_FAILED")
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	r.tunnel(t, "10.1.0.10", "10.2.0.10", StateFailed)
	shunt := r.policies(t, xfrm.Block, "10.1.0.10/32", "10.2.0.10/32")
	if len(shunt) != 1 {
		t.Fatalf("failure shunt %+v", shunt)
	}
	r.e.ShuntExpired(shunt[0])
	if got := r.trapReqID(t, "10.2.0.10"); got != xfrm.NextReqID(second) {
		t.Errorf("after the shunt expired the trap's reqid is %#x, want %#x", got, xfrm.NextReqID(second))
	}
}

// TestChildUpEventLocatesIKESA: when charon's child-updown comes before
// initiate's answer, the initiator takes the IKE_SA holding its CHILD_SA
// from it (no list-sas), even when charon put it in another conn's IKE_SA:
// that IKE_SA's Delete then closes the pair.
func TestChildUpEventLocatesIKESA(t *testing.T) {
	r := newRig(t, "private=10.2.0.0/16", nil)
	r.dns.set(netip.MustParseAddr("10.2.0.10"), plugins.LookupAnswer{Gateways: []plugins.Gateway{gateway(t, "192.0.2.2", 10)}})
	other := &vici.IKESA{Name: "obol-oe-10-1-0-10-10-2-0-99", RemoteHost: netip.MustParseAddr("192.0.2.2"),
		Children: []vici.ChildSA{{Name: "oe", UniqueID: 3, LocalTS: []string{"10.1.0.10/32"}, RemoteTS: []string{"10.2.0.10/32"}}}}
	r.ch.onInitiate = func(string) {
		r.e.HandleEvent(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: other})
	}
	r.e.HandleAcquire(acquire("10.1.0.10", "10.2.0.10", 0))
	r.tunnel(t, "10.1.0.10", "10.2.0.10", StateUp)
	r.e.HandleEvent(vici.Event{Kind: vici.EventIKEUpDown, SA: other})
	if len(r.e.Tunnels()) != 0 || len(r.policies(t, xfrm.Allow, "10.1.0.10/32", "10.2.0.10/32")) != 0 {
		t.Fatalf("the Delete of the IKE_SA holding the pair left it up: %+v", r.e.Tunnels())
	}
}

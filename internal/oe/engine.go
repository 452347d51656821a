// Package oe is obold's opportunistic encryption engine: it turns kernel
// ACQUIREs into per-peer charon conns with keys found in DNS, answers peers
// that initiate OE to this host, and keeps the kernel's traps, shunts and
// per-pair allow policies in step (specs/opportunistic-encryption.txt).
package oe

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/obol-ipsec/obol/internal/policy"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/vici"
)

// Charon is what the engine asks of charon (*vici.Client satisfies it).
type Charon interface {
	LoadConn(ctx context.Context, conn vici.Conn) error
	UnloadConn(ctx context.Context, name string) error
	Initiate(ctx context.Context, ike, child string) error
	Terminate(ctx context.Context, sel vici.SASelector) error
	ListSAs(ctx context.Context, sel vici.SASelector) ([]vici.IKESA, error)
	// ListConns lists charon's conns: OE keeps away from those obold does
	// not own (name "" lists all).
	ListConns(ctx context.Context, name string) ([]vici.ConnInfo, error)
	// LoadShared and UnloadShared carry the pre-shared keys an auth
	// method gives for a peer (obold's own ids: the OE conn's name).
	LoadShared(ctx context.Context, s vici.Shared) error
	UnloadShared(ctx context.Context, id string) error
}

// Kernel installs obold's XFRM policies (*xfrm.Installer satisfies it).
type Kernel interface {
	Install(ctx context.Context, p xfrm.Policy) (xfrm.Policy, error)
	Remove(ctx context.Context, p xfrm.Policy) error
	RemoveAll(ctx context.Context) (int, error)
	// List returns obold's policies in the kernel (for adopting tunnels).
	List(ctx context.Context) ([]xfrm.Policy, error)
}

// State of a tunnel.
type State string

const (
	StateResolving   State = "resolving"
	StateNegotiating State = "negotiating"
	StateUp          State = "up"
	StateFailed      State = "failed" // a failure shunt stands
)

// Tunnel is what obold knows of one OE pair.
type Tunnel struct {
	Pair      xfrm.Pair            `json:"pair"`
	Role      string               `json:"role"` // "initiator" or "responder"
	State     State                `json:"state"`
	Group     policy.Group         `json:"group"`
	Conn      string               `json:"conn"`
	Gateway   string               `json:"gateway,omitempty"`    // the peer's IKE address
	KeySource string               `json:"key_source,omitempty"` // the DNS record the peer's key came from
	DNSSEC    plugins.DNSSECStatus `json:"dnssec,omitempty"`
	// Method is how the peer's keys were trusted ([auth] methods: DNSSEC,
	// BTNS, LEAPOFFAITH, PRESHAREDKEY); the token API reports it.
	Method string    `json:"method,omitempty"`
	Reason string    `json:"reason,omitempty"` // why it failed
	Since  time.Time `json:"since"`
	// LifespanEnd is when the tunnel's use is next checked (up), or when
	// its failure shunt ends (failed).
	LifespanEnd time.Time `json:"lifespan_end"`
	// Idle is how long since the last packet, as of the last check.
	Idle     time.Duration `json:"idle"`
	Attempts int           `json:"attempts"`

	shunt *xfrm.Policy
	allow []xfrm.Policy
	bytes uint64 // traffic counted at the last lifespan check
	// peerKey is the key DNS gave for the peer, when it gave exactly one
	// (with several, charon does not say which one authenticated).
	peerKey plugins.PublicKey
	// via is the configured conn whose tunnel this refused pair's traffic
	// was let into; when that tunnel goes down the allow must go at once.
	via string
	// closed: charon reported the conn's SA down while obold still
	// negotiated (the peer closed the CHILD_SA at once, e.g. refusing the
	// client): up must not allow the pair's traffic past the trap.
	closed bool
	// ike is the IKE_SA (its peer config's name) that holds the pair's
	// CHILD_SA: charon puts a pair's CHILD_SA into any IKE_SA between the
	// two gateways whose peer config compares equal, so it may not be
	// Conn. The CHILD_SA itself is found by its selectors (the pair).
	ike string
	// ownsConn: teardown unloads Conn (the conn this record loaded).
	ownsConn bool
	// loaded is what this record loaded as Conn (no PSK), and connUntil
	// how long its DNS answer may be cached: teardown parks it till then.
	loaded    vici.Conn
	connUntil time.Time
	// gwLevel marks a responder's record of an initiating gateway (pair =
	// the IKE addresses) that carries no CHILD_SA of its own: its clients'
	// pairs have records of their own.
	gwLevel bool
}

// Params are the engine's inputs besides its Config.
type Params struct {
	Charon   Charon
	Kernel   Kernel
	Resolver plugins.Resolver
	Band     xfrm.Band
	// Userspace is true when charon's datapath is kernel-libipsec: the
	// kernel's traps then still hold a pair's traffic once its tunnel is
	// up, and obold adds per-pair allow policies.
	Userspace bool
	// Prefix is obold's conn name prefix; OE conns are Prefix+"oe-...".
	Prefix string
	// KeyPEM is our private key, PubPEM its public half.
	KeyPEM, PubPEM []byte
	// LocalAddrs are this host's own addresses: OE never applies to them.
	LocalAddrs []netip.Addr
	// MaxInitiates is how many initiates the engine runs at once; more
	// would only queue inside the VICI client, where the wait would eat
	// into ike_timeout. Default vici.DefaultMaxControlCalls (the client's).
	MaxInitiates int
	Log          *slog.Logger
	Now          func() time.Time
}

// Engine runs OE. All methods are safe for concurrent use.
type Engine struct {
	cfg Config
	p   Params
	// ourKey is our public key in DNS form (for channel bindings).
	ourKey plugins.PublicKey
	pol    *policy.Policy
	id     string // our IKE identity on Address (logs, the acceptor conn)
	// local are our IKE addresses (Address, Address6), one per family.
	local []netip.Addr
	log   *slog.Logger

	mu      sync.Mutex
	tunnels map[xfrm.Pair]*Tunnel
	pending int
	backoff map[netip.Addr]backoff
	// untracked counts ACQUIREs shunted without state (max_tracked reached).
	untracked int
	base      []xfrm.Policy // bypasses, traps, blocks
	// changed is closed (and replaced) whenever a tunnel settles or goes:
	// Request's waiters watch it.
	changed chan struct{}
	wg      sync.WaitGroup
	ctx     context.Context
	stopped bool

	// parked are closed tunnels' conns left loaded (ConnLinger), by name.
	parked map[string]parkedConn
	// childUp is, per pair, the IKE_SA of the last CHILD_SA charon
	// reported up for it, and when: an initiator that finds its pair here
	// needs no list-sas to learn where charon put the CHILD_SA.
	childUp map[xfrm.Pair]seenChild

	// initKeys are the gateway keys pinned in each initiator conn (PEM),
	// taken from a client's record: the conn's accepting child may carry
	// another client only if its DNS vouches for these keys too.
	initKeys map[string][]string

	// cfgMu guards cfgSet, the cached conns obold does not own, and
	// cfgRefreshing; cfgFetchMu serializes fetches from charon.
	cfgMu         sync.Mutex
	cfgSet        configuredSet
	cfgFetchMu    sync.Mutex
	cfgPrefetched chan struct{}      // closed when the last prefetch ended (e.mu)
	stopRefresh   context.CancelFunc // ends refreshConfigured (Stop, Leave)
	// initiating holds one token per initiate in progress (MaxInitiates):
	// ike_timeout starts once one is held.
	initiating chan struct{}
}

type backoff struct {
	until time.Time
	next  time.Duration
}

// parkedConn is a closed responder's conn left loaded in charon while the
// DNS answer it came from is valid (see Config.ConnLinger). Initiator
// conns are never parked: they carry the pair's own child besides the
// accepting one, and charon would pick them to answer the peer's next
// initiation with that child, which the responder's checks do not take.
type seenChild struct {
	ike string
	at  time.Time
}

// noteChildUp records, for every pair sa's CHILD_SAs carry, that sa holds
// it (bounded: entries older than a minute go first).
func (e *Engine) noteChildUp(sa *vici.IKESA) {
	now := e.p.Now()
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.childUp) >= 4096 {
		for p, c := range e.childUp {
			if now.Sub(c.at) > time.Minute {
				delete(e.childUp, p)
			}
		}
	}
	for _, ch := range sa.Children {
		if p, ok := childPair(ch); ok && len(e.childUp) < 8192 {
			e.childUp[p] = seenChild{ike: sa.Name, at: now}
		}
	}
}

// seenUp takes the IKE_SA charon reported holding pair's CHILD_SA since
// since, if its event came already.
func (e *Engine) seenUp(pair xfrm.Pair, since time.Time) (string, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.childUp[pair]
	delete(e.childUp, pair)
	return c.ike, ok && !c.at.Before(since)
}

type parkedConn struct {
	conn  vici.Conn
	until time.Time
}

// loadedFor records on t the conn it loaded (or took back) from an answer
// valid for ttl, so teardown may park it; PSK conns are never parked (the
// secret is not part of what unpark compares).
func (e *Engine) loadedFor(t *Tunnel, conn vici.Conn, gw plugins.Gateway, ttl time.Duration) {
	e.mu.Lock()
	defer e.mu.Unlock()
	t.loaded, t.connUntil = vici.Conn{}, time.Time{}
	if len(gw.PSK) > 0 {
		return
	}
	t.loaded, t.connUntil = conn, e.p.Now().Add(min(ttl, time.Duration(*e.cfg.ConnLinger)))
}

// park keeps t's conn loaded till its answer expires instead of
// unloading it; false when it must go now.
func (e *Engine) park(t *Tunnel) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped || t.loaded.Name != t.Conn || !e.p.Now().Before(t.connUntil) {
		return false
	}
	e.parked[t.Conn] = parkedConn{conn: t.loaded, until: t.connUntil}
	return true
}

// unpark takes back a parked conn that equals conn and is still valid:
// it is loaded already. A different one is forgotten (loading conn
// replaces it in charon).
func (e *Engine) unpark(conn vici.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	p, ok := e.parked[conn.Name]
	delete(e.parked, conn.Name)
	return ok && e.p.Now().Before(p.until) && reflect.DeepEqual(p.conn, conn)
}

// unloadParked unloads the parked conns expired at now (all with force).
func (e *Engine) unloadParked(ctx context.Context, now time.Time, force bool) {
	e.mu.Lock()
	var names []string
	for name, p := range e.parked {
		if force || !now.Before(p.until) {
			names = append(names, name)
			delete(e.parked, name)
		}
	}
	e.mu.Unlock()
	for _, name := range names {
		if err := e.unloadConn(ctx, name); err != nil {
			e.log.Debug("unload parked OE conn", "conn", name, "err", err)
		}
	}
}

// New checks cfg and makes an engine; Start installs its kernel policies.
func New(cfg Config, p Params) (*Engine, error) {
	cfg = cfg.WithDefaults()
	if ps := cfg.Validate(); len(ps) > 0 {
		return nil, fmt.Errorf("oe: %s: %s", ps[0].Path, ps[0].Msg)
	}
	pol, _ := policy.New("oe.group", cfg.Groups)
	if p.Log == nil {
		p.Log = slog.Default()
	}
	if p.Now == nil {
		p.Now = time.Now
	}
	if p.Band == (xfrm.Band{}) {
		p.Band = xfrm.DefaultBand
	}
	if p.MaxInitiates <= 0 {
		p.MaxInitiates = vici.DefaultMaxControlCalls
	}
	e := &Engine{cfg: cfg, p: p, pol: pol, log: p.Log, tunnels: map[xfrm.Pair]*Tunnel{}, backoff: map[netip.Addr]backoff{},
		initiating: make(chan struct{}, p.MaxInitiates), changed: make(chan struct{}),
		initKeys: map[string][]string{}, parked: map[string]parkedConn{}, childUp: map[xfrm.Pair]seenChild{}}
	e.local = cfg.IKEAddrs()
	e.id = e.idFor(e.local[0])
	if blk, _ := pem.Decode(p.PubPEM); blk != nil {
		if pub, err := x509.ParsePKIXPublicKey(blk.Bytes); err == nil {
			e.ourKey, _ = resolver.NewPublicKey(pub)
		}
	}
	for _, addr := range e.local {
		pol.Exempt(netip.PrefixFrom(addr, addr.BitLen()), "this host's IKE address")
	}
	for _, a := range p.LocalAddrs {
		pol.Exempt(netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), "one of this host's own addresses")
	}
	if s, err := resolver.ServerAddr(cfg.DNS.Server); err == nil {
		pol.Exempt(netip.PrefixFrom(s.Addr(), s.Addr().BitLen()), "the DNS resolver")
	}
	for _, c := range cfg.Protect {
		// Traffic between our own clients never leaves through us.
		pol.Exempt(netip.MustParsePrefix(c), "this gateway's own LAN")
	}
	return e, nil
}

// localFor is our IKE address of peer's family; invalid when we have none
// (an IPv4-only host and an IPv6 peer).
func (e *Engine) localFor(peer netip.Addr) netip.Addr {
	peer = peer.Unmap()
	for _, a := range e.local {
		if a.Is4() == peer.Is4() {
			return a
		}
	}
	return netip.Addr{}
}

// idFor is our IKE identity when we speak IKE from local: the configured
// identity, else the address itself (peers look its key up in its reverse
// map, so each family's address is its own identity).
func (e *Engine) idFor(local netip.Addr) string {
	if e.cfg.Identity != "" {
		return e.cfg.Identity
	}
	return local.String()
}

// anyOf is the whole address space of a's family (0.0.0.0/0 or ::/0).
func anyOf(a netip.Addr) netip.Prefix {
	if a.Unmap().Is4() {
		return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
}

// hostPrefix is a as a /32 or /128.
func hostPrefix(a netip.Addr) netip.Prefix { return netip.PrefixFrom(a, a.BitLen()) }

// Policy exposes the compiled policy groups (for obolctl lookup).
func (e *Engine) Policy() *policy.Policy { return e.pol }

// Start installs the bypasses (IKE, the resolver, our LAN), the traps for
// groups that initiate OE and the blocks. It runs until ctx ends; Stop
// undoes everything.
func (e *Engine) Start(ctx context.Context) error {
	e.mu.Lock()
	e.ctx = ctx
	e.mu.Unlock()
	want := e.basePolicies()
	var installed []xfrm.Policy
	for _, p := range want {
		got, err := e.p.Kernel.Install(ctx, p)
		if err != nil {
			return fmt.Errorf("oe: install %s %s -> %s: %w", p.Action, p.Src, p.Dst, err)
		}
		installed = append(installed, got)
	}
	e.mu.Lock()
	e.base = installed
	e.mu.Unlock()
	if err := e.loadAcceptor(ctx); err != nil {
		return err
	}
	if n, err := e.adopt(ctx); err != nil {
		e.log.Warn("cannot adopt OE tunnels left by an earlier obold", "err", err)
	} else if n > 0 {
		e.log.Info("adopted OE tunnels left by an earlier obold", "tunnels", n)
	}
	e.prefetchConfigured()
	rctx, stopRefresh := context.WithCancel(ctx)
	e.mu.Lock()
	e.stopRefresh = stopRefresh
	e.mu.Unlock()
	e.wg.Add(1)
	go func() {
		defer e.wg.Done()
		e.refreshConfigured(rctx)
	}()
	e.log.Info("OE started", "identity", e.id, "addresses", e.local, "traps", len(e.pol.Prefixes(policy.Private, policy.PrivateOrClear)), "policies", len(installed))
	return nil
}

// basePolicies are the policies obold keeps while OE runs: per family it
// has an IKE address for, bypasses for IKE (and, for IPv6, for what IPv6
// itself needs); bypasses for the resolver, our LAN and our own addresses
// under a trap; the traps; the blocks.
func (e *Engine) basePolicies() []xfrm.Policy {
	var want []xfrm.Policy
	bypass := func(a netip.Addr) uint32 { return e.p.Band.Priority(xfrm.RoleBypass, anyOf(a), anyOf(a)) }
	for _, l := range e.local {
		if l.Is4() {
			want = append(want, xfrm.IKEBypass(4, bypass(l))...)
			continue
		}
		want = append(want, xfrm.IKEBypass(6, bypass(l))...)
		want = append(want, xfrm.IPv6Bypass(bypass(l))...)
	}
	if s, err := resolver.ServerAddr(e.cfg.DNS.Server); err == nil {
		dns, src := hostPrefix(s.Addr().Unmap()), anyOf(s.Addr())
		want = append(want,
			xfrm.Policy{Src: src, Dst: dns, Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: bypass(s.Addr())},
			xfrm.Policy{Src: src, Dst: dns, Dir: xfrm.DirFwd, Action: xfrm.Allow, Priority: bypass(s.Addr())})
	}
	for _, c := range e.cfg.Protect {
		lan := netip.MustParsePrefix(c)
		want = append(want, xfrm.Policy{Src: anyOf(lan.Addr()), Dst: lan, Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: bypass(lan.Addr())})
	}
	traps := e.pol.Prefixes(policy.Private, policy.PrivateOrClear)
	// Our own addresses under a trap (a ::/0 group covers them): traffic
	// to ourselves goes through XFRM too, and OE never applies to it.
	var own []netip.Addr
	for _, a := range append(append([]netip.Addr(nil), e.local...), e.p.LocalAddrs...) {
		a = a.Unmap()
		// Link-local addresses are bypassed whole (IPv6Bypass).
		if a.Zone() != "" || a.IsLinkLocalUnicast() || slices.Contains(own, a) || !slices.ContainsFunc(traps, func(p netip.Prefix) bool { return p.Contains(a) }) {
			continue
		}
		own = append(own, a)
		want = append(want, xfrm.Policy{Src: anyOf(a), Dst: hostPrefix(a), Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: e.p.Band.Priority(xfrm.RoleBypass, anyOf(a), hostPrefix(a))})
	}
	for _, pr := range traps {
		src := anyOf(pr.Addr())
		want = append(want, xfrm.Policy{Src: src, Dst: pr, Dir: xfrm.DirOut, Action: xfrm.Trap, Priority: e.p.Band.Priority(xfrm.RoleTrap, src, pr)})
	}
	for _, pr := range e.pol.Prefixes(policy.Block) {
		src := anyOf(pr.Addr())
		want = append(want, xfrm.Policy{Src: src, Dst: pr, Dir: xfrm.DirOut, Action: xfrm.Block, Priority: e.p.Band.Priority(xfrm.RoleShunt, src, pr)})
	}
	return firstPerSelector(want)
}

// firstPerSelector keeps the first policy of each selector. The kernel
// holds one policy per selector and direction, whatever the priority: a
// group CIDR that is exactly an exempt address (the resolver in a private
// /32) would otherwise replace its bypass with a trap and cut DNS off.
// Bypasses come first in want, so they win, as exemptions must.
func firstPerSelector(ps []xfrm.Policy) []xfrm.Policy {
	type sel struct {
		src, dst         netip.Prefix
		dir              xfrm.Dir
		proto            uint8
		srcPort, dstPort uint16
	}
	seen := make(map[sel]bool, len(ps))
	out := ps[:0]
	for _, p := range ps {
		k := sel{p.Src, p.Dst, p.Dir, p.Proto, p.SrcPort, p.DstPort}
		if seen[k] {
			continue
		}
		seen[k] = true
		out = append(out, p)
	}
	return out
}

// initiateTries and retryPause shape the retry of one gateway (see
// initiate): the peer's AUTHENTICATION_FAILED on the first try is most
// likely the responder's race (its key lookup lost to our IKE_AUTH), and
// the responder has had a whole round trip to finish it, so the second try
// goes at once; a further one waits retryPause (a slow DNS lookup there).
const (
	initiateTries = 3
	retryPause    = 300 * time.Millisecond
)

// retryWait is how long to wait before try (1-based retries) after err.
func retryWait(try int, err error) time.Duration {
	if try == 1 && isAuthRace(err) {
		return 0
	}
	return retryPause
}

// isAuthRace: the peer refused our authentication (charon's log of the
// failed initiate names the notify), what a responder without our key yet
// answers.
func isAuthRace(err error) bool {
	return err != nil && strings.Contains(err.Error(), "received AUTHENTICATION_FAILED notify")
}

// acceptorName is the conn that lets charon accept IKE_SA_INIT from OE
// peers; without one, charon answers NO_PROPOSAL_CHOSEN before it even logs
// the initiator, and obold never learns whose key to look up.
func (e *Engine) acceptorName() string { return e.p.Prefix + "oe-accept" }

// noPeerID is an identity no peer can present (.invalid cannot be
// registered), so the acceptor conn authenticates nobody: IKE_AUTH finds
// the per-peer conn obold loaded meanwhile, or fails.
const noPeerID = "@no-peer.obol.invalid"

func (e *Engine) loadAcceptor(ctx context.Context) error {
	var remotes []string
	for _, g := range []policy.Group{policy.ClearOrPrivate, policy.PrivateOrClear, policy.Private} {
		for _, p := range e.pol.Prefixes(g) {
			remotes = append(remotes, p.String())
		}
	}
	if len(remotes) == 0 {
		return nil // no group answers OE
	}
	var locals []string
	for _, a := range e.local {
		locals = append(locals, a.String())
	}
	no := false
	err := e.p.Charon.LoadConn(ctx, vici.Conn{
		Name:        e.acceptorName(),
		Version:     2,
		LocalAddrs:  locals,
		RemoteAddrs: remotes,
		Mobike:      &no,
		Local:       []vici.Auth{{Auth: "pubkey", ID: e.id, Pubkeys: [][]byte{e.p.PubPEM}}},
		Remote:      []vici.Auth{{Auth: "pubkey", ID: noPeerID}},
	})
	if err != nil {
		return fmt.Errorf("oe: load the conn that accepts OE initiators: %w", err)
	}
	return nil
}

// ConnName is the conn obold loads for a pair; swanctl names cannot hold dots.
func (e *Engine) ConnName(role string, p xfrm.Pair) string {
	dash := func(a netip.Addr) string { return strings.NewReplacer(".", "-", ":", "-").Replace(a.String()) }
	if role == "responder" {
		return e.p.Prefix + "oe-r-" + dash(p.Dst)
	}
	return e.p.Prefix + "oe-" + dash(p.Src) + "-" + dash(p.Dst)
}

// HandleAcquire starts OE for the pair the kernel trapped. It never blocks:
// DNS and IKE run in their own goroutine.
func (e *Engine) HandleAcquire(a xfrm.Acquire) {
	pair := a.Pair()
	dec := e.pol.Decide(pair.Dst)
	e.mu.Lock()
	if e.stopped || e.ctx == nil {
		e.mu.Unlock()
		return
	}
	if old, busy := e.tunnels[pair]; busy && !(old.Role == "responder" && old.State == StateFailed && old.shunt == nil) {
		e.mu.Unlock()
		return // one ACQUIRE per pair: ports of the first packet do not matter
	}
	if !dec.Group.Initiates() {
		e.mu.Unlock()
		e.log.Debug("ACQUIRE outside OE groups ignored", "pair", pair, "group", dec.Group, "exempt", dec.Exempt)
		return
	}
	e.startLocked(pair, dec)
}

// startLocked starts OE for pair; e.mu is held and is released.
func (e *Engine) startLocked(pair xfrm.Pair, dec policy.Decision) {
	now := e.p.Now()
	if len(e.tunnels) >= e.cfg.MaxTracked {
		e.untracked++
		n := e.untracked
		e.mu.Unlock()
		// No state in obold: the kernel's shunt alone holds the pair (it
		// expires by itself, and the next packet tries again).
		e.installShunt(e.context(), &Tunnel{Pair: pair}, shuntAction(dec), dec.ShuntLifetime)
		if n == 1 || n%1000 == 0 {
			e.log.Warn("OE tracks max_tracked pairs already; failure shunts only", "max_tracked", e.cfg.MaxTracked, "untracked", n)
		}
		return
	}
	t := &Tunnel{Pair: pair, Role: "initiator", State: StateResolving, Group: dec.Group, Conn: e.ConnName("initiator", pair), Since: now, ownsConn: true}
	e.tunnels[pair] = t
	if b, ok := e.backoff[pair.Dst]; ok && now.Before(b.until) {
		e.mu.Unlock()
		e.fail(t, dec, fmt.Sprintf("backing off after a failure until %s", b.until.Format(time.TimeOnly)), false)
		return
	}
	if e.pending >= e.cfg.MaxPending {
		e.mu.Unlock()
		e.fail(t, dec, fmt.Sprintf("too many negotiations in progress (max_pending = %d)", e.cfg.MaxPending), false)
		return
	}
	e.pending++
	ctx := e.ctx
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		defer func() {
			e.mu.Lock()
			e.pending--
			e.mu.Unlock()
		}()
		e.initiate(ctx, t, dec)
	}()
}

func (e *Engine) setState(t *Tunnel, s State, reason string) {
	e.mu.Lock()
	t.State, t.Reason = s, reason
	e.mu.Unlock()
}

// notifyLocked wakes Request's waiters; e.mu is held.
func (e *Engine) notifyLocked() {
	close(e.changed)
	e.changed = make(chan struct{})
}

// NotEligibleError: OE cannot be asked for this destination (its group is
// clear or block, or it is exempt); Reason says which.
type NotEligibleError struct {
	Dst    netip.Addr
	Group  policy.Group
	Reason string
}

func (e *NotEligibleError) Error() string {
	return fmt.Sprintf("OE does not apply to %s: %s", e.Dst, e.Reason)
}

// Request brings up OE for pair as an ACQUIRE would, also where the group
// only responds (clear-or-private): a program asked for protection. It
// waits until the pair's tunnel is up or failed, or ctx ends, and returns
// a copy of the tunnel; a failed one carries its Reason. A destination OE
// does not apply to gives a *NotEligibleError.
func (e *Engine) Request(ctx context.Context, pair xfrm.Pair) (Tunnel, error) {
	dec := e.pol.Decide(pair.Dst)
	if dec.Exempt != "" {
		return Tunnel{}, &NotEligibleError{Dst: pair.Dst, Group: dec.Group, Reason: "exempt from OE (" + dec.Exempt + ")"}
	}
	if !dec.Group.Responds() {
		return Tunnel{}, &NotEligibleError{Dst: pair.Dst, Group: dec.Group, Reason: "its policy group is " + string(dec.Group)}
	}
	e.mu.Lock()
	if e.stopped || e.ctx == nil {
		e.mu.Unlock()
		return Tunnel{}, errors.New("the OE engine is not running")
	}
	if _, busy := e.tunnels[pair]; !busy {
		e.startLocked(pair, dec) // releases e.mu
		e.mu.Lock()
	}
	for {
		t, ok := e.tunnels[pair]
		if !ok {
			e.mu.Unlock()
			return Tunnel{}, fmt.Errorf("the OE tunnel for %s went away while it was being set up; ask again", pair)
		}
		if t.State == StateUp || t.State == StateFailed {
			c := *t
			c.shunt, c.allow = nil, nil
			e.mu.Unlock()
			return c, nil
		}
		wait := e.changed
		e.mu.Unlock()
		select {
		case <-wait:
		case <-ctx.Done():
			return Tunnel{}, fmt.Errorf("OE for %s still %s: %w", pair, t.State, ctx.Err())
		}
		e.mu.Lock()
	}
}

// initiate resolves the peer and tries its gateways in order.
func (e *Engine) initiate(ctx context.Context, t *Tunnel, dec policy.Decision) {
	pair := t.Pair
	if dec.NegotiationShunt == policy.Pass {
		e.installShunt(ctx, t, xfrm.Allow, 0)
	}
	// A configured (swanctl) conn covering the destination owns it: OE
	// must not install a more specific tunnel beside it.
	if conn, why := e.configuredCollision(ctx, "", netip.Addr{}, pair.Dst); why != "" {
		e.refuseConfigured(ctx, t, dec, conn, why)
		return
	}
	start := e.p.Now()
	e.mu.Lock()
	acquired := t.Since
	e.mu.Unlock()
	ans, err := e.p.Resolver.Lookup(ctx, plugins.LookupQuery{Addr: pair.Dst})
	resolved := e.p.Now()
	e.mu.Lock()
	t.DNSSEC, t.Method = ans.DNSSEC, ans.Method
	e.mu.Unlock()
	if err != nil {
		reason := "DNS: " + err.Error()
		if ans.Unusable != "" {
			reason = "DNS answer unusable: " + ans.Unusable
		}
		e.fail(t, dec, reason, true)
		return
	}
	if len(ans.Gateways) == 0 {
		reason := "no OE records for " + pair.Dst.String() + " in DNS (" + ans.Name + ")"
		if len(ans.Skipped) > 0 {
			reason += "; records skipped: " + strings.Join(ans.Skipped, "; ")
		}
		e.fail(t, dec, reason, true)
		return
	}
	e.setState(t, StateNegotiating, "")
	var reasons []string
	for _, gw := range ans.Gateways {
		addr, ok := e.ikeAddr(gw, pair.Dst)
		if !ok {
			reasons = append(reasons, "gateway "+peerID(gw)+": its addresses in DNS ("+addrList(gw.Addrs)+") hold none of a family this host has an IKE address for (address, address6 in [oe])")
			continue
		}
		gw.Addr = addr
		// Never a conn charon could take for a configured peer's, or one
		// that would take a configured peer's place.
		if _, why := e.configuredCollision(ctx, peerID(gw), gw.Addr, pair.Dst); why != "" {
			reasons = append(reasons, "gateway "+gatewayName(gw)+": OE refused: "+why)
			continue
		}
		e.mu.Lock()
		t.Attempts++
		t.closed = false
		t.Gateway, t.KeySource = gatewayName(gw), gw.Source
		// Known before charon is asked, so the key is there when charon's
		// up event makes the token API look.
		t.peerKey = plugins.PublicKey{}
		if len(gw.Keys) == 1 {
			t.peerKey = gw.Keys[0]
		}
		e.mu.Unlock()
		conn, err := e.peerConn(t.Conn, gw, pair)
		if err == nil {
			e.mu.Lock()
			e.initKeys[t.Conn] = pemStrings(conn.Remote[0].Pubkeys)
			e.mu.Unlock()
			err = e.loadConn(ctx, conn, gw)
		}
		loaded := e.p.Now()
		if err == nil {
			// A responder learns our key only when our IKE_SA_INIT reaches
			// it; if its DNS lookup loses the race with our IKE_AUTH, the
			// first attempt fails and the second finds the key loaded.
			for try := 0; try < initiateTries; try++ {
				if try > 0 {
					e.mu.Lock()
					t.Attempts++
					e.mu.Unlock()
					if wait := retryWait(try, err); wait > 0 {
						select {
						case <-ctx.Done():
						case <-time.After(wait):
						}
					}
				}
				e.mu.Lock()
				t.closed = false
				e.mu.Unlock()
				err = e.initiateOne(ctx, t.Conn)
				if err == nil || ctx.Err() != nil {
					break
				}
				e.log.Info("OE attempt failed", "pair", pair, "gateway", gw.Addr, "try", try+1, "err", err)
			}
		}
		if err == nil {
			established := e.p.Now()
			if ike, ok := e.seenUp(pair, loaded); ok {
				// charon's child-updown came before initiate's answer.
				e.mu.Lock()
				t.ike = ike
				e.mu.Unlock()
			} else {
				e.locate(ctx, t)
			}
			if e.up(ctx, t) {
				e.log.Debug("OE setup phases", "pair", pair, "to_start", start.Sub(acquired), "resolve", resolved.Sub(start), "load_conn", loaded.Sub(resolved),
					"ike", established.Sub(loaded), "locate_allow", e.p.Now().Sub(established))
				return
			}
			err = errors.New("the peer closed the CHILD_SA as soon as it was up (it may refuse this client: see its obolctl oe list)")
		}
		reasons = append(reasons, "gateway "+gw.Addr.String()+": "+err.Error())
		_ = e.unloadConn(context.WithoutCancel(ctx), t.Conn)
		e.mu.Lock()
		delete(e.initKeys, t.Conn)
		e.mu.Unlock()
	}
	e.fail(t, dec, strings.Join(reasons, "; "), true)
}

// locate finds the IKE_SA charon put the pair's CHILD_SA in: any IKE_SA
// up between the two gateways whose peer config compares equal to the
// pair's conn (and, on the other side, any OE conn's), not only t.Conn.
func (e *Engine) locate(ctx context.Context, t *Tunnel) {
	// Usually the CHILD_SA is in the conn's own IKE_SA: list that one
	// first (it is on the setup's path), everything only if it is not.
	for _, sel := range []vici.SASelector{{IKE: t.Conn}, {}} {
		sas, err := e.p.Charon.ListSAs(ctx, sel)
		if err != nil {
			return
		}
		for _, sa := range sas {
			if !strings.HasPrefix(sa.Name, e.p.Prefix+"oe-") {
				continue
			}
			for _, ch := range sa.Children {
				if p, ok := childPair(ch); ok && p == t.Pair {
					e.mu.Lock()
					t.ike = sa.Name
					e.mu.Unlock()
					return
				}
			}
		}
	}
}

// ikeAddr is where IKE goes for gw: its address; for a gateway named by
// FQDN, its first address (from the FQDN's forward map) of our address's
// family; for an @FQDN with no address records, the destination itself
// (an end node speaking for itself with an FQDN identity).
func (e *Engine) ikeAddr(gw plugins.Gateway, dst netip.Addr) (netip.Addr, bool) {
	if gw.Addr.IsValid() {
		return gw.Addr, true
	}
	if gw.FQDN == "" {
		return netip.Addr{}, false
	}
	if len(gw.Addrs) == 0 {
		return dst, true
	}
	// The first address of a family we have an IKE address for.
	for _, a := range gw.Addrs {
		if e.localFor(a).IsValid() {
			return a, true
		}
	}
	return netip.Addr{}, false
}

func addrList(as []netip.Addr) string {
	var ss []string
	for _, a := range as {
		ss = append(ss, a.String())
	}
	return strings.Join(ss, ", ")
}

// pairUnique is the uniqueness policy of OE conns. Every pair to one
// gateway has its own IKE_SA with the same identities and keys, so charon
// takes them for duplicates: "replace" (and "no", on the INITIAL_CONTACT
// each new IKE_SA sends) closes the older ones as soon as the next one is
// up, and with 200 pairs to one gateway almost none stayed up. "never"
// keeps them all (and sends no INITIAL_CONTACT).
const pairUnique = "never"

// initiateOne runs one initiate once a slot is free, with ike_timeout
// counted from then: 200 setups at once queue here, not inside the VICI
// client, where the wait counted against ike_timeout and the last ones
// failed after a fraction of it.
func (e *Engine) initiateOne(ctx context.Context, conn string) error {
	select {
	case e.initiating <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-e.initiating }()
	ictx, cancel := context.WithTimeout(ctx, time.Duration(e.cfg.IKETimeout))
	defer cancel()
	return e.p.Charon.Initiate(ictx, conn, "oe")
}

// peerConn is the per-peer conn: our key and identity, the gateway's DNS
// keys bound to its address, the host pair as traffic selectors.
func (e *Engine) peerConn(name string, gw plugins.Gateway, pair xfrm.Pair) (vici.Conn, error) {
	// IKE goes between addresses of the gateway's family; the tunnel's
	// selectors (the pair) may be of the other one.
	local := e.localFor(gw.Addr)
	if !local.IsValid() {
		return vici.Conn{}, fmt.Errorf("the gateway %s is IPv%d and this host has no IKE address of that family; add address6 to [oe]", gw.Addr, map[bool]int{true: 4, false: 6}[gw.Addr.Unmap().Is4()])
	}
	ours := vici.Auth{Auth: "pubkey", ID: e.idFor(local), Pubkeys: [][]byte{e.p.PubPEM}}
	remote := vici.Auth{Auth: "pubkey", ID: peerID(gw)}
	switch {
	case len(gw.PSK) > 0:
		// Both ends prove the one secret an auth method gave for this
		// peer; loadConn loads it, bound to the two identities only.
		ours, remote = vici.Auth{Auth: "psk", ID: ours.ID}, vici.Auth{Auth: "psk", ID: remote.ID}
	case len(gw.CACerts) > 0:
		// The gateway proves its identity with a certificate from these
		// CAs; we still prove ours with our key.
		for _, der := range gw.CACerts {
			remote.CACerts = append(remote.CACerts, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
		}
	default:
		for _, k := range gw.Keys {
			p, err := resolver.PEM(k)
			if err != nil {
				return vici.Conn{}, fmt.Errorf("key from DNS: %w", err)
			}
			remote.Pubkeys = append(remote.Pubkeys, p)
		}
		if len(remote.Pubkeys) == 0 {
			return vici.Conn{}, errors.New("DNS names the gateway but gives no key for it")
		}
	}
	no := false
	return vici.Conn{
		Name:        name,
		Version:     2,
		LocalAddrs:  []string{local.String()},
		RemoteAddrs: []string{gw.Addr.String()},
		Mobike:      &no,
		KeyingTries: 1,
		Unique:      pairUnique,
		Local:       []vici.Auth{ours},
		Remote:      []vici.Auth{remote},
		Children: []vici.Child{{
			Name:     initiatorChild,
			Mode:     "tunnel",
			LocalTS:  []string{hostPrefix(pair.Src).String()},
			RemoteTS: []string{hostPrefix(pair.Dst).String()},
		}, e.acceptChild(gw.Addr)},
	}, nil
}

// loadConn loads an OE conn, and first the pre-shared key gw carries, if
// any, owned by the conn's two identities alone.
func (e *Engine) loadConn(ctx context.Context, conn vici.Conn, gw plugins.Gateway) error {
	if len(gw.PSK) > 0 {
		owners := []string{conn.Local[0].ID, conn.Remote[0].ID}
		if err := e.p.Charon.LoadShared(ctx, vici.Shared{ID: pskID(conn.Name), Type: "ike", Data: gw.PSK, Owners: owners}); err != nil {
			return fmt.Errorf("load the pre-shared key: %w", err)
		}
	}
	return e.p.Charon.LoadConn(ctx, conn)
}

// unloadConn unloads an OE conn and its pre-shared key (if it had one: an
// unknown secret is no error worth reporting).
func (e *Engine) unloadConn(ctx context.Context, name string) error {
	err := e.p.Charon.UnloadConn(ctx, name)
	_ = e.p.Charon.UnloadShared(ctx, pskID(name))
	return err
}

// pskID names an OE conn's pre-shared key in charon.
func pskID(conn string) string { return conn + "-psk" }

// Child config names in OE conns: initiatorChild carries the pair obold
// initiates; acceptChild takes what the peer initiates.
const (
	initiatorChild = "oe"
	acceptorChild  = "accept"
)

// acceptChild is in every OE conn, initiator ones too: charon puts the
// peer's CHILD_SAs into whichever IKE_SA is up between the two gateways,
// and picks any of our conns with the peer's identity for an IKE_SA the
// peer starts, so each must accept what the responder accepts. Its
// selectors: our addresses and protected LAN, any address of each family
// on the peer's side. Every CHILD_SA it yields is checked for delegation
// (checkAccepted) and closed unless each client behind the peer names it.
func (e *Engine) acceptChild(peer netip.Addr) vici.Child {
	src := e.localFor(peer)
	local := []string{hostPrefix(src).String()}
	remote := []string{anyOf(peer).String()}
	for _, a := range e.local {
		if a != src {
			local = append(local, hostPrefix(a).String())
			remote = append(remote, anyOf(a).String())
		}
	}
	local = append(local, e.cfg.Protect...)
	return vici.Child{Name: acceptorChild, Mode: "tunnel", LocalTS: local, RemoteTS: remote}
}

// peerID is the IKE identity a gateway must prove: its FQDN when DNS gave
// one (its key came from the FQDN's forward map), else its address.
func peerID(gw plugins.Gateway) string {
	if gw.FQDN != "" {
		return "@" + strings.TrimSuffix(gw.FQDN, ".")
	}
	return gw.Addr.String()
}

func gatewayName(gw plugins.Gateway) string {
	if gw.FQDN != "" {
		return peerID(gw) + " (" + gw.Addr.String() + ")"
	}
	return gw.Addr.String()
}

// up: the tunnel carries the pair now. On the userspace datapath the
// kernel's trap would still hold the pair's packets, so allow them.
func (e *Engine) up(ctx context.Context, t *Tunnel) bool {
	e.mu.Lock()
	closed := t.closed
	e.mu.Unlock()
	if closed {
		return false
	}
	var allows []xfrm.Policy
	if e.p.Userspace {
		src := netip.PrefixFrom(t.Pair.Src, t.Pair.Src.BitLen())
		dst := netip.PrefixFrom(t.Pair.Dst, t.Pair.Dst.BitLen())
		prio := e.p.Band.Priority(xfrm.RolePair, src, dst)
		for _, p := range []xfrm.Policy{
			{Src: src, Dst: dst, Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: prio},
			{Src: dst, Dst: src, Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: prio},
		} {
			got, err := e.p.Kernel.Install(ctx, p)
			if err != nil {
				e.log.Error("OE tunnel up but its allow policy failed; its traffic stays trapped", "pair", t.Pair, "err", err)
				continue
			}
			allows = append(allows, got)
		}
	}
	now := e.p.Now()
	e.mu.Lock()
	if t.closed {
		// The SA went down while the allows went in: they must not stay,
		// or the pair's traffic would leave in clear.
		e.mu.Unlock()
		for _, p := range allows {
			_ = e.p.Kernel.Remove(ctx, p)
		}
		return false
	}
	t.State, t.Reason, t.Since = StateUp, "", now
	t.LifespanEnd = now.Add(time.Duration(e.cfg.InitialLifespan))
	t.allow = append(t.allow, allows...)
	delete(e.backoff, t.Pair.Dst)
	e.notifyLocked()
	e.mu.Unlock()
	e.removeShunt(ctx, t)
	e.log.Info("OE tunnel up", "pair", t.Pair, "role", t.Role, "gateway", t.Gateway, "dnssec", t.DNSSEC)
	return true
}

// fail applies the group's failure shunt for the shunt lifetime; under
// private it is always a drop, so nothing leaves in clear.
func (e *Engine) fail(t *Tunnel, dec policy.Decision, reason string, backoffToo bool) {
	ctx := e.context()
	action := shuntAction(dec)
	e.removeShunt(ctx, t)
	e.installShunt(ctx, t, action, dec.ShuntLifetime)
	now := e.p.Now()
	e.mu.Lock()
	t.State, t.Reason, t.Since = StateFailed, reason, now
	t.LifespanEnd = now.Add(dec.ShuntLifetime)
	if backoffToo {
		b := e.backoff[t.Pair.Dst]
		if b.next == 0 {
			b.next = time.Duration(e.cfg.RetryMin)
		} else {
			b.next = min(2*b.next, time.Duration(e.cfg.RetryMax))
		}
		b.until = now.Add(b.next)
		e.backoff[t.Pair.Dst] = b
	}
	e.notifyLocked()
	e.mu.Unlock()
	e.log.Warn("OE failed", "pair", t.Pair, "group", dec.Group, "shunt", action, "for", dec.ShuntLifetime, "reason", reason)
}

// shuntAction is the failure shunt: pass only where the group allows it,
// never under private.
func shuntAction(dec policy.Decision) xfrm.Action {
	if dec.FailureShunt == policy.Pass && dec.Group != policy.Private {
		return xfrm.Allow
	}
	return xfrm.Block
}

func (e *Engine) context() context.Context {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ctx == nil {
		return context.Background()
	}
	return context.WithoutCancel(e.ctx)
}

func (e *Engine) installShunt(ctx context.Context, t *Tunnel, action xfrm.Action, life time.Duration) {
	src := netip.PrefixFrom(t.Pair.Src, t.Pair.Src.BitLen())
	dst := netip.PrefixFrom(t.Pair.Dst, t.Pair.Dst.BitLen())
	p := xfrm.Policy{Src: src, Dst: dst, Dir: xfrm.DirOut, Action: action, Priority: e.p.Band.Priority(xfrm.RoleShunt, src, dst), Lifetime: life}
	got, err := e.p.Kernel.Install(ctx, p)
	if err != nil {
		e.log.Error("cannot install an OE shunt", "pair", t.Pair, "action", action, "err", err)
		return
	}
	e.mu.Lock()
	t.shunt = &got
	e.mu.Unlock()
}

func (e *Engine) removeShunt(ctx context.Context, t *Tunnel) {
	e.mu.Lock()
	s := t.shunt
	t.shunt = nil
	e.mu.Unlock()
	if s != nil {
		if err := e.p.Kernel.Remove(ctx, *s); err != nil {
			e.log.Warn("cannot remove an OE shunt", "pair", t.Pair, "err", err)
		}
	}
}

// ShuntExpired is called when the kernel deleted a shunt at the end of its
// lifetime: the pair's next packet hits the trap and OE is tried again.
func (e *Engine) ShuntExpired(p xfrm.Policy) {
	e.mu.Lock()
	var again []xfrm.Pair
	for pair, t := range e.tunnels {
		if t.shunt != nil && t.shunt.Src == p.Src && t.shunt.Dst == p.Dst && t.State == StateFailed {
			delete(e.tunnels, pair)
			again = append(again, pair)
			e.log.Info("OE failure shunt expired; the next packet tries OE again", "pair", pair)
		}
	}
	e.mu.Unlock()
	for _, pair := range again {
		e.rearm(e.context(), pair)
	}
}

// rearm gives the trap covering pair the next template reqid, so that the
// pair's next packet raises a new ACQUIRE. The larval state of its last
// ACQUIRE lives net.core.xfrm_acq_expires (165 s as charon sets it) on the
// userspace datapath, where no SA ever replaces it, and the kernel raises
// no ACQUIRE for the pair while it lives; a larval state matches only its
// own template's reqid. The trap is updated in place: no moment without it.
func (e *Engine) rearm(ctx context.Context, pair xfrm.Pair) {
	e.mu.Lock()
	i := trapFor(e.base, pair)
	if i < 0 || e.stopped {
		e.mu.Unlock()
		return
	}
	p := e.base[i]
	p.ReqID = xfrm.NextReqID(p.ReqID)
	e.base[i] = p // a concurrent rearm takes the generation after this one
	e.mu.Unlock()
	got, err := e.p.Kernel.Install(ctx, p)
	if err != nil {
		e.log.Warn("OE: cannot re-arm the trap after a tunnel closed; the pair's next ACQUIRE waits for its larval state to expire (net.core.xfrm_acq_expires)", "pair", pair, "trap", p, "err", err)
		return
	}
	e.mu.Lock()
	if i < len(e.base) && e.base[i].ReqID == p.ReqID && e.base[i].Dst == p.Dst && e.base[i].Src == p.Src {
		e.base[i] = got
	}
	e.mu.Unlock()
	e.log.Debug("OE trap re-armed for the next ACQUIRE", "pair", pair, "trap", got)
}

// trapFor is the index in ps of the most specific trap covering pair, -1
// when none does.
func trapFor(ps []xfrm.Policy, pair xfrm.Pair) int {
	best := -1
	for i, p := range ps {
		if p.Action != xfrm.Trap || p.Dir != xfrm.DirOut || !p.Src.Contains(pair.Src) || !p.Dst.Contains(pair.Dst) {
			continue
		}
		if best < 0 || p.Dst.Bits() > ps[best].Dst.Bits() {
			best = i
		}
	}
	return best
}

var initiatingRE = regexp.MustCompile(`^(\S+) is initiating an IKE_SA$`)

// HandleEvent follows charon: a stranger initiating IKE (the responder
// side), tunnels going down, rekeys.
func (e *Engine) HandleEvent(ev vici.Event) {
	switch ev.Kind {
	case vici.EventConnected:
		e.forgetConfigured()
		e.prefetchConfigured()
		e.resync(ev.SAs)
	case vici.EventLog:
		if ev.Log == nil {
			return
		}
		m := initiatingRE.FindStringSubmatch(ev.Log.Message)
		if m == nil {
			return
		}
		host, _, _ := strings.Cut(m[1], "[")
		if a, err := netip.ParseAddr(host); err == nil {
			e.respond(a)
		}
	case vici.EventIKEUpDown, vici.EventChildUpDown:
		if ev.SA != nil && !ev.Up && !strings.HasPrefix(ev.SA.Name, e.p.Prefix) {
			e.configuredDown(ev.SA.Name)
			return
		}
		if ev.SA == nil || !strings.HasPrefix(ev.SA.Name, e.p.Prefix+"oe-") {
			return
		}
		if ev.Up {
			if ev.Kind == vici.EventChildUpDown {
				e.noteChildUp(ev.SA)
				e.checkAccepted(ev.SA)
			}
			return
		}
		e.down(ev.SA, ev.Kind == vici.EventChildUpDown)
	}
}

// resync drops up tunnels charon no longer has (it restarted): their
// kernel allows go, and the next packet traps and renegotiates.
func (e *Engine) resync(sas []vici.IKESA) {
	have := map[string]bool{}
	for _, sa := range sas {
		have[sa.Name] = true
	}
	e.mu.Lock()
	var gone []*Tunnel
	for pair, t := range e.tunnels {
		ike := t.ike
		if ike == "" {
			ike = t.Conn
		}
		if t.State == StateUp && !have[ike] {
			delete(e.tunnels, pair)
			gone = append(gone, t)
		}
	}
	e.mu.Unlock()
	ctx := e.context()
	for _, t := range gone {
		e.teardown(ctx, t, false)
	}
}

// respond prepares for an initiator whose key obold must know before
// IKE_AUTH arrives: look it up in the initiator's reverse map and load a
// conn for it. If the lookup loses the race, IKE_AUTH fails and the
// initiator's obold retries, by then the conn is there.
func (e *Engine) respond(peer netip.Addr) {
	dec := e.pol.Decide(peer)
	pair := xfrm.Pair{Src: e.localFor(peer), Dst: peer}
	e.mu.Lock()
	if e.stopped || e.ctx == nil || !dec.Group.Responds() || !pair.Src.IsValid() {
		e.mu.Unlock()
		return
	}
	if t, ok := e.tunnels[pair]; ok && t.State != StateFailed {
		e.mu.Unlock()
		return
	}
	t := &Tunnel{Pair: pair, Role: "responder", State: StateResolving, Group: dec.Group, Conn: e.ConnName("responder", pair), Since: e.p.Now(), ownsConn: true, gwLevel: true}
	e.tunnels[pair] = t
	ctx := e.ctx
	e.wg.Add(1)
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		ans, err := e.p.Resolver.Lookup(ctx, plugins.LookupQuery{Addr: peer})
		// The initiator's own reverse map must name it: by address (IP
		// identity), or by an @FQDN whose forward map holds its key.
		var gw *plugins.Gateway
		for i := range ans.Gateways {
			g := ans.Gateways[i]
			if g.Addr == peer || (!g.Addr.IsValid() && g.FQDN != "") {
				g.Addr = peer
				gw = &g
				break
			}
		}
		if err != nil || gw == nil {
			why := "no key for the initiator in its reverse map"
			if err != nil {
				why = err.Error()
			}
			e.mu.Lock()
			t.State, t.Reason, t.DNSSEC = StateFailed, "refused initiator: "+why, ans.DNSSEC
			e.mu.Unlock()
			e.log.Warn("OE initiator refused", "peer", peer, "reason", why)
			return
		}
		if _, why := e.configuredCollision(ctx, peerID(*gw), peer, netip.Addr{}); why != "" {
			why = "OE refused: " + why + "; OE never takes a configured peer's place"
			e.mu.Lock()
			t.State, t.Reason, t.DNSSEC = StateFailed, "refused initiator: "+why, ans.DNSSEC
			t.Gateway, t.KeySource = gatewayName(*gw), gw.Source
			e.mu.Unlock()
			e.log.Warn("OE initiator refused", "peer", peer, "reason", why)
			return
		}
		conn, err := e.peerConn(t.Conn, *gw, pair)
		if err == nil {
			// Only the accepting child: the tunnel may carry either family
			// whatever IKE runs over, and the initiator's clients are
			// checked against their reverse map's delegation once charon
			// narrowed the selectors (checkAccepted).
			conn.Children = conn.Children[1:]
			if len(gw.PSK) > 0 || !e.unpark(conn) {
				err = e.loadConn(ctx, conn, *gw)
			}
			if err == nil {
				e.loadedFor(t, conn, *gw, ans.TTL)
			}
		}
		e.mu.Lock()
		t.Gateway, t.KeySource, t.DNSSEC, t.Method = gatewayName(*gw), gw.Source, ans.DNSSEC, ans.Method
		if len(gw.Keys) == 1 {
			t.peerKey = gw.Keys[0]
		}
		switch {
		case err != nil:
			t.State, t.Reason = StateFailed, "load conn: "+err.Error()
		case t.State == StateResolving:
			// Not when its CHILD_SA came up meanwhile (a parked conn let
			// charon finish before this lookup did).
			t.State = StateNegotiating
		}
		e.mu.Unlock()
	}()
}

// checkAccepted checks every CHILD_SA the peer started on any OE conn
// (our accepting child): each client behind the initiator must delegate to
// it (X-IPsec-Server in the client's reverse map naming the initiator), or
// the CHILD_SA is closed. Whichever OE conn charon put it in, it gets the
// same check.
func (e *Engine) checkAccepted(sa *vici.IKESA) {
	ctx := e.context()
	for _, ch := range sa.Children {
		if ch.Name != acceptorChild {
			continue
		}
		for _, ts := range ch.RemoteTS {
			pfx, err := netip.ParsePrefix(strings.SplitN(ts, "[", 2)[0])
			if err != nil {
				continue
			}
			if pfx.Addr() == sa.RemoteHost {
				// An end node speaking for itself needs no delegation.
				e.responderAllow(ctx, sa, pfx, ch)
				continue
			}
			ok, why := e.delegates(ctx, pfx.Addr(), sa.RemoteHost, sa.RemoteID)
			if ok {
				ok, why = e.keysVouched(ctx, sa, pfx.Addr())
			}
			if _, cwhy := e.configuredCollision(ctx, "", netip.Addr{}, pfx.Addr()); ok && cwhy != "" {
				ok, why = false, "OE refused: "+cwhy
			}
			if !ok {
				e.log.Warn("OE client not delegated to its gateway; closing the CHILD_SA", "client", pfx, "gateway", sa.RemoteHost, "why", why)
				_ = e.p.Charon.Terminate(ctx, vici.SASelector{ChildID: ch.UniqueID})
				e.refusedClient(sa, pfx, ch, "refused client "+pfx.String()+": "+why)
				return
			}
			e.responderAllow(ctx, sa, pfx, ch)
		}
	}
}

// refusedClient shows a refused client in obolctl oe list: on the record
// of the initiating gateway when it started the IKE_SA, else on a record
// of its own (the CHILD_SA came into an IKE_SA this host started).
func (e *Engine) refusedClient(sa *vici.IKESA, client netip.Prefix, ch vici.ChildSA, reason string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if t, ok := e.tunnels[xfrm.Pair{Src: e.localFor(sa.RemoteHost), Dst: sa.RemoteHost}]; ok && t.Role == "responder" {
		t.Reason = reason
		return
	}
	local := client.Addr()
	if lp, ok := firstPrefix(ch.LocalTS); ok {
		local = lp.Addr()
	}
	pair := xfrm.Pair{Src: local, Dst: client.Addr()}
	if _, busy := e.tunnels[pair]; busy || len(e.tunnels) >= e.cfg.MaxTracked {
		return
	}
	now := e.p.Now()
	e.tunnels[pair] = &Tunnel{Pair: pair, Role: "responder", State: StateFailed, Group: e.pol.Decide(pair.Dst).Group, Conn: sa.Name, ike: sa.Name,
		Gateway: saGateway(sa), Reason: reason, Since: now, LifespanEnd: now.Add(e.pol.Decide(pair.Dst).ShuntLifetime)}
}

// saGateway names the peer of an IKE_SA as obolctl oe list shows it.
func saGateway(sa *vici.IKESA) string {
	if sa.RemoteID != "" && sa.RemoteID != sa.RemoteHost.String() {
		return "@" + sa.RemoteID + " (" + sa.RemoteHost.String() + ")"
	}
	return sa.RemoteHost.String()
}

// firstPrefix parses the first of charon's traffic selectors ("10.0.0.1/32"
// or with "[proto/port]").
func firstPrefix(ts []string) (netip.Prefix, bool) {
	if len(ts) == 0 {
		return netip.Prefix{}, false
	}
	p, err := netip.ParsePrefix(strings.SplitN(ts[0], "[", 2)[0])
	return p, err == nil
}

// childPair is the pair a CHILD_SA carries: its first local and remote
// selectors' addresses (OE pairs are host pairs, narrowed to /32 or /128).
func childPair(ch vici.ChildSA) (xfrm.Pair, bool) {
	lp, ok1 := firstPrefix(ch.LocalTS)
	rp, ok2 := firstPrefix(ch.RemoteTS)
	if !ok1 || !ok2 {
		return xfrm.Pair{}, false
	}
	return xfrm.Pair{Src: lp.Addr(), Dst: rp.Addr()}, true
}

// keysVouched: an IKE_SA of an initiator conn was authenticated with the
// gateway keys one client's record gave; another client behind that
// gateway is accepted in it only if each of those keys is vouched for by
// the client's own record for the gateway or by the gateway's own DNS
// (its reverse map, or the forward map of the FQDN it proved), the
// sources a responder conn takes its keys from. Otherwise a record naming
// a gateway with a false key would let that key speak for the gateway's
// other clients.
func (e *Engine) keysVouched(ctx context.Context, sa *vici.IKESA, client netip.Addr) (bool, string) {
	e.mu.Lock()
	pinned, ok := e.initKeys[sa.Name]
	e.mu.Unlock()
	if !ok {
		return true, "" // a responder conn: keys from the gateway's own DNS
	}
	vouched := map[string]bool{}
	proved := canonicalFQDN(sa.RemoteID)
	add := func(ans plugins.LookupAnswer) {
		for _, gw := range ans.Gateways {
			match := gw.Addr.IsValid() && gw.Addr == sa.RemoteHost ||
				gw.FQDN != "" && proved != "" && canonicalFQDN(gw.FQDN) == proved
			if !match {
				continue
			}
			for _, k := range gw.Keys {
				if p, err := resolver.PEM(k); err == nil {
					vouched[string(p)] = true
				}
			}
		}
	}
	if ans, err := e.p.Resolver.Lookup(ctx, plugins.LookupQuery{Addr: client}); err == nil {
		add(ans)
	}
	if ans, err := e.p.Resolver.Lookup(ctx, plugins.LookupQuery{Addr: sa.RemoteHost}); err == nil {
		add(ans)
	}
	// A PSK or CA conn pins no keys (nothing to check here): the gateway
	// proved its identity with the secret or a certificate, which vouches
	// for it whichever of its delegating clients asks.
	for _, k := range pinned {
		if !vouched[k] {
			return false, fmt.Sprintf("the IKE_SA with %s was authenticated with a key %s's record does not give for that gateway, nor does the gateway's own DNS", saGateway(sa), client)
		}
	}
	return true, ""
}

func pemStrings(bs [][]byte) []string {
	out := make([]string, len(bs))
	for i, b := range bs {
		out[i] = string(b)
	}
	return out
}

// delegates tells whether client's reverse map names the initiator as
// its gateway: by the address it initiated from, or by the FQDN it proved
// as its IKE identity (provedID, as charon reports it: no '@'). An FQDN is
// compared with the identity, never with addresses: anyone can be at an
// address a name resolves to, only the gateway holds the name's key.
func (e *Engine) delegates(ctx context.Context, client, gateway netip.Addr, provedID string) (bool, string) {
	ans, err := e.p.Resolver.Lookup(ctx, plugins.LookupQuery{Addr: client})
	if err != nil {
		return false, err.Error()
	}
	proved := canonicalFQDN(provedID)
	var named []string
	for _, gw := range ans.Gateways {
		switch {
		case gw.Addr.IsValid() && gw.Addr == gateway:
			return true, ""
		case gw.FQDN != "" && proved != "" && canonicalFQDN(gw.FQDN) == proved:
			return true, ""
		}
		named = append(named, peerID(gw))
	}
	who := gateway.String()
	if proved != "" {
		who += " (identity @" + proved + ")"
	}
	if len(named) == 0 {
		return false, fmt.Sprintf("%s's reverse map names no gateway; it does not delegate to %s", client, who)
	}
	return false, fmt.Sprintf("%s's reverse map names gateway %s, not %s", client, strings.Join(named, ", "), who)
}

// canonicalFQDN is an FQDN identity in one form for comparison: lowercase,
// without '@' and the final dot; "" for an IP identity.
func canonicalFQDN(id string) string {
	id = strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(id, "@"), "."))
	if _, err := netip.ParseAddr(id); err == nil {
		return ""
	}
	return id
}

// responderAllow records the accepted client pair as up and, on the
// userspace datapath, allows its traffic past the traps. The initiating
// gateway's own record (when it started the IKE_SA) is up too.
func (e *Engine) responderAllow(ctx context.Context, sa *vici.IKESA, client netip.Prefix, ch vici.ChildSA) {
	gwPair := xfrm.Pair{Src: e.localFor(sa.RemoteHost), Dst: sa.RemoteHost}
	now := e.p.Now()
	for _, lts := range ch.LocalTS {
		lp, err := netip.ParsePrefix(strings.SplitN(lts, "[", 2)[0])
		if err != nil {
			continue
		}
		pair := xfrm.Pair{Src: lp.Addr(), Dst: client.Addr()}
		e.mu.Lock()
		gw := e.tunnels[gwPair]
		if gw != nil && gw.Role != "responder" {
			gw = nil
		}
		t, ok := e.tunnels[pair]
		switch {
		case ok && t.Role == "initiator" && t.State != StateFailed:
			// Both sides started this pair: ours carries it already.
			e.mu.Unlock()
			continue
		case ok && t.Role == "responder" && t.State != StateFailed:
		default:
			if len(e.tunnels) >= e.cfg.MaxTracked && !ok {
				e.mu.Unlock()
				continue
			}
			t = &Tunnel{Pair: pair, Role: "responder", State: StateNegotiating, Group: e.pol.Decide(pair.Dst).Group, Conn: sa.Name, Gateway: saGateway(sa)}
			if gw != nil {
				t.Conn, t.Gateway, t.KeySource, t.DNSSEC, t.Method, t.peerKey = gw.Conn, gw.Gateway, gw.KeySource, gw.DNSSEC, gw.Method, gw.peerKey
				t.Group, t.ownsConn = gw.Group, pair == gwPair
			}
			e.tunnels[pair] = t
		}
		up := t.State == StateUp && !t.gwLevel && len(t.allow) > 0
		t.ike, t.gwLevel = sa.Name, false
		e.mu.Unlock()
		var allows []xfrm.Policy
		if e.p.Userspace && !up {
			prio := e.p.Band.Priority(xfrm.RolePair, lp, client)
			for _, p := range []xfrm.Policy{
				{Src: lp, Dst: client, Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: prio},
				{Src: client, Dst: lp, Dir: xfrm.DirOut, Action: xfrm.Allow, Priority: prio},
			} {
				if got, err := e.p.Kernel.Install(ctx, p); err == nil {
					allows = append(allows, got)
				}
			}
		}
		e.mu.Lock()
		t.State, t.Since, t.Reason = StateUp, now, ""
		t.LifespanEnd = now.Add(time.Duration(e.cfg.InitialLifespan))
		t.allow = append(t.allow, allows...)
		if gw != nil && gw != t {
			gw.State, gw.Since, gw.Reason = StateUp, now, ""
		}
		e.mu.Unlock()
	}
}

// down: a Delete arrived or the tunnel was closed: forget the pairs whose
// CHILD_SA went (a CHILD_SA down: the pairs its selectors carry; an IKE_SA
// down: every pair in it) in both directions and unload their conns. A
// second Delete (crossed) finds nothing.
func (e *Engine) down(sa *vici.IKESA, child bool) {
	ctx := e.context()
	conn := sa.Name
	inSA := map[xfrm.Pair]bool{}
	for _, ch := range sa.Children {
		if p, ok := childPair(ch); ok {
			inSA[p] = true
		}
	}
	e.mu.Lock()
	var gone []*Tunnel
	for pair, t := range e.tunnels {
		holds := t.ike == conn || (t.ike == "" && t.Conn == conn)
		switch {
		case t.State == StateUp && t.gwLevel && t.Conn == conn && !child:
			delete(e.tunnels, pair)
			gone = append(gone, t)
		case t.State == StateUp && !t.gwLevel && holds && (!child || inSA[pair]):
			delete(e.tunnels, pair)
			gone = append(gone, t)
		case child && t.State == StateNegotiating && t.Role == "initiator" && (t.Conn == conn && len(inSA) == 0 || inSA[pair]):
			// A CHILD_SA down before obold saw initiate return: up must
			// not open the pair (initiate then applies the failure
			// shunt). Only a CHILD_SA: a failed attempt's IKE_SA going
			// down must not spoil the retry.
			t.closed = true
		}
	}
	if !child {
		// The IKE_SA that an initiator conn's keys authenticated is gone;
		// keep them while a pair still uses the conn or an SA under it.
		used := false
		for _, t := range e.tunnels {
			used = used || t.Conn == conn || t.ike == conn
		}
		if !used {
			delete(e.initKeys, conn)
		}
	}
	e.mu.Unlock()
	for _, t := range gone {
		e.teardown(ctx, t, false)
	}
}

// teardown removes a tunnel's kernel policies and conn; terminate sends
// the Delete first: for the pair's CHILD_SA only, and for the IKE_SA when
// no other CHILD_SA is left in it (other pairs may share it).
func (e *Engine) teardown(ctx context.Context, t *Tunnel, terminate bool) {
	if terminate {
		e.terminatePair(ctx, t)
	}
	e.mu.Lock()
	allows := t.allow
	t.allow = nil
	e.mu.Unlock()
	for _, p := range allows {
		_ = e.p.Kernel.Remove(ctx, p)
	}
	e.removeShunt(ctx, t)
	if t.Role == "initiator" || !t.gwLevel {
		e.rearm(ctx, t.Pair)
	}
	if t.ownsConn && !e.park(t) {
		// Unloading a conn leaves its SAs (no start action): other pairs'
		// CHILD_SAs in its IKE_SA stay up.
		if err := e.unloadConn(ctx, t.Conn); err != nil {
			e.log.Debug("unload OE conn", "conn", t.Conn, "err", err)
		}
	}
	e.log.Info("OE tunnel closed", "pair", t.Pair, "conn", t.Conn)
}

func (e *Engine) terminatePair(ctx context.Context, t *Tunnel) {
	ike := t.ike
	if ike == "" {
		ike = t.Conn
	}
	if t.gwLevel {
		return // its clients' pairs close their CHILD_SAs themselves
	}
	sas, err := e.p.Charon.ListSAs(ctx, vici.SASelector{IKE: ike})
	if err != nil || len(sas) == 0 {
		_ = e.p.Charon.Terminate(ctx, vici.SASelector{IKE: ike})
		return
	}
	for _, sa := range sas {
		others := 0
		var mine []uint32
		for _, ch := range sa.Children {
			if p, ok := childPair(ch); ok && p == t.Pair {
				mine = append(mine, ch.UniqueID)
			} else {
				others++
			}
		}
		if len(mine) == 0 {
			continue
		}
		if others == 0 {
			sel := vici.SASelector{IKEID: sa.UniqueID}
			if sa.UniqueID == 0 {
				sel = vici.SASelector{IKE: ike} // never an empty selector: it means every SA
			}
			_ = e.p.Charon.Terminate(ctx, sel)
			continue
		}
		for _, id := range mine {
			_ = e.p.Charon.Terminate(ctx, vici.SASelector{ChildID: id})
		}
	}
}

// Tick checks lifespans: an up tunnel that carried traffic in the last half
// of its span gets the busy lifespan; an idle one is closed with a Delete.
func (e *Engine) Tick(ctx context.Context) {
	now := e.p.Now()
	e.unloadParked(ctx, now, false)
	e.mu.Lock()
	var due []*Tunnel
	for pair, t := range e.tunnels {
		if t.State == StateFailed && t.shunt == nil && t.Role == "responder" && !t.gwLevel && !now.Before(t.LifespanEnd) {
			delete(e.tunnels, pair) // a refused client's record: shown for a shunt lifetime
			continue
		}
		if t.State == StateUp && !t.gwLevel && !now.Before(t.LifespanEnd) {
			due = append(due, t)
		}
	}
	e.mu.Unlock()
	for _, t := range due {
		ike := t.ike
		if ike == "" {
			ike = t.Conn
		}
		sas, err := e.p.Charon.ListSAs(ctx, vici.SASelector{IKE: ike})
		if err != nil {
			continue
		}
		idle, total := idleFor(sas, t.Pair)
		span := time.Duration(e.cfg.InitialLifespan)
		if t.LifespanEnd.Sub(t.Since) > span {
			span = time.Duration(e.cfg.BusyLifespan)
		}
		e.mu.Lock()
		grew := total > t.bytes
		t.bytes = total
		e.mu.Unlock()
		// Busy: a packet in the last half of the span; where the datapath
		// reports no last-use time, traffic counted since the last check.
		if (idle >= 0 && idle < span/2) || (idle < 0 && grew) {
			e.mu.Lock()
			t.Since, t.LifespanEnd, t.Idle = now, now.Add(time.Duration(e.cfg.BusyLifespan)), idle
			e.mu.Unlock()
			e.log.Debug("OE tunnel busy; lifespan extended", "pair", t.Pair, "idle", idle)
			continue
		}
		e.mu.Lock()
		delete(e.tunnels, t.Pair)
		e.mu.Unlock()
		e.log.Info("OE tunnel idle at the end of its lifespan; closing it", "pair", t.Pair, "idle", idle)
		e.teardown(ctx, t, true)
	}
}

// idleFor is the time since the last packet of the pair's CHILD_SAs (-1 when
// charon reports no use time) and the bytes they carried.
func idleFor(sas []vici.IKESA, pair xfrm.Pair) (time.Duration, uint64) {
	idle := time.Duration(-1)
	var total uint64
	for _, sa := range sas {
		for _, ch := range sa.Children {
			if p, ok := childPair(ch); !ok || p != pair {
				continue // another pair's CHILD_SA in the same IKE_SA
			}
			total += ch.BytesIn + ch.BytesOut
			for _, u := range []time.Duration{ch.UseIn, ch.UseOut} {
				if u >= 0 && (idle < 0 || u < idle) {
					idle = u
				}
			}
		}
	}
	return idle, total
}

// Wanted lists every kernel policy the engine means to have installed:
// bypasses, traps and blocks, per-pair allows and standing shunts.
func (e *Engine) Wanted() []xfrm.Policy {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := append([]xfrm.Policy(nil), e.base...)
	for _, t := range e.tunnels {
		out = append(out, t.allow...)
		if t.shunt != nil {
			out = append(out, *t.shunt)
		}
	}
	return out
}

// ConnFact is what the token API needs of one OE conn.
type ConnFact struct {
	DNSSEC plugins.DNSSECStatus
	Method string // how the peer's keys were trusted; "" means by DNSSEC status
	// PeerKey is the key DNS gave for the peer when it gave exactly one
	// (with several, charon does not say which one authenticated); OurKey
	// is ours. Either is empty when unknown.
	PeerKey, OurKey plugins.PublicKey
}

// ConnFacts maps each OE conn to its facts, in one pass (the token API
// rebuilds its cache with it).
func (e *Engine) ConnFacts() map[string]ConnFact {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[string]ConnFact, len(e.tunnels))
	for _, t := range e.tunnels {
		f := ConnFact{DNSSEC: t.DNSSEC, Method: t.Method}
		if len(t.peerKey.Data) > 0 && len(e.ourKey.Data) > 0 {
			f.PeerKey, f.OurKey = t.peerKey, e.ourKey
		}
		out[t.Conn] = f
	}
	return out
}

// Failure returns why OE failed for traffic to dst, if it did; it copies
// nothing else, as it serves token queries.
func (e *Engine) Failure(dst netip.Addr) (reason string, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, t := range e.tunnels {
		if t.Pair.Dst == dst && t.State == StateFailed {
			return t.Reason, true
		}
	}
	return "", false
}

// Tunnels lists what the engine knows, for obolctl oe list.
func (e *Engine) Tunnels() []Tunnel {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]Tunnel, 0, len(e.tunnels))
	for _, t := range e.tunnels {
		c := *t
		c.shunt, c.allow = nil, nil
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Conn < out[j].Conn })
	return out
}

// adopt takes over the OE tunnels an earlier obold left up (on_stop =
// "leave"): their SAs are in charon under obold's OE conn names and their
// per-pair allow policies are obold's in the kernel.
func (e *Engine) adopt(ctx context.Context) (int, error) {
	sas, err := e.p.Charon.ListSAs(ctx, vici.SASelector{})
	if err != nil {
		return 0, err
	}
	pols, err := e.p.Kernel.List(ctx)
	if err != nil {
		return 0, err
	}
	now := e.p.Now()
	n := 0
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, sa := range sas {
		if !strings.HasPrefix(sa.Name, e.p.Prefix+"oe-") || sa.Name == e.acceptorName() {
			continue
		}
		for _, ch := range sa.Children {
			if ch.State != "INSTALLED" {
				continue
			}
			pair, ok := childPair(ch)
			if !ok {
				continue
			}
			lp, rp := hostPrefix(pair.Src), hostPrefix(pair.Dst)
			// A pair's CHILD_SA may sit in another conn's IKE_SA: the
			// child config's name says who started it.
			t := &Tunnel{Pair: pair, Role: "initiator", State: StateUp, Group: e.pol.Decide(pair.Dst).Group, Conn: e.ConnName("initiator", pair), ike: sa.Name,
				ownsConn: true, Gateway: saGateway(&sa), Since: now, LifespanEnd: now.Add(time.Duration(e.cfg.InitialLifespan))}
			if ch.Name != initiatorChild {
				t.Role, t.Conn, t.ownsConn = "responder", sa.Name, pair == xfrm.Pair{Src: e.localFor(sa.RemoteHost), Dst: sa.RemoteHost}
			}
			if _, dup := e.tunnels[pair]; dup {
				continue
			}
			for _, p := range pols {
				if p.Action == xfrm.Allow && ((p.Src == lp && p.Dst == rp) || (p.Src == rp && p.Dst == lp)) {
					t.allow = append(t.allow, p)
				}
			}
			e.tunnels[pair] = t
			n++
		}
	}
	return n, nil
}

// Leave stops the engine but leaves its tunnels, conns and kernel policies
// in place (on_stop = "leave"), for the next obold to adopt.
func (e *Engine) Leave() {
	e.mu.Lock()
	e.stopped = true
	if e.stopRefresh != nil {
		e.stopRefresh()
	}
	e.mu.Unlock()
	e.wg.Wait()
	// Parked conns carry no tunnel to leave: the next obold would not know
	// them.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	e.unloadParked(ctx, time.Time{}, true)
	e.log.Info("OE stopped; tunnels and kernel policies left for the next obold (on_stop = \"leave\")")
}

// Stop sends Deletes for every OE tunnel, unloads their conns and removes
// every kernel policy obold installed.
func (e *Engine) Stop(ctx context.Context) error {
	e.mu.Lock()
	e.stopped = true
	if e.stopRefresh != nil {
		e.stopRefresh()
	}
	var all []*Tunnel
	for pair, t := range e.tunnels {
		all = append(all, t)
		delete(e.tunnels, pair)
	}
	e.notifyLocked()
	e.mu.Unlock()
	e.wg.Wait()
	for _, t := range all {
		e.teardown(ctx, t, t.State == StateUp)
	}
	e.unloadParked(ctx, time.Time{}, true)
	_ = e.p.Charon.UnloadConn(ctx, e.acceptorName())
	n, err := e.p.Kernel.RemoveAll(ctx)
	e.log.Info("OE stopped", "tunnels", len(all), "policies removed", n)
	if err != nil {
		return fmt.Errorf("oe: remove kernel policies: %w", err)
	}
	return nil
}

// Package lab builds obol's test network from real parts: network
// namespaces joined by veth through an "internet" bridge, knot (automatic
// DNSSEC) behind a validating unbound, and one charon-systemd per IPsec node.
// The e2e tests and `make demo` share it. Everything it starts it stops.
//
// Topology (addresses are fixed; names are unique per run):
//
//	alice 10.1.0.10 -- gwa 10.1.0.1 | 192.0.2.1 --+              +-- 192.0.2.2 gwb | 10.2.0.1 -- bob 10.2.0.10
//	                                              |  inet bridge |
//	                        hosta 192.0.2.11 -----+--------------+----- hostb 192.0.2.12
//	                                        dns 192.0.2.53 (unbound; knot on 127.0.0.1:5300 in the same netns)
//
// Interfaces: alice/bob and the gateways' LAN side are "lan0" (a direct veth
// pair); every node on the internet has "inet0", whose peer in the inet
// namespace is named after the node and enslaved to "br0". Capture on
// Inet/"br0" to see the wire (tcpdump puts br0 in promiscuous mode, which
// makes the bridge pass it every frame). IPv6 is disabled everywhere (no
// RS/ND/MLD noise) unless Options.IPv6; ARP and a few IGMP reports right
// after start remain, so give captures a filter.
//
// With Options.IPv6, hosta, hostb and dns also get 2001:db8::11, ::12 and
// ::53 (documentation prefix, on-link /64, no DAD, no router
// solicitations; link-local addresses and MLD reports appear on the wire)
// and unbound answers on 2001:db8::53 too. Every other node keeps IPv6 off. The dns node also routes 10.1.0.0/24 and
// 10.2.0.0/24 via the gateways, so alice and bob can use the resolver.
//
// DNS: zones come from Options.Zones and can be added or replaced later
// with SetZone (which restarts unbound, flushing its cache). A lab without
// zones runs no DNS server until SetZone.
//
// Processes: everything the lab runs is started with `ip netns exec` from one
// OS thread per lab that stays locked for the lab's lifetime, with
// Pdeathsig=SIGKILL. Pdeathsig fires when the forking *thread* exits, so
// children die with the test binary (even on SIGKILL) or when the lab's
// thread ends after Close, never earlier. Processes are stopped by PID
// (pidfd through os.Process), never by name.
//
// Lab needs root (network namespaces, tcpdump, charon).
package lab

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"
)

// Node names.
const (
	Alice = "alice"
	GWA   = "gwa"
	Inet  = "inet" // holds the bridge "br0"; capture here to see the wire
	GWB   = "gwb"
	Bob   = "bob"
	HostA = "hosta"
	HostB = "hostb"
	DNS   = "dns"
)

// Interface names inside the nodes.
const (
	LANIf  = "lan0"  // alice, bob and the gateways' LAN side
	InetIf = "inet0" // gateways, hosta, hostb, dns: the internet side
	Bridge = "br0"   // the internet bridge, in the Inet node
)

// Ports of the lab's DNS servers (both in the DNS node).
const (
	DNSPort  = 53   // unbound, validating resolver, on DNSAddr and 127.0.0.1
	KnotPort = 5300 // knot, authoritative and signing, on 127.0.0.1 only
)

// Addresses of the lab. They are variables only because Go has no netip
// constants: never assign to them.
var (
	AliceAddr = netip.AddrFrom4([4]byte{10, 1, 0, 10})
	GWALAN    = netip.AddrFrom4([4]byte{10, 1, 0, 1}) // gwa, LAN side
	GWAInet   = netip.AddrFrom4([4]byte{192, 0, 2, 1})
	GWBInet   = netip.AddrFrom4([4]byte{192, 0, 2, 2})
	GWBLAN    = netip.AddrFrom4([4]byte{10, 2, 0, 1}) // gwb, LAN side
	BobAddr   = netip.AddrFrom4([4]byte{10, 2, 0, 10})
	HostAAddr = netip.AddrFrom4([4]byte{192, 0, 2, 11})
	HostBAddr = netip.AddrFrom4([4]byte{192, 0, 2, 12})
	DNSAddr   = netip.AddrFrom4([4]byte{192, 0, 2, 53})

	LANA    = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 1, 0, 0}), 24) // behind gwa
	LANB    = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, 0, 0}), 24) // behind gwb
	InetNet = netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, 0}), 24)

	// IPv6 addresses of the internet segment, with Options.IPv6 only.
	HostAAddr6 = netip.MustParseAddr("2001:db8::11")
	HostBAddr6 = netip.MustParseAddr("2001:db8::12")
	DNSAddr6   = netip.MustParseAddr("2001:db8::53")
	InetNet6   = netip.MustParsePrefix("2001:db8::/64")
)

// DefaultCharon is the set of nodes that get a charon when Options.Charon is nil.
func DefaultCharon() []string { return []string{GWA, GWB, HostA, HostB} }

// Options choose what a Lab starts.
type Options struct {
	// Charon lists the nodes that get a charon-systemd. nil means
	// DefaultCharon(); an empty non-nil slice starts no charon.
	Charon []string
	// CharonConf is extra strongswan.conf text placed inside the
	// `charon-systemd { }` section of every charon (sections merge with the
	// lab's own, later keys win). One key per line.
	CharonConf string
	// Zones are DNS zones to serve, signed by knot; none starts no DNS
	// (SetZone can still start it later).
	Zones []Zone
	// Dir is where configs, sockets and logs go; "" makes a temporary
	// directory. Close removes what the lab made in it unless KeepDir.
	// Unix socket paths must stay under 108 bytes: keep Dir short.
	Dir     string
	KeepDir bool
	// Logger gets the lab's progress and timings; nil logs nothing.
	Logger *slog.Logger
	// IPv6 gives hosta, hostb and dns their IPv6 addresses (Addr6) and
	// unbound an IPv6 listener. Off, IPv6 is disabled in every node, and
	// captures see no IPv6 noise.
	IPv6 bool
}

// Zone is one zone knot serves, signed with automatic DNSSEC (knot's default
// policy: ECDSA P-256 KSK+ZSK, NSEC) unless Unsigned.
type Zone struct {
	Name     string   // e.g. "example.test." or "2.0.192.in-addr.arpa." (a missing final dot is added)
	Records  []string // zone file lines without $ORIGIN/SOA/NS, e.g. "bob 300 IN A 10.2.0.10"
	Unsigned bool
	// Bogus signs the zone but gives unbound a trust anchor that matches no
	// key (a DS of the real KSK with a wrong digest): every answer from the
	// zone fails validation, so unbound returns SERVFAIL.
	Bogus bool
}

// Lab is a running lab. Its methods are safe for concurrent use.
type Lab struct {
	// ID is unique per run and prefixes every namespace (e.g. "obl3k9x2").
	ID  string
	Dir string

	opts    Options
	log     *slog.Logger
	nodes   map[string]*Node
	order   []*Node
	ownsDir bool // Dir was created by the lab: remove it whole
	sp      *spawner
	tools   *toolbox

	mu       sync.Mutex
	closed   bool
	closeErr error
	running  map[*Process]struct{}
	strays   []stray // processes found in our namespaces that we did not start
	captures int

	dnsMu sync.Mutex // serializes DNS start and SetZone
	dns   *dnsState

	workaroundOnce sync.Once
	workaroundErr  error
}

// Node is one network namespace of the lab.
type Node struct {
	Name string
	NS   string     // namespace name, "<ID>-<Name>"
	Addr netip.Addr // main address (internet side for gateways); invalid for Inet
	// LAN is the prefix behind a gateway (gwa, gwb); invalid otherwise.
	LAN netip.Prefix
	// LANAddr is a gateway's own LAN address; invalid otherwise.
	LANAddr netip.Addr
	// Addr6 is the node's IPv6 address on the internet segment, valid only
	// with Options.IPv6 (hosta, hostb, dns).
	Addr6 netip.Addr
	// VICI is the charon VICI socket path ("" if the node has no charon).
	VICI string
	Dir  string

	lab *Lab

	startMu sync.Mutex // serializes StartCharon
	mu      sync.Mutex // guards charon
	charon  *Process
}

// StartError is what Start returns when it fails. The lab named ID has been
// torn down already; ID lets a caller check that nothing of it is left.
type StartError struct {
	ID  string
	Err error
}

func (e *StartError) Error() string { return fmt.Sprintf("lab %s: %v", e.ID, e.Err) }
func (e *StartError) Unwrap() error { return e.Err }

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("lab: already closed")

// nodeOrder is the creation order; Nodes() returns it.
var nodeOrder = []string{Inet, Alice, GWA, GWB, Bob, HostA, HostB, DNS}

// Start builds the lab. On error everything already made is torn down and
// the error is a *StartError.
func Start(ctx context.Context, opts Options) (*Lab, error) {
	id, err := newID()
	if err != nil {
		return nil, err
	}
	l := &Lab{
		ID:      id,
		opts:    opts,
		log:     opts.Logger,
		nodes:   map[string]*Node{},
		running: map[*Process]struct{}{},
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}
	if err := l.start(ctx); err != nil {
		if cerr := l.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("tearing the failed lab down: %w", cerr))
		}
		return nil, &StartError{ID: id, Err: err}
	}
	return l, nil
}

func (l *Lab) start(ctx context.Context) error {
	t0 := time.Now()
	if os.Geteuid() != 0 {
		return errors.New("the lab needs root (network namespaces, tcpdump, charon): run the tests as root")
	}
	charon := l.opts.Charon
	if charon == nil {
		charon = DefaultCharon()
	}
	withCharon := map[string]bool{}
	for _, c := range charon {
		if c == Inet || !contains(nodeOrder, c) {
			return fmt.Errorf("Options.Charon: %q is not a node that can run charon (use alice, gwa, gwb, bob, hosta, hostb or dns)", c)
		}
		if withCharon[c] {
			return fmt.Errorf("Options.Charon: %q listed twice", c)
		}
		withCharon[c] = true
	}
	zones, err := normalizeZones(l.opts.Zones)
	if err != nil {
		return err
	}
	need := []string{"ip", "sysctl", "tcpdump"}
	if len(charon) > 0 {
		need = append(need, "charon-systemd", "swanctl")
	}
	if len(zones) > 0 {
		need = append(need, dnsTools...)
	}
	if l.tools, err = findTools(need); err != nil {
		return err
	}

	if err := l.makeDir(); err != nil {
		return err
	}
	for _, name := range nodeOrder {
		n := &Node{Name: name, NS: l.ID + "-" + name, Dir: filepath.Join(l.Dir, name), lab: l}
		spec := topology[name]
		n.Addr, n.LAN, n.LANAddr = spec.addr, spec.lan, spec.lanAddr
		if l.opts.IPv6 {
			n.Addr6 = spec.addr6
		}
		if withCharon[name] {
			n.VICI = filepath.Join(n.Dir, "charon.vici")
			if len(n.VICI) >= 108 {
				return fmt.Errorf("VICI socket path %s is longer than a unix socket allows: use a shorter Options.Dir or TMPDIR", n.VICI)
			}
		}
		if err := os.Mkdir(n.Dir, 0o755); err != nil {
			return fmt.Errorf("creating node directory: %w", err)
		}
		l.nodes[name] = n
		l.order = append(l.order, n)
	}
	l.sp = newSpawner()

	if err := l.buildNetwork(ctx); err != nil {
		return err
	}
	l.log.Debug("lab network up", "id", l.ID, "elapsed", time.Since(t0))

	// DNS and the charons are independent: start them side by side.
	var wg sync.WaitGroup
	errs := make([]error, len(charon)+1)
	if len(zones) > 0 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			l.dnsMu.Lock()
			defer l.dnsMu.Unlock()
			errs[0] = l.startDNS(ctx, zones)
		}()
	}
	for i, name := range charon {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i+1] = l.nodes[name].StartCharon(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	l.log.Info("lab started", "id", l.ID, "dir", l.Dir, "elapsed", time.Since(t0))
	return nil
}

func (l *Lab) makeDir() error {
	if l.opts.Dir == "" {
		d, err := os.MkdirTemp("", l.ID+"-")
		if err != nil {
			return fmt.Errorf("creating the lab directory: %w", err)
		}
		l.Dir, l.ownsDir = d, true
		return nil
	}
	d, err := filepath.Abs(l.opts.Dir)
	if err != nil {
		return fmt.Errorf("Options.Dir: %w", err)
	}
	if _, err := os.Stat(d); errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("creating Options.Dir: %w", err)
		}
		l.ownsDir = true
	}
	for _, name := range nodeOrder {
		if _, err := os.Lstat(filepath.Join(d, name)); err == nil {
			return fmt.Errorf("Options.Dir %s already holds %s/: it looks like another lab's directory; give an empty one", d, name)
		}
	}
	l.Dir = d
	return nil
}

// Close stops every process the lab started (by PID: SIGTERM, SIGKILL after
// 2 s), deletes its namespaces and, unless KeepDir, what it made in its
// directory. It reports what it could not stop or remove. Calling it again
// returns the first result.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return l.closeErr
	}
	l.closed = true // no process starts after this point
	procs := make([]*Process, 0, len(l.running))
	for p := range l.running {
		procs = append(procs, p)
	}
	l.mu.Unlock()
	t0 := time.Now()

	var errs []error
	errs = append(errs, stopAll(l.log, procs, 2*time.Second)...)
	errs = append(errs, l.deleteNamespaces()...)
	if l.sp != nil {
		l.sp.stop()
	}
	if !l.opts.KeepDir && l.Dir != "" {
		if err := l.removeDir(); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	l.mu.Lock()
	l.closeErr = err
	l.mu.Unlock()
	l.log.Info("lab closed", "id", l.ID, "elapsed", time.Since(t0), "err", err)
	return err
}

func (l *Lab) removeDir() error {
	if l.ownsDir {
		if err := os.RemoveAll(l.Dir); err != nil {
			return fmt.Errorf("removing lab directory: %w", err)
		}
		return nil
	}
	var errs []error
	for _, name := range nodeOrder {
		if err := os.RemoveAll(filepath.Join(l.Dir, name)); err != nil {
			errs = append(errs, fmt.Errorf("removing lab directory: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Leftovers lists namespaces and processes of this lab that still exist;
// tests call it after Close and fail on anything.
func (l *Lab) Leftovers() []string {
	out := namespacesOf(l.ID)
	for i, ns := range out {
		out[i] = "namespace " + ns
	}
	l.mu.Lock()
	procs := make([]*Process, 0, len(l.running))
	for p := range l.running {
		procs = append(procs, p)
	}
	strays := append([]stray(nil), l.strays...)
	l.mu.Unlock()
	for _, p := range procs {
		if !p.Exited() {
			out = append(out, fmt.Sprintf("process %s (pid %d) on %s", p.Name, p.PID, p.Node))
		}
	}
	for _, s := range strays {
		if s.alive() {
			out = append(out, fmt.Sprintf("process %s (pid %d) left in namespace %s, not started by the lab", s.comm, s.pid, s.ns))
		}
	}
	return out
}

// Node returns the named node; it panics on an unknown name (a test bug).
func (l *Lab) Node(name string) *Node {
	n, ok := l.nodes[name]
	if !ok {
		panic(fmt.Sprintf("lab: no node %q", name))
	}
	return n
}

// Nodes returns every node, Inet first.
func (l *Lab) Nodes() []*Node { return append([]*Node(nil), l.order...) }

// DNSServer is the lab's validating resolver (unbound), reachable from every
// node. It answers only when the lab serves zones.
func (l *Lab) DNSServer() netip.AddrPort { return netip.AddrPortFrom(DNSAddr, DNSPort) }

// DNSServer6 is the same resolver on its IPv6 address (Options.IPv6 only),
// reachable from hosta and hostb.
func (l *Lab) DNSServer6() netip.AddrPort { return netip.AddrPortFrom(DNSAddr6, DNSPort) }

// Purge deletes the namespaces left by a lab whose process died before
// Close (e.g. a killed test binary). Processes started by that lab die with
// it (Pdeathsig); Purge kills nothing and reports any process still inside.
// id is a Lab.ID.
func Purge(ctx context.Context, id string) error {
	if !idPattern.MatchString(id) {
		return fmt.Errorf("purge: %q is not a lab ID (obl + 5 lowercase letters or digits)", id)
	}
	nss := namespacesOf(id)
	if len(nss) == 0 {
		return nil
	}
	var errs []error
	for ns, pids := range processesIn(nss) {
		for _, pid := range pids {
			errs = append(errs, fmt.Errorf("process %d (%s) is still in namespace %s: stop it, then purge again", pid, comm(pid), ns))
		}
	}
	if err := deleteNS(ctx, "ip", nss); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

var idPattern = regexp.MustCompile(`^obl[a-z0-9]{5}$`)

func newID() (string, error) {
	const alnum = "abcdefghijklmnopqrstuvwxyz0123456789"
	b := make([]byte, 5)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("making a lab ID: %w", err)
	}
	for i := range b {
		b[i] = alnum[int(b[i])%len(alnum)]
	}
	return "obl" + string(b), nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type nodeSpec struct {
	addr    netip.Addr
	addr6   netip.Addr // on inet0, with Options.IPv6 only
	lan     netip.Prefix
	lanAddr netip.Addr
	sysctls []string
	ip      []string // `ip -batch` lines run inside the node
}

// noIPv6 keeps the wire quiet (no RS/MLD/DAD in captures).
var noIPv6 = []string{"net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1"}

// withIPv6 is for the nodes with an IPv6 address under Options.IPv6: no
// DAD (an address is usable at once, not after a second or two of
// "tentative"), no router solicitations (there is no router; the /64 is
// on-link).
var withIPv6 = []string{
	"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf." + InetIf + ".accept_dad=0",
	"net.ipv6.conf.all.accept_ra=0", "net.ipv6.conf.default.accept_ra=0", "net.ipv6.conf." + InetIf + ".accept_ra=0",
}

var topology = map[string]nodeSpec{
	Inet: {
		ip: []string{
			"link add " + Bridge + " index 40 type bridge",
			"link set " + Bridge + " up",
			"link set gwa master br0", "link set gwa up",
			"link set gwb master br0", "link set gwb up",
			"link set hosta master br0", "link set hosta up",
			"link set hostb master br0", "link set hostb up",
			"link set dns master br0", "link set dns up",
		},
	},
	Alice: {
		addr: AliceAddr,
		ip:   []string{"addr add 10.1.0.10/24 dev lan0", "link set lan0 up", "route add default via 10.1.0.1"},
	},
	GWA: {
		addr: GWAInet, lan: LANA, lanAddr: GWALAN,
		sysctls: []string{"net.ipv4.ip_forward=1"},
		ip: []string{
			"addr add 10.1.0.1/24 dev lan0", "link set lan0 up",
			"addr add 192.0.2.1/24 dev inet0", "link set inet0 up",
			"route add 10.2.0.0/24 via 192.0.2.2",
		},
	},
	GWB: {
		addr: GWBInet, lan: LANB, lanAddr: GWBLAN,
		sysctls: []string{"net.ipv4.ip_forward=1"},
		ip: []string{
			"addr add 10.2.0.1/24 dev lan0", "link set lan0 up",
			"addr add 192.0.2.2/24 dev inet0", "link set inet0 up",
			"route add 10.1.0.0/24 via 192.0.2.1",
		},
	},
	Bob: {
		addr: BobAddr,
		ip:   []string{"addr add 10.2.0.10/24 dev lan0", "link set lan0 up", "route add default via 10.2.0.1"},
	},
	HostA: {
		addr: HostAAddr, addr6: HostAAddr6,
		ip: []string{"addr add 192.0.2.11/24 dev inet0", "link set inet0 up"},
	},
	HostB: {
		addr: HostBAddr, addr6: HostBAddr6,
		ip: []string{"addr add 192.0.2.12/24 dev inet0", "link set inet0 up"},
	},
	DNS: {
		addr: DNSAddr, addr6: DNSAddr6,
		ip: []string{
			"addr add 192.0.2.53/24 dev inet0", "link set inet0 up",
			// So that alice and bob can use the resolver too.
			"route add 10.1.0.0/24 via 192.0.2.1", "route add 10.2.0.0/24 via 192.0.2.2",
		},
	},
}

// buildNetwork creates the namespaces and veths in one `ip -batch` run from
// the root namespace (veths are born in their namespaces, never in the
// root one), then configures each node in parallel.
func (l *Lab) buildNetwork(ctx context.Context) error {
	var b strings.Builder
	for _, n := range l.order {
		fmt.Fprintf(&b, "netns add %s\n", n.NS)
	}
	ns := func(name string) string { return l.nodes[name].NS }
	// Every interface gets its own ifindex. A veth whose ifindex equals its
	// peer's (the same small number in two namespaces, common here) gets
	// its carrier change applied by linkwatch as non-urgent, up to 1 s
	// later, and drops what it sends until then (measured: gwb's first ARP
	// reply was lost in 1 start of 3; with distinct indexes, never).
	fmt.Fprintf(&b, "link add lan0 netns %s index 10 type veth peer name lan0 netns %s index 11\n", ns(Alice), ns(GWA))
	fmt.Fprintf(&b, "link add lan0 netns %s index 12 type veth peer name lan0 netns %s index 13\n", ns(Bob), ns(GWB))
	for i, name := range []string{GWA, GWB, HostA, HostB, DNS} {
		fmt.Fprintf(&b, "link add inet0 netns %s index %d type veth peer name %s netns %s index %d\n", ns(name), 20+2*i, name, ns(Inet), 21+2*i)
	}
	if err := l.runRoot(ctx, b.String(), l.tools.path("ip"), "-batch", "-"); err != nil {
		return fmt.Errorf("creating namespaces and links: %w", err)
	}

	errs := make([]error, len(l.order))
	var wg sync.WaitGroup
	for i, n := range l.order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.configure(ctx)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for i, n := range l.order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = n.waitLinks(ctx)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// waitLinks waits until every link of the node is operationally up and
// every bridge port forwards: before that a link silently drops packets.
func (n *Node) waitLinks(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		out, err := n.lab.output(ctx, n.lab.tools.path("ip"), "-n", n.NS, "-o", "-d", "link", "show")
		if err != nil {
			return fmt.Errorf("checking links of %s: %w", n.Name, err)
		}
		var notUp []string
		for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
			f := strings.Fields(line)
			// lo is never "UP"; a bridge's own carrier is applied lazily
			// (up to 1 s) but does not gate forwarding between its ports.
			if len(f) < 2 || f[1] == "lo:" || f[1] == Bridge+":" {
				continue
			}
			if !strings.Contains(line, " state UP ") ||
				(strings.Contains(line, "bridge_slave") && !strings.Contains(line, "bridge_slave state forwarding")) {
				notUp = append(notUp, strings.TrimSuffix(f[1], ":"))
			}
		}
		if len(notUp) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("links %v of %s not up: %w", notUp, n.Name, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (n *Node) configure(ctx context.Context) error {
	spec := topology[n.Name]
	// sysctls first: with IPv6 off before links go up, nothing v6 is ever
	// sent; with it on, the link-local address skips DAD too.
	v6 := n.Addr6.IsValid()
	args := []string{n.lab.tools.path("sysctl"), "-q", "-w"}
	if v6 {
		args = append(args, withIPv6...)
	} else {
		args = append(args, noIPv6...)
	}
	args = append(args, spec.sysctls...)
	if _, err := n.Exec(ctx, args...); err != nil {
		return err
	}
	lines := append([]string{"link set lo up"}, spec.ip...)
	if v6 {
		lines = append(lines, fmt.Sprintf("addr add %s/%d dev %s nodad", n.Addr6, InetNet6.Bits(), InetIf))
	}
	if n.Name == Inet && n.lab.opts.IPv6 {
		// MLD snooping would forward a solicited-node group only to ports
		// that reported it; with no querier on the segment, flood instead.
		lines = append(lines, "link set "+Bridge+" type bridge mcast_snooping 0")
	}
	// Recreated namespaces can inherit stale neighbour entries (lab.md).
	lines = append(lines, "neigh flush all")
	if err := n.lab.runRoot(ctx, strings.Join(lines, "\n")+"\n", n.lab.tools.path("ip"), "-n", n.NS, "-batch", "-"); err != nil {
		return fmt.Errorf("configuring %s: %w", n.Name, err)
	}
	return nil
}

// RouteHostPairWorkaround makes /32<->/32 CHILD_SAs between alice and bob
// work through the gateways on strongSwan 5.9.8 (fixed upstream in 5.9.12):
// each gateway gets its inside host's /32 on lo, `lookup local` moves to
// rule preference 100 and a rule at preference 10 sends traffic to the host
// through the main table, so it still reaches the host. Lab only: the
// daemon must never need this. Idempotent.
func (l *Lab) RouteHostPairWorkaround(ctx context.Context) error {
	l.workaroundOnce.Do(func() {
		for _, gw := range []struct{ node, host string }{{GWA, AliceAddr.String()}, {GWB, BobAddr.String()}} {
			n := l.Node(gw.node)
			lines := []string{
				"addr add " + gw.host + "/32 dev lo",
				"rule add pref 100 lookup local",
				"rule del pref 0 lookup local",
				"rule add pref 10 to " + gw.host + "/32 lookup main",
			}
			if err := l.runRoot(ctx, strings.Join(lines, "\n")+"\n", l.tools.path("ip"), "-n", n.NS, "-batch", "-"); err != nil {
				l.workaroundErr = errors.Join(l.workaroundErr, fmt.Errorf("host pair workaround on %s: %w", gw.node, err))
			}
		}
	})
	return l.workaroundErr
}

// AddHostsBehind puts more hosts behind gateway gw (GWA or GWB): the first
// n addresses of prefix go on the gateway's inside host (alice or bob) as
// extra addresses, the gateway routes prefix to that host, and every other
// node on the internet (hosta, hostb, dns, the other gateway) routes prefix
// via the gateway. It returns the addresses, in order. For /32<->/32
// CHILD_SAs to those hosts on strongSwan 5.9.8 it also applies, for the
// whole prefix, what RouteHostPairWorkaround does for alice and bob (each
// address on the gateway's lo, one rule sending traffic for prefix through
// the main table); that workaround is applied too. prefix must be IPv4 and
// overlap none of the lab's networks; call it once per prefix.
func (l *Lab) AddHostsBehind(ctx context.Context, gw string, prefix netip.Prefix, n int) ([]netip.Addr, error) {
	inside := map[string]string{GWA: Alice, GWB: Bob}[gw]
	if inside == "" {
		return nil, fmt.Errorf("AddHostsBehind: %q is not a gateway; use lab.GWA or lab.GWB", gw)
	}
	prefix = prefix.Masked()
	if !prefix.Addr().Is4() || prefix.Bits() > 30 {
		return nil, fmt.Errorf("AddHostsBehind: %s: give an IPv4 prefix of at most /30", prefix)
	}
	for _, used := range []netip.Prefix{LANA, LANB, InetNet} {
		if used.Overlaps(prefix) {
			return nil, fmt.Errorf("AddHostsBehind: %s overlaps the lab's %s; pick another prefix, e.g. 10.2.1.0/24", prefix, used)
		}
	}
	if size := 1<<(32-prefix.Bits()) - 2; n < 1 || n > size {
		return nil, fmt.Errorf("AddHostsBehind: %d hosts do not fit in %s (1 to %d)", n, prefix, size)
	}
	if err := l.RouteHostPairWorkaround(ctx); err != nil {
		return nil, err
	}
	addrs := make([]netip.Addr, n)
	var host, gate strings.Builder
	a := prefix.Addr()
	for i := range addrs {
		a = a.Next()
		addrs[i] = a
		fmt.Fprintf(&host, "addr add %s/32 dev %s\n", a, LANIf)
		fmt.Fprintf(&gate, "addr add %s/32 dev lo\n", a)
	}
	gwNode, in := l.Node(gw), l.Node(inside)
	fmt.Fprintf(&gate, "route add %s via %s\n", prefix, in.Addr)
	fmt.Fprintf(&gate, "rule add pref 10 to %s lookup main\n", prefix)
	batches := map[*Node]string{in: host.String(), gwNode: gate.String()}
	for _, name := range []string{GWA, GWB, HostA, HostB, DNS} {
		if name != gw {
			batches[l.Node(name)] = fmt.Sprintf("route add %s via %s\n", prefix, gwNode.Addr)
		}
	}
	var errs []error
	for node, lines := range batches {
		if err := l.runRoot(ctx, lines, l.tools.path("ip"), "-n", node.NS, "-batch", "-"); err != nil {
			errs = append(errs, fmt.Errorf("AddHostsBehind %s on %s: %w", prefix, node.Name, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return addrs, nil
}

// runRoot runs a command in the root namespace (through the lab's spawner,
// so it is tracked and dies with the lab), feeding stdin.
func (l *Lab) runRoot(ctx context.Context, stdin string, argv ...string) error {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := l.run(cmd, "root", filepath.Base(argv[0]))
	if err != nil {
		return fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return nil
}

// output runs a command in the root namespace and returns its stdout.
func (l *Lab) output(ctx context.Context, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := l.run(cmd, "root", filepath.Base(argv[0]))
	if err != nil {
		return nil, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return out, nil
}

// deleteNamespaces checks that no process is left in the lab's namespaces
// (a process we did not start is reported, not killed), then deletes them.
func (l *Lab) deleteNamespaces() []error {
	nss := namespacesOf(l.ID)
	if len(nss) == 0 {
		return nil
	}
	var errs []error
	for ns, pids := range processesIn(nss) {
		for _, pid := range pids {
			s := stray{pid: pid, comm: comm(pid), ns: ns, start: startTime(pid)}
			l.mu.Lock()
			l.strays = append(l.strays, s)
			l.mu.Unlock()
			errs = append(errs, fmt.Errorf("process %d (%s) is still in namespace %s and was not started by the lab: not killed; stop it yourself", pid, s.comm, ns))
		}
	}
	ip := "ip"
	if l.tools != nil {
		ip = l.tools.path("ip")
	}
	if err := deleteNS(context.Background(), ip, nss); err != nil {
		errs = append(errs, err)
	}
	return errs
}

// deleteNS deletes namespaces with one `ip -batch -force` (which goes on
// after an error). It runs outside the spawner (Purge has none) and without
// Pdeathsig: finishing a deletion after the test binary died is harmless.
func deleteNS(ctx context.Context, ip string, nss []string) error {
	var b strings.Builder
	for _, ns := range nss {
		fmt.Fprintf(&b, "netns del %s\n", ns)
	}
	cmd := exec.CommandContext(ctx, ip, "-force", "-batch", "-")
	cmd.Stdin = strings.NewReader(b.String())
	out, err := cmd.CombinedOutput()
	var errs []error
	if err != nil {
		errs = append(errs, fmt.Errorf("deleting namespaces: %w: %s", err, bytes.TrimSpace(out)))
	}
	for _, ns := range nss {
		if _, err := os.Stat(filepath.Join(netnsDir, ns)); err == nil {
			errs = append(errs, fmt.Errorf("namespace %s still exists after `ip netns del`", ns))
		}
	}
	return errors.Join(errs...)
}

const netnsDir = "/run/netns"

// namespacesOf lists the named namespaces of lab id.
func namespacesOf(id string) []string {
	ents, err := os.ReadDir(netnsDir)
	if err != nil {
		return nil
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), id+"-") {
			out = append(out, e.Name())
		}
	}
	return out
}

// processesIn maps each namespace to the PIDs living in it, by comparing
// /proc/PID/ns/net with the namespace's inode while it still exists (so a
// recycled inode cannot be mistaken for ours).
func processesIn(nss []string) map[string][]int {
	byIno := map[uint64]string{}
	for _, ns := range nss {
		var st syscall.Stat_t
		if syscall.Stat(filepath.Join(netnsDir, ns), &st) == nil {
			byIno[st.Ino] = ns
		}
	}
	out := map[string][]int{}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid))
		if err != nil {
			continue
		}
		// "net:[4026532281]"
		ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(link, "net:["), "]"), 10, 64)
		if err != nil {
			continue
		}
		if ns, ok := byIno[ino]; ok && !isZombie(pid) {
			out[ns] = append(out[ns], pid)
		}
	}
	return out
}

// stray is a process found in a lab namespace at Close that the lab did not start.
type stray struct {
	pid   int
	comm  string
	ns    string
	start string
}

func (s stray) alive() bool {
	st := startTime(s.pid)
	return st != "" && st == s.start && !isZombie(s.pid)
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// procStat returns the fields of /proc/PID/stat after the command name.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	return strings.Fields(string(b[i+1:]))
}

// isZombie: an exited process whose parent has not reaped it yet counts as stopped.
func isZombie(pid int) bool {
	f := procStat(pid)
	if len(f) == 0 || (f[0] != "Z" && f[0] != "X") {
		return false
	}
	// A multi-threaded process's leader turns zombie while its other
	// threads are still exiting and holding its files: charon's UDP 500 and
	// 4500 stay bound, and a charon restarted then cannot bind them. Only
	// when no other thread is left has the process really ended.
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	return err != nil || len(tasks) <= 1
}

// startTime identifies a PID incarnation (field 22 of stat).
func startTime(pid int) string {
	f := procStat(pid)
	if len(f) < 20 {
		return ""
	}
	return f[19]
}

package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// dnsState is the running DNS part: knot signs and serves on
// 127.0.0.1:5300, unbound validates on 192.0.2.53:53, both in the dns node.
type dnsState struct {
	dir     string
	ipv6    bool // unbound listens on DNSAddr6 too
	zones   []*zoneState
	knot    *Process
	unbound *Process
}

type zoneState struct {
	Zone
	serial uint32 // in the zone file we wrote
	served uint32 // last SOA serial knot answered (knot adds one when it signs)
}

func (d *dnsState) knotConf() string { return filepath.Join(d.dir, "knot.conf") }
func (d *dnsState) zoneFile(z string) string {
	return filepath.Join(d.dir, "zones", strings.TrimSuffix(z, ".")+".zone")
}

func normalizeZones(zs []Zone) ([]Zone, error) {
	seen := map[string]bool{}
	out := make([]Zone, 0, len(zs))
	for _, z := range zs {
		name := strings.ToLower(dns.Fqdn(strings.TrimSpace(z.Name)))
		if name == "." || !dns.IsFqdn(name) {
			return nil, fmt.Errorf("zone %q: give a domain name such as example.test.", z.Name)
		}
		if _, ok := dns.IsDomainName(name); !ok || strings.ContainsAny(name, "\"\\ /") {
			return nil, fmt.Errorf("zone %q: not a plain domain name", z.Name)
		}
		if seen[name] {
			return nil, fmt.Errorf("zone %s given twice", name)
		}
		if z.Bogus && z.Unsigned {
			return nil, fmt.Errorf("zone %s: Bogus needs a signed zone, drop Unsigned", name)
		}
		seen[name] = true
		z.Name = name
		z.Records = append([]string(nil), z.Records...)
		out = append(out, z)
	}
	return out, nil
}

// SetZone adds a zone or replaces the records (and flags) of a zone with the
// same name, then restarts unbound so no stale answer is cached. It waits
// until unbound answers for every zone as it should (AD, no AD, SERVFAIL).
// If the lab serves no zones yet, it starts knot and unbound.
func (l *Lab) SetZone(ctx context.Context, z Zone) error {
	zs, err := normalizeZones([]Zone{z})
	if err != nil {
		return err
	}
	l.dnsMu.Lock()
	defer l.dnsMu.Unlock()
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return ErrClosed
	}
	if l.dns == nil {
		if err := l.tools.need(dnsTools...); err != nil {
			return err
		}
		return l.startDNS(ctx, zs)
	}
	d := l.dns
	var cur *zoneState
	for _, s := range d.zones {
		if s.Name == zs[0].Name {
			cur = s
		}
	}
	// On a bad zone, put the previous files back: knot keeps serving them.
	var undo func()
	if cur == nil {
		cur = &zoneState{serial: 1}
		d.zones = append(d.zones, cur)
		undo = func() {
			d.zones = d.zones[:len(d.zones)-1]
			os.Remove(d.zoneFile(cur.Name))
		}
	} else {
		old := *cur
		cur.serial = max(cur.serial, cur.served) + 1
		undo = func() { *cur = old }
	}
	cur.Zone = zs[0]
	if err := d.writeKnot(); err != nil {
		return err
	}
	dn := l.Node(DNS)
	knotc := []string{l.tools.path("knotc"), "-c", d.knotConf()}
	if out, err := dn.Exec(ctx, append(knotc, "zone-check", cur.Name)...); err != nil {
		name := cur.Name
		undo()
		return errors.Join(fmt.Errorf("zone %s is invalid (knotc zone-check), nothing changed:\n%s", name, bytes.TrimSpace(out)), d.writeKnot())
	}
	if _, err := dn.Exec(ctx, append(knotc, "reload")...); err != nil {
		return fmt.Errorf("knot reload: %w", err)
	}
	// A zone already loaded is reloaded even if its file's mtime did not move.
	if cur.served != 0 {
		if _, err := dn.Exec(ctx, append(knotc, "-b", "zone-reload", cur.Name)...); err != nil {
			return fmt.Errorf("knot zone-reload: %w", err)
		}
	}
	if err := l.waitKnot(ctx, d); err != nil {
		return err
	}
	if d.unbound != nil {
		if err := d.unbound.Stop(2 * time.Second); err != nil {
			return err
		}
	}
	return l.startUnbound(ctx, d)
}

func (l *Lab) startDNS(ctx context.Context, zones []Zone) error {
	t0 := time.Now()
	dn := l.Node(DNS)
	d := &dnsState{dir: dn.Dir, ipv6: dn.Addr6.IsValid()}
	for _, z := range zones {
		d.zones = append(d.zones, &zoneState{Zone: z, serial: 1})
	}
	for _, sub := range []string{"zones", "knot"} {
		if err := os.MkdirAll(filepath.Join(d.dir, sub), 0o755); err != nil {
			return fmt.Errorf("DNS directory: %w", err)
		}
	}
	if err := d.writeKnot(); err != nil {
		return err
	}
	// Catches broken records before anything runs, with knot's own message.
	if out, err := dn.Exec(ctx, l.tools.path("knotc"), "-c", d.knotConf(), "zone-check"); err != nil {
		return fmt.Errorf("a zone is invalid (knotc zone-check), fix Options.Zones:\n%s", strings.TrimSpace(string(out)))
	}
	var err error
	d.knot, err = dn.Start(ctx, "knotd", []string{l.tools.path("knotd"), "-c", d.knotConf()}, nil)
	if err != nil {
		return err
	}
	l.dns = d // from here Close and SetZone know about it
	if err := l.waitKnot(ctx, d); err != nil {
		return err
	}
	l.log.Debug("knot signed", "elapsed", time.Since(t0))
	if err := l.startUnbound(ctx, d); err != nil {
		return err
	}
	l.log.Debug("dns up", "elapsed", time.Since(t0))
	return nil
}

func (d *dnsState) writeKnot() error {
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by obol's e2e lab.
server:
    rundir: "%[1]s/knot"
    listen: 127.0.0.1@%[2]d
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: info
database:
    storage: "%[1]s/knot"
    journal-db-max-size: 64M
    kasp-db-max-size: 64M
    timer-db-max-size: 16M
template:
  - id: default
    storage: "%[1]s/zones"
    file: "%%s.zone"
    # Keep our zone files as written: signatures live in memory only.
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
`, d.dir, KnotPort)
	for _, z := range d.zones {
		fmt.Fprintf(&b, "  - domain: %q\n", z.Name)
		if !z.Unsigned {
			b.WriteString("    dnssec-signing: on\n")
		}
		if err := d.writeZone(z); err != nil {
			return err
		}
	}
	if err := os.WriteFile(d.knotConf(), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing knot.conf: %w", err)
	}
	return nil
}

func (d *dnsState) writeZone(z *zoneState) error {
	var b strings.Builder
	fmt.Fprintf(&b, "$ORIGIN %s\n$TTL 300\n", z.Name)
	// Out-of-zone NS: unbound reaches knot through stub-zone, never through NS.
	fmt.Fprintf(&b, "@ 300 IN SOA ns.obol-lab.invalid. hostmaster.obol-lab.invalid. %d 3600 900 604800 300\n", z.serial)
	b.WriteString("@ 300 IN NS ns.obol-lab.invalid.\n")
	for _, r := range z.Records {
		b.WriteString(r)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(d.zoneFile(z.Name), []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing zone %s: %w", z.Name, err)
	}
	return nil
}

// waitKnot waits until knot serves every zone at (at least) the serial we
// wrote and, for signed zones, with RRSIGs and a KSK.
func (l *Lab) waitKnot(ctx context.Context, d *dnsState) error {
	dn := l.Node(DNS)
	knot := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), KnotPort)
	return l.poll(ctx, d.knot, "knot to serve the zones (signed)", func(ctx context.Context) error {
		for _, z := range d.zones {
			r, err := dn.query(ctx, "tcp", knot, z.Name, dns.TypeSOA)
			if err != nil {
				return err
			}
			if r.Rcode != dns.RcodeSuccess || !r.Authoritative {
				return fmt.Errorf("%s SOA: %s", z.Name, dns.RcodeToString[r.Rcode])
			}
			var soa *dns.SOA
			signed := false
			for _, rr := range r.Answer {
				switch rr := rr.(type) {
				case *dns.SOA:
					soa = rr
				case *dns.RRSIG:
					signed = true
				}
			}
			if soa == nil || soa.Serial < z.serial {
				return fmt.Errorf("%s: not at serial %d yet", z.Name, z.serial)
			}
			if !z.Unsigned && !signed {
				return fmt.Errorf("%s: not signed yet", z.Name)
			}
			z.served = soa.Serial
		}
		return nil
	})
}

// anchors asks knot for each signed zone's KSK (DNSKEY flag 257) and
// returns unbound trust anchors: the DNSKEY itself, or for a Bogus zone a DS
// of it with a corrupted digest (matches no key: validation fails).
func (l *Lab) anchors(ctx context.Context, d *dnsState) (string, error) {
	dn := l.Node(DNS)
	knot := netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), KnotPort)
	var b strings.Builder
	for _, z := range d.zones {
		if z.Unsigned {
			continue
		}
		r, err := dn.query(ctx, "tcp", knot, z.Name, dns.TypeDNSKEY)
		if err != nil {
			return "", err
		}
		n := 0
		for _, rr := range r.Answer {
			k, ok := rr.(*dns.DNSKEY)
			if !ok || k.Flags&dns.SEP == 0 {
				continue
			}
			n++
			if !z.Bogus {
				fmt.Fprintln(&b, k.String())
				continue
			}
			ds := k.ToDS(dns.SHA256)
			if ds == nil {
				return "", fmt.Errorf("%s: cannot make a DS of the KSK", z.Name)
			}
			flip := "0"
			if ds.Digest[0] == '0' {
				flip = "1"
			}
			ds.Digest = flip + ds.Digest[1:]
			fmt.Fprintln(&b, ds.String())
		}
		if n == 0 {
			return "", fmt.Errorf("knot serves no KSK (DNSKEY flag 257) for %s", z.Name)
		}
	}
	return b.String(), nil
}

func (l *Lab) startUnbound(ctx context.Context, d *dnsState) error {
	anchors, err := l.anchors(ctx, d)
	if err != nil {
		return err
	}
	anchorFile := filepath.Join(d.dir, "anchors.txt")
	if err := os.WriteFile(anchorFile, []byte(anchors), 0o644); err != nil {
		return fmt.Errorf("writing trust anchors: %w", err)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `# Written by obol's e2e lab.
server:
    verbosity: 1
    use-syslog: no
    logfile: ""
    log-servfail: yes
    val-log-level: 2
    do-daemonize: no
    chroot: ""
    username: ""
    directory: "%[1]s"
    pidfile: "%[1]s/unbound.pid"
    interface: %[2]s
    interface: 127.0.0.1
    port: %[3]d
    do-ip6: %[4]s
    access-control: 0.0.0.0/0 allow
    access-control: ::/0 allow
    num-threads: 1
    so-reuseport: no
    msg-cache-size: 4m
    rrset-cache-size: 8m
    module-config: "validator iterator"
    trust-anchor-signaling: no
    # knot listens on 127.0.0.1.
    do-not-query-localhost: no
`, d.dir, DNSAddr, DNSPort, map[bool]string{true: "yes", false: "no"}[d.ipv6])
	if d.ipv6 {
		// knot stays on 127.0.0.1: unbound reaches it over IPv4 whatever
		// the client used.
		fmt.Fprintf(&b, "    interface: %s\n", DNSAddr6)
	}
	if anchors != "" {
		fmt.Fprintf(&b, "    trust-anchor-file: %q\n", anchorFile)
	}
	// unbound answers RFC 6303 / special-use names (10.in-addr.arpa.,
	// 2.0.192.in-addr.arpa., test., ...) itself unless told not to: lift
	// that for every zone and its ancestors (a no-op for other names).
	nodefault := map[string]bool{}
	for _, z := range d.zones {
		if z.Unsigned {
			fmt.Fprintf(&b, "    domain-insecure: %q\n", z.Name)
		}
		labels := dns.SplitDomainName(z.Name)
		for i := range labels {
			name := dns.Fqdn(strings.Join(labels[i:], "."))
			if !nodefault[name] {
				nodefault[name] = true
				fmt.Fprintf(&b, "    local-zone: %q nodefault\n", name)
			}
		}
	}
	b.WriteString("remote-control:\n    control-enable: no\n")
	for _, z := range d.zones {
		fmt.Fprintf(&b, "stub-zone:\n    name: %q\n    stub-addr: 127.0.0.1@%d\n", z.Name, KnotPort)
	}
	conf := filepath.Join(d.dir, "unbound.conf")
	if err := os.WriteFile(conf, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing unbound.conf: %w", err)
	}
	d.unbound, err = l.Node(DNS).Start(ctx, "unbound", []string{l.tools.path("unbound"), "-d", "-c", conf}, nil)
	if err != nil {
		return err
	}
	return l.waitUnbound(ctx, d)
}

// waitUnbound waits until unbound answers each zone's SOA as it should:
// AD for signed zones, an answer for unsigned ones, SERVFAIL for bogus ones.
func (l *Lab) waitUnbound(ctx context.Context, d *dnsState) error {
	dn := l.Node(DNS)
	return l.poll(ctx, d.unbound, "unbound to validate the zones", func(ctx context.Context) error {
		servers := []netip.AddrPort{netip.AddrPortFrom(DNSAddr, DNSPort)}
		if d.ipv6 {
			servers = append(servers, netip.AddrPortFrom(DNSAddr6, DNSPort))
		}
		for _, z := range d.zones {
			for _, srv := range servers {
				if err := checkZoneAnswer(ctx, dn, srv, z); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// checkZoneAnswer asks srv for z's SOA and says whether the answer is as
// it should be: AD for signed zones, an answer for unsigned ones,
// SERVFAIL for bogus ones.
func checkZoneAnswer(ctx context.Context, dn *Node, srv netip.AddrPort, z *zoneState) error {
	r, err := dn.query(ctx, "tcp", srv, z.Name, dns.TypeSOA)
	if err != nil {
		return err
	}
	switch {
	case z.Bogus:
		if r.Rcode != dns.RcodeServerFailure {
			return fmt.Errorf("bogus zone %s at %s: %s, want SERVFAIL", z.Name, srv, dns.RcodeToString[r.Rcode])
		}
	case r.Rcode != dns.RcodeSuccess || len(r.Answer) == 0:
		return fmt.Errorf("%s at %s: %s", z.Name, srv, dns.RcodeToString[r.Rcode])
	case !z.Unsigned && !r.AuthenticatedData:
		return fmt.Errorf("%s at %s: answer not validated (no AD)", z.Name, srv)
	}
	return nil
}

// poll runs check every 10 ms until it succeeds, proc exits, or 10 s (or
// ctx) run out; the last check error explains a timeout.
func (l *Lab) poll(ctx context.Context, proc *Process, what string, check func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var last error
	for {
		qctx, qcancel := context.WithTimeout(ctx, time.Second)
		last = check(qctx)
		qcancel()
		if last == nil {
			return nil
		}
		if proc.Exited() {
			return fmt.Errorf("%s exited while waiting for %s; its log %s:\n%s", proc.Name, what, proc.Log, tail(proc.Log, 15))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s (see %s): %w (last: %v)", what, proc.Log, ctx.Err(), last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

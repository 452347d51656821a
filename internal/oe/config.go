package oe

import (
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/obol-ipsec/obol/internal/policy"
	"github.com/obol-ipsec/obol/resolver"
)

// Config is [oe] in obold.toml. OE is off while it has no [[oe.group]].
type Config struct {
	// Address is this host's IKE address (the gateway's public address).
	Address string `toml:"address"`
	// Address6 is this host's IPv6 IKE address on a dual-stack host, with
	// Address its IPv4 one. IKE with IPv6 peers goes from it and, unless
	// Identity is @FQDN, it is our identity towards them (their obold
	// looks our key up in its ip6.arpa reverse map).
	Address6 string `toml:"address6"`
	// Identity is our IKE identity: "" for Address itself, or "@FQDN" for
	// hosts without a reverse map (peers then find our key in the FQDN's
	// forward map).
	Identity string `toml:"identity"`
	// KeyFile is our private key (PEM; RSA or Ed25519). Its public half is
	// what the operator publishes in DNS (obolctl records).
	KeyFile string `toml:"key_file"`
	// Protect are the networks this host speaks for as a gateway (its
	// clients); "" means the host itself only.
	Protect []string `toml:"protect"`
	// InitialLifespan is how long a new tunnel lives before its use is
	// checked (spec: 1 minute); BusyLifespan is the next span when it
	// carried traffic in the last half (spec: 20 minutes).
	InitialLifespan Duration `toml:"initial_lifespan"`
	BusyLifespan    Duration `toml:"busy_lifespan"`
	// MaxPending caps negotiations in progress; ACQUIREs beyond it get the
	// group's failure shunt at once.
	MaxPending int `toml:"max_pending"`
	// MaxTracked caps the pairs obold keeps state for (up, negotiating or
	// failed); beyond it an ACQUIRE gets its group's failure shunt in the
	// kernel and nothing in obold, so memory stays bounded under any flood.
	MaxTracked int `toml:"max_tracked"`
	// RetryMin and RetryMax bound the per-destination backoff after failures.
	RetryMin Duration `toml:"retry_min"`
	RetryMax Duration `toml:"retry_max"`
	// IKETimeout bounds one IKE negotiation with one gateway.
	IKETimeout Duration `toml:"ike_timeout"`
	// ConnLinger is how long a closed responder tunnel's conn stays loaded
	// in charon, at most as long as the DNS answer it was built from may be
	// cached: when the initiator comes again, the responder's key lookup
	// no longer races its IKE_AUTH. "0s" unloads at once. Default 2m.
	ConnLinger *Duration `toml:"conn_linger"`
	// DNS configures the resolver module.
	DNS resolver.Config `toml:"dns"`
	// Groups are the policy groups.
	Groups []policy.GroupConfig `toml:"group"`
}

// Duration is a Go duration written as a string ("1m").
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil || v < 0 {
		return fmt.Errorf("%q is not a duration; write a string such as \"1m\" or \"30s\"", b)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Enabled tells whether OE is configured.
func (c Config) Enabled() bool { return len(c.Groups) > 0 }

// WithDefaults fills what an operator left out.
func (c Config) WithDefaults() Config {
	if c.InitialLifespan == 0 {
		c.InitialLifespan = Duration(time.Minute)
	}
	if c.BusyLifespan == 0 {
		c.BusyLifespan = Duration(20 * time.Minute)
	}
	if c.MaxPending == 0 {
		c.MaxPending = 256
	}
	if c.MaxTracked == 0 {
		c.MaxTracked = 16384
	}
	if c.RetryMin == 0 {
		c.RetryMin = Duration(2 * time.Second)
	}
	if c.RetryMax == 0 {
		c.RetryMax = Duration(2 * time.Minute)
	}
	if c.IKETimeout == 0 {
		c.IKETimeout = Duration(10 * time.Second)
	}
	if c.ConnLinger == nil {
		d := Duration(2 * time.Minute)
		c.ConnLinger = &d
	}
	return c
}

// Problem is a config error at a key path ("oe.group[1].cidrs").
type Problem = policy.Problem

// Validate returns every problem of an enabled [oe] section.
func (c Config) Validate() []Problem {
	if !c.Enabled() {
		return nil
	}
	var ps []Problem
	if a, err := netip.ParseAddr(c.Address); err != nil || !a.IsValid() {
		ps = append(ps, Problem{Path: "oe.address", Msg: fmt.Sprintf("address %q is not an IP address; write this host's IKE address, e.g. \"192.0.2.1\"", c.Address)})
	}
	if c.Address6 != "" {
		a6, err := netip.ParseAddr(c.Address6)
		switch {
		case err != nil || !a6.Is6() || a6.Is4In6() || a6.Zone() != "":
			ps = append(ps, Problem{Path: "oe.address6", Msg: fmt.Sprintf("address6 %q is not a global IPv6 address; write this host's IPv6 IKE address, e.g. \"2001:db8::1\"", c.Address6)})
		case a6.IsLinkLocalUnicast() || a6.IsLoopback() || a6.IsMulticast() || a6.IsUnspecified():
			ps = append(ps, Problem{Path: "oe.address6", Msg: fmt.Sprintf("address6 %s is not a global unicast address: IKE with OE peers needs one; write e.g. \"2001:db8::1\"", a6)})
		}
		if a, err := netip.ParseAddr(c.Address); err == nil && a.Is6() && !a.Is4In6() {
			ps = append(ps, Problem{Path: "oe.address6", Msg: "address is an IPv6 address already: on a dual-stack host write the IPv4 address in address and the IPv6 one in address6"})
		}
	}
	if c.Identity != "" && c.Identity[0] != '@' {
		if _, err := netip.ParseAddr(c.Identity); err != nil {
			ps = append(ps, Problem{Path: "oe.identity", Msg: fmt.Sprintf("identity %q is neither an address nor @FQDN; leave it out to use the address, or write \"@host.example.org\"", c.Identity)})
		} else if c.Address6 != "" {
			ps = append(ps, Problem{Path: "oe.identity", Msg: fmt.Sprintf("identity %q is an address, but with address6 this host speaks IKE from two addresses and each is its identity towards peers of its family; leave identity out, or write \"@host.example.org\"", c.Identity)})
		}
	}
	// A group that starts or answers OE for one family needs an IKE
	// address of that family: peers look our key up by that address.
	v4, v6 := c.families()
	for i, g := range c.Groups {
		if !policy.Group(g.Group).Responds() {
			continue
		}
		for _, cidr := range g.CIDRs {
			pr, err := netip.ParsePrefix(cidr)
			if err != nil {
				continue // policy.New reports it
			}
			switch {
			case pr.Addr().Is6() && !v6:
				ps = append(ps, Problem{Path: fmt.Sprintf("oe.group[%d].cidrs", i), Msg: fmt.Sprintf("%s is IPv6 but [oe] has no IPv6 address for IKE with peers there; add address6 = \"2001:db8::1\" (this host's IPv6 address), or move the CIDR to a clear or block group", pr)})
			case pr.Addr().Is4() && !v4:
				ps = append(ps, Problem{Path: fmt.Sprintf("oe.group[%d].cidrs", i), Msg: fmt.Sprintf("%s is IPv4 but [oe] address is IPv6; write the IPv4 address in address and the IPv6 one in address6", pr)})
			}
		}
	}
	if c.KeyFile == "" {
		ps = append(ps, Problem{Path: "oe", Msg: "OE needs our private key: add key_file = \"PATH\" (PEM) to [oe]"})
	}
	for i, p := range c.Protect {
		if _, err := netip.ParsePrefix(p); err != nil {
			ps = append(ps, Problem{Path: "oe.protect", Msg: fmt.Sprintf("protect[%d] %q is not a CIDR; write e.g. \"10.1.0.0/24\"", i, p)})
		}
	}
	if c.MaxPending < 0 {
		ps = append(ps, Problem{Path: "oe.max_pending", Msg: "max_pending must be positive; write e.g. 256"})
	}
	if c.MaxTracked < 0 || (c.MaxTracked > 0 && c.MaxTracked < c.MaxPending) {
		ps = append(ps, Problem{Path: "oe.max_tracked", Msg: "max_tracked must be at least max_pending; write e.g. 16384"})
	}
	if c.RetryMax != 0 && c.RetryMin > c.RetryMax {
		ps = append(ps, Problem{Path: "oe.retry_min", Msg: "retry_min is above retry_max; swap them"})
	}
	_, gps := policy.New("oe.group", c.Groups)
	ps = append(ps, gps...)
	if err := c.DNS.Validate(); err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			key, msg, ok := strings.Cut(strings.TrimPrefix(line, "resolver."), ": ")
			if !ok {
				key, msg = "", line
			}
			ps = append(ps, Problem{Path: strings.TrimSuffix("oe.dns."+key, "."), Msg: msg})
		}
	}
	return ps
}

// families says which IKE address families the config has: address and
// address6 that parse.
func (c Config) families() (v4, v6 bool) {
	for _, s := range []string{c.Address, c.Address6} {
		if a, err := netip.ParseAddr(s); err == nil {
			a = a.Unmap()
			v4, v6 = v4 || a.Is4(), v6 || a.Is6()
		}
	}
	return v4, v6
}

// IKEAddrs are this host's IKE addresses, Address first, then Address6
// when set. Call it on a validated config.
func (c Config) IKEAddrs() []netip.Addr {
	var out []netip.Addr
	for _, s := range []string{c.Address, c.Address6} {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

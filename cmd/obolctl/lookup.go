package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/obol-ipsec/obol/internal/control"
)

const lookupHelp = `Asks the running obold what DNS publishes for IP (IPSECKEY, TXT X-IPsec-Server
and KEY records in its reverse map, through obold's validating resolver) and
what obold's OE would do with traffic to it: the policy group and CIDR that
match, the shunts, the gateways with their keys (algorithm and key id, as
"pki --keyid" prints it), the records skipped and why, the DNSSEC verdict, and
the resulting action, e.g. "would initiate OE to gateway 192.0.2.2 (IPSECKEY,
DNSSEC secure)" or "would drop: private and no OE records". Nothing is
changed, except that the answer lands in obold's DNS cache.`

func (e *env) lookup(args []string) error {
	fs := e.flags("lookup", "lookup IP [--json]", lookupHelp)
	asJSON := fs.Bool("json", false, "print JSON")
	arg, err := e.parseOne(fs, args)
	if err != nil {
		return err
	}
	addr, err := netip.ParseAddr(arg)
	if err != nil || addr.Zone() != "" {
		return fmt.Errorf("%q is not an IP address; give the peer's address, e.g. obolctl lookup 192.0.2.11", arg)
	}
	var l control.OELookup
	if err := e.call(control.MethodOELookup, control.OELookupParams{Addr: addr.String()}, &l); err != nil {
		var ce *control.Error
		if errors.As(err, &ce) && ce.Code == control.CodeOEOff {
			return fmt.Errorf("%w\n(obolctl records shows the DNS records to publish; they do not need OE to be running)", err)
		}
		return err
	}
	if *asJSON {
		return e.printJSON(l)
	}
	printLookup(e.stdout, l, time.Now())
	return nil
}

// parseOne parses a command's flags around its one argument, which may
// come before or after them ("lookup IP --json" or "lookup --json IP").
func (e *env) parseOne(fs *flag.FlagSet, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return "", err
		}
		return "", errUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return "", errUsage
	}
	arg := fs.Arg(0)
	if err := e.parse(fs, fs.Args()[1:]); err != nil {
		return "", err
	}
	return arg, nil
}

// field prints "label:" and value in the fixed columns of lookup's
// output; an empty label continues the field above.
func field(w io.Writer, label, value string) {
	if label != "" {
		label += ":"
	}
	fmt.Fprintf(w, "%-11s %s\n", label, value)
}

func printLookup(w io.Writer, l control.OELookup, now time.Time) {
	p := l.Policy
	field(w, "address", l.Addr)
	switch {
	case p.Exempt != "":
		field(w, "policy", fmt.Sprintf("exempt (%s): group %s", p.Exempt, p.Group))
	case p.CIDR != "":
		field(w, "policy", fmt.Sprintf("group %s, CIDR %s", p.Group, p.CIDR))
	default:
		field(w, "policy", fmt.Sprintf("group %s (no [[oe.group]] covers it)", p.Group))
	}
	if p.Exempt == "" {
		shunts := fmt.Sprintf("while IKE runs %s; after a failure %s", p.NegotiationShunt, p.FailureShunt)
		if p.ShuntLifetime > 0 {
			shunts += " for " + p.ShuntLifetime.String()
		}
		field(w, "shunts", shunts)
	}
	d := l.DNS
	var facts []string
	if d.DNSSEC != "" {
		facts = append(facts, "DNSSEC "+d.DNSSEC)
	}
	switch {
	case d.Error != "":
		facts = append(facts, "NO ANSWER: "+d.Error)
	case d.Unusable != "":
		facts = append(facts, "UNUSABLE: "+d.Unusable)
	case len(d.Gateways) == 0:
		facts = append(facts, "no OE records", "TTL "+d.TTL.String())
	default:
		facts = append(facts, "TTL "+d.TTL.String())
	}
	if d.FromCache {
		facts = append(facts, "from obold's cache")
	}
	field(w, "dns", dash(d.Name)+" "+strings.Join(facts, ", "))

	if len(d.Gateways) > 0 {
		fmt.Fprintln(w)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PREC\tGATEWAY\tSOURCE\tALGORITHM\tKEY ID")
		for _, g := range d.Gateways {
			name := g.Address
			if name == "" {
				name = "@" + strings.TrimSuffix(g.FQDN, ".")
			}
			for i, k := range g.Keys {
				alg := k.Algorithm
				if k.Bits > 0 {
					alg = fmt.Sprintf("%s %d", alg, k.Bits)
				}
				if i == 0 {
					fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", g.Precedence, name, g.Source, alg, k.KeyID)
				} else {
					fmt.Fprintf(tw, "\t\t\t%s\t%s\n", alg, k.KeyID)
				}
			}
		}
		tw.Flush()
	}
	if len(d.Skipped) > 0 {
		fmt.Fprintln(w, "\nskipped records:")
		for _, s := range d.Skipped {
			fmt.Fprintln(w, "  "+s)
		}
	}

	fmt.Fprintln(w)
	field(w, "action", l.Action)
	for _, s := range l.Details {
		field(w, "", s)
	}
	field(w, "responder", l.Responder)
	label := "now"
	for _, t := range l.Tunnels {
		s := fmt.Sprintf("%s %s %s", t.Pair, t.Role, t.State)
		if t.Gateway != "" {
			s += " via " + t.Gateway
		}
		if !t.Until.IsZero() && t.Until.After(now) {
			switch t.State {
			case "failed":
				s += fmt.Sprintf(", shunt for %s more", t.Until.Sub(now).Round(time.Second))
			case "up":
				s += fmt.Sprintf(", use checked in %s", t.Until.Sub(now).Round(time.Second))
			}
		}
		if t.Reason != "" {
			s += ": " + t.Reason
		}
		field(w, label, s)
		label = ""
	}
}

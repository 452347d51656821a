// Command corpkeys is an example obol authentication-method plugin: it
// finds an OE peer's key in a company's own key directory, a DNS zone the
// company signs, instead of in the peer's reverse map. For the peer
// 192.0.2.12 it asks TXT 192-0-2-12.ZONE, whose text is "ed25519 BASE64"
// or "rsa BASE64" (RFC 3110), optionally followed by "gateway ADDR".
//
// obold runs it (never a user), named in obold.toml:
//
//	[auth]
//	methods = ["corpkeys", "dns"]
//	[[auth.plugin]]
//	name = "corpkeys"
//	plugin = "/usr/libexec/obol/corpkeys"
//	args = ["--server", "192.0.2.53:53", "--zone", "keys.corp.example."]
//
// See README.md for the walk-through.
package main

import (
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
)

func main() {
	server := flag.String("server", "127.0.0.1:53", "the validating resolver to ask (host:port)")
	zone := flag.String("zone", "", "the key directory zone, e.g. keys.corp.example.")
	insecure := flag.Bool("allow-insecure", false, "use answers that did not validate (then reported as BTNS, not DNSSEC)")
	flag.Parse()
	if *zone == "" {
		fmt.Fprintln(os.Stderr, "corpkeys: --zone is required")
		os.Exit(2)
	}
	d := &directory{server: *server, zone: dns.Fqdn(*zone), allowInsecure: *insecure, client: &dns.Client{Timeout: 2 * time.Second}}
	// The handshake, the gRPC server and the protocol version are the
	// SDK's: a plugin only implements its contract.
	plugins.ServeWith(plugins.Modules{}, d)
}

// directory implements plugins.AuthMethod.
type directory struct {
	server, zone  string
	allowInsecure bool
	client        *dns.Client
}

// name is the directory entry of a peer: 192.0.2.12 -> 192-0-2-12.ZONE,
// 2001:db8::12 -> 2001-db8--12.ZONE.
func (d *directory) name(q plugins.LookupQuery) (string, error) {
	if !q.Addr.IsValid() {
		return "", errors.New("corpkeys: only address lookups are supported; the directory is keyed by address")
	}
	label := strings.NewReplacer(".", "-", ":", "-").Replace(q.Addr.Unmap().String())
	return label + "." + d.zone, nil
}

func (d *directory) Credentials(ctx context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	name, err := d.name(q)
	if err != nil {
		return plugins.LookupAnswer{}, err
	}
	m := new(dns.Msg)
	m.SetQuestion(name, dns.TypeTXT)
	m.SetEdns0(1232, true) // DO: ask the resolver to validate
	r, _, err := d.client.ExchangeContext(ctx, m, d.server)
	if err != nil {
		return plugins.LookupAnswer{Name: name}, fmt.Errorf("corpkeys: ask %s about %s: %w", d.server, name, err)
	}
	ans := plugins.LookupAnswer{Name: name, TTL: time.Minute, DNSSEC: plugins.DNSSECInsecure}
	if r.AuthenticatedData {
		ans.DNSSEC = plugins.DNSSECSecure
	}
	switch {
	case r.Rcode == dns.RcodeNameError || r.Rcode == dns.RcodeSuccess && len(r.Answer) == 0:
		return ans, nil // not in the directory: no opinion, the next method decides
	case r.Rcode == dns.RcodeServerFailure:
		// A validating resolver says SERVFAIL for a zone that fails
		// validation: refuse outright rather than let a later method try.
		ans.DNSSEC, ans.Unusable = plugins.DNSSECBogus, "the key directory's answer for "+name+" failed validation"
		return ans, errors.New(ans.Unusable)
	case r.Rcode != dns.RcodeSuccess:
		return ans, fmt.Errorf("corpkeys: %s answered %s for %s", d.server, dns.RcodeToString[r.Rcode], name)
	case ans.DNSSEC != plugins.DNSSECSecure && !d.allowInsecure:
		ans.Unusable = "the key directory's answer for " + name + " is not DNSSEC-signed (run with --allow-insecure to accept it)"
		return ans, errors.New(ans.Unusable)
	}
	gw := plugins.Gateway{Addr: q.Addr.Unmap(), Source: "corpkeys TXT"}
	for _, rr := range r.Answer {
		txt, ok := rr.(*dns.TXT)
		if !ok {
			continue
		}
		ans.TTL = time.Duration(txt.Hdr.Ttl) * time.Second
		if err := parseEntry(strings.Join(txt.Txt, ""), &gw); err != nil {
			ans.Skipped = append(ans.Skipped, name+": "+err.Error())
		}
	}
	if len(gw.Keys) == 0 {
		return ans, nil
	}
	ans.Gateways = []plugins.Gateway{gw}
	ans.Method = plugins.MethodDNSSEC
	if ans.DNSSEC != plugins.DNSSECSecure {
		ans.Method = plugins.MethodBTNS
	}
	return ans, nil
}

// parseEntry reads "ALG BASE64 [gateway ADDR]" into gw.
func parseEntry(s string, gw *plugins.Gateway) error {
	f := strings.Fields(s)
	if len(f) != 2 && len(f) != 4 {
		return fmt.Errorf("entry %q: want \"ALG BASE64\" or \"ALG BASE64 gateway ADDR\"", s)
	}
	if f[0] != "ed25519" && f[0] != "rsa" {
		return fmt.Errorf("entry %q: algorithm %q, want ed25519 or rsa", s, f[0])
	}
	key, err := base64.StdEncoding.DecodeString(f[1])
	if err != nil {
		return fmt.Errorf("entry %q: key: %w", s, err)
	}
	if f[0] == "ed25519" && len(key) != 32 {
		return fmt.Errorf("entry %q: ed25519 key of %d bytes", s, len(key))
	}
	if len(f) == 4 {
		a, err := netip.ParseAddr(f[3])
		if f[2] != "gateway" || err != nil {
			return fmt.Errorf("entry %q: want \"gateway ADDR\" after the key", s)
		}
		gw.Addr = a.Unmap()
	}
	gw.Keys = append(gw.Keys, plugins.PublicKey{Algorithm: f[0], Data: key})
	return nil
}

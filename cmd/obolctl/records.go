package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/internal/config"
	"github.com/obol-ipsec/obol/internal/keyfile"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/resolver"
)

const recordsHelp = `Prints, in zone-file syntax, the DNS records to publish so that opportunistic
encryption peers find this host, like libreswan's "ipsec showhostkey". It reads
address, identity, key_file and protect from [oe] of obold's config; obold need
not run.

  - this host's own key in the reverse map of its address: IPSECKEY (gateway
    type 1 or 2: the address; algorithm 2 RSA or 4 Ed25519) and KEY (flags
    0x4200, protocol 4 IPsec, algorithm 5 RSA or 15 Ed25519);
  - with an identity "@FQDN" instead: the key in the FQDN's forward map, and
    in the address's reverse map a record naming the identity;
  - for each protect network, the delegation its clients publish in their own
    reverse map: TXT X-IPsec-Server(10)=ADDRESS [RSA KEY] and IPSECKEY, for
    the clients named with --client, else for the first address as an example.

Sign the zones (DNSSEC), then check what peers see with "obolctl lookup IP".`

// recordsPrecedence is the precedence of the records obolctl prints.
const recordsPrecedence = 10

// KEY RR fields (RFC 2535 section 3.1): flags 0x4200 are "use prohibited
// for confidentiality" (01 in bits 0-1: the key authenticates, DH gives
// confidentiality) and "key of the non-zone entity named by the owner"
// (10 in bits 6-7), as the OE draft publishes; protocol 4 is IPsec.
const (
	keyFlags    = 0x4200
	keyProtocol = 4
)

// hostRecords is what obolctl records prints (--json prints it as is).
type hostRecords struct {
	Config   string          `json:"config"`
	Address  string          `json:"address"`
	Address6 string          `json:"address6,omitempty"` // a dual-stack host's IPv6 IKE address
	Identity string          `json:"identity"`
	Key      recordKey       `json:"key"`
	Notes    []string        `json:"notes,omitempty"`
	Sections []recordSection `json:"sections"`
}

type recordKey struct {
	Algorithm string `json:"algorithm"`
	Bits      int    `json:"bits,omitempty"`
	KeyID     string `json:"key_id"`
	// DNS is the public key as DNS carries it (base64 of the RFC 3110 form
	// for RSA, of the 32 raw bytes for Ed25519).
	DNS string `json:"dns"`
}

// recordSection is records for one owner or purpose, with why.
type recordSection struct {
	Title   string       `json:"title"`
	Notes   []string     `json:"notes,omitempty"`
	Records []zoneRecord `json:"records"`
}

type zoneRecord struct {
	Owner string `json:"owner"`
	Type  string `json:"type"`
	Data  string `json:"data"` // presentation form, as in a zone file
}

func (e *env) records(args []string) error {
	fs := e.flags("records", "records [--config FILE] [--client ADDR]... [--json]", recordsHelp)
	path := fs.String("config", "/etc/obol/obold.toml", "obold's config `FILE`")
	asJSON := fs.Bool("json", false, "print JSON")
	var clients []netip.Addr
	fs.Func("client", "print the delegation for this client `ADDR` of a protect network (repeat it, or separate with commas); without it, for the network's first address as an example", func(v string) error {
		for _, a := range strings.Split(v, ",") {
			ip, err := netip.ParseAddr(strings.TrimSpace(a))
			if err != nil || ip.Zone() != "" {
				return fmt.Errorf("%q is not an IP address", a)
			}
			clients = append(clients, ip.Unmap())
		}
		return nil
	})
	if err := e.parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*path)
	if err != nil {
		return fmt.Errorf("config has problems:\n%w", err)
	}
	pub, err := readPublicKey(cfg.OE.KeyFile)
	if err != nil {
		return err
	}
	recs, err := buildRecords(*path, cfg.OE, pub, clients)
	if err != nil {
		return err
	}
	if *asJSON {
		return e.printJSON(recs)
	}
	printRecords(e.stdout, recs)
	return nil
}

// readPublicKey reads [oe] key_file (a PEM private key) and returns its
// public half.
func readPublicKey(file string) (crypto.PublicKey, error) {
	if file == "" {
		return nil, errors.New("[oe] has no key_file; make a key (pki --gen --type ed25519 --outform pem > /etc/obol/oe-key.pem) and add key_file = \"/etc/obol/oe-key.pem\" to [oe]")
	}
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read [oe] key_file: %w; fix the path or run obolctl as a user who may read it", err)
	}
	signer, err := keyfile.Signer(data)
	if err != nil {
		return nil, fmt.Errorf("key_file %s: %w", file, err)
	}
	key := any(signer)
	switch k := key.(type) {
	case *rsa.PrivateKey:
		return &k.PublicKey, nil
	case ed25519.PrivateKey:
		return k.Public(), nil
	case *ecdsa.PrivateKey:
		return nil, fmt.Errorf("key_file %s is an ECDSA key, which OE peers cannot take from DNS; make an Ed25519 or RSA key (pki --gen --type ed25519 --outform pem)", file)
	default:
		return nil, fmt.Errorf("key_file %s holds a %T, which OE peers cannot take from DNS; make an Ed25519 or RSA key (pki --gen --type ed25519 --outform pem)", file, key)
	}
}

// buildRecords makes the records for the host [oe] describes, whose public
// key is pub, with delegations for clients (each in a protect network) or,
// for networks none of them is in, for an example client. file is the
// config's name, for the header.
func buildRecords(file string, c oe.Config, pub crypto.PublicKey, clients []netip.Addr) (hostRecords, error) {
	addr, err := netip.ParseAddr(c.Address)
	if err != nil || addr.Zone() != "" {
		return hostRecords{}, fmt.Errorf("[oe] address %q is not an IP address; write this host's IKE address, e.g. address = \"192.0.2.1\"", c.Address)
	}
	addr = addr.Unmap()
	k, err := resolver.NewPublicKey(pub)
	if err != nil {
		return hostRecords{}, fmt.Errorf("key_file: %w", err)
	}
	// Peers check keys with the resolver's rules; refuse what they refuse.
	if _, err := resolver.CryptoKey(k); err != nil {
		return hostRecords{}, fmt.Errorf("key_file: %w; peers would skip this key: make an RSA key of %d to %d bits or an Ed25519 key", err, resolver.MinRSABits, resolver.MaxRSABits)
	}
	id, err := resolver.KeyID(k)
	if err != nil {
		return hostRecords{}, fmt.Errorf("key_file: %w", err)
	}
	b64 := base64.StdEncoding.EncodeToString(k.Data)
	r := hostRecords{Config: file, Address: addr.String(), Identity: addr.String(), Key: recordKey{Algorithm: k.Algorithm, KeyID: id, DNS: b64}}
	if rk, ok := pub.(*rsa.PublicKey); ok {
		r.Key.Bits = rk.N.BitLen()
	}
	if !c.Enabled() {
		r.Notes = append(r.Notes, "[oe] has no [[oe.group]] yet: obold runs no OE with this config; these are the records to publish once it does")
	}

	// Where this host's own key lives: the reverse map of its identity
	// address, and for @FQDN identities also the FQDN.
	self := addr
	var fqdn string
	switch {
	case strings.HasPrefix(c.Identity, "@"):
		name := strings.TrimPrefix(c.Identity, "@")
		if !isHostName(name) {
			return hostRecords{}, fmt.Errorf("[oe] identity %q is not @ and a host name (letters, digits, '-', '_'); write e.g. identity = \"@gw.example.org\"", c.Identity)
		}
		fqdn = dns.CanonicalName(name)
		r.Identity = "@" + strings.TrimSuffix(fqdn, ".")
	case c.Identity != "":
		self, err = netip.ParseAddr(c.Identity)
		if err != nil {
			return hostRecords{}, fmt.Errorf("[oe] identity %q is neither an address nor @FQDN; leave it out to use the address, or write \"@host.example.org\"", c.Identity)
		}
		self = self.Unmap()
		r.Identity = self.String()
	}
	selfName, err := reverseName(self)
	if err != nil {
		return hostRecords{}, err
	}
	algName := map[string]string{resolver.AlgRSA: "RSA", resolver.AlgEd25519: "Ed25519"}[k.Algorithm]
	ipsecAlg, keyAlg := uint8(4), dns.ED25519
	if k.Algorithm == resolver.AlgRSA {
		ipsecAlg, keyAlg = 2, dns.RSASHA1
	}
	gwType := map[bool]uint8{true: dns.IPSECGatewayIPv4, false: dns.IPSECGatewayIPv6}[addr.Is4()]
	fields := []string{
		fmt.Sprintf("IPSECKEY: precedence %d, gateway type %d (%s), algorithm %d (%s)", recordsPrecedence, gwType, map[uint8]string{1: "IPv4", 2: "IPv6"}[gwType], ipsecAlg, algName),
		fmt.Sprintf("KEY: flags %d (0x%04x: a host's authentication key), protocol %d (IPsec), algorithm %d (%s)", keyFlags, keyFlags, keyProtocol, keyAlg, algName),
	}

	ipseckey := func(owner string, gw uint8, host string) zoneRecord {
		rr := &dns.IPSECKEY{Hdr: hdr(owner, dns.TypeIPSECKEY), Precedence: recordsPrecedence, GatewayType: gw, Algorithm: ipsecAlg, PublicKey: b64}
		switch gw {
		case dns.IPSECGatewayIPv4, dns.IPSECGatewayIPv6:
			rr.GatewayAddr = net.IP(addr.AsSlice())
		case dns.IPSECGatewayHost:
			rr.GatewayHost = host
		}
		return record(rr)
	}
	keyRR := func(owner string) zoneRecord {
		return record(&dns.KEY{DNSKEY: dns.DNSKEY{Hdr: hdr(owner, dns.TypeKEY), Flags: keyFlags, Protocol: keyProtocol, Algorithm: keyAlg, PublicKey: b64}})
	}

	// A delegation names this host in someone's reverse map: by its IKE
	// address, or by its @FQDN identity (whose forward map holds the key).
	gwText, delGW, delHost, keyAt := addr.String(), gwType, "", selfName
	if fqdn != "" {
		gwText, delGW, delHost, keyAt = r.Identity, dns.IPSECGatewayHost, fqdn, fqdn
	}
	txtKey, txtNote := "", ""
	if k.Algorithm == resolver.AlgRSA {
		txtKey = " " + b64
	} else {
		txtNote = fmt.Sprintf("X-IPsec-Server records carry RSA keys only: with this Ed25519 key the TXT names %s without a key, and peers fetch the key from the KEY record at %s; the IPSECKEY carries the key itself", gwText, keyAt)
	}
	delegation := func(owner string) []zoneRecord {
		return []zoneRecord{
			record(&dns.TXT{Hdr: hdr(owner, dns.TypeTXT), Txt: splitTXT(fmt.Sprintf("X-IPsec-Server(%d)=%s%s", recordsPrecedence, gwText, txtKey))}),
			ipseckey(owner, delGW, delHost),
		}
	}

	if fqdn == "" {
		own := recordSection{
			Title: fmt.Sprintf("This host's key, in the reverse map of %s (%s)", self, selfName),
			Notes: append([]string{"peers that start OE to this host find its gateway and key here; responders authenticate it with them when it starts OE"}, fields...),
			Records: []zoneRecord{
				ipseckey(selfName, gwType, ""),
				keyRR(selfName),
			},
		}
		if self != addr {
			own.Notes = append(own.Notes, fmt.Sprintf("the identity %s differs from the IKE address %s: the IPSECKEY sends peers to the IKE address", self, addr))
		}
		r.Sections = append(r.Sections, own)
	} else {
		r.Sections = append(r.Sections, recordSection{
			Title: fmt.Sprintf("This host's key, in the forward map of its identity %s", r.Identity),
			Notes: []string{
				fmt.Sprintf("peers that authenticate the IKE identity %s take its key from here", r.Identity),
				fmt.Sprintf("IPSECKEY: precedence %d, gateway type 0 (none: the key belongs to the name itself, whatever its address), algorithm %d (%s)", recordsPrecedence, ipsecAlg, algName),
				fields[1],
			},
			Records: []zoneRecord{ipseckey(fqdn, dns.IPSECGatewayNone, ""), keyRR(fqdn)},
		}, recordSection{
			Title: fmt.Sprintf("This host's pointer to its identity, in the reverse map of %s (%s)", addr, selfName),
			Notes: append([]string{
				fmt.Sprintf("peers find this host by its address here: the record names its identity %s, so peers starting OE send IKE to %s and expect %s, and responders take its key from %s", r.Identity, addr, r.Identity, fqdn),
				fmt.Sprintf("IPSECKEY: precedence %d, gateway type 3 (a name), algorithm %d (%s); either record is enough", recordsPrecedence, ipsecAlg, algName),
				"without these, peers that look hosts up by address (obold among them) neither start OE to this host nor answer it",
			}, nonEmpty(txtNote)...),
			Records: delegation(selfName),
		})
	}

	if c.Address6 != "" {
		// A dual-stack host is found by either address: the records of
		// its IPv6 address are those of an IPv6-only host (in ip6.arpa),
		// and with an address identity that address is its identity there.
		c6 := c
		c6.Address, c6.Address6, c6.Protect = c.Address6, "", nil
		r6, err := buildRecords(file, c6, pub, nil)
		if err != nil {
			return hostRecords{}, fmt.Errorf("[oe] address6: %w", err)
		}
		r.Address6 = r6.Address
		r.Sections = append(r.Sections, r6.Sections...)
	}

	var nets []netip.Prefix
	for i, p := range c.Protect {
		pfx, err := netip.ParsePrefix(p)
		if err != nil {
			return hostRecords{}, fmt.Errorf("[oe] protect[%d] %q is not a CIDR; write e.g. \"10.1.0.0/24\"", i, p)
		}
		nets = append(nets, pfx.Masked())
	}
	for _, cl := range clients {
		if !slices.ContainsFunc(nets, func(p netip.Prefix) bool { return p.Contains(cl) }) {
			return hostRecords{}, fmt.Errorf("--client %s is in no protect network of [oe] (%s); add its network to protect, or leave it out", cl, strings.Join(c.Protect, ", "))
		}
	}
	for _, pfx := range nets {
		var mine []netip.Addr
		for _, cl := range clients {
			if pfx.Contains(cl) && !slices.Contains(mine, cl) {
				mine = append(mine, cl)
			}
		}
		repeat := "each client address that this host protects names it as its gateway: repeat these records for every client address (a wildcard does not cover names that have PTR records; obolctl records --client ADDR prints them)"
		title := fmt.Sprintf("Delegation for the clients in %s, in THEIR reverse map; e.g. for %s", pfx, exampleClient(pfx))
		if len(mine) == 0 {
			mine = []netip.Addr{exampleClient(pfx)}
		} else {
			var names []string
			for _, a := range mine {
				names = append(names, a.String())
			}
			title = fmt.Sprintf("Delegation for the clients in %s, in THEIR reverse map; for %s", pfx, strings.Join(names, ", "))
			repeat = "each client address that this host protects names it as its gateway (a wildcard does not cover names that have PTR records)"
		}
		sec := recordSection{
			Title: title,
			Notes: append([]string{
				repeat,
				"either record is enough: obol peers read both, RFC 4025 peers read IPSECKEY",
			}, nonEmpty(txtNote)...),
		}
		for _, cl := range mine {
			owner, err := reverseName(cl)
			if err != nil {
				return hostRecords{}, err
			}
			sec.Records = append(sec.Records, delegation(owner)...)
		}
		if fqdn != "" {
			sec.Notes = append(sec.Notes, fmt.Sprintf("the delegation names the gateway by its identity %s, as the OE draft allows; but obold peers read an @FQDN in a reverse map as that address's own identity (a host speaking for itself), not as a gateway for other addresses: for obold peers, give a gateway that protects clients an address identity", r.Identity))
		}
		if pfx.Addr().IsPrivate() {
			sec.Notes = append(sec.Notes, fmt.Sprintf("%s is private address space: only peers that route it to this gateway (a private internet, a lab) can reach its clients", pfx.Masked()))
		}
		r.Sections = append(r.Sections, sec)
	}
	return r, nil
}

func reverseName(a netip.Addr) (string, error) {
	name, err := dns.ReverseAddr(a.String())
	if err != nil {
		return "", fmt.Errorf("no reverse-map name for %s: %w", a, err)
	}
	return strings.ToLower(name), nil
}

// exampleClient is the first host address of a protect network.
func exampleClient(p netip.Prefix) netip.Addr {
	p = p.Masked()
	if p.Bits() < p.Addr().BitLen()-1 {
		return p.Addr().Next()
	}
	return p.Addr()
}

func hdr(owner string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: owner, Rrtype: t, Class: dns.ClassINET}
}

// record renders rr's data the way miekg/dns (and zone files) write it.
func record(rr dns.RR) zoneRecord {
	h := rr.Header()
	return zoneRecord{Owner: h.Name, Type: dns.TypeToString[h.Rrtype], Data: strings.TrimPrefix(rr.String(), h.String())}
}

// splitTXT cuts a TXT record's text into character-strings of at most 255
// bytes; readers join them again.
func splitTXT(s string) []string {
	var out []string
	for len(s) > 255 {
		out = append(out, s[:255])
		s = s[255:]
	}
	return append(out, s)
}

func printRecords(w io.Writer, r hostRecords) {
	fmt.Fprintf(w, "; DNS records for obol opportunistic encryption, from [oe] of %s\n", r.Config)
	fmt.Fprintln(w, "; Publish them, sign the zones (DNSSEC), and check what peers see with")
	fmt.Fprintf(w, "; obolctl lookup %s\n", r.Address)
	if r.Address6 != "" {
		fmt.Fprintf(w, "; obolctl lookup %s\n", r.Address6)
	}
	fmt.Fprintln(w, ";")
	key := r.Key.Algorithm
	if r.Key.Bits > 0 {
		key = fmt.Sprintf("%s %d bits", key, r.Key.Bits)
	}
	fmt.Fprintf(w, "; key:      %s, key id %s (pki --keyid: subjkey)\n", key, r.Key.KeyID)
	fmt.Fprintf(w, "; identity: %s, IKE address %s\n", r.Identity, r.Address)
	if r.Address6 != "" {
		id6 := r.Identity
		if !strings.HasPrefix(id6, "@") {
			id6 = r.Address6
		}
		fmt.Fprintf(w, "; identity: %s, IKE address %s (IPv6 peers)\n", id6, r.Address6)
	}
	for _, n := range r.Notes {
		for i, line := range wrap(n, 66) {
			if i == 0 {
				fmt.Fprintf(w, "; note:     %s\n", line)
			} else {
				fmt.Fprintf(w, ";           %s\n", line)
			}
		}
	}
	for _, s := range r.Sections {
		fmt.Fprintf(w, "\n; %s\n", s.Title)
		for _, n := range s.Notes {
			for i, line := range wrap(n, 74) {
				if i == 0 {
					fmt.Fprintf(w, ";   %s\n", line)
				} else {
					fmt.Fprintf(w, ";     %s\n", line)
				}
			}
		}
		tw := tabwriter.NewWriter(w, 0, 8, 1, ' ', 0)
		for _, rec := range s.Records {
			fmt.Fprintf(tw, "%s\tIN %s\t%s\n", rec.Owner, rec.Type, rec.Data)
		}
		tw.Flush()
	}
}

// wrap breaks text into lines of at most width bytes at spaces (a longer
// word gets a line of its own).
func wrap(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		switch {
		case line == "":
			line = w
		case len(line)+1+len(w) <= width:
			line += " " + w
		default:
			lines = append(lines, line)
			line = w
		}
	}
	return append(lines, line)
}

// isHostName accepts what peers' resolvers accept as a gateway name:
// labels of 1 to 63 letters, digits, '-' or '_', at most 253 bytes, an
// optional final dot.
func isHostName(name string) bool {
	n := strings.TrimSuffix(name, ".")
	if n == "" || len(n) > 253 {
		return false
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

func nonEmpty(s ...string) []string {
	var out []string
	for _, v := range s {
		if v != "" {
			out = append(out, v)
		}
	}
	return out
}

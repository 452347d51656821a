package resolver

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
)

// Record sources, as in plugins.Gateway.Source.
const (
	SourceTXT      = "TXT"
	SourceKEY      = "KEY"
	SourceIPSECKEY = "IPSECKEY"
)

// KeyOnlyPrecedence is the precedence of a gateway known only from KEY
// records at the peer's own name (the peer is its own gateway). KEY records
// carry no precedence; this puts such a gateway after every gateway a TXT
// (0-65535) or IPSECKEY (0-255) record names.
const KeyOnlyPrecedence = 1 << 16

// MaxTXTPrecedence is the largest precedence an X-IPsec-Server record may
// give (like MX preferences, 16 bits).
const MaxTXTPrecedence = 65535

// ErrNotServerRecord means a TXT record is not an X-IPsec-Server record:
// it belongs to another application and is ignored, not reported.
var ErrNotServerRecord = errors.New("not an X-IPsec-Server record")

// ServerRecord is one X-IPsec-Server TXT delegation record:
//
//	X-IPsec-Server(P)=A.B.C.D KEY
//	X-IPsec-Server(P)=@FQDN KEY
type ServerRecord struct {
	Precedence int
	Addr       netip.Addr         // the gateway's address; invalid when FQDN is set
	FQDN       string             // canonical (lowercase, final dot); "" when Addr is set
	Key        *plugins.PublicKey // nil when the record carries no key
}

const serverTag = "x-ipsec-server"

// ParseServerTXT parses the text of one TXT record, its character-strings
// already joined (a key longer than 255 bytes spans several). Whitespace
// around the parts and inside the base64 key is allowed; anything else out
// of place is an error saying what is wrong. Text that does not start with
// X-IPsec-Server (case-insensitive) gives ErrNotServerRecord.
//
// The gateway may also be an IPv6 address (for ip6.arpa). The key, when
// present, must be an RFC 3110 RSA key (see ParseRFC3110).
func ParseServerTXT(text string) (ServerRecord, error) {
	s := strings.TrimSpace(text)
	if len(s) < len(serverTag) || !strings.EqualFold(s[:len(serverTag)], serverTag) {
		return ServerRecord{}, ErrNotServerRecord
	}
	const how = "; write X-IPsec-Server(10)=192.0.2.1 KEY or X-IPsec-Server(10)=@gw.example.org KEY"
	rest := strings.TrimLeft(s[len(serverTag):], " \t\r\n")
	if !strings.HasPrefix(rest, "(") {
		return ServerRecord{}, errors.New(`missing "(" after X-IPsec-Server` + how)
	}
	end := strings.IndexByte(rest, ')')
	if end < 0 {
		return ServerRecord{}, errors.New(`missing ")" after the precedence` + how)
	}
	p := strings.TrimSpace(rest[1:end])
	prec, ok := parsePrecedence(p)
	if !ok {
		return ServerRecord{}, fmt.Errorf("precedence %q is not a number from 0 to %d%s", shorten(p, 20), MaxTXTPrecedence, how)
	}
	rest = strings.TrimLeft(rest[end+1:], " \t\r\n")
	if !strings.HasPrefix(rest, "=") {
		return ServerRecord{}, errors.New(`missing "=" after the precedence` + how)
	}
	rest = strings.TrimSpace(rest[1:])
	if rest == "" {
		return ServerRecord{}, errors.New(`no gateway after "="` + how)
	}
	gw, key := rest, ""
	if i := strings.IndexAny(rest, " \t\r\n"); i >= 0 {
		gw, key = rest[:i], stripSpace(rest[i:])
	}
	rec := ServerRecord{Precedence: prec}
	if name, ok := strings.CutPrefix(gw, "@"); ok {
		fqdn, err := checkHostName(name)
		if err != nil {
			return ServerRecord{}, fmt.Errorf("gateway @%s: %v", shorten(name, 64), err)
		}
		rec.FQDN = fqdn
	} else {
		a, err := checkGatewayAddr(gw)
		if err != nil {
			return ServerRecord{}, err
		}
		rec.Addr = a
	}
	if key != "" {
		raw, err := base64.StdEncoding.DecodeString(key)
		if err != nil {
			return ServerRecord{}, fmt.Errorf("key is not valid base64 (%v); give the RFC 3110 key as `pki --pub --outform dnskey` prints it", err)
		}
		if _, err := ParseRFC3110(raw); err != nil {
			return ServerRecord{}, fmt.Errorf("key: %w", err)
		}
		rec.Key = &plugins.PublicKey{Algorithm: AlgRSA, Data: raw}
	}
	return rec, nil
}

func parsePrecedence(p string) (int, bool) {
	if p == "" || len(p) > 5 {
		return 0, false
	}
	for _, c := range []byte(p) {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	v, err := strconv.Atoi(p)
	return v, err == nil && v <= MaxTXTPrecedence
}

func stripSpace(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case ' ', '\t', '\r', '\n':
			return -1
		}
		return r
	}, s)
}

func checkGatewayAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, fmt.Errorf("gateway %q is neither an IP address nor @FQDN", shorten(s, 64))
	}
	a = a.Unmap()
	if a.IsUnspecified() || a.IsMulticast() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return netip.Addr{}, fmt.Errorf("gateway %s cannot be a peer's address (unspecified, multicast or broadcast)", a)
	}
	return a, nil
}

// checkHostName accepts a host name of letters, digits, '-' and '_' in
// labels of 1 to 63 bytes (an optional final dot), and returns it in
// canonical form: lowercase with the final dot.
func checkHostName(name string) (string, error) {
	n := strings.TrimSuffix(name, ".")
	if n == "" {
		return "", errors.New("empty name; give a domain name such as gw.example.org")
	}
	if len(n) > 253 {
		return "", errors.New("name is longer than 253 bytes")
	}
	for _, label := range strings.Split(n, ".") {
		if label == "" {
			return "", errors.New("name has an empty label (\"..\" or a leading dot)")
		}
		if len(label) > 63 {
			return "", errors.New("name has a label longer than 63 bytes")
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("name has the character %q; host names use letters, digits, '-' and '_'", rune(c))
			}
		}
	}
	return strings.ToLower(n) + ".", nil
}

// delegation is one usable record: a gateway (or the queried name itself)
// with its precedence and the keys the record carries. A delegation without
// keys needs a KEY lookup at the gateway's name.
type delegation struct {
	prec   int
	self   bool // the gateway is the queried peer itself (IPSECKEY gateway type 0, KEY)
	addr   netip.Addr
	fqdn   string
	keys   []plugins.PublicKey
	source string
	addrs  []netip.Addr // a gateway named by FQDN: its A and AAAA records
}

// parseAddrRRs reads the A and AAAA records of a gateway's name: the
// addresses IKE may go to. Addresses no peer can have are skipped with the
// reason.
func parseAddrRRs(owner string, rrs []dns.RR) (addrs []netip.Addr, skipped []string) {
	for _, rr := range rrs {
		a, err := parseAddrRR(rr)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s %s %s: %v", owner, dns.TypeToString[rr.Header().Rrtype], excerpt(rr), err))
			continue
		}
		if !slices.Contains(addrs, a) {
			addrs = append(addrs, a)
		}
	}
	return addrs, skipped
}

// parseAddrRR is one A or AAAA record's address, if a gateway can have it.
func parseAddrRR(rr dns.RR) (netip.Addr, error) {
	var raw []byte
	switch rr := rr.(type) {
	case *dns.A:
		raw = rr.A.To4()
		if raw == nil {
			return netip.Addr{}, errors.New("A record holds no IPv4 address")
		}
	case *dns.AAAA:
		raw = rr.AAAA
		if len(raw) != 16 {
			return netip.Addr{}, errors.New("AAAA record holds no IPv6 address")
		}
	default:
		return netip.Addr{}, fmt.Errorf("%s is not an address record", dns.TypeToString[rr.Header().Rrtype])
	}
	a, ok := netip.AddrFromSlice(raw)
	if !ok {
		return netip.Addr{}, errors.New("the record holds no valid address")
	}
	if _, isA := rr.(*dns.A); isA {
		a = a.Unmap()
	}
	if a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("AAAA record holds the IPv4-mapped %s; publish an A record for IPv4", a)
	}
	if a.IsLoopback() || a.IsLinkLocalUnicast() {
		return netip.Addr{}, fmt.Errorf("%s (loopback or link-local) cannot be a gateway's address", a)
	}
	return checkGatewayAddr(a.String())
}

// txtText joins a TXT record's character-strings (miekg/dns keeps them in
// presentation form) into the record's text.
func txtText(rr *dns.TXT) string {
	var b strings.Builder
	for _, s := range rr.Txt {
		b.WriteString(unescapeTXT(s))
	}
	return b.String()
}

// unescapeTXT undoes miekg/dns's presentation escapes (\X and \DDD).
func unescapeTXT(s string) string {
	if strings.IndexByte(s, '\\') < 0 {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b = append(b, c)
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			v := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0')
			if v <= 255 {
				b = append(b, byte(v))
				i += 3
				continue
			}
		}
		b = append(b, s[i+1])
		i++
	}
	return string(b)
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func parseTXT(rr *dns.TXT) (delegation, error) {
	rec, err := ParseServerTXT(txtText(rr))
	if err != nil {
		return delegation{}, err
	}
	d := delegation{prec: rec.Precedence, addr: rec.Addr, fqdn: rec.FQDN, source: SourceTXT}
	if rec.Key != nil {
		d.keys = []plugins.PublicKey{*rec.Key}
	}
	return d, nil
}

// IPSECKEY algorithms (RFC 4025, RFC 8005, RFC 9373).
const (
	ipseckeyNone  = 0
	ipseckeyDSA   = 1
	ipseckeyRSA   = 2
	ipseckeyECDSA = 3
	ipseckeyEdDSA = 4
)

func parseIPSECKEY(rr *dns.IPSECKEY) (delegation, error) {
	d := delegation{prec: int(rr.Precedence), source: SourceIPSECKEY}
	switch rr.GatewayType {
	case dns.IPSECGatewayNone:
		d.self = true
	case dns.IPSECGatewayIPv4, dns.IPSECGatewayIPv6:
		a, ok := netip.AddrFromSlice(rr.GatewayAddr)
		if !ok {
			return delegation{}, fmt.Errorf("gateway type %d has no valid address", rr.GatewayType)
		}
		if rr.GatewayType == dns.IPSECGatewayIPv4 && !a.Unmap().Is4() {
			return delegation{}, fmt.Errorf("gateway type 1 (IPv4) holds %s", a)
		}
		a, err := checkGatewayAddr(a.Unmap().String())
		if err != nil {
			return delegation{}, err
		}
		d.addr = a
	case dns.IPSECGatewayHost:
		fqdn, err := checkHostName(rr.GatewayHost)
		if err != nil {
			return delegation{}, fmt.Errorf("gateway %q: %v", shorten(rr.GatewayHost, 64), err)
		}
		d.fqdn = fqdn
	default:
		return delegation{}, fmt.Errorf("gateway type %d is unknown; RFC 4025 defines 0 (none), 1 (IPv4), 2 (IPv6), 3 (domain name)", rr.GatewayType)
	}
	switch rr.Algorithm {
	case ipseckeyNone:
		if rr.PublicKey != "" {
			return delegation{}, errors.New("algorithm 0 says no key, yet a key is present")
		}
		if d.self {
			return delegation{}, errors.New("names neither a gateway (type 0) nor a key (algorithm 0)")
		}
		return d, nil
	case ipseckeyRSA:
		raw, err := decodeKey(rr.PublicKey)
		if err != nil {
			return delegation{}, err
		}
		if _, err := ParseRFC3110(raw); err != nil {
			return delegation{}, fmt.Errorf("algorithm 2: %w", err)
		}
		d.keys = []plugins.PublicKey{{Algorithm: AlgRSA, Data: raw}}
	case ipseckeyEdDSA:
		raw, err := decodeKey(rr.PublicKey)
		if err != nil {
			return delegation{}, err
		}
		switch len(raw) {
		case 32:
			d.keys = []plugins.PublicKey{{Algorithm: AlgEd25519, Data: raw}}
		case 57:
			return delegation{}, errors.New("algorithm 4 with a 57-byte key is Ed448, which obol does not support; publish an Ed25519 key")
		default:
			return delegation{}, fmt.Errorf("algorithm 4 (EdDSA) key has %d bytes; an Ed25519 key has 32", len(raw))
		}
	case ipseckeyDSA:
		return delegation{}, errors.New("algorithm 1 (DSA) is not supported; publish RSA (2) or Ed25519 (4)")
	case ipseckeyECDSA:
		return delegation{}, errors.New("algorithm 3 (ECDSA) is not supported; publish RSA (2) or Ed25519 (4)")
	default:
		return delegation{}, fmt.Errorf("algorithm %d is unknown; publish RSA (2) or Ed25519 (4)", rr.Algorithm)
	}
	return d, nil
}

func decodeKey(b64 string) ([]byte, error) {
	if b64 == "" {
		return nil, errors.New("the key is empty")
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil, fmt.Errorf("key is not valid base64: %v", err)
	}
	return raw, nil
}

// KEY RR flag bits (RFC 2535 section 3.1.2).
const (
	keyTypeMask   = 0xC000 // 10: no authentication, 01: no confidentiality, 11: no key
	keyNoAuth     = 0x8000
	keyNoKey      = 0xC000
	keyExtended   = 0x1000
	keyNameMask   = 0x0300 // 00 user, 01 entity (host), 10 zone, 11 reserved
	keyNameZone   = 0x0100
	keyNameRsvd   = 0x0300
	keyProtoIPsec = 4
	keyProtoAny   = 255
)

// parseKEY accepts KEY records for IPsec (protocol 4) or any protocol (255)
// holding an RSA key (algorithms 1, 5, 7, 8, 10: all use the RFC 3110 key
// form) or an Ed25519 key (algorithm 15).
func parseKEY(rr *dns.KEY) (plugins.PublicKey, error) {
	switch rr.Flags & keyTypeMask {
	case keyNoKey:
		return plugins.PublicKey{}, fmt.Errorf("flags 0x%04x say \"no key\" (type bits 11)", rr.Flags)
	case keyNoAuth:
		return plugins.PublicKey{}, fmt.Errorf("flags 0x%04x forbid authentication (type bits 10); publish 0x4200", rr.Flags)
	}
	if rr.Flags&keyExtended != 0 {
		return plugins.PublicKey{}, fmt.Errorf("flags 0x%04x set the extension bit, which is not supported; publish 0x4200", rr.Flags)
	}
	switch rr.Flags & keyNameMask {
	case keyNameZone:
		return plugins.PublicKey{}, fmt.Errorf("flags 0x%04x mark a zone key, not a host's key; publish 0x4200", rr.Flags)
	case keyNameRsvd:
		return plugins.PublicKey{}, fmt.Errorf("flags 0x%04x use the reserved name type 11; publish 0x4200", rr.Flags)
	}
	if rr.Protocol != keyProtoIPsec && rr.Protocol != keyProtoAny {
		return plugins.PublicKey{}, fmt.Errorf("protocol %d is neither IPsec (4) nor any (255): the key is not for IPsec", rr.Protocol)
	}
	switch rr.Algorithm {
	case dns.RSAMD5, dns.RSASHA1, dns.RSASHA1NSEC3SHA1, dns.RSASHA256, dns.RSASHA512:
		raw, err := decodeKey(rr.PublicKey)
		if err != nil {
			return plugins.PublicKey{}, err
		}
		if _, err := ParseRFC3110(raw); err != nil {
			return plugins.PublicKey{}, fmt.Errorf("algorithm %d: %w", rr.Algorithm, err)
		}
		return plugins.PublicKey{Algorithm: AlgRSA, Data: raw}, nil
	case dns.ED25519:
		raw, err := decodeKey(rr.PublicKey)
		if err != nil {
			return plugins.PublicKey{}, err
		}
		if len(raw) != 32 {
			return plugins.PublicKey{}, fmt.Errorf("algorithm 15 (ED25519) key has %d bytes, want 32", len(raw))
		}
		return plugins.PublicKey{Algorithm: AlgEd25519, Data: raw}, nil
	default:
		name := dns.AlgorithmToString[rr.Algorithm]
		if name == "" {
			name = "unknown"
		}
		return plugins.PublicKey{}, fmt.Errorf("algorithm %d (%s) is not supported; publish RSA (5) or Ed25519 (15)", rr.Algorithm, name)
	}
}

// parseRRs turns the records of one answer (all of the asked type) into
// delegations, and explains every record it skips. KEY records combine into
// one self delegation. ignored counts TXT records of other applications.
func parseRRs(owner string, rrs []dns.RR) (dels []delegation, skipped []string, ignored int) {
	self := -1 // index of the KEY delegation in dels
	for _, rr := range rrs {
		var err error
		switch rr := rr.(type) {
		case *dns.TXT:
			var d delegation
			if d, err = parseTXT(rr); err == nil {
				dels = append(dels, d)
			} else if errors.Is(err, ErrNotServerRecord) {
				ignored++
				continue
			}
		case *dns.IPSECKEY:
			var d delegation
			if d, err = parseIPSECKEY(rr); err == nil {
				dels = append(dels, d)
			}
		case *dns.KEY:
			var k plugins.PublicKey
			if k, err = parseKEY(rr); err == nil {
				if self < 0 {
					self = len(dels)
					dels = append(dels, delegation{prec: KeyOnlyPrecedence, self: true, source: SourceKEY})
				}
				dels[self].keys = append(dels[self].keys, k)
			}
		default:
			continue
		}
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s %s %s: %v", owner, dns.TypeToString[rr.Header().Rrtype], excerpt(rr), err))
		}
	}
	return dels, skipped, ignored
}

// excerpt shows a record's data, shortened, for skip reasons.
func excerpt(rr dns.RR) string {
	var s string
	switch rr := rr.(type) {
	case *dns.TXT:
		s = txtText(rr)
	default:
		full := rr.String()
		hdr := rr.Header().String()
		s = strings.TrimPrefix(full, hdr)
	}
	return strconv.Quote(shorten(s, 72))
}

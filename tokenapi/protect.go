package tokenapi

import (
	"fmt"
	"net/netip"
	"strings"
)

// HowFacts is the HOW of a pToken.
type HowFacts struct {
	Privacy     bool
	Integrity   bool
	Compression bool
}

// aeadPrefixes name charon's combined-mode ciphers: they protect integrity
// without an integrity algorithm.
var aeadPrefixes = []string{"AES_GCM", "AES_CCM", "CHACHA20_POLY1305", "CAMELLIA_CCM", "NULL_AES_GMAC"}

// Classify computes privacyProtected, integrityProtected and
// compressionAvailable for a CHILD_SA. untrusted holds the administrator's
// untrusted_ciphers, matched case-insensitively against charon's name
// ("3DES_CBC") or name and key size ("AES_CBC_128").
func Classify(p Protection, untrusted []string) HowFacts {
	if !p.Protected {
		return HowFacts{}
	}
	c := p.Child
	encr := strings.ToUpper(c.EncrAlg)
	aead := false
	for _, a := range aeadPrefixes {
		if strings.HasPrefix(encr, a) {
			aead = true
		}
	}
	gmac := strings.HasPrefix(encr, "NULL_AES_GMAC") // integrity only
	esp := strings.EqualFold(c.Protocol, "ESP") || c.Protocol == ""
	h := HowFacts{Compression: c.IPComp}
	h.Integrity = c.IntegAlg != "" && !strings.EqualFold(c.IntegAlg, "NULL") || aead
	h.Privacy = esp && encr != "" && encr != "NULL" && !gmac && !untrustedCipher(c, untrusted)
	return h
}

func untrustedCipher(c Child, untrusted []string) bool {
	withSize := fmt.Sprintf("%s_%d", c.EncrAlg, c.EncrKey)
	for _, u := range untrusted {
		if strings.EqualFold(u, c.EncrAlg) || (c.EncrKey > 0 && strings.EqualFold(u, withSize)) {
			return true
		}
	}
	return false
}

// auditPToken describes the SA a flow uses. No keys, no SPIs: Child has
// neither.
func auditPToken(f Flow, p Protection, h HowFacts) string {
	if !p.Protected {
		s := "not protected (" + p.Why.String()
		if p.WhyText != "" {
			s += ": " + p.WhyText
		}
		return withFlow(f, s+")")
	}
	return withFlow(f, auditSA(p, h))
}

// withFlow prefixes a pToken audit with its flow: "tcp A:P -> B:Q: rest",
// in one allocation (it is on every query's path).
func withFlow(f Flow, rest string) string {
	var buf [256]byte
	b := append(buf[:0], protoName(f.Protocol)...)
	b = append(b, ' ')
	b = f.Local.AppendTo(b)
	b = append(b, " -> "...)
	b = f.Remote.AppendTo(b)
	b = append(b, ": "...)
	b = append(b, rest...)
	return string(b)
}

// auditSA is the part of a pToken audit that the SA gives.
func auditSA(p Protection, h HowFacts) string {
	c := p.Child
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", orDefault(c.Protocol, "ESP"), strings.ToLower(orDefault(c.Mode, "tunnel")))
	if c.EncrAlg != "" {
		b.WriteString(" " + algo(c.EncrAlg, c.EncrKey))
	}
	if c.IntegAlg != "" {
		b.WriteString("/" + algo(c.IntegAlg, c.IntegKey))
	}
	if c.IPComp {
		b.WriteString(" ipcomp")
	}
	if c.Encap {
		b.WriteString(" udp-encap")
	}
	if c.Label != "" {
		b.WriteString(" label=" + c.Label)
	}
	fmt.Fprintf(&b, " conn=%s child=%s peer=%s", c.IKEName, c.Name, quote(p.Peer.RemoteID))
	if !h.Privacy {
		b.WriteString(" (no privacy)")
	}
	return b.String()
}

func auditIToken(p Peer, a AuthFacts) string {
	s := fmt.Sprintf("peer %s authenticated by %s: %s", quote(p.RemoteID), a.Method, a.Basis)
	if a.CertDN != "" {
		s += "; certificate " + quote(a.CertDN)
	}
	if a.CADN != "" {
		s += "; CA " + quote(a.CADN)
	}
	if id := PubKeyID(p.PeerKey); id != "" {
		s += "; key " + strings.ToLower(p.PeerKey.Algorithm) + ":" + id
	}
	if p.KeyNote != "" {
		s += "; " + p.KeyNote + ": no pubKeyID/channelBinding claimed"
	}
	return s
}

func algo(name string, size int) string {
	if size > 0 {
		return fmt.Sprintf("%s-%d", name, size)
	}
	return name
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

func protoName(p uint8) string {
	switch p {
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 132:
		return "sctp"
	}
	return fmt.Sprintf("proto-%d", p)
}

// unmapAP makes IPv4-mapped IPv6 addresses plain IPv4.
func unmapAP(ap netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}

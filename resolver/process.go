package resolver

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
)

// maxChain bounds the CNAME chain followed inside one answer (RFC 2317
// classless reverse delegation uses one CNAME per address).
const maxChain = 8

// newQuery builds the query the resolver sends: recursion desired, EDNS0
// with the DO bit (so the validating resolver sets AD on validated
// answers), and AD set as RFC 6840 section 5.7 allows.
func newQuery(k qkey, checkingDisabled bool) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(k.name, k.qtype)
	m.RecursionDesired = true
	m.AuthenticatedData = true
	m.CheckingDisabled = checkingDisabled
	m.SetEdns0(DefaultUDPSize, true)
	return m
}

// errServFail marks a SERVFAIL answer; query decides whether it is bogus.
var errServFail = errors.New("SERVFAIL")

// processAnswer turns the validating resolver's answer to k into a cache
// entry: records parsed (malformed ones explained in skipped), DNSSEC
// status from the AD bit, expiry from the TTLs clamped by cfg. SERVFAIL
// gives errServFail; other error rcodes give an error saying what to do.
// It never panics, whatever r holds.
func processAnswer(k qkey, r *dns.Msg, now time.Time, cfg *Config) (*entry, error) {
	if r == nil {
		return nil, errors.New("empty answer")
	}
	if len(r.Question) == 1 {
		q := r.Question[0]
		if q.Qtype != k.qtype || !strings.EqualFold(q.Name, k.name) {
			return nil, fmt.Errorf("answer is for %s %s, not for the question asked", q.Name, dns.TypeToString[q.Qtype])
		}
	}
	switch r.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	case dns.RcodeServerFailure:
		return nil, errServFail
	case dns.RcodeRefused:
		return nil, fmt.Errorf("%w: the resolver refused to answer (REFUSED); allow obold's address in its access control (unbound: access-control)", ErrServerFailure)
	default:
		rc := dns.RcodeToString[r.Rcode]
		if rc == "" {
			rc = fmt.Sprintf("rcode %d", r.Rcode)
		}
		return nil, fmt.Errorf("%w: the resolver answered %s; check that [resolver] server is a recursive, validating resolver", ErrServerFailure, rc)
	}
	if r.Truncated {
		return nil, errors.New("the answer is truncated even over TCP")
	}
	e := &entry{key: k, status: plugins.DNSSECInsecure}
	if r.AuthenticatedData {
		e.status = plugins.DNSSECSecure
	}
	var rrs []dns.RR
	var ttl uint32
	owner := k.name
	if r.Rcode == dns.RcodeSuccess {
		rrs, ttl, owner = chase(k, r.Answer)
	}
	if len(rrs) == 0 {
		e.negative = true
		e.nxdomain = r.Rcode == dns.RcodeNameError
		e.expires = now.Add(clamp(negativeTTL(r), cfg.MinTTL, cfg.MaxNegativeTTL))
	} else {
		switch k.qtype {
		case dns.TypeA, dns.TypeAAAA:
			e.addrs, e.skipped = parseAddrRRs(owner, rrs)
		default:
			e.dels, e.skipped, e.ignored = parseRRs(owner, rrs)
		}
		e.expires = now.Add(clamp(time.Duration(ttl)*time.Second, cfg.MinTTL, cfg.MaxTTL))
	}
	e.size = e.estimateSize()
	return e, nil
}

// chase collects the records of k's type at k's name, following CNAMEs
// within the answer section; ttl is the smallest TTL on the way.
func chase(k qkey, answer []dns.RR) (rrs []dns.RR, ttl uint32, owner string) {
	name := k.name
	ttl = math.MaxUint32
	for range maxChain + 1 {
		var cname *dns.CNAME
		for _, rr := range answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, name) {
				continue
			}
			if h.Rrtype == k.qtype {
				rrs = append(rrs, rr)
			} else if c, ok := rr.(*dns.CNAME); ok && cname == nil {
				cname = c
			}
		}
		if len(rrs) > 0 {
			for _, rr := range rrs {
				ttl = min(ttl, rr.Header().Ttl)
			}
			return rrs, ttl, name
		}
		if cname == nil {
			return nil, ttl, name
		}
		ttl = min(ttl, cname.Hdr.Ttl)
		name = cname.Target
	}
	return nil, ttl, name
}

// negativeTTL is RFC 2308's: the smaller of the SOA record's TTL and its
// MINIMUM field; 0 without an SOA (the caller's clamp decides).
func negativeTTL(r *dns.Msg) time.Duration {
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return 0
}

func clamp(d time.Duration, lo, hi Duration) time.Duration {
	return min(max(d, time.Duration(lo)), time.Duration(hi))
}

// servfailVerdict is what a SERVFAIL means.
type servfailVerdict int

const (
	servfailUnknown servfailVerdict = iota // ask again with CD to find out
	servfailBogus                          // DNSSEC validation failed
	servfailFailure                        // the resolver could not get an answer
)

// classifyServfail reads Extended DNS Errors (RFC 8914), when the resolver
// sends them (unbound: ede: yes), to tell validation failures from
// upstream failures.
func classifyServfail(r *dns.Msg) (servfailVerdict, string) {
	opt := r.IsEdns0()
	if opt == nil {
		return servfailUnknown, ""
	}
	for _, o := range opt.Option {
		ede, ok := o.(*dns.EDNS0_EDE)
		if !ok {
			continue
		}
		text := fmt.Sprintf("extended error %d (%s)", ede.InfoCode, dns.ExtendedErrorCodeToString[ede.InfoCode])
		if ede.ExtraText != "" {
			text += ": " + shorten(ede.ExtraText, 120)
		}
		switch {
		case ede.InfoCode >= dns.ExtendedErrorCodeDNSSECIndeterminate && ede.InfoCode <= dns.ExtendedErrorCodeNSECMissing,
			ede.InfoCode == dns.ExtendedErrorCodeSignatureExpiredBeforeValid:
			return servfailBogus, text
		case ede.InfoCode >= dns.ExtendedErrorCodeNotReady && ede.InfoCode <= dns.ExtendedErrorCodeInvalidData:
			return servfailFailure, text
		}
	}
	return servfailUnknown, ""
}

// bogusEntry records a DNSSEC validation failure for k.
func bogusEntry(k qkey, reason string, now time.Time, cfg *Config) *entry {
	e := &entry{key: k, status: plugins.DNSSECBogus, negative: true, reason: reason, expires: now.Add(time.Duration(cfg.BogusTTL))}
	e.size = e.estimateSize()
	return e
}

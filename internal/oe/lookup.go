package oe

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/internal/policy"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
)

// Lookup is what the engine would do with one address (obolctl lookup):
// the policy decision, what DNS says, and the action that follows, in
// words.
type Lookup struct {
	Addr     netip.Addr
	Decision policy.Decision
	// Answer is the resolver's answer as far as it got.
	Answer resolver.Answer
	// DNSErr is the resolver's error: DNS did not answer, or its answer is
	// unusable (then Answer.Unusable says why). Nil otherwise.
	DNSErr error
	// Action is what an ACQUIRE for traffic to Addr would lead to now.
	Action string
	// Details explain Action: shunts, fail-over gateways, a backoff.
	Details []string
	// Responder is what the engine would do if Addr initiated OE.
	Responder string
	// Tunnels are the pairs the engine has now with Addr as the peer.
	Tunnels []Tunnel
}

// detailedResolver is a resolver module that also explains its answers
// (*resolver.Resolver does).
type detailedResolver interface {
	Resolve(ctx context.Context, q plugins.LookupQuery) (resolver.Answer, error)
}

// Lookup asks DNS about addr the way an ACQUIRE for it would, and says what
// the engine would do. It changes nothing but the resolver's cache.
func (e *Engine) Lookup(ctx context.Context, addr netip.Addr) Lookup {
	addr = addr.Unmap()
	l := Lookup{Addr: addr, Decision: e.pol.Decide(addr)}
	l.Answer, l.DNSErr = e.resolve(ctx, addr)
	if l.Answer.Name == "" {
		if name, err := dns.ReverseAddr(addr.String()); err == nil {
			l.Answer.Name = strings.ToLower(name)
		}
	}
	for _, t := range e.Tunnels() {
		if t.Pair.Dst == addr {
			l.Tunnels = append(l.Tunnels, t)
		}
	}
	e.explainInitiator(&l)
	if l.Decision.Group.Initiates() && l.Decision.Exempt == "" && e.p.Charon != nil {
		// As initiate does first: a configured conn covering the
		// destination owns it.
		if conn, why := e.configuredCollision(ctx, "", netip.Addr{}, addr); why != "" {
			l.Details = append([]string{"instead: " + l.Action}, l.Details...)
			l.Action = "would refuse OE: " + why
			if conn != "" {
				l.Action += fmt.Sprintf("; its traffic goes to conn %q's tunnel when that is up, else the failure shunt", conn)
			}
		}
	}
	l.Responder = e.explainResponder(l)
	return l
}

func (e *Engine) resolve(ctx context.Context, addr netip.Addr) (resolver.Answer, error) {
	q := plugins.LookupQuery{Addr: addr}
	switch r := e.p.Resolver.(type) {
	case nil:
		return resolver.Answer{}, errors.New("no resolver module is running")
	case detailedResolver:
		return r.Resolve(ctx, q)
	default:
		a, err := r.Lookup(ctx, q)
		return resolver.Answer{LookupAnswer: a}, err
	}
}

// groupText names the decision's group and the CIDR that chose it.
func groupText(dec policy.Decision) string {
	if dec.CIDR.IsValid() {
		return fmt.Sprintf("group %s (%s)", dec.Group, dec.CIDR)
	}
	return fmt.Sprintf("group %s (no [[oe.group]] covers it)", dec.Group)
}

func dnssecText(s plugins.DNSSECStatus) string {
	if s == "" {
		return "DNSSEC unknown"
	}
	return "DNSSEC " + string(s)
}

// explainInitiator sets l.Action and l.Details: what HandleAcquire and
// initiate would do with traffic to l.Addr.
func (e *Engine) explainInitiator(l *Lookup) {
	dec := l.Decision
	switch {
	case dec.Exempt != "":
		l.Action = "exempt: " + dec.Exempt
		l.Details = append(l.Details, "OE never applies to it: its traffic goes in clear and obold neither starts nor answers OE with it")
		return
	case dec.Group == policy.Block:
		l.Action = "would drop: " + groupText(dec)
		return
	case dec.Group == policy.Clear:
		l.Action = "would send in clear: " + groupText(dec)
		return
	case dec.Group == policy.ClearOrPrivate:
		l.Action = "would send in clear: " + groupText(dec)
		l.Details = append(l.Details, "clear-or-private answers OE from it but never starts OE to it")
		return
	}

	failVerb, failDo := "would drop", "dropped"
	if dec.FailureShunt == policy.Pass && dec.Group != policy.Private {
		failVerb, failDo = "would send in clear", "sent in clear"
	}
	life := dec.ShuntLifetime.String()
	// As initiate does: an @FQDN goes to its addresses from DNS, or, with
	// none, is the destination speaking for itself.
	var gws []plugins.Gateway
	unreachable := 0 // gateways of a family we have no IKE address for
	for _, gw := range l.Answer.Gateways {
		addr, ok := e.ikeAddr(gw, l.Addr)
		if !ok {
			continue
		}
		gw.Addr = addr
		if !e.localFor(gw.Addr).IsValid() {
			unreachable++
			continue
		}
		gws = append(gws, gw)
	}
	var why string
	switch {
	case l.DNSErr == nil && len(gws) == 0 && unreachable > 0:
		why = "its gateways are of an address family this host has no IKE address for (add address6 to [oe] for IPv6)"
	case l.DNSErr != nil && l.Answer.Unusable != "":
		why = fmt.Sprintf("the DNS answer is unusable (%s)", dnssecText(l.Answer.DNSSEC))
	case l.DNSErr != nil:
		why = "DNS did not answer"
	case len(gws) == 0:
		why = "no OE records"
	}
	if why != "" {
		l.Action = fmt.Sprintf("%s: %s and %s", failVerb, dec.Group, why)
		l.Details = append(l.Details, fmt.Sprintf("%s; for %s (shunt_lifetime) its traffic is %s, then the next packet tries OE again", groupText(dec), life, failDo))
	} else {
		l.Action = fmt.Sprintf("would initiate OE to %s (%s, %s)", targetText(gws[0], l.Addr), gws[0].Source, dnssecText(l.Answer.DNSSEC))
		while := "dropped"
		if dec.NegotiationShunt == policy.Pass {
			while = "sent in clear"
		}
		l.Details = append(l.Details, fmt.Sprintf("%s; while IKE runs its traffic is %s (negotiation_shunt %s)", groupText(dec), while, dec.NegotiationShunt))
		if len(gws) > 1 {
			var next []string
			for _, g := range gws[1:] {
				next = append(next, targetText(g, l.Addr))
			}
			l.Details = append(l.Details, "if IKE with it fails: then "+strings.Join(next, ", then "))
		}
		l.Details = append(l.Details, fmt.Sprintf("if every gateway fails: its traffic is %s for %s (failure_shunt %s), then OE is tried again", failDo, life, effectiveShunt(dec)))
	}
	e.mu.Lock()
	b, ok := e.backoff[l.Addr]
	now := e.p.Now()
	e.mu.Unlock()
	if ok && now.Before(b.until) {
		l.Details = append(l.Details, fmt.Sprintf("backing off after a failure until %s: a new ACQUIRE gets the failure shunt at once, without trying OE", b.until.Format(time.TimeOnly)))
	}
}

// targetText names where IKE goes and whom it must authenticate: a
// gateway, or the destination itself proving an @FQDN identity.
func targetText(gw plugins.Gateway, dst netip.Addr) string {
	if gw.FQDN != "" && gw.Addr == dst {
		return fmt.Sprintf("%s itself, identity @%s", dst, strings.TrimSuffix(gw.FQDN, "."))
	}
	return "gateway " + gatewayName(gw)
}

// effectiveShunt is the failure shunt the engine applies: never pass under
// private.
func effectiveShunt(dec policy.Decision) policy.Shunt {
	if dec.Group == policy.Private {
		return policy.Drop
	}
	return dec.FailureShunt
}

// explainResponder says what respond and responderChildUp would do with
// OE initiated by l.Addr, or on its behalf.
func (e *Engine) explainResponder(l Lookup) string {
	dec := l.Decision
	if !dec.Group.Responds() {
		if dec.Exempt != "" {
			return "would not answer OE from it (exempt: " + dec.Exempt + ")"
		}
		return fmt.Sprintf("would not answer OE from it: group %s does not answer OE", dec.Group)
	}
	if !e.localFor(l.Addr).IsValid() {
		return "would not answer OE from it: this host has no IKE address of its family (add address6 to [oe] for IPv6)"
	}
	if l.DNSErr != nil {
		why := "DNS did not answer"
		if l.Answer.Unusable != "" {
			why = fmt.Sprintf("the DNS answer is unusable (%s)", dnssecText(l.Answer.DNSSEC))
		}
		return "would refuse OE from it: its key cannot be looked up (" + why + ")"
	}
	var self *plugins.Gateway
	var others []string
	for i, gw := range l.Answer.Gateways {
		switch {
		case self == nil && (gw.Addr == l.Addr || !gw.Addr.IsValid() && gw.FQDN != "" && (len(gw.Addrs) == 0 || slices.Contains(gw.Addrs, l.Addr))):
			// As respond: the initiator's own reverse map names it, by
			// address or by an @FQDN identity.
			self = &l.Answer.Gateways[i]
		case gw.Addr.IsValid() && gw.Addr != l.Addr:
			others = append(others, gw.Addr.String())
		case gw.FQDN != "" && self != &l.Answer.Gateways[i]:
			// As delegates: an FQDN gateway by the identity it proves.
			others = append(others, peerID(gw)+" (when it proves that identity)")
		}
	}
	var parts []string
	if self != nil {
		as := ""
		if self.FQDN != "" {
			as = " as @" + strings.TrimSuffix(self.FQDN, ".")
		}
		parts = append(parts, fmt.Sprintf("would answer OE from it%s, authenticating it with the key from %s (%s)", as, self.Source, dnssecText(l.Answer.DNSSEC)))
	} else {
		parts = append(parts, fmt.Sprintf("would refuse OE from it as initiator: %s names no key for the address itself (KEY or IPSECKEY) nor an @FQDN identity", l.Answer.Name))
	}
	if len(others) > 0 {
		parts = append(parts, "would accept it behind gateway "+strings.Join(others, " or ")+" (delegated in its reverse map)")
	}
	return strings.Join(parts, "; ")
}

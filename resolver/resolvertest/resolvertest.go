// Package resolvertest is an in-process stand-in for a validating DNS
// resolver, to test code that uses package resolver without a network. A
// Server answers from zones held in memory with the DNSSEC behaviour chosen
// per zone (secure, insecure, bogus, broken), and records every query. It
// implements resolver.Exchanger.
package resolvertest

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Validation is how the fake validating resolver treats a zone.
type Validation int

const (
	// Secure: answers carry the AD bit (when the query asks for DNSSEC).
	Secure Validation = iota
	// Insecure: answers come without AD (an unsigned zone).
	Insecure
	// Bogus: SERVFAIL, but the data comes back with checking disabled (CD),
	// as from unbound for a zone whose signatures do not validate.
	Bogus
	// Broken: SERVFAIL even with CD, as when the zone's servers are down.
	Broken
)

func (v Validation) String() string {
	switch v {
	case Secure:
		return "secure"
	case Insecure:
		return "insecure"
	case Bogus:
		return "bogus"
	case Broken:
		return "broken"
	}
	return fmt.Sprintf("Validation(%d)", int(v))
}

// Zone is one zone the Server answers for.
type Zone struct {
	Name       string // canonical: lowercase, final dot
	Validation Validation
	// SOATTL and Minimum are the SOA record's TTL and MINIMUM field, which
	// give negative answers their TTL (RFC 2308). Both default to 300.
	SOATTL, Minimum uint32
}

// Handler may answer a query instead of the zones: it returns the answer,
// or an error, or (nil, nil) to let the zones answer.
type Handler func(ctx context.Context, q *dns.Msg) (*dns.Msg, error)

// Server is the fake resolver. Safe for concurrent use.
type Server struct {
	mu      sync.Mutex
	zones   map[string]*Zone
	records map[string][]dns.RR // by canonical owner name
	handler Handler
	delay   time.Duration
	gate    chan struct{} // non-nil: queries wait until it closes
	log     []string
}

// New returns a Server with no zones.
func New() *Server {
	return &Server{zones: map[string]*Zone{}, records: map[string][]dns.RR{}}
}

// AddZone adds (or replaces the settings of) a zone; records are added with
// Add. The SOA's TTL and MINIMUM are 300.
func (s *Server) AddZone(name string, v Validation) *Zone {
	s.mu.Lock()
	defer s.mu.Unlock()
	name = canonical(name)
	z := s.zones[name]
	if z == nil {
		z = &Zone{Name: name, SOATTL: 300, Minimum: 300}
		s.zones[name] = z
	}
	z.Validation = v
	return z
}

// SetNegativeTTL sets a zone's SOA TTL and MINIMUM field.
func (s *Server) SetNegativeTTL(zone string, soaTTL, minimum uint32) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if z := s.zones[canonical(zone)]; z != nil {
		z.SOATTL, z.Minimum = soaTTL, minimum
	}
}

// SetValidation changes how a zone validates.
func (s *Server) SetValidation(zone string, v Validation) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if z := s.zones[canonical(zone)]; z != nil {
		z.Validation = v
	}
}

// Add parses zone-file lines ("name TTL IN TYPE data", absolute names) and
// serves them. Each record's zone must have been added.
func (s *Server) Add(lines ...string) error {
	rrs := make([]dns.RR, 0, len(lines))
	for _, l := range lines {
		rr, err := dns.NewRR(l)
		if err != nil {
			return fmt.Errorf("resolvertest: record %q: %w", l, err)
		}
		if rr == nil {
			return fmt.Errorf("resolvertest: record %q is empty", l)
		}
		rrs = append(rrs, rr)
	}
	return s.AddRR(rrs...)
}

// AddRR serves records built in code.
func (s *Server) AddRR(rrs ...dns.RR) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rr := range rrs {
		name := canonical(rr.Header().Name)
		if s.zoneOf(name) == nil {
			return fmt.Errorf("resolvertest: %s is in no zone; AddZone first", name)
		}
		rr = dns.Copy(rr)
		rr.Header().Name = name
		s.records[name] = append(s.records[name], rr)
	}
	return nil
}

// Remove drops every record at name.
func (s *Server) Remove(name string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.records, canonical(name))
}

// SetHandler installs h in front of the zones (nil removes it).
func (s *Server) SetHandler(h Handler) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handler = h
}

// SetDelay makes every answer wait d (or until the query's ctx ends).
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// Block holds every query until release is called (or its ctx ends).
func (s *Server) Block() (release func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	gate := make(chan struct{})
	s.gate = gate
	var once sync.Once
	return func() {
		once.Do(func() {
			s.mu.Lock()
			if s.gate == gate {
				s.gate = nil
			}
			s.mu.Unlock()
			close(gate)
		})
	}
}

// Queries returns how many queries the Server received.
func (s *Server) Queries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.log)
}

// Log returns every query received, as "name TYPE" (plus " +cd" when
// checking was disabled), in order.
func (s *Server) Log() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.log...)
}

// Count returns how many queries asked for name and qtype.
func (s *Server) Count(name string, qtype uint16) int {
	want := canonical(name) + " " + dns.TypeToString[qtype]
	n := 0
	for _, l := range s.Log() {
		if strings.TrimSuffix(l, " +cd") == want {
			n++
		}
	}
	return n
}

// Exchange answers q like a validating recursive resolver would. The answer
// goes through the DNS wire format, as from a real server.
func (s *Server) Exchange(ctx context.Context, q *dns.Msg) (*dns.Msg, error) {
	if len(q.Question) != 1 {
		return nil, fmt.Errorf("resolvertest: a query needs one question, got %d", len(q.Question))
	}
	qq := q.Question[0]
	s.mu.Lock()
	entry := canonical(qq.Name) + " " + dns.TypeToString[qq.Qtype]
	if q.CheckingDisabled {
		entry += " +cd"
	}
	s.log = append(s.log, entry)
	h, delay, gate := s.handler, s.delay, s.gate
	s.mu.Unlock()

	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return nil, fmt.Errorf("resolvertest: query blocked: %w", ctx.Err())
		}
	}
	if delay > 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, fmt.Errorf("resolvertest: query delayed: %w", ctx.Err())
		}
	}
	if h != nil {
		r, err := h(ctx, q)
		if err != nil || r != nil {
			return r, err
		}
	}
	r := s.answer(q)
	wire, err := r.Pack()
	if err != nil {
		return nil, fmt.Errorf("resolvertest: packing the answer: %w", err)
	}
	out := new(dns.Msg)
	if err := out.Unpack(wire); err != nil {
		return nil, fmt.Errorf("resolvertest: unpacking the answer: %w", err)
	}
	return out, nil
}

func (s *Server) answer(q *dns.Msg) *dns.Msg {
	s.mu.Lock()
	defer s.mu.Unlock()
	qq := q.Question[0]
	r := new(dns.Msg)
	r.SetReply(q)
	r.RecursionAvailable = true
	do := false
	if opt := q.IsEdns0(); opt != nil {
		do = opt.Do()
		r.SetEdns0(opt.UDPSize(), do)
	}
	name := canonical(qq.Name)
	z := s.zoneOf(name)
	if z == nil {
		r.Rcode = dns.RcodeRefused
		return r
	}
	switch {
	case z.Validation == Broken, z.Validation == Bogus && !q.CheckingDisabled:
		r.Rcode = dns.RcodeServerFailure
		return r
	}
	r.AuthenticatedData = z.Validation == Secure && (do || q.AuthenticatedData) && !q.CheckingDisabled
	for range 9 {
		rrs, exists := s.lookup(name, qq.Qtype)
		if len(rrs) > 0 {
			r.Answer = append(r.Answer, rrs...)
			return r
		}
		if qq.Qtype != dns.TypeCNAME {
			if cn, _ := s.lookup(name, dns.TypeCNAME); len(cn) > 0 {
				r.Answer = append(r.Answer, cn[0])
				name = canonical(cn[0].(*dns.CNAME).Target)
				if z = s.zoneOf(name); z == nil {
					return r
				}
				continue
			}
		}
		if !exists {
			r.Rcode = dns.RcodeNameError
		}
		r.Ns = []dns.RR{&dns.SOA{
			Hdr: dns.RR_Header{Name: z.Name, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: z.SOATTL},
			Ns:  "ns." + z.Name, Mbox: "hostmaster." + z.Name,
			Serial: 1, Refresh: 3600, Retry: 900, Expire: 604800, Minttl: z.Minimum,
		}}
		return r
	}
	return r
}

// lookup returns copies of name's records of qtype (a wildcard "*.parent"
// standing in when name has no records at all) and whether name exists.
func (s *Server) lookup(name string, qtype uint16) ([]dns.RR, bool) {
	rrs, exists := s.records[name]
	if !exists {
		if i := strings.IndexByte(name, '.'); i >= 0 && i+1 < len(name) {
			rrs, exists = s.records["*."+name[i+1:]]
		}
	}
	var out []dns.RR
	for _, rr := range rrs {
		if rr.Header().Rrtype == qtype {
			c := dns.Copy(rr)
			c.Header().Name = name
			out = append(out, c)
		}
	}
	return out, exists
}

func (s *Server) zoneOf(name string) *Zone {
	for n := name; ; {
		if z := s.zones[n]; z != nil {
			return z
		}
		i := strings.IndexByte(n, '.')
		if i < 0 || i+1 >= len(n) {
			return s.zones["."]
		}
		n = n[i+1:]
	}
}

func canonical(name string) string { return strings.ToLower(dns.Fqdn(name)) }

package resolver

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
)

// Errors a lookup can wrap; test them with errors.Is.
var (
	// ErrClosed: the Resolver was closed.
	ErrClosed = errors.New("resolver: closed")
	// ErrServerFailure: the validating resolver could not answer
	// (SERVFAIL not caused by DNSSEC, REFUSED, ...). Not a DNS verdict.
	ErrServerFailure = errors.New("the validating resolver could not answer")
	// ErrBogus: DNSSEC validation failed; the answer may be forged.
	ErrBogus = errors.New("DNSSEC validation failed (bogus)")
	// ErrInsecure: the answer is not DNSSEC-validated and require_dnssec is on.
	ErrInsecure = errors.New("the answer is not DNSSEC-validated (insecure) and require_dnssec is on")
)

// UnusableError is returned, with the answer's status and TTL, when DNS
// answered but the answer must not be used: it is bogus, or insecure while
// require_dnssec is on. It matches ErrBogus or ErrInsecure.
type UnusableError struct {
	Name   string
	Status plugins.DNSSECStatus
	Reason string
}

func (e *UnusableError) Error() string {
	return fmt.Sprintf("DNS answer for %s is %s: %s", e.Name, e.Status, e.Reason)
}

// Is makes errors.Is(err, ErrBogus) and errors.Is(err, ErrInsecure) work.
func (e *UnusableError) Is(target error) bool {
	return target == ErrBogus && e.Status == plugins.DNSSECBogus ||
		target == ErrInsecure && e.Status == plugins.DNSSECInsecure
}

// Answer is Resolve's result: the contract's answer plus what an operator
// needs to see why (obolctl lookup).
type Answer struct {
	plugins.LookupAnswer
	// FromCache is true when the answer needed no DNS query.
	FromCache bool
}

// Options are the resolver's dependencies (the Config is what operators set).
type Options struct {
	// Transport sends the queries; nil uses a Client for Config.Server.
	Transport Exchanger
	// Now is the clock for cache expiry; nil uses time.Now. Deadlines always
	// run on real time.
	Now func() time.Time
	// Logger gets debug records of lookups; nil logs nothing.
	Logger *slog.Logger
}

// Resolver implements plugins.Resolver: it finds a peer's IPsec gateways
// and keys in DNS (TXT X-IPsec-Server, IPSECKEY and KEY records) through a
// trusted validating resolver, with a cache. Safe for concurrent use.
type Resolver struct {
	cfg    Config
	server string // for messages
	tr     Exchanger
	now    func() time.Time
	log    *slog.Logger
	cache  *cache
	sem    chan struct{}
	base   context.Context // ends at Close
	stop   context.CancelFunc

	mu      sync.Mutex
	flights map[qkey]*call

	m counters
}

var _ plugins.Resolver = (*Resolver)(nil)

// call is one DNS query in flight, shared by every lookup that needs it.
type call struct {
	done    chan struct{}
	e       *entry
	err     error
	waiters int                // guarded by Resolver.mu
	cancel  context.CancelFunc // stops the query when no one waits anymore
}

// New checks cfg and makes a Resolver. Close it when done.
func New(cfg Config, opts Options) (*Resolver, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("resolver config: %w", err)
	}
	server, _ := ServerAddr(cfg.Server)
	r := &Resolver{
		cfg:     cfg,
		server:  server.String(),
		tr:      opts.Transport,
		now:     opts.Now,
		log:     opts.Logger,
		cache:   newCache(cfg.CacheEntries, cfg.CacheBytes),
		sem:     make(chan struct{}, cfg.MaxInFlight),
		flights: make(map[qkey]*call),
	}
	if r.tr == nil {
		r.tr = &Client{Server: server, Retransmit: time.Duration(cfg.Retransmit)}
	}
	if r.now == nil {
		r.now = time.Now
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	r.base, r.stop = context.WithCancel(context.Background())
	return r, nil
}

// Close stops every query in flight; later lookups fail with ErrClosed.
func (r *Resolver) Close() error {
	r.stop()
	return nil
}

// Flush empties the cache (e.g. after the operator changed DNS records).
func (r *Resolver) Flush() { r.cache.purge() }

// Config returns the configuration the resolver runs with.
func (r *Resolver) Config() Config { return r.cfg }

// Lookup implements plugins.Resolver. Besides transport errors it returns
// an *UnusableError (with the answer's status and TTL, no gateways) when
// the answer is bogus, or insecure under require_dnssec.
func (r *Resolver) Lookup(ctx context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	a, err := r.Resolve(ctx, q)
	return a.LookupAnswer, err
}

// Record types asked for each kind of query. A forward name (an @FQDN
// identity) holds keys only: X-IPsec-Server TXT records live in the reverse
// map.
var (
	reverseTypes = []uint16{dns.TypeIPSECKEY, dns.TypeTXT, dns.TypeKEY}
	forwardTypes = []uint16{dns.TypeIPSECKEY, dns.TypeKEY}
)

// Resolve is Lookup with the detail an operator needs: the name asked,
// the records skipped and why, why an answer is unusable. It returns the
// same error as Lookup, and the answer as far as it got.
//
// For an address it asks IPSECKEY, TXT and KEY at the reverse-map name;
// for an FQDN, IPSECKEY and KEY. A gateway named without a key gets its
// keys from KEY records at the gateway's reverse-map name (or its FQDN).
// Gateways come ordered by precedence, lowest first; ties are broken
// deterministically (addresses before names, then ascending), so the
// first gateway is the one to use and the rest are for fail-over. Each
// gateway lists every key published for it (key rollover).
func (r *Resolver) Resolve(ctx context.Context, q plugins.LookupQuery) (Answer, error) {
	r.m.lookups.Add(1)
	t0 := time.Now()
	name, selfAddr, selfFQDN, err := target(q)
	if err != nil {
		r.m.lookupErrors.Add(1)
		return Answer{}, err
	}
	a, err := r.resolve(ctx, name, selfAddr, selfFQDN)
	if err != nil {
		r.m.lookupErrors.Add(1)
	}
	if r.log.Enabled(ctx, slog.LevelDebug) {
		r.log.Debug("dns lookup", "name", name, "dnssec", a.DNSSEC, "gateways", len(a.Gateways),
			"skipped", len(a.Skipped), "ttl", a.TTL, "cached", a.FromCache, "elapsed", time.Since(t0), "err", err)
	}
	return a, err
}

// target turns a query into the DNS name to ask and the peer's identity.
func target(q plugins.LookupQuery) (name string, addr netip.Addr, fqdn string, err error) {
	switch {
	case q.Addr.IsValid() && q.FQDN != "":
		return "", netip.Addr{}, "", errors.New("lookup: give the peer's Addr or its FQDN, not both")
	case q.Addr.IsValid():
		addr = q.Addr.Unmap().WithZone("")
		name, err = dns.ReverseAddr(addr.String())
		if err != nil {
			return "", netip.Addr{}, "", fmt.Errorf("lookup: no reverse-map name for %s: %w", addr, err)
		}
		return strings.ToLower(name), addr, "", nil
	case q.FQDN != "":
		fqdn, err = checkHostName(strings.TrimPrefix(q.FQDN, "@"))
		if err != nil {
			return "", netip.Addr{}, "", fmt.Errorf("lookup: FQDN %q: %w", shorten(q.FQDN, 64), err)
		}
		return fqdn, netip.Addr{}, fqdn, nil
	default:
		return "", netip.Addr{}, "", errors.New("lookup: give the peer's Addr or its FQDN")
	}
}

// result is one fetched question.
type result struct {
	e      *entry
	err    error
	cached bool
}

func (r *Resolver) resolve(ctx context.Context, name string, selfAddr netip.Addr, selfFQDN string) (Answer, error) {
	ans := Answer{LookupAnswer: plugins.LookupAnswer{Name: name}}
	if r.base.Err() != nil {
		return ans, ErrClosed
	}
	// The lookup's deadline (ctx's, or Timeout from now) is set up only
	// when DNS must be asked: cached answers need none.
	dl := &deadline{parent: ctx, timeout: time.Duration(r.cfg.Timeout), start: time.Now()}
	defer dl.stop()

	types := reverseTypes
	if selfFQDN != "" {
		types = forwardTypes
	}
	keys := make([]qkey, len(types))
	for i, t := range types {
		keys[i] = qkey{name, t}
	}
	res := r.fetchAll(dl, keys)
	now := r.now()
	ans.FromCache = true
	for _, p := range res {
		if p.err != nil {
			return ans, p.err
		}
		ans.FromCache = ans.FromCache && p.cached
	}
	status, ttl := plugins.DNSSECSecure, time.Duration(1<<62)
	seen := make([]*entry, 0, len(res)+2) // entries whose skip reasons are in ans
	var bogus *entry
	for _, p := range res {
		status = weaker(status, p.e.status)
		ttl = min(ttl, p.e.expires.Sub(now))
		ans.Skipped = append(ans.Skipped, p.e.skipped...)
		seen = append(seen, p.e)
		if p.e.status == plugins.DNSSECBogus && bogus == nil {
			bogus = p.e
		}
	}
	ans.DNSSEC, ans.TTL = status, ceilSecond(max(ttl, 0))
	switch {
	case bogus != nil:
		ans.Unusable = fmt.Sprintf("%s %s did not validate (%s); the answer may be forged or the zone's signatures broken: check the zone's DNSSEC (e.g. delv or dig +cd)",
			bogus.key.name, dns.TypeToString[bogus.key.qtype], bogus.reason)
		return ans, &UnusableError{Name: name, Status: status, Reason: ans.Unusable}
	case status != plugins.DNSSECSecure && r.cfg.RequireDNSSEC:
		ans.Unusable = "the answer is not DNSSEC-validated (the zone is not signed, or the resolver does not validate) and require_dnssec is on; sign the zone or turn require_dnssec off"
		return ans, &UnusableError{Name: name, Status: status, Reason: ans.Unusable}
	}

	var dels []delegation
	for _, p := range res {
		for _, d := range p.e.dels {
			if d.self {
				d.addr, d.fqdn = selfAddr, selfFQDN
			}
			dels = append(dels, d)
		}
	}

	// A gateway named without a key: its keys are KEY records at its name
	// (and IPSECKEY at its FQDN). A gateway named by FQDN: IKE goes to the
	// FQDN's addresses (A, AAAA). All asked at once.
	var need []qkey
	add := func(k qkey) {
		if !slices.Contains(keys, k) && !slices.Contains(need, k) {
			need = append(need, k)
		}
	}
	for _, d := range dels {
		if len(d.keys) == 0 {
			for _, k := range keyQuestions(d) {
				add(k)
			}
		}
		if needsAddrs(d, selfFQDN) {
			add(qkey{d.fqdn, dns.TypeA})
			add(qkey{d.fqdn, dns.TypeAAAA})
		}
	}
	if len(need) == 0 {
		ans.Gateways = group(dels)
		ans.TTL = ceilSecond(ans.TTL)
		return ans, nil
	}
	known := make(map[qkey]result, len(keys)+len(need))
	for i, k := range keys {
		known[k] = res[i]
	}
	for i, p := range r.fetchAll(dl, need) {
		known[need[i]] = p
		ans.FromCache = ans.FromCache && p.cached
	}
	var transient error
	// use takes one fetched answer into account for gateway d: its TTL,
	// whether it may be used, its skip reasons. It returns false, with the
	// reason recorded, when the gateway must be left out.
	use := func(d *delegation, k qkey, what string) (*entry, bool) {
		p := known[k]
		gw := gatewayLabel(*d)
		if p.e != nil {
			// Whatever it says, the answer holds only as long as it does.
			ans.TTL = max(min(ans.TTL, p.e.expires.Sub(now)), 0)
		}
		switch {
		case p.err != nil:
			transient = cmp.Or(transient, p.err)
			ans.Skipped = append(ans.Skipped, fmt.Sprintf("gateway %s (%s, precedence %d): for %s, looking up %s at %s failed: %v", gw, d.source, d.prec, what, dns.TypeToString[k.qtype], k.name, p.err))
			return nil, false
		case p.e.status == plugins.DNSSECBogus:
			ans.Skipped = append(ans.Skipped, fmt.Sprintf("gateway %s (%s, precedence %d): for %s, %s at %s did not validate (%s)", gw, d.source, d.prec, what, dns.TypeToString[k.qtype], k.name, p.e.reason))
			return nil, false
		case p.e.status != plugins.DNSSECSecure && r.cfg.RequireDNSSEC && !p.e.negative:
			ans.Skipped = append(ans.Skipped, fmt.Sprintf("gateway %s (%s, precedence %d): for %s, %s at %s is not DNSSEC-validated and require_dnssec is on", gw, d.source, d.prec, what, dns.TypeToString[k.qtype], k.name))
			return nil, false
		}
		if !slices.Contains(seen, p.e) {
			seen = append(seen, p.e)
			ans.Skipped = append(ans.Skipped, p.e.skipped...)
		}
		return p.e, true
	}
	for i := range dels {
		d := &dels[i]
		if len(d.keys) == 0 {
			var keys []plugins.PublicKey // not d.keys: never append to the cache's slices
			var status []plugins.DNSSECStatus
			ok := true
			var asked []string
			for _, k := range keyQuestions(*d) {
				asked = append(asked, k.name+" has no usable "+dns.TypeToString[k.qtype]+" record")
				e, usable := use(d, k, "its key")
				if !usable {
					ok = false
					continue
				}
				n := len(keys)
				for _, kd := range e.dels {
					// At the gateway's own name: KEY records, and IPSECKEY
					// naming no other gateway (type 0, or the name itself).
					if kd.self || (kd.fqdn != "" && kd.fqdn == d.fqdn) {
						keys = append(keys, kd.keys...)
					}
				}
				if len(keys) > n {
					status = append(status, e.status)
				}
			}
			if len(keys) == 0 {
				if ok {
					ans.Skipped = append(ans.Skipped, fmt.Sprintf("gateway %s (%s, precedence %d) has no key in its record and %s; publish one or put the key in the record", gatewayLabel(*d), d.source, d.prec, strings.Join(asked, " and ")))
				}
				continue
			}
			d.keys = keys
			for _, st := range status {
				ans.DNSSEC = weaker(ans.DNSSEC, st)
			}
		}
		if needsAddrs(*d, selfFQDN) {
			var addrs []netip.Addr
			var status []plugins.DNSSECStatus
			ok := true
			for _, t := range []uint16{dns.TypeA, dns.TypeAAAA} {
				e, usable := use(d, qkey{d.fqdn, t}, "its address")
				if !usable {
					ok = false
					break
				}
				if len(e.addrs) > 0 {
					addrs = append(addrs, e.addrs...)
					status = append(status, e.status)
				}
			}
			if !ok {
				// Without its addresses the gateway cannot be reached, and
				// taking the destination instead would be a guess.
				d.keys = nil
				continue
			}
			// The answer is as trustworthy as the least trusted record it
			// uses: the gateway's address records too.
			for _, st := range status {
				ans.DNSSEC = weaker(ans.DNSSEC, st)
			}
			d.addrs = addrs
		}
	}
	ans.Gateways = group(dels)
	ans.TTL = ceilSecond(ans.TTL)
	if transient != nil {
		if len(ans.Gateways) == 0 {
			return ans, fmt.Errorf("%s names gateways, but no key or address could be found for any: %w", name, transient)
		}
		// Retry the failed lookups soon.
		ans.TTL = min(ans.TTL, time.Duration(r.cfg.MinTTL))
	}
	return ans, nil
}

// keyQuestions are where the keys of a gateway named without one live:
// KEY at its reverse-map name or FQDN, and IPSECKEY at its FQDN.
func keyQuestions(d delegation) []qkey {
	ks := []qkey{{gatewayName(d), dns.TypeKEY}}
	if !d.addr.IsValid() {
		ks = append(ks, qkey{d.fqdn, dns.TypeIPSECKEY})
	}
	return ks
}

// needsAddrs tells whether d names a gateway by FQDN whose addresses must be
// looked up: not when the FQDN is the identity being looked up itself.
func needsAddrs(d delegation, selfFQDN string) bool {
	return !d.addr.IsValid() && d.fqdn != "" && d.fqdn != selfFQDN
}

// ceilSecond rounds a remaining TTL up to whole seconds, as DNS counts
// them: a fresh answer reports its records' TTL, not a hair less.
func ceilSecond(d time.Duration) time.Duration {
	return (d + time.Second - 1).Truncate(time.Second)
}

// gatewayName is where a gateway's KEY records live.
func gatewayName(d delegation) string {
	if d.addr.IsValid() {
		name, _ := dns.ReverseAddr(d.addr.String())
		return strings.ToLower(name)
	}
	return d.fqdn
}

func gatewayLabel(d delegation) string {
	if d.addr.IsValid() {
		return d.addr.String()
	}
	return "@" + d.fqdn
}

// weaker returns the less trustworthy of two statuses.
func weaker(a, b plugins.DNSSECStatus) plugins.DNSSECStatus {
	rank := func(s plugins.DNSSECStatus) int {
		switch s {
		case plugins.DNSSECSecure:
			return 0
		case plugins.DNSSECInsecure:
			return 1
		default:
			return 2
		}
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

var sourceOrder = []string{SourceIPSECKEY, SourceTXT, SourceKEY}

// group merges delegations naming the same gateway (lowest precedence, the
// union of keys, every source) and orders the gateways: precedence, then
// addresses before names, then ascending. Gateways without a key are left
// out (their reason is already recorded). Key data is copied: answers
// never share memory with the cache.
func group(dels []delegation) []plugins.Gateway {
	type keyAt struct {
		prec int
		k    plugins.PublicKey
	}
	type gw struct {
		g       plugins.Gateway
		sources [3]bool
		keys    []keyAt
	}
	var order []*gw // few: a linear search beats a map
	for _, d := range dels {
		if len(d.keys) == 0 {
			continue
		}
		var g *gw
		for _, have := range order {
			if have.g.Addr == d.addr && have.g.FQDN == d.fqdn {
				g = have
				break
			}
		}
		if g == nil {
			g = &gw{g: plugins.Gateway{Precedence: d.prec, Addr: d.addr, FQDN: d.fqdn}}
			order = append(order, g)
		}
		for _, a := range d.addrs {
			if !slices.Contains(g.g.Addrs, a) {
				g.g.Addrs = append(g.g.Addrs, a)
			}
		}
		g.g.Precedence = min(g.g.Precedence, d.prec)
		g.sources[slices.Index(sourceOrder, d.source)] = true
	next:
		for _, k := range d.keys {
			for i, have := range g.keys {
				if have.k.Algorithm == k.Algorithm && string(have.k.Data) == string(k.Data) {
					g.keys[i].prec = min(have.prec, d.prec)
					continue next
				}
			}
			g.keys = append(g.keys, keyAt{d.prec, k})
		}
	}
	slices.SortFunc(order, func(a, b *gw) int {
		return compareGateways(a.g, b.g)
	})
	if len(order) == 0 {
		return nil
	}
	out := make([]plugins.Gateway, 0, len(order))
	for _, g := range order {
		slices.SortFunc(g.keys, func(a, b keyAt) int {
			return cmp.Or(cmp.Compare(a.prec, b.prec), strings.Compare(a.k.Algorithm, b.k.Algorithm), strings.Compare(string(a.k.Data), string(b.k.Data)))
		})
		var src []string
		for i, ok := range g.sources {
			if ok {
				src = append(src, sourceOrder[i])
			}
		}
		g.g.Source = strings.Join(src, "+")
		g.g.Keys = make([]plugins.PublicKey, len(g.keys))
		for i, k := range g.keys {
			g.g.Keys[i] = plugins.PublicKey{Algorithm: k.k.Algorithm, Data: slices.Clone(k.k.Data)}
		}
		out = append(out, g.g)
	}
	return out
}

func compareGateways(a, b plugins.Gateway) int {
	if c := cmp.Compare(a.Precedence, b.Precedence); c != 0 {
		return c
	}
	switch {
	case a.Addr.IsValid() && !b.Addr.IsValid():
		return -1
	case !a.Addr.IsValid() && b.Addr.IsValid():
		return 1
	case a.Addr.IsValid():
		return a.Addr.Compare(b.Addr)
	}
	return strings.Compare(a.FQDN, b.FQDN)
}

// fetchAll gets the answers to several questions: from the cache, or
// asking DNS for the missing ones concurrently.
func (r *Resolver) fetchAll(dl *deadline, keys []qkey) []result {
	res := make([]result, len(keys))
	now := r.now()
	var miss []int
	for i, k := range keys {
		if e := r.cached(k, now); e != nil {
			res[i] = result{e: e, cached: true}
		} else {
			miss = append(miss, i)
		}
	}
	if len(miss) == 0 {
		return res
	}
	ctx := dl.context()
	switch len(miss) {
	case 1:
		i := miss[0]
		res[i].e, res[i].err = r.fetch(ctx, keys[i])
	default:
		var wg sync.WaitGroup
		for _, i := range miss {
			wg.Go(func() { res[i].e, res[i].err = r.fetch(ctx, keys[i]) })
		}
		wg.Wait()
	}
	return res
}

func (r *Resolver) cached(k qkey, now time.Time) *entry {
	e := r.cache.get(k, now)
	if e != nil {
		r.m.hits.Add(1)
		if e.negative {
			r.m.negativeHits.Add(1)
		}
	}
	return e
}

// fetch asks DNS for k, sharing the query with every concurrent caller
// that needs the same answer. The query runs detached from ctx, bounded by
// Config.Timeout, and is stopped once no caller waits for it; a caller
// whose ctx ends returns at once.
func (r *Resolver) fetch(ctx context.Context, k qkey) (*entry, error) {
	r.mu.Lock()
	c := r.flights[k]
	if c != nil {
		c.waiters++
		r.m.misses.Add(1)
		r.m.coalesced.Add(1)
	} else {
		// The query that filled the cache may have ended since we looked.
		if e := r.cached(k, r.now()); e != nil {
			r.mu.Unlock()
			return e, nil
		}
		r.m.misses.Add(1)
		qctx, cancel := context.WithTimeout(r.base, time.Duration(r.cfg.Timeout))
		c = &call{done: make(chan struct{}), waiters: 1, cancel: cancel}
		r.flights[k] = c
		go r.run(qctx, k, c)
	}
	r.mu.Unlock()
	select {
	case <-c.done:
		return c.e, c.err
	case <-ctx.Done():
		r.mu.Lock()
		c.waiters--
		if c.waiters == 0 {
			c.cancel()
			if r.flights[k] == c {
				delete(r.flights, k)
			}
		}
		r.mu.Unlock()
		return nil, fmt.Errorf("%s %s: no answer before the lookup's deadline: %w", k.name, dns.TypeToString[k.qtype], ctx.Err())
	}
}

func (r *Resolver) run(ctx context.Context, k qkey, c *call) {
	defer c.cancel()
	r.m.inFlight.Add(1)
	e, err := r.query(ctx, k)
	r.m.inFlight.Add(-1)
	switch {
	case err == nil:
		if len(e.skipped) > 0 {
			r.m.skipped.Add(uint64(len(e.skipped)))
		}
		if e.status == plugins.DNSSECBogus {
			r.m.bogus.Add(1)
		}
		if n := r.cache.put(e); n > 0 {
			r.m.evictions.Add(uint64(n))
		}
	case errors.Is(err, context.Canceled):
		// No one waits anymore, or the resolver closed: not a DNS error.
	default:
		r.m.errors.Add(1)
		if errors.Is(err, context.DeadlineExceeded) {
			r.m.timeouts.Add(1)
		}
	}
	r.mu.Lock()
	if r.flights[k] == c {
		delete(r.flights, k)
	}
	r.mu.Unlock()
	c.e, c.err = e, err
	close(c.done)
}

// query asks DNS for k and interprets the answer, telling a DNSSEC
// failure (bogus) from a resolver that could not get an answer.
func (r *Resolver) query(ctx context.Context, k qkey) (*entry, error) {
	select {
	case r.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, fmt.Errorf("%s %s: waiting for a free query slot (max_in_flight = %d): %w", k.name, dns.TypeToString[k.qtype], r.cfg.MaxInFlight, ctx.Err())
	}
	defer func() { <-r.sem }()
	resp, err := r.exchange(ctx, k, false)
	if err != nil {
		return nil, err
	}
	e, err := processAnswer(k, resp, r.now(), &r.cfg)
	if err == nil {
		return e, nil
	}
	if !errors.Is(err, errServFail) {
		return nil, fmt.Errorf("%s %s from %s: %w", k.name, dns.TypeToString[k.qtype], r.server, err)
	}
	verdict, detail := classifyServfail(resp)
	if verdict == servfailUnknown {
		// Ask again with checking disabled: if the data comes back, only
		// its validation failed.
		cd, err := r.exchange(ctx, k, true)
		switch {
		case err != nil:
			return nil, fmt.Errorf("%w: SERVFAIL for %s %s from %s, and asking again with checking disabled failed: %v", ErrServerFailure, k.name, dns.TypeToString[k.qtype], r.server, err)
		case cd.Rcode == dns.RcodeSuccess || cd.Rcode == dns.RcodeNameError:
			verdict, detail = servfailBogus, "SERVFAIL, yet the data is there with checking disabled: it does not validate"
		default:
			verdict, detail = servfailFailure, "SERVFAIL also with checking disabled"
		}
	}
	if verdict == servfailBogus {
		return bogusEntry(k, detail, r.now(), &r.cfg), nil
	}
	return nil, fmt.Errorf("%w: %s %s from %s: %s; the resolver could not reach the zone's servers: check its upstream connectivity and the zone's delegation",
		ErrServerFailure, k.name, dns.TypeToString[k.qtype], r.server, detail)
}

func (r *Resolver) exchange(ctx context.Context, k qkey, cd bool) (*dns.Msg, error) {
	r.m.queries.Add(1)
	resp, err := r.tr.Exchange(ctx, newQuery(k, cd))
	switch {
	case err != nil && errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("no answer from %s for %s %s in time: %w; check that the validating resolver runs and answers (dig @%s %s %s)",
			r.server, k.name, dns.TypeToString[k.qtype], err, r.serverHost(), k.name, dns.TypeToString[k.qtype])
	case err != nil:
		return nil, fmt.Errorf("asking %s for %s %s: %w", r.server, k.name, dns.TypeToString[k.qtype], err)
	case resp == nil:
		return nil, fmt.Errorf("asking %s for %s %s: the transport returned no answer", r.server, k.name, dns.TypeToString[k.qtype])
	}
	return resp, nil
}

func (r *Resolver) serverHost() string {
	ap, err := netip.ParseAddrPort(r.server)
	if err != nil {
		return r.server
	}
	if ap.Port() == 53 {
		return ap.Addr().String()
	}
	return fmt.Sprintf("%s -p %d", ap.Addr(), ap.Port())
}

// counters are the live metrics; Metrics copies them.
type counters struct {
	lookups, lookupErrors                 atomic.Uint64
	hits, negativeHits, misses, coalesced atomic.Uint64
	queries, errors, timeouts, bogus      atomic.Uint64
	skipped, evictions                    atomic.Uint64
	inFlight                              atomic.Int64
}

// Metrics is a snapshot of the resolver's counters (monotonic since New,
// except the gauges InFlight, CacheEntries and CacheBytes).
type Metrics struct {
	Lookups      uint64 // Lookup and Resolve calls
	LookupErrors uint64 // lookups that returned an error (unusable answers included)
	Hits         uint64 // questions answered from the cache
	NegativeHits uint64 // of Hits, negative answers (NXDOMAIN, NODATA, bogus)
	Misses       uint64 // questions that needed DNS (a new query or one in flight)
	Coalesced    uint64 // of Misses, those that joined a query already in flight
	Queries      uint64 // DNS messages sent (bogus re-checks with CD included)
	Errors       uint64 // queries that failed (timeouts, SERVFAIL not from DNSSEC, ...)
	Timeouts     uint64 // of Errors, those that ran out of time
	Bogus        uint64 // answers that failed DNSSEC validation
	Skipped      uint64 // records skipped as malformed or unsupported
	Evictions    uint64 // cache entries dropped to stay within bounds
	InFlight     int64  // queries outstanding now
	CacheEntries int    // entries cached now
	CacheBytes   int    // their estimated memory
}

// Metrics returns a snapshot of the counters.
func (r *Resolver) Metrics() Metrics {
	entries, bytes := r.cache.stats()
	return Metrics{
		Lookups:      r.m.lookups.Load(),
		LookupErrors: r.m.lookupErrors.Load(),
		Hits:         r.m.hits.Load(),
		NegativeHits: r.m.negativeHits.Load(),
		Misses:       r.m.misses.Load(),
		Coalesced:    r.m.coalesced.Load(),
		Queries:      r.m.queries.Load(),
		Errors:       r.m.errors.Load(),
		Timeouts:     r.m.timeouts.Load(),
		Bogus:        r.m.bogus.Load(),
		Skipped:      r.m.skipped.Load(),
		Evictions:    r.m.evictions.Load(),
		InFlight:     r.m.inFlight.Load(),
		CacheEntries: entries,
		CacheBytes:   bytes,
	}
}

// deadline is a lookup's deadline, made on first use: the caller's ctx
// bounded by Config.Timeout from the lookup's start.
type deadline struct {
	parent  context.Context
	timeout time.Duration
	start   time.Time
	ctx     context.Context
	cancel  context.CancelFunc
}

func (d *deadline) context() context.Context {
	if d.ctx == nil {
		d.ctx, d.cancel = context.WithDeadline(d.parent, d.start.Add(d.timeout))
	}
	return d.ctx
}

func (d *deadline) stop() {
	if d.cancel != nil {
		d.cancel()
	}
}

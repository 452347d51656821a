package resolver

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

func lookup(t *testing.T, r *Resolver, q plugins.LookupQuery) Answer {
	t.Helper()
	a, err := r.Resolve(context.Background(), q)
	if err != nil {
		t.Fatalf("Resolve(%v): %v", q, err)
	}
	return a
}

func TestCacheTTL(t *testing.T) {
	ed := b64(testEd25519(0))
	cases := []struct {
		name    string
		ttls    [2]int // IPSECKEY and TXT record TTLs
		min     time.Duration
		max     time.Duration
		wantTTL time.Duration
	}{
		{"smallest record TTL", [2]int{120, 60}, 10 * time.Second, time.Hour, 60 * time.Second},
		{"raised to min_ttl", [2]int{1, 300}, 10 * time.Second, time.Hour, 10 * time.Second},
		{"cut to max_ttl", [2]int{86400, 86400}, 10 * time.Second, time.Hour, time.Hour},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := labZones(t, resolvertest.Secure,
				fmt.Sprintf("%s %d IN IPSECKEY 10 1 4 192.0.2.2 %s", peerName, tc.ttls[0], ed),
				fmt.Sprintf("%s %d IN TXT \"v=spf1 -all\"", peerName, tc.ttls[1]),
			)
			// The KEY question is NODATA: give it a long negative TTL so
			// the positive records decide.
			fake.SetNegativeTTL(revZone, 86400, 86400)
			r, clock := newTest(t, fake, func(c *Config) {
				c.MinTTL, c.MaxTTL, c.MaxNegativeTTL = Duration(tc.min), Duration(tc.max), Duration(24*time.Hour)
			})
			q := plugins.LookupQuery{Addr: peer}
			a := lookup(t, r, q)
			if a.TTL != tc.wantTTL || a.FromCache {
				t.Fatalf("first answer: TTL %v, from cache %v; want %v, false", a.TTL, a.FromCache, tc.wantTTL)
			}
			sent := fake.Queries()
			clock.Advance(tc.wantTTL - time.Second)
			a = lookup(t, r, q)
			if !a.FromCache || fake.Queries() != sent || a.TTL != time.Second {
				t.Fatalf("1s before expiry: from cache %v, TTL %v, %d new queries", a.FromCache, a.TTL, fake.Queries()-sent)
			}
			if len(a.Gateways) != 1 {
				t.Fatalf("cached answer lost its gateway: %s", describe(a.Gateways))
			}
			clock.Advance(time.Second)
			a = lookup(t, r, q)
			if a.FromCache || fake.Queries() == sent {
				t.Fatalf("after expiry the answer still came from the cache")
			}
		})
	}
}

func TestNegativeCache(t *testing.T) {
	cases := []struct {
		name         string
		soaTTL, min  uint32
		records      []string
		maxNeg       time.Duration
		wantTTL      time.Duration
		wantNXDOMAIN bool
	}{
		{"NXDOMAIN: SOA minimum", 300, 60, nil, 5 * time.Minute, 60 * time.Second, true},
		{"NXDOMAIN: SOA TTL when smaller", 45, 600, nil, 5 * time.Minute, 45 * time.Second, true},
		{"NXDOMAIN: cut to max_negative_ttl", 86400, 86400, nil, 5 * time.Minute, 5 * time.Minute, true},
		{"NODATA (the name has other records)", 300, 120, []string{peerName + " 300 IN PTR hosta.example.test."}, 5 * time.Minute, 120 * time.Second, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			fake := labZones(t, resolvertest.Secure, tc.records...)
			fake.SetNegativeTTL(revZone, tc.soaTTL, tc.min)
			r, clock := newTest(t, fake, func(c *Config) { c.MaxNegativeTTL = Duration(tc.maxNeg) })
			q := plugins.LookupQuery{Addr: peer}
			a := lookup(t, r, q)
			if len(a.Gateways) != 0 || a.DNSSEC != plugins.DNSSECSecure || a.TTL != tc.wantTTL {
				t.Fatalf("got %s, %s, TTL %v; want no gateways, secure, TTL %v", describe(a.Gateways), a.DNSSEC, a.TTL, tc.wantTTL)
			}
			e := r.cache.get(qkey{peerName, dns.TypeTXT}, clock.Now())
			if e == nil || !e.negative || e.nxdomain != tc.wantNXDOMAIN {
				t.Fatalf("cache entry %+v, want negative, nxdomain %v", e, tc.wantNXDOMAIN)
			}
			sent := fake.Queries()
			before := r.Metrics()
			a = lookup(t, r, q)
			m := r.Metrics()
			if !a.FromCache || fake.Queries() != sent || m.NegativeHits-before.NegativeHits != 3 {
				t.Errorf("second lookup: from cache %v, %d queries, %d negative hits; want true, 0, 3", a.FromCache, fake.Queries()-sent, m.NegativeHits-before.NegativeHits)
			}
			clock.Advance(tc.wantTTL)
			if a = lookup(t, r, q); a.FromCache {
				t.Error("negative answer outlived its TTL")
			}
		})
	}
}

func TestBogusCachedForBogusTTL(t *testing.T) {
	fake := labZones(t, resolvertest.Bogus)
	r, clock := newTest(t, fake, func(c *Config) { c.BogusTTL = Duration(20 * time.Second) })
	q := plugins.LookupQuery{Addr: peer}
	a, _ := r.Resolve(context.Background(), q)
	if a.DNSSEC != plugins.DNSSECBogus || a.TTL != 20*time.Second {
		t.Fatalf("got %s TTL %v", a.DNSSEC, a.TTL)
	}
	sent := fake.Queries()
	clock.Advance(19 * time.Second)
	if a, _ = r.Resolve(context.Background(), q); !a.FromCache || fake.Queries() != sent {
		t.Errorf("bogus verdict not cached")
	}
	clock.Advance(time.Second)
	if a, _ = r.Resolve(context.Background(), q); a.FromCache {
		t.Errorf("bogus verdict outlived bogus_ttl")
	}
}

func TestErrorsAreNotCached(t *testing.T) {
	fake := labZones(t, resolvertest.Broken)
	r, _ := newTest(t, fake, nil)
	q := plugins.LookupQuery{Addr: peer}
	if _, err := r.Resolve(context.Background(), q); err == nil {
		t.Fatal("broken zone: no error")
	}
	fake.SetValidation(revZone, resolvertest.Secure)
	if _, err := r.Resolve(context.Background(), q); err != nil {
		t.Fatalf("after the zone recovered: %v", err)
	}
}

// N concurrent lookups of one peer send one query per record type.
func TestSingleflight(t *testing.T) {
	const n = 64
	fake := labZones(t, resolvertest.Secure, peerName+" 300 IN IPSECKEY 10 1 4 192.0.2.2 "+b64(testEd25519(0)))
	release := fake.Block()
	defer release()
	r, _ := newTest(t, fake, nil)
	var wg sync.WaitGroup
	answers := make([]plugins.LookupAnswer, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { answers[i], errs[i] = r.Lookup(context.Background(), plugins.LookupQuery{Addr: peer}) })
	}
	waitFor(t, "every caller to wait", func() bool { return r.Metrics().Misses == 3*n })
	release()
	wg.Wait()
	for i := range n {
		if errs[i] != nil || len(answers[i].Gateways) != 1 {
			t.Fatalf("caller %d: %s, %v", i, describe(answers[i].Gateways), errs[i])
		}
	}
	m := r.Metrics()
	if fake.Queries() != 3 || m.Queries != 3 || m.Coalesced != 3*n-3 {
		t.Errorf("%d callers: %d queries sent (%d by metrics), %d coalesced; want 3, 3, %d\n%q", n, fake.Queries(), m.Queries, m.Coalesced, 3*n-3, fake.Log())
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// wildcardZone answers every address of 10.0.0.0/8 with an IPSECKEY.
func wildcardZone(t testing.TB, keyBytes int) *resolvertest.Server {
	t.Helper()
	fake := resolvertest.New()
	fake.AddZone("10.in-addr.arpa.", resolvertest.Secure)
	for _, z := range []string{"*.0.0.10.in-addr.arpa.", "*.1.0.10.in-addr.arpa.", "*.2.0.10.in-addr.arpa.", "*.3.0.10.in-addr.arpa."} {
		mustAdd(t, fake, z+" 300 IN IPSECKEY 10 1 4 192.0.2.2 "+b64(testEd25519(0)))
		if keyBytes > 0 {
			mustAdd(t, fake, txt(z, 300, "X-IPsec-Server(20)=192.0.2.1 "+rsaB64(testRSA(t, 0))))
		}
	}
	return fake
}

func distinct(i int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, byte(i >> 8 & 3), byte(i)}) }

func TestCacheBounded(t *testing.T) {
	t.Run("entries", func(t *testing.T) {
		fake := wildcardZone(t, 0)
		r, _ := newTest(t, fake, func(c *Config) { c.CacheEntries = 90 })
		for i := range 1000 {
			if a := lookup(t, r, plugins.LookupQuery{Addr: distinct(i)}); len(a.Gateways) != 1 {
				t.Fatalf("lookup %d: %s", i, describe(a.Gateways))
			}
			if m := r.Metrics(); m.CacheEntries > 90 {
				t.Fatalf("after %d lookups the cache holds %d entries, bound 90", i+1, m.CacheEntries)
			}
		}
		m := r.Metrics()
		if m.CacheEntries != 90 || m.Evictions != 3000-90 {
			t.Errorf("cache: %d entries, %d evictions; want 90, %d", m.CacheEntries, m.Evictions, 3000-90)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		fake := wildcardZone(t, 1)
		const budget = 64 << 10
		r, _ := newTest(t, fake, func(c *Config) { c.CacheEntries, c.CacheBytes = 1<<20, budget })
		for i := range 1000 {
			lookup(t, r, plugins.LookupQuery{Addr: distinct(i)})
			if m := r.Metrics(); m.CacheBytes > budget {
				t.Fatalf("after %d lookups the cache holds %d bytes, bound %d", i+1, m.CacheBytes, budget)
			}
		}
		m := r.Metrics()
		if m.CacheEntries < 60 || m.Evictions == 0 {
			t.Errorf("cache: %d entries, %d bytes, %d evictions", m.CacheEntries, m.CacheBytes, m.Evictions)
		}
	})
	t.Run("least recently used goes first", func(t *testing.T) {
		fake := wildcardZone(t, 0)
		r, _ := newTest(t, fake, func(c *Config) { c.CacheEntries = 6 }) // two lookups' worth
		a, b, c := plugins.LookupQuery{Addr: distinct(1)}, plugins.LookupQuery{Addr: distinct(2)}, plugins.LookupQuery{Addr: distinct(3)}
		lookup(t, r, a)
		lookup(t, r, b)
		lookup(t, r, a) // a is now the most recent
		lookup(t, r, c) // evicts b
		if !lookup(t, r, a).FromCache {
			t.Error("a, recently used, was evicted")
		}
		if lookup(t, r, b).FromCache {
			t.Error("b, least recently used, was kept")
		}
	})
	t.Run("disabled", func(t *testing.T) {
		fake := wildcardZone(t, 0)
		r, _ := newTest(t, fake, func(c *Config) { c.CacheEntries = 0 })
		lookup(t, r, plugins.LookupQuery{Addr: distinct(1)})
		if lookup(t, r, plugins.LookupQuery{Addr: distinct(1)}).FromCache || fake.Queries() != 6 || r.Metrics().CacheEntries != 0 {
			t.Errorf("cache_entries = 0 still caches: %d queries", fake.Queries())
		}
	})
	t.Run("flush", func(t *testing.T) {
		fake := wildcardZone(t, 0)
		r, _ := newTest(t, fake, nil)
		lookup(t, r, plugins.LookupQuery{Addr: distinct(1)})
		r.Flush()
		if m := r.Metrics(); m.CacheEntries != 0 || m.CacheBytes != 0 {
			t.Errorf("after Flush: %+v", m)
		}
	})
}

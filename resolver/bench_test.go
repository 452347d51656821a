package resolver

import (
	"context"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

// benchZones publishes what a typical peer has: an IPSECKEY with an
// Ed25519 key, a TXT delegation with an RSA key, and the peer's own KEY.
func benchZones(b *testing.B) *resolvertest.Server {
	r0 := testRSA(b, 0)
	return labZones(b, resolvertest.Secure,
		peerName+" 300 IN IPSECKEY 10 1 4 192.0.2.2 "+b64(testEd25519(0)),
		txt(peerName, 300, "X-IPsec-Server(20)=192.0.2.1 "+rsaB64(r0)),
		peerName+" 300 IN KEY 16896 4 5 "+rsaB64(testRSA(b, 1)),
	)
}

// baselineUncached measures lookups of the same peer with the cache off:
// every lookup sends its queries to the in-process fake (no network).
func baselineUncached(b *testing.B, fake *resolvertest.Server) time.Duration {
	r, _ := newTest(b, fake, func(c *Config) { c.CacheEntries = 0 })
	q := plugins.LookupQuery{Addr: peer}
	const n = 2000
	t0 := time.Now()
	for range n {
		if _, err := r.Lookup(context.Background(), q); err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(t0) / n
}

// BenchmarkCachedLookup measures cached lookups and, in the same run, the
// uncached baseline against the in-process fake; it reports both and their
// ratio (speedup).
func BenchmarkCachedLookup(b *testing.B) {
	fake := benchZones(b)
	base := baselineUncached(b, fake)
	r, _ := newTest(b, fake, nil)
	q := plugins.LookupQuery{Addr: peer}
	if a, err := r.Lookup(context.Background(), q); err != nil || len(a.Gateways) != 3 {
		b.Fatalf("warm-up: %d gateways, %v", len(a.Gateways), err)
	}
	sent := fake.Queries()
	ctx := context.Background()
	n := 0
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Lookup(ctx, q); err != nil {
			b.Fatal(err)
		}
		n++
	}
	if fake.Queries() != sent {
		b.Fatalf("cached lookups sent %d queries", fake.Queries()-sent)
	}
	perOp := b.Elapsed() / time.Duration(n)
	b.ReportMetric(float64(time.Second)/float64(perOp), "lookups/s")
	b.ReportMetric(float64(base.Nanoseconds()), "uncached-ns/op")
	b.ReportMetric(float64(base)/float64(perOp), "speedup-x")
}

// BenchmarkCachedLookupParallel is BenchmarkCachedLookup from every
// GOMAXPROCS goroutine at once (the cache's lock under contention).
func BenchmarkCachedLookupParallel(b *testing.B) {
	fake := benchZones(b)
	r, _ := newTest(b, fake, nil)
	q := plugins.LookupQuery{Addr: peer}
	if _, err := r.Lookup(context.Background(), q); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := r.Lookup(context.Background(), q); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lookups/s")
}

// BenchmarkUncachedLookup is the baseline alone: three queries to the
// in-process fake per lookup.
func BenchmarkUncachedLookup(b *testing.B) {
	fake := benchZones(b)
	r, _ := newTest(b, fake, func(c *Config) { c.CacheEntries = 0 })
	q := plugins.LookupQuery{Addr: peer}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.Lookup(context.Background(), q); err != nil {
			b.Fatal(err)
		}
	}
}

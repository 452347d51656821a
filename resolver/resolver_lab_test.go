package resolver

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/plugins"
)

// TestResolverLab runs the resolver against real DNS: knot signing the
// zones behind a validating unbound, in the e2e lab's namespaces. It needs
// root; CI runs it as root, so not being root is a failure, not a skip.
func TestResolverLab(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("TestResolverLab needs root (the lab's network namespaces, knot, unbound): run it as root, e.g. `sudo go test ./resolver/`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Keys made here and published below.
	rsaA, err := rsa.GenerateKey(rand.Reader, 2048) // gwa's, inline in TXT
	if err != nil {
		t.Fatal(err)
	}
	rsaB, err := rsa.GenerateKey(rand.Reader, 3072) // gwb's, in a KEY record at its reverse name
	if err != nil {
		t.Fatal(err)
	}
	edB, _, _ := ed25519.GenerateKey(rand.Reader)   // gwb's, in IPSECKEY (rollover: both of gwb's keys)
	edGW, _, _ := ed25519.GenerateKey(rand.Reader)  // gw.example.test's, in a KEY record (forward map)
	edLAN, _, _ := ed25519.GenerateKey(rand.Reader) // the 10.x zones'

	const rev = "2.0.192.in-addr.arpa."
	big := []string{} // enough TXT records that the answer needs TCP
	for i := 1; i <= 6; i++ {
		big = append(big, txt("13."+rev, 300, fmt.Sprintf("X-IPsec-Server(%d)=192.0.2.%d %s", 10+i, 100+i, rsaB64(&rsaA.PublicKey))))
	}
	zones := []lab.Zone{
		{Name: rev, Records: append([]string{
			txt("11."+rev, 300, "X-IPsec-Server(10)=192.0.2.1 "+rsaB64(&rsaA.PublicKey)),
			txt("11."+rev, 300, "X-IPsec-Server(10)=192.0.2.2"),
			txt("11."+rev, 300, "X-IPsec-Server(oops)=192.0.2.9"),
			"11 300 IN IPSECKEY 5 1 4 192.0.2.2 " + b64(edB),
			"11 300 IN PTR hosta.example.test.",
			"2 300 IN KEY 16896 4 5 " + rsaB64(&rsaB.PublicKey),
			txt("12."+rev, 60, "X-IPsec-Server(10)=@gw.example.test"),
		}, big...)},
		{Name: "example.test.", Records: []string{
			"gw 300 IN KEY 16896 4 15 " + b64(edGW),
		}},
		{Name: "1.10.in-addr.arpa.", Unsigned: true, Records: []string{
			"10.0 300 IN IPSECKEY 10 1 4 192.0.2.1 " + b64(edLAN),
		}},
		{Name: "2.10.in-addr.arpa.", Bogus: true, Records: []string{
			"10.0 300 IN IPSECKEY 10 1 4 192.0.2.2 " + b64(edLAN),
		}},
	}
	t0 := time.Now()
	l, err := lab.Start(ctx, lab.Options{Charon: []string{}, Zones: zones, Logger: slog.New(slog.NewTextHandler(tWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("lab %s up in %v", l.ID, time.Since(t0).Round(time.Millisecond))
	defer func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab Close: %v", err)
		}
		// Close returns once its processes are zombies; the lab's reaper
		// may still be collecting them for a moment, during which
		// Leftovers lists them (e2e/lab: Process.Exited is false between
		// the reap and close(done)). Anything still there after a second
		// is a real leftover.
		left := l.Leftovers()
		for deadline := time.Now().Add(time.Second); len(left) > 0 && time.Now().Before(deadline); left = l.Leftovers() {
			time.Sleep(20 * time.Millisecond)
		}
		if len(left) > 0 {
			t.Errorf("lab left behind: %v", left)
		}
	}()

	// Every socket is opened inside hosta's namespace.
	newResolver := func(t *testing.T, server netip.AddrPort, mod func(*Config)) (*Resolver, *Client) {
		cfg := Defaults()
		cfg.Server = server.String()
		if mod != nil {
			mod(&cfg)
		}
		client := &Client{Server: server, Retransmit: time.Duration(cfg.Retransmit), Dial: l.Node(lab.HostA).Dial}
		r, err := New(cfg, Options{Transport: client, Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r, client
	}

	t.Run("signed reverse zone: TXT, KEY and IPSECKEY", func(t *testing.T) {
		r, _ := newResolver(t, l.DNSServer(), nil)
		t0 := time.Now()
		a, err := r.Resolve(ctx, plugins.LookupQuery{Addr: lab.HostAAddr})
		cold := time.Since(t0)
		if err != nil {
			t.Fatal(err)
		}
		if a.DNSSEC != plugins.DNSSECSecure {
			t.Errorf("DNSSEC %s, want secure", a.DNSSEC)
		}
		checkGateways(t, a.Gateways, []gw{
			{5, "192.0.2.2", "IPSECKEY+TXT", sortedKeys(edKey(edB), rsaKey(&rsaB.PublicKey))},
			{10, "192.0.2.1", "TXT", []plugins.PublicKey{rsaKey(&rsaA.PublicKey)}},
		})
		if len(a.Skipped) != 1 || !strings.Contains(a.Skipped[0], `precedence "oops"`) {
			t.Errorf("skipped: %q", a.Skipped)
		}
		// The keys convert for charon.
		for _, g := range a.Gateways {
			for _, k := range g.Keys {
				if _, err := PEM(k); err != nil {
					t.Errorf("%v: %v", g.Addr, err)
				}
			}
		}
		t1 := time.Now()
		b, err := r.Resolve(ctx, plugins.LookupQuery{Addr: lab.HostAAddr})
		warm := time.Since(t1)
		if err != nil || !b.FromCache || len(b.Gateways) != 2 {
			t.Errorf("second lookup: from cache %v, %d gateways, %v", b.FromCache, len(b.Gateways), err)
		}
		m := r.Metrics()
		t.Logf("cold lookup %v (%d queries to unbound), cached %v", cold.Round(time.Microsecond), m.Queries, warm.Round(time.Microsecond))
		if m.Queries != 4 {
			t.Errorf("%d queries; want 4 (IPSECKEY, TXT, KEY at the peer; KEY at 192.0.2.2)", m.Queries)
		}

		// Cached lookups against lookups that ask unbound every time (its
		// own cache warm), over the lab's network.
		const n = 300
		uncached, _ := newResolver(t, l.DNSServer(), func(c *Config) { c.CacheEntries = 0 })
		quiet := func(r *Resolver) { r.log = slog.New(slog.DiscardHandler) }
		quiet(r)
		quiet(uncached)
		per := func(r *Resolver) time.Duration {
			t0 := time.Now()
			for range n {
				if _, err := r.Lookup(ctx, plugins.LookupQuery{Addr: lab.HostAAddr}); err != nil {
					t.Fatal(err)
				}
			}
			return time.Since(t0) / n
		}
		u, c := per(uncached), per(r)
		t.Logf("per lookup: %v asking unbound (4 queries), %v cached: %.0fx", u.Round(time.Microsecond), c.Round(100*time.Nanosecond), float64(u)/float64(c))
		if c >= u {
			t.Errorf("cached lookups (%v) are not faster than asking unbound (%v)", c, u)
		}
	})

	t.Run("@FQDN in TXT: forward KEY lookup", func(t *testing.T) {
		r, _ := newResolver(t, l.DNSServer(), nil)
		a, err := r.Resolve(ctx, plugins.LookupQuery{Addr: lab.HostBAddr})
		if err != nil {
			t.Fatal(err)
		}
		if a.DNSSEC != plugins.DNSSECSecure {
			t.Errorf("DNSSEC %s", a.DNSSEC)
		}
		checkGateways(t, a.Gateways, []gw{{10, "@gw.example.test.", "TXT", []plugins.PublicKey{edKey(edGW)}}})
		// And the FQDN itself, as a responder checking an ID_FQDN would.
		f, err := r.Resolve(ctx, plugins.LookupQuery{FQDN: "gw.example.test"})
		if err != nil || f.DNSSEC != plugins.DNSSECSecure {
			t.Fatalf("forward: %s, %v", f.DNSSEC, err)
		}
		checkGateways(t, f.Gateways, []gw{{KeyOnlyPrecedence, "@gw.example.test.", "KEY", []plugins.PublicKey{edKey(edGW)}}})
	})

	t.Run("large answer over TCP", func(t *testing.T) {
		r, client := newResolver(t, l.DNSServer(), nil)
		a, err := r.Resolve(ctx, plugins.LookupQuery{Addr: netip.MustParseAddr("192.0.2.13")})
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Gateways) != 6 || a.DNSSEC != plugins.DNSSECSecure {
			t.Errorf("got %s, %s", a.DNSSEC, describe(a.Gateways))
		}
		if st := client.Stats(); st.TCPQueries != 1 {
			t.Errorf("client stats %+v; the TXT answer should have come over TCP", st)
		}
	})

	t.Run("NXDOMAIN is cached as a negative answer", func(t *testing.T) {
		r, _ := newResolver(t, l.DNSServer(), nil)
		q := plugins.LookupQuery{Addr: netip.MustParseAddr("192.0.2.99")}
		a, err := r.Resolve(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		// The lab's SOA gives 300s; unbound counts its cached records down
		// (and may answer from NSEC records cached by earlier lookups).
		if len(a.Gateways) != 0 || a.DNSSEC != plugins.DNSSECSecure || a.TTL > 300*time.Second || a.TTL < 280*time.Second {
			t.Errorf("got %s, %s, TTL %v; want no gateways, secure (signed denial), TTL about 300s (the lab's SOA)", describe(a.Gateways), a.DNSSEC, a.TTL)
		}
		before := r.Metrics()
		b, err := r.Resolve(ctx, q)
		after := r.Metrics()
		if err != nil || !b.FromCache || after.Queries != before.Queries || after.NegativeHits-before.NegativeHits != 3 {
			t.Errorf("second lookup: from cache %v, %d queries, %d negative hits, %v", b.FromCache, after.Queries-before.Queries, after.NegativeHits-before.NegativeHits, err)
		}
	})

	t.Run("unsigned zone: insecure, refused under require_dnssec", func(t *testing.T) {
		r, _ := newResolver(t, l.DNSServer(), nil)
		a, err := r.Resolve(ctx, plugins.LookupQuery{Addr: lab.AliceAddr})
		if err != nil || a.DNSSEC != plugins.DNSSECInsecure || len(a.Gateways) != 1 {
			t.Fatalf("got %s, %s, %v; want insecure with one gateway", a.DNSSEC, describe(a.Gateways), err)
		}
		strict, _ := newResolver(t, l.DNSServer(), func(c *Config) { c.RequireDNSSEC = true })
		la, err := strict.Lookup(ctx, plugins.LookupQuery{Addr: lab.AliceAddr})
		var ue *UnusableError
		if !errors.Is(err, ErrInsecure) || !errors.As(err, &ue) || la.DNSSEC != plugins.DNSSECInsecure || len(la.Gateways) != 0 {
			t.Fatalf("require_dnssec: %s, %d gateways, %v", la.DNSSEC, len(la.Gateways), err)
		}
		t.Logf("refused: %v", err)
	})

	t.Run("bogus zone: bogus, not a server failure", func(t *testing.T) {
		r, _ := newResolver(t, l.DNSServer(), nil)
		a, err := r.Resolve(ctx, plugins.LookupQuery{Addr: lab.BobAddr})
		if !errors.Is(err, ErrBogus) || errors.Is(err, ErrServerFailure) || a.DNSSEC != plugins.DNSSECBogus || len(a.Gateways) != 0 {
			t.Fatalf("got %s, %s, %v; want bogus, no gateways", a.DNSSEC, describe(a.Gateways), err)
		}
		t.Logf("bogus: %v", err)
	})

	t.Run("no server: a timeout, not bogus", func(t *testing.T) {
		r, _ := newResolver(t, netip.MustParseAddrPort("192.0.2.99:53"), func(c *Config) {
			c.Timeout, c.Retransmit = Duration(400*time.Millisecond), Duration(100*time.Millisecond)
		})
		t0 := time.Now()
		a, err := r.Resolve(ctx, plugins.LookupQuery{Addr: lab.HostAAddr})
		if !errors.Is(err, context.DeadlineExceeded) || errors.Is(err, ErrBogus) || a.DNSSEC == plugins.DNSSECBogus {
			t.Fatalf("got %s, %v; want a deadline error", a.DNSSEC, err)
		}
		if d := time.Since(t0); d > 2*time.Second {
			t.Errorf("took %v with a 400ms timeout", d)
		}
	})
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

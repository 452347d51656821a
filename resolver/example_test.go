package resolver_test

import (
	"context"
	"crypto/ed25519"
	"encoding/base64"
	"errors"
	"fmt"
	"net/netip"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

func Example() {
	// A fake validating resolver stands in for unbound.
	dns := resolvertest.New()
	dns.AddZone("2.0.192.in-addr.arpa.", resolvertest.Secure)
	pub := ed25519.NewKeyFromSeed(make([]byte, 32)).Public().(ed25519.PublicKey)
	if err := dns.Add(
		"11.2.0.192.in-addr.arpa. 300 IN IPSECKEY 10 1 4 192.0.2.2 "+base64.StdEncoding.EncodeToString(pub),
		`11.2.0.192.in-addr.arpa. 300 IN TXT "X-IPsec-Server(x)=192.0.2.3"`,
	); err != nil {
		panic(err)
	}

	cfg := resolver.Defaults()
	cfg.RequireDNSSEC = true
	r, err := resolver.New(cfg, resolver.Options{Transport: dns})
	if err != nil {
		panic(err)
	}
	defer r.Close()

	a, err := r.Resolve(context.Background(), plugins.LookupQuery{Addr: netip.MustParseAddr("192.0.2.11")})
	switch {
	case errors.Is(err, resolver.ErrBogus), errors.Is(err, resolver.ErrInsecure):
		fmt.Println("unusable:", a.Unusable)
	case err != nil:
		fmt.Println("DNS failed:", err)
	case len(a.Gateways) == 0:
		fmt.Println("no IPsec for this peer")
	default:
		gw := a.Gateways[0]
		id, _ := resolver.KeyID(gw.Keys[0])
		fmt.Println(a.DNSSEC, gw.Addr, gw.Source, gw.Keys[0].Algorithm, id)
		for _, s := range a.Skipped {
			fmt.Println("skipped:", s)
		}
	}
	// Output:
	// secure 192.0.2.2 IPSECKEY ed25519 8c30c97e7fd5460ce3b962db4cd75879eecd8abd
	// skipped: 11.2.0.192.in-addr.arpa. TXT "X-IPsec-Server(x)=192.0.2.3": precedence "x" is not a number from 0 to 65535; write X-IPsec-Server(10)=192.0.2.1 KEY or X-IPsec-Server(10)=@gw.example.org KEY
}

package main

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/control"
)

var sampleLookup = control.OELookup{
	Addr:   "10.2.0.10",
	Policy: control.OELookupPolicy{Group: "private-or-clear", CIDR: "10.2.0.0/16", NegotiationShunt: "drop", FailureShunt: "pass", ShuntLifetime: 15 * time.Minute},
	DNS: control.OELookupDNS{
		Name: "10.0.2.10.in-addr.arpa.", DNSSEC: "secure", TTL: 300 * time.Second,
		Gateways: []control.OELookupGateway{
			{Precedence: 10, Address: "192.0.2.2", Source: "IPSECKEY+TXT", Keys: []control.OELookupKey{
				{Algorithm: "rsa", Bits: 2048, KeyID: "016f2dfd22fc51501b6f7e0d31ccc2c95f64e1aa"},
				{Algorithm: "ed25519", KeyID: "8ef3833c92d76f656baace1ae85abbba77cae36d"},
			}},
			{Precedence: 20, FQDN: "gw.example.org.", Source: "TXT", Keys: []control.OELookupKey{{Algorithm: "ed25519", KeyID: "a9b57b64da41c9b2d32bfd4bc0be9921b990a1d8"}}},
		},
		Skipped: []string{`10.0.2.10.in-addr.arpa. TXT "X-IPsec-Server(ten)=192.0.2.2": precedence "ten" is not a number from 0 to 65535`},
	},
	Action:    "would initiate OE to gateway 192.0.2.2 (IPSECKEY+TXT, DNSSEC secure)",
	Details:   []string{"group private-or-clear (10.2.0.0/16); while IKE runs its traffic is dropped (negotiation_shunt drop)"},
	Responder: "would accept it behind gateway 192.0.2.2 (delegated in its reverse map)",
	Tunnels:   []control.OELookupTunnel{{Pair: "10.1.0.10->10.2.0.10", Role: "initiator", State: "up", Gateway: "192.0.2.2"}},
}

// startObold serves the lookup method on a socket in a temp dir, as obold
// with OE running (or off) would.
func startObold(t *testing.T, oeOn bool) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "obold.sock")
	ln, err := control.Listen(path, 0o600, -1)
	if err != nil {
		t.Fatal(err)
	}
	srv := control.NewServer(map[string]control.Handler{
		control.MethodOELookup: func(_ context.Context, p json.RawMessage) (any, error) {
			var r control.OELookupParams
			if err := json.Unmarshal(p, &r); err != nil {
				return nil, err
			}
			if !oeOn {
				return nil, &control.Error{Code: control.CodeOEOff, Message: "OE is off: /etc/obol/obold.toml has no [[oe.group]]"}
			}
			l := sampleLookup
			l.Addr = r.Addr
			return l, nil
		},
	}, os.Getgid(), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return path
}

func TestLookupCLI(t *testing.T) {
	on, off := startObold(t, true), startObold(t, false)
	tests := []struct {
		name   string
		args   []string
		code   int
		stdout []string
		stderr string
	}{
		{"table", []string{"--socket", on, "lookup", "10.2.0.10"}, 0, []string{
			"address:    10.2.0.10\n",
			"policy:     group private-or-clear, CIDR 10.2.0.0/16\n",
			"shunts:     while IKE runs drop; after a failure pass for 15m0s\n",
			"dns:        10.0.2.10.in-addr.arpa. DNSSEC secure, TTL 5m0s\n",
			"PREC  GATEWAY          SOURCE        ALGORITHM  KEY ID\n",
			"10    192.0.2.2        IPSECKEY+TXT  rsa 2048   016f2dfd22fc51501b6f7e0d31ccc2c95f64e1aa\n",
			"                                     ed25519    8ef3833c92d76f656baace1ae85abbba77cae36d\n",
			"20    @gw.example.org  TXT           ed25519    a9b57b64da41c9b2d32bfd4bc0be9921b990a1d8\n",
			"skipped records:\n  10.0.2.10.in-addr.arpa. TXT",
			"action:     would initiate OE to gateway 192.0.2.2 (IPSECKEY+TXT, DNSSEC secure)\n            group private-or-clear",
			"responder:  would accept it behind gateway 192.0.2.2",
			"now:        10.1.0.10->10.2.0.10 initiator up via 192.0.2.2\n",
		}, ""},
		{"json after", []string{"--socket", on, "lookup", "10.2.0.10", "--json"}, 0, []string{`"action": "would initiate OE to gateway 192.0.2.2`, `"key_id": "016f2dfd22fc51501b6f7e0d31ccc2c95f64e1aa"`}, ""},
		{"json before", []string{"--socket", on, "lookup", "--json", "::ffff:10.2.0.10"}, 0, []string{`"addr": "::ffff:10.2.0.10"`}, ""},
		{"OE off", []string{"--socket", off, "lookup", "10.2.0.10"}, 1, nil, "OE is off: /etc/obol/obold.toml has no [[oe.group]]\n(obolctl records shows"},
		{"not an address", []string{"--socket", on, "lookup", "gw.example.org"}, 1, nil, `"gw.example.org" is not an IP address`},
		{"no address", []string{"--socket", on, "lookup"}, 2, nil, "Usage: obolctl lookup IP [--json]"},
		{"two addresses", []string{"--socket", on, "lookup", "10.2.0.10", "10.2.0.11"}, 2, nil, `unexpected argument "10.2.0.11"`},
		{"help", []string{"lookup", "--help"}, 0, nil, "what obold's OE would do"},
		{"obold not running", []string{"--socket", "/nonexistent/obold.sock", "lookup", "10.2.0.10"}, 1, nil, "is obold running"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			expectRun(t, tt.args, tt.code, tt.stdout, tt.stderr)
		})
	}
}

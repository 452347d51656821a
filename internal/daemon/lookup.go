package daemon

import (
	"context"
	"crypto/rsa"
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"

	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver"
)

// handleOELookup serves control.MethodOELookup.
func (d *Daemon) handleOELookup(ctx context.Context, p json.RawMessage) (any, error) {
	var r control.OELookupParams
	if len(p) > 0 {
		if err := json.Unmarshal(p, &r); err != nil {
			return nil, &control.Error{Code: control.CodeBadRequest, Message: "oe-lookup: params must be {\"addr\":\"IP\"}: " + err.Error()}
		}
	}
	return d.OELookup(ctx, r.Addr)
}

// OELookup says what DNS publishes for addr and what the running OE engine
// would do with traffic to it. It fails with control.CodeOEOff when obold
// runs no OE.
func (d *Daemon) OELookup(ctx context.Context, addr string) (control.OELookup, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(addr))
	if err != nil || a.Zone() != "" {
		return control.OELookup{}, &control.Error{Code: control.CodeBadRequest, Message: fmt.Sprintf("oe-lookup: %q is not an IP address; give one such as 192.0.2.11 or 2001:db8::11", addr)}
	}
	d.mu.Lock()
	eng, cfg := d.oe, d.cfg
	d.mu.Unlock()
	if eng == nil {
		msg := fmt.Sprintf("OE is off: %s has no [[oe.group]], so obold neither looks up peers nor starts OE; add [oe] with policy groups (see configs/oe-gateway.toml) and reload obold (systemctl reload obold)", cfg.File)
		if cfg.OE.Enabled() {
			msg = "OE is configured but not running: obold starts it once charon answers, and it may have failed to start; see obolctl status (charon's state and obold's last error)"
		}
		return control.OELookup{}, &control.Error{Code: control.CodeOEOff, Message: msg}
	}
	return lookupResult(eng.Lookup(ctx, a)), nil
}

// lookupResult puts an engine lookup on the wire: keys by algorithm and
// key id, never their bytes.
func lookupResult(l oe.Lookup) control.OELookup {
	dec := l.Decision
	out := control.OELookup{
		Addr: l.Addr.String(),
		Policy: control.OELookupPolicy{
			Group:            string(dec.Group),
			NegotiationShunt: string(dec.NegotiationShunt),
			FailureShunt:     string(dec.FailureShunt),
			ShuntLifetime:    dec.ShuntLifetime,
			Exempt:           dec.Exempt,
		},
		DNS: control.OELookupDNS{
			Name:      l.Answer.Name,
			DNSSEC:    string(l.Answer.DNSSEC),
			TTL:       l.Answer.TTL,
			FromCache: l.Answer.FromCache,
			Gateways:  []control.OELookupGateway{},
			Skipped:   l.Answer.Skipped,
			Unusable:  l.Answer.Unusable,
		},
		Action:    l.Action,
		Details:   l.Details,
		Responder: l.Responder,
	}
	if dec.CIDR.IsValid() {
		out.Policy.CIDR = dec.CIDR.String()
	}
	if l.DNSErr != nil && l.Answer.Unusable == "" {
		out.DNS.Error = l.DNSErr.Error()
	}
	for _, gw := range l.Answer.Gateways {
		g := control.OELookupGateway{Precedence: gw.Precedence, FQDN: gw.FQDN, Source: gw.Source, Keys: []control.OELookupKey{}}
		if gw.Addr.IsValid() {
			g.Address = gw.Addr.String()
		}
		for _, k := range gw.Keys {
			g.Keys = append(g.Keys, keyInfo(k))
		}
		out.DNS.Gateways = append(out.DNS.Gateways, g)
	}
	for _, t := range l.Tunnels {
		out.Tunnels = append(out.Tunnels, control.OELookupTunnel{
			Pair: t.Pair.String(), Role: t.Role, State: string(t.State), Gateway: t.Gateway, Reason: t.Reason, Until: t.LifespanEnd,
		})
	}
	return out
}

func keyInfo(k plugins.PublicKey) control.OELookupKey {
	info := control.OELookupKey{Algorithm: k.Algorithm}
	id, err := resolver.KeyID(k)
	if err != nil {
		info.KeyID = "invalid: " + err.Error()
		return info
	}
	info.KeyID = id
	if pub, err := resolver.CryptoKey(k); err == nil {
		if r, ok := pub.(*rsa.PublicKey); ok {
			info.Bits = r.N.BitLen()
		}
	}
	return info
}

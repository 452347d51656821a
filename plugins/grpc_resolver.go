package plugins

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net/netip"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/obol-ipsec/obol/plugins/pluginpb"
)

// ResolverPlugin is the go-plugin glue of the Resolver contract: obold
// dispenses it as a client, a plugin binary serves Impl.
type ResolverPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	Impl Resolver
}

// GRPCServer registers Impl (plugin side).
func (p *ResolverPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("plugins: ResolverPlugin served without an Impl")
	}
	pluginpb.RegisterResolverServer(s, &resolverServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Resolver talking to the plugin (obold side).
func (p *ResolverPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &resolverClient{rpc: pluginpb.NewResolverClient(c)}, nil
}

type resolverServer struct {
	pluginpb.UnimplementedResolverServer
	impl Resolver
}

func (s *resolverServer) Lookup(ctx context.Context, req *pluginpb.LookupRequest) (*pluginpb.LookupReply, error) {
	q, err := lookupQueryFrom(req)
	if err != nil {
		return nil, err
	}
	ans, err := s.impl.Lookup(ctx, q)
	return lookupReplyTo(ans, err), nil
}

func lookupQueryFrom(req *pluginpb.LookupRequest) (LookupQuery, error) {
	q := LookupQuery{FQDN: req.GetFqdn()}
	if a := req.GetAddr(); a != "" {
		addr, err := netip.ParseAddr(a)
		if err != nil {
			return LookupQuery{}, fmt.Errorf("lookup request: addr %q: %w", a, err)
		}
		q.Addr = addr
	}
	return q, nil
}

func lookupRequestTo(q LookupQuery) *pluginpb.LookupRequest {
	req := &pluginpb.LookupRequest{Fqdn: q.FQDN}
	if q.Addr.IsValid() {
		req.Addr = q.Addr.String()
	}
	return req
}

func lookupReplyTo(ans LookupAnswer, err error) *pluginpb.LookupReply {
	rep := &pluginpb.LookupReply{Dnssec: string(ans.DNSSEC), TtlNs: int64(ans.TTL), Name: ans.Name, Skipped: ans.Skipped, Unusable: ans.Unusable, Method: ans.Method}
	if err != nil {
		rep.Error = err.Error()
	}
	for _, gw := range ans.Gateways {
		g := &pluginpb.Gateway{Precedence: int32(gw.Precedence), Fqdn: gw.FQDN, Source: gw.Source}
		if gw.Addr.IsValid() {
			g.Addr = gw.Addr.String()
		}
		for _, k := range gw.Keys {
			g.Keys = append(g.Keys, &pluginpb.PublicKey{Algorithm: k.Algorithm, Data: k.Data})
		}
		for _, a := range gw.Addrs {
			g.Addrs = append(g.Addrs, a.String())
		}
		g.Psk, g.CaCerts = gw.PSK, gw.CACerts
		rep.Gateways = append(rep.Gateways, g)
	}
	return rep
}

type resolverClient struct {
	rpc pluginpb.ResolverClient
}

// Lookup asks the plugin. A transport failure comes back as a *CallError;
// an answer that breaks the contract as a *GarbageError.
func (c *resolverClient) Lookup(ctx context.Context, q LookupQuery) (LookupAnswer, error) {
	rep, err := c.rpc.Lookup(ctx, lookupRequestTo(q))
	return lookupAnswerOf("resolver", "Lookup", rep, err)
}

// lookupAnswerOf turns a reply (or the call's error) into the contract's
// answer and error.
func lookupAnswerOf(module, call string, rep *pluginpb.LookupReply, err error) (LookupAnswer, error) {
	if err != nil {
		return LookupAnswer{}, callError(module, call, err)
	}
	ans, err := lookupAnswerFrom(rep)
	if err != nil {
		return LookupAnswer{}, &GarbageError{Module: module, Call: call, Err: err}
	}
	if rep.GetError() != "" {
		return ans, errors.New(rep.GetError())
	}
	return ans, nil
}

// maxGateways and maxKeys bound what a plugin may hand obold in one answer.
const (
	maxGateways = 64
	maxKeys     = 16
)

func lookupAnswerFrom(rep *pluginpb.LookupReply) (LookupAnswer, error) {
	ans := LookupAnswer{TTL: time.Duration(rep.GetTtlNs()), Name: rep.GetName(), Skipped: rep.GetSkipped(), Unusable: rep.GetUnusable(), Method: rep.GetMethod()}
	if !ValidMethod(ans.Method) {
		return LookupAnswer{}, fmt.Errorf("method %q: want DNSSEC, BTNS, LEAPOFFAITH, PRESHAREDKEY, NONE or none", ans.Method)
	}
	switch s := DNSSECStatus(rep.GetDnssec()); s {
	case "", DNSSECSecure, DNSSECInsecure, DNSSECBogus:
		ans.DNSSEC = s
	default:
		return LookupAnswer{}, fmt.Errorf("dnssec %q: want secure, insecure or bogus", s)
	}
	if ans.TTL < 0 {
		return LookupAnswer{}, fmt.Errorf("ttl %v is negative", ans.TTL)
	}
	if len(rep.GetGateways()) > maxGateways {
		return LookupAnswer{}, fmt.Errorf("%d gateways, more than %d", len(rep.GetGateways()), maxGateways)
	}
	if rep.GetUnusable() != "" && len(rep.GetGateways()) > 0 {
		return LookupAnswer{}, errors.New("an unusable answer must carry no gateways")
	}
	for i, g := range rep.GetGateways() {
		gw := Gateway{Precedence: int(g.GetPrecedence()), FQDN: g.GetFqdn(), Source: g.GetSource()}
		if gw.Precedence < 0 || gw.Precedence > 65536 {
			return LookupAnswer{}, fmt.Errorf("gateway %d: precedence %d outside 0..65536", i, gw.Precedence)
		}
		if a := g.GetAddr(); a != "" {
			addr, err := netip.ParseAddr(a)
			if err != nil {
				return LookupAnswer{}, fmt.Errorf("gateway %d: addr %q: %w", i, a, err)
			}
			gw.Addr = addr
		}
		if !gw.Addr.IsValid() && gw.FQDN == "" {
			return LookupAnswer{}, fmt.Errorf("gateway %d: neither addr nor fqdn", i)
		}
		if len(g.GetAddrs()) > maxGateways {
			return LookupAnswer{}, fmt.Errorf("gateway %d: %d addresses, more than %d", i, len(g.GetAddrs()), maxGateways)
		}
		for _, a := range g.GetAddrs() {
			addr, err := netip.ParseAddr(a)
			if err != nil {
				return LookupAnswer{}, fmt.Errorf("gateway %d: addrs: %q: %w", i, a, err)
			}
			gw.Addrs = append(gw.Addrs, addr)
		}
		if err := checkCredentials(g.GetPsk(), g.GetCaCerts()); err != nil {
			return LookupAnswer{}, fmt.Errorf("gateway %d: %w", i, err)
		}
		gw.PSK, gw.CACerts = g.GetPsk(), g.GetCaCerts()
		if len(g.GetKeys()) > maxKeys {
			return LookupAnswer{}, fmt.Errorf("gateway %d: %d keys, more than %d", i, len(g.GetKeys()), maxKeys)
		}
		for j, k := range g.GetKeys() {
			switch {
			case k.GetAlgorithm() == "ed25519" && len(k.GetData()) != 32:
				return LookupAnswer{}, fmt.Errorf("gateway %d key %d: ed25519 key of %d bytes, want 32", i, j, len(k.GetData()))
			case k.GetAlgorithm() == "rsa" && len(k.GetData()) < 3:
				return LookupAnswer{}, fmt.Errorf("gateway %d key %d: rsa key of %d bytes", i, j, len(k.GetData()))
			case k.GetAlgorithm() != "rsa" && k.GetAlgorithm() != "ed25519":
				return LookupAnswer{}, fmt.Errorf("gateway %d key %d: algorithm %q, want rsa or ed25519", i, j, k.GetAlgorithm())
			}
			gw.Keys = append(gw.Keys, PublicKey{Algorithm: k.GetAlgorithm(), Data: k.GetData()})
		}
		ans.Gateways = append(ans.Gateways, gw)
	}
	return ans, nil
}

// Bounds on what an auth method may hand obold besides keys.
const (
	minPSK     = 16 // charon takes shorter ones; obol does not
	maxPSK     = 256
	maxCACerts = 8
)

// checkCredentials checks a gateway's PSK and CA certificates: a PSK
// strong enough to be one, certificates that parse and are CAs.
func checkCredentials(psk []byte, cas [][]byte) error {
	if len(psk) > 0 && (len(psk) < minPSK || len(psk) > maxPSK) {
		return fmt.Errorf("psk of %d bytes; want %d to %d", len(psk), minPSK, maxPSK)
	}
	if len(cas) > maxCACerts {
		return fmt.Errorf("%d CA certificates, more than %d", len(cas), maxCACerts)
	}
	for j, der := range cas {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return fmt.Errorf("ca_certs[%d]: %w", j, err)
		}
		if !c.IsCA {
			return fmt.Errorf("ca_certs[%d] (%s) is not a CA certificate", j, c.Subject)
		}
	}
	return nil
}

package oe

import (
	"context"

	"fmt"
	"github.com/obol-ipsec/obol/internal/policy"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"net/netip"
	"strings"
	"time"

	"github.com/obol-ipsec/obol/vici"
)

// configuredTTL bounds how stale obold's copy of the configured (swanctl)
// conns may be: OE conns are checked against it, and the ACQUIRE path
// never asks charon per packet.
const configuredTTL = 2 * time.Second

// configuredAllowLife caps the allow shunt that lets a pair's traffic into
// a configured tunnel: when that tunnel goes down, the next packet is
// trapped again soon and gets the group's failure shunt.
const configuredAllowLife = 30 * time.Second

// configuredConn is what OE must never collide with in one conn obold does
// not own: the identities and addresses of its peer and the destinations
// its children cover.
type configuredConn struct {
	name     string
	ids      []string       // remote identities, canonical (see canonicalID)
	addrs    []netip.Prefix // explicit remote_addrs (not %any)
	remoteTS []netip.Prefix // children's remote selectors
	live     bool           // an SA up now rather than a conn's config
}

// configuredSet is a cached list-conns of the conns obold does not own.
type configuredSet struct {
	conns   []configuredConn
	fetched time.Time
	err     error
}

// configured returns the conns obold does not own. It never waits for
// charon once it has a list: refreshConfigured keeps the list current in
// the background on its own clock, so neither side of a negotiation pays
// list-conns and list-sas on its critical path, nor queues its load-conn
// behind them (the responder must load its conn before the initiator's
// IKE_AUTH arrives, a few milliseconds after IKE_SA_INIT). Only the first
// call, or one after charon restarted, waits for the lists.
func (e *Engine) configured(ctx context.Context) ([]configuredConn, error) {
	e.cfgMu.Lock()
	have, conns := !e.cfgSet.fetched.IsZero(), e.cfgSet.conns
	e.cfgMu.Unlock()
	if have {
		return conns, nil
	}
	return e.fetchConfigured(ctx)
}

// refreshConfigured re-reads charon's configured conns every configuredTTL
// until ctx ends (swanctl --load-conns raises no event).
func (e *Engine) refreshConfigured(ctx context.Context) {
	t := time.NewTicker(configuredTTL)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.cfgMu.Lock()
		e.cfgSet.fetched = time.Time{}.Add(1) // stale: fetch again, keep serving the old list
		e.cfgMu.Unlock()
		if _, err := e.fetchConfigured(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("OE: refreshing charon's configured conns failed; the last list stays in use", "err", err)
		}
	}
}

// fetchConfigured asks charon for its conns and SAs and caches the conns
// obold does not own. Fetches are serialized, so concurrent negotiations
// at start share one.
func (e *Engine) fetchConfigured(ctx context.Context) ([]configuredConn, error) {
	e.cfgFetchMu.Lock()
	defer e.cfgFetchMu.Unlock()
	e.cfgMu.Lock()
	if !e.cfgSet.fetched.IsZero() && time.Since(e.cfgSet.fetched) < configuredTTL {
		conns := e.cfgSet.conns
		e.cfgMu.Unlock()
		return conns, nil // fetched while this one waited
	}
	e.cfgMu.Unlock()
	now := time.Now()
	lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	infos, err := e.p.Charon.ListConns(lctx, "")
	cancel()
	if err != nil {
		// Not cached: the next negotiation asks again.
		return nil, fmt.Errorf("list charon's configured conns (to keep OE away from them): %w", err)
	}
	// Live SAs of those conns count too: a conn with remote id %any has
	// SAs with real peer identities, and an OE peer proving one of them
	// with INITIAL_CONTACT would make charon destroy that SA (uniqueness
	// with force_replace compares identities only, not configs).
	lctx, cancel = context.WithTimeout(ctx, 5*time.Second)
	sas, err := e.p.Charon.ListSAs(lctx, vici.SASelector{})
	cancel()
	if err != nil {
		return nil, fmt.Errorf("list charon's SAs (to keep OE away from configured peers): %w", err)
	}
	var out []configuredConn
	for _, ci := range infos {
		if strings.HasPrefix(ci.Name, e.p.Prefix) {
			continue
		}
		out = append(out, parseConfigured(ci))
	}
	for _, sa := range sas {
		// Only established SAs of a configured conn: a half-open one has
		// no conn yet ("(unnamed)"), and may be the OE peer itself.
		if strings.HasPrefix(sa.Name, e.p.Prefix) || sa.State != "ESTABLISHED" || sa.Name == "" || sa.Name == "(unnamed)" {
			continue
		}
		c := configuredConn{name: sa.Name, live: true}
		if id := canonicalID(sa.RemoteID); id != "" {
			c.ids = append(c.ids, id)
		}
		if sa.RemoteHost.IsValid() {
			h := sa.RemoteHost.Unmap()
			c.addrs = append(c.addrs, netip.PrefixFrom(h, h.BitLen()))
		}
		out = append(out, c)
	}
	e.cfgMu.Lock()
	e.cfgSet = configuredSet{conns: out, fetched: now}
	e.cfgMu.Unlock()
	return out, nil
}

// prefetchConfigured reads charon's configured conns in the background, so
// that not even the first negotiation (a responder racing the initiator's
// IKE_AUTH) waits for list-conns and list-sas.
func (e *Engine) prefetchConfigured() {
	e.mu.Lock()
	ctx := e.ctx
	if ctx == nil || e.stopped {
		e.mu.Unlock()
		return
	}
	e.wg.Add(1)
	done := make(chan struct{})
	e.cfgPrefetched = done
	e.mu.Unlock()
	go func() {
		defer e.wg.Done()
		defer close(done)
		if _, err := e.fetchConfigured(ctx); err != nil && ctx.Err() == nil {
			e.log.Warn("OE: reading charon's configured conns failed; the first negotiation will ask again", "err", err)
		}
	}()
}

// forgetConfigured drops the cache (charon restarted, conns may differ).
func (e *Engine) forgetConfigured() {
	e.cfgMu.Lock()
	e.cfgSet = configuredSet{}
	e.cfgMu.Unlock()
}

func parseConfigured(ci vici.ConnInfo) configuredConn {
	c := configuredConn{name: ci.Name}
	for _, a := range ci.Remote {
		if id := canonicalID(a.ID); id != "" {
			c.ids = append(c.ids, id)
		}
	}
	for _, s := range ci.RemoteAddrs {
		for _, part := range strings.Split(s, ",") {
			if p, ok := parseRange(strings.TrimSpace(part)); ok && p.Bits() != 0 {
				c.addrs = append(c.addrs, p)
			}
		}
	}
	for _, ch := range ci.Children {
		for _, ts := range ch.RemoteTS {
			if p, ok := parseRange(strings.SplitN(ts, "[", 2)[0]); ok {
				c.remoteTS = append(c.remoteTS, p)
			}
		}
	}
	return c
}

// parseRange reads an address, a CIDR or "%any"-style wildcards (which
// name no peer: ok is false).
func parseRange(s string) (netip.Prefix, bool) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), true
	}
	if a, err := netip.ParseAddr(s); err == nil {
		return netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()), true
	}
	return netip.Prefix{}, false
}

// canonicalID is an identity in one form for comparison: an address as
// netip prints it, an FQDN lowercase without '@' and the final dot; ""
// for identities that name no single peer (%any, wildcards, empty).
func canonicalID(id string) string {
	id = strings.TrimSpace(id)
	if id == "" || id == "%any" || id == "%any6" || strings.ContainsAny(id, "*") {
		return ""
	}
	if a, err := netip.ParseAddr(id); err == nil {
		return a.Unmap().String()
	}
	if strings.HasPrefix(id, "@#") { // a key id: compare as is
		return strings.ToLower(id)
	}
	return strings.ToLower(strings.TrimSuffix(strings.TrimPrefix(id, "@"), "."))
}

// collision says which configured conn an OE conn would collide with, and
// how; "" when none. remoteID is the OE peer's identity, peer its IKE
// address, dst the destination the OE tunnel would carry (invalid: not
// checked).
func collision(conns []configuredConn, remoteID string, peer, dst netip.Addr) (conn, why string) {
	id := canonicalID(remoteID)
	for _, c := range conns {
		for _, cid := range c.ids {
			if id != "" && cid == id {
				if c.live {
					return c.name, fmt.Sprintf("configured conn %q has an SA up with the same peer identity %s", c.name, remoteID)
				}
				return c.name, fmt.Sprintf("configured conn %q has the same remote identity %s", c.name, remoteID)
			}
		}
		for _, p := range c.addrs {
			if peer.IsValid() && p.Contains(peer.Unmap()) {
				if c.live {
					return c.name, fmt.Sprintf("configured conn %q has an SA up with the peer %s", c.name, peer)
				}
				return c.name, fmt.Sprintf("configured conn %q has remote_addrs %s covering the peer %s", c.name, p, peer)
			}
		}
		for _, p := range c.remoteTS {
			if dst.IsValid() && p.Contains(dst.Unmap()) {
				return c.name, fmt.Sprintf("configured conn %q has remote_ts %s covering %s", c.name, p, dst)
			}
		}
	}
	return "", ""
}

// configuredCollision checks an OE conn about to be loaded against the
// configured conns. When charon cannot be asked it refuses too: OE must
// never risk taking a configured peer's place.
func (e *Engine) configuredCollision(ctx context.Context, remoteID string, peer, dst netip.Addr) (conn, why string) {
	conns, err := e.configured(ctx)
	if err != nil {
		return "", err.Error()
	}
	return collision(conns, remoteID, peer, dst)
}

// configuredCarries tells whether the configured conn has a CHILD_SA up
// whose remote selectors cover dst: then the pair's traffic may go to it.
func (e *Engine) configuredCarries(ctx context.Context, conn string, dst netip.Addr) bool {
	sas, err := e.p.Charon.ListSAs(ctx, vici.SASelector{IKE: conn})
	if err != nil {
		return false
	}
	for _, sa := range sas {
		for _, ch := range sa.Children {
			if ch.State != "INSTALLED" {
				continue
			}
			for _, ts := range ch.RemoteTS {
				if p, ok := parseRange(strings.SplitN(ts, "[", 2)[0]); ok && p.Contains(dst) {
					return true
				}
			}
		}
	}
	return false
}

// refuseConfigured ends an initiation whose destination a configured conn
// covers. If that conn's tunnel is up, the pair's traffic is let through
// to it (briefly, re-checked at the next ACQUIRE); otherwise the group's
// failure shunt stands, so nothing leaves in clear under private.
func (e *Engine) refuseConfigured(ctx context.Context, t *Tunnel, dec policy.Decision, conn, why string) {
	reason := "OE refused: " + why + "; OE never takes a configured conn's place"
	if conn == "" || !e.configuredCarries(ctx, conn, t.Pair.Dst) {
		if conn != "" {
			reason += fmt.Sprintf(" (conn %q has no tunnel up for it now)", conn)
		}
		e.fail(t, dec, reason, true)
		return
	}
	life := min(dec.ShuntLifetime, configuredAllowLife)
	e.removeShunt(ctx, t)
	e.installShunt(ctx, t, xfrm.Allow, life)
	now := e.p.Now()
	e.mu.Lock()
	t.State, t.Reason, t.Since = StateFailed, reason+fmt.Sprintf(" (its traffic goes to conn %q's tunnel)", conn), now
	t.LifespanEnd = now.Add(life)
	t.via = conn
	e.mu.Unlock()
	e.log.Info("OE refused: a configured conn covers the destination; its tunnel carries the traffic", "pair", t.Pair, "conn", conn)
}

// configuredDown: a configured conn's SA went down. Pairs let into its
// tunnel get their group's failure shunt at once, so under private nothing
// leaves in clear (without the tunnel the allow would send it in clear).
func (e *Engine) configuredDown(conn string) {
	e.mu.Lock()
	var hit []*Tunnel
	for _, t := range e.tunnels {
		if t.via == conn && t.State == StateFailed {
			t.via = ""
			hit = append(hit, t)
		}
	}
	e.mu.Unlock()
	for _, t := range hit {
		dec := e.pol.Decide(t.Pair.Dst)
		e.fail(t, dec, fmt.Sprintf("OE refused: configured conn %q covers %s; OE never takes a configured conn's place (conn %q has no tunnel up for it now)", conn, t.Pair.Dst, conn), true)
	}
}

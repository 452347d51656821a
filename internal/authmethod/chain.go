// Package authmethod holds obol's built-in authentication methods for peers
// obold has no configuration for (plugins.AuthMethod): keys from DNS, a
// leap of faith that remembers a peer's key at first contact, and a static
// directory of keys. A Chain asks methods in order and is what the OE engine
// uses as its source of gateways and keys.
package authmethod

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/obol-ipsec/obol/plugins"
)

// Named is one method of a chain, with the name obolctl and logs show.
type Named struct {
	Name   string
	Method plugins.AuthMethod
}

// Chain asks its methods in order. The first answer with gateways wins; an
// Unusable answer refuses the peer at once (no later method may vouch for
// a peer an earlier one refused); no gateways or an error passes the
// question on. It implements plugins.Resolver, so the OE engine takes it in
// place of a bare resolver, and every answer says its Method.
type Chain []Named

var _ plugins.Resolver = Chain(nil)

// Lookup implements plugins.Resolver.
func (c Chain) Lookup(ctx context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	var first plugins.LookupAnswer
	var errs []error
	var skipped []string
	for i, m := range c {
		ans, err := m.Method.Credentials(ctx, q)
		if i == 0 {
			first = ans
		}
		skipped = append(skipped, ans.Skipped...)
		switch {
		case ans.Unusable != "":
			ans.Unusable = m.Name + ": " + ans.Unusable
			if err == nil {
				err = errors.New(ans.Unusable)
			}
			return ans, fmt.Errorf("auth method %s: %w", m.Name, err)
		case err != nil:
			errs = append(errs, fmt.Errorf("auth method %s: %w", m.Name, err))
		case len(ans.Gateways) > 0:
			if ans.Method == "" {
				ans.Method = methodOf(ans.DNSSEC)
			}
			ans.Skipped = skipped
			return ans, nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	// Nobody vouched: the first method's answer (its DNS name and TTL for
	// the negative cache) with every method's reasons.
	first.Gateways, first.Skipped = nil, skipped
	if len(errs) > 0 {
		return first, errors.Join(errs...)
	}
	return first, nil
}

// Names lists the methods in order, for logs and obolctl.
func (c Chain) Names() string {
	var n []string
	for _, m := range c {
		n = append(n, m.Name)
	}
	return strings.Join(n, ", ")
}

// Describe implements plugins.Describer: the methods in order, with how
// each runs when it is not plain built-in code.
func (c Chain) Describe() string {
	var parts []string
	for _, m := range c {
		p := m.Name
		if d, ok := m.Method.(plugins.Describer); ok {
			p += " [" + d.Describe() + "]"
		}
		parts = append(parts, p)
	}
	return "auth methods: " + strings.Join(parts, ", ")
}

// Describe says how DNS is asked: through the resolver module.
func (d DNS) Describe() string {
	if r, ok := d.Resolver.(plugins.Describer); ok {
		return "resolver " + r.Describe()
	}
	return "built-in resolver"
}

// methodOf is what keys from DNS are worth: DNSSEC when validated, else
// BTNS (an unverified key).
func methodOf(s plugins.DNSSECStatus) string {
	if s == plugins.DNSSECSecure {
		return plugins.MethodDNSSEC
	}
	return plugins.MethodBTNS
}

// DNS is the built-in DNS method: the resolver's gateways and keys, worth
// DNSSEC when the answer validated and BTNS otherwise (the resolver's
// require_dnssec refuses insecure answers before they get here).
type DNS struct{ Resolver plugins.Resolver }

// Credentials implements plugins.AuthMethod.
func (d DNS) Credentials(ctx context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	ans, err := d.Resolver.Lookup(ctx, q)
	if err == nil && len(ans.Gateways) > 0 {
		ans.Method = methodOf(ans.DNSSEC)
	}
	return ans, err
}

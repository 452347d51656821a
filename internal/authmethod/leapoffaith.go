package authmethod

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/obol-ipsec/obol/plugins"
)

// LeapOfFaith trusts a peer's key at first contact and holds it to that key
// afterwards (key continuity, as ssh does): the keys come from Resolver —
// typically DNS without DNSSEC — and the first set seen for a gateway is
// pinned in Store. Later answers must still contain a pinned key; a changed
// key refuses the peer outright unless AllowKeyChange. An answer that
// validated (DNSSEC secure) needs no faith: it is passed on as DNSSEC and
// its keys become the pin.
type LeapOfFaith struct {
	Resolver plugins.Resolver
	// Store is the pin file (JSON); it survives obold restarts.
	Store          string
	AllowKeyChange bool
	Now            func() time.Time // nil: time.Now
	Log            *slog.Logger     // nil: no log

	mu     sync.Mutex
	pins   map[string]*Pin
	loaded bool
}

// Pin is what is remembered of one gateway.
type Pin struct {
	Keys  []plugins.PublicKey `json:"keys"`
	First time.Time           `json:"first_seen"`
	Last  time.Time           `json:"last_seen"`
}

// pinFile is the store's format.
type pinFile struct {
	Version int             `json:"version"`
	Pins    map[string]*Pin `json:"pins"` // by gateway: "192.0.2.12" or "@host.example"
}

// maxPinFile bounds the store obold reads.
const maxPinFile = 64 << 20

// ParsePins reads a pin store.
func ParsePins(b []byte) (map[string]*Pin, error) {
	if len(b) > maxPinFile {
		return nil, fmt.Errorf("pin store of %d bytes, more than %d", len(b), maxPinFile)
	}
	var f pinFile
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("pin store: %w", err)
	}
	if f.Version != 1 {
		return nil, fmt.Errorf("pin store version %d; this obold reads version 1", f.Version)
	}
	for gw, p := range f.Pins {
		if p == nil || len(p.Keys) == 0 {
			return nil, fmt.Errorf("pin store: gateway %q has no keys", gw)
		}
		for _, k := range p.Keys {
			if k.Algorithm != "rsa" && k.Algorithm != "ed25519" || len(k.Data) == 0 {
				return nil, fmt.Errorf("pin store: gateway %q: key of algorithm %q with %d bytes", gw, k.Algorithm, len(k.Data))
			}
		}
	}
	if f.Pins == nil {
		f.Pins = map[string]*Pin{}
	}
	return f.Pins, nil
}

func (l *LeapOfFaith) now() time.Time {
	if l.Now != nil {
		return l.Now()
	}
	return time.Now()
}

// loadLocked reads the store once; a missing store is an empty one.
func (l *LeapOfFaith) loadLocked() error {
	if l.loaded {
		return nil
	}
	b, err := os.ReadFile(l.Store)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		l.pins = map[string]*Pin{}
	case err != nil:
		return fmt.Errorf("leap of faith: read pin store: %w", err)
	default:
		if l.pins, err = ParsePins(b); err != nil {
			return fmt.Errorf("leap of faith: %s: %w; fix or move the file (moving it forgets every pinned key)", l.Store, err)
		}
	}
	l.loaded = true
	return nil
}

// saveLocked writes the store atomically (a crash never leaves half a file).
func (l *LeapOfFaith) saveLocked() error {
	b, err := json.MarshalIndent(pinFile{Version: 1, Pins: l.pins}, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(l.Store), 0o700); err != nil {
		return fmt.Errorf("leap of faith: %w", err)
	}
	tmp := l.Store + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("leap of faith: write pin store: %w", err)
	}
	if err := os.Rename(tmp, l.Store); err != nil {
		return fmt.Errorf("leap of faith: write pin store: %w", err)
	}
	return nil
}

// Credentials implements plugins.AuthMethod.
func (l *LeapOfFaith) Credentials(ctx context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	ans, err := l.Resolver.Lookup(ctx, q)
	if err != nil || ans.Unusable != "" || len(ans.Gateways) == 0 {
		return ans, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := l.loadLocked(); err != nil {
		return plugins.LookupAnswer{Name: ans.Name}, err
	}
	now := l.now()
	secure := ans.DNSSEC == plugins.DNSSECSecure
	var kept []plugins.Gateway
	var refused []string
	changed := false
	for _, gw := range ans.Gateways {
		id := gatewayID(gw)
		p := l.pins[id]
		switch {
		case p == nil || secure:
			l.pins[id] = &Pin{Keys: gw.Keys, First: now, Last: now}
			if p != nil {
				l.pins[id].First = p.First
			}
			changed = true
			kept = append(kept, gw)
		default:
			if same := intersect(gw.Keys, p.Keys); len(same) > 0 {
				gw.Keys = same // only the key we had faith in
				p.Last = now
				changed = true
				kept = append(kept, gw)
				continue
			}
			if l.AllowKeyChange {
				l.log().Warn("leap of faith: a gateway's key changed; trusting the new key (allow_key_change)", "gateway", id, "pinned_since", p.First)
				l.pins[id] = &Pin{Keys: gw.Keys, First: now, Last: now}
				changed = true
				kept = append(kept, gw)
				continue
			}
			refused = append(refused, fmt.Sprintf("the key of %s changed since first contact at %s; refused (remove its pin from %s if the change is genuine, or set allow_key_change)",
				id, p.First.UTC().Format(time.RFC3339), l.Store))
		}
	}
	if changed {
		if err := l.saveLocked(); err != nil {
			return plugins.LookupAnswer{Name: ans.Name}, err
		}
	}
	if len(kept) == 0 {
		// Refuse outright: a later method must not accept the changed key.
		return plugins.LookupAnswer{Name: ans.Name, DNSSEC: ans.DNSSEC, TTL: ans.TTL, Unusable: strings.Join(refused, "; ")}, errors.New(strings.Join(refused, "; "))
	}
	ans.Gateways, ans.Skipped = kept, append(ans.Skipped, refused...)
	ans.Method = plugins.MethodLeapOfFaith
	if secure {
		ans.Method = plugins.MethodDNSSEC
	}
	return ans, nil
}

func (l *LeapOfFaith) log() *slog.Logger {
	if l.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return l.Log
}

// gatewayID names the identity a pin belongs to: the gateway's IKE id.
func gatewayID(gw plugins.Gateway) string {
	if gw.FQDN != "" {
		return "@" + strings.TrimSuffix(gw.FQDN, ".")
	}
	return gw.Addr.Unmap().String()
}

func intersect(a, b []plugins.PublicKey) []plugins.PublicKey {
	var out []plugins.PublicKey
	for _, x := range a {
		for _, y := range b {
			if x.Algorithm == y.Algorithm && bytes.Equal(x.Data, y.Data) {
				out = append(out, x)
				break
			}
		}
	}
	return out
}

package daemon

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/wire"
	"github.com/obol-ipsec/obol/vici"
)

// tokenHost is what obold offers the token API module: the SAs on the host
// (swanctl's too) with the evidence of how each peer was authenticated,
// gathered from list-conns, charon's level-1 log lines and OE's state.
type tokenHost struct {
	d *Daemon

	mu   sync.Mutex
	auth map[uint32]*tokenapi.AuthLog // by IKE_SA unique id

	// The token query path never waits for charon while nothing changed:
	// every event that may change the SAs moves gen, the module keeps its
	// index while gen stays, and the first query after a move rebuilds the
	// snapshot with one list-sas.
	gen     atomic.Uint64
	cacheMu sync.Mutex
	cache   plugins.TokenSnapshot
	built   bool                // cache holds a snapshot (of generation cache.Generation)
	classes map[string][]string // remote auth classes by conn (list-conns)

	changes changeHub // SA changes for the token API module's events
}

func newTokenHost(d *Daemon) *tokenHost {
	return &tokenHost{d: d, auth: map[uint32]*tokenapi.AuthLog{}}
}

// invalidate drops the cached SAs; forget also drops the conns' auth classes
// (a reload or a new charon may have changed the conns).
func (h *tokenHost) invalidate(forget bool) {
	h.gen.Add(1)
	if forget {
		h.cacheMu.Lock()
		h.classes = nil
		h.cacheMu.Unlock()
	}
}

var _ plugins.TokenHost = (*tokenHost)(nil)

// Generation implements plugins.TokenHost.
func (h *tokenHost) Generation() uint64 { return h.gen.Load() }

// observe feeds charon's events: log lines become authentication evidence
// per IKE_SA; a deleted IKE_SA's evidence is dropped.
func (h *tokenHost) observe(ev vici.Event) {
	switch ev.Kind {
	case vici.EventLog:
		if ev.Log != nil && ev.Log.IKEID != 0 {
			h.invalidate(false) // authentication evidence may have changed
		}
	case vici.EventConnected, vici.EventDisconnected, vici.EventLost:
		h.invalidate(true)
	default:
		h.invalidate(false)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	switch {
	case ev.Kind == vici.EventLog && ev.Log != nil && ev.Log.IKEID != 0:
		al := h.auth[ev.Log.IKEID]
		if al == nil {
			al = &tokenapi.AuthLog{}
			h.auth[ev.Log.IKEID] = al
		}
		al.Feed(ev.Log.Message)
	case ev.Kind == vici.EventIKEUpDown && !ev.Up && ev.SA != nil:
		delete(h.auth, ev.SA.UniqueID)
	case ev.Kind == vici.EventConnected:
		h.auth = map[uint32]*tokenapi.AuthLog{} // a new charon: old ids mean nothing
	}
	if c, ok := tokenChange(ev); ok {
		// After invalidate: a watcher that asks TokenSAs sees the change.
		h.changes.publish(c)
	}
}

// TokenSAs lists the installed CHILD_SAs with their peer's evidence: the
// snapshot of the current generation, built with one list-sas when an event
// moved the generation since the last one.
func (h *tokenHost) TokenSAs(ctx context.Context) (plugins.TokenSnapshot, error) {
	h.cacheMu.Lock()
	defer h.cacheMu.Unlock()
	g := h.gen.Load() // read first: an event during the build moves it again
	if h.built && h.cache.Generation == g {
		return h.cache, nil
	}
	sas, err := h.build(ctx)
	if err != nil {
		return plugins.TokenSnapshot{}, err
	}
	h.cache, h.built = plugins.TokenSnapshot{Generation: g, SAs: sas}, true
	return h.cache, nil
}

// build reads the SAs from charon; cacheMu is held.
func (h *tokenHost) build(ctx context.Context) ([]tokenapi.TokenSA, error) {
	sas, err := h.d.charon.ListSAs(ctx, vici.SASelector{})
	if err != nil {
		return nil, err
	}
	if h.classes == nil {
		h.classes = map[string][]string{}
	}
	classes := h.classes
	h.d.mu.Lock()
	eng := h.d.oe
	h.d.mu.Unlock()
	var oeFacts map[string]oe.ConnFact
	if eng != nil {
		oeFacts = eng.ConnFacts()
	}
	var out []tokenapi.TokenSA
	for _, sa := range sas {
		if _, ok := classes[sa.Name]; !ok {
			classes[sa.Name] = h.remoteClasses(ctx, sa.Name)
		}
		ev := tokenapi.Evidence{RoundClasses: classes[sa.Name]}
		if len(ev.RoundClasses) > 0 {
			ev.ConnClass = ev.RoundClasses[0]
		}
		h.mu.Lock()
		if al := h.auth[sa.UniqueID]; al != nil {
			le := al.Evidence
			ev.LogMethod, ev.TrustedCADN, ev.TrustedCertDN, ev.PeerCertDN, ev.Fetched = le.LogMethod, le.TrustedCADN, le.TrustedCertDN, le.PeerCertDN, le.Fetched
		}
		h.mu.Unlock()
		oef, isOE := oeFacts[sa.Name]
		if isOE {
			ev.OE, ev.DNSSEC, ev.OEMethod, ev.PinnedKey = true, string(oef.DNSSEC), oef.Method, true
		} else if ev.ConnClass == "public key" && ev.TrustedCADN == "" {
			// A raw key the administrator configured for this peer.
			ev.PinnedKey = true
		}
		if ev.ConnClass == "pre-shared key" {
			ev.SecretOwners = -1 // swanctl's secrets: VICI does not show their owners
			h.d.mu.Lock()
			if lc, ok := h.d.loaded[sa.Name]; ok {
				ev.SecretOwners = lc.pskPeers
			}
			h.d.mu.Unlock()
		}
		peer := tokenapi.Peer{RemoteID: sa.RemoteID, RemoteEAPID: sa.RemoteEAPID, RemoteXAuthID: sa.RemoteXAuthID, Evidence: ev}
		if isOE {
			peer.PeerKey, peer.OurKey = oef.PeerKey, oef.OurKey
		}
		for _, ch := range sa.Children {
			if ch.State != "INSTALLED" {
				continue
			}
			tsa := tokenapi.TokenSA{
				Child: tokenapi.Child{IKEName: sa.Name, Name: ch.Name, Protocol: ch.Protocol, Mode: ch.Mode, EncrAlg: ch.EncrAlg, EncrKey: ch.EncrKeySize,
					IntegAlg: ch.IntegAlg, IntegKey: ch.IntegKeySize, IPComp: ch.CPIIn != "", Encap: ch.Encap, Label: ch.Label},
				Peer: peer,
			}
			for _, s := range ch.LocalTS {
				if ts, err := tokenapi.ParseTS(s); err == nil {
					tsa.LocalTS = append(tsa.LocalTS, ts)
				}
			}
			for _, s := range ch.RemoteTS {
				if ts, err := tokenapi.ParseTS(s); err == nil {
					tsa.RemoteTS = append(tsa.RemoteTS, ts)
				}
			}
			out = append(out, tsa)
		}
	}
	return out, nil
}

func (h *tokenHost) remoteClasses(ctx context.Context, conn string) []string {
	cis, err := h.d.charon.ListConns(ctx, conn)
	if err != nil || len(cis) == 0 {
		return nil
	}
	var out []string
	for _, a := range cis[0].Remote {
		out = append(out, a.Class)
	}
	return out
}

// WhyNot says why a flow has no SA: OE's verdict for its peer when OE
// knows the pair, else that no policy covers it.
func (h *tokenHost) WhyNot(ctx context.Context, f tokenapi.Flow) (wire.Reason, string, error) {
	h.d.mu.Lock()
	eng := h.d.oe
	h.d.mu.Unlock()
	if eng != nil {
		if reason, failed := eng.Failure(f.Remote.Addr().Unmap()); failed {
			return oeReason(reason), reason, nil
		}
	}
	return wire.ReasonNoPolicy, "no IPsec policy covers " + f.Local.String() + " -> " + f.Remote.String() + ": the traffic goes in clear", nil
}

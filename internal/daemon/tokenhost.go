package daemon

import (
	"context"
	"strconv"
	"strings"
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
	// certKeys are the keys of the certificates peers authenticated with,
	// by IKE_SA unique id: read from list-certs once, right after the
	// authentication (charon's certificate cache may later evict the
	// certificate; the iToken must not change then), and kept like the
	// log evidence: across IKE rekeys, until the IKE_SA goes.
	certKeys map[uint32]keyLookup

	// The token query path never waits for charon while nothing changed:
	// every event that may change the SAs moves gen, the module keeps its
	// index while gen stays, and the first query after a move rebuilds the
	// snapshot with one list-sas.
	gen     atomic.Uint64
	genMu   sync.Mutex
	genMove chan struct{} // closed when gen moves (GenerationMoved), nil when nobody waits
	cacheMu sync.Mutex
	cache   plugins.TokenSnapshot
	built   bool                 // cache holds a snapshot (of generation cache.Generation)
	conns   map[string]*connAuth // by conn: its rounds and keys (list-conns, list-certs)

	changes changeHub // SA changes for the token API module's events
}

// connAuth is what a conn's configuration tells about its peers' and our
// keys, read once per conn: a query never waits for list-conns or
// list-certs.
type connAuth struct {
	classes []string // the remote rounds' auth classes
	// rawPeer: the first remote round pins raw public keys (swanctl
	// pubkeys), not certificates.
	rawPeer bool
	peer    keyLookup // the pinned raw key, when rawPeer
	our     keyLookup // our key of the first local round (raw key or certificate)
	// failed: charon did not answer list-conns or list-certs; nothing
	// about the rounds is claimed and the conn is read again next time.
	failed bool
}

// keyLookup is a key read from charon's credentials, or why it is unknown.
type keyLookup struct {
	key  tokenapi.PublicKey
	note string // set when key is unknown
}

func newTokenHost(d *Daemon) *tokenHost {
	return &tokenHost{d: d, auth: map[uint32]*tokenapi.AuthLog{}, certKeys: map[uint32]keyLookup{}}
}

// invalidate drops the cached SAs; forget also drops the conns' auth classes
// (a reload or a new charon may have changed the conns).
func (h *tokenHost) invalidate(forget bool) {
	h.gen.Add(1)
	h.genMu.Lock()
	if h.genMove != nil {
		close(h.genMove)
		h.genMove = nil
	}
	h.genMu.Unlock()
	if forget {
		h.cacheMu.Lock()
		h.conns = nil
		h.cacheMu.Unlock()
	}
}

var _ plugins.TokenHost = (*tokenHost)(nil)

// Generation implements plugins.TokenHost.
func (h *tokenHost) Generation() uint64 { return h.gen.Load() }

var _ plugins.TokenGenerationWatcher = (*tokenHost)(nil)

// GenerationMoved implements plugins.TokenGenerationWatcher: a token API
// plugin learns of a move at once, without polling.
func (h *tokenHost) GenerationMoved(g uint64) <-chan struct{} {
	h.genMu.Lock()
	defer h.genMu.Unlock()
	if h.gen.Load() != g {
		c := make(chan struct{})
		close(c)
		return c
	}
	if h.genMove == nil {
		h.genMove = make(chan struct{})
	}
	return h.genMove
}

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
	case vici.EventIKEUpDown:
		if ev.Up && ev.SA != nil {
			// The conn may have been reloaded with other keys: read it
			// again (once per IKE_SA, never per query).
			h.cacheMu.Lock()
			delete(h.conns, ev.SA.Name)
			h.cacheMu.Unlock()
		}
		h.invalidate(false)
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
		delete(h.certKeys, ev.SA.UniqueID)
	case ev.Kind == vici.EventIKERekey && ev.Old != nil && ev.SA != nil:
		// A rekeyed IKE_SA is not authenticated again: the new one
		// inherits the old one's evidence.
		if al := h.auth[ev.Old.UniqueID]; al != nil {
			h.auth[ev.SA.UniqueID] = al
		}
		if kl, ok := h.certKeys[ev.Old.UniqueID]; ok {
			h.certKeys[ev.SA.UniqueID] = kl
		}
	case ev.Kind == vici.EventConnected:
		// A new charon: old ids mean nothing.
		h.auth, h.certKeys = map[uint32]*tokenapi.AuthLog{}, map[uint32]keyLookup{}
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
	if h.conns == nil {
		h.conns = map[string]*connAuth{}
	}
	h.d.mu.Lock()
	eng := h.d.oe
	h.d.mu.Unlock()
	var oeFacts map[string]oe.ConnFact
	if eng != nil {
		oeFacts = eng.ConnFacts()
	}
	var out []tokenapi.TokenSA
	for _, sa := range sas {
		oef, isOE := oeFacts[sa.Name]
		ca := h.conns[sa.Name]
		if ca == nil {
			ca = h.readConn(ctx, sa.Name, isOE)
			if !ca.failed {
				h.conns[sa.Name] = ca // a failed read is retried at the next rebuild
			}
		}
		ev := tokenapi.Evidence{RoundClasses: ca.classes}
		if len(ev.RoundClasses) > 0 {
			ev.ConnClass = ev.RoundClasses[0]
		}
		h.mu.Lock()
		if al := h.auth[sa.UniqueID]; al != nil {
			le := al.Evidence
			ev.LogMethod, ev.TrustedCADN, ev.TrustedCertDN, ev.PeerCertDN, ev.Fetched = le.LogMethod, le.TrustedCADN, le.TrustedCertDN, le.PeerCertDN, le.Fetched
		}
		h.mu.Unlock()
		var peerKey, ourKey keyLookup
		switch {
		case isOE:
			ev.OE, ev.DNSSEC, ev.OEMethod, ev.PinnedKey = true, string(oef.DNSSEC), oef.Method, true
			peerKey, ourKey = keyLookup{key: oef.PeerKey}, keyLookup{key: oef.OurKey}
		case ca.failed:
			// Whether the round pins raw keys or certificates is unknown:
			// "using trusted certificate" then proves no PKIX trust.
			ev.TrustedCertDN = ""
			peerKey, ourKey = ca.peer, ca.our
		case ev.ConnClass != "public key":
			// PSK, EAP, XAuth, null: no IKE public keys to tell.
		case ca.rawPeer:
			// A raw key the administrator configured for this peer.
			ev.PinnedKey = true
			peerKey, ourKey = ca.peer, ca.our
		default:
			peerKey, ourKey = h.peerCertKey(ctx, sa.UniqueID, ev), ca.our
		}
		if ev.ConnClass == "pre-shared key" {
			ev.SecretOwners = -1 // swanctl's secrets: VICI does not show their owners
			h.d.mu.Lock()
			if lc, ok := h.d.loaded[sa.Name]; ok {
				ev.SecretOwners = lc.pskPeers
			}
			h.d.mu.Unlock()
		}
		peer := tokenapi.Peer{RemoteID: sa.RemoteID, RemoteEAPID: sa.RemoteEAPID, RemoteXAuthID: sa.RemoteXAuthID, Evidence: ev,
			PeerKey: peerKey.key, OurKey: ourKey.key, KeyNote: keyNote(peerKey, ourKey)}
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

// readConn reads a conn's rounds (list-conns) and, for public key rounds,
// the keys they pin (list-certs). cacheMu is held. Failures leave notes:
// the iToken then says the key is unknown instead of guessing.
func (h *tokenHost) readConn(ctx context.Context, conn string, isOE bool) *connAuth {
	ca := &connAuth{}
	cis, err := h.d.charon.ListConns(ctx, conn)
	if err != nil || len(cis) == 0 {
		note := "conn " + strconv.Quote(conn) + " not listed by charon"
		if err != nil {
			note += ": " + err.Error()
		}
		ca.peer.note, ca.our.note, ca.failed = note, note, true
		return ca
	}
	for _, a := range cis[0].Remote {
		ca.classes = append(ca.classes, a.Class)
	}
	if isOE {
		return ca // obold knows OE keys itself
	}
	var errPeer, errOur error
	if len(cis[0].Remote) > 0 && cis[0].Remote[0].Class == "public key" {
		ca.rawPeer, ca.peer, errPeer = h.pinnedKeys(ctx, cis[0].Remote[0].Certs, false)
	}
	if len(cis[0].Local) > 0 && cis[0].Local[0].Class == "public key" {
		_, ca.our, errOur = h.pinnedKeys(ctx, cis[0].Local[0].Certs, true)
	} else {
		ca.our.note = "our first round does not use a public key"
	}
	ca.failed = errPeer != nil || errOur != nil
	return ca
}

// pinnedKeys reads the keys of a round's certs (subjects as list-conns
// shows them). raw says they are raw public keys; the key is set when
// exactly one distinct key matches. own: only keys whose private key is
// loaded (our side).
func (h *tokenHost) pinnedKeys(ctx context.Context, subjects []string, own bool) (raw bool, kl keyLookup, err error) {
	if len(subjects) == 0 {
		return false, keyLookup{note: "the round names no certificate or key"}, nil
	}
	var rawKeys, certKeys []tokenapi.PublicKey
	for _, subj := range subjects {
		certs, err := h.d.charon.ListCerts(ctx, vici.CertFilter{Subject: subj})
		if err != nil {
			return false, keyLookup{note: "list-certs for " + strconv.Quote(subj) + ": " + err.Error()}, err
		}
		for _, c := range certs {
			if own && !c.HasPrivKey {
				continue
			}
			switch c.Type {
			case "PUBKEY":
				if k, err := tokenapi.KeyFromSPKI(c.Data); err == nil {
					rawKeys = appendKey(rawKeys, k)
				}
			case "X509":
				if k, isCA, err := tokenapi.KeyFromCert(c.Data); err == nil && !isCA && c.Flag != "CA" {
					certKeys = appendKey(certKeys, k)
				}
			}
		}
	}
	// swanctl's pubkeys bind each key to the round's id exactly; a
	// certificate's altName may match the same id, so raw keys win.
	keys := certKeys
	if len(rawKeys) > 0 {
		raw, keys = true, rawKeys
	}
	return raw, oneKey(keys, strings.Join(subjects, ", ")), nil
}

// peerCertKey is the key of the peer's certificate charon used for IKE_SA
// ike (its DN from the log), from charon's credential sets and cache,
// read once per IKE_SA. cacheMu is held.
func (h *tokenHost) peerCertKey(ctx context.Context, ike uint32, ev tokenapi.Evidence) keyLookup {
	dn := ev.PeerCertDN
	if dn == "" {
		dn = ev.TrustedCertDN
	}
	if dn == "" {
		return keyLookup{note: "charon's log named no peer certificate"}
	}
	h.mu.Lock()
	kl, ok := h.certKeys[ike]
	h.mu.Unlock()
	if ok {
		return kl
	}
	var keys []tokenapi.PublicKey
	certs, err := h.d.charon.ListCerts(ctx, vici.CertFilter{Type: "X509", Subject: dn})
	if err != nil {
		return keyLookup{note: "list-certs for " + strconv.Quote(dn) + ": " + err.Error()} // not kept: retried
	}
	for _, c := range certs {
		if k, isCA, err := tokenapi.KeyFromCert(c.Data); err == nil && !isCA && c.Flag != "CA" {
			keys = appendKey(keys, k)
		}
	}
	kl = oneKey(keys, dn)
	h.mu.Lock()
	if _, live := h.auth[ike]; live { // not for an IKE_SA deleted meanwhile
		h.certKeys[ike] = kl
	}
	h.mu.Unlock()
	return kl
}

func appendKey(keys []tokenapi.PublicKey, k tokenapi.PublicKey) []tokenapi.PublicKey {
	for _, have := range keys {
		if tokenapi.SameKey(have, k) {
			return keys
		}
	}
	return append(keys, k)
}

func oneKey(keys []tokenapi.PublicKey, what string) keyLookup {
	switch len(keys) {
	case 1:
		return keyLookup{key: keys[0]}
	case 0:
		return keyLookup{note: "no key for " + strconv.Quote(what) + " in charon's credentials"}
	default:
		return keyLookup{note: strconv.Itoa(len(keys)) + " different keys match " + strconv.Quote(what) + ": not telling which was used"}
	}
}

// keyNote says which of the two keys is unknown and why.
func keyNote(peer, our keyLookup) string {
	var parts []string
	if len(peer.key.Data) == 0 && peer.note != "" {
		parts = append(parts, "peer key unknown ("+peer.note+")")
	}
	if len(our.key.Data) == 0 && our.note != "" {
		parts = append(parts, "our key unknown ("+our.note+")")
	}
	return strings.Join(parts, "; ")
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

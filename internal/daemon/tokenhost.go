package daemon

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/obol-ipsec/obol/internal/oe"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/wire"
	"github.com/obol-ipsec/obol/vici"
)

// tokenHost is what obold offers the token API module: the SAs on the host
// (swanctl's too) with the evidence of how each peer was authenticated,
// gathered from list-conns, charon's level-1 log lines and OE's state.
//
// The SAs are a table per IKE_SA kept up to date by charon's events (their
// messages carry the IKE_SA and the CHILD_SA that changed), so a query
// never waits for a list-sas: with kernel-libipsec one costs seconds at
// 10,000 SAs. A full list-sas replaces the table only for the very first
// snapshot, at every (re)connect (the event stream's EventConnected carries
// one, also after lost events), when an event lacks what is needed, and
// every tokenResyncInterval in the background.
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
	// ikes is charon's IKE_SAs with their installed CHILD_SAs, by unique
	// id. Entries are never changed in place (a change stores a new one),
	// so a snapshot build reads them without mu.
	ikes map[uint32]*ikeEntry
	// synced: ikes mirrors charon (a full listing, and every event since).
	synced bool
	// replay, while a full list-sas runs (non-nil): the SA events that
	// arrived meanwhile, applied again over the listing.
	replay []vici.Event
	// stamp numbers table changes, so a converted entry knows whether it
	// is current (unique ids start again with a new charon).
	stamp uint64
	// forgetConns: conns whose auth facts are read again at the next
	// build (an IKE_SA of the conn came up: it may have been reloaded).
	forgetConns []string

	// The token query path never waits for charon while nothing changed:
	// every change moves gen (under mu, with the table), the module keeps
	// its index while gen stays, and the first query after a move
	// converts only the IKE_SAs that changed.
	gen      atomic.Uint64
	connsGen atomic.Uint64 // moves when every conn's auth facts must be read again
	resyncCh chan struct{} // asks keepSynced for a full list-sas now
	connCh   chan string   // conns keepSynced reads ahead of the next build
	syncMu   sync.Mutex    // one full list-sas at a time

	cacheMu  sync.Mutex
	cache    plugins.TokenSnapshot
	built    bool                 // cache holds a snapshot (of generation cache.Generation)
	conns    map[string]*connAuth // by conn: its rounds and keys (list-conns, list-certs)
	connsAt  uint64               // connsGen the conns were read at
	conv     map[uint32]*convEntry
	convConn uint64 // connsGen conv was built at
	genMu    sync.Mutex
	genMove  chan struct{} // closed when gen moves (GenerationMoved), nil when nobody waits

	changes changeHub // SA changes for the token API module's events
}

// tokenResyncInterval is the safety net's period: a full list-sas in the
// background, in case an event was missed without charon saying so.
const tokenResyncInterval = 5 * time.Minute

// ikeEntry is one IKE_SA as the last event or listing showed it.
type ikeEntry struct {
	sa vici.IKESA // Children: the installed CHILD_SAs only
	// stamp moves with any change (evidence included), childStamp with
	// the children or IKE fields.
	stamp, childStamp uint64
}

// convEntry is an IKE_SA converted to TokenSAs; cacheMu guards it.
type convEntry struct {
	stamp, childStamp uint64
	children          []tokenapi.TokenSA // Peer unset
	out               []tokenapi.TokenSA
	retry             bool // a conn read failed: convert again at the next build
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
	return &tokenHost{d: d, auth: map[uint32]*tokenapi.AuthLog{}, certKeys: map[uint32]keyLookup{},
		ikes: map[uint32]*ikeEntry{}, resyncCh: make(chan struct{}, 1), connCh: make(chan string, 64)}
}

// forgetConnAuth drops every conn's auth facts (a reload may have changed
// the conns, the PSKs obold loaded, OE's facts) and moves the generation:
// every IKE_SA is converted again at the next query, without a list-sas.
func (h *tokenHost) forgetConnAuth() {
	h.connsGen.Add(1)
	h.mu.Lock()
	h.moveGen()
	h.mu.Unlock()
}

var _ plugins.TokenHost = (*tokenHost)(nil)

// Generation implements plugins.TokenHost.
func (h *tokenHost) Generation() uint64 { return h.gen.Load() }

var _ plugins.TokenGenerationWatcher = (*tokenHost)(nil)

// moveGen moves the generation and wakes a token API plugin's watcher.
func (h *tokenHost) moveGen() {
	h.gen.Add(1)
	h.genMu.Lock()
	if h.genMove != nil {
		close(h.genMove)
		h.genMove = nil
	}
	h.genMu.Unlock()
}

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

// observe feeds charon's events into the SA table; log lines become
// authentication evidence per IKE_SA; a deleted IKE_SA's evidence is
// dropped. It never waits for charon.
func (h *tokenHost) observe(ev vici.Event) {
	if ev.Kind == vici.EventConnected || ev.Kind == vici.EventDisconnected || ev.Kind == vici.EventLost {
		h.connsGen.Add(1)
	}
	h.mu.Lock()
	switch {
	case ev.Kind == vici.EventLog && ev.Log != nil && ev.Log.IKEID != 0:
		al := h.auth[ev.Log.IKEID]
		if al == nil {
			al = &tokenapi.AuthLog{}
			h.auth[ev.Log.IKEID] = al
		}
		al.Feed(ev.Log.Message)
		// Only this IKE_SA's evidence may have changed.
		if e := h.ikes[ev.Log.IKEID]; e != nil {
			h.stamp++
			ne := *e
			ne.stamp = h.stamp
			h.ikes[ev.Log.IKEID] = &ne
			h.moveGen()
		}
	case ev.Kind == vici.EventIKEUpDown && !ev.Up && ev.SA != nil:
		delete(h.auth, ev.SA.UniqueID)
		delete(h.certKeys, ev.SA.UniqueID)
	case ev.Kind == vici.EventIKEUpDown && ev.Up && ev.SA != nil:
		// The conn may have been reloaded with other keys: read it again
		// (once per IKE_SA, never per query).
		h.forgetConns = append(h.forgetConns, ev.SA.Name)
		select {
		case h.connCh <- ev.SA.Name: // read it now, not in the next query
		default:
		}
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
	if ev.Kind != vici.EventLog {
		if h.replay != nil {
			h.replay = append(h.replay, ev)
		}
		if !h.apply(ev) {
			select {
			case h.resyncCh <- struct{}{}:
			default:
			}
		}
		h.moveGen()
	}
	h.mu.Unlock()
	if c, ok := tokenChange(ev); ok {
		// After the generation moved: a watcher that asks TokenSAs sees
		// the change.
		h.changes.publish(c)
	}
}

// apply changes the SA table as ev says; mu is held. Applying an event
// twice, or one the listing already shows, changes nothing (a listing's
// events may be applied over it again). ok is false when the event lacks
// what is needed and only a full listing can tell.
func (h *tokenHost) apply(ev vici.Event) (ok bool) {
	switch ev.Kind {
	case vici.EventConnected:
		h.resetTable(ev.SAs)
		h.synced = true
	case vici.EventDisconnected:
		// charon went away (and libipsec's SAs with it): nothing is known
		// until it is back; a query lists the SAs itself meanwhile.
		h.resetTable(nil)
		h.synced = false
	case vici.EventIKEUpDown:
		if ev.SA == nil {
			return false
		}
		if !ev.Up {
			delete(h.ikes, ev.SA.UniqueID)
			return true
		}
		h.putIKE(*ev.SA, h.childrenOf(ev.SA.UniqueID))
	case vici.EventChildUpDown:
		if ev.SA == nil || len(ev.SA.Children) != 1 {
			return false
		}
		ch := ev.SA.Children[0]
		e := h.ikes[ev.SA.UniqueID]
		if !ev.Up {
			if e != nil {
				h.putIKE(e.sa, without(e.sa.Children, ch.UniqueID))
			}
			return true
		}
		var kids []vici.ChildSA
		if e != nil {
			kids = e.sa.Children
		}
		kids = slices.Clip(without(kids, ch.UniqueID)) // Clip: entries share slices
		if ch.State == "INSTALLED" {
			kids = append(kids, ch)
		}
		h.putIKE(*ev.SA, kids)
		return ch.State == "INSTALLED"
	case vici.EventChildRekey:
		if ev.SA == nil || ev.Old == nil || len(ev.SA.Children) != 1 || len(ev.Old.Children) != 1 {
			return false
		}
		var kids []vici.ChildSA
		if e := h.ikes[ev.SA.UniqueID]; e != nil {
			kids = e.sa.Children
		}
		// The old CHILD_SA leaves now (it is REKEYED, and charon reports
		// no child-updown when it goes).
		nc := ev.SA.Children[0]
		kids = slices.Clip(without(without(kids, ev.Old.Children[0].UniqueID), nc.UniqueID))
		if nc.State == "INSTALLED" {
			kids = append(kids, nc)
		}
		h.putIKE(*ev.SA, kids)
		return nc.State == "INSTALLED"
	case vici.EventIKERekey:
		if ev.SA == nil || ev.Old == nil {
			return false
		}
		// The CHILD_SAs move to the new IKE_SA.
		old := h.ikes[ev.Old.UniqueID]
		kids := slices.Clip(h.childrenOf(ev.SA.UniqueID))
		if old != nil {
			for _, c := range old.sa.Children {
				kids = append(without(kids, c.UniqueID), c)
			}
			delete(h.ikes, ev.Old.UniqueID)
		}
		h.putIKE(*ev.SA, kids)
		return old != nil || !h.synced
	}
	return true
}

func (h *tokenHost) childrenOf(ike uint32) []vici.ChildSA {
	if e := h.ikes[ike]; e != nil {
		return e.sa.Children
	}
	return nil
}

// putIKE stores sa (its IKE fields) with children as a new entry.
func (h *tokenHost) putIKE(sa vici.IKESA, children []vici.ChildSA) {
	h.stamp++
	sa.Children = children
	h.ikes[sa.UniqueID] = &ikeEntry{sa: sa, stamp: h.stamp, childStamp: h.stamp}
}

// resetTable replaces the table with a listing; mu is held.
func (h *tokenHost) resetTable(sas []vici.IKESA) {
	h.ikes = make(map[uint32]*ikeEntry, len(sas))
	h.putListed(sas)
}

// putListed stores listed IKE_SAs with their installed children; mu is held.
func (h *tokenHost) putListed(sas []vici.IKESA) {
	for _, sa := range sas {
		var kids []vici.ChildSA
		for _, c := range sa.Children {
			if c.State == "INSTALLED" {
				kids = append(kids, c)
			}
		}
		h.putIKE(sa, kids)
	}
}

// without returns children without the CHILD_SA id, never changing the
// slice it was given (entries share it).
func without(children []vici.ChildSA, id uint32) []vici.ChildSA {
	i := slices.IndexFunc(children, func(c vici.ChildSA) bool { return c.UniqueID == id })
	if i < 0 {
		return children
	}
	out := make([]vici.ChildSA, 0, len(children)-1)
	return append(append(out, children[:i]...), children[i+1:]...)
}

// fullSync replaces the table with one list-sas, then applies again the
// events that arrived while it ran (they may be newer than the listing).
func (h *tokenHost) fullSync(ctx context.Context) error { return h.syncSAs(ctx, "") }

// syncSAs lists the IKE_SAs of conn (all of them for "") and makes the
// table agree with the listing for them, then applies again the events
// that arrived while it ran.
func (h *tokenHost) syncSAs(ctx context.Context, conn string) error {
	h.syncMu.Lock()
	defer h.syncMu.Unlock()
	h.mu.Lock()
	h.replay = []vici.Event{}
	h.mu.Unlock()
	sas, err := h.d.charon.ListSAs(ctx, vici.SASelector{IKE: conn})
	h.mu.Lock()
	defer h.mu.Unlock()
	replay := h.replay
	h.replay = nil
	if err != nil {
		return err
	}
	if conn == "" {
		h.resetTable(sas)
		h.synced = true
	} else {
		for id, e := range h.ikes {
			if e.sa.Name == conn {
				delete(h.ikes, id)
			}
		}
		h.putListed(sas)
	}
	for _, ev := range replay {
		h.apply(ev)
	}
	h.moveGen()
	return nil
}

// coveringNow is the SA covering f right after charon said it brought one
// up for conn: the table's, or, when charon's event has not reached obold
// yet, one list-sas of conn's IKE_SAs.
func (h *tokenHost) coveringNow(ctx context.Context, f plugins.TokenFlow, conn string) (plugins.TokenSA, bool, error) {
	if sa, ok, err := h.covering(ctx, f); err != nil || ok || conn == "" {
		return sa, ok, err
	}
	if err := h.syncSAs(ctx, conn); err != nil {
		return plugins.TokenSA{}, false, fmt.Errorf("list-sas of conn %s: %w", conn, err)
	}
	return h.covering(ctx, f)
}

// keepSynced runs the background full listings until ctx ends: every
// tokenResyncInterval, and when an event lacked what was needed.
func (h *tokenHost) keepSynced(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case conn := <-h.connCh:
			h.prefetchConn(ctx, conn)
			continue
		case <-t.C:
		case <-h.resyncCh:
		}
		if err := h.fullSync(ctx); err != nil && ctx.Err() == nil {
			h.d.log.Warn("token API: the periodic list-sas failed; the SAs stay as charon's events left them", "err", err)
		}
	}
}

// prefetchConn reads a conn whose IKE_SA just came up (list-conns, and
// list-certs for its keys) outside any lock, so the next query does not
// wait for charon for it. It stands for that IKE_SA's forgetConns entry.
func (h *tokenHost) prefetchConn(ctx context.Context, conn string) {
	cg := h.connsGen.Load()
	_, isOE := h.oeFacts()[conn]
	ca := h.readConn(ctx, conn, isOE)
	if ca.failed {
		return // the build reads it again
	}
	h.cacheMu.Lock()
	defer h.cacheMu.Unlock()
	h.mu.Lock()
	if i := slices.Index(h.forgetConns, conn); i >= 0 {
		h.forgetConns = slices.Delete(h.forgetConns, i, i+1)
	}
	h.mu.Unlock()
	if h.connsGen.Load() != cg {
		return // every conn was forgotten while it was read
	}
	if h.conns == nil || h.connsAt != cg {
		h.conns, h.connsAt = map[string]*connAuth{}, cg
	}
	h.conns[conn] = ca
}

// TokenSAs lists the installed CHILD_SAs with their peer's evidence, newest
// (highest CHILD_SA unique id) first: the snapshot of the current
// generation. Only the very first one (and the first after charon went
// away) waits for a list-sas; later ones convert the IKE_SAs that changed.
func (h *tokenHost) TokenSAs(ctx context.Context) (plugins.TokenSnapshot, error) {
	h.cacheMu.Lock()
	defer h.cacheMu.Unlock()
	if h.built && h.cache.Generation == h.gen.Load() {
		return h.cache, nil
	}
	h.mu.Lock()
	synced := h.synced
	h.mu.Unlock()
	if !synced {
		if err := h.fullSync(ctx); err != nil {
			return plugins.TokenSnapshot{}, err
		}
	}
	if cg := h.connsGen.Load(); h.conns == nil || h.connsAt != cg {
		h.conns, h.connsAt = map[string]*connAuth{}, cg
	}
	h.mu.Lock()
	g := h.gen.Load() // with the table: an event after this moves it again
	entries := make([]*ikeEntry, 0, len(h.ikes))
	for _, e := range h.ikes {
		entries = append(entries, e)
	}
	for _, c := range h.forgetConns {
		delete(h.conns, c)
	}
	h.forgetConns = nil
	h.mu.Unlock()
	h.cache, h.built = plugins.TokenSnapshot{Generation: g, SAs: h.build(ctx, entries)}, true
	return h.cache, nil
}

// build converts the IKE_SAs that changed since the last build and puts
// all CHILD_SAs in order; cacheMu is held.
func (h *tokenHost) build(ctx context.Context, entries []*ikeEntry) []tokenapi.TokenSA {
	if h.conv == nil || h.convConn != h.connsAt {
		h.conv, h.convConn = map[uint32]*convEntry{}, h.connsAt
	}
	var oeFacts map[string]oe.ConnFact
	factsRead := false
	live := make(map[uint32]bool, len(entries))
	n := 0
	for _, e := range entries {
		id := e.sa.UniqueID
		live[id] = true
		c := h.conv[id]
		if c == nil || c.stamp != e.stamp || c.retry {
			if !factsRead {
				oeFacts, factsRead = h.oeFacts(), true
			}
			c = h.convertIKE(ctx, e, c, oeFacts)
			h.conv[id] = c
		}
		n += len(c.out)
	}
	for id := range h.conv {
		if !live[id] {
			delete(h.conv, id)
		}
	}
	type keyed struct {
		child, ike uint32
		sa         *tokenapi.TokenSA
	}
	all := make([]keyed, 0, n)
	for _, e := range entries {
		c := h.conv[e.sa.UniqueID]
		for i := range c.out {
			all = append(all, keyed{child: e.sa.Children[i].UniqueID, ike: e.sa.UniqueID, sa: &c.out[i]})
		}
	}
	// Newest first: charon numbers CHILD_SAs (and IKE_SAs) in the order
	// it creates them.
	slices.SortFunc(all, func(a, b keyed) int {
		if a.child != b.child {
			return cmp.Compare(b.child, a.child)
		}
		return cmp.Compare(b.ike, a.ike)
	})
	out := make([]tokenapi.TokenSA, len(all))
	for i, k := range all {
		out[i] = *k.sa
	}
	return out
}

func (h *tokenHost) oeFacts() map[string]oe.ConnFact {
	h.d.mu.Lock()
	eng := h.d.oe
	h.d.mu.Unlock()
	if eng == nil {
		return nil
	}
	return eng.ConnFacts()
}

// convertIKE converts one IKE_SA: its children only when they changed
// since prev, its peer always. cacheMu is held.
func (h *tokenHost) convertIKE(ctx context.Context, e *ikeEntry, prev *convEntry, oeFacts map[string]oe.ConnFact) *convEntry {
	c := &convEntry{stamp: e.stamp, childStamp: e.childStamp}
	if prev != nil && prev.childStamp == e.childStamp {
		c.children = prev.children
	} else {
		c.children = make([]tokenapi.TokenSA, len(e.sa.Children))
		for i, ch := range e.sa.Children {
			c.children[i] = childTokenSA(e.sa.Name, ch)
		}
	}
	var peer tokenapi.Peer
	peer, c.retry = h.peerOf(ctx, e.sa, oeFacts)
	c.out = make([]tokenapi.TokenSA, len(c.children))
	for i, tsa := range c.children {
		tsa.Peer = peer
		c.out[i] = tsa
	}
	return c
}

// childTokenSA is what a CHILD_SA tells: algorithms, mode, selectors.
func childTokenSA(ike string, ch vici.ChildSA) tokenapi.TokenSA {
	tsa := tokenapi.TokenSA{
		Child: tokenapi.Child{IKEName: ike, Name: ch.Name, Protocol: ch.Protocol, Mode: ch.Mode, EncrAlg: ch.EncrAlg, EncrKey: ch.EncrKeySize,
			IntegAlg: ch.IntegAlg, IntegKey: ch.IntegKeySize, IPComp: ch.CPIIn != "", Encap: ch.Encap, Label: ch.Label},
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
	return tsa
}

// peerOf is what is known of an IKE_SA's peer: its identities, the
// evidence of its authentication and the two keys. cacheMu is held.
// retry: its conn could not be read (tried again at the next build).
func (h *tokenHost) peerOf(ctx context.Context, sa vici.IKESA, oeFacts map[string]oe.ConnFact) (peer tokenapi.Peer, retry bool) {
	oef, isOE := oeFacts[sa.Name]
	ca := h.conns[sa.Name]
	if ca == nil {
		ca = h.readConn(ctx, sa.Name, isOE)
		if !ca.failed {
			h.conns[sa.Name] = ca // a failed read is retried at the next build
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
		if isOE {
			ev.SecretOwners = 1 // OE loads an auth method's PSK bound to the two ids only
		}
	}
	return tokenapi.Peer{RemoteID: sa.RemoteID, RemoteEAPID: sa.RemoteEAPID, RemoteXAuthID: sa.RemoteXAuthID, Evidence: ev,
		PeerKey: peerKey.key, OurKey: ourKey.key, KeyNote: keyNote(peerKey, ourKey)}, ca.failed
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

package daemon

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/vici"
)

// The token query path asks charon for the SAs once (the first snapshot),
// not per change and not per query: events carry the changes.
func TestTokenHostCache(t *testing.T) {
	f := newFake()
	d := New(testConfig(t, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	f.sas = []vici.IKESA{{Name: "obol-a", UniqueID: 1, RemoteID: "192.0.2.2", RemoteHost: netip.MustParseAddr("192.0.2.2"),
		Children: []vici.ChildSA{{Name: "net", State: "INSTALLED", Protocol: "ESP", Mode: "TUNNEL", EncrAlg: "AES_GCM_16", EncrKeySize: 256,
			LocalTS: []string{"10.1.0.0/24"}, RemoteTS: []string{"10.2.0.0/24"}}}}}
	h := d.tokens
	listSAs := func() int {
		f.mu.Lock()
		defer f.mu.Unlock()
		n := 0
		for _, c := range f.calls {
			if c == "list-sas" {
				n++
			}
		}
		return n
	}
	f.calls = nil
	for range 100 {
		snap, err := h.TokenSAs(ctx)
		if err != nil || len(snap.SAs) != 1 {
			t.Fatalf("TokenSAs = %+v, %v", snap, err)
		}
	}
	if n := listSAs(); n != 1 {
		t.Fatalf("100 queries asked charon %d times, want once", n)
	}
	gen := h.Generation()
	snap, _ := h.TokenSAs(ctx)
	if ev := snap.SAs[0].Peer.Evidence; ev.ConnClass != "pre-shared key" || ev.SecretOwners != 1 {
		t.Errorf("evidence for obold's own PSK conn: %+v", ev)
	}
	// An event: the next query sees the change.
	f.sas[0].Children[0].State = "DELETING"
	h.observe(vici.Event{Kind: vici.EventChildUpDown, SA: &f.sas[0]})
	if h.Generation() == gen {
		t.Fatal("child-updown did not move the generation")
	}
	// The event carries the change: no list-sas.
	if snap, _ := h.TokenSAs(ctx); len(snap.SAs) != 0 || listSAs() != 1 || snap.Generation != h.Generation() {
		t.Fatalf("after child-updown: %+v (list-sas %d, generation %d)", snap, listSAs(), h.Generation())
	}
	// Auth log lines are evidence too: they move the generation of a known
	// IKE_SA, without a list-sas.
	gen = h.Generation()
	h.observe(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: 1, Message: "authentication of '192.0.2.2' with pre-shared key successful"}})
	_, _ = h.TokenSAs(ctx)
	if listSAs() != 1 || h.Generation() == gen {
		t.Errorf("a log line for an IKE_SA: list-sas %d (want 1), generation %d -> %d", listSAs(), gen, h.Generation())
	}
	// A flow no policy covers: why not.
	_, why, err := h.WhyNot(ctx, tokenapi.Flow{Local: netip.MustParseAddrPort("192.0.2.1:40000"), Remote: netip.MustParseAddrPort("198.51.100.7:443"), Protocol: 6})
	if err != nil || !strings.Contains(why, "no IPsec policy covers") {
		t.Errorf("WhyNot = %q, %v", why, err)
	}
}

// Keys of swanctl peers: raw keys pinned in the conn, certificates named
// by charon's log; read once per conn / per DN, never per query; unknown
// or ambiguous keys are not guessed.
func TestTokenHostKeys(t *testing.T) {
	f := newFake()
	d := New(testConfig(t, twoConns), f, plugins.Modules{}, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx := context.Background()
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	keyA, spkiA := testEd25519(t)
	keyB, spkiB := testEd25519(t)
	keyC, spkiC := testEd25519(t)
	certA, certB, certC1, certC2 := testCert(t, keyA, false), testCert(t, keyB, false), testCert(t, keyC, false), testCert(t, keyA, false)
	f.conns["sw-raw"] = vici.Conn{Name: "sw-raw",
		Local:  []vici.Auth{{Auth: "pubkey", ID: "192.0.2.1", Pubkeys: [][]byte{spkiA}}},
		Remote: []vici.Auth{{Auth: "pubkey", ID: "192.0.2.7", Pubkeys: [][]byte{spkiB}}}}
	f.conns["sw-x509"] = vici.Conn{Name: "sw-x509",
		Local:  []vici.Auth{{Auth: "pubkey", ID: "CN=a", Certs: [][]byte{certA}}},
		Remote: []vici.Auth{{Auth: "pubkey", ID: "%any", CACerts: [][]byte{{1}}}}}
	f.certs = []vici.Cert{
		{Type: "PUBKEY", Subject: "192.0.2.1", HasPrivKey: true, Data: spkiA},
		{Type: "PUBKEY", Subject: "192.0.2.7", Data: spkiB},
		{Type: "X509", Subject: "192.0.2.7", Data: certC1}, // an altName match: the raw key wins
		{Type: "X509", Subject: "CN=a", HasPrivKey: true, Data: certA},
		{Type: "X509", Subject: "CN=b", Data: certB},
		{Type: "X509", Subject: "CN=c", Data: certC1},
		{Type: "X509", Subject: "CN=c", Data: certC2}, // two certificates, two keys: which one?
		{Type: "PUBKEY", Subject: "CN=d", Data: spkiC},
	}
	child := func(remote string) []vici.ChildSA {
		return []vici.ChildSA{{Name: "host", State: "INSTALLED", Protocol: "ESP", Mode: "TUNNEL", EncrAlg: "AES_GCM_16", EncrKeySize: 256,
			LocalTS: []string{"192.0.2.1/32"}, RemoteTS: []string{remote + "/32"}}}
	}
	f.sas = []vici.IKESA{
		{Name: "sw-raw", UniqueID: 11, RemoteID: "192.0.2.7", Children: child("192.0.2.7")},
		{Name: "sw-x509", UniqueID: 12, RemoteID: "CN=b", Children: child("192.0.2.8")},
		{Name: "sw-x509", UniqueID: 13, RemoteID: "CN=c", Children: child("192.0.2.9")},
	}
	for i := range f.sas {
		f.sas[i].Children[0].UniqueID = uint32(100 + i)
	}
	byRemote := func(snap plugins.TokenSnapshot, remote string) tokenapi.Peer {
		t.Helper()
		for _, sa := range snap.SAs {
			if sa.Peer.RemoteID == remote {
				return sa.Peer
			}
		}
		t.Fatalf("no SA with peer %s in %+v", remote, snap.SAs)
		return tokenapi.Peer{}
	}
	h := d.tokens
	for id, lines := range map[uint32][]string{
		12: {`  using certificate "CN=b"`, `  using trusted ca certificate "CN=CA"`, "authentication of 'CN=b' with ED25519 successful"},
		13: {`  using certificate "CN=c"`, `  using trusted ca certificate "CN=CA"`, "authentication of 'CN=c' with ED25519 successful"},
	} {
		for _, l := range lines {
			h.observe(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: id, Message: l}})
		}
	}
	pub := func(k []byte) tokenapi.PublicKey { return tokenapi.PublicKey{Algorithm: "ed25519", Data: k} }
	tests := []struct {
		sa        int
		peer, our tokenapi.PublicKey
		pinned    bool
		note      string
		method    string
	}{
		{0, pub(keyB), pub(keyA), true, "", "PRESHAREDKEY"},
		{1, pub(keyB), pub(keyA), false, "", "PKIX_INLINE"},
		{2, tokenapi.PublicKey{}, pub(keyA), false, "2 different keys match", "PKIX_INLINE"},
	}
	check := func(step string) {
		t.Helper()
		snap, err := h.TokenSAs(ctx)
		if err != nil || len(snap.SAs) != 3 {
			t.Fatalf("%s: TokenSAs = %+v, %v", step, snap, err)
		}
		for _, tc := range tests {
			p := byRemote(snap, f.sas[tc.sa].RemoteID)
			if !tokenapi.SameKey(p.PeerKey, tc.peer) || !tokenapi.SameKey(p.OurKey, tc.our) || p.Evidence.PinnedKey != tc.pinned ||
				(tc.note == "") != (p.KeyNote == "") || !strings.Contains(p.KeyNote, tc.note) {
				t.Errorf("%s: SA %d (%s): peer %x our %x pinned %v note %q", step, tc.sa, p.RemoteID, p.PeerKey.Data, p.OurKey.Data, p.Evidence.PinnedKey, p.KeyNote)
			}
			if m := tokenapi.DeriveAuthMethod(p).Method.String(); m != tc.method {
				t.Errorf("%s: SA %d: method %s, want %s", step, tc.sa, m, tc.method)
			}
		}
	}
	count := func(what string) int {
		f.mu.Lock()
		defer f.mu.Unlock()
		n := 0
		for _, c := range f.calls {
			if c == what {
				n++
			}
		}
		return n
	}
	f.calls = nil
	check("first")
	certs, conns := count("list-certs"), count("list-conns")
	// Generation moves (log lines, child events): the conns' keys and the
	// DNs' certificates are not read again.
	for range 5 {
		h.observe(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &f.sas[0]})
		check("after a child event")
	}
	if count("list-certs") != certs || count("list-conns") != conns || count("list-sas") != 1 {
		t.Errorf("5 rebuilds: list-certs %d -> %d, list-conns %d -> %d, list-sas %d", certs, count("list-certs"), conns, count("list-conns"), count("list-sas"))
	}
	// A new IKE_SA of a conn: its conn is read again (it may have been
	// reloaded), the others are not.
	h.observe(vici.Event{Kind: vici.EventIKEUpDown, Up: true, SA: &f.sas[0]})
	check("after ike up")
	if count("list-conns") != conns+1 {
		t.Errorf("IKE_SA up: list-conns %d, want %d", count("list-conns"), conns+1)
	}
	// An IKE rekey keeps the evidence: the new IKE_SA is not
	// authenticated again.
	old := f.sas[1]
	f.sas[1].UniqueID = 22
	h.observe(vici.Event{Kind: vici.EventIKERekey, Old: &old, SA: &f.sas[1]})
	check("after IKE rekey")
	// charon's certificate cache evicts hostb's certificate: the key read
	// after the authentication stays (the iToken must not change).
	f.mu.Lock()
	f.certs = slices.DeleteFunc(f.certs, func(c vici.Cert) bool { return c.Subject == "CN=b" })
	f.mu.Unlock()
	h.observe(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &f.sas[1]})
	check("certificate evicted from charon's cache")

	// list-certs fails: the pinned raw key's "using trusted certificate"
	// must not pass for PKIX trust, no key is claimed, and the conn is
	// read again at the next rebuild.
	h.observe(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: 11, Message: `  using trusted certificate "192.0.2.7"`}})
	h.observe(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{IKEID: 11, Message: "authentication of '192.0.2.7' with ED25519 successful"}})
	f.mu.Lock()
	f.certsErr = errors.New("charon busy")
	f.mu.Unlock()
	h.observe(vici.Event{Kind: vici.EventIKEUpDown, Up: true, SA: &f.sas[0]})
	snap, err := h.TokenSAs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	p := byRemote(snap, "192.0.2.7")
	if m := tokenapi.DeriveAuthMethod(p).Method.String(); m != "NONE" || len(p.PeerKey.Data) != 0 || !strings.Contains(p.KeyNote, "charon busy") {
		t.Errorf("list-certs failing: method %s, peer key %x, note %q", m, p.PeerKey.Data, p.KeyNote)
	}
	f.mu.Lock()
	f.certsErr = nil
	f.mu.Unlock()
	h.observe(vici.Event{Kind: vici.EventChildUpDown, Up: true, SA: &f.sas[0]})
	check("list-certs back")
}

func testEd25519(t *testing.T) (ed25519.PublicKey, []byte) {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pub, der
}

func testCert(t *testing.T, pub ed25519.PublicKey, isCA bool) []byte {
	t.Helper()
	_, signer, _ := ed25519.GenerateKey(rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "x"}, NotBefore: time.Now(),
		NotAfter: time.Now().Add(time.Hour), BasicConstraintsValid: true, IsCA: isCA}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, signer)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

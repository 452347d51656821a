package vici

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
)

// The integration tests drive two real charons (hosta and hostb of the e2e
// lab, kernel-libipsec datapath). They need root; CI runs them as root, so
// not being root is a failure, not a skip.

const (
	addrA = "192.0.2.11"
	addrB = "192.0.2.12"
	label = "system_u:object_r:ipsec_t:s0"
	psk   = "obol integration test secret"
)

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// recorder keeps every event of a stream so steps can wait for one.
type recorder struct {
	mu     sync.Mutex
	events []Event
	seen   int // events before this index are ignored (see mark)
	more   chan struct{}
	done   chan struct{}
}

func record(s *EventStream) *recorder {
	r := &recorder{more: make(chan struct{}, 1), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		for ev := range s.C {
			r.mu.Lock()
			r.events = append(r.events, ev)
			r.mu.Unlock()
			select {
			case r.more <- struct{}{}:
			default:
			}
		}
	}()
	return r
}

// mark makes later waits ignore what arrived so far.
func (r *recorder) mark() {
	r.mu.Lock()
	r.seen = len(r.events)
	r.mu.Unlock()
}

// wait returns the first event after the mark matching ok (the mark stays:
// charon's order of related events is not something to depend on).
func (r *recorder) wait(t *testing.T, what string, d time.Duration, ok func(Event) bool) Event {
	t.Helper()
	deadline := time.After(d)
	for {
		r.mu.Lock()
		for i := r.seen; i < len(r.events); i++ {
			if ev := r.events[i]; ok(ev) {
				r.mu.Unlock()
				return ev
			}
		}
		r.mu.Unlock()
		select {
		case <-r.more:
		case <-deadline:
			r.mu.Lock()
			var kinds []string
			for _, ev := range r.events[r.seen:] {
				kinds = append(kinds, string(ev.Kind))
			}
			r.mu.Unlock()
			t.Fatalf("no %s event within %s; got %v", what, d, kinds)
		}
	}
}

func updown(kind EventKind, conn string, up bool) func(Event) bool {
	return func(ev Event) bool { return ev.Kind == kind && ev.Up == up && ev.SA != nil && ev.SA.Name == conn }
}

// peer is one side of the integration test.
type peer struct {
	node      *lab.Node
	c         *Client
	ev        *recorder
	addr, pre string // own address; "a" or "b"
	key, pub  []byte // private key (PEM), public key (DER)
	other     *peer
}

func (p *peer) conns() []Conn {
	o := p.other
	return []Conn{
		{
			Name: "psk", Version: 2, LocalAddrs: []string{p.addr}, RemoteAddrs: []string{o.addr},
			Proposals: []string{"aes256-sha256-x25519"},
			Local:     []Auth{{Auth: "psk", ID: p.pre + ".psk.test"}},
			Remote:    []Auth{{Auth: "psk", ID: o.pre + ".psk.test"}},
			Children: []Child{{Name: "psk-net", Mode: "tunnel", LocalTS: []string{p.addr + "/32"}, RemoteTS: []string{o.addr + "/32"},
				ESPProposals: []string{"aes256gcm16"}}},
		},
		{
			Name: "pk", Version: 2, LocalAddrs: []string{p.addr}, RemoteAddrs: []string{o.addr},
			Proposals: []string{"aes128-sha384-ecp256"},
			Local:     []Auth{{Auth: "pubkey", ID: p.addr, Pubkeys: [][]byte{p.pub}}},
			Remote:    []Auth{{Auth: "pubkey", ID: o.addr, Pubkeys: [][]byte{o.pub}}},
			Children: []Child{{Name: "pk-net", Mode: "tunnel", LocalTS: []string{p.addr + "/32"}, RemoteTS: []string{o.addr + "/32"},
				ESPProposals: []string{"aes128gcm16-x25519"}, RekeyTime: time.Hour, Label: label, LabelMode: "simple"}},
		},
	}
}

// load puts credentials and conns into the peer's charon.
func (p *peer) load(ctx context.Context, t *testing.T) {
	t.Helper()
	id, err := p.c.LoadKey(ctx, Key{Type: "ed25519", Data: p.key})
	if err != nil {
		t.Fatal(err)
	}
	if len(id) != 40 {
		t.Errorf("key id %q: want 40 hex digits", id)
	}
	if err := p.c.LoadShared(ctx, Shared{ID: "obol-test-psk", Type: "ike", Data: []byte(psk),
		Owners: []string{"a.psk.test", "b.psk.test"}}); err != nil {
		t.Fatal(err)
	}
	for _, conn := range p.conns() {
		if err := p.c.LoadConn(ctx, conn); err != nil {
			t.Fatal(err)
		}
	}
}

// genKey makes an Ed25519 key pair with strongSwan's pki. It runs on the
// host, not through Node.Exec: that mixes pki's stderr (TPM plugin noise)
// into the key.
func genKey(ctx context.Context, t *testing.T, dir string) (key, pub []byte) {
	t.Helper()
	key, err := exec.CommandContext(ctx, "pki", "--gen", "--type", "ed25519", "--outform", "pem").Output()
	if err != nil {
		t.Fatalf("pki --gen: %v", err)
	}
	f := filepath.Join(dir, "test.key")
	if err := os.WriteFile(f, key, 0o600); err != nil {
		t.Fatal(err)
	}
	pub, err = exec.CommandContext(ctx, "pki", "--pub", "--in", f, "--outform", "der").Output()
	if err != nil {
		t.Fatalf("pki --pub: %v", err)
	}
	return key, pub
}

func one(t *testing.T, sas []IKESA, conn string) IKESA {
	t.Helper()
	var found []IKESA
	for _, sa := range sas {
		if sa.Name == conn {
			found = append(found, sa)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d IKE_SAs of %s, want 1: %+v", len(found), conn, sas)
	}
	return found[0]
}

// checkSA checks one side's view of an established SA.
func checkSA(t *testing.T, p *peer, sa IKESA, initiator bool, localID, remoteID string) ChildSA {
	t.Helper()
	if sa.State != "ESTABLISHED" || sa.Version != 2 || sa.Initiator != initiator {
		t.Errorf("%s: state %s, version %d, initiator %v", sa.Name, sa.State, sa.Version, sa.Initiator)
	}
	if sa.LocalHost.String() != p.addr || sa.RemoteHost.String() != p.other.addr || sa.LocalID != localID || sa.RemoteID != remoteID {
		t.Errorf("%s: %s[%s] ... %s[%s]", sa.Name, sa.LocalHost, sa.LocalID, sa.RemoteHost, sa.RemoteID)
	}
	// libipsec forces UDP encapsulation: IKE moves to 4500 as well.
	if sa.LocalPort != 4500 || sa.RemotePort != 4500 || !sa.NATAny {
		t.Errorf("%s: ports %d/%d, nat-any %v; want 4500 and a (faked) NAT", sa.Name, sa.LocalPort, sa.RemotePort, sa.NATAny)
	}
	if sa.InitiatorSPI == "" || sa.ResponderSPI == "" || sa.Established < 0 || sa.UniqueID == 0 {
		t.Errorf("%s: %+v", sa.Name, sa)
	}
	if len(sa.Children) != 1 {
		t.Fatalf("%s: %d children, want 1: %+v", sa.Name, len(sa.Children), sa.Children)
	}
	c := sa.Children[0]
	if c.State != "INSTALLED" || c.Mode != "TUNNEL" || c.Protocol != "ESP" || !c.Encap || c.SPIIn == "" || c.SPIOut == "" {
		t.Errorf("%s child %s: %+v", sa.Name, c.Name, c)
	}
	if !slices.Equal(c.LocalTS, []string{p.addr + "/32"}) || !slices.Equal(c.RemoteTS, []string{p.other.addr + "/32"}) {
		t.Errorf("%s child %s: TS %v === %v", sa.Name, c.Name, c.LocalTS, c.RemoteTS)
	}
	return c
}

func TestIntegration(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("vici integration tests need root (network namespaces, charon): run them as root, e.g. `sudo go test ./vici/`")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l, err := lab.Start(ctx, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := l.Close(); err != nil {
			t.Error(err)
		}
		if left := l.Leftovers(); len(left) > 0 {
			t.Errorf("lab leftovers: %v", left)
		}
	}()
	checkLeaks(t) // after every stream and client below has been closed

	log := testLog(t)
	opts := Options{Logger: log}
	a := &peer{node: l.Node(lab.HostA), addr: addrA, pre: "a"}
	b := &peer{node: l.Node(lab.HostB), addr: addrB, pre: "b"}
	a.other, b.other = b, a
	if a.node.Addr.String() != addrA || b.node.Addr.String() != addrB {
		t.Fatalf("lab addresses %s, %s", a.node.Addr, b.node.Addr)
	}
	evCtx, stopEvents := context.WithCancel(ctx)
	defer stopEvents()
	for _, p := range []*peer{a, b} {
		if p.c, err = Dial(ctx, p.node.VICI, opts); err != nil {
			t.Fatal(err)
		}
		defer p.c.Close()
		p.ev = record(WatchEvents(evCtx, p.node.VICI, opts))
		defer func() { <-p.ev.done }() // closed after stopEvents
		defer stopEvents()
		p.key, p.pub = genKey(ctx, t, t.TempDir())
	}

	step := func(name string, f func(t *testing.T)) {
		if !t.Run(name, f) {
			t.FailNow()
		}
	}

	step("version and stats", func(t *testing.T) {
		v, err := a.c.Version(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if v.Daemon == "" || !strings.HasPrefix(v.Version, "5.") && !strings.HasPrefix(v.Version, "6.") || v.Sysname != "Linux" {
			t.Errorf("version %+v", v)
		}
		st, err := a.c.Stats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(st.Plugins, "kernel-libipsec") || !slices.Contains(st.Plugins, "vici") || st.IKESAs != 0 || st.WorkersTotal == 0 {
			t.Errorf("stats %+v", st)
		}
		if age := time.Since(st.Since); age < -2*time.Second || age > time.Minute || st.Uptime > time.Minute {
			t.Errorf("charon started %s (%s ago), uptime %s", st.Since, age, st.Uptime)
		}
		t.Logf("charon %s %s on %s %s; %d plugins; workers %d/%d idle", v.Daemon, v.Version, v.Sysname, v.Release, len(st.Plugins), st.WorkersIdle, st.WorkersTotal)
	})

	step("connected", func(t *testing.T) {
		for _, p := range []*peer{a, b} {
			ev := p.ev.wait(t, "connected", 5*time.Second, func(ev Event) bool { return ev.Kind == EventConnected })
			if len(ev.SAs) != 0 {
				t.Errorf("fresh charon lists SAs: %+v", ev.SAs)
			}
		}
	})

	step("load", func(t *testing.T) {
		for _, p := range []*peer{a, b} {
			p.load(ctx, t)
		}
		names, err := a.c.ConnNames(ctx)
		if err != nil {
			t.Fatal(err)
		}
		slices.Sort(names)
		if !slices.Equal(names, []string{"pk", "psk"}) {
			t.Errorf("conns %v", names)
		}
	})

	step("list conns", func(t *testing.T) {
		conns, err := a.c.ListConns(ctx, "")
		if err != nil {
			t.Fatal(err)
		}
		byName := map[string]ConnInfo{}
		for _, c := range conns {
			byName[c.Name] = c
		}
		pk, ps := byName["pk"], byName["psk"]
		if pk.Version != "IKEv2" || !slices.Equal(pk.LocalAddrs, []string{addrA}) || !slices.Equal(pk.RemoteAddrs, []string{addrB}) {
			t.Errorf("pk: %+v", pk)
		}
		if len(pk.Local) != 1 || pk.Local[0].Class != "public key" || pk.Local[0].ID != addrA ||
			len(pk.Remote) != 1 || pk.Remote[0].Class != "public key" || pk.Remote[0].ID != addrB {
			t.Errorf("pk auth: local %+v remote %+v", pk.Local, pk.Remote)
		}
		if len(ps.Local) != 1 || ps.Local[0].Class != "pre-shared key" || ps.Local[0].ID != "a.psk.test" || ps.Remote[0].ID != "b.psk.test" {
			t.Errorf("psk auth: local %+v remote %+v", ps.Local, ps.Remote)
		}
		if len(pk.Children) != 1 {
			t.Fatalf("pk children %+v", pk.Children)
		}
		ch := pk.Children[0]
		if ch.Name != "pk-net" || ch.Mode != "TUNNEL" || ch.Label != label || ch.RekeyTime != time.Hour ||
			!slices.Equal(ch.LocalTS, []string{addrA + "/32"}) || !slices.Equal(ch.RemoteTS, []string{addrB + "/32"}) {
			t.Errorf("pk child %+v", ch)
		}
		only, err := a.c.ListConns(ctx, "psk")
		if err != nil || len(only) != 1 || only[0].Name != "psk" {
			t.Errorf("ListConns(psk): %+v, %v", only, err)
		}
	})

	step("psk up and down", func(t *testing.T) {
		a.ev.mark()
		start := time.Now()
		if err := a.c.Initiate(ctx, "psk", "psk-net"); err != nil {
			t.Fatal(err)
		}
		t.Logf("initiate psk took %s", time.Since(start))
		a.ev.wait(t, "ike-updown up", 2*time.Second, updown(EventIKEUpDown, "psk", true))
		up := a.ev.wait(t, "child-updown up", 2*time.Second, updown(EventChildUpDown, "psk", true))
		if len(up.SA.Children) != 1 || up.SA.Children[0].Name != "psk-net" {
			t.Errorf("child-updown children %+v", up.SA.Children)
		}
		sas, err := a.c.ListSAs(ctx, SASelector{IKE: "psk"})
		if err != nil {
			t.Fatal(err)
		}
		sa := one(t, sas, "psk")
		c := checkSA(t, a, sa, true, "a.psk.test", "b.psk.test")
		if sa.EncrAlg != "AES_CBC" || sa.EncrKeySize != 256 || sa.IntegAlg != "HMAC_SHA2_256_128" || sa.PRFAlg != "PRF_HMAC_SHA2_256" || sa.DHGroup != "CURVE_25519" {
			t.Errorf("IKE algorithms %s/%d %s %s %s", sa.EncrAlg, sa.EncrKeySize, sa.IntegAlg, sa.PRFAlg, sa.DHGroup)
		}
		if c.EncrAlg != "AES_GCM_16" || c.EncrKeySize != 256 || c.IntegAlg != "" || c.Label != "" {
			t.Errorf("ESP %s/%d %s, label %q", c.EncrAlg, c.EncrKeySize, c.IntegAlg, c.Label)
		}
		sas, err = b.c.ListSAs(ctx, SASelector{IKE: "psk"})
		if err != nil {
			t.Fatal(err)
		}
		checkSA(t, b, one(t, sas, "psk"), false, "b.psk.test", "a.psk.test")

		a.ev.mark()
		if err := a.c.Terminate(ctx, SASelector{IKE: "psk"}); err != nil {
			t.Fatal(err)
		}
		a.ev.wait(t, "child-updown down", 2*time.Second, updown(EventChildUpDown, "psk", false))
		a.ev.wait(t, "ike-updown down", 2*time.Second, updown(EventIKEUpDown, "psk", false))
		if sas, err := a.c.ListSAs(ctx, SASelector{}); err != nil || len(sas) != 0 {
			t.Errorf("after terminate: %+v, %v", sas, err)
		}
	})

	var child ChildSA // pk-net as hosta sees it
	step("pubkey with label", func(t *testing.T) {
		if err := a.c.Initiate(ctx, "pk", "pk-net"); err != nil {
			t.Fatal(err)
		}
		sas, err := a.c.ListSAs(ctx, SASelector{IKE: "pk", Child: "pk-net"})
		if err != nil {
			t.Fatal(err)
		}
		sa := one(t, sas, "pk")
		child = checkSA(t, a, sa, true, addrA, addrB)
		if sa.EncrAlg != "AES_CBC" || sa.EncrKeySize != 128 || sa.IntegAlg != "HMAC_SHA2_384_192" || sa.DHGroup != "ECP_256" {
			t.Errorf("IKE algorithms %s/%d %s %s", sa.EncrAlg, sa.EncrKeySize, sa.IntegAlg, sa.DHGroup)
		}
		if child.Label != label || child.EncrAlg != "AES_GCM_16" || child.EncrKeySize != 128 {
			t.Errorf("child label %q, ESP %s/%d", child.Label, child.EncrAlg, child.EncrKeySize)
		}
		if child.RekeyIn <= 0 || child.RekeyIn > time.Hour || child.LifeIn < child.RekeyIn || child.InstallTime < 0 {
			t.Errorf("child times: rekey in %s, life %s, installed %s", child.RekeyIn, child.LifeIn, child.InstallTime)
		}
		sas, err = b.c.ListSAs(ctx, SASelector{IKE: "pk"})
		if err != nil {
			t.Fatal(err)
		}
		if bc := checkSA(t, b, one(t, sas, "pk"), false, addrB, addrA); bc.Label != label {
			t.Errorf("hostb child label %q", bc.Label)
		}

		// A stream started now begins with the live SAs.
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		s := WatchEvents(sctx, b.node.VICI, opts)
		ev := next(t, s.C, 2*time.Second)
		if ev.Kind != EventConnected {
			t.Fatalf("first event %+v", ev)
		}
		if bc := checkSA(t, b, one(t, ev.SAs, "pk"), false, addrB, addrA); bc.Label != label {
			t.Errorf("EventConnected child label %q", bc.Label)
		}
		stop()
		for range s.C {
		}
	})

	step("ping counts", func(t *testing.T) {
		before := child
		if out, err := a.node.Exec(ctx, "ping", "-c", "3", "-i", "0.2", "-W", "2", addrB); err != nil {
			t.Fatalf("ping through the tunnel: %v\n%s", err, out)
		}
		sas, err := a.c.ListSAs(ctx, SASelector{ChildID: before.UniqueID})
		if err != nil {
			t.Fatal(err)
		}
		after := one(t, sas, "pk").Children[0]
		if after.PacketsOut < before.PacketsOut+3 || after.PacketsIn < before.PacketsIn+3 ||
			after.BytesOut <= before.BytesOut || after.BytesIn <= before.BytesIn {
			t.Errorf("counters before %d/%d packets %d/%d bytes, after %d/%d packets %d/%d bytes",
				before.PacketsIn, before.PacketsOut, before.BytesIn, before.BytesOut,
				after.PacketsIn, after.PacketsOut, after.BytesIn, after.BytesOut)
		}
		if after.UseIn < 0 || after.UseIn > 5*time.Second || after.UseOut < 0 || after.UseOut > 5*time.Second {
			t.Errorf("use-in %s, use-out %s after a ping", after.UseIn, after.UseOut)
		}
		t.Logf("after ping: in %d packets/%d bytes, out %d/%d", after.PacketsIn, after.BytesIn, after.PacketsOut, after.BytesOut)
		child = after
	})

	step("rekey child", func(t *testing.T) {
		a.ev.mark()
		if err := a.c.Rekey(ctx, SASelector{ChildID: child.UniqueID}, false); err != nil {
			t.Fatal(err)
		}
		ev := a.ev.wait(t, "child-rekey", 5*time.Second, func(ev Event) bool { return ev.Kind == EventChildRekey })
		old, nw := ev.Old.Children[0], ev.SA.Children[0]
		if ev.SA.Name != "pk" || old.UniqueID != child.UniqueID || nw.UniqueID == child.UniqueID || old.Name != "pk-net" || nw.Name != "pk-net" {
			t.Errorf("child-rekey %s: old #%d, new #%d (was #%d)", ev.SA.Name, old.UniqueID, nw.UniqueID, child.UniqueID)
		}
		if nw.SPIIn == old.SPIIn || nw.SPIOut == old.SPIOut || nw.Label != label {
			t.Errorf("child-rekey SPIs %s/%s -> %s/%s, label %q", old.SPIIn, old.SPIOut, nw.SPIIn, nw.SPIOut, nw.Label)
		}
		// charon keeps the old CHILD_SA listed (REKEYED, then DELETED)
		// for delete_rekeyed_delay (5 s) after a rekey; the new one is INSTALLED.
		sas, err := a.c.ListSAs(ctx, SASelector{IKE: "pk"})
		if err != nil {
			t.Fatal(err)
		}
		var now ChildSA
		for _, c := range one(t, sas, "pk").Children {
			switch c.UniqueID {
			case nw.UniqueID:
				now = c
			case child.UniqueID:
				if c.State == "INSTALLED" {
					t.Errorf("old CHILD_SA #%d still INSTALLED after the rekey", c.UniqueID)
				}
			default:
				t.Errorf("unexpected CHILD_SA %+v", c)
			}
		}
		if now.State != "INSTALLED" || now.SPIIn == child.SPIIn || now.SPIOut == child.SPIOut || now.Label != label {
			t.Errorf("after rekey list-sas shows #%d %s %s/%s label %q; before #%d %s/%s",
				now.UniqueID, now.State, now.SPIIn, now.SPIOut, now.Label, child.UniqueID, child.SPIIn, child.SPIOut)
		}
		t.Logf("CHILD_SA #%d (%s/%s) rekeyed to #%d (%s/%s), dh %s", child.UniqueID, child.SPIIn, child.SPIOut, now.UniqueID, now.SPIIn, now.SPIOut, now.DHGroup)
		child = now
	})

	step("rekey ike", func(t *testing.T) {
		sas, err := a.c.ListSAs(ctx, SASelector{IKE: "pk"})
		if err != nil {
			t.Fatal(err)
		}
		before := one(t, sas, "pk")
		b.ev.mark()
		if err := a.c.Rekey(ctx, SASelector{IKEID: before.UniqueID}, false); err != nil {
			t.Fatal(err)
		}
		ev := b.ev.wait(t, "ike-rekey on hostb", 5*time.Second, func(ev Event) bool { return ev.Kind == EventIKERekey })
		if ev.Old.Name != "pk" || ev.SA.Name != "pk" || ev.Old.UniqueID == ev.SA.UniqueID || ev.Old.InitiatorSPI == ev.SA.InitiatorSPI {
			t.Errorf("ike-rekey old #%d %s, new #%d %s", ev.Old.UniqueID, ev.Old.InitiatorSPI, ev.SA.UniqueID, ev.SA.InitiatorSPI)
		}
	})

	step("charon restart", func(t *testing.T) {
		a.ev.mark()
		if err := a.node.KillCharon(); err != nil {
			t.Fatal(err)
		}
		ev := a.ev.wait(t, "disconnected", 2*time.Second, func(ev Event) bool { return ev.Kind == EventDisconnected })
		t.Logf("disconnected: %v", ev.Err)
		if _, err := a.c.Version(ctx); !errors.Is(err, ErrUnavailable) {
			t.Errorf("Version with charon dead: %v, want ErrUnavailable", err)
		}
		time.Sleep(2500 * time.Millisecond) // a longer outage: the stream's backoff reaches its cap
		if err := a.node.StartCharon(ctx); err != nil {
			t.Fatal(err)
		}
		answering := time.Now()
		ev = a.ev.wait(t, "connected", 2*time.Second, func(ev Event) bool { return ev.Kind == EventConnected })
		t.Logf("event stream resynced %s after charon answered", time.Since(answering).Round(time.Millisecond))
		if len(ev.SAs) != 0 {
			t.Errorf("a restarted charon lists SAs: %+v", ev.SAs)
		}
		// The same Client, no new Dial.
		st, err := a.c.Stats(ctx)
		if err != nil {
			t.Fatalf("Stats after restart: %v", err)
		}
		if st.Uptime > 10*time.Second {
			t.Errorf("uptime %s after a restart", st.Uptime)
		}
		a.load(ctx, t)
		a.ev.mark()
		if err := a.c.Initiate(ctx, "pk", "pk-net"); err != nil {
			t.Fatal(err)
		}
		a.ev.wait(t, "child-updown up after restart", 2*time.Second, updown(EventChildUpDown, "pk", true))
		sas, err := a.c.ListSAs(ctx, SASelector{})
		if err != nil {
			t.Fatal(err)
		}
		child = checkSA(t, a, one(t, sas, "pk"), true, addrA, addrB)
	})

	step("initiate failure explains", func(t *testing.T) {
		// A conn to a peer that does not exist: charon gives up at our
		// deadline and the error carries its reason and log lines.
		bad := Conn{Name: "nowhere", Version: 2, LocalAddrs: []string{addrA}, RemoteAddrs: []string{"192.0.2.99"},
			KeyingTries: 1, Local: []Auth{{Auth: "psk", ID: "a.psk.test"}}, Remote: []Auth{{Auth: "psk", ID: "x.psk.test"}},
			Children: []Child{{Name: "nowhere-net", LocalTS: []string{addrA + "/32"}, RemoteTS: []string{"192.0.2.99/32"}}}}
		if err := a.c.LoadConn(ctx, bad); err != nil {
			t.Fatal(err)
		}
		ictx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		err := a.c.Initiate(ictx, "nowhere", "nowhere-net")
		var ce *CommandError
		if !errors.As(err, &ce) || ce.Msg == "" || len(ce.Log) == 0 {
			t.Fatalf("error %v (%T)", err, err)
		}
		t.Log(err)
		if err := a.c.Terminate(ctx, SASelector{IKE: "nowhere"}); err != nil {
			t.Log(err) // may be gone already
		}
		if err := a.c.UnloadConn(ctx, "nowhere"); err != nil {
			t.Fatal(err)
		}
	})

	step("unload", func(t *testing.T) {
		if err := a.c.UnloadConn(ctx, "psk"); err != nil {
			t.Fatal(err)
		}
		names, err := a.c.ConnNames(ctx)
		if err != nil || !slices.Equal(names, []string{"pk"}) {
			t.Errorf("after unloading psk: %v, %v", names, err)
		}
		err = a.c.UnloadConn(ctx, "psk")
		var ce *CommandError
		if !errors.As(err, &ce) {
			t.Errorf("unloading psk twice: %v", err)
		}
		if err := a.c.UnloadShared(ctx, "obol-test-psk"); err != nil {
			t.Error(err)
		}
		// pk still works.
		if sas, err := a.c.ListSAs(ctx, SASelector{IKE: "pk"}); err != nil || len(sas) != 1 {
			t.Errorf("pk after unloading psk: %d SAs, %v", len(sas), err)
		}
	})

	step("terminate", func(t *testing.T) {
		a.ev.mark()
		if err := a.c.Terminate(ctx, SASelector{IKE: "pk"}); err != nil {
			t.Fatal(err)
		}
		a.ev.wait(t, "ike-updown down", 2*time.Second, updown(EventIKEUpDown, "pk", false))
		err := a.c.Terminate(ctx, SASelector{IKE: "pk"})
		if err == nil || !strings.Contains(err.Error(), "no matching SAs") {
			t.Errorf("terminating nothing: %v", err)
		}
	})

	step("no events lost", func(t *testing.T) {
		for _, p := range []*peer{a, b} {
			p.ev.mu.Lock()
			for _, ev := range p.ev.events {
				if ev.Kind == EventLost {
					t.Errorf("%s: %+v", p.node.Name, ev)
				}
			}
			p.ev.mu.Unlock()
		}
	})
}

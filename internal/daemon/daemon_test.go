package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/internal/config"
	"github.com/obol-ipsec/obol/internal/control"
	"github.com/obol-ipsec/obol/internal/xfrm"
	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/vici"
)

// fakeCharon keeps conns, secrets and keys like charon does, and records calls.
type fakeCharon struct {
	mu      sync.Mutex
	conns   map[string]vici.Conn
	shared  map[string]vici.Shared
	keys    map[string]bool
	sas     []vici.IKESA
	calls   []string
	down    bool
	plugins []string
	refuse  map[string]string // child -> the notify charon reports
	certs   []vici.Cert       // list-certs; Subject filters X.509 entries too
	// certsErr makes list-certs fail alone.
	certsErr error
	// listHook runs inside list-sas, after the listing was taken (events
	// charon sends while a listing is on its way).
	listHook func()
}

func newFake() *fakeCharon {
	return &fakeCharon{conns: map[string]vici.Conn{}, shared: map[string]vici.Shared{}, keys: map[string]bool{}, plugins: []string{"kernel-netlink", "kernel-libipsec", "vici"}}
}

var errDown = errors.New("connection refused")

func (f *fakeCharon) rec(s string) error {
	f.calls = append(f.calls, s)
	if f.down {
		return errDown
	}
	return nil
}

func (f *fakeCharon) Version(context.Context) (vici.Version, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return vici.Version{Daemon: "charon-systemd", Version: "5.9.8"}, f.rec("version")
}
func (f *fakeCharon) Stats(context.Context) (vici.Stats, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return vici.Stats{Uptime: time.Minute, Plugins: f.plugins, IKESAs: len(f.sas)}, f.rec("stats")
}
func (f *fakeCharon) LoadConn(_ context.Context, c vici.Conn) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.rec("load-conn " + c.Name); err != nil {
		return err
	}
	f.conns[c.Name] = c
	return nil
}
func (f *fakeCharon) UnloadConn(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.rec("unload-conn " + name); err != nil {
		return err
	}
	delete(f.conns, name)
	return nil
}
func (f *fakeCharon) ConnNames(context.Context) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var n []string
	for k := range f.conns {
		n = append(n, k)
	}
	sort.Strings(n)
	return n, f.rec("get-conns")
}
func (f *fakeCharon) ListSAs(_ context.Context, sel vici.SASelector) ([]vici.IKESA, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []vici.IKESA
	for _, sa := range f.sas {
		if sel.IKE == "" || sa.Name == sel.IKE {
			out = append(out, sa)
		}
	}
	if f.listHook != nil {
		f.listHook()
	}
	return out, f.rec("list-sas")
}

func (f *fakeCharon) ListCerts(_ context.Context, filter vici.CertFilter) ([]vici.Cert, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.certsErr != nil {
		f.calls = append(f.calls, "list-certs")
		return nil, f.certsErr
	}
	var out []vici.Cert
	for _, c := range f.certs {
		if (filter.Type == "" || filter.Type == "ANY" || filter.Type == c.Type) && (filter.Subject == "" || filter.Subject == c.Subject) {
			out = append(out, c)
		}
	}
	return out, f.rec("list-certs")
}

func (f *fakeCharon) ListConns(_ context.Context, name string) ([]vici.ConnInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	// As charon: a round's certs and pubkeys are listed by subject (the
	// round's ID for raw keys; the fake uses the ID for certificates too).
	round := func(a vici.Auth) vici.AuthInfo {
		class := map[string]string{"psk": "pre-shared key", "pubkey": "public key"}[a.Auth]
		ai := vici.AuthInfo{Class: class, ID: a.ID}
		for range len(a.Pubkeys) + len(a.Certs) {
			ai.Certs = append(ai.Certs, a.ID)
		}
		return ai
	}
	info := func(c vici.Conn) vici.ConnInfo {
		ci := vici.ConnInfo{Name: c.Name, LocalAddrs: c.LocalAddrs, RemoteAddrs: c.RemoteAddrs}
		for _, a := range c.Local {
			ci.Local = append(ci.Local, round(a))
		}
		for _, a := range c.Remote {
			ci.Remote = append(ci.Remote, round(a))
		}
		for _, ch := range c.Children {
			ci.Children = append(ci.Children, vici.ChildInfo{Name: ch.Name, Mode: ch.Mode, LocalTS: ch.LocalTS, RemoteTS: ch.RemoteTS})
		}
		return ci
	}
	if name == "" { // all conns, as charon lists them
		var out []vici.ConnInfo
		for _, n := range slices.Sorted(maps.Keys(f.conns)) {
			out = append(out, info(f.conns[n]))
		}
		return out, f.rec("list-conns")
	}
	c, ok := f.conns[name]
	if !ok {
		return nil, f.rec("list-conns")
	}
	return []vici.ConnInfo{info(c)}, f.rec("list-conns")
}

func (f *fakeCharon) Initiate(_ context.Context, ike, child string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.rec("initiate " + ike + "/" + child); err != nil {
		return err
	}
	if why, ok := f.refuse[child]; ok {
		return errors.New("vici: initiate " + child + ": CHILD_SA failed: " + why)
	}
	return nil
}

func (f *fakeCharon) Terminate(_ context.Context, sel vici.SASelector) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sas = slices.DeleteFunc(f.sas, func(sa vici.IKESA) bool { return sa.UniqueID == sel.IKEID })
	return f.rec("terminate")
}
func (f *fakeCharon) LoadShared(_ context.Context, s vici.Shared) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shared[s.ID] = s
	return f.rec("load-shared " + s.ID)
}
func (f *fakeCharon) UnloadShared(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.shared, id)
	return f.rec("unload-shared " + id)
}
func (f *fakeCharon) LoadKey(_ context.Context, k vici.Key) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.keys["key1"] = true
	return "key1", f.rec("load-key")
}
func (f *fakeCharon) UnloadKey(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.keys, id)
	return f.rec("unload-key " + id)
}

// restart makes the fake forget everything, like a new charon process.
func (f *fakeCharon) restart() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.conns = map[string]vici.Conn{"swanctl-site": {Name: "swanctl-site"}}
	f.shared, f.keys, f.sas = map[string]vici.Shared{}, map[string]bool{}, nil
}

func (f *fakeCharon) names() []string {
	n, _ := f.ConnNames(context.Background())
	return n
}

func testConfig(t testing.TB, conns string) *config.Config {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "psk"), []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "obold.toml")
	cfg, err := config.Parse(path, []byte(conns))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

const twoConns = `
[[conn]]
name = "a"
psk_file = "psk"
local_addrs = ["192.0.2.1"]
  [conn.local]
  auth = "psk"
  id = "192.0.2.1"
  [conn.remote]
  auth = "psk"
  id = "192.0.2.2"
  [[conn.child]]
  name = "net"
  local_ts = ["10.1.0.0/24"]
  remote_ts = ["10.2.0.0/24"]
[[conn]]
name = "b"
psk_file = "psk"
  [conn.local]
  auth = "psk"
  [conn.remote]
  auth = "psk"
  [[conn.child]]
  name = "net"
`

func newTestDaemon(t *testing.T, cfg *config.Config, f *fakeCharon) *Daemon {
	return New(cfg, f, plugins.Modules{XFRM: &xfrm.Checker{}}, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func TestReconcileOwnsOnlyPrefixed(t *testing.T) {
	f := newFake()
	f.conns["swanctl-site"] = vici.Conn{Name: "swanctl-site"}
	f.conns["obol-stale"] = vici.Conn{Name: "obol-stale"} // left by an earlier obold
	d := newTestDaemon(t, testConfig(t, twoConns), f)
	ctx := context.Background()
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := f.names(), []string{"obol-a", "obol-b", "swanctl-site"}; !slices.Equal(got, want) {
		t.Fatalf("conns = %v, want %v", got, want)
	}
	if s := f.shared["obol-a"]; string(s.Data) != "secret" || !slices.Equal(s.Owners, []string{"192.0.2.1", "192.0.2.2"}) {
		t.Errorf("shared = %+v", s)
	}
	if c := f.conns["obol-a"]; c.Children[0].RemoteTS[0] != "10.2.0.0/24" || c.LocalAddrs[0] != "192.0.2.1" {
		t.Errorf("conn = %+v", c)
	}
	// A second reconcile with nothing changed loads nothing.
	f.calls = nil
	if err := d.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	for _, c := range f.calls {
		if strings.HasPrefix(c, "load") || strings.HasPrefix(c, "unload") {
			t.Errorf("idle reconcile called %s", c)
		}
	}
	// The guard holds even if asked directly.
	if err := d.unloadOwned(ctx, "swanctl-site"); err == nil {
		t.Error("unloadOwned accepted a conn without the prefix")
	}
	if _, ok := f.conns["swanctl-site"]; !ok {
		t.Fatal("swanctl's conn was removed")
	}
}

func TestReloadAndStop(t *testing.T) {
	f := newFake()
	f.conns["swanctl-site"] = vici.Conn{Name: "swanctl-site"}
	d := newTestDaemon(t, testConfig(t, twoConns), f)
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan vici.Event, 4)
	events <- vici.Event{Kind: vici.EventConnected, Time: time.Now()}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, events) }()
	waitFor(t, func() bool { return len(f.names()) == 3 })

	// Reload: b removed, a changed.
	cfg := testConfig(t, strings.Replace(strings.SplitN(twoConns, "[[conn]]\nname = \"b\"", 2)[0], "10.2.0.0/24", "10.3.0.0/24", 1))
	if err := d.Reload(context.Background(), cfg, plugins.Modules{XFRM: &xfrm.Checker{}}); err != nil {
		t.Fatal(err)
	}
	if got := f.names(); !slices.Equal(got, []string{"obol-a", "swanctl-site"}) {
		t.Fatalf("after reload: %v", got)
	}
	if ts := f.conns["obol-a"].Children[0].RemoteTS[0]; ts != "10.3.0.0/24" {
		t.Errorf("changed conn not reloaded: %s", ts)
	}
	if _, ok := f.shared["obol-b"]; ok {
		t.Error("secret of removed conn still loaded")
	}
	f.sas = []vici.IKESA{{Name: "obol-a", UniqueID: 7}, {Name: "swanctl-site", UniqueID: 8}}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := f.names(); !slices.Equal(got, []string{"swanctl-site"}) {
		t.Fatalf("after stop: %v", got)
	}
	if len(f.sas) != 1 || f.sas[0].Name != "swanctl-site" {
		t.Errorf("stop terminated the wrong SAs: %+v", f.sas)
	}
	if len(f.shared) != 0 {
		t.Errorf("secrets left: %v", f.shared)
	}
}

func TestStopLeave(t *testing.T) {
	f := newFake()
	cfg := testConfig(t, "[obold]\non_stop = \"leave\"\n"+twoConns)
	d := newTestDaemon(t, cfg, f)
	ctx, cancel := context.WithCancel(context.Background())
	events := make(chan vici.Event, 1)
	events <- vici.Event{Kind: vici.EventConnected}
	done := make(chan error, 1)
	go func() { done <- d.Run(ctx, events) }()
	waitFor(t, func() bool { return len(f.names()) == 2 })
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(f.names()) != 2 {
		t.Fatalf("on_stop=leave removed conns: %v", f.names())
	}
}

func TestResyncAfterCharonRestart(t *testing.T) {
	f := newFake()
	d := newTestDaemon(t, testConfig(t, twoConns), f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan vici.Event, 4)
	events <- vici.Event{Kind: vici.EventConnected}
	go func() { _ = d.Run(ctx, events) }()
	waitFor(t, func() bool { return len(f.names()) == 2 })

	f.restart()
	events <- vici.Event{Kind: vici.EventDisconnected, Err: errDown}
	waitFor(t, func() bool { return !d.Status(ctx).Charon.Connected })
	events <- vici.Event{Kind: vici.EventConnected}
	waitFor(t, func() bool { return len(f.names()) == 3 })
	st := d.Status(ctx)
	if !st.Charon.Connected || st.Obold.Reconnects != 1 || st.Charon.Datapath != "userspace" {
		t.Errorf("status after restart = %+v", st)
	}
	if !slices.Equal(st.Obold.OwnedConns, []string{"obol-a", "obol-b"}) {
		t.Errorf("owned = %v", st.Obold.OwnedConns)
	}
	if st.Obold.Modules["xfrm"] != "built-in" || st.Obold.Modules["tokenapi"] != "off" {
		t.Errorf("modules = %v", st.Obold.Modules)
	}
	if st.Obold.Events["disconnected"] != 1 || st.Obold.Events["connected"] != 2 {
		t.Errorf("event counts = %v", st.Obold.Events)
	}
}

func TestSAsOwnerAndCharonDown(t *testing.T) {
	f := newFake()
	f.sas = []vici.IKESA{{Name: "obol-a"}, {Name: "gw-gw"}}
	d := newTestDaemon(t, testConfig(t, ""), f)
	sas, err := d.SAs(context.Background())
	if err != nil || len(sas) != 2 || sas[0].Owner != "obold" || sas[1].Owner != "other" {
		t.Fatalf("SAs = %+v, %v", sas, err)
	}
	f.down = true
	if _, err := d.SAs(context.Background()); err == nil || !strings.Contains(err.Error(), "reconnects by itself") {
		t.Fatalf("SAs with charon down = %v", err)
	}
}

func TestEventLog(t *testing.T) {
	l := newEventLog(3)
	for i := 0; i < 5; i++ {
		l.add(vici.Event{Kind: vici.EventIKEUpDown, Up: i%2 == 0, SA: &vici.IKESA{Name: "x", UniqueID: uint32(i)}})
	}
	l.add(vici.Event{Kind: vici.EventLog, Log: &vici.LogLine{Message: "hello"}})
	got := l.list(control.EventsParams{})
	if len(got) != 2 || got[0].IKEID != 3 || got[1].IKEID != 4 || got[1].Seq != 5 {
		t.Fatalf("ring = %+v", got)
	}
	logs := l.list(control.EventsParams{Kinds: []string{"log"}})
	if len(logs) != 1 || logs[0].Message != "hello" {
		t.Fatalf("log = %+v", logs)
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestConnRemovedBehindObolsBack(t *testing.T) {
	f := newFake()
	d := newTestDaemon(t, testConfig(t, "[obold]\nreconcile_interval = \"100ms\"\n"+twoConns), f)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := make(chan vici.Event, 1)
	events <- vici.Event{Kind: vici.EventConnected}
	go func() { _ = d.Run(ctx, events) }()
	waitFor(t, func() bool { return len(f.names()) == 2 })
	// What swanctl --load-all does to conns it does not know.
	if err := f.UnloadConn(ctx, "obol-a"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return slices.Contains(f.names(), "obol-a") })
}

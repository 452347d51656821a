package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/e2e/scenario"
	"github.com/obol-ipsec/obol/internal/control"
)

// binDir holds obold and obolctl: $OBOL_BIN (make test builds them) or a
// fresh build for a plain `go test ./e2e/...`.
var binDir string

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: these tests need root (network namespaces, charon); run them with make test as root")
		os.Exit(1)
	}
	binDir = os.Getenv("OBOL_BIN")
	var tmp string
	if binDir == "" {
		var err error
		tmp, err = os.MkdirTemp("", "obol-e2e-bin")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		binDir = tmp
		for _, c := range []string{"obold", "obolctl"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(tmp, c), "github.com/obol-ipsec/obol/cmd/"+c).CombinedOutput()
			if err != nil {
				fmt.Fprintf(os.Stderr, "e2e: build %s: %v\n%s", c, err, out)
				os.Exit(1)
			}
		}
	}
	code := m.Run()
	if tmp != "" {
		os.RemoveAll(tmp)
	}
	os.Exit(code)
}

// startLab starts a lab and makes sure it is gone, with nothing left, when
// the test ends, pass or fail.
func startLab(t testing.TB, opts lab.Options) *lab.Lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// OBOL_KEEP_LAB=1 keeps configs and logs of a failed run for reading.
	opts.KeepDir = opts.KeepDir || os.Getenv("OBOL_KEEP_LAB") != ""
	l, err := lab.Start(ctx, opts)
	if err != nil {
		t.Fatalf("start lab: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			logTails(t, l)
		}
		if err := l.Close(); err != nil {
			t.Errorf("close lab: %v", err)
		}
		if left := l.Leftovers(); len(left) > 0 {
			t.Errorf("lab left things behind: %v", left)
		}
	})
	return l
}

// logTails puts the last lines of every node's obold and charon logs into
// a failed test's output, so a failure seen once (in CI, say) can be read
// without OBOL_KEEP_LAB.
func logTails(t testing.TB, l *lab.Lab) {
	const lines = 60
	for _, n := range l.Nodes() {
		for _, name := range []string{"obold.log", "charon.log"} {
			b, err := os.ReadFile(filepath.Join(n.Dir, name))
			if err != nil || len(b) == 0 {
				continue
			}
			all := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
			t.Logf("--- last %d lines of %s on %s ---\n%s", min(lines, len(all)), name, n.Name, strings.Join(all[max(0, len(all)-lines):], "\n"))
		}
	}
}

// obold is one obold running in a lab node.
type obold struct {
	t testing.TB
	// control holds extra [control] keys, e.g. group and mode.
	control string
	// allowErrors are log lines at ERROR a test provokes on purpose.
	allowErrors []string
	// charonDown: start expects charon not to be running yet.
	charonDown bool
	// seen counts log lines waitLog already matched.
	seen   map[string]int
	node   *lab.Node
	proc   *lab.Process
	config string
	socket string
}

// startObold writes config (with the node's VICI and control sockets filled
// in) and starts obold, waiting until it is connected to charon.
func startObold(t testing.TB, n *lab.Node, extra string) *obold {
	t.Helper()
	return startOboldWith(t, &obold{node: n, socket: filepath.Join(n.Dir, "obold.sock")}, extra)
}

// startOboldWith starts a prepared obold (socket path and [control] keys set).
func startOboldWith(t testing.TB, o *obold, extra string) *obold {
	t.Helper()
	o.t = t
	o.seen = map[string]int{}
	o.writeConfig(extra)
	o.start()
	return o
}

func (o *obold) writeConfig(extra string) {
	o.t.Helper()
	cfg := scenario.OboldConfig(o.node.VICI, o.socket, o.control+"\n[log]\nlevel = \"debug\"\n"+extra)
	path, err := o.node.WriteFile("obold.toml", []byte(cfg))
	if err != nil {
		o.t.Fatal(err)
	}
	o.config = path
}

func (o *obold) start() {
	o.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	p, err := o.node.Start(ctx, "obold", []string{filepath.Join(binDir, "obold"), "--config", o.config}, nil)
	if err != nil {
		o.t.Fatalf("start obold on %s: %v", o.node.Name, err)
	}
	o.proc = p
	o.t.Cleanup(func() { _ = p.Stop(5 * time.Second) })
	if o.charonDown {
		o.waitStatus(10*time.Second, func(s control.Status) bool { return !s.Charon.Connected })
		return
	}
	o.waitStatus(10*time.Second, func(s control.Status) bool { return s.Charon.Connected && !s.Obold.LastResync.IsZero() })
}

// stop sends SIGTERM and waits for obold to exit by itself.
func (o *obold) stop() {
	o.t.Helper()
	if err := o.proc.Stop(10 * time.Second); err != nil {
		o.t.Fatalf("stop obold on %s: %v", o.node.Name, err)
	}
	log, err := os.ReadFile(o.proc.Log)
	if err != nil {
		o.t.Fatal(err)
	}
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "level=ERROR") && !slices.ContainsFunc(o.allowErrors, func(s string) bool { return strings.Contains(line, s) }) {
			o.t.Errorf("obold on %s logged an error: %s", o.node.Name, line)
		}
	}
}

// ctl runs obolctl in the node and returns its stdout.
func (o *obold) ctl(args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	argv := append([]string{filepath.Join(binDir, "obolctl"), "--socket", o.socket}, args...)
	return o.node.Exec(ctx, argv...)
}

// ctlJSON runs obolctl with --json and decodes its answer into v.
func (o *obold) ctlJSON(v any, args ...string) {
	o.t.Helper()
	out, err := o.ctl(append(args, "--json")...)
	if err != nil {
		o.t.Fatalf("obolctl %v on %s: %v", args, o.node.Name, err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		o.t.Fatalf("obolctl %v on %s: not JSON: %v\n%s", args, o.node.Name, err, out)
	}
}

func (o *obold) status() (control.Status, error) {
	var s control.Status
	out, err := o.ctl("status", "--json")
	if err != nil {
		return s, err
	}
	return s, json.Unmarshal(out, &s)
}

// waitStatus polls obolctl status until cond holds; it returns how long that took.
func (o *obold) waitStatus(limit time.Duration, cond func(control.Status) bool) time.Duration {
	o.t.Helper()
	start := time.Now()
	var last control.Status
	var lastErr error
	for time.Since(start) < limit {
		s, err := o.status()
		if err == nil && cond(s) {
			return time.Since(start)
		}
		last, lastErr = s, err
		time.Sleep(20 * time.Millisecond)
	}
	o.t.Fatalf("obold on %s: status not as expected within %s: %+v (err %v)", o.node.Name, limit, last, lastErr)
	return 0
}

func (o *obold) sas() []control.SA {
	var sas []control.SA
	o.ctlJSON(&sas, "sas")
	return sas
}

func (o *obold) events(kinds ...string) []control.EventRecord {
	var evs []control.EventRecord
	args := []string{"events"}
	if len(kinds) > 0 {
		args = append(args, "--kind", strings.Join(kinds, ","))
	}
	o.ctlJSON(&evs, args...)
	return evs
}

func findSA(sas []control.SA, name string) *control.SA {
	for i := range sas {
		if sas[i].Name == name {
			return &sas[i]
		}
	}
	return nil
}

// hasEvent tells whether evs holds kind with up for conn ike.
func hasEvent(evs []control.EventRecord, kind string, up bool, ike string) bool {
	for _, e := range evs {
		if e.Kind == kind && e.Up == up && e.IKE == ike {
			return true
		}
	}
	return false
}

func run(t testing.TB, n *lab.Node, argv ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.Exec(ctx, argv...)
	if err != nil {
		t.Fatalf("%s: %v: %v\n%s", n.Name, argv, err, out)
	}
	return string(out)
}

func swanctl(t testing.TB, n *lab.Node, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := n.Swanctl(ctx, args...)
	if err != nil {
		t.Fatalf("%s: swanctl %v: %v\n%s", n.Name, args, err, out)
	}
	return string(out)
}

// waitLog waits until obold's log contains substr.
func (o *obold) waitLog(substr string, limit time.Duration) {
	o.t.Helper()
	deadline := time.Now().Add(limit)
	for {
		b, _ := os.ReadFile(o.proc.Log)
		if strings.Contains(string(b), substr) {
			return
		}
		if time.Now().After(deadline) {
			o.t.Fatalf("obold on %s did not log %q within %v", o.node.Name, substr, limit)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tcpPair connects from to addr, where to listens, and returns both ends
// of the TCP connection (closed when the test ends).
func tcpPair(t testing.TB, ctx context.Context, from, to *lab.Node, addr string) (client, server net.Conn) {
	t.Helper()
	ln, err := to.Listen(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := ln.Accept(); err == nil {
			accepted <- c
		}
	}()
	client, err = from.Dial(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	select {
	case server = <-accepted:
		t.Cleanup(func() { server.Close() })
	case <-ctx.Done():
		t.Fatalf("%s accepted nothing on %s", to.Name, addr)
	}
	return client, server
}

package pluginhost

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/plugins/pluginstest"
)

// syncBuffer collects a supervisor's log for assertions.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func startPlugin(t testing.TB, kind, mode string, mod func(*Spec)) (*Supervisor, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	spec := Spec{Kind: kind, Path: os.Args[0], Env: []string{"OBOL_TESTPLUGIN=" + mode}, CallTimeout: time.Second,
		MinBackoff: 50 * time.Millisecond, MaxBackoff: 400 * time.Millisecond, Log: slog.New(slog.NewTextHandler(logs, nil))}
	if mod != nil {
		mod(&spec)
	}
	s, err := Start(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, logs
}

// One conformance suite, every module, served by a plugin process.
func TestPluginConformance(t *testing.T) {
	t.Run("resolver", func(t *testing.T) {
		s, _ := startPlugin(t, plugins.KindResolver, "modules", nil)
		pluginstest.Resolver(t, Resolver(s))
	})
	t.Run("labels", func(t *testing.T) {
		s, _ := startPlugin(t, plugins.KindLabels, "modules", nil)
		pluginstest.LabelPolicy(t, LabelPolicy(s))
	})
	t.Run("xfrm", func(t *testing.T) {
		s, _ := startPlugin(t, plugins.KindXFRM, "modules", nil)
		pluginstest.XFRMChecker(t, XFRMChecker(s))
	})
	t.Run("auth", func(t *testing.T) {
		dir := t.TempDir()
		if err := pluginstest.WriteAuthFixture(dir); err != nil {
			t.Fatal(err)
		}
		s, _ := startPlugin(t, plugins.KindAuth, "modules", func(sp *Spec) { sp.Env = append(sp.Env, "OBOL_TESTPLUGIN_AUTHDIR="+dir) })
		pluginstest.AuthMethod(t, AuthMethod(s))
	})
}

func TestWrongProtocolVersionRefused(t *testing.T) {
	_, err := Start(context.Background(), Spec{Kind: plugins.KindResolver, Path: os.Args[0], Env: []string{"OBOL_TESTPLUGIN=badversion"}})
	if err == nil {
		t.Fatal("a plugin of another protocol version was accepted")
	}
	for _, want := range []string{"incompatible API version", "version 1", "rebuild the plugin"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := Start(context.Background(), Spec{Kind: plugins.KindResolver, Path: "/nonexistent/obol-plugin"}); err == nil || !strings.Contains(err.Error(), "plugin path") {
		t.Errorf("missing binary: %v", err)
	}
	if _, err := Start(context.Background(), Spec{Kind: "dns", Path: os.Args[0]}); err == nil || !strings.Contains(err.Error(), "unknown module kind") {
		t.Errorf("unknown kind: %v", err)
	}
}

func lookup(s *Supervisor, addr netip.Addr) (plugins.LookupAnswer, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Resolver(s).Lookup(ctx, plugins.LookupQuery{Addr: addr})
}

// waitUp retries a good lookup until the plugin is back.
func waitUp(t *testing.T, s *Supervisor) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := lookup(s, netip.MustParseAddr("192.0.2.12"))
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("plugin not back after 5s: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A plugin that crashes, hangs or answers garbage is killed, restarted
// with backoff and logged; calls meanwhile fail fast with the reason.
func TestIsolation(t *testing.T) {
	tests := []struct {
		name    string
		addr    netip.Addr
		errWant string
		logWant string
	}{
		{"crash", crashAddr, "", "exit status 3"},
		{"hang", hangAddr, "deadline", "module plugin failed"},
		{"garbage", garbageAddr, "garbage", "module plugin failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, logs := startPlugin(t, plugins.KindResolver, "modules", nil)
			pid := s.PID()
			begin := time.Now()
			_, err := lookup(s, tc.addr)
			if err == nil || !strings.Contains(err.Error(), tc.errWant) {
				t.Fatalf("misbehaving call: err %v, want one saying %q", err, tc.errWant)
			}
			if tc.name == "hang" && time.Since(begin) > 3*time.Second {
				t.Errorf("a hung call took %v; the call timeout is 1s", time.Since(begin))
			}
			// Down: the next call fails fast and says so (the crash is
			// noticed by this call or the previous one).
			if _, err := lookup(s, netip.MustParseAddr("192.0.2.12")); err != nil && !errors.Is(err, ErrDown) {
				t.Errorf("call while down: %v, want ErrDown", err)
			}
			waitUp(t, s)
			if s.PID() == pid || s.PID() == 0 {
				t.Errorf("pid %d -> %d: not a new process", pid, s.PID())
			}
			if syscall.Kill(pid, 0) == nil {
				t.Errorf("the old plugin process %d still runs", pid)
			}
			st := s.Status()
			if st.Restarts != 1 || !st.Running || st.LastError == "" {
				t.Errorf("status %+v", st)
			}
			if !strings.Contains(logs.String(), tc.logWant) || !strings.Contains(logs.String(), "module plugin restarted") {
				t.Errorf("log lacks %q or the restart:\n%s", tc.logWant, logs.String())
			}
		})
	}
}

// Restarts back off: a plugin that keeps failing is retried ever later.
func TestBackoffGrows(t *testing.T) {
	s, _ := startPlugin(t, plugins.KindResolver, "modules", func(sp *Spec) { sp.MinBackoff, sp.MaxBackoff = 100*time.Millisecond, time.Second })
	s.mu.Lock()
	var got []time.Duration
	for i := 1; i <= 6; i++ {
		s.failures = i
		got = append(got, s.backoffLocked())
	}
	s.mu.Unlock()
	want := []time.Duration{0, 100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("backoff %v, want %v", got, want)
		}
	}
}

// A killed plugin process (SIGKILL from outside) is replaced without
// waiting for a call to notice.
func TestKilledFromOutside(t *testing.T) {
	s, _ := startPlugin(t, plugins.KindResolver, "modules", nil)
	pid := s.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Second)
	for s.PID() == pid || s.PID() == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no new plugin process 3s after the kill: %+v", s.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := lookup(s, netip.MustParseAddr("192.0.2.12")); err != nil {
		t.Fatalf("first call after the restart: %v", err)
	}
}

// A plugin that keeps failing to start is retried ever later, and calls
// meanwhile fail at once saying why.
func TestRestartFailsBacksOff(t *testing.T) {
	s, _ := startPlugin(t, plugins.KindResolver, "modules", func(sp *Spec) { sp.MinBackoff, sp.MaxBackoff = 200*time.Millisecond, 200*time.Millisecond })
	s.mu.Lock()
	s.spec.Path = "/nonexistent/plugin" // every restart now fails
	s.mu.Unlock()
	syscall.Kill(s.PID(), syscall.SIGKILL)
	time.Sleep(500 * time.Millisecond)
	begin := time.Now()
	_, err := lookup(s, netip.MustParseAddr("192.0.2.12"))
	if !errors.Is(err, ErrDown) || time.Since(begin) > 100*time.Millisecond {
		t.Fatalf("call while the plugin cannot start: %v after %v, want ErrDown at once", err, time.Since(begin))
	}
	if st := s.Status(); st.Running || !strings.Contains(st.LastError, "plugin path") {
		t.Errorf("status %+v", st)
	}
}

// A plugin's JSON log lines are logged at their level with their fields;
// other lines as warnings.
func TestLineLogger(t *testing.T) {
	var buf syncBuffer
	l := lineLogger{log: slog.New(slog.NewTextHandler(&buf, nil))}
	l.Write([]byte(`{"@level":"error","@message":"the token API stopped","err":"listen: no such directory"}` + "\npanic: boom\n"))
	out := buf.String()
	for _, want := range []string{`level=ERROR msg="module plugin: the token API stopped" err="listen: no such directory"`, `level=WARN msg="module plugin stderr" line="panic: boom"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q lacks %q", out, want)
		}
	}
}

package pluginhost

import (
	"context"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/plugins/pluginstest"
	"github.com/obol-ipsec/obol/tokenapi/client"
)

// startTokenAPI runs the token API module in a plugin process over h,
// listening at a fresh socket, until the test ends.
func startTokenAPI(t testing.TB, h plugins.TokenHost) (*Supervisor, string, *syncBuffer) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "token.sock")
	s, logs := startPlugin(t, plugins.KindTokenAPI, "tokenapi", func(sp *Spec) {
		sp.Env = append(sp.Env, "OBOL_TESTPLUGIN_TOKENSOCK="+sock)
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- TokenAPI(s).Serve(ctx, h) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("Serve did not return after its context ended")
		}
	})
	return s, sock, logs
}

// The token API conformance suite against the module in a plugin process,
// with obold's TokenHost brokered back to it.
func TestTokenAPIPluginConformance(t *testing.T) {
	h := pluginstest.NewTokenHostFixture(t)
	_, sock, _ := startTokenAPI(t, h)
	pluginstest.TokenAPI(t, sock, h)
}

// A killed token API plugin is restarted, listens on its socket again, and
// answers a new client's query from obold's host.
func TestTokenAPIPluginRestart(t *testing.T) {
	h := pluginstest.NewTokenHostFixture(t)
	s, sock, logs := startTokenAPI(t, h)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	query := func(c *client.Client) client.PToken {
		t.Helper()
		conn := dialConn(t, h)
		pt, err := c.PToken(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		return pt
	}
	c := pluginstest.DialToken(t, sock)
	if pt := query(c); !pt.Protected {
		t.Fatalf("before the kill: %+v", pt)
	}
	pid := s.PID()
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// The old connection went with the process.
	if _, err := c.PToken(ctx, dialConn(t, h)); err == nil {
		t.Fatal("a query on the dead plugin's connection succeeded")
	}
	deadline := time.Now().Add(10 * time.Second)
	for s.PID() == 0 || s.PID() == pid {
		if time.Now().After(deadline) {
			t.Fatalf("the plugin was not restarted; logs:\n%s", logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	c2 := pluginstest.DialToken(t, sock)
	pt := query(c2)
	if !pt.Protected || pt.IToken == 0 {
		t.Fatalf("after the restart: %+v", pt)
	}
	it, err := c2.IToken(ctx, pt.IToken)
	if err != nil || it.RemoteID != "web.example" {
		t.Fatalf("iToken after the restart: %+v, %v", it, err)
	}
	if st := s.Status(); st.Restarts != 1 || !st.Running {
		t.Fatalf("status %+v, want running after 1 restart", st)
	}
}

func dialConn(t testing.TB, h *pluginstest.TokenHostFixture) syscall.Conn {
	t.Helper()
	c, err := net.DialTCP("tcp4", nil, h.Web.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// plainHost hides the fixture's change stream and generation notices: a
// host with neither is polled (plugins.GenerationPollEvery).
type plainHost struct{ plugins.TokenHost }

// With a host that neither notifies nor streams changes, a generation move
// still reaches the plugin (by obold's poll).
func TestTokenAPIPluginPolledHost(t *testing.T) {
	h := pluginstest.NewTokenHostFixture(t)
	_, sock, _ := startTokenAPI(t, plainHost{h})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := pluginstest.DialToken(t, sock)
	conn, err := net.DialTCP("tcp4", nil, h.Late.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if pt, err := c.PToken(ctx, conn); err != nil || pt.Protected {
		t.Fatalf("before the SA: %+v, %v", pt, err)
	}
	h.AddLate()
	// One poll period, then the stream message: well under a second.
	deadline := time.Now().Add(time.Second)
	for {
		pt, err := c.PToken(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		if pt.Protected {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("1s after the generation moved the plugin still answers %+v", pt)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// Package tokenapitest is the token API's test double: Facts answered by
// port, loopback listeners standing for protected or clear peers, and a
// server on a temporary socket that stops with the test.
package tokenapitest

import (
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"

	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// PortFacts answers a flow with the protection set for its remote (or
// local) port, and "no policy" otherwise. It counts its calls.
type PortFacts struct {
	mu     sync.Mutex
	byPort map[uint16]tokenapi.Protection
	calls  int
}

// NewPortFacts makes empty facts.
func NewPortFacts() *PortFacts { return &PortFacts{byPort: map[uint16]tokenapi.Protection{}} }

// Set makes flows to or from port get p.
func (f *PortFacts) Set(port int, p tokenapi.Protection) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.byPort[uint16(port)] = p
}

// Calls says how often Protection was asked.
func (f *PortFacts) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// Protection implements tokenapi.Facts.
func (f *PortFacts) Protection(_ context.Context, fl tokenapi.Flow) (tokenapi.Protection, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if p, ok := f.byPort[fl.Remote.Port()]; ok {
		return p, nil
	}
	if p, ok := f.byPort[fl.Local.Port()]; ok {
		return p, nil
	}
	return tokenapi.Protection{Why: wire.ReasonNoPolicy, WhyText: "no conn covers " + fl.Remote.String()}, nil
}

// Listeners opens a loopback TCP listener per scenario, accepting and
// holding connections until the test ends, and sets its port's protection
// in facts.
func Listeners(t testing.TB, facts *PortFacts, scenarios map[string]tokenapi.Protection) map[string]*net.TCPListener {
	t.Helper()
	lns := map[string]*net.TCPListener{}
	for name, p := range scenarios {
		ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
			}
		}()
		lns[name] = ln
		facts.Set(ln.Addr().(*net.TCPAddr).Port, p)
	}
	return lns
}

// Serve runs a token API server for facts on a temporary socket (unless
// cfg names one) until the test ends, and returns it with its socket path.
func Serve(t testing.TB, cfg tokenapi.Config, facts tokenapi.Facts) (*tokenapi.Server, string) {
	t.Helper()
	return serve(t, cfg, facts, nil)
}

func serve(t testing.TB, cfg tokenapi.Config, facts tokenapi.Facts, p tokenapi.Protector) (*tokenapi.Server, string) {
	t.Helper()
	if cfg.Socket == "" {
		cfg.Socket = filepath.Join(t.TempDir(), "token.sock")
	}
	srv, err := tokenapi.NewServer(cfg, facts, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p != nil {
		srv.SetProtector(p)
	}
	ln, err := srv.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return srv, cfg.Socket
}

// ChangeFacts is PortFacts with a change feed the test drives, so the
// server accepts subscriptions.
type ChangeFacts struct {
	*PortFacts
	ch chan tokenapi.Change
}

// NewChangeFacts makes empty facts with a feed.
func NewChangeFacts() *ChangeFacts {
	return &ChangeFacts{PortFacts: NewPortFacts(), ch: make(chan tokenapi.Change, 64)}
}

// Changes implements tokenapi.ChangeFeed.
func (f *ChangeFacts) Changes(context.Context) <-chan tokenapi.Change { return f.ch }

// Notify tells the server that something changed.
func (f *ChangeFacts) Notify(c tokenapi.Change) { f.ch <- c }

// ServeProtect is Serve with a Protector: the server answers PROTECT too.
func ServeProtect(t testing.TB, cfg tokenapi.Config, facts tokenapi.Facts, p tokenapi.Protector) (*tokenapi.Server, string) {
	t.Helper()
	return serve(t, cfg, facts, p)
}

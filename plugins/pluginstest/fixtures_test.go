package pluginstest

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/obol-ipsec/obol/tokenapi"
)

// The fixtures pass their own suite in process; pluginhost runs the same
// suite against them served by a plugin process.
func TestBuiltInConformance(t *testing.T) {
	r, err := ResolverFixture()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("resolver", func(t *testing.T) { Resolver(t, r) })
	lp, err := LabelsFixture()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("labels", func(t *testing.T) { LabelPolicy(t, lp) })
	t.Run("xfrm", func(t *testing.T) { XFRMChecker(t, XFRMFixture()) })
	dir := t.TempDir()
	if err := WriteAuthFixture(dir); err != nil {
		t.Fatal(err)
	}
	t.Run("auth", func(t *testing.T) { AuthMethod(t, AuthFixture(dir)) })
}

// The token API module built in, over the fixture host: no RPC anywhere.
func TestBuiltInTokenAPIConformance(t *testing.T) {
	h := NewTokenHostFixture(t)
	sock := filepath.Join(t.TempDir(), "token.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- (&tokenapi.Module{Config: tokenapi.Config{Socket: sock}.WithDefaults()}).Serve(ctx, h) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	TokenAPI(t, sock, h)
}

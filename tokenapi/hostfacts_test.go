package tokenapi_test

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/client"
	"github.com/obol-ipsec/obol/tokenapi/tokenapitest"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// swapHost is a TokenHost whose SA list a test replaces, moving the
// generation as obold does.
type swapHost struct {
	gen atomic.Uint64
	sas atomic.Pointer[[]tokenapi.TokenSA]
}

func (h *swapHost) set(sas []tokenapi.TokenSA) { h.sas.Store(&sas); h.gen.Add(1) }

func (h *swapHost) TokenSAs(context.Context) (plugins.TokenSnapshot, error) {
	g := h.gen.Load()
	return plugins.TokenSnapshot{Generation: g, SAs: *h.sas.Load()}, nil
}
func (h *swapHost) Generation() uint64 { return h.gen.Load() }
func (h *swapHost) WhyNot(context.Context, tokenapi.Flow) (wire.Reason, string, error) {
	return wire.ReasonNoPolicy, "no policy covers it", nil
}
func (h *swapHost) Protect(context.Context, tokenapi.ProtectRequest) (tokenapi.ProtectOutcome, error) {
	return tokenapi.ProtectOutcome{}, nil
}
func (h *swapHost) PinTarget(context.Context) (tokenapi.PinTarget, error) {
	return tokenapi.PinTarget{}, nil
}

// portSAs is n SAs between loopback addresses, one per TCP port from
// first, all with child c and peer p.
func portSAs(t testing.TB, first, n int, c tokenapi.Child, p tokenapi.Peer) []tokenapi.TokenSA {
	t.Helper()
	local, err := tokenapi.ParseTS("127.0.0.1/32")
	if err != nil {
		t.Fatal(err)
	}
	sas := make([]tokenapi.TokenSA, n)
	for i := range sas {
		remote, err := tokenapi.ParseTS(fmt.Sprintf("127.0.0.1/32[tcp/%d]", first+i))
		if err != nil {
			t.Fatal(err)
		}
		sas[i] = tokenapi.TokenSA{Child: c, Peer: p, LocalTS: []tokenapi.TS{local}, RemoteTS: []tokenapi.TS{remote}}
	}
	return sas
}

func hostEnv(t testing.TB, n int) (*swapHost, *client.Client, *net.TCPConn) {
	t.Helper()
	ln := listen(t)
	port := ln.Addr().(*net.TCPAddr).Port
	h := &swapHost{}
	// The flow's SA sits among n-1 others, for the ports below its own.
	h.set(portSAs(t, port-n+1, n, gcm, peerA))
	_, sock := tokenapitest.Serve(t, tokenapi.Config{}, tokenapi.HostFacts(h))
	ctx := context.Background()
	c, err := client.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return h, c, dialTCP(t, ln)
}

// TestHostFactsNewSnapshotNewAnswer: what the server derives from an SA is
// reused only while the snapshot lasts; a new snapshot with another peer
// and cipher for the same flow changes every property at once.
func TestHostFactsNewSnapshotNewAnswer(t *testing.T) {
	h, c, conn := hostEnv(t, 1)
	cx := ctx(t)
	port := conn.RemoteAddr().(*net.TCPAddr).Port
	first, err := c.PToken(cx, conn)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.PToken(cx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if first.IToken != again.IToken || first.Audit != again.Audit || !first.Privacy {
		t.Fatalf("same snapshot, different answers: %+v vs %+v", first, again)
	}
	null := tokenapi.Child{IKEName: "other", Name: "null", Protocol: "ESP", EncrAlg: "NULL", IntegAlg: "HMAC_SHA2_256_128", IntegKey: 128}
	h.set(portSAs(t, port, 1, null, peerB))
	after, err := c.PToken(cx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if after.IToken == first.IToken || after.Privacy || !after.Integrity {
		t.Fatalf("after the snapshot changed the answer did not: %+v", after)
	}
	it, err := c.IToken(cx, after.IToken)
	if err != nil {
		t.Fatal(err)
	}
	if it.CertDN != "CN=moon" {
		t.Errorf("iToken of the new peer: %+v", it)
	}
	want := fmt.Sprintf("tcp %s -> %s: ESP tunnel NULL/HMAC_SHA2_256_128-128 conn=other child=null peer='CN=moon' (no privacy)", conn.LocalAddr(), conn.RemoteAddr())
	if after.Audit != want {
		t.Errorf("audit\n got %q\nwant %q", after.Audit, want)
	}
}

// BenchmarkPTokenQueryHostFacts is BenchmarkPTokenQuery through the real
// facts obold uses (HostFacts over an index of 1,000 SAs): the path the
// token API takes in obold, without charon, client and server in one
// process; ns/op holds the PTOKEN_RELEASE round trip too. p50-us and
// p99-us are of the PTOKEN_QUERY round trips alone: the tail of the server
// and the Go runtime, without a second process to wake.
func BenchmarkPTokenQueryHostFacts(b *testing.B) {
	_, c, conn := hostEnv(b, 1000)
	cx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		t0 := time.Now()
		pt, err := c.PToken(cx, conn)
		lat = append(lat, time.Since(t0))
		if err != nil {
			b.Fatal(err)
		}
		// Released in the loop, timed: stopping the timer reads memory
		// statistics, a stop-the-world that would be the tail.
		if err := c.Release(cx, pt.Handle); err != nil {
			b.Fatal(err)
		}
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-us")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds())/1e3, "p99-us")
}

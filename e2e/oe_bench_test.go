package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/vici"
)

// BenchmarkOESetup measures OE setup between two hosts, from the first
// packet to traffic flowing (probed with UDP every 5 ms), against what an
// operator gets without obol: charon initiating a preloaded conn for the
// same pair, plus the one DNS query OE needs. Both run side by side in the
// same lab; the metric oe/baseline is their ratio (target: 1.2 or better).
func BenchmarkOESetup(b *testing.B) {
	l := startLab(b, lab.Options{Charon: []string{lab.HostA, lab.HostB}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ha, hb := l.Node(lab.HostA), l.Node(lab.HostB)
	ka, kb := newOEKey(b, ha), newOEKey(b, hb)
	if err := l.SetZone(ctx, lab.Zone{Name: "2.0.192.in-addr.arpa.", Records: []string{
		"11 300 IN IPSECKEY 10 1 2 192.0.2.11 " + ka.dns,
		"12 300 IN IPSECKEY 10 1 2 192.0.2.12 " + kb.dns,
	}}); err != nil {
		b.Fatal(err)
	}
	oa := startObold(b, ha, oeHost("192.0.2.11", "", "192.0.2.12", ka))
	ob := startObold(b, hb, oeHost("192.0.2.12", "", "192.0.2.11", kb))
	_ = ob

	var probeFrom func(start time.Time) time.Duration
	// hostb echoes UDP; hosta probes every millisecond until an answer
	// comes back: the first packets are held while OE runs, so the time to
	// the first answer is the setup time.
	pc, err := hb.ListenPacket(ctx, "udp", "192.0.2.12:7000")
	if err != nil {
		b.Fatal(err)
	}
	defer pc.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = pc.WriteTo(buf[:n], from)
		}
	}()
	probe := func() time.Duration { return probeFrom(time.Now()) }
	probeFrom = func(start time.Time) time.Duration {
		c, err := ha.ListenPacket(ctx, "udp", "192.0.2.11:0")
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		dst := &net.UDPAddr{IP: net.IPv4(192, 0, 2, 12), Port: 7000}
		buf := make([]byte, 64)
		for time.Since(start) < 20*time.Second {
			_, _ = c.WriteTo([]byte("probe"), dst)
			_ = c.SetReadDeadline(time.Now().Add(time.Millisecond))
			if _, _, err := c.ReadFrom(buf); err == nil {
				return time.Since(start)
			}
		}
		b.Fatalf("no traffic within 20 s: %+v", oa.oeList())
		return 0
	}
	closeOE := func() {
		for _, tu := range oa.oeList() {
			swanctl(b, ha, "--terminate", "--ike", tu.Conn)
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(oa.oeList()) > 0 {
			if time.Now().After(deadline) {
				b.Fatalf("OE tunnel not gone: %+v", oa.oeList())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	// Baseline: the same pair as a conn charon already has loaded. Two
	// end points: initiate returned (the baseline), and the first
	// probe echoed through the new tunnel, the end point OE is measured to.
	cva, err := vici.Dial(ctx, ha.VICI, vici.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer cva.Close()
	baseline := func() (initiated, flowing time.Duration) {
		start := time.Now()
		if _, err := ha.QueryDNS(ctx, "12.2.0.192.in-addr.arpa.", dns.TypeIPSECKEY); err != nil {
			b.Fatal(err)
		}
		if err := cva.Initiate(ctx, "bench-base", "host"); err != nil {
			b.Fatal(err)
		}
		initiated = time.Since(start)
		flowing = probeFrom(start)
		if err := cva.Terminate(ctx, vici.SASelector{IKE: "bench-base"}); err != nil {
			b.Fatal(err)
		}
		return initiated, flowing
	}
	var oeTotal, baseTotal, baseFlowTotal time.Duration
	firstTry := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		oeTotal += probe()
		b.StopTimer()
		// Did the responder's key lookup win the race with our IKE_AUTH?
		if ts := oa.oeList(); len(ts) == 1 && ts[0].Attempts == 1 {
			firstTry++
		}
		closeOE()
		b.StartTimer()
	}
	// The baseline runs after OE, in the same lab and run: while its conn
	// is loaded obold rightly refuses OE for the pair (a configured conn
	// covers it), so the two cannot interleave.
	b.StopTimer()
	loadBaseline(b, ctx, ha, hb, ka, kb)
	for i := 0; i < b.N; i++ {
		initiated, flowing := baseline()
		baseTotal += initiated
		baseFlowTotal += flowing
	}
	b.StopTimer()
	b.ReportMetric(float64(oeTotal.Milliseconds())/float64(b.N), "ms-oe/op")
	b.ReportMetric(float64(baseTotal.Milliseconds())/float64(b.N), "ms-baseline/op")
	b.ReportMetric(float64(baseFlowTotal.Milliseconds())/float64(b.N), "ms-baseline-flowing/op")
	b.ReportMetric(float64(oeTotal)/float64(baseTotal), "oe/baseline")
	b.ReportMetric(float64(oeTotal)/float64(baseFlowTotal), "oe/baseline-flowing")
	b.ReportMetric(100*float64(firstTry)/float64(b.N), "%first-try")
}

// loadBaseline loads a host-to-host conn "bench-base" authenticated with
// the same RSA keys OE uses, on both hosts, over VICI (as swanctl would).
func loadBaseline(b *testing.B, ctx context.Context, ha, hb *lab.Node, ka, kb oeKey) {
	b.Helper()
	pub := func(k oeKey) []byte {
		raw, err := os.ReadFile(k.pemFile)
		if err != nil {
			b.Fatal(err)
		}
		blk, _ := pem.Decode(raw)
		priv, err := x509.ParsePKCS1PrivateKey(blk.Bytes)
		if err != nil {
			b.Fatal(err)
		}
		der, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
		if err != nil {
			b.Fatal(err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
	}
	// Identities of its own: with OE's (the addresses), hostb's charon would
	// pick this conn for the OE initiator too.
	for _, h := range []struct {
		n                 *lab.Node
		local, remote     string
		localID, remoteID string
		own, peer         oeKey
	}{{ha, "192.0.2.11", "192.0.2.12", "@bench-a.test", "@bench-b.test", ka, kb}, {hb, "192.0.2.12", "192.0.2.11", "@bench-b.test", "@bench-a.test", kb, ka}} {
		c, err := vici.Dial(ctx, h.n.VICI, vici.Options{})
		if err != nil {
			b.Fatal(err)
		}
		raw, err := os.ReadFile(h.own.pemFile)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.LoadKey(ctx, vici.Key{Type: "any", Data: raw}); err != nil {
			b.Fatal(err)
		}
		err = c.LoadConn(ctx, vici.Conn{
			Name: "bench-base", Version: 2, LocalAddrs: []string{h.local}, RemoteAddrs: []string{h.remote},
			Local:    []vici.Auth{{Auth: "pubkey", ID: h.localID, Pubkeys: [][]byte{pub(h.own)}}},
			Remote:   []vici.Auth{{Auth: "pubkey", ID: h.remoteID, Pubkeys: [][]byte{pub(h.peer)}}},
			Children: []vici.Child{{Name: "host", Mode: "tunnel", LocalTS: []string{h.local + "/32"}, RemoteTS: []string{h.remote + "/32"}}},
		})
		c.Close()
		if err != nil {
			b.Fatal(err)
		}
	}
}

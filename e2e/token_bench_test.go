package e2e

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	govici "github.com/strongswan/govici/vici"

	"github.com/obol-ipsec/obol/e2e/lab"
	"github.com/obol-ipsec/obol/tokenapi"
	"github.com/obol-ipsec/obol/tokenapi/client"
	tokenwire "github.com/obol-ipsec/obol/tokenapi/wire"
	"github.com/obol-ipsec/obol/vici"
)

// Token benchmark shape: hosta holds N real CHILD_SAs with hostb, one per
// TCP port (192.0.2.11/32 <-> 192.0.2.12/32[tcp/benchBasePort+i]), spread
// over conns of benchChildrenPerConn children each (one IKE_SA per conn:
// charon's list-sas sends one message per IKE_SA, and a conn is loaded in
// one VICI message, both bounded by 512 KiB). hostb answers with one child
// config covering the whole port range, which charon narrows to each
// initiator's port. The measured flow uses the first SA's port: the oldest
// SA, last in newest-first order.
const (
	benchBasePort        = 40000
	benchChildrenPerConn = 500
	benchPSK             = "token-bench-lab-secret-0123456789"
)

// benchSizes are the SA counts measured, in growing order: the set is built
// once and grown between sizes.
var benchSizes = []int{10, 100, 1000, 10000}

// benchCharonConf: at 10,000 CHILD_SAs charon's file log at ike=2 costs more
// than the exchanges (obold reads charon's level-1 lines over VICI anyway);
// up to 20 initiates wait in charon threads at once while the set grows.
const benchCharonConf = `	threads = 48
	filelog {
		lab {
			default = 0
			ike = 0
		}
	}
`

// BenchmarkTokenQuery measures the token query path end to end on hosta:
// two concurrent clients (one per core) each hand obold a real TCP socket
// covered by one of N real CHILD_SAs held by charon, over obold's token
// socket, at N = 10, 100, 1,000 and 10,000. Side by side in the same run it
// measures what a user has today to learn the same thing: `swanctl
// --list-sas` run and parsed, and one VICI list-sas through the vici
// package, each followed by finding the SA that covers the flow. Metrics
// per size: p50-us and p99-us of a query, qps (both clients together), and
// x-vici / x-swanctl (baseline median time / token median time), and
// first-ms: the first query after the set grew, which waits for obold to
// convert the new IKE_SAs (from its event-fed table, no list-sas) and the
// module to re-index. The sub-benchmark "whynot"
// queries a flow no SA covers at 10,000 SAs. The clients' TCP connections
// are set up through the first SA (libipsec drops what no SA carries).
func BenchmarkTokenQuery(b *testing.B) {
	l := startLab(b, lab.Options{Charon: []string{lab.HostA, lab.HostB}, CharonConf: benchCharonConf})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ha, hb, dnsNode := l.Node(lab.HostA), l.Node(lab.HostB), l.Node(lab.DNS)

	maxN := benchSizes[len(benchSizes)-1]
	set := newBenchSAs(b, ctx, ha, hb, maxN)
	defer set.close()

	sock := filepath.Join(ha.Dir, "token.sock")
	// request_timeout: a margin. A query waits for a list-sas (seconds at
	// 10,000 SAs with kernel-libipsec, see grow) only for obold's very first
	// snapshot; after that obold's table follows charon's events.
	startObold(b, ha, fmt.Sprintf("[tokenapi]\nenabled = true\nsocket = %q\nrequest_timeout = \"60s\"\n", sock))

	// hostb accepts on the first SA's port; hosta's two clients each dial
	// it once and query that connection over and over.
	ln, err := hb.Listen(ctx, "tcp", fmt.Sprintf("192.0.2.12:%d", benchBasePort))
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go acceptAll(ln)
	// A flow no SA covers: TCP to the DNS node, not through the tunnel.
	clearLn, err := dnsNode.Listen(ctx, "tcp", "192.0.2.53:7002")
	if err != nil {
		b.Fatal(err)
	}
	defer clearLn.Close()
	go acceptAll(clearLn)

	cva, err := vici.Dial(ctx, ha.VICI, vici.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer cva.Close()
	swanctlPath, err := exec.LookPath("swanctl")
	if err != nil {
		b.Fatal(err)
	}

	var clients [2]benchClient
	for i := range clients {
		clients[i] = newBenchClient(b, ctx, ha, sock, fmt.Sprintf("192.0.2.12:%d", benchBasePort))
		defer clients[i].close()
	}
	flow := clients[0].flow

	for _, n := range benchSizes {
		set.grow(ctx, n)
		// The first query after the SAs changed waits for obold's snapshot
		// (the new IKE_SAs converted) and the module's re-index; a real
		// program meets that once per change, not per query. Check the
		// answer while at it: the SA is found.
		var rebuild time.Duration
		for i := range clients {
			t0 := time.Now()
			pt := clients[i].query(b, ctx)
			if i == 0 {
				rebuild = time.Since(t0)
			}
			if !pt.Protected || !pt.Privacy {
				b.Fatalf("%d SAs: token API says the covered flow is not protected: %+v; charon: %s", n, pt, set.describe(ctx))
			}
		}
		clients[0].settle(b, ctx)
		viciTime := timeBaseline(b, n, func() { benchViciFind(b, ctx, cva, flow) })
		swanctlTime := timeBaseline(b, n, func() { benchSwanctlFind(b, ctx, swanctlPath, ha.VICI, flow) })
		// Latency: one client asking back to back, as a program does; the
		// machine is not saturated, so p99 is obold's tail, not a queue.
		b.Run(fmt.Sprintf("sas=%d/latency", n), func(b *testing.B) {
			lat := runTokenQueries(b, ctx, clients[:1])
			b.ReportMetric(float64(rebuild.Microseconds())/1e3, "first-ms")
			b.ReportMetric(float64(viciTime.Microseconds()), "vici-us")
			b.ReportMetric(float64(swanctlTime.Microseconds()), "swanctl-us")
			b.ReportMetric(float64(viciTime)/float64(lat.p50), "x-vici")
			b.ReportMetric(float64(swanctlTime)/float64(lat.p50), "x-swanctl")
		})
		// Throughput: two clients, one per core, saturating the machine
		// (clients and obold share the two cores): qps, and the latencies
		// under that load.
		b.Run(fmt.Sprintf("sas=%d/throughput", n), func(b *testing.B) {
			runTokenQueries(b, ctx, clients[:])
		})
	}

	// WhyNot: a flow with no SA, at the largest size.
	var why [2]benchClient
	for i := range why {
		why[i] = newBenchClient(b, ctx, ha, sock, "192.0.2.53:7002")
		defer why[i].close()
		pt := why[i].query(b, ctx)
		if pt.Protected || pt.Why != tokenwire.ReasonNoPolicy {
			b.Fatalf("token API on a clear flow: %+v, want not protected because of no policy", pt)
		}
	}
	b.Run(fmt.Sprintf("whynot/sas=%d/latency", maxN), func(b *testing.B) {
		runTokenQueries(b, ctx, why[:1])
	})
	b.Run(fmt.Sprintf("whynot/sas=%d/throughput", maxN), func(b *testing.B) {
		runTokenQueries(b, ctx, why[:])
	})
}

// benchSAs is the growing set of CHILD_SAs between hosta and hostb.
type benchSAs struct {
	b     *testing.B
	ha    *lab.Node
	conns int // conns loaded on hosta
	up    int // CHILD_SAs installed
	viciA *vici.Client
}

func newBenchSAs(b *testing.B, ctx context.Context, ha, hb *lab.Node, maxN int) *benchSAs {
	b.Helper()
	// hostb: one conn answering any port in the range.
	cb, err := vici.Dial(ctx, hb.VICI, vici.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer cb.Close()
	loadBenchSecret(b, ctx, cb)
	if err := cb.LoadConn(ctx, vici.Conn{
		Name: "bench", Version: 2, Unique: "never",
		LocalAddrs: []string{"192.0.2.12"}, RemoteAddrs: []string{"192.0.2.11"},
		Local:  []vici.Auth{{Auth: "psk", ID: "192.0.2.12"}},
		Remote: []vici.Auth{{Auth: "psk", ID: "192.0.2.11"}},
		Children: []vici.Child{{
			Name: "ports", Mode: "tunnel", ESPProposals: []string{"aes256gcm16"},
			LocalTS:  []string{fmt.Sprintf("192.0.2.12/32[tcp/%d-%d]", benchBasePort, benchBasePort+maxN-1)},
			RemoteTS: []string{"192.0.2.11/32"},
		}},
	}); err != nil {
		b.Fatal(err)
	}

	ca, err := vici.Dial(ctx, ha.VICI, vici.Options{})
	if err != nil {
		b.Fatal(err)
	}
	loadBenchSecret(b, ctx, ca)
	conns := (maxN + benchChildrenPerConn - 1) / benchChildrenPerConn
	for c := range conns {
		// charon reuses an IKE_SA of any conn equal in everything but the
		// name: a rekey_time of its own keeps each conn on its own IKE_SA
		// (one IKE_SA with 10,000 children is more than one list-sas
		// message of 512 KiB can carry: charon then lists nothing).
		conn := vici.Conn{
			Name: benchConnName(c), Version: 2, Unique: "never", RekeyTime: 4*time.Hour + time.Duration(c)*time.Second,
			LocalAddrs: []string{"192.0.2.11"}, RemoteAddrs: []string{"192.0.2.12"},
			Local:  []vici.Auth{{Auth: "psk", ID: "192.0.2.11"}},
			Remote: []vici.Auth{{Auth: "psk", ID: "192.0.2.12"}},
		}
		for i := c * benchChildrenPerConn; i < min(maxN, (c+1)*benchChildrenPerConn); i++ {
			conn.Children = append(conn.Children, vici.Child{
				Name: benchChildName(i), Mode: "tunnel", ESPProposals: []string{"aes256gcm16"},
				LocalTS:  []string{"192.0.2.11/32"},
				RemoteTS: []string{fmt.Sprintf("192.0.2.12/32[tcp/%d]", benchBasePort+i)},
			})
		}
		if err := ca.LoadConn(ctx, conn); err != nil {
			b.Fatalf("load %s: %v", conn.Name, err)
		}
	}
	return &benchSAs{b: b, ha: ha, conns: conns, viciA: ca}
}

func (s *benchSAs) close() { s.viciA.Close() }

// describe says what charon holds: IKE_SAs, installed CHILD_SAs and
// whether the first one (the measured flow's) is among them.
func (s *benchSAs) describe(ctx context.Context) string {
	sas, err := s.viciA.ListSAs(ctx, vici.SASelector{})
	if err != nil {
		return err.Error()
	}
	installed, first := 0, false
	for _, sa := range sas {
		for _, ch := range sa.Children {
			if ch.State == "INSTALLED" {
				installed++
				first = first || ch.Name == benchChildName(0)
			}
		}
	}
	return fmt.Sprintf("%d IKE_SAs, %d CHILD_SAs installed, %s installed: %v", len(sas), installed, benchChildName(0), first)
}

func benchConnName(c int) string  { return fmt.Sprintf("bench-%02d", c) }
func benchChildName(i int) string { return fmt.Sprintf("p%d", benchBasePort+i) }

func loadBenchSecret(b *testing.B, ctx context.Context, c *vici.Client) {
	b.Helper()
	if err := c.LoadShared(ctx, vici.Shared{ID: "bench", Type: "ike", Data: []byte(benchPSK), Owners: []string{"192.0.2.11", "192.0.2.12"}}); err != nil {
		b.Fatal(err)
	}
}

// grow brings the installed CHILD_SAs up to n: one goroutine per conn
// initiates its children one after the other, each waited for (charon's
// threads are raised for the waiting initiates). Nothing polls list-sas
// meanwhile: with kernel-libipsec a list-sas costs charon a scan of every
// SA per CHILD_SA listed (its SA lookups are linear), quadratic in N.
func (s *benchSAs) grow(ctx context.Context, n int) {
	b := s.b
	b.Helper()
	t0 := time.Now()
	errs := make(chan error, s.conns)
	var wg sync.WaitGroup
	for c := range s.conns {
		from, to := max(s.up, c*benchChildrenPerConn), min(n, (c+1)*benchChildrenPerConn)
		if from >= to {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sess, err := benchViciSession(ctx, s.ha.VICI)
			if err != nil {
				errs <- err
				return
			}
			defer sess.Close()
			for i := from; i < to; i++ {
				if err := benchInitiate(ctx, sess, i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatalf("growing to %d CHILD_SAs: %v; see %s", n, err, s.ha.CharonLog())
	}
	b.Logf("%d -> %d CHILD_SAs in %v", s.up, n, time.Since(t0).Round(time.Millisecond))
	s.up = n
}

// benchViciSession opens a VICI session, retrying while charon's listen
// backlog is full (EAGAIN on a unix socket) as it is when many connect at
// once to a busy charon.
func benchViciSession(ctx context.Context, path string) (*govici.Session, error) {
	for {
		sess, err := govici.NewSession(govici.WithSocketPath(path))
		if err == nil || !errors.Is(err, syscall.EAGAIN) {
			return sess, err
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("VICI %s: %w (last: %w)", path, ctx.Err(), err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// benchInitiate brings up child i and waits until charon says it is up.
func benchInitiate(ctx context.Context, sess *govici.Session, i int) error {
	m := govici.NewMessage()
	_ = m.Set("ike", benchConnName(i/benchChildrenPerConn))
	_ = m.Set("child", benchChildName(i))
	_ = m.Set("timeout", "50000")
	cx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	r, err := sess.Call(cx, "initiate", m)
	if err != nil {
		return fmt.Errorf("initiate %s: %w", benchChildName(i), err)
	}
	if r.Get("success") != "yes" {
		return fmt.Errorf("initiate %s: charon says %v", benchChildName(i), r.Get("errmsg"))
	}
	return nil
}

// settle waits until obold's token answers stop paying for snapshot
// rebuilds: charon's events (several per CHILD_SA brought up) reach obold
// for a while after the last initiate returned, and each moves the
// generation. Settled: benchSettleQueries queries in a row, none slower
// than benchSettleSlow (a rebuild at 1,000 SAs takes tens of ms).
func (c *benchClient) settle(b *testing.B, ctx context.Context) {
	b.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		slow := false
		for q := range benchSettleQueries {
			if q%benchPTokensPerConn == 0 {
				if err := c.redial(ctx); err != nil {
					b.Fatal(err)
				}
			}
			t0 := time.Now()
			if _, err := c.tc.PToken(ctx, c.conn); err != nil {
				b.Fatal(err)
			}
			if time.Since(t0) > benchSettleSlow {
				slow = true
				break
			}
		}
		if !slow {
			return
		}
	}
	b.Fatal("obold's token answers did not settle within 3 minutes: its SA snapshot keeps being rebuilt")
}

const (
	benchSettleQueries = 2000
	benchSettleSlow    = 5 * time.Millisecond
)

// benchClient is one token API client with its own TCP connection.
type benchClient struct {
	sock string
	tc   *client.Client
	conn *net.TCPConn
	flow tokenapi.Flow
}

func newBenchClient(b *testing.B, ctx context.Context, n *lab.Node, sock, dst string) benchClient {
	b.Helper()
	c, err := n.Dial(ctx, "tcp", dst)
	if err != nil {
		b.Fatalf("dial %s from %s: %v", dst, n.Name, err)
	}
	tc, err := client.Dial(ctx, sock)
	if err != nil {
		b.Fatal(err)
	}
	conn := c.(*net.TCPConn)
	return benchClient{sock: sock, tc: tc, conn: conn, flow: tokenapi.Flow{
		Local:    conn.LocalAddr().(*net.TCPAddr).AddrPort(),
		Remote:   conn.RemoteAddr().(*net.TCPAddr).AddrPort(),
		Protocol: 6,
	}}
}

// redial replaces the token API connection: closing it frees every pToken
// it holds.
func (c *benchClient) redial(ctx context.Context) error {
	c.tc.Close()
	tc, err := client.Dial(ctx, c.sock)
	if err != nil {
		return err
	}
	c.tc = tc
	return nil
}

func (c *benchClient) close() {
	c.tc.Close()
	c.conn.Close()
}

// query asks for the connection's pToken and releases it (so the handle
// table stays small); only the PTOKEN_QUERY round trip is returned.
func (c *benchClient) query(b *testing.B, ctx context.Context) client.PToken {
	pt, err := c.tc.PToken(ctx, c.conn)
	if err != nil {
		b.Fatal(err)
	}
	if err := c.tc.Release(ctx, pt.Handle); err != nil {
		b.Fatal(err)
	}
	return pt
}

type latencies struct{ p50, p99 time.Duration }

// benchPTokensPerConn is how many pTokens a client collects before it
// closes its token API connection (freeing them all) and dials again: what
// a program that keeps its pTokens pays, below max_ptokens_per_client.
const benchPTokensPerConn = 1000

// runTokenQueries runs b.N PTOKEN_QUERY round trips split over the clients,
// one goroutine each, and reports p50-us, p99-us and qps. The latencies are
// of the queries alone; qps is the queries over the wall time, which also
// holds each client's reconnects (every benchPTokensPerConn queries).
func runTokenQueries(b *testing.B, ctx context.Context, clients []benchClient) latencies {
	b.Helper()
	per := make([][]time.Duration, len(clients))
	errs := make(chan error, len(clients))
	for i := range clients {
		if err := clients[i].redial(ctx); err != nil {
			b.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for ci := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := &clients[ci]
			count := b.N / len(clients)
			if ci < b.N%len(clients) {
				count++
			}
			lat := make([]time.Duration, 0, count)
			for q := range count {
				if q > 0 && q%benchPTokensPerConn == 0 {
					if err := c.redial(ctx); err != nil {
						errs <- err
						return
					}
				}
				t0 := time.Now()
				_, err := c.tc.PToken(ctx, c.conn)
				lat = append(lat, time.Since(t0))
				if err != nil {
					errs <- err
					return
				}
			}
			per[ci] = lat
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	all := slices.Concat(per...)
	slices.Sort(all)
	lat := latencies{p50: percentile(all, 50), p99: percentile(all, 99)}
	b.ReportMetric(float64(lat.p50.Nanoseconds())/1e3, "p50-us")
	b.ReportMetric(float64(lat.p99.Nanoseconds())/1e3, "p99-us")
	b.ReportMetric(float64(len(all))/wall.Seconds(), "qps")
	return lat
}

// percentile of sorted durations (nearest rank).
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := (len(sorted)*p + 99) / 100
	return sorted[max(i-1, 0)]
}

// timeBaseline runs f several times and returns its median time: 3 runs
// at 10,000 SAs (a run takes seconds there), up to 50 when small.
func timeBaseline(b *testing.B, n int, f func()) time.Duration {
	b.Helper()
	runs := max(3, min(50, 20000/n))
	ds := make([]time.Duration, runs)
	for i := range ds {
		t0 := time.Now()
		f()
		ds[i] = time.Since(t0)
	}
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// benchViciFind is the VICI baseline: one list-sas through the vici
// package and a scan for the installed CHILD_SA covering flow.
func benchViciFind(b *testing.B, ctx context.Context, c *vici.Client, flow tokenapi.Flow) {
	sas, err := c.ListSAs(ctx, vici.SASelector{})
	if err != nil {
		b.Fatal(err)
	}
	for _, sa := range sas {
		for _, ch := range sa.Children {
			if ch.State == "INSTALLED" && tsListCovers(ch.LocalTS, flow.Local, flow.Protocol) && tsListCovers(ch.RemoteTS, flow.Remote, flow.Protocol) {
				return
			}
		}
	}
	b.Fatalf("vici baseline: no CHILD_SA covers %v", flow)
}

func tsListCovers(list []string, ap netip.AddrPort, proto uint8) bool {
	for _, s := range list {
		if ts, err := tokenapi.ParseTS(s); err == nil && ts.Covers(ap, proto) {
			return true
		}
	}
	return false
}

// benchSwanctlFind is what a user has without obol: run `swanctl
// --list-sas` and parse its text for the installed CHILD_SA covering flow.
func benchSwanctlFind(b *testing.B, ctx context.Context, swanctlPath, viciPath string, flow tokenapi.Flow) {
	out, err := exec.CommandContext(ctx, swanctlPath, "--list-sas", "--uri", "unix://"+viciPath).Output()
	if err != nil {
		b.Fatalf("swanctl --list-sas: %v", err)
	}
	if !swanctlFinds(out, flow) {
		b.Fatalf("swanctl baseline: no CHILD_SA covers %v in %d bytes of swanctl output", flow, len(out))
	}
}

// swanctlFinds parses `swanctl --list-sas` text: a CHILD_SA block starts
// with "  NAME: #ID, reqid R, STATE, ..." and lists its selectors on
// "    local  TS[ TS...]" and "    remote TS[ TS...]" lines.
func swanctlFinds(out []byte, flow tokenapi.Flow) bool {
	var installed, localOK bool
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "  ") && !strings.HasPrefix(line, "   ") && strings.Contains(line, ", reqid "):
			installed, localOK = strings.Contains(line, ", INSTALLED, "), false
		case installed && strings.HasPrefix(line, "    local "):
			localOK = tsListCovers(strings.Fields(strings.TrimPrefix(line, "    local ")), flow.Local, flow.Protocol)
		case installed && localOK && strings.HasPrefix(line, "    remote "):
			if tsListCovers(strings.Fields(strings.TrimPrefix(line, "    remote ")), flow.Remote, flow.Protocol) {
				return true
			}
		}
	}
	return false
}

func acceptAll(ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		// Hold it open: the client's socket must stay connected.
		go func() {
			buf := make([]byte, 1)
			_, _ = c.Read(buf)
			c.Close()
		}()
	}
}

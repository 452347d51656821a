package resolver

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/resolver/resolvertest"
)

// serveDNS runs h over UDP and TCP on one loopback port until the test ends.
func serveDNS(t *testing.T, h dns.HandlerFunc) netip.AddrPort {
	t.Helper()
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln, err := net.Listen("tcp", pc.LocalAddr().String())
		if err != nil { // the port is taken for TCP: try another
			pc.Close()
			continue
		}
		for _, srv := range []*dns.Server{{PacketConn: pc, Handler: h}, {Listener: ln, Handler: h}} {
			started := make(chan struct{})
			srv.NotifyStartedFunc = func() { close(started) }
			go srv.ActivateAndServe()
			<-started
			t.Cleanup(func() { srv.Shutdown() })
		}
		return netip.MustParseAddrPort(pc.LocalAddr().String())
	}
	t.Fatal("no free port for UDP and TCP")
	return netip.AddrPort{}
}

// fakeHandler serves a resolvertest.Server over the wire, truncating UDP
// answers to the query's EDNS0 size as a real server does.
func fakeHandler(fake *resolvertest.Server, udpQueries, tcpQueries *atomic.Int32) dns.HandlerFunc {
	return func(w dns.ResponseWriter, req *dns.Msg) {
		r, err := fake.Exchange(context.Background(), req)
		if err != nil {
			r = new(dns.Msg).SetRcode(req, dns.RcodeServerFailure)
		}
		if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
			udpQueries.Add(1)
			size := dns.MinMsgSize
			if opt := req.IsEdns0(); opt != nil {
				size = int(opt.UDPSize())
			}
			r.Truncate(size)
		} else {
			tcpQueries.Add(1)
		}
		w.WriteMsg(r)
	}
}

func TestClientOverTheWire(t *testing.T) {
	r0 := testRSA(t, 0)
	fake := labZones(t, resolvertest.Secure,
		peerName+" 300 IN IPSECKEY 10 1 4 192.0.2.2 "+b64(testEd25519(0)),
		// Long TXT records: the answer does not fit in 1232 bytes.
		txt(peerName, 300, "X-IPsec-Server(20)=192.0.2.3 "+rsaB64(r0)),
		txt(peerName, 300, "X-IPsec-Server(20)=192.0.2.4 "+rsaB64(r0)),
		txt(peerName, 300, "X-IPsec-Server(20)=192.0.2.5 "+rsaB64(r0)),
		txt(peerName, 300, "X-IPsec-Server(20)=192.0.2.6 "+rsaB64(r0)),
	)
	var udp, tcp atomic.Int32
	addr := serveDNS(t, fakeHandler(fake, &udp, &tcp))
	var dials atomic.Int32
	client := &Client{Server: addr, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		dials.Add(1)
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}}
	cfg := Defaults()
	cfg.Server = addr.String()
	r, err := New(cfg, Options{Transport: client})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	a, err := r.Resolve(context.Background(), plugins.LookupQuery{Addr: peer})
	if err != nil {
		t.Fatal(err)
	}
	if a.DNSSEC != plugins.DNSSECSecure || len(a.Gateways) != 5 {
		t.Fatalf("got %s with %s", a.DNSSEC, describe(a.Gateways))
	}
	st := client.Stats()
	if st.UDPQueries != 3 || st.TCPQueries != 1 || tcp.Load() != 1 || dials.Load() != 4 {
		t.Errorf("client stats %+v, server saw %d UDP and %d TCP, %d dials; want 3 UDP, the TXT answer again over TCP", st, udp.Load(), tcp.Load(), dials.Load())
	}
}

// rawUDP runs a UDP server that hands each query to answer, which returns
// the datagrams to send back (none: stay silent).
func rawUDP(t *testing.T, answer func(n int, q *dns.Msg) []*dns.Msg) netip.AddrPort {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 4096)
		for n := 0; ; n++ {
			m, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			q := new(dns.Msg)
			if q.Unpack(buf[:m]) != nil {
				continue
			}
			for _, r := range answer(n, q) {
				wire, _ := r.Pack()
				pc.WriteTo(wire, from)
			}
		}
	}()
	return netip.MustParseAddrPort(pc.LocalAddr().String())
}

func reply(q *dns.Msg) *dns.Msg {
	r := new(dns.Msg).SetReply(q)
	r.Answer = []dns.RR{&dns.TXT{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET, Ttl: 60}, Txt: []string{"ok"}}}
	return r
}

func TestClientUDP(t *testing.T) {
	q := newQuery(qkey{"x.example.", dns.TypeTXT}, false)
	t.Run("mismatched answers are dropped", func(t *testing.T) {
		addr := rawUDP(t, func(_ int, q *dns.Msg) []*dns.Msg {
			wrongID := reply(q)
			wrongID.Id++
			wrongName := reply(q)
			wrongName.Question[0].Name = "y.example."
			notResponse := reply(q)
			notResponse.Response = false
			return []*dns.Msg{wrongID, wrongName, notResponse, reply(q)}
		})
		c := &Client{Server: addr}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		r, err := c.Exchange(ctx, q)
		if err != nil || len(r.Answer) != 1 {
			t.Fatalf("Exchange: %v, %v", r, err)
		}
		if st := c.Stats(); st.Mismatched != 3 {
			t.Errorf("stats %+v, want 3 mismatched", st)
		}
	})
	t.Run("retransmit after silence", func(t *testing.T) {
		addr := rawUDP(t, func(n int, q *dns.Msg) []*dns.Msg {
			if n == 0 {
				return nil
			}
			return []*dns.Msg{reply(q)}
		})
		c := &Client{Server: addr, Retransmit: 30 * time.Millisecond}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		if _, err := c.Exchange(ctx, q); err != nil {
			t.Fatal(err)
		}
		if st := c.Stats(); st.Retransmits != 1 {
			t.Errorf("stats %+v, want 1 retransmit", st)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		addr := rawUDP(t, func(int, *dns.Msg) []*dns.Msg { return nil })
		c := &Client{Server: addr, Retransmit: 20 * time.Millisecond}
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		_, err := c.Exchange(ctx, q)
		if !errors.Is(err, context.DeadlineExceeded) || time.Since(t0) > time.Second {
			t.Fatalf("after %v: %v", time.Since(t0), err)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		addr := rawUDP(t, func(int, *dns.Msg) []*dns.Msg { return nil })
		c := &Client{Server: addr}
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(30*time.Millisecond, cancel)
		if _, err := c.Exchange(ctx, q); !errors.Is(err, context.Canceled) {
			t.Fatalf("Exchange: %v, want context.Canceled", err)
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := netip.MustParseAddrPort(pc.LocalAddr().String())
		pc.Close()
		c := &Client{Server: addr}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_, err = c.Exchange(ctx, q)
		if err == nil || !strings.Contains(err.Error(), "nothing listens there") {
			t.Fatalf("Exchange: %v", err)
		}
	})
}

func TestMatches(t *testing.T) {
	q := newQuery(qkey{"X.example.", dns.TypeKEY}, false)
	ok := new(dns.Msg).SetReply(q)
	ok.Question[0].Name = "x.EXAMPLE."
	refusedNoQuestion := new(dns.Msg).SetRcode(q, dns.RcodeRefused)
	refusedNoQuestion.Question = nil
	emptyNoQuestion := new(dns.Msg).SetReply(q)
	emptyNoQuestion.Question = nil
	wrongType := new(dns.Msg).SetReply(q)
	wrongType.Question[0].Qtype = dns.TypeTXT
	for _, tc := range []struct {
		name string
		r    *dns.Msg
		want bool
	}{
		{"same question, other case", ok, true},
		{"error without question", refusedNoQuestion, true},
		{"answer without question", emptyNoQuestion, false},
		{"other type", wrongType, false},
	} {
		if got := matches(q, tc.r); got != tc.want {
			t.Errorf("%s: matches = %v, want %v", tc.name, got, tc.want)
		}
	}
}

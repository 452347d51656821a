package lab

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/sys/unix"
)

// inNetns runs fn on a fresh goroutine locked to a thread that has joined
// the node's network namespace. A socket keeps the namespace it was created
// in, so fn should only create sockets (no name resolution: the resolver
// may run on other threads). If the thread cannot go back to its own
// namespace it is not unlocked, so Go throws it away.
func (n *Node) inNetns(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening own netns: %w", err)
			return
		}
		defer self.Close()
		target, err := os.Open(filepath.Join(netnsDir, n.NS))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("node %s: %w", n.Name, err)
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering namespace %s: %w", n.NS, err)
			return
		}
		err = fn()
		if unix.Setns(int(self.Fd()), unix.CLONE_NEWNET) == nil {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// Dial connects from inside the node's namespace (address must be an IP
// literal with port, e.g. "192.0.2.53:53").
func (n *Node) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	var c net.Conn
	err := n.inNetns(func() (err error) {
		var d net.Dialer
		c, err = d.DialContext(ctx, network, address)
		return err
	})
	return c, err
}

// Listen opens a stream listener inside the node's namespace.
func (n *Node) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := n.inNetns(func() (err error) {
		var lc net.ListenConfig
		ln, err = lc.Listen(ctx, network, address)
		return err
	})
	return ln, err
}

// ListenPacket opens a packet socket inside the node's namespace.
func (n *Node) ListenPacket(ctx context.Context, network, address string) (net.PacketConn, error) {
	var pc net.PacketConn
	err := n.inNetns(func() (err error) {
		var lc net.ListenConfig
		pc, err = lc.ListenPacket(ctx, network, address)
		return err
	})
	return pc, err
}

// QueryDNS asks the lab's resolver (unbound, DNSServer) from this node over
// UDP, with recursion and the DNSSEC OK bit set, so the answer's
// AuthenticatedData flag says whether unbound validated it.
func (n *Node) QueryDNS(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	return n.query(ctx, "udp", netip.AddrPortFrom(DNSAddr, DNSPort), name, qtype)
}

// QueryDNS6 is QueryDNS over IPv6, to DNSServer6 (Options.IPv6 only).
func (n *Node) QueryDNS6(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	return n.query(ctx, "udp", netip.AddrPortFrom(DNSAddr6, DNSPort), name, qtype)
}

func (n *Node) query(ctx context.Context, network string, server netip.AddrPort, name string, qtype uint16) (*dns.Msg, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
	}
	conn, err := n.Dial(ctx, network, server.String())
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	m.SetEdns0(1232, true)
	c := &dns.Client{Net: network}
	r, _, err := c.ExchangeWithConnContext(ctx, m, &dns.Conn{Conn: conn})
	if err != nil {
		return nil, fmt.Errorf("query %s %s at %s from %s: %w", dns.Fqdn(name), dns.TypeToString[qtype], server, n.Name, err)
	}
	return r, nil
}

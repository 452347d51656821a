package client

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// PTokenFrom asks about one datagram s received: from is its sender, local
// its destination address (IP_PKTINFO; may be invalid when s is bound to a
// specific address). s is passed to obold (SCM_RIGHTS), which checks that
// local is the socket's address, or one of the host's for a wildcard socket.
func (c *Client) PTokenFrom(ctx context.Context, s syscall.Conn, from netip.AddrPort, local netip.Addr) (PToken, error) {
	rc, err := s.SyscallConn()
	if err != nil {
		return PToken{}, fmt.Errorf("token API: cannot get the socket's descriptor: %w", err)
	}
	attrs := func(b *wire.Builder) {
		b.Addr(wire.AttrPeerAddr, from.Addr()).U16(wire.AttrPeerPort, from.Port()).Addr(wire.AttrLocalAddr, local)
	}
	var m wire.Message
	var rerr error
	if err := rc.Control(func(fd uintptr) {
		m, rerr = c.roundTrip(ctx, wire.TypePTokenQueryFrom, attrs, []int{int(fd)})
	}); err != nil {
		return PToken{}, fmt.Errorf("token API: cannot use the socket's descriptor: %w", err)
	}
	if rerr != nil {
		return PToken{}, rerr
	}
	return decodePToken(m)
}

// ReadFromUDP reads one datagram from conn into buf and returns it with its
// sender and the pToken that applies to that sender. It turns on
// IP_PKTINFO / IPV6_RECVPKTINFO on conn to learn each datagram's
// destination address, so it also works for sockets bound to the wildcard
// address. The caller should Release the pToken when done with it.
func (c *Client) ReadFromUDP(ctx context.Context, conn *net.UDPConn, buf []byte) (int, netip.AddrPort, PToken, error) {
	if err := enablePktinfo(conn); err != nil {
		return 0, netip.AddrPort{}, PToken{}, err
	}
	dl, _ := ctx.Deadline()
	conn.SetReadDeadline(dl)
	stop := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Unix(1, 0)) })
	oob := make([]byte, 128)
	n, oobn, _, from, err := conn.ReadMsgUDPAddrPort(buf, oob)
	stop()
	if err != nil {
		return 0, netip.AddrPort{}, PToken{}, ctxErr(ctx, fmt.Errorf("token API: read a datagram: %w", err))
	}
	local := pktinfoDst(oob[:oobn])
	pt, err := c.PTokenFrom(ctx, conn, from, local)
	return n, from, pt, err
}

func enablePktinfo(conn *net.UDPConn) error {
	rc, err := conn.SyscallConn()
	if err != nil {
		return fmt.Errorf("token API: cannot get the socket's descriptor: %w", err)
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		domain, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			serr = err
			return
		}
		if domain == unix.AF_INET6 {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_RECVPKTINFO, 1)
			// IPv4 datagrams on a dual-stack socket carry IP_PKTINFO.
			unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
			return
		}
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_PKTINFO, 1)
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("token API: turn on IP_PKTINFO to learn datagrams' destination: %w", err)
	}
	return nil
}

// pktinfoDst is the destination address in IP_PKTINFO / IPV6_PKTINFO.
func pktinfoDst(oob []byte) netip.Addr {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return netip.Addr{}
	}
	for _, m := range msgs {
		switch {
		case m.Header.Level == unix.IPPROTO_IP && m.Header.Type == unix.IP_PKTINFO && len(m.Data) >= unix.SizeofInet4Pktinfo:
			// struct in_pktinfo: ifindex (4), spec_dst (4), addr (4): addr
			// is the header's destination.
			return netip.AddrFrom4([4]byte(m.Data[8:12]))
		case m.Header.Level == unix.IPPROTO_IPV6 && m.Header.Type == unix.IPV6_PKTINFO && len(m.Data) >= unix.SizeofInet6Pktinfo:
			return netip.AddrFrom16([16]byte(m.Data[0:16])).Unmap()
		}
	}
	return netip.Addr{}
}

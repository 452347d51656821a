package tokenapi

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// reqError is a refusal with its wire code; the text says what to do.
type reqError struct {
	code wire.ErrorCode
	text string
}

func (e *reqError) Error() string { return e.code.String() + ": " + e.text }

func refuse(code wire.ErrorCode, format string, a ...any) *reqError {
	return &reqError{code: code, text: fmt.Sprintf(format, a...)}
}

// InspectFD reads the flow of a connected AF_INET/AF_INET6 socket: its
// addresses and transport protocol. It only reads (getsockopt,
// getsockname, getpeername) and does not close fd. It is on every query's
// path: the usual socket costs three system calls, and the rarer checks
// (socket type, listening) run only when those leave a doubt.
func InspectFD(fd int) (Flow, error) {
	proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL)
	switch {
	case errors.Is(err, unix.ENOTSOCK):
		return Flow{}, refuse(wire.ErrCodeNotSocket, "the passed descriptor is not a socket; pass the TCP/UDP/SCTP socket whose flow you ask about")
	case err != nil:
		return Flow{}, refuse(wire.ErrCodeNotSocket, "the passed descriptor cannot be examined (%v); pass a socket", err)
	}
	local, family, err := socketAddr(fd, unix.SYS_GETSOCKNAME)
	if err != nil {
		return Flow{}, refuse(wire.ErrCodeNotSocket, "getsockname: %v", err)
	}
	if !local.IsValid() {
		return Flow{}, refuse(wire.ErrCodeNotInet, "the socket is not an IPv4/IPv6 socket (address family %d); only IP flows can be IPsec-protected", family)
	}
	switch proto {
	case unix.IPPROTO_MPTCP:
		// Multipath TCP (Go listeners use it by default): its subflows are
		// TCP on the wire. The flow is the initial subflow's addresses;
		// further subflows on other addresses are not covered.
		proto = unix.IPPROTO_TCP
	case unix.IPPROTO_TCP, unix.IPPROTO_UDP, unix.IPPROTO_SCTP:
	default:
		typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil {
			return Flow{}, refuse(wire.ErrCodeNotSocket, "SO_TYPE: %v", err)
		}
		switch {
		case proto == 0 && typ == unix.SOCK_STREAM:
			proto = unix.IPPROTO_TCP
		case proto == 0 && typ == unix.SOCK_DGRAM:
			proto = unix.IPPROTO_UDP
		default:
			return Flow{}, refuse(wire.ErrCodeUnsupportedProto, "socket type %d protocol %d is not TCP, UDP or SCTP", typ, proto)
		}
	}
	remote, _, err := socketAddr(fd, unix.SYS_GETPEERNAME)
	if errors.Is(err, unix.ENOTCONN) {
		if listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && listening != 0 {
			return Flow{}, refuse(wire.ErrCodeNotConnected, "the socket is listening; pass the connected socket accept() returned")
		}
		return Flow{}, refuse(wire.ErrCodeNotConnected, "the socket has no peer; connect() it first (for an unconnected UDP socket, ask per datagram with PTOKEN_QUERY_FROM)")
	}
	if err != nil {
		return Flow{}, refuse(wire.ErrCodeNotSocket, "getpeername: %v", err)
	}
	if !remote.IsValid() {
		return Flow{}, refuse(wire.ErrCodeNotInet, "the socket's peer address is not IPv4/IPv6")
	}
	f := Flow{Local: local, Remote: remote, Protocol: uint8(proto)}
	if proto == unix.IPPROTO_TCP || proto == unix.IPPROTO_SCTP {
		f.Label = peerLabel(fd)
	}
	return f, nil
}

// peerLabel is the socket's peer security context (SO_PEERSEC), "" when it
// has none. Without an active LSM (as on the project's lab kernel) the
// call fails with ENOPROTOOPT and the label is simply unknown.
func peerLabel(fd int) string {
	// A stack buffer: unix.GetsockoptString allocates one per call, and
	// this runs on every TCP query. Longer contexts fail with ERANGE and
	// are unknown, as SELinux contexts of 256 bytes and more are rare.
	var buf [256]byte
	n := uint32(len(buf))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERSEC,
		uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 || n == 0 || int(n) > len(buf) {
		return ""
	}
	return strings.TrimRight(string(buf[:n]), "\x00")
}

// socketAddr is getsockname or getpeername (trap) of fd, read into a stack
// buffer (unix.Getsockname allocates; this is on every query's path). The
// address is invalid when the family is not IPv4/IPv6; family says which
// it was.
func socketAddr(fd int, trap uintptr) (ap netip.AddrPort, family uint16, err error) {
	var rsa unix.RawSockaddrAny
	l := uint32(unix.SizeofSockaddrAny)
	if _, _, e := unix.Syscall(trap, uintptr(fd), uintptr(unsafe.Pointer(&rsa)), uintptr(unsafe.Pointer(&l))); e != 0 {
		return netip.AddrPort{}, 0, e
	}
	switch rsa.Addr.Family {
	case unix.AF_INET:
		sa := (*unix.RawSockaddrInet4)(unsafe.Pointer(&rsa))
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), netPort(&sa.Port)), unix.AF_INET, nil
	case unix.AF_INET6:
		sa := (*unix.RawSockaddrInet6)(unsafe.Pointer(&rsa))
		return unmapAP(netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), netPort(&sa.Port))), unix.AF_INET6, nil
	}
	return netip.AddrPort{}, rsa.Addr.Family, nil
}

// netPort reads a sockaddr's port, which is in network byte order.
func netPort(p *uint16) uint16 {
	b := (*[2]byte)(unsafe.Pointer(p))
	return uint16(b[0])<<8 | uint16(b[1])
}

// InspectDatagramFD reads the flow of one datagram an unconnected (or
// connected) UDP socket received: the socket's local port, the datagram's
// destination address local (needed when the socket is bound to the
// wildcard address; it must then be an address of this host, else the
// socket's own), and its sender peer. isLocal says whether an address
// belongs to this host.
func InspectDatagramFD(fd int, peer netip.AddrPort, local netip.Addr, isLocal func(netip.Addr) bool) (Flow, error) {
	if !peer.IsValid() || peer.Addr().IsUnspecified() {
		return Flow{}, refuse(wire.ErrCodeBadMessage, "PTOKEN_QUERY_FROM needs the datagram's sender: PEER_ADDR and PEER_PORT")
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return Flow{}, refuse(wire.ErrCodeNotSocket, "the passed descriptor is not a socket; pass the UDP socket the datagram arrived on")
	}
	domain, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
	if err != nil || (domain != unix.AF_INET && domain != unix.AF_INET6) {
		return Flow{}, refuse(wire.ErrCodeNotInet, "the socket is not an IPv4/IPv6 socket")
	}
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil || typ != unix.SOCK_DGRAM {
		return Flow{}, refuse(wire.ErrCodeUnsupportedProto, "PTOKEN_QUERY_FROM is for UDP sockets; use PTOKEN_QUERY for connected TCP/SCTP sockets")
	}
	if proto, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PROTOCOL); err != nil || (proto != 0 && proto != unix.IPPROTO_UDP) {
		return Flow{}, refuse(wire.ErrCodeUnsupportedProto, "PTOKEN_QUERY_FROM is for UDP sockets (protocol %d)", proto)
	}
	ls, err := unix.Getsockname(fd)
	if err != nil {
		return Flow{}, refuse(wire.ErrCodeNotSocket, "getsockname: %v", err)
	}
	bound, ok := sockaddrAP(ls)
	if !ok || bound.Port() == 0 {
		return Flow{}, refuse(wire.ErrCodeNotConnected, "the socket is not bound; bind it and pass a datagram it received")
	}
	if rs, err := unix.Getpeername(fd); err == nil {
		if connected, ok := sockaddrAP(rs); ok && connected != unmapAP(peer) {
			return Flow{}, refuse(wire.ErrCodeAddressMismatch, "the socket is connected to %s, not to the datagram's sender %s", connected, peer)
		}
	}
	local = local.Unmap()
	switch {
	case !bound.Addr().IsUnspecified():
		if local.IsValid() && local != bound.Addr() {
			return Flow{}, refuse(wire.ErrCodeAddressMismatch, "LOCAL_ADDR %s is not the socket's address %s", local, bound.Addr())
		}
		local = bound.Addr()
	case !local.IsValid():
		return Flow{}, refuse(wire.ErrCodeAddressMismatch, "the socket is bound to the wildcard address: pass the datagram's destination (IP_PKTINFO / IPV6_RECVPKTINFO) as LOCAL_ADDR")
	case !isLocal(local):
		return Flow{}, refuse(wire.ErrCodeAddressMismatch, "LOCAL_ADDR %s is not an address of this host", local)
	}
	return Flow{Local: netip.AddrPortFrom(local, bound.Port()), Remote: unmapAP(peer), Protocol: unix.IPPROTO_UDP}, nil
}

// hostAddress says whether a is configured on an interface of obold's
// network namespace.
func hostAddress(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, ia := range addrs {
		if p, err := netip.ParsePrefix(ia.String()); err == nil && p.Addr().Unmap() == a {
			return true
		}
	}
	return false
}

func sockaddrAP(sa unix.Sockaddr) (netip.AddrPort, bool) {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)), true
	case *unix.SockaddrInet6:
		return unmapAP(netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port))), true
	}
	return netip.AddrPort{}, false
}

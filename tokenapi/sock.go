package tokenapi

import (
	"errors"
	"fmt"
	"net/netip"

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
	ls, err := unix.Getsockname(fd)
	if err != nil {
		return Flow{}, refuse(wire.ErrCodeNotSocket, "getsockname: %v", err)
	}
	local, ok := sockaddrAP(ls)
	if !ok {
		return Flow{}, refuse(wire.ErrCodeNotInet, "the socket is not an IPv4/IPv6 socket (%T); only IP flows can be IPsec-protected", ls)
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
	rs, err := unix.Getpeername(fd)
	if errors.Is(err, unix.ENOTCONN) {
		if listening, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err == nil && listening != 0 {
			return Flow{}, refuse(wire.ErrCodeNotConnected, "the socket is listening; pass the connected socket accept() returned")
		}
		return Flow{}, refuse(wire.ErrCodeNotConnected, "the socket has no peer; connect() it first (per-datagram tokens for unconnected sockets are not supported yet)")
	}
	if err != nil {
		return Flow{}, refuse(wire.ErrCodeNotSocket, "getpeername: %v", err)
	}
	remote, ok := sockaddrAP(rs)
	if !ok {
		return Flow{}, refuse(wire.ErrCodeNotInet, "the socket's peer address is not IPv4/IPv6")
	}
	return Flow{Local: local, Remote: remote, Protocol: uint8(proto)}, nil
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

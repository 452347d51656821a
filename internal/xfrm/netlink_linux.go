//go:build linux

package xfrm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// conn is a NETLINK_XFRM socket on Go's poller: reads honour deadlines and
// Close wakes a blocked reader. It belongs to the network namespace of the
// thread that opened it.
type conn struct {
	f   *os.File
	rc  syscall.RawConn
	pid uint32
	seq uint32
	buf []byte
}

// recvBufSize holds the largest netlink datagram the kernel sends us (dump
// chunks are at most 32 KiB).
const recvBufSize = 64 << 10

// dial opens a NETLINK_XFRM socket and joins the multicast groups.
func dial(groups ...int) (*conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_XFRM)
	if err != nil {
		return nil, fmt.Errorf("open NETLINK_XFRM socket: %w; is xfrm_user in this kernel?", err)
	}
	fail := func(what string, err error) (*conn, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("NETLINK_XFRM socket: %s: %w", what, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fail("bind", err)
	}
	for _, g := range groups {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, g); err != nil {
			return fail(fmt.Sprintf("join group %d", g), err)
		}
	}
	// Extended ACKs carry the kernel's own error text; capped ACKs leave out
	// our request. Both are optional (old kernels).
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1)
	_ = unix.SetsockoptInt(fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	nsa, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		return fail("getsockname", fmt.Errorf("unexpected address %T", sa))
	}
	f := os.NewFile(uintptr(fd), "netlink-xfrm")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("NETLINK_XFRM socket: %w", err)
	}
	return &conn{f: f, rc: rc, pid: nsa.Pid, seq: uint32(time.Now().UnixNano()), buf: make([]byte, recvBufSize)}, nil
}

func (c *conn) Close() error { return c.f.Close() }

// setRcvBuf asks for a larger socket buffer (SO_RCVBUFFORCE needs
// CAP_NET_ADMIN; SO_RCVBUF is capped by net.core.rmem_max).
func (c *conn) setRcvBuf(n int) error {
	var serr error
	err := c.rc.Control(func(fd uintptr) {
		if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, n); serr != nil {
			serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, n)
		}
	})
	return errors.Join(err, serr)
}

func (c *conn) send(b []byte) error {
	var serr error
	err := c.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return serr != unix.EAGAIN
	})
	return errors.Join(err, serr)
}

// recv reads one datagram into c.buf. The result is valid until the next
// recv.
func (c *conn) recv() ([]byte, error) {
	var (
		n, flags int
		rerr     error
	)
	err := c.rc.Read(func(fd uintptr) bool {
		n, _, flags, _, rerr = unix.Recvmsg(int(fd), c.buf, nil, 0)
		return rerr != unix.EAGAIN
	})
	if err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, rerr
	}
	if flags&unix.MSG_TRUNC != 0 {
		return nil, fmt.Errorf("netlink datagram larger than %d bytes was truncated", len(c.buf))
	}
	return c.buf[:n], nil
}

// aLongTimeAgo makes a blocked read return at once.
var aLongTimeAgo = time.Unix(1, 0)

// request sends one request and collects the answers: for a dump, every
// message until NLMSG_DONE; otherwise the answers until the ACK. Payloads
// are copied.
func (c *conn) request(ctx context.Context, typ uint16, dump bool, payload []byte) ([][]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.seq++
	flags := uint16(unix.NLM_F_REQUEST)
	if dump {
		flags |= unix.NLM_F_DUMP
	} else {
		flags |= unix.NLM_F_ACK
	}
	if d, ok := ctx.Deadline(); ok {
		c.f.SetReadDeadline(d)
	}
	stop := context.AfterFunc(ctx, func() { c.f.SetReadDeadline(aLongTimeAgo) })
	defer stop()
	defer c.f.SetReadDeadline(time.Time{})
	if err := c.send(appendMessage(nil, typ, flags, c.seq, 0, payload)); err != nil {
		return nil, fmt.Errorf("send: %w", err)
	}
	var out [][]byte
	for {
		dg, err := c.recv()
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr
			}
			return nil, fmt.Errorf("receive: %w", err)
		}
		ms, err := splitMessages(dg)
		if err != nil {
			return nil, err
		}
		for _, m := range ms {
			if m.seq != c.seq || m.pid != c.pid {
				continue // not ours (a stray multicast or an old answer)
			}
			switch m.typ {
			case nlmsgError:
				if err := parseNlError(m); err != nil {
					return nil, err
				}
				return out, nil // ACK
			case nlmsgDone:
				if len(m.payload) >= 4 {
					if e := int32(ne.Uint32(m.payload)); e < 0 {
						return nil, syscall.Errno(-e)
					}
				}
				return out, nil
			case nlmsgNoop, nlmsgOverrun:
				continue
			default:
				out = append(out, bytes.Clone(m.payload))
			}
		}
	}
}

// kernelError is a negative ACK with the kernel's extended-ACK text.
type kernelError struct {
	errno syscall.Errno
	msg   string
}

func (e *kernelError) Error() string {
	if e.msg != "" {
		return fmt.Sprintf("%s (kernel: %s)", e.errno.Error(), e.msg)
	}
	return e.errno.Error()
}

func (e *kernelError) Unwrap() error { return e.errno }

// parseNlError reads struct nlmsgerr; nil for an ACK.
func parseNlError(m nlmsg) error {
	if len(m.payload) < 4 {
		return errors.New("short NLMSG_ERROR")
	}
	code := int32(ne.Uint32(m.payload))
	if code == 0 {
		return nil
	}
	e := &kernelError{errno: syscall.Errno(-code)}
	if m.flags&unix.NLM_F_ACK_TLVS != 0 {
		off := 4 + sizeofNlmsghdr
		if m.flags&unix.NLM_F_CAPPED == 0 && len(m.payload) >= off {
			off = 4 + int(ne.Uint32(m.payload[4:]))
		}
		if off <= len(m.payload) {
			d := dec{b: m.payload, msg: "extended ACK"}
			if as, err := d.attrs(off); err == nil {
				for _, a := range as {
					if a.typ == unix.NLMSGERR_ATTR_MSG {
						e.msg = string(bytes.TrimRight(m.payload[a.off:a.off+a.len], "\x00"))
					}
				}
			}
		}
	}
	return e
}

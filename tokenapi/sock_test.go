package tokenapi

import (
	"errors"
	"net"
	"os"
	"syscall"
	"testing"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

func fdOf(t *testing.T, c syscall.Conn) int {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	rc.Control(func(f uintptr) { fd = int(f) })
	return fd
}

func TestInspectFD(t *testing.T) {
	tcpLn, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer tcpLn.Close()
	tcp, err := net.DialTCP("tcp", nil, tcpLn.Addr().(*net.TCPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	udpSrv, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udpSrv.Close()
	udp, err := net.DialUDP("udp", nil, udpSrv.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	uc, us, err := socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	defer us.Close()

	t.Run("tcp", func(t *testing.T) {
		f, err := InspectFD(fdOf(t, tcp))
		if err != nil {
			t.Fatal(err)
		}
		if f.Protocol != 6 || f.Local.String() != tcp.LocalAddr().String() || f.Remote.String() != tcp.RemoteAddr().String() {
			t.Fatalf("flow %+v", f)
		}
	})
	t.Run("connected udp", func(t *testing.T) {
		f, err := InspectFD(fdOf(t, udp))
		if err != nil {
			t.Fatal(err)
		}
		if f.Protocol != 17 || f.Remote.String() != udpSrv.LocalAddr().String() {
			t.Fatalf("flow %+v", f)
		}
	})
	refused := []struct {
		name string
		fd   int
		code wire.ErrorCode
	}{
		{"unconnected udp", fdOf(t, udpSrv), wire.ErrCodeNotConnected},
		{"listening tcp", fdOf(t, tcpLn), wire.ErrCodeNotConnected},
		{"pipe", int(r.Fd()), wire.ErrCodeNotSocket},
		{"unix socket", fdOf(t, uc), wire.ErrCodeNotInet},
		{"closed number", 1 << 20, wire.ErrCodeNotSocket},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			_, err := InspectFD(tc.fd)
			var re *reqError
			if !errors.As(err, &re) || re.code != tc.code {
				t.Fatalf("InspectFD: %v, want %s", err, tc.code)
			}
		})
	}
}

func socketpair() (*net.UnixConn, *net.UnixConn, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
	if err != nil {
		return nil, nil, err
	}
	mk := func(fd int) (*net.UnixConn, error) {
		f := os.NewFile(uintptr(fd), "sp")
		defer f.Close()
		c, err := net.FileConn(f)
		if err != nil {
			return nil, err
		}
		return c.(*net.UnixConn), nil
	}
	a, err := mk(fds[0])
	if err != nil {
		return nil, nil, err
	}
	b, err := mk(fds[1])
	return a, b, err
}

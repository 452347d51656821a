package client

import (
	"net/netip"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

func TestPktinfoDst(t *testing.T) {
	v4 := make([]byte, unix.SizeofInet4Pktinfo)
	copy(v4[4:8], []byte{192, 0, 2, 99}) // spec_dst: not the header's destination
	copy(v4[8:12], []byte{192, 0, 2, 12})
	v6 := make([]byte, unix.SizeofInet6Pktinfo)
	a6 := netip.MustParseAddr("2001:db8::12").As16()
	copy(v6, a6[:])
	tests := []struct {
		name string
		oob  []byte
		want string
	}{
		{"IP_PKTINFO", cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, v4), "192.0.2.12"},
		{"IPV6_PKTINFO", cmsg(unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, v6), "2001:db8::12"},
		{"short", cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, v4[:8]), "invalid IP"},
		{"other", cmsg(unix.SOL_SOCKET, unix.SCM_RIGHTS, []byte{1, 0, 0, 0}), "invalid IP"},
		{"none", nil, "invalid IP"},
	}
	for _, tt := range tests {
		if got := pktinfoDst(tt.oob).String(); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

func cmsg(level, typ int, data []byte) []byte {
	b := make([]byte, unix.CmsgSpace(len(data)))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&b[0]))
	h.Level, h.Type = int32(level), int32(typ)
	h.SetLen(unix.CmsgLen(len(data)))
	copy(b[unix.CmsgLen(0):], data)
	return b
}

// FuzzPktinfoDst: control data from the kernel is parsed without panics.
func FuzzPktinfoDst(f *testing.F) {
	f.Add(cmsg(unix.IPPROTO_IP, unix.IP_PKTINFO, make([]byte, unix.SizeofInet4Pktinfo)))
	f.Add(cmsg(unix.IPPROTO_IPV6, unix.IPV6_PKTINFO, make([]byte, unix.SizeofInet6Pktinfo)))
	f.Fuzz(func(t *testing.T, oob []byte) {
		if a := pktinfoDst(oob); a.IsValid() && !a.Is4() && !a.Is6() {
			t.Fatalf("odd address %v", a)
		}
	})
}

package tokenapi

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/plugins"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// The pin is what keeps a socket's traffic from leaving unprotected after
// PROTECT, also once the SA is gone. It is set on the application's own
// socket (the descriptor obold received is the same open file), so it
// lasts as long as the socket and the application cannot undo it without
// CAP_NET_RAW (SO_BINDTODEVICE) or CAP_NET_ADMIN (IP_XFRM_POLICY).

// pinDevice binds fd to dev, charon's TUN device on the userspace (kernel-
// libipsec) datapath: its packets can only go to libipsec, which sends
// them as ESP or drops them. A per-socket XFRM template would hold them
// forever there, since that kernel has no ESP state for the pair.
func pinDevice(fd int, dev string) error {
	if dev == "" {
		return fmt.Errorf("no TUN device known for the userspace datapath")
	}
	if err := unix.SetsockoptString(fd, unix.SOL_SOCKET, unix.SO_BINDTODEVICE, dev); err != nil {
		return fmt.Errorf("SO_BINDTODEVICE %s: %w", dev, err)
	}
	return nil
}

// pinXFRM gives fd per-socket XFRM policies in both directions that
// require ESP in tunnel mode between the SA's outer addresses (kernel
// ESP): with no SA, the kernel holds the packets (ACQUIRE) instead of
// sending them in clear.
func pinXFRM(fd int, local, remote netip.Addr) error {
	for _, dir := range []uint8{xfrmPolicyOut, xfrmPolicyIn} {
		b, err := socketPolicy(dir, xfrmActionAllow, &espTemplate{local: local, remote: remote})
		if err != nil {
			return err
		}
		if err := setSocketPolicy(fd, local, b); err != nil {
			return err
		}
	}
	return nil
}

// pinBypass gives fd per-socket XFRM policies without templates: its
// traffic skips the host's IPsec policies (CLEAR granted).
func pinBypass(fd int, family netip.Addr) error {
	for _, dir := range []uint8{xfrmPolicyOut, xfrmPolicyIn} {
		b, err := socketPolicy(dir, xfrmActionAllow, nil)
		if err != nil {
			return err
		}
		if !family.Is4() {
			binary.NativeEndian.PutUint16(b[selFamily:], unix.AF_INET6)
		}
		if err := setSocketPolicy(fd, family, b); err != nil {
			return err
		}
	}
	return nil
}

// pinMark sets SO_MARK on fd (the mark charon's routing rule exempts).
func pinMark(fd int, mark uint32) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		return fmt.Errorf("SO_MARK 0x%x: %w", mark, err)
	}
	return nil
}

func setSocketPolicy(fd int, a netip.Addr, b []byte) error {
	level, opt := unix.SOL_IP, unix.IP_XFRM_POLICY
	if !a.Is4() {
		level, opt = unix.SOL_IPV6, unix.IPV6_XFRM_POLICY
	}
	if err := unix.SetsockoptString(fd, level, opt, string(b)); err != nil {
		return fmt.Errorf("per-socket XFRM policy: %w", err)
	}
	return nil
}

// Layout of struct xfrm_userpolicy_info and xfrm_user_tmpl (linux/xfrm.h),
// the same on every Linux architecture (u64 aligned to 8).
const (
	policyInfoLen = 168
	selFamily     = 40 // xfrm_selector.family
	lftOffset     = 56 // xfrm_lifetime_cfg: soft/hard byte, soft/hard packet limits first
	dirOffset     = 160
	actionOffset  = 161
	tmplLen       = 64

	xfrmPolicyIn    = 0
	xfrmPolicyOut   = 1
	xfrmActionAllow = 0
	xfrmModeTunnel  = 1
)

type espTemplate struct {
	local, remote netip.Addr // the SA's outer addresses
}

// socketPolicy encodes a per-socket policy for direction dir. A socket
// policy's selector matches every flow of the socket (all prefixes 0); only
// its family must be set.
func socketPolicy(dir, action uint8, t *espTemplate) ([]byte, error) {
	n := policyInfoLen
	if t != nil {
		n += tmplLen
	}
	b := make([]byte, n)
	fam := uint16(unix.AF_INET)
	if t != nil {
		if !t.local.IsValid() || !t.remote.IsValid() || t.local.Is4() != t.remote.Is4() {
			return nil, fmt.Errorf("ESP template needs both outer addresses of one family, got %v and %v", t.local, t.remote)
		}
		if !t.local.Is4() {
			fam = unix.AF_INET6
		}
	}
	binary.NativeEndian.PutUint16(b[selFamily:], fam)
	for i := 0; i < 4; i++ { // no byte or packet limits
		binary.NativeEndian.PutUint64(b[lftOffset+8*i:], ^uint64(0))
	}
	b[dirOffset], b[actionOffset] = dir, action
	if t == nil {
		return b, nil
	}
	src, dst := t.local, t.remote
	if dir == xfrmPolicyIn {
		src, dst = dst, src
	}
	tm := b[policyInfoLen:]
	putAddr(tm[0:16], dst) // id.daddr
	tm[20] = unix.IPPROTO_ESP
	binary.NativeEndian.PutUint16(tm[24:], fam)
	putAddr(tm[28:44], src)
	tm[48] = xfrmModeTunnel
	for _, off := range []int{52, 56, 60} { // any auth, encryption, compression algorithm
		binary.NativeEndian.PutUint32(tm[off:], ^uint32(0))
	}
	return b, nil
}

func putAddr(dst []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(dst, v[:])
		return
	}
	v := a.As16()
	copy(dst, v[:])
}

// pinProtected pins fd so its traffic leaves only IPsec-protected: to the
// TUN device on the userspace datapath, else per-socket XFRM policies
// requiring ESP between local and remote (the SA's outer addresses, or the
// flow's hosts before an SA is known).
func pinProtected(fd int, t PinTarget, local, remote netip.Addr) (wire.Pin, string, error) {
	if t.Datapath == plugins.DatapathUserspace {
		return wire.PinDevice, t.Device, pinDevice(fd, t.Device)
	}
	return wire.PinXFRM, "", pinXFRM(fd, local, remote)
}

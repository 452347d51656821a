package tokenapi

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSocketPolicyEncoding checks the per-socket XFRM policy bytes field by
// field (linux/xfrm.h layout), then lets the kernel judge them: it refuses
// a malformed policy or template with EINVAL.
func TestSocketPolicyEncoding(t *testing.T) {
	l4, r4 := netip.MustParseAddr("192.0.2.11"), netip.MustParseAddr("192.0.2.12")
	l6, r6 := netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")
	tests := []struct {
		name             string
		dir              uint8
		tmpl             *espTemplate
		family           uint16
		tmplSrc, tmplDst netip.Addr
	}{
		{"bypass out", xfrmPolicyOut, nil, unix.AF_INET, netip.Addr{}, netip.Addr{}},
		{"ESP out v4", xfrmPolicyOut, &espTemplate{local: l4, remote: r4}, unix.AF_INET, l4, r4},
		{"ESP in v4: addresses swap", xfrmPolicyIn, &espTemplate{local: l4, remote: r4}, unix.AF_INET, r4, l4},
		{"ESP out v6", xfrmPolicyOut, &espTemplate{local: l6, remote: r6}, unix.AF_INET6, l6, r6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b, err := socketPolicy(tt.dir, xfrmActionAllow, tt.tmpl)
			if err != nil {
				t.Fatal(err)
			}
			want := policyInfoLen
			if tt.tmpl != nil {
				want += tmplLen
			}
			if len(b) != want || b[dirOffset] != tt.dir || b[actionOffset] != xfrmActionAllow {
				t.Fatalf("len %d dir %d action %d", len(b), b[dirOffset], b[actionOffset])
			}
			if f := binary.NativeEndian.Uint16(b[selFamily:]); f != tt.family {
				t.Errorf("selector family %d, want %d", f, tt.family)
			}
			if binary.NativeEndian.Uint64(b[lftOffset:]) != ^uint64(0) {
				t.Error("soft byte limit is not infinite")
			}
			if tt.tmpl != nil {
				tm := b[policyInfoLen:]
				if tm[20] != unix.IPPROTO_ESP || tm[48] != xfrmModeTunnel || binary.NativeEndian.Uint16(tm[24:]) != tt.family {
					t.Errorf("template proto %d mode %d family %d", tm[20], tm[48], binary.NativeEndian.Uint16(tm[24:]))
				}
				n := 4
				if tt.family == unix.AF_INET6 {
					n = 16
				}
				dst, _ := netip.AddrFromSlice(tm[0:n])
				src, _ := netip.AddrFromSlice(tm[28 : 28+n])
				if dst != tt.tmplDst || src != tt.tmplSrc {
					t.Errorf("template %v -> %v, want %v -> %v", src, dst, tt.tmplSrc, tt.tmplDst)
				}
			}
			// The kernel's own check (verify_newpolicy_info, validate_tmpl).
			domain, opt, level := unix.AF_INET, unix.IP_XFRM_POLICY, unix.SOL_IP
			if tt.family == unix.AF_INET6 {
				domain, opt, level = unix.AF_INET6, unix.IPV6_XFRM_POLICY, unix.SOL_IPV6
			}
			fd, err := unix.Socket(domain, unix.SOCK_STREAM, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if err := unix.SetsockoptString(fd, level, opt, string(b)); err != nil {
				t.Fatalf("the kernel refused the policy: %v", err)
			}
		})
	}
	if _, err := socketPolicy(xfrmPolicyOut, xfrmActionAllow, &espTemplate{local: l4, remote: r6}); err == nil {
		t.Error("a template mixing families was encoded")
	}
}

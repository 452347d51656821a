package xfrm

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/obol-ipsec/obol/plugins"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestDatapath(t *testing.T) {
	tests := []struct {
		plugins []string
		want    plugins.Datapath
		wantErr bool
	}{
		{[]string{"aes", "kernel-netlink", "kernel-libipsec", "vici"}, plugins.DatapathUserspace, false},
		{[]string{"aes", "kernel-netlink", "socket-default"}, plugins.DatapathKernel, false},
		{[]string{"aes", "vici"}, "", true},
	}
	for _, tt := range tests {
		got, err := (&Checker{}).Datapath(context.Background(), tt.plugins)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("Datapath(%v) = %q, %v; want %q (err %v)", tt.plugins, got, err, tt.want, tt.wantErr)
		}
	}
}

type fakeKernel struct {
	ps  []Policy
	err error
}

func (f *fakeKernel) Policies(context.Context) ([]Policy, error) { return f.ps, f.err }

// tagged is an index carrying obold's default tag.
func tagged(slot uint32, dir Dir) uint32 { return DefaultOwner().index(dir, slot) }

func kpol(src, dst string, dir Dir, act Action, prio, index uint32) Policy {
	return Policy{Src: netip.MustParsePrefix(src), Dst: netip.MustParsePrefix(dst), Dir: dir, Action: act, Priority: prio, Index: index}
}

func ppol(src, dst, dir, action string, prio uint32) plugins.Policy {
	return plugins.Policy{Src: netip.MustParsePrefix(src), Dst: netip.MustParsePrefix(dst), Dir: dir, Action: action, Priority: prio}
}

func TestCheck(t *testing.T) {
	const (
		trap  = 1_075_000
		pair  = 1_025_000
		bpass = 1_000_100
	)
	want := []plugins.Policy{
		ppol("0.0.0.0/0", "10.2.0.0/16", "out", "trap", trap),
		ppol("10.1.0.0/24", "10.2.0.10/32", "out", "allow", pair),
		ppol("0.0.0.0/0", "192.0.2.53/32", "out", "allow", bpass),
		{Src: netip.MustParsePrefix("0.0.0.0/0"), Dst: netip.MustParsePrefix("0.0.0.0/0"), Proto: 17, DstPort: 500, Dir: "out", Action: "allow", Priority: bpass},
		{Src: netip.MustParsePrefix("0.0.0.0/0"), Dst: netip.MustParsePrefix("0.0.0.0/0"), Proto: 17, DstPort: 4500, Dir: "out", Action: "allow", Priority: bpass},
	}
	udp := func(port uint16, idx uint32) Policy {
		p := kpol("0.0.0.0/0", "0.0.0.0/0", DirOut, Allow, bpass, idx)
		p.Proto, p.DstPort = 17, port
		return p
	}
	kernel := []Policy{
		kpol("0.0.0.0/0", "10.2.0.0/16", DirOut, Trap, trap, tagged(1, DirOut)),         // as wanted
		kpol("10.1.0.0/24", "10.2.0.10/32", DirOut, Allow, pair+1, tagged(2, DirOut)),   // wrong priority
		kpol("10.1.0.0/24", "10.9.0.0/24", DirOut, Block, 1_050_000, tagged(3, DirOut)), // ours, no longer wanted
		udp(500, tagged(4, DirOut)), // as wanted
		udp(4500, 41),               // in band, no tag: not ours
		kpol("0.0.0.0/0", "192.0.2.53/32", DirOut, Allow, 10, 9),                // charon's: not ours
		kpol("10.1.0.0/24", "10.2.0.0/24", DirOut, Trap, 390_000, 17),           // swanctl's: not ours
		kpol("10.1.0.0/24", "10.7.0.0/24", DirOut, Block, 5, tagged(5, DirOut)), // tag outside the band: not ours
	}
	c := &Checker{Kernel: &fakeKernel{ps: kernel}, Log: quiet}
	r, err := c.Check(context.Background(), want)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Missing) != 2 || r.Missing[0].Dst != netip.MustParsePrefix("192.0.2.53/32") || r.Missing[1].DstPort != 4500 {
		t.Errorf("missing = %+v", r.Missing)
	}
	if len(r.Extra) != 1 || r.Extra[0].Priority != pair+1 {
		t.Errorf("extra = %+v", r.Extra)
	}
	if len(r.Stale) != 1 || r.Stale[0].Action != "block" {
		t.Errorf("stale = %+v", r.Stale)
	}
	if r.OK() {
		t.Error("report says OK")
	}

	var ours []Policy
	for _, w := range want {
		p, err := FromPlugin(w)
		if err != nil {
			t.Fatal(err)
		}
		p.Index = tagged(uint32(len(ours)+10), p.Dir)
		ours = append(ours, p)
	}
	r, _ = (&Checker{Kernel: &fakeKernel{ps: append(ours, kernel[4:]...)}, Log: quiet}).Check(context.Background(), want)
	if !r.OK() {
		t.Errorf("identical kernel plus foreign policies: %+v", r)
	}
	if _, err := (&Checker{Kernel: &fakeKernel{err: errors.New("EPERM")}}).Check(context.Background(), want); err == nil {
		t.Error("kernel error swallowed")
	}
	if _, err := (&Checker{}).Check(context.Background(), want); err == nil {
		t.Error("nil kernel: no error")
	}
	if _, err := c.Check(context.Background(), []plugins.Policy{{Dir: "sideways", Action: "allow"}}); err == nil {
		t.Error("bad direction accepted")
	}
}

func TestCheckLabelsAndLifetimes(t *testing.T) {
	base := kpol("10.1.0.0/24", "10.2.0.0/24", DirOut, Allow, 1_030_000, tagged(1, DirOut))
	labeled := base
	labeled.SecCtx = "system_u:object_r:ipsec_spd_t:s0"
	shunt := kpol("0.0.0.0/0", "10.3.0.5/32", DirOut, Block, 1_050_000, tagged(2, DirOut))
	shunt.Lifetime = 1500 * time.Millisecond
	kshunt := shunt
	kshunt.Lifetime = 2 * time.Second // the kernel holds whole seconds

	tests := []struct {
		name                 string
		want, have           []Policy
		missing, extra, stal int
	}{
		{"label dropped by the kernel", []Policy{labeled}, []Policy{base}, 1, 0, 1},
		{"label kept", []Policy{labeled}, []Policy{labeled}, 0, 0, 0},
		{"labeled and unlabeled side by side", []Policy{base, labeled}, []Policy{labeled, base}, 0, 0, 0},
		{"lifetime rounded up to seconds", []Policy{shunt}, []Policy{kshunt}, 0, 0, 0},
		{"lifetime differs", []Policy{shunt}, []Policy{func() Policy { p := kshunt; p.Lifetime = 0; return p }()}, 0, 1, 0},
		{"shunt expired", []Policy{shunt}, nil, 1, 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := compare(tt.want, tt.have)
			if len(r.Missing) != tt.missing || len(r.Extra) != tt.extra || len(r.Stale) != tt.stal {
				t.Errorf("got missing %d extra %d stale %d; want %d %d %d", len(r.Missing), len(r.Extra), len(r.Stale), tt.missing, tt.extra, tt.stal)
			}
		})
	}
}

func TestOwner(t *testing.T) {
	o := DefaultOwner()
	tests := []struct {
		name string
		p    Policy
		want bool
	}{
		{"tag and band", Policy{Priority: 1_000_000, Index: tagged(0, DirOut)}, true},
		{"tag, band top", Policy{Priority: 1_099_999, Index: tagged(slotCount-1, DirIn)}, true},
		{"band, no tag", Policy{Priority: 1_000_500, Index: 0x19}, false},
		{"tag, below band", Policy{Priority: 999_999, Index: tagged(3, DirOut)}, false},
		{"tag, above band", Policy{Priority: 1_100_000, Index: tagged(3, DirOut)}, false},
		{"kernel numbering", Policy{Priority: 1_000_500, Index: 8}, false},
	}
	for _, tt := range tests {
		if got := o.Owns(tt.p); got != tt.want {
			t.Errorf("%s: Owns = %v", tt.name, got)
		}
		if got := (Owner{}).Owns(tt.p); got != tt.want {
			t.Errorf("%s: zero Owner: Owns = %v", tt.name, got)
		}
	}
	if idx := o.index(DirFwd, 5); idx&7 != 2 || idx>>24 != 0xb0 || slotOf(idx) != 5 {
		t.Errorf("index(fwd, 5) = %#x", idx)
	}
	for _, bad := range []Owner{{Band: Band{Min: 2_000_000, Max: 1_000_000}}, {Band: Band{Min: 1_000_000, Max: 1_000_010}}, {Band: Band{Min: 10, Max: 100_000}}} {
		if err := bad.Validate(); err == nil {
			t.Errorf("Validate(%+v) = nil", bad)
		}
	}
	if err := (Owner{}).Validate(); err != nil {
		t.Error(err)
	}
	b := DefaultBand
	p32 := netip.MustParsePrefix("10.0.0.1/32")
	p16 := netip.MustParsePrefix("10.0.0.0/16")
	any4 := netip.MustParsePrefix("0.0.0.0/0")
	order := []uint32{
		b.Priority(RoleBypass, any4, any4),
		b.Priority(RolePair, p32, p32),
		b.Priority(RoleShunt, any4, p32),
		b.Priority(RoleShunt, any4, p16),
		b.Priority(RoleTrap, any4, p16),
		b.Priority(RoleTrap, any4, any4),
	}
	for i := 1; i < len(order); i++ {
		if order[i-1] >= order[i] {
			t.Errorf("priorities out of order: %v", order)
		}
	}
	for _, p := range order {
		if !b.Contains(p) {
			t.Errorf("priority %d outside the band", p)
		}
	}
}

func TestValidate(t *testing.T) {
	ok := Policy{Dst: netip.MustParsePrefix("10.99.0.0/16"), Dir: DirOut, Action: Trap, Priority: 1_075_000}
	if err := ok.Validate(); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*Policy)
		want string
	}{
		{"no family", func(p *Policy) { p.Dst = netip.Prefix{} }, "no address family"},
		{"mixed families", func(p *Policy) { p.Src = netip.MustParsePrefix("::/0") }, "different address families"},
		{"ports without protocol", func(p *Policy) { p.DstPort = 500 }, "ports need a protocol"},
		{"fwd trap", func(p *Policy) { p.Dir = DirFwd }, "a trap must be dir out"},
		{"negative lifetime", func(p *Policy) { p.Lifetime = -time.Second }, "negative lifetime"},
		{"NUL in context", func(p *Policy) { p.SecCtx = "a\x00b" }, "NUL byte"},
		{"if_id", func(p *Policy) { p.IfID = 7 }, "IfID"},
		{"mapped", func(p *Policy) { p.Dst = netip.MustParsePrefix("::ffff:10.0.0.0/112") }, "IPv4-mapped"},
	}
	for _, tt := range tests {
		p := ok
		tt.mod(&p)
		err := p.Validate()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tt.name, err, tt.want)
		}
	}
}

func TestPluginRoundTrip(t *testing.T) {
	p := plugins.Policy{
		Src: netip.MustParsePrefix("0.0.0.0/0"), Dst: netip.MustParsePrefix("0.0.0.0/0"),
		Proto: 17, SrcPort: 4500, Dir: "in", Action: "allow", Priority: 1_000_100,
		Mark: 0x42, Lifetime: 30 * time.Second, Label: "system_u:object_r:x_t:s0",
	}
	q, err := FromPlugin(p)
	if err != nil {
		t.Fatal(err)
	}
	if got := q.Plugin(); got != p {
		t.Errorf("round trip: %+v != %+v", got, p)
	}
	if _, err := FromPlugin(plugins.Policy{Dir: "out", Action: "encrypt"}); err == nil {
		t.Error("unknown action accepted")
	}
}

// --- wire format -----------------------------------------------------------

// craft builds bytes field by field at explicit offsets, independently of
// the package's encoders.
type craft []byte

func (c craft) u8(off int, v uint8) craft   { c[off] = v; return c }
func (c craft) u16(off int, v uint16) craft { ne.PutUint16(c[off:], v); return c }
func (c craft) u32(off int, v uint32) craft { ne.PutUint32(c[off:], v); return c }
func (c craft) u64(off int, v uint64) craft { ne.PutUint64(c[off:], v); return c }
func (c craft) be16(off int, v uint16) craft {
	c[off], c[off+1] = byte(v>>8), byte(v)
	return c
}
func (c craft) ip(off int, s string) craft {
	a := netip.MustParseAddr(s)
	copy(c[off:], a.AsSlice())
	return c
}
func (c craft) attr(typ uint16, payload []byte) craft {
	l := 4 + len(payload)
	h := make([]byte, 4)
	ne.PutUint16(h, uint16(l))
	ne.PutUint16(h[2:], typ)
	out := append(append(c, h...), payload...)
	for len(out)%4 != 0 {
		out = append(out, 0)
	}
	return out
}

// craftAcquire is an ACQUIRE as Linux 6.x sends it for a UDP packet
// 10.98.0.1:40000 -> 10.99.1.2:9 trapped by obold's 0.0.0.0/0 -> 10.99.0.0/16
// policy, with a template, a security context and a mark.
func craftAcquire() craft {
	c := make(craft, 280)
	// xfrm_id: daddr, spi, proto
	c.ip(0, "10.99.1.2").u8(20, 50)
	// saddr
	c.ip(24, "10.98.0.1")
	// sel at 40
	c.ip(40+0, "10.99.1.2").ip(40+16, "10.98.0.1").
		be16(40+32, 9).be16(40+34, 0xffff).be16(40+36, 40000).be16(40+38, 0xffff).
		u16(40+40, 2).u8(40+42, 32).u8(40+43, 32).u8(40+44, 17).u32(40+48, 3)
	// policy at 96: sel, lft, curlft, priority, index, dir, action
	c.ip(96+0, "10.99.0.0").u16(96+40, 2).u8(96+42, 16).u8(96+43, 0)
	for i := 0; i < 4; i++ {
		c.u64(96+56+i*8, ^uint64(0))
	}
	c.u64(96+120+16, 1_700_000_000) // curlft.add_time
	c.u32(96+152, 1_075_000).u32(96+156, 0xb0000009).u8(96+160, 1)
	c.u32(264, 0xffffffff).u32(268, 0xfffffffe).u32(272, 0xfffffffd).u32(276, 42)
	tmpl := make(craft, 64)
	tmpl.u8(20, 50).u16(24, 2).u32(44, 0).u8(48, 0).u32(52, 1).u32(56, 2).u32(60, 3)
	c = c.attr(attrTmpl, tmpl)
	ctx := make(craft, 8)
	ctx.u16(0, 8+12).u16(2, 8).u8(4, 1).u8(5, 1).u16(6, 12)
	c = c.attr(attrSecCtx, append(ctx, "user_u:r:t\x00\x00"...))
	c = c.attr(attrPolicyType, []byte{0, 0, 0, 0, 0, 0})
	mark := make(craft, 8)
	c = c.attr(attrMark, mark.u32(0, 0x42).u32(4, 0xff))
	c = c.attr(99, []byte{1, 2, 3}) // a future attribute: skipped
	c = c.attr(attrIfID, craft(make([]byte, 4)).u32(0, 7))
	return c
}

func TestParseAcquireCrafted(t *testing.T) {
	a, err := ParseAcquire(craftAcquire())
	if err != nil {
		t.Fatal(err)
	}
	want := Pair{Src: netip.MustParseAddr("10.98.0.1"), Dst: netip.MustParseAddr("10.99.1.2")}
	if a.Pair() != want {
		t.Errorf("pair %s, want %s", a.Pair(), want)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"proto", a.Proto, uint8(17)},
		{"sport", a.SrcPort, uint16(40000)},
		{"dport", a.DstPort, uint16(9)},
		{"ifindex", a.Ifindex, int32(3)},
		{"SA proto", a.SAProto, uint8(50)},
		{"SA dst", a.SADst, netip.MustParseAddr("10.99.1.2")},
		{"SA src", a.SASrc, netip.MustParseAddr("10.98.0.1")},
		{"policy dst", a.Policy.Dst, netip.MustParsePrefix("10.99.0.0/16")},
		{"policy src", a.Policy.Src, netip.MustParsePrefix("0.0.0.0/0")},
		{"policy priority", a.Policy.Priority, uint32(1_075_000)},
		{"policy index", a.Policy.Index, uint32(0xb0000009)},
		{"policy dir", a.Policy.Dir, DirOut},
		{"policy action", a.Policy.Action, Trap},
		{"policy added", a.Policy.Added, time.Unix(1_700_000_000, 0)},
		{"policy mark", [2]uint32{a.Policy.Mark, a.Policy.MarkMask}, [2]uint32{0x42, 0xff}},
		{"policy if_id", a.Policy.IfID, uint32(7)},
		{"algos", [3]uint32{a.AAlgos, a.EAlgos, a.CAlgos}, [3]uint32{0xffffffff, 0xfffffffe, 0xfffffffd}},
		{"seq", a.Seq, uint32(42)},
		{"templates", len(a.Templates), 1},
		{"template", a.Templates[0], Template{Proto: 50, Family: 2, AAlgos: 1, EAlgos: 2, CAlgos: 3}},
		{"sec ctx", *a.SecCtx, SecCtx{DOI: 1, Alg: 1, Context: "user_u:r:t"}},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if !DefaultOwner().Owns(a.Policy) {
		t.Error("obold's trap not recognized")
	}
}

func TestParseAcquireIPv6(t *testing.T) {
	a := Acquire{
		Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8:99::2"),
		Proto: 58, SAProto: 50,
		SASrc: netip.MustParseAddr("2001:db8::1"), SADst: netip.MustParseAddr("2001:db8:99::2"),
		Policy:    Policy{Src: netip.MustParsePrefix("::/0"), Dst: netip.MustParsePrefix("2001:db8:99::/48"), Dir: DirOut, Action: Trap, Priority: 1_075_000, Index: 0xb0000011},
		Templates: []Template{{Proto: 50, Family: 10, EAlgos: ^uint32(0)}},
		Seq:       7,
	}
	b, err := a.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseAcquire(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Pair() != a.Pair() || got.SADst != a.SADst || got.Policy.Dst != a.Policy.Dst || got.Policy.Index != a.Policy.Index || got.Seq != 7 {
		t.Errorf("round trip: got %+v", got)
	}
}

func TestParseAcquireErrors(t *testing.T) {
	good := craftAcquire()
	tests := []struct {
		name  string
		b     []byte
		is    error
		field string
		off   int
	}{
		{"empty", nil, ErrTruncated, "xfrm_user_acquire", 0},
		{"header cut", good[:100], ErrTruncated, "xfrm_user_acquire", 0},
		{"bad selector family", append(craft(nil), good...).u16(40+40, 7), ErrMalformed, "sel.family", 80},
		{"unspec selector family", append(craft(nil), good...).u16(40+40, 0), ErrMalformed, "sel.family", 80},
		{"IPv4 prefix /33", append(craft(nil), good...).u8(40+42, 33), ErrMalformed, "sel.prefixlen_d", 82},
		{"policy action 9", append(craft(nil), good...).u8(96+161, 9), ErrMalformed, "policy.action", 257},
		{"policy dir 6", append(craft(nil), good...).u8(96+160, 6), ErrMalformed, "policy.dir", 256},
		{"attribute header cut", good[:282], ErrTruncated, "attribute header", 280},
		{"attribute length 2", append(craft(nil), good...).u16(280, 2), ErrMalformed, "attribute header", 280},
		{"attribute past the end", append(craft(nil), good...).u16(280, 4000), ErrTruncated, "attribute XFRMA_TMPL", 280},
		{"template length 60", func() []byte {
			c := append(craft(nil), good[:280]...)
			return c.attr(attrTmpl, make([]byte, 60))
		}(), ErrMalformed, "attribute XFRMA_TMPL", 284},
		{"template family 99", func() []byte {
			c := append(craft(nil), good[:280]...)
			return c.attr(attrTmpl, craft(make([]byte, 64)).u16(24, 99))
		}(), ErrMalformed, "template[0].family", 284 + 24},
		{"mark too short", func() []byte {
			c := append(craft(nil), good[:280]...)
			return c.attr(attrMark, []byte{1, 2, 3, 4})
		}(), ErrMalformed, "attribute XFRMA_MARK", 280},
		{"sec ctx len mismatch", func() []byte {
			c := append(craft(nil), good[:280]...)
			return c.attr(attrSecCtx, craft(make([]byte, 12)).u16(0, 99).u16(6, 4))
		}(), ErrMalformed, "xfrm_user_sec_ctx.len", 284},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseAcquire(tt.b)
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("err = %v, want a *DecodeError", err)
			}
			if !errors.Is(err, tt.is) || de.Field != tt.field || de.Offset != tt.off {
				t.Errorf("err = %v (field %q offset %d), want %v at %q offset %d", err, de.Field, de.Offset, tt.is, tt.field, tt.off)
			}
			if !strings.Contains(err.Error(), "offset") || !strings.Contains(err.Error(), tt.field) {
				t.Errorf("message %q does not say where", err)
			}
		})
	}
	// Every truncation is an error, never a panic.
	for n := 0; n < len(good); n++ {
		if _, err := ParseAcquire(good[:n]); err == nil && n < 280 {
			t.Errorf("truncated to %d bytes: no error", n)
		}
	}
}

func TestDecodeAcquires(t *testing.T) {
	a1 := craftAcquire()
	hdr := func(typ uint16, payload []byte) []byte { return appendMessage(nil, typ, 0, 1, 0, payload) }
	dg := append(hdr(msgAcquire, a1), hdr(msgPolExpire, make([]byte, 176))...)
	third := len(dg) + sizeofNlmsghdr // where the third message's payload starts
	dg = append(dg, hdr(msgAcquire, a1[:50])...)
	as, errs := DecodeAcquires(dg)
	if len(as) != 1 || len(errs) != 1 {
		t.Fatalf("got %d acquires, %d errors (%v)", len(as), len(errs), errs)
	}
	var de *DecodeError
	if !errors.As(errs[0], &de) || de.Offset != third || de.Field != "xfrm_user_acquire" {
		t.Errorf("error %v: want it at offset %d (the third message's payload)", errs[0], third)
	}
	if _, errs := DecodeAcquires([]byte{1, 2, 3}); len(errs) != 1 {
		t.Errorf("garbage datagram: %v", errs)
	}
	bad := hdr(msgAcquire, a1)
	ne.PutUint32(bad, 8)
	if _, errs := DecodeAcquires(bad); len(errs) != 1 || !strings.Contains(errs[0].Error(), "nlmsg_len") {
		t.Errorf("short nlmsg_len: %v", errs)
	}
}

func TestSecCtx(t *testing.T) {
	hdr := func(l, ext uint16, alg, doi uint8, n uint16) []byte {
		return craft(make([]byte, 8)).u16(0, l).u16(2, ext).u8(4, alg).u8(5, doi).u16(6, n)
	}
	tests := []struct {
		name    string
		b       []byte
		want    SecCtx
		wantErr string
	}{
		{"with NUL (iproute2, strongSwan)", append(hdr(8+6, 8, 1, 1, 6), "a:b:c\x00"...), SecCtx{DOI: 1, Alg: 1, Context: "a:b:c"}, ""},
		{"without NUL", append(hdr(8+5, 8, 1, 1, 5), "a:b:c"...), SecCtx{DOI: 1, Alg: 1, Context: "a:b:c"}, ""},
		{"padding after the context", append(hdr(8+5, 8, 1, 1, 5), "a:b:c\x00\x00\x00"...), SecCtx{DOI: 1, Alg: 1, Context: "a:b:c"}, ""},
		{"other alg/doi kept", append(hdr(8+2, 8, 7, 9, 2), "x\x00"...), SecCtx{DOI: 9, Alg: 7, Context: "x"}, ""},
		{"short header", []byte{1, 2, 3}, SecCtx{}, "needs 8 bytes"},
		{"len != 8+ctx_len", append(hdr(20, 8, 1, 1, 6), "a:b:c\x00"...), SecCtx{}, "is not 8 + ctx_len"},
		{"context cut", append(hdr(8+10, 8, 1, 1, 10), "a:b"...), SecCtx{}, "context string"},
		{"NUL inside", append(hdr(8+4, 8, 1, 1, 4), "a\x00b\x00"...), SecCtx{}, "NUL byte inside"},
		{"empty", append(hdr(8+1, 8, 1, 1, 1), 0), SecCtx{}, "empty context"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSecCtx(tt.b)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("err = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("got %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}

	b, err := MarshalSecCtx(SecCtx{Context: "system_u:object_r:ipsec_spd_t:s0"})
	if err != nil {
		t.Fatal(err)
	}
	wantBytes := append(hdr(8+33, 8, 1, 1, 33), "system_u:object_r:ipsec_spd_t:s0\x00"...)
	if !bytes.Equal(b, wantBytes) {
		t.Errorf("MarshalSecCtx:\n got %x\nwant %x", b, wantBytes)
	}
	for _, bad := range []string{"", "a\x00b", strings.Repeat("x", 5000)} {
		if _, err := MarshalSecCtx(SecCtx{Context: bad}); err == nil {
			t.Errorf("MarshalSecCtx(%.10q) accepted", bad)
		}
	}
}

func TestMarshalPolicy(t *testing.T) {
	p := Policy{
		Src: netip.MustParsePrefix("10.1.0.0/24"), Dst: netip.MustParsePrefix("10.99.0.0/16"),
		Proto: 17, DstPort: 4500, Dir: DirOut, Action: Trap, Priority: 1_075_000, Index: 0xb0000009,
		Lifetime: 1500 * time.Millisecond, SecCtx: "u:r:t:s0", Mark: 0x42,
	}
	b, err := MarshalPolicy(p)
	if err != nil {
		t.Fatal(err)
	}
	// The fixed part, field by field.
	c := craft(b)
	if got := netip.AddrFrom4([4]byte(c[0:4])); got != netip.MustParseAddr("10.99.0.0") {
		t.Errorf("sel.daddr %s", got)
	}
	if c[42] != 16 || c[43] != 24 || c[44] != 17 || ne.Uint16(c[40:]) != afInet {
		t.Errorf("sel prefix/proto/family: % x", c[40:46])
	}
	if c[32] != 0x11 || c[33] != 0x94 || c[34] != 0xff || c[35] != 0xff || c[36] != 0 || c[38] != 0 {
		t.Errorf("sel ports (big endian 4500, mask ffff): % x", c[32:40])
	}
	if ne.Uint64(c[56+40:]) != 2 || ne.Uint64(c[56:]) != infinite {
		t.Errorf("lifetime: hard add %d, byte limit %x", ne.Uint64(c[56+40:]), ne.Uint64(c[56:]))
	}
	if ne.Uint32(c[152:]) != 1_075_000 || ne.Uint32(c[156:]) != 0xb0000009 || c[160] != 1 || c[161] != 0 {
		t.Errorf("priority/index/dir/action: % x", c[152:164])
	}
	// The attributes: template, security context, mark.
	d := dec{b: b, msg: "test"}
	as, err := d.attrs(sizeofUserpolicyInfo)
	if err != nil {
		t.Fatal(err)
	}
	var types []uint16
	for _, a := range as {
		types = append(types, a.typ)
	}
	if len(types) != 3 || types[0] != attrTmpl || types[1] != attrSecCtx || types[2] != attrMark {
		t.Fatalf("attributes %v, want TMPL, SEC_CTX, MARK", types)
	}
	tm := b[as[0].off : as[0].off+as[0].len]
	if len(tm) != 64 || tm[20] != protoESP || ne.Uint16(tm[24:]) != afInet || tm[48] != modeTransport || !bytes.Equal(tm[0:16], make([]byte, 16)) {
		t.Errorf("template: % x", tm)
	}
	sc := b[as[1].off : as[1].off+as[1].len]
	if want, _ := MarshalSecCtx(SecCtx{Context: "u:r:t:s0"}); !bytes.Equal(sc, want) {
		t.Errorf("sec ctx attribute % x", sc)
	}
	if mk := b[as[2].off : as[2].off+8]; ne.Uint32(mk) != 0x42 || ne.Uint32(mk[4:]) != 0xffffffff {
		t.Errorf("mark % x", mk)
	}

	got, err := ParsePolicy(b)
	if err != nil {
		t.Fatal(err)
	}
	want := p
	want.Lifetime = 2 * time.Second
	want.MarkMask = 0xffffffff
	if got != want {
		t.Errorf("ParsePolicy(MarshalPolicy(p)):\n got %s\nwant %s", got, want)
	}

	// A policy message with a security context attribute, crafted.
	pm := craft(make([]byte, 168)).ip(0, "10.2.0.0").ip(16, "10.1.0.0").u16(40, 2).u8(42, 16).u8(43, 16).u32(152, 1_030_000).u32(156, 0xb0000019).u8(160, 1)
	pm = pm.attr(attrSecCtx, append(craft(make([]byte, 8)).u16(0, 8+9).u16(2, 8).u8(4, 1).u8(5, 1).u16(6, 9), "u:r:t:s0\x00"...))
	lp, err := ParsePolicy(pm)
	if err != nil {
		t.Fatal(err)
	}
	if lp.SecCtx != "u:r:t:s0" || lp.Action != Allow || lp.Src.String() != "10.1.0.0/16" {
		t.Errorf("labeled policy: %s", lp)
	}
}

func TestMarshalPolicyID(t *testing.T) {
	p := Policy{Dst: netip.MustParsePrefix("10.99.0.0/16"), Dir: DirOut, Action: Trap, Priority: 1, SecCtx: "u:r:t:s0"}
	b, err := marshalPolicyID(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) < 64 || b[60] != 1 || ne.Uint32(b[56:]) != 0 || b[42] != 16 {
		t.Errorf("by selector: % x", b[:64])
	}
	if len(b) == 64 {
		t.Error("by selector: security context missing")
	}
	p.Index, p.Mark = 0xb0000009, 5
	b, _ = marshalPolicyID(p)
	if ne.Uint32(b[56:]) != 0xb0000009 || !bytes.Equal(b[:56], make([]byte, 56)) {
		t.Errorf("by index: % x", b[:64])
	}
	d := dec{b: b}
	as, _ := d.attrs(64)
	if len(as) != 1 || as[0].typ != attrMark {
		t.Errorf("by index: attributes %+v, want only the mark", as)
	}
}

func TestParsePolExpire(t *testing.T) {
	p := Policy{Dst: netip.MustParsePrefix("10.3.0.5/32"), Dir: DirOut, Action: Block, Priority: 1_050_000, Index: 0xb0000021, Lifetime: 2 * time.Second}
	b := make([]byte, sizeofPolexpire)
	putUserpolicyInfo(b, p)
	b[168] = 1
	got, hard, err := ParsePolExpire(b)
	if err != nil || !hard || got.Index != p.Index || got.Lifetime != 2*time.Second || got.Action != Block {
		t.Errorf("got %s hard %v err %v", got, hard, err)
	}
	if _, _, err := ParsePolExpire(b[:168]); err == nil {
		t.Error("missing hard flag accepted")
	}
}

func TestParseLarval(t *testing.T) {
	b := craft(make([]byte, sizeofUsersaInfo))
	b.ip(0, "10.99.1.1").ip(16, "10.98.0.1").u16(40, 2).u8(42, 32).u8(43, 32).u8(44, 17).be16(32, 9).be16(34, 0xffff)
	b.ip(56, "10.99.1.1").u8(56+20, 50).ip(80, "10.98.0.1").u32(204, 3).u16(212, 2)
	a, ok, err := parseLarval(b)
	if err != nil || !ok {
		t.Fatalf("ok %v err %v", ok, err)
	}
	if a.Pair().String() != "10.98.0.1->10.99.1.1" || a.Seq != 3 || !a.Recovered || a.DstPort != 9 {
		t.Errorf("got %+v", a)
	}
	b.be16(56+16, 0).u8(56+18, 0x12) // SPI 0x00001200: a real SA
	if _, ok, _ := parseLarval(b); ok {
		t.Error("real SA taken for a larval state")
	}
}

// --- fuzzing and benchmarks -------------------------------------------------

func FuzzParseAcquire(f *testing.F) {
	f.Add([]byte(craftAcquire()))
	f.Add([]byte(craftAcquire()[:280]))
	if b, err := (Acquire{Src: netip.MustParseAddr("::1"), Dst: netip.MustParseAddr("::2")}).MarshalBinary(); err == nil {
		f.Add(b)
	}
	// IPv6: the real kernel message, and one with a v6 template and mark.
	f.Add(goldenDatagram(f, "acquire_ipv6.hex")[sizeofNlmsghdr:])
	if b, err := (Acquire{Src: netip.MustParseAddr("2001:db8::1"), Dst: netip.MustParseAddr("2001:db8:99::1"), Proto: 58, SrcPort: 128,
		SASrc: netip.MustParseAddr("2001:db8::1"), SADst: netip.MustParseAddr("2001:db8:99::1"), SAProto: protoESP,
		Policy:    Policy{Src: netip.MustParsePrefix("::/0"), Dst: netip.MustParsePrefix("2001:db8:99::/48"), Dir: DirOut, Priority: 1_075_000, Mark: 0x42, MarkMask: 0xff},
		Templates: []Template{{Family: afInet6, Proto: protoESP, ReqID: 7}}, Seq: 9}).MarshalBinary(); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		a, err := ParseAcquire(b)
		if err != nil {
			var de *DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error is not a *DecodeError: %v", err)
			}
			return
		}
		// What decodes re-encodes, and decodes to the same.
		b2, err := a.MarshalBinary()
		if err != nil {
			t.Fatalf("re-encode %+v: %v", a, err)
		}
		a2, err := ParseAcquire(b2)
		if err != nil {
			t.Fatalf("decode the re-encoding: %v", err)
		}
		if a.String() != a2.String() || a.Policy != a2.Policy || a.SADst != a2.SADst || a.SASrc != a2.SASrc || len(a.Templates) != len(a2.Templates) {
			t.Fatalf("round trip:\n%+v\n%+v", a, a2)
		}
	})
}

func FuzzDecodeAcquires(f *testing.F) {
	f.Add(appendMessage(nil, msgAcquire, 0, 1, 0, craftAcquire()))
	f.Add([]byte{0x10, 0, 0, 0, 0x17, 0, 0, 0})
	f.Add(goldenDatagram(f, "acquire_ipv6.hex"))
	f.Fuzz(func(t *testing.T, b []byte) {
		as, errs := DecodeAcquires(b)
		for _, a := range as {
			if !a.Src.IsValid() || !a.Dst.IsValid() {
				t.Fatalf("decoded an ACQUIRE without a pair: %+v", a)
			}
		}
		_ = errs
	})
}

func FuzzParseSecCtx(f *testing.F) {
	for _, s := range []string{"a:b:c", "system_u:object_r:ipsec_spd_t:s0"} {
		b, _ := MarshalSecCtx(SecCtx{Context: s})
		f.Add(b)
	}
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseSecCtx(b)
		if err != nil {
			return
		}
		if c.Context == "" || strings.IndexByte(c.Context, 0) >= 0 {
			t.Fatalf("accepted context %q", c.Context)
		}
		b2, err := appendSecCtxRaw(c)
		if err != nil {
			t.Fatal(err)
		}
		if c2, err := ParseSecCtx(b2); err != nil || c2 != c {
			t.Fatalf("round trip %+v -> %+v, %v", c, c2, err)
		}
	})
}

func FuzzParsePolicy(f *testing.F) {
	b, _ := MarshalPolicy(Policy{Dst: netip.MustParsePrefix("10.99.0.0/16"), Dir: DirOut, Action: Trap, Priority: 1, SecCtx: "u:r:t", Mark: 1})
	f.Add(b)
	f.Add(make([]byte, 168))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParsePolicy(b)
		_, _, _ = ParsePolExpire(b)
		_, _, _ = parseLarval(b)
	})
}

func BenchmarkParseAcquire(b *testing.B) {
	msg := []byte(craftAcquire())
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseAcquire(msg); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkParseAcquireMinimal(b *testing.B) {
	// What this kernel sends for an unlabeled trap: the struct, one template,
	// the policy type.
	msg := append(craft(nil), craftAcquire()[:280]...)
	msg = msg.attr(attrTmpl, make([]byte, 64))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseAcquire(msg); err != nil {
			b.Fatal(err)
		}
	}
}

// TestGoldenAcquire decodes an ACQUIRE this kernel really sent.
func TestGoldenAcquire(t *testing.T) {
	text, err := os.ReadFile(filepath.Join("testdata", "acquire_ipv4.hex"))
	if err != nil {
		t.Fatal(err)
	}
	var h strings.Builder
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, "#") {
			h.WriteString(strings.TrimSpace(line))
		}
	}
	dg, err := hex.DecodeString(h.String())
	if err != nil {
		t.Fatal(err)
	}
	as, errs := DecodeAcquires(dg)
	if len(errs) != 0 || len(as) != 1 {
		t.Fatalf("decoded %d, errors %v", len(as), errs)
	}
	a := as[0]
	if a.Pair().String() != "10.98.0.1->10.99.1.1" || a.Proto != 17 || a.DstPort != 9 || a.SAProto != protoESP || a.SADst.String() != "10.99.1.1" {
		t.Errorf("decoded %s SA %d %s->%s", a, a.SAProto, a.SASrc, a.SADst)
	}
	if !DefaultOwner().Owns(a.Policy) || a.Policy.Dst.String() != "10.99.0.0/16" || a.Policy.Action != Trap || a.Policy.Dir != DirOut {
		t.Errorf("policy %s", a.Policy)
	}
	if len(a.Templates) != 1 || a.Templates[0].Mode != modeTransport || a.Templates[0].Dst.IsValid() || a.PolicyType != 0 || a.SecCtx != nil {
		t.Errorf("templates %+v type %d ctx %v", a.Templates, a.PolicyType, a.SecCtx)
	}
}

func BenchmarkParseAcquireGolden(b *testing.B) {
	text, err := os.ReadFile(filepath.Join("testdata", "acquire_ipv4.hex"))
	if err != nil {
		b.Fatal(err)
	}
	var h strings.Builder
	for _, line := range strings.Split(string(text), "\n") {
		if !strings.HasPrefix(line, "#") {
			h.WriteString(strings.TrimSpace(line))
		}
	}
	dg, _ := hex.DecodeString(h.String())
	payload := dg[sizeofNlmsghdr:]
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseAcquire(payload); err != nil {
			b.Fatal(err)
		}
	}
}

type countHandler struct {
	slog.Handler
	n *int
}

func (h countHandler) Handle(_ context.Context, r slog.Record) error {
	if r.Level >= slog.LevelWarn {
		*h.n++
	}
	return nil
}

func TestCheckWarnsOnce(t *testing.T) {
	n := 0
	log := slog.New(countHandler{Handler: slog.NewTextHandler(io.Discard, nil), n: &n})
	k := &fakeKernel{ps: []Policy{
		kpol("0.0.0.0/0", "10.50.0.0/16", DirOut, Block, 1_000_010, 17),                // in the band, not tagged
		kpol("0.0.0.0/0", "10.51.0.0/16", DirOut, Block, 5, tagged(9, DirOut)),         // tagged, outside the band
		kpol("0.0.0.0/0", "10.52.0.0/16", DirOut, Block, 1_050_000, tagged(8, DirOut)), // ours
	}}
	c := &Checker{Kernel: k, Log: log}
	for range 3 {
		if _, err := c.CheckPolicies(context.Background(), nil); err != nil {
			t.Fatal(err)
		}
	}
	if n != 2 {
		t.Errorf("%d warnings in three checks, want 2 (once per policy)", n)
	}
	k.ps = k.ps[1:] // the first one goes away and comes back: warned again
	c.CheckPolicies(context.Background(), nil)
	k.ps = append(k.ps, kpol("0.0.0.0/0", "10.50.0.0/16", DirOut, Block, 1_000_010, 17))
	c.CheckPolicies(context.Background(), nil)
	if n != 3 {
		t.Errorf("%d warnings, want 3", n)
	}
}

func TestTrapReqIDGenerations(t *testing.T) {
	o := DefaultOwner()
	tests := []struct {
		name string
		r    uint32
		ours bool
	}{
		{"installed", o.ReqID(), true},
		{"next", NextReqID(o.ReqID()), true},
		{"wrapped", NextReqID(o.ReqID() | 0xffff), true},
		{"strongSwan's", 1, false},
		{"other tag", o.ReqID() ^ 0x01000000, false},
	}
	for _, tc := range tests {
		if got := o.IsReqID(tc.r); got != tc.ours {
			t.Errorf("%s: IsReqID(%#x) = %v, want %v", tc.name, tc.r, got, tc.ours)
		}
	}
	if g := NextReqID(o.ReqID() | 0xffff); g&0xffff == 0 {
		t.Errorf("NextReqID wrapped to generation 0: %#x", g)
	}
	if NextReqID(o.ReqID()) == o.ReqID() {
		t.Error("NextReqID did not move")
	}
}

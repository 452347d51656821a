package tokenapi

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/obol-ipsec/obol/tokenapi/wire"
)

func TestAdmitted(t *testing.T) {
	tests := []struct {
		name       string
		uids, gids []uint32
		cred       unix.Ucred
		want       bool
	}{
		{"no lists", nil, nil, unix.Ucred{Uid: 1000, Gid: 1000}, true},
		{"uid listed", []uint32{1000}, nil, unix.Ucred{Uid: 1000, Gid: 5}, true},
		{"gid listed", nil, []uint32{50}, unix.Ucred{Uid: 1000, Gid: 50}, true},
		{"not listed", []uint32{1}, []uint32{2}, unix.Ucred{Uid: 1000, Gid: 1000}, false},
		{"root", []uint32{1}, nil, unix.Ucred{Uid: 0, Gid: 0}, true},
	}
	for _, tc := range tests {
		s := &Server{cfg: Config{AllowUIDs: tc.uids, AllowGIDs: tc.gids}}
		if got := s.admitted(&tc.cred); got != tc.want {
			t.Errorf("%s: admitted %v, want %v", tc.name, got, tc.want)
		}
	}
}

// FuzzHandle feeds arbitrary requests (without descriptors) to the
// server's request path: it never panics and always answers with a
// message that decodes.
func FuzzHandle(f *testing.F) {
	for _, seed := range [][]byte{
		mustBytes(wire.NewBuilder(wire.TypePTokenQuery, 1)),
		mustBytes(wire.NewBuilder(wire.TypePTokenGet, 2).U64(wire.AttrPToken, 1)),
		mustBytes(wire.NewBuilder(wire.TypePTokenRelease, 3).U64(wire.AttrPToken, 1)),
		mustBytes(wire.NewBuilder(wire.TypeITokenGet, 4).U64(wire.AttrIToken, 1)),
		mustBytes(wire.NewBuilder(wire.TypeSubscribe, 5)),
		mustBytes(wire.NewBuilder(wire.TypeUnsubscribe, 6).U64(wire.AttrSubscription, 1)),
		mustBytes(wire.NewBuilder(wire.TypePTokenQueryFrom, 7).Addr(wire.AttrPeerAddr, netip.MustParseAddr("192.0.2.1")).U16(wire.AttrPeerPort, 53)),
		mustBytes(wire.NewBuilder(wire.TypeProtect, 5).U8(wire.AttrRequire, uint8(wire.LevelEncryption)).String(wire.AttrPeerID, "@peer.example")),
		mustBytes(wire.NewBuilder(wire.TypeProtect, 6).U8(wire.AttrRequire, uint8(wire.LevelClear))),
		mustBytes(wire.NewBuilder(wire.TypeProtect, 7).U8(wire.AttrRequire, 200)),
	} {
		f.Add(seed, 0)
		f.Add(seed, 1) // bit 0: pass a connected TCP socket with the request
	}
	// A connected loopback TCP socket: requests that asked for one get a
	// duplicate (handle closes what it is given).
	ln, err := net.ListenTCP("tcp4", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	defer ln.Close()
	tc, err := net.DialTCP("tcp4", nil, ln.Addr().(*net.TCPAddr))
	if err != nil {
		f.Fatal(err)
	}
	defer tc.Close()
	sockFile, err := tc.File()
	if err != nil {
		f.Fatal(err)
	}
	defer sockFile.Close()
	s, err := NewServer(Config{Socket: "/nonexistent/t.sock"}, FactsFunc(func(context.Context, Flow) (Protection, error) {
		return Protection{}, nil
	}), nil)
	if err != nil {
		f.Fatal(err)
	}
	s.SetProtector(fuzzProtector{})
	f.Fuzz(func(t *testing.T, req []byte, flags int) {
		cl := &clientConn{ptokens: map[uint64]*pToken{1: {reply: nil, itoken: 0}}, itokens: map[uint64]int{},
			subs: map[uint64]*subscription{1: {id: 1}}}
		var fds []int
		if flags&1 != 0 {
			fd, err := unix.Dup(int(sockFile.Fd()))
			if err != nil {
				t.Fatal(err)
			}
			fds = []int{fd}
		}
		out := s.handle(context.Background(), cl, req, flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC), fds)
		m, err := wire.Decode(out)
		if err != nil {
			t.Fatalf("reply does not decode: %v", err)
		}
		switch m.Type {
		case wire.TypeError, wire.TypeOK, wire.TypePTokenReply, wire.TypeSubscribed, wire.TypeProtectReply:
		default:
			t.Fatalf("unexpected reply %s", m.Type)
		}
	})
}

// FuzzQueryFrom feeds arbitrary PTOKEN_QUERY_FROM bodies with a real UDP
// socket: the answer always decodes, and a pToken is only made for a flow
// whose local end is the socket's.
func FuzzQueryFrom(f *testing.F) {
	f.Add(mustBytes(wire.NewBuilder(wire.TypePTokenQueryFrom, 1).Addr(wire.AttrPeerAddr, netip.MustParseAddr("127.0.0.1")).U16(wire.AttrPeerPort, 53)))
	f.Add(mustBytes(wire.NewBuilder(wire.TypePTokenQueryFrom, 2).Addr(wire.AttrPeerAddr, netip.MustParseAddr("::1")).U16(wire.AttrPeerPort, 1).Addr(wire.AttrLocalAddr, netip.MustParseAddr("127.0.0.1"))))
	f.Add(mustBytes(wire.NewBuilder(wire.TypePTokenQueryFrom, 3).Addr(wire.AttrLocalAddr, netip.MustParseAddr("192.0.2.1"))))
	var asked []Flow
	s, err := NewServer(Config{Socket: "/nonexistent/t.sock"}, FactsFunc(func(_ context.Context, fl Flow) (Protection, error) {
		asked = append(asked, fl)
		return Protection{Why: wire.ReasonNoPolicy}, nil
	}), nil)
	if err != nil {
		f.Fatal(err)
	}
	u, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		f.Fatal(err)
	}
	defer u.Close()
	bound := u.LocalAddr().(*net.UDPAddr).AddrPort()
	file, err := u.File()
	if err != nil {
		f.Fatal(err)
	}
	defer file.Close()
	f.Fuzz(func(t *testing.T, req []byte) {
		fd, err := unix.Dup(int(file.Fd()))
		if err != nil {
			t.Fatal(err)
		}
		asked = nil
		cl := &clientConn{ptokens: map[uint64]*pToken{}, itokens: map[uint64]int{}, subs: map[uint64]*subscription{}}
		out := s.handle(context.Background(), cl, req, 0, []int{fd})
		if _, err := wire.Decode(out); err != nil {
			t.Fatalf("reply does not decode: %v", err)
		}
		for _, fl := range asked {
			if fl.Local != bound || fl.Protocol != unix.IPPROTO_UDP {
				t.Fatalf("looked up %+v for a socket bound to %v", fl, bound)
			}
		}
	})
}

// fuzzProtector answers PROTECT like the userspace datapath, lo standing in
// for the TUN device; CLEAR is refused.
type fuzzProtector struct{}

func (fuzzProtector) PinTarget(context.Context) (PinTarget, error) {
	return PinTarget{Datapath: "userspace", Device: "lo"}, nil
}

func (fuzzProtector) Protect(_ context.Context, r ProtectRequest) (ProtectOutcome, error) {
	var out ProtectOutcome
	if r.Level == wire.LevelClear {
		out.Why, out.WhyText = wire.ReasonDenied, "fuzz"
	}
	return out, nil
}

func mustBytes(b *wire.Builder) []byte {
	out, err := b.Bytes()
	if err != nil {
		panic(err)
	}
	return out
}

// TestReceivedFDs: the in-place SCM_RIGHTS walk finds what unix's parser
// finds, over one and two control messages.
func TestReceivedFDs(t *testing.T) {
	tests := []struct {
		name string
		oob  []byte
		want []int
	}{
		{"none", nil, nil},
		{"one", unix.UnixRights(7), []int{7}},
		{"three in one", unix.UnixRights(3, 4, 5), []int{3, 4, 5}},
		{"two messages", append(unix.UnixRights(9), unix.UnixRights(10, 11)...), []int{9, 10, 11}},
		{"truncated header", unix.UnixRights(7)[:8], nil},
		{"length past the end", func() []byte { b := unix.UnixRights(7); b[0] = 200; return b }(), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := receivedFDs(nil, tc.oob); !slices.Equal(got, tc.want) {
				t.Errorf("receivedFDs = %v, want %v", got, tc.want)
			}
		})
	}
}

// FuzzReceivedFDs: any control buffer is walked without a panic, and a
// well-formed one gives what unix's parser gives.
func FuzzReceivedFDs(f *testing.F) {
	f.Add(unix.UnixRights(1, 2))
	f.Add(append(unix.UnixRights(9), unix.UnixRights(10, 11)...))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, oob []byte) {
		got := receivedFDs(nil, oob)
		msgs, err := unix.ParseSocketControlMessage(oob)
		if err != nil {
			return
		}
		var want []int
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_RIGHTS && len(m.Data) >= 4 && len(m.Data)%4 == 0 {
				fds, err := unix.ParseUnixRights(&m)
				if err != nil {
					return
				}
				want = append(want, fds...)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("receivedFDs(%x) = %v, unix says %v", oob, got, want)
		}
	})
}

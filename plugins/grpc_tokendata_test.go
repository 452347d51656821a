package plugins

import (
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/obol-ipsec/obol/plugins/pluginpb"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

func goodTokenSA() TokenSA {
	return TokenSA{
		Child: TokenChild{IKEName: "hh", Name: "host", Protocol: "ESP", Mode: "TUNNEL", EncrAlg: "AES_GCM_16", EncrKey: 256, Encap: true},
		Peer: TokenPeer{RemoteID: "192.0.2.12", PeerKey: PublicKey{Algorithm: "ed25519", Data: make([]byte, 32)},
			Evidence: AuthEvidence{ConnClass: "pre-shared key", RoundClasses: []string{"EAP"}, SecretOwners: -1, OE: true, DNSSEC: "secure", OEMethod: MethodLeapOfFaith}},
		LocalTS:  []TrafficSelector{{From: netip.MustParseAddr("192.0.2.11"), To: netip.MustParseAddr("192.0.2.11"), ToPort: 65535}},
		RemoteTS: []TrafficSelector{{From: netip.MustParseAddr("2001:db8::"), To: netip.MustParseAddr("2001:db8::ff"), Proto: 6, FromPort: 443, ToPort: 443}},
	}
}

// A snapshot survives the trip unchanged; each kind of garbage is refused
// with an error naming the SA and the field.
func TestTokenSnapshotRoundTripAndGarbage(t *testing.T) {
	snap := TokenSnapshot{Generation: 7, SAs: []TokenSA{goodTokenSA()}}
	got, err := TokenSnapshotFrom(TokenSnapshotTo(snap))
	if err != nil || !reflect.DeepEqual(got, snap) {
		t.Fatalf("round trip: %+v, %v\nwant %+v", got, err, snap)
	}
	tests := []struct {
		name  string
		spoil func(*pluginpb.TokenSA)
		want  string
	}{
		{"address", func(s *pluginpb.TokenSA) { s.LocalTs[0].From = "192.0.2.300" }, `sa 0: local_ts 0: from "192.0.2.300"`},
		{"families", func(s *pluginpb.TokenSA) { s.RemoteTs[0].To = "192.0.2.1" }, "sa 0: remote_ts 0: 2001:db8::-192.0.2.1 is no address range"},
		{"ports", func(s *pluginpb.TokenSA) { s.RemoteTs[0].ToPort = 70000 }, "sa 0: remote_ts 0: ports 443-70000"},
		{"proto", func(s *pluginpb.TokenSA) { s.RemoteTs[0].Proto = 300 }, "remote_ts 0: proto 300"},
		{"key size", func(s *pluginpb.TokenSA) { s.Peer.PeerKey.Data = make([]byte, 31) }, "sa 0: peer.peer_key: ed25519 key of 31 bytes"},
		{"key algorithm", func(s *pluginpb.TokenSA) { s.Peer.OurKey = &pluginpb.PublicKey{Data: []byte{1}} }, `peer.our_key: algorithm ""`},
		{"protocol", func(s *pluginpb.TokenSA) { s.Child.Protocol = "GRE" }, `child.protocol "GRE"`},
		{"key bits", func(s *pluginpb.TokenSA) { s.Child.EncrKey = -1 }, "child.encr_key -1 bits"},
		{"method", func(s *pluginpb.TokenSA) { s.Peer.Evidence.OeMethod = "TRUSTME" }, `peer.evidence.oe_method "TRUSTME"`},
		{"long id", func(s *pluginpb.TokenSA) { s.Peer.RemoteId = strings.Repeat("x", maxTokenString+1) }, "peer.remote_id: 4097 bytes"},
		{"no child", func(s *pluginpb.TokenSA) { s.Child = nil }, "sa 0: child: missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := TokenSnapshotTo(snap)
			tc.spoil(p.Sas[0])
			_, err := TokenSnapshotFrom(p)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to say %q", err, tc.want)
			}
		})
	}
}

func TestTokenRequestsChecked(t *testing.T) {
	good := &pluginpb.TokenProtectRequest{Flow: &pluginpb.TokenFlow{Local: "192.0.2.11:40000", Remote: "192.0.2.12:443", Protocol: 6}, Level: uint32(wire.LevelBTNS), PeerId: "b"}
	r, err := tokenProtectFrom(good)
	if err != nil || r.Flow.Remote != netip.MustParseAddrPort("192.0.2.12:443") || r.Level != wire.LevelBTNS || r.PeerID != "b" {
		t.Fatalf("%+v, %v", r, err)
	}
	for _, tc := range []struct {
		req  *pluginpb.TokenProtectRequest
		want string
	}{
		{&pluginpb.TokenProtectRequest{Flow: &pluginpb.TokenFlow{Local: "192.0.2.11", Remote: "192.0.2.12:443"}, Level: 1}, `flow local "192.0.2.11": want address:port`},
		{&pluginpb.TokenProtectRequest{Flow: &pluginpb.TokenFlow{Local: "192.0.2.11:1", Remote: "[::1]:443"}, Level: 1}, "addresses of two families"},
		{&pluginpb.TokenProtectRequest{Flow: &pluginpb.TokenFlow{Local: "192.0.2.11:1", Remote: "192.0.2.12:443", Protocol: 256}, Level: 1}, "flow protocol 256"},
		{&pluginpb.TokenProtectRequest{Flow: good.Flow, Level: 9}, "level 9"},
	} {
		if _, err := tokenProtectFrom(tc.req); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want %q", tc.req, err, tc.want)
		}
	}
	if _, err := tokenChangeFrom(&pluginpb.TokenChange{Kind: "exploded"}); err == nil || !strings.Contains(err.Error(), `change kind "exploded"`) {
		t.Errorf("unknown change kind: %v", err)
	}
	if _, err := tokenProtectOutcomeFrom(&pluginpb.TokenProtectOutcome{OuterRemote: "gw"}); err == nil || !strings.Contains(err.Error(), `outer_remote "gw"`) {
		t.Errorf("bad outer address: %v", err)
	}
}

package plugins

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/obol-ipsec/obol/plugins/pluginpb"
)

// What a plugin sends back is untrusted input: whatever the bytes, the
// decoders return a valid answer or an error, never a panic.
func FuzzLookupReply(f *testing.F) {
	good, _ := proto.Marshal(&pluginpb.LookupReply{Dnssec: "secure", TtlNs: 1e9, Method: "DNSSEC",
		Gateways: []*pluginpb.Gateway{{Precedence: 10, Addr: "192.0.2.1", Keys: []*pluginpb.PublicKey{{Algorithm: "ed25519", Data: make([]byte, 32)}}}}})
	f.Add(good)
	f.Add([]byte{0x0a, 0x02, 0x1a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		var rep pluginpb.LookupReply
		if proto.Unmarshal(b, &rep) != nil {
			return
		}
		ans, err := lookupAnswerFrom(&rep)
		if err != nil {
			return
		}
		if !ValidMethod(ans.Method) || ans.TTL < 0 || len(ans.Gateways) > maxGateways {
			t.Fatalf("accepted %+v", ans)
		}
		for _, gw := range ans.Gateways {
			if !gw.Addr.IsValid() && gw.FQDN == "" {
				t.Fatalf("accepted a gateway with neither address nor name: %+v", gw)
			}
		}
	})
}

func FuzzPolicies(f *testing.F) {
	good, _ := proto.Marshal(&pluginpb.CheckReply{Missing: []*pluginpb.Policy{{Src: "10.0.0.0/8", Dst: "0.0.0.0/0", Dir: "out", Action: "trap"}}})
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		var rep pluginpb.CheckReply
		if proto.Unmarshal(b, &rep) != nil {
			return
		}
		ps, err := policiesFrom(rep.GetMissing())
		if err != nil {
			return
		}
		for _, p := range ps {
			if !p.Src.IsValid() || !p.Dst.IsValid() {
				t.Fatalf("accepted %+v", p)
			}
		}
	})
}

func FuzzFlow(f *testing.F) {
	good, _ := proto.Marshal(&pluginpb.Flow{Local: "10.1.0.0/24", Remote: "10.2.0.1/32", Protocol: 6, RemotePort: 443})
	f.Add(good)
	f.Fuzz(func(t *testing.T, b []byte) {
		var pf pluginpb.Flow
		if proto.Unmarshal(b, &pf) != nil {
			return
		}
		fl, err := flowFrom(&pf)
		if err == nil && pf.GetLocal() != "" && !fl.Local.IsValid() {
			t.Fatalf("accepted %+v as %+v", &pf, fl)
		}
	})
}

// What crosses the TokenHost contract is decoded with checks in both
// directions: a snapshot (obold to the plugin), a flow and a PROTECT
// request (the plugin to obold), a change. Garbage is an error, never a
// panic or an SA with an invalid selector.
func FuzzTokenSnapshot(f *testing.F) {
	good, _ := proto.Marshal(&pluginpb.TokenSnapshot{Generation: 3, Sas: []*pluginpb.TokenSA{{
		Child:    &pluginpb.TokenChild{Name: "web", Protocol: "ESP", Mode: "TUNNEL", EncrAlg: "AES_GCM_16", EncrKey: 256},
		Peer:     &pluginpb.TokenPeer{RemoteId: "web.example", PeerKey: &pluginpb.PublicKey{Algorithm: "ed25519", Data: make([]byte, 32)}, Evidence: &pluginpb.AuthEvidence{ConnClass: "public key"}},
		LocalTs:  []*pluginpb.TrafficSelector{{From: "10.1.0.0", To: "10.1.255.255", ToPort: 65535}},
		RemoteTs: []*pluginpb.TrafficSelector{{From: "2001:db8::", To: "2001:db8::ff", Proto: 6, FromPort: 443, ToPort: 443}},
	}}})
	f.Add(good)
	f.Add([]byte{0x12, 0x02, 0x0a, 0x00})
	f.Fuzz(func(t *testing.T, b []byte) {
		var in pluginpb.TokenSnapshot
		if proto.Unmarshal(b, &in) != nil {
			return
		}
		snap, err := TokenSnapshotFrom(&in)
		if err != nil {
			return
		}
		for _, sa := range snap.SAs {
			for _, ts := range append(append([]TrafficSelector(nil), sa.LocalTS...), sa.RemoteTS...) {
				if !ts.From.IsValid() || ts.From.BitLen() != ts.To.BitLen() || ts.To.Less(ts.From) || ts.ToPort < ts.FromPort {
					t.Fatalf("accepted selector %+v", ts)
				}
			}
			if k := sa.Peer.PeerKey; k.Algorithm == "ed25519" && len(k.Data) != 32 {
				t.Fatalf("accepted key %+v", k)
			}
		}
	})
}

func FuzzTokenRequests(f *testing.F) {
	good, _ := proto.Marshal(&pluginpb.TokenProtectRequest{Flow: &pluginpb.TokenFlow{Local: "192.0.2.11:40000", Remote: "192.0.2.12:443", Protocol: 6}, Level: 1})
	f.Add(good)
	f.Add([]byte{0x0a, 0x00, 0x10, 0x09})
	f.Fuzz(func(t *testing.T, b []byte) {
		var in pluginpb.TokenProtectRequest
		if proto.Unmarshal(b, &in) == nil {
			if r, err := tokenProtectFrom(&in); err == nil && (!r.Flow.Local.IsValid() || !r.Flow.Remote.IsValid() || r.Level == 0) {
				t.Fatalf("accepted %+v", r)
			}
		}
		var c pluginpb.TokenChange
		if proto.Unmarshal(b, &c) == nil {
			if ch, err := tokenChangeFrom(&c); err == nil && ch.Kind == "" {
				t.Fatalf("accepted change %+v", ch)
			}
		}
		var o pluginpb.TokenProtectOutcome
		if proto.Unmarshal(b, &o) == nil {
			tokenProtectOutcomeFrom(&o)
		}
	})
}

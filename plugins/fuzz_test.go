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

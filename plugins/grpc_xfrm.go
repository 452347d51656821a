package plugins

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/obol-ipsec/obol/plugins/pluginpb"
)

// XFRMCheckerPlugin is the go-plugin glue of the XFRMChecker contract.
type XFRMCheckerPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	Impl XFRMChecker
}

// GRPCServer registers Impl (plugin side).
func (p *XFRMCheckerPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("plugins: XFRMCheckerPlugin served without an Impl")
	}
	pluginpb.RegisterXFRMCheckerServer(s, &xfrmServer{impl: p.Impl})
	return nil
}

// GRPCClient returns an XFRMChecker talking to the plugin (obold side).
func (p *XFRMCheckerPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &xfrmClient{rpc: pluginpb.NewXFRMCheckerClient(c)}, nil
}

type xfrmServer struct {
	pluginpb.UnimplementedXFRMCheckerServer
	impl XFRMChecker
}

func (s *xfrmServer) Datapath(ctx context.Context, req *pluginpb.DatapathRequest) (*pluginpb.DatapathReply, error) {
	dp, err := s.impl.Datapath(ctx, req.GetCharonPlugins())
	if err != nil {
		return nil, err
	}
	return &pluginpb.DatapathReply{Datapath: string(dp)}, nil
}

func (s *xfrmServer) Check(ctx context.Context, req *pluginpb.CheckRequest) (*pluginpb.CheckReply, error) {
	want, err := policiesFrom(req.GetWant())
	if err != nil {
		return nil, fmt.Errorf("check request: %w", err)
	}
	r, err := s.impl.Check(ctx, want)
	if err != nil {
		return nil, err
	}
	return &pluginpb.CheckReply{Missing: policiesTo(r.Missing), Extra: policiesTo(r.Extra), Stale: policiesTo(r.Stale)}, nil
}

type xfrmClient struct {
	rpc pluginpb.XFRMCheckerClient
}

func (c *xfrmClient) Datapath(ctx context.Context, charonPlugins []string) (Datapath, error) {
	rep, err := c.rpc.Datapath(ctx, &pluginpb.DatapathRequest{CharonPlugins: charonPlugins})
	if err != nil {
		return "", callError("xfrm", "Datapath", err)
	}
	switch dp := Datapath(rep.GetDatapath()); dp {
	case DatapathKernel, DatapathUserspace:
		return dp, nil
	default:
		return "", &GarbageError{Module: "xfrm", Call: "Datapath", Err: fmt.Errorf("datapath %q: want kernel or userspace", dp)}
	}
}

func (c *xfrmClient) Check(ctx context.Context, want []Policy) (Report, error) {
	rep, err := c.rpc.Check(ctx, &pluginpb.CheckRequest{Want: policiesTo(want)})
	if err != nil {
		return Report{}, callError("xfrm", "Check", err)
	}
	var r Report
	for _, part := range []struct {
		name string
		in   []*pluginpb.Policy
		out  *[]Policy
	}{{"missing", rep.GetMissing(), &r.Missing}, {"extra", rep.GetExtra(), &r.Extra}, {"stale", rep.GetStale(), &r.Stale}} {
		if *part.out, err = policiesFrom(part.in); err != nil {
			return Report{}, &GarbageError{Module: "xfrm", Call: "Check", Err: fmt.Errorf("%s: %w", part.name, err)}
		}
	}
	return r, nil
}

// maxPolicies bounds one Check's lists.
const maxPolicies = 1 << 16

func policiesTo(ps []Policy) []*pluginpb.Policy {
	out := make([]*pluginpb.Policy, 0, len(ps))
	for _, p := range ps {
		out = append(out, &pluginpb.Policy{Src: p.Src.String(), Dst: p.Dst.String(), Proto: uint32(p.Proto), Dir: p.Dir, Action: p.Action,
			Priority: p.Priority, Mark: p.Mark, LifetimeNs: int64(p.Lifetime), SrcPort: uint32(p.SrcPort), DstPort: uint32(p.DstPort), Label: p.Label})
	}
	return out
}

func policiesFrom(in []*pluginpb.Policy) ([]Policy, error) {
	if len(in) > maxPolicies {
		return nil, fmt.Errorf("%d policies, more than %d", len(in), maxPolicies)
	}
	var out []Policy
	for i, pp := range in {
		src, err := netip.ParsePrefix(pp.GetSrc())
		if err != nil {
			return nil, fmt.Errorf("policy %d: src %q: %w", i, pp.GetSrc(), err)
		}
		dst, err := netip.ParsePrefix(pp.GetDst())
		if err != nil {
			return nil, fmt.Errorf("policy %d: dst %q: %w", i, pp.GetDst(), err)
		}
		if pp.GetProto() > 255 || pp.GetSrcPort() > 65535 || pp.GetDstPort() > 65535 || pp.GetLifetimeNs() < 0 {
			return nil, fmt.Errorf("policy %d: protocol, port or lifetime out of range", i)
		}
		switch pp.GetDir() {
		case "in", "out", "fwd":
		default:
			return nil, fmt.Errorf("policy %d: dir %q: want in, out or fwd", i, pp.GetDir())
		}
		switch pp.GetAction() {
		case "allow", "block", "trap":
		default:
			return nil, fmt.Errorf("policy %d: action %q: want allow, block or trap", i, pp.GetAction())
		}
		out = append(out, Policy{Src: src, Dst: dst, Proto: uint8(pp.GetProto()), Dir: pp.GetDir(), Action: pp.GetAction(), Priority: pp.GetPriority(),
			Mark: pp.GetMark(), Lifetime: time.Duration(pp.GetLifetimeNs()), SrcPort: uint16(pp.GetSrcPort()), DstPort: uint16(pp.GetDstPort()), Label: pp.GetLabel()})
	}
	return out, nil
}

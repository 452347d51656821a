package plugins

import (
	"context"
	"errors"
	"fmt"
	"net/netip"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/obol-ipsec/obol/plugins/pluginpb"
)

// LabelPolicyPlugin is the go-plugin glue of the LabelPolicy contract.
type LabelPolicyPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	Impl LabelPolicy
}

// GRPCServer registers Impl (plugin side).
func (p *LabelPolicyPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("plugins: LabelPolicyPlugin served without an Impl")
	}
	pluginpb.RegisterLabelPolicyServer(s, &labelServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a LabelPolicy talking to the plugin (obold side).
func (p *LabelPolicyPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &labelClient{rpc: pluginpb.NewLabelPolicyClient(c)}, nil
}

type labelServer struct {
	pluginpb.UnimplementedLabelPolicyServer
	impl LabelPolicy
}

func (s *labelServer) Authorize(ctx context.Context, req *pluginpb.LabelRequest) (*pluginpb.LabelDecision, error) {
	f, err := flowFrom(req.GetFlow())
	if err != nil {
		return nil, fmt.Errorf("authorize request: %w", err)
	}
	d, err := s.impl.Authorize(ctx, LabelRequest{Flow: f, Label: req.GetLabel()})
	if err != nil {
		return nil, err
	}
	return &pluginpb.LabelDecision{Entry: d.Entry, Allowed: d.Allowed, Required: d.Required, LabelMode: d.LabelMode, Reason: d.Reason}, nil
}

func (s *labelServer) Children(ctx context.Context, req *pluginpb.ChildrenRequest) (*pluginpb.ChildrenReply, error) {
	cs, err := s.impl.Children(ctx, req.GetEntry())
	if err != nil {
		return nil, err
	}
	rep := &pluginpb.ChildrenReply{}
	for _, c := range cs {
		rep.Children = append(rep.Children, &pluginpb.LabeledChild{Name: c.Name, Label: c.Label, LabelMode: c.LabelMode, Generic: c.Generic, LocalTs: c.LocalTS, RemoteTs: c.RemoteTS})
	}
	return rep, nil
}

type labelClient struct {
	rpc pluginpb.LabelPolicyClient
}

func (c *labelClient) Authorize(ctx context.Context, r LabelRequest) (LabelDecision, error) {
	d, err := c.rpc.Authorize(ctx, &pluginpb.LabelRequest{Flow: flowTo(r.Flow), Label: r.Label})
	if err != nil {
		return LabelDecision{}, callError("label policy", "Authorize", err)
	}
	switch d.GetLabelMode() {
	case "", "simple", "selinux":
	default:
		return LabelDecision{}, &GarbageError{Module: "label policy", Call: "Authorize", Err: fmt.Errorf("label_mode %q: want simple or selinux", d.GetLabelMode())}
	}
	return LabelDecision{Entry: d.GetEntry(), Allowed: d.GetAllowed(), Required: d.GetRequired(), LabelMode: d.GetLabelMode(), Reason: d.GetReason()}, nil
}

// maxChildren bounds the CHILD_SA configs one entry may ask obold to load.
const maxChildren = 1024

func (c *labelClient) Children(ctx context.Context, entry string) ([]LabeledChild, error) {
	rep, err := c.rpc.Children(ctx, &pluginpb.ChildrenRequest{Entry: entry})
	if err != nil {
		return nil, callError("label policy", "Children", err)
	}
	if len(rep.GetChildren()) > maxChildren {
		return nil, &GarbageError{Module: "label policy", Call: "Children", Err: fmt.Errorf("%d children, more than %d", len(rep.GetChildren()), maxChildren)}
	}
	var out []LabeledChild
	for i, ch := range rep.GetChildren() {
		if ch.GetName() == "" || ch.GetLabel() == "" {
			return nil, &GarbageError{Module: "label policy", Call: "Children", Err: fmt.Errorf("child %d: name and label must be set", i)}
		}
		out = append(out, LabeledChild{Name: ch.GetName(), Label: ch.GetLabel(), LabelMode: ch.GetLabelMode(), Generic: ch.GetGeneric(), LocalTS: ch.GetLocalTs(), RemoteTS: ch.GetRemoteTs()})
	}
	return out, nil
}

func flowTo(f Flow) *pluginpb.Flow {
	pf := &pluginpb.Flow{Protocol: uint32(f.Protocol), LocalPort: uint32(f.LocalPort), RemotePort: uint32(f.RemotePort)}
	if f.Local.IsValid() {
		pf.Local = f.Local.String()
	}
	if f.Remote.IsValid() {
		pf.Remote = f.Remote.String()
	}
	return pf
}

func flowFrom(pf *pluginpb.Flow) (Flow, error) {
	f := Flow{}
	var err error
	if pf.GetLocal() != "" {
		if f.Local, err = netip.ParsePrefix(pf.GetLocal()); err != nil {
			return Flow{}, fmt.Errorf("flow local %q: %w", pf.GetLocal(), err)
		}
	}
	if pf.GetRemote() != "" {
		if f.Remote, err = netip.ParsePrefix(pf.GetRemote()); err != nil {
			return Flow{}, fmt.Errorf("flow remote %q: %w", pf.GetRemote(), err)
		}
	}
	if pf.GetProtocol() > 255 || pf.GetLocalPort() > 65535 || pf.GetRemotePort() > 65535 {
		return Flow{}, fmt.Errorf("flow protocol %d / ports %d, %d out of range", pf.GetProtocol(), pf.GetLocalPort(), pf.GetRemotePort())
	}
	f.Protocol, f.LocalPort, f.RemotePort = uint8(pf.GetProtocol()), uint16(pf.GetLocalPort()), uint16(pf.GetRemotePort())
	return f, nil
}

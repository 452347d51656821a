package plugins

import (
	"context"
	"errors"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"

	"github.com/obol-ipsec/obol/plugins/pluginpb"
)

// AuthMethodPlugin is the go-plugin glue of the AuthMethod contract.
type AuthMethodPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	Impl AuthMethod
}

// GRPCServer registers Impl (plugin side).
func (p *AuthMethodPlugin) GRPCServer(_ *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("plugins: AuthMethodPlugin served without an Impl")
	}
	pluginpb.RegisterAuthMethodServer(s, &authServer{impl: p.Impl})
	return nil
}

// GRPCClient returns an AuthMethod talking to the plugin (obold side).
func (p *AuthMethodPlugin) GRPCClient(_ context.Context, _ *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &authClient{rpc: pluginpb.NewAuthMethodClient(c)}, nil
}

type authServer struct {
	pluginpb.UnimplementedAuthMethodServer
	impl AuthMethod
}

func (s *authServer) Credentials(ctx context.Context, req *pluginpb.LookupRequest) (*pluginpb.LookupReply, error) {
	q, err := lookupQueryFrom(req)
	if err != nil {
		return nil, err
	}
	ans, err := s.impl.Credentials(ctx, q)
	return lookupReplyTo(ans, err), nil
}

type authClient struct {
	rpc pluginpb.AuthMethodClient
}

func (c *authClient) Credentials(ctx context.Context, q LookupQuery) (LookupAnswer, error) {
	rep, err := c.rpc.Credentials(ctx, lookupRequestTo(q))
	return lookupAnswerOf("auth method", "Credentials", rep, err)
}

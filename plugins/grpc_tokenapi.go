package plugins

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	goplugin "github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/obol-ipsec/obol/plugins/pluginpb"
	"github.com/obol-ipsec/obol/tokenapi/wire"
)

// TokenAPIPlugin is the go-plugin glue of the TokenAPI contract. The module
// runs in the plugin process and listens on its own socket there; obold
// serves TokenHost back to it on a brokered connection. The plugin learns
// generation moves and changes from one Watch stream and keeps the
// generation in an atomic, so its token queries pay no RPC while nothing
// moved (TokenSAs is asked only after a move).
type TokenAPIPlugin struct {
	goplugin.NetRPCUnsupportedPlugin
	Impl TokenAPI
}

// GRPCServer registers Impl (plugin side).
func (p *TokenAPIPlugin) GRPCServer(broker *goplugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("plugins: TokenAPIPlugin served without an Impl")
	}
	pluginpb.RegisterTokenAPIServer(s, &tokenAPIServer{impl: p.Impl, broker: broker})
	return nil
}

// GRPCClient returns a TokenAPI running in the plugin (obold side).
func (p *TokenAPIPlugin) GRPCClient(_ context.Context, broker *goplugin.GRPCBroker, c *grpc.ClientConn) (any, error) {
	return &tokenAPIClient{rpc: pluginpb.NewTokenAPIClient(c), broker: broker}, nil
}

// GenerationPollEvery is how often obold looks at the generation of a
// TokenHost that is no TokenGenerationWatcher, for a plugin's Watch stream.
const GenerationPollEvery = 20 * time.Millisecond

// --- obold side ---

type tokenAPIClient struct {
	rpc    pluginpb.TokenAPIClient
	broker *goplugin.GRPCBroker
}

// Serve serves host to the plugin on a brokered connection and runs the
// plugin's module until ctx ends or the plugin stops. A nil error means
// ctx ended.
func (c *tokenAPIClient) Serve(ctx context.Context, host TokenHost) error {
	if host == nil {
		return errors.New("tokenapi plugin: Serve needs obold's TokenHost")
	}
	id := c.broker.NextId()
	servers := make(chan *grpc.Server, 1)
	go c.broker.AcceptAndServe(id, func(opts []grpc.ServerOption) *grpc.Server {
		s := grpc.NewServer(opts...)
		pluginpb.RegisterTokenHostServer(s, &tokenHostServer{host: host})
		servers <- s
		return s
	})
	defer func() {
		// The brokered server lives as long as this Serve: a restarted
		// plugin gets a new one.
		go func() {
			select {
			case s := <-servers:
				s.Stop()
			case <-time.After(10 * time.Second):
			}
		}()
	}()
	_, err := c.rpc.Serve(ctx, &pluginpb.TokenServeRequest{HostBrokerId: id})
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return callError("tokenapi", "Serve", err)
	}
	return &CallError{Module: "tokenapi", Call: "Serve", Code: codes.Aborted, Err: errors.New("the module stopped serving while obold still wanted it")}
}

// tokenHostServer serves obold's TokenHost to the plugin. What the plugin
// sends (flows) is checked before the host sees it.
type tokenHostServer struct {
	pluginpb.UnimplementedTokenHostServer
	host TokenHost
}

func (s *tokenHostServer) TokenSAs(ctx context.Context, _ *pluginpb.TokenSAsRequest) (*pluginpb.TokenSnapshot, error) {
	snap, err := s.host.TokenSAs(ctx)
	if err != nil {
		return nil, err
	}
	return TokenSnapshotTo(snap), nil
}

func (s *tokenHostServer) WhyNot(ctx context.Context, req *pluginpb.TokenFlow) (*pluginpb.WhyNotReply, error) {
	f, err := TokenFlowFrom(req)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "WhyNot: %v", err)
	}
	why, text, err := s.host.WhyNot(ctx, f)
	if err != nil {
		return nil, err
	}
	return &pluginpb.WhyNotReply{Reason: uint32(why), Text: text}, nil
}

func (s *tokenHostServer) Protect(ctx context.Context, req *pluginpb.TokenProtectRequest) (*pluginpb.TokenProtectOutcome, error) {
	r, err := tokenProtectFrom(req)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "Protect: %v", err)
	}
	out, err := s.host.Protect(ctx, r)
	if err != nil {
		return nil, err
	}
	rep := &pluginpb.TokenProtectOutcome{Why: uint32(out.Why), WhyText: out.WhyText}
	if out.OuterLocal.IsValid() {
		rep.OuterLocal = out.OuterLocal.String()
	}
	if out.OuterRemote.IsValid() {
		rep.OuterRemote = out.OuterRemote.String()
	}
	return rep, nil
}

func (s *tokenHostServer) PinTarget(ctx context.Context, _ *pluginpb.PinTargetRequest) (*pluginpb.TokenPinTarget, error) {
	pt, err := s.host.PinTarget(ctx)
	if err != nil {
		return nil, err
	}
	return &pluginpb.TokenPinTarget{Datapath: string(pt.Datapath), Device: pt.Device, ClearMark: pt.ClearMark}, nil
}

// Watch streams generation moves and changes until the plugin hangs up.
func (s *tokenHostServer) Watch(_ *pluginpb.WatchRequest, stream grpc.ServerStreamingServer[pluginpb.HostUpdate]) error {
	ctx := stream.Context()
	var changes <-chan TokenChange
	if src, ok := s.host.(TokenChangeSource); ok {
		changes = src.TokenChanges(ctx)
	}
	gen := s.host.Generation()
	if err := stream.Send(&pluginpb.HostUpdate{Generation: gen, ChangesSupported: changes != nil}); err != nil {
		return err
	}
	watcher, _ := s.host.(TokenGenerationWatcher)
	var poll <-chan time.Time
	if watcher == nil {
		t := time.NewTicker(GenerationPollEvery)
		defer t.Stop()
		poll = t.C
	}
	for {
		var moved <-chan struct{}
		if watcher != nil {
			moved = watcher.GenerationMoved(gen)
		}
		var u *pluginpb.HostUpdate
		select {
		case <-ctx.Done():
			return nil
		case c, ok := <-changes:
			if !ok {
				changes = nil
				continue
			}
			// The host moves the generation before it sends a change.
			gen = s.host.Generation()
			u = &pluginpb.HostUpdate{Generation: gen, Change: &pluginpb.TokenChange{Kind: string(c.Kind), IkeName: c.IKEName, Child: c.Child, Text: c.Text}}
		case <-moved:
		case <-poll:
		}
		if u == nil {
			g := s.host.Generation()
			if g == gen {
				continue
			}
			gen = g
			u = &pluginpb.HostUpdate{Generation: gen}
		}
		if err := stream.Send(u); err != nil {
			return err
		}
	}
}

// --- plugin side ---

type tokenAPIServer struct {
	pluginpb.UnimplementedTokenAPIServer
	impl   TokenAPI
	broker *goplugin.GRPCBroker
}

// Serve dials obold's TokenHost and runs the module until obold ends the
// call or the host connection breaks.
func (s *tokenAPIServer) Serve(ctx context.Context, req *pluginpb.TokenServeRequest) (*pluginpb.TokenServeReply, error) {
	conn, err := s.broker.Dial(req.GetHostBrokerId())
	if err != nil {
		return nil, fmt.Errorf("tokenapi plugin: dial obold's TokenHost (broker id %d): %w", req.GetHostBrokerId(), err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	host, err := dialTokenHost(ctx, cancel, pluginpb.NewTokenHostClient(conn))
	if err != nil {
		return nil, err
	}
	err = s.impl.Serve(ctx, host)
	if cause := context.Cause(ctx); err == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		err = cause
	}
	if err != nil {
		return nil, err
	}
	return &pluginpb.TokenServeReply{}, nil
}

// RemoteTokenHost is obold's TokenHost as the plugin sees it.
type remoteTokenHost struct {
	rpc pluginpb.TokenHostClient
	gen atomic.Uint64

	mu   sync.Mutex
	subs map[*changeSub]struct{}
}

type changeSub struct {
	ch   chan TokenChange
	lost bool // a change did not fit: send TokenChangeLost first
}

// remoteTokenHostWithChanges is remoteTokenHost when obold has a change
// stream: only then does the module find a TokenChangeSource.
type remoteTokenHostWithChanges struct{ *remoteTokenHost }

// dialTokenHost opens the Watch stream and waits for the host's current
// generation; the stream's end cancels ctx (with the reason) so the module
// stops when obold's side goes.
func dialTokenHost(ctx context.Context, cancel context.CancelCauseFunc, rpc pluginpb.TokenHostClient) (TokenHost, error) {
	h := &remoteTokenHost{rpc: rpc, subs: map[*changeSub]struct{}{}}
	stream, err := rpc.Watch(ctx, &pluginpb.WatchRequest{})
	if err != nil {
		return nil, fmt.Errorf("tokenapi plugin: watch obold's generation: %w", err)
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, fmt.Errorf("tokenapi plugin: watch obold's generation: %w", err)
	}
	h.gen.Store(first.GetGeneration())
	go func() {
		for {
			u, err := stream.Recv()
			if err != nil {
				cancel(fmt.Errorf("tokenapi plugin: obold's TokenHost stream ended: %w", err))
				h.closeSubs()
				return
			}
			c, err := tokenChangeFrom(u.GetChange())
			if err != nil {
				cancel(&GarbageError{Module: "tokenhost", Call: "Watch", Err: err})
				h.closeSubs()
				return
			}
			h.gen.Store(u.GetGeneration())
			if c != nil {
				h.publish(*c)
			}
		}
	}()
	if first.GetChangesSupported() {
		return remoteTokenHostWithChanges{h}, nil
	}
	return h, nil
}

func (h *remoteTokenHost) Generation() uint64 { return h.gen.Load() }

func (h *remoteTokenHost) TokenSAs(ctx context.Context) (TokenSnapshot, error) {
	rep, err := h.rpc.TokenSAs(ctx, &pluginpb.TokenSAsRequest{})
	if err != nil {
		return TokenSnapshot{}, callError("tokenhost", "TokenSAs", err)
	}
	snap, err := TokenSnapshotFrom(rep)
	if err != nil {
		return TokenSnapshot{}, &GarbageError{Module: "tokenhost", Call: "TokenSAs", Err: err}
	}
	return snap, nil
}

func (h *remoteTokenHost) WhyNot(ctx context.Context, f TokenFlow) (wire.Reason, string, error) {
	rep, err := h.rpc.WhyNot(ctx, tokenFlowTo(f))
	if err != nil {
		return 0, "", callError("tokenhost", "WhyNot", err)
	}
	if rep.GetReason() > 0xffff || len(rep.GetText()) > maxTokenString {
		return 0, "", &GarbageError{Module: "tokenhost", Call: "WhyNot", Err: fmt.Errorf("reason %d or text of %d bytes out of range", rep.GetReason(), len(rep.GetText()))}
	}
	return wire.Reason(rep.GetReason()), rep.GetText(), nil
}

func (h *remoteTokenHost) Protect(ctx context.Context, r TokenProtect) (TokenProtectOutcome, error) {
	rep, err := h.rpc.Protect(ctx, &pluginpb.TokenProtectRequest{Flow: tokenFlowTo(r.Flow), Level: uint32(r.Level), PeerId: r.PeerID, MayLower: r.MayLower})
	if err != nil {
		return TokenProtectOutcome{}, callError("tokenhost", "Protect", err)
	}
	out, err := tokenProtectOutcomeFrom(rep)
	if err != nil {
		return TokenProtectOutcome{}, &GarbageError{Module: "tokenhost", Call: "Protect", Err: err}
	}
	return out, nil
}

func (h *remoteTokenHost) PinTarget(ctx context.Context) (TokenPinTarget, error) {
	rep, err := h.rpc.PinTarget(ctx, &pluginpb.PinTargetRequest{})
	if err != nil {
		return TokenPinTarget{}, callError("tokenhost", "PinTarget", err)
	}
	pt := TokenPinTarget{Datapath: Datapath(rep.GetDatapath()), Device: rep.GetDevice(), ClearMark: rep.GetClearMark()}
	switch pt.Datapath {
	case DatapathKernel, DatapathUserspace:
	default:
		return TokenPinTarget{}, &GarbageError{Module: "tokenhost", Call: "PinTarget", Err: fmt.Errorf("datapath %q: want kernel or userspace", pt.Datapath)}
	}
	if len(pt.Device) > 15 {
		return TokenPinTarget{}, &GarbageError{Module: "tokenhost", Call: "PinTarget", Err: fmt.Errorf("device %q: longer than an interface name", pt.Device)}
	}
	return pt, nil
}

// TokenChanges implements TokenChangeSource when obold has one: changes
// from the Watch stream, until ctx ends or the stream does.
func (h remoteTokenHostWithChanges) TokenChanges(ctx context.Context) <-chan TokenChange {
	sub := &changeSub{ch: make(chan TokenChange, 64)}
	h.mu.Lock()
	if h.subs == nil { // the stream already ended
		h.mu.Unlock()
		close(sub.ch)
		return sub.ch
	}
	h.subs[sub] = struct{}{}
	h.mu.Unlock()
	go func() {
		<-ctx.Done()
		h.mu.Lock()
		defer h.mu.Unlock()
		if _, ok := h.subs[sub]; ok {
			delete(h.subs, sub)
			close(sub.ch)
		}
	}()
	return sub.ch
}

// publish hands c to every subscriber without blocking the stream; one
// that fell behind gets TokenChangeLost once it has room again.
func (h *remoteTokenHost) publish(c TokenChange) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs {
		if sub.lost {
			select {
			case sub.ch <- TokenChange{Kind: TokenChangeLost}:
				sub.lost = false
			default:
				continue
			}
		}
		select {
		case sub.ch <- c:
		default:
			sub.lost = true
		}
	}
}

func (h *remoteTokenHost) closeSubs() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for sub := range h.subs {
		close(sub.ch)
	}
	h.subs = nil
}

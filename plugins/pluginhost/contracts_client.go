package pluginhost

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/obol-ipsec/obol/plugins"
)

// Resolver is a plugins.Resolver served by the supervised plugin.
func Resolver(s *Supervisor) plugins.Resolver { return resolver{s} }

type resolver struct{ s *Supervisor }

func (r resolver) Lookup(ctx context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	return call(ctx, r.s, func(ctx context.Context, c plugins.Resolver) (plugins.LookupAnswer, error) { return c.Lookup(ctx, q) })
}

// LabelPolicy is a plugins.LabelPolicy served by the supervised plugin.
func LabelPolicy(s *Supervisor) plugins.LabelPolicy { return labelPolicy{s} }

type labelPolicy struct{ s *Supervisor }

func (l labelPolicy) Authorize(ctx context.Context, r plugins.LabelRequest) (plugins.LabelDecision, error) {
	return call(ctx, l.s, func(ctx context.Context, c plugins.LabelPolicy) (plugins.LabelDecision, error) {
		return c.Authorize(ctx, r)
	})
}

func (l labelPolicy) Children(ctx context.Context, entry string) ([]plugins.LabeledChild, error) {
	return call(ctx, l.s, func(ctx context.Context, c plugins.LabelPolicy) ([]plugins.LabeledChild, error) {
		return c.Children(ctx, entry)
	})
}

// XFRMChecker is a plugins.XFRMChecker served by the supervised plugin.
func XFRMChecker(s *Supervisor) plugins.XFRMChecker { return xfrmChecker{s} }

type xfrmChecker struct{ s *Supervisor }

func (x xfrmChecker) Datapath(ctx context.Context, charonPlugins []string) (plugins.Datapath, error) {
	return call(ctx, x.s, func(ctx context.Context, c plugins.XFRMChecker) (plugins.Datapath, error) {
		return c.Datapath(ctx, charonPlugins)
	})
}

func (x xfrmChecker) Check(ctx context.Context, want []plugins.Policy) (plugins.Report, error) {
	return call(ctx, x.s, func(ctx context.Context, c plugins.XFRMChecker) (plugins.Report, error) { return c.Check(ctx, want) })
}

// AuthMethod is a plugins.AuthMethod served by the supervised plugin.
func AuthMethod(s *Supervisor) plugins.AuthMethod { return authMethod{s} }

type authMethod struct{ s *Supervisor }

func (a authMethod) Credentials(ctx context.Context, q plugins.LookupQuery) (plugins.LookupAnswer, error) {
	return call(ctx, a.s, func(ctx context.Context, c plugins.AuthMethod) (plugins.LookupAnswer, error) {
		return c.Credentials(ctx, q)
	})
}

// Describe implements plugins.Describer for every supervised module.
func (r resolver) Describe() string    { return r.s.Describe() }
func (l labelPolicy) Describe() string { return l.s.Describe() }
func (x xfrmChecker) Describe() string { return x.s.Describe() }
func (a authMethod) Describe() string  { return a.s.Describe() }

// TokenAPI is a plugins.TokenAPI run by the supervised plugin. Serve lasts
// as long as ctx: when the plugin process dies (or its module stops
// serving), it is restarted with the supervisor's backoff and Serve runs
// the new process's module, which listens on the socket again; applications
// reconnect. While nothing changes in obold, the plugin answers token
// queries from its own index without an RPC (plugins.TokenAPIPlugin).
func TokenAPI(s *Supervisor) plugins.TokenAPI { return tokenAPI{s} }

type tokenAPI struct{ s *Supervisor }

func (t tokenAPI) Serve(ctx context.Context, host plugins.TokenHost) error {
	for ctx.Err() == nil {
		raw, err := t.s.dispense(ctx)
		if err != nil {
			if errors.Is(err, ErrDown) && t.s.isClosed() {
				return err
			}
			// Down: the watcher restarts it after the backoff.
			select {
			case <-ctx.Done():
			case <-time.After(watchEvery):
			}
			continue
		}
		api, ok := raw.(plugins.TokenAPI)
		if !ok {
			return fmt.Errorf("pluginhost: %s plugin dispensed %T", t.s.spec.Kind, raw)
		}
		err = api.Serve(ctx, host)
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			err = errors.New("the token API module stopped serving")
		}
		t.s.fault(raw, err)
	}
	return nil
}

func (t tokenAPI) Describe() string { return t.s.Describe() }

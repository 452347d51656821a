//go:build !linux

package xfrm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"
)

var errNoXFRM = fmt.Errorf("xfrm: XFRM is Linux only: %w", errors.ErrUnsupported)

// Netlink stands in for the Linux SPD; every call fails.
type Netlink struct{ Timeout time.Duration }

var _ SPD = Netlink{}

func (Netlink) Policies(context.Context) ([]Policy, error)         { return nil, errNoXFRM }
func (Netlink) GetPolicy(context.Context, Policy) (Policy, error)  { return Policy{}, errNoXFRM }
func (Netlink) AddPolicy(context.Context, Policy) error            { return errNoXFRM }
func (Netlink) UpdatePolicy(context.Context, Policy) error         { return errNoXFRM }
func (Netlink) DeletePolicy(context.Context, Policy) error         { return errNoXFRM }
func (Netlink) PendingAcquires(context.Context) ([]Acquire, error) { return nil, errNoXFRM }

// ListenConfig configures a Listener (Linux only).
type ListenConfig struct {
	Queue    int
	Owner    *Owner
	RcvBuf   int
	Expiries bool
	Log      *slog.Logger
}

// ListenerStats counts what a Listener saw.
type ListenerStats struct {
	Received, Delivered, Dropped, Foreign, Overruns, Recovered, DecodeErrors, Expired uint64
}

// Listener is Linux only.
type Listener struct{}

// Listen fails outside Linux.
func Listen(context.Context, ListenConfig) (*Listener, error) { return nil, errNoXFRM }

func (*Listener) Acquires() <-chan Acquire  { return nil }
func (*Listener) Expired() <-chan Policy    { return nil }
func (*Listener) Overruns() <-chan struct{} { return nil }
func (*Listener) Done() <-chan struct{}     { return nil }
func (*Listener) Err() error                { return errNoXFRM }
func (*Listener) Stats() ListenerStats      { return ListenerStats{} }
func (*Listener) Close() error              { return nil }

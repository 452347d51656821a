//go:build linux

package xfrm

import (
	"context"
	"errors"
	"fmt"
	"syscall"
	"time"
)

// Netlink is the SPD of the network namespace of the calling thread, through
// NETLINK_XFRM. Each call opens its own socket, so the zero value is ready
// and safe for concurrent use. It needs CAP_NET_ADMIN.
type Netlink struct {
	// Timeout bounds a call whose context has no deadline (default 5 s).
	Timeout time.Duration
}

var _ SPD = Netlink{}

func (n Netlink) do(ctx context.Context, what string, typ uint16, dump bool, payload []byte) ([][]byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		t := n.Timeout
		if t <= 0 {
			t = 5 * time.Second
		}
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, t)
		defer cancel()
	}
	c, err := dial()
	if err != nil {
		return nil, fmt.Errorf("xfrm: %s: %w", what, err)
	}
	defer c.Close()
	out, err := c.request(ctx, typ, dump, payload)
	if err != nil {
		return nil, fmt.Errorf("xfrm: %s: %w", what, kernelErr(err))
	}
	return out, nil
}

// kernelErr adds the package's sentinel errors and advice to errnos.
func kernelErr(err error) error {
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return err
	}
	switch errno {
	case syscall.EEXIST:
		return fmt.Errorf("%w: %w", ErrExists, err)
	case syscall.ENOENT:
		return fmt.Errorf("%w: %w", ErrNotFound, err)
	case syscall.EPERM, syscall.EACCES:
		return fmt.Errorf("%w; obold needs CAP_NET_ADMIN (run it as root or grant the capability)", err)
	case syscall.EPROTONOSUPPORT, syscall.ENOPROTOOPT:
		return fmt.Errorf("%w; this kernel lacks XFRM (CONFIG_XFRM_USER)", err)
	}
	return err
}

// Policies lists every policy of the main SPD, obold's and everybody
// else's.
func (n Netlink) Policies(ctx context.Context) ([]Policy, error) {
	msgs, err := n.do(ctx, "list policies", msgGetPolicy, true, nil)
	if err != nil {
		return nil, err
	}
	ps := make([]Policy, 0, len(msgs))
	for _, m := range msgs {
		p, err := ParsePolicy(m)
		if err != nil {
			return nil, fmt.Errorf("xfrm: list policies: %w", err)
		}
		ps = append(ps, p)
	}
	return ps, nil
}

// GetPolicy looks a policy up by key.Index when set, else by its identity
// (direction, selector, mark, if_id, security context).
func (n Netlink) GetPolicy(ctx context.Context, key Policy) (Policy, error) {
	b, err := marshalPolicyID(key)
	if err != nil {
		return Policy{}, err
	}
	msgs, err := n.do(ctx, "get policy "+key.String(), msgGetPolicy, false, b)
	if err != nil {
		return Policy{}, err
	}
	if len(msgs) != 1 {
		return Policy{}, fmt.Errorf("xfrm: get policy %s: kernel sent %d answers, want 1", key, len(msgs))
	}
	return ParsePolicy(msgs[0])
}

// AddPolicy adds p; ErrExists if a policy with the same identity exists.
func (n Netlink) AddPolicy(ctx context.Context, p Policy) error {
	b, err := MarshalPolicy(p)
	if err != nil {
		return err
	}
	_, err = n.do(ctx, "add policy "+p.String(), msgNewPolicy, false, b)
	return err
}

// UpdatePolicy adds p or replaces the policy with the same identity (which
// keeps its index).
func (n Netlink) UpdatePolicy(ctx context.Context, p Policy) error {
	b, err := MarshalPolicy(p)
	if err != nil {
		return err
	}
	_, err = n.do(ctx, "update policy "+p.String(), msgUpdPolicy, false, b)
	return err
}

// DeletePolicy deletes by key.Index when set (with key's mark and if_id),
// else by identity. ErrNotFound if there is none.
func (n Netlink) DeletePolicy(ctx context.Context, key Policy) error {
	b, err := marshalPolicyID(key)
	if err != nil {
		return err
	}
	_, err = n.do(ctx, "delete policy "+key.String(), msgDelPolicy, false, b)
	return err
}

// PendingAcquires lists the larval states: the ACQUIREs the kernel raised
// that no SA has answered yet (they live net.core.xfrm_acq_expires, 30 s by
// default). After the Listener lost messages this is how to find them.
func (n Netlink) PendingAcquires(ctx context.Context) ([]Acquire, error) {
	msgs, err := n.do(ctx, "list states", msgGetSA, true, nil)
	if err != nil {
		return nil, err
	}
	return larvals(msgs)
}

func larvals(msgs [][]byte) ([]Acquire, error) {
	var as []Acquire
	for _, m := range msgs {
		a, ok, err := parseLarval(m)
		if err != nil {
			return nil, fmt.Errorf("xfrm: list states: %w", err)
		}
		if ok {
			as = append(as, a)
		}
	}
	return as, nil
}

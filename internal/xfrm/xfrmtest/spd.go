// Package xfrmtest has fakes of the kernel's XFRM side for unit tests: an
// in-memory SPD that behaves like Linux's (identities, index numbering,
// lifetimes, dropped security contexts) and helpers that build the netlink
// messages the kernel sends.
package xfrmtest

import (
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/obol-ipsec/obol/internal/xfrm"
)

// SPD is an in-memory xfrm.SPD. Like the kernel it refuses a second policy
// with the same identity (ErrExists), keeps an index the caller asks for
// when it is free and index&7 is the direction (EINVAL otherwise), numbers
// other policies from 8 in steps of 8, keeps the index on update, and
// deletes policies whose lifetime ran out. The zero value is ready; it is
// safe for concurrent use.
type SPD struct {
	// DropSecCtx makes it behave like a kernel without an active LSM:
	// security contexts are accepted and forgotten.
	DropSecCtx bool
	// Now is the clock for lifetimes and Added (nil: time.Now).
	Now func() time.Time
	// Fail, when set, is asked before each operation ("list", "get", "add",
	// "update", "delete"); a non-nil error is returned instead.
	Fail func(op string, p xfrm.Policy) error

	mu  sync.Mutex
	ps  []xfrm.Policy
	gen uint32
	log []string
}

var _ xfrm.SPD = (*SPD)(nil)

func (s *SPD) now() time.Time {
	if s.Now != nil {
		return s.Now()
	}
	return time.Now()
}

// expire drops policies whose lifetime ran out, as the kernel's timer does.
func (s *SPD) expire() {
	now := s.now()
	s.ps = slices.DeleteFunc(s.ps, func(p xfrm.Policy) bool {
		return p.Lifetime > 0 && !now.Before(p.Added.Add(p.Lifetime))
	})
}

type ident struct {
	src, dst         netip.Prefix
	proto            uint8
	sport, dport     uint16
	dir              xfrm.Dir
	mark, mask, ifID uint32
	ctx              string
}

func (s *SPD) identOf(p xfrm.Policy) ident {
	q := p.Plugin() // normalized selector
	mask := p.MarkMask
	if p.Mark != 0 && mask == 0 {
		mask = 0xffffffff
	}
	ctx := p.SecCtx
	if s.DropSecCtx {
		ctx = ""
	}
	return ident{q.Src, q.Dst, p.Proto, p.SrcPort, p.DstPort, p.Dir, p.Mark, mask, p.IfID, ctx}
}

func (s *SPD) find(key xfrm.Policy) int {
	if key.Index != 0 {
		return slices.IndexFunc(s.ps, func(p xfrm.Policy) bool {
			return p.Index == key.Index && p.Mark == key.Mark && p.IfID == key.IfID
		})
	}
	k := s.identOf(key)
	return slices.IndexFunc(s.ps, func(p xfrm.Policy) bool { return s.identOf(p) == k })
}

func (s *SPD) fail(op string, p xfrm.Policy) error {
	s.log = append(s.log, op+" "+p.String())
	if s.Fail != nil {
		return s.Fail(op, p)
	}
	return nil
}

func (s *SPD) newIndex(dir xfrm.Dir, want uint32) uint32 {
	taken := func(idx uint32) bool {
		return slices.ContainsFunc(s.ps, func(p xfrm.Policy) bool { return p.Index == idx })
	}
	if want != 0 && !taken(want) {
		return want
	}
	for {
		idx := s.gen | uint32(dir)
		s.gen += 8
		if idx == 0 {
			idx = 8
		}
		if !taken(idx) {
			return idx
		}
	}
}

// stored is p as the kernel keeps it.
func (s *SPD) stored(p xfrm.Policy) xfrm.Policy {
	q := p.Plugin()
	p.Src, p.Dst = q.Src, q.Dst
	if p.Mark != 0 && p.MarkMask == 0 {
		p.MarkMask = 0xffffffff
	}
	if s.DropSecCtx {
		p.SecCtx = ""
	}
	p.Added = s.now().Truncate(time.Second)
	if p.Lifetime > 0 {
		p.Lifetime = (p.Lifetime + time.Second - 1).Truncate(time.Second)
	}
	return p
}

func notFound(what string) error {
	return fmt.Errorf("xfrmtest: %s: %w: %w", what, xfrm.ErrNotFound, syscall.ENOENT)
}

// Policies lists every policy.
func (s *SPD) Policies(ctx context.Context) ([]xfrm.Policy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("list", xfrm.Policy{}); err != nil {
		return nil, err
	}
	s.expire()
	return slices.Clone(s.ps), nil
}

// GetPolicy looks up by index or identity.
func (s *SPD) GetPolicy(ctx context.Context, key xfrm.Policy) (xfrm.Policy, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("get", key); err != nil {
		return xfrm.Policy{}, err
	}
	s.expire()
	i := s.find(key)
	if i < 0 {
		return xfrm.Policy{}, notFound("get " + key.String())
	}
	return s.ps[i], nil
}

// AddPolicy adds exclusively.
func (s *SPD) AddPolicy(ctx context.Context, p xfrm.Policy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("add", p); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	if p.Index != 0 && p.Index&7 != uint32(p.Dir) {
		return fmt.Errorf("xfrmtest: add %s: %w (kernel: Policy index doesn't match direction)", p, syscall.EINVAL)
	}
	s.expire()
	k := p
	k.Index = 0
	if s.find(k) >= 0 {
		return fmt.Errorf("xfrmtest: add %s: %w: %w", p, xfrm.ErrExists, syscall.EEXIST)
	}
	q := s.stored(p)
	q.Index = s.newIndex(p.Dir, p.Index)
	s.ps = append(s.ps, q)
	return nil
}

// UpdatePolicy adds or replaces, keeping the replaced policy's index.
func (s *SPD) UpdatePolicy(ctx context.Context, p xfrm.Policy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("update", p); err != nil {
		return err
	}
	if err := p.Validate(); err != nil {
		return err
	}
	s.expire()
	k := p
	k.Index = 0
	q := s.stored(p)
	if i := s.find(k); i >= 0 {
		q.Index = s.ps[i].Index
		s.ps[i] = q
		return nil
	}
	q.Index = s.newIndex(p.Dir, p.Index)
	s.ps = append(s.ps, q)
	return nil
}

// DeletePolicy deletes by index or identity.
func (s *SPD) DeletePolicy(ctx context.Context, key xfrm.Policy) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.fail("delete", key); err != nil {
		return err
	}
	s.expire()
	i := s.find(key)
	if i < 0 {
		return notFound("delete " + key.String())
	}
	s.ps = slices.Delete(s.ps, i, i+1)
	return nil
}

// Put stores p exactly as given (its index too), bypassing every check:
// for a foreign policy, or a leftover of an earlier obold.
func (s *SPD) Put(p xfrm.Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if p.Added.IsZero() {
		p.Added = s.now()
	}
	s.ps = append(s.ps, p)
}

// Ops returns the operations done so far ("add src ... dst ...").
func (s *SPD) Ops() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.log)
}

// AcquireDatagram wraps ACQUIREs in netlink headers as one datagram, as an
// XFRMNLGRP_ACQUIRE socket reads them.
func AcquireDatagram(as ...xfrm.Acquire) ([]byte, error) {
	var b []byte
	for i, a := range as {
		payload, err := a.MarshalBinary()
		if err != nil {
			return nil, err
		}
		l := 16 + len(payload)
		h := make([]byte, 16)
		binary.NativeEndian.PutUint32(h[0:], uint32(l))
		binary.NativeEndian.PutUint16(h[4:], 0x17) // XFRM_MSG_ACQUIRE
		binary.NativeEndian.PutUint32(h[8:], uint32(i+1))
		b = append(b, h...)
		b = append(b, payload...)
		for len(b)%4 != 0 {
			b = append(b, 0)
		}
	}
	return b, nil
}

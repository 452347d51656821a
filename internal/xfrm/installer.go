package xfrm

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"
)

// Installer installs and removes obold's policies through an SPD, and only
// obold's: everything it installs carries obold's index tag and a priority in
// obold's band (see Owner), and it never changes or removes a policy without
// them. It is safe for concurrent use.
//
// Shunt lifetimes use the kernel's hard add-expires: the kernel deletes the
// policy on time even when obold is slow, stuck or restarting, a restarted
// obold reads the remaining time back (Policy.Added + Lifetime), and there is
// no timer state to rebuild. The kernel announces it (XFRM_MSG_POLEXPIRE,
// delivered by the Listener when ListenConfig.Expiries is set).
type Installer struct {
	spd   SPD
	owner Owner
	log   *slog.Logger

	mu        sync.Mutex
	seeded    bool
	next      uint32          // next index slot to try
	used      map[uint32]bool // indexes known to be taken by obold's policies
	sinceSeed int             // indexes handed out since the last seed
	// trapReqID is the reqid new traps get: obold's, with a generation
	// drawn at random for this installer, so the traps of a restarted
	// obold do not match the larval states its predecessor's left (they
	// would hold their pairs without a new ACQUIRE; see NextReqID).
	trapReqID uint32
}

// NewInstaller checks owner and returns an Installer (nil log: slog.Default()).
func NewInstaller(spd SPD, owner Owner, log *slog.Logger) (*Installer, error) {
	if spd == nil {
		return nil, errors.New("xfrm: installer: no SPD; use xfrm.Netlink{}")
	}
	if err := owner.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	owner = owner.withDefaults()
	var g [2]byte
	if _, err := rand.Read(g[:]); err != nil {
		return nil, fmt.Errorf("xfrm: installer: no randomness for the trap reqid: %w", err)
	}
	gen := binary.BigEndian.Uint16(g[:]) | 1 // never 0
	return &Installer{spd: spd, owner: owner, log: log, used: map[uint32]bool{}, trapReqID: owner.ReqID()&^0xffff | uint32(gen)}, nil
}

// Owner is the ownership marker the installer uses.
func (in *Installer) Owner() Owner { return in.owner }

// seed learns which tagged indexes are taken: first, and again after half
// the slots were handed out (policies the kernel expired, or that were
// deleted by hand, free theirs).
func (in *Installer) seed(ctx context.Context) error {
	if in.seeded && in.sinceSeed < slotCount/2 {
		return nil
	}
	ps, err := in.spd.Policies(ctx)
	if err != nil {
		return fmt.Errorf("xfrm: install: list policies: %w", err)
	}
	if in.seeded {
		clear(in.used)
	} else {
		in.next = 0
	}
	in.sinceSeed = 0
	for _, p := range ps {
		if in.owner.Tagged(p.Index) {
			in.used[p.Index] = true
			if s := (slotOf(p.Index) + 1) % slotCount; !in.seeded && s > in.next {
				in.next = s
			}
		}
	}
	in.seeded = true
	return nil
}

// alloc returns a free tagged index for dir.
func (in *Installer) alloc(dir Dir) (uint32, error) {
	for range slotCount {
		idx := in.owner.index(dir, in.next)
		in.next = (in.next + 1) % slotCount
		if !in.used[idx] {
			in.sinceSeed++
			return idx, nil
		}
	}
	return 0, fmt.Errorf("xfrm: install: all %d indexes of tag %#x are taken; remove stale policies", slotCount, in.owner.Tag)
}

// Install puts p in the kernel as obold's and returns it as the kernel holds
// it (with its index). If obold's policy with p's identity is there already,
// it is updated in place (or left as is when equal). A policy of anybody else
// with p's identity is never replaced: the error wraps ErrNotOwned. A
// security context the kernel drops is an error (ErrSecCtxUnsupported) and the
// policy is taken out again: an unlabeled stand-in would match every label.
func (in *Installer) Install(ctx context.Context, p Policy) (Policy, error) {
	if err := p.Validate(); err != nil {
		return Policy{}, err
	}
	if !in.owner.Band.Contains(p.Priority) {
		return Policy{}, fmt.Errorf("xfrm: install %s: priority %d is outside obold's band %d-%d; use Band.Priority or widen the band",
			p, p.Priority, in.owner.Band.Min, in.owner.Band.Max)
	}
	p.Ifindex, p.Added = 0, time.Time{}
	if p.Action == Trap {
		if !in.owner.IsReqID(p.ReqID) {
			p.ReqID = in.trapReqID
		}
	} else {
		p.ReqID = 0
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if err := in.seed(ctx); err != nil {
		return Policy{}, err
	}
	key := p
	key.Index = 0
	for attempt := 0; attempt < 4; attempt++ {
		idx, err := in.alloc(p.Dir)
		if err != nil {
			return Policy{}, err
		}
		p.Index = idx
		err = in.spd.AddPolicy(ctx, p)
		if errors.Is(err, ErrExists) {
			return in.replace(ctx, p, key)
		}
		if err != nil {
			return Policy{}, fmt.Errorf("xfrm: install: %w", err)
		}
		got, err := in.spd.GetPolicy(ctx, key)
		if err != nil {
			return Policy{}, fmt.Errorf("xfrm: install %s: read it back: %w", p, err)
		}
		if p.SecCtx != "" && got.SecCtx == "" {
			derr := in.spd.DeletePolicy(ctx, got)
			return Policy{}, errors.Join(fmt.Errorf("xfrm: install %s: the kernel dropped the security context: %w; labeled IPsec needs an LSM with XFRM support (SELinux) active; the policy was removed",
				p, ErrSecCtxUnsupported), derr)
		}
		if got.SecCtx != p.SecCtx {
			in.log.Info("xfrm: the kernel keeps the security context in another form; compare with that one", "given", p.SecCtx, "kernel", got.SecCtx)
		}
		if got.Index == idx {
			in.used[idx] = true
			in.log.Debug("xfrm: installed", "policy", got.String())
			return got, nil
		}
		// The index was taken by a policy we did not know of: the kernel
		// numbered ours itself. Take it out and try the next index.
		in.used[idx] = true
		in.log.Warn("xfrm: the kernel did not keep obold's index (taken by another policy); retrying", "wanted", fmt.Sprintf("%#x", idx), "got", fmt.Sprintf("%#x", got.Index))
		if err := in.spd.DeletePolicy(ctx, got); err != nil {
			return Policy{}, fmt.Errorf("xfrm: install %s: remove the copy without obold's index %#x: %w", p, got.Index, err)
		}
	}
	return Policy{}, fmt.Errorf("xfrm: install %s: the kernel renumbered it 4 times; policies with obold's index tag %#x exist that obold did not install", p, in.owner.Tag)
}

// replace handles an identity clash: update obold's own, refuse others'.
func (in *Installer) replace(ctx context.Context, p, key Policy) (Policy, error) {
	have, err := in.spd.GetPolicy(ctx, key)
	if err != nil {
		return Policy{}, fmt.Errorf("xfrm: install %s: a policy with this identity exists but cannot be read: %w", p, err)
	}
	if !in.owner.Owns(have) {
		return Policy{}, fmt.Errorf("xfrm: install %s: the kernel holds a policy with the same selector that is %w (%s); obold leaves it alone: remove it, or change obold's configuration so they do not overlap",
			p, ErrNotOwned, have)
	}
	if p.SecCtx != "" && have.SecCtx == "" {
		return Policy{}, fmt.Errorf("xfrm: install %s: the kernel confuses it with obold's unlabeled policy %s: %w", p, have, ErrSecCtxUnsupported)
	}
	if sameSettings(have, p) && have.ReqID == p.ReqID {
		return have, nil
	}
	p.Index = have.Index
	if err := in.spd.UpdatePolicy(ctx, p); err != nil {
		return Policy{}, fmt.Errorf("xfrm: install: update obold's policy: %w", err)
	}
	got, err := in.spd.GetPolicy(ctx, key)
	if err != nil {
		return Policy{}, fmt.Errorf("xfrm: install %s: read it back: %w", p, err)
	}
	in.log.Debug("xfrm: updated", "policy", got.String(), "was", have.String())
	return got, nil
}

// Remove takes obold's policy with p's identity (or p.Index, when set) out of
// the kernel. A policy that is already gone is not an error; one that is not
// obold's is left alone (ErrNotOwned).
func (in *Installer) Remove(ctx context.Context, p Policy) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	have, err := in.spd.GetPolicy(ctx, p)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("xfrm: remove %s: %w", p, err)
	}
	if !in.owner.Owns(have) {
		return fmt.Errorf("xfrm: remove %s: the kernel's policy %s is %w; obold leaves it alone", p, have, ErrNotOwned)
	}
	if err := in.spd.DeletePolicy(ctx, have); err != nil && !errors.Is(err, ErrNotFound) {
		return fmt.Errorf("xfrm: remove: %w", err)
	}
	delete(in.used, have.Index)
	return nil
}

// List returns obold's policies in the kernel.
func (in *Installer) List(ctx context.Context) ([]Policy, error) {
	ps, err := in.spd.Policies(ctx)
	if err != nil {
		return nil, fmt.Errorf("xfrm: list obold's policies: %w", err)
	}
	var ours []Policy
	for _, p := range ps {
		if in.owner.Owns(p) {
			ours = append(ours, p)
		}
	}
	return ours, nil
}

// RemoveAll takes every policy of obold's out of the kernel — those this
// process installed and those an earlier obold left — and nothing else. It
// returns how many it removed; it goes on after an error and reports them
// all.
func (in *Installer) RemoveAll(ctx context.Context) (int, error) {
	ours, err := in.List(ctx)
	if err != nil {
		return 0, err
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	n := 0
	var errs []error
	for _, p := range ours {
		err := in.spd.DeletePolicy(ctx, p)
		switch {
		case err == nil:
			n++
		case errors.Is(err, ErrNotFound): // expired meanwhile
		default:
			errs = append(errs, err)
			continue
		}
		delete(in.used, p.Index)
	}
	if len(errs) > 0 {
		return n, fmt.Errorf("xfrm: remove obold's policies: %d of %d failed: %w", len(errs), len(ours), errors.Join(errs...))
	}
	return n, nil
}

// SecCtxSupported installs a probe policy labeled ctxLabel (dir out, allow,
// 198.18.255.254 -> 198.18.255.255 protocol 253, which no real traffic
// matches), reads it back and removes it. It says whether the kernel keeps
// security contexts, so that labeled policies can work.
func (in *Installer) SecCtxSupported(ctx context.Context, ctxLabel string) (bool, error) {
	probe := Policy{
		Src:    netip.MustParsePrefix("198.18.255.254/32"),
		Dst:    netip.MustParsePrefix("198.18.255.255/32"),
		Proto:  253,
		Dir:    DirOut,
		Action: Allow, Priority: in.owner.Band.Max, SecCtx: ctxLabel,
	}
	got, err := in.Install(ctx, probe)
	if errors.Is(err, ErrSecCtxUnsupported) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return true, in.Remove(ctx, got)
}

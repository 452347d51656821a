package xfrm

import (
	"errors"
	"fmt"
	"net/netip"
)

// Band is the inclusive range of policy priorities obold uses.
type Band struct{ Min, Max uint32 }

// DefaultBand lies above every priority strongSwan's kernel-netlink uses
// (PRIO_BASE 200000, up to about 600000 for fallback policies): a CHILD_SA's
// policies and the operator's own swanctl conns take precedence over obold's
// opportunistic traps and shunts.
var DefaultBand = Band{Min: 1_000_000, Max: 1_099_999}

// DefaultTag marks obold's policy indexes: 0xb0 in the top byte.
const DefaultTag uint8 = 0xb0

// Contains says whether prio lies in b.
func (b Band) Contains(prio uint32) bool { return prio >= b.Min && prio <= b.Max }

// Role is what a policy is for; it places the policy within the band.
type Role uint8

const (
	// RoleBypass: IKE, the resolver, the LAN. Wins over everything obold has.
	RoleBypass Role = iota
	// RolePair: per-pair allow policies once a userspace tunnel is up.
	RolePair
	// RoleShunt: block or allow shunts after a failed or refused negotiation.
	RoleShunt
	// RoleTrap: the opportunistic traps.
	RoleTrap
)

// minBandWidth leaves each of the four roles room for the 257 specificity
// steps that Priority uses.
const minBandWidth = 4 * 257

// Priority suggests a priority for a policy with role and selector: the band
// is split into four quarters (bypass, pair, shunt, trap, in that order of
// precedence) and, within a quarter, a more specific selector (more prefix
// bits) gets a lower number, so a /32 shunt beats a /16 shunt.
func (b Band) Priority(role Role, src, dst netip.Prefix) uint32 {
	q := (b.Max - b.Min + 1) / 4
	bits := 0
	if src.IsValid() {
		bits += src.Bits()
	}
	if dst.IsValid() {
		bits += dst.Bits()
	}
	return b.Min + uint32(role)*q + uint32(256-bits)
}

// Owner tells obold's policies from everybody else's. A policy is obold's
// when BOTH hold:
//
//   - its priority lies in Band (obold installs nowhere else), and
//   - its index carries Tag in the top byte. The kernel keeps an index that
//     the installer asks for (when index&7 equals the direction and no other
//     policy holds it) and numbers everyone else's policies from 8 upwards in
//     steps of 8, so a foreign policy carries the tag only if someone set
//     such an index on purpose.
//
// The mark and the xfrm interface id cannot serve: they are matches on the
// packet, so a policy carrying them no longer applies to ordinary traffic.
// The security context is dropped by kernels without an active LSM.
//
// The zero Owner means DefaultBand and DefaultTag.
type Owner struct {
	Band Band
	Tag  uint8
}

// DefaultOwner is the zero Owner made explicit.
func DefaultOwner() Owner { return Owner{Band: DefaultBand, Tag: DefaultTag} }

func (o Owner) withDefaults() Owner {
	if o.Band == (Band{}) {
		o.Band = DefaultBand
	}
	if o.Tag == 0 {
		o.Tag = DefaultTag
	}
	return o
}

// Validate checks the band and the tag.
func (o Owner) Validate() error {
	o = o.withDefaults()
	var errs []error
	if o.Band.Min > o.Band.Max {
		errs = append(errs, fmt.Errorf("priority band %d-%d is empty: Min must not exceed Max", o.Band.Min, o.Band.Max))
	} else if w := uint64(o.Band.Max) - uint64(o.Band.Min) + 1; w < minBandWidth {
		errs = append(errs, fmt.Errorf("priority band %d-%d has %d priorities: give it at least %d", o.Band.Min, o.Band.Max, w, minBandWidth))
	}
	if o.Band.Min < 1024 {
		errs = append(errs, fmt.Errorf("priority band starts at %d, among hand-written and strongSwan pass policies: start it at 1024 or more (default %d)", o.Band.Min, DefaultBand.Min))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("xfrm: ownership: %w", errors.Join(errs...))
}

// Owns says whether p is obold's.
func (o Owner) Owns(p Policy) bool {
	o = o.withDefaults()
	return o.Band.Contains(p.Priority) && o.Tagged(p.Index)
}

// Tagged says whether a policy index carries obold's tag.
func (o Owner) Tagged(index uint32) bool {
	o = o.withDefaults()
	return uint8(index>>24) == o.Tag
}

// ReqID is the request id obold's trap templates carry when installed: the
// tag in the top byte, 0x0b in the next, a generation in the low 16 bits
// (1 here; NextReqID moves it). strongSwan numbers its reqids from 1.
func (o Owner) ReqID() uint32 {
	o = o.withDefaults()
	return uint32(o.Tag)<<24 | 0x0b<<16 | 1
}

// IsReqID says whether r is a request id of obold's traps, of any
// generation.
func (o Owner) IsReqID(r uint32) bool {
	o = o.withDefaults()
	return r>>16 == uint32(o.Tag)<<8|0x0b
}

// NextReqID is the next generation of trap request id r (never 0). A
// larval state matches only its own template's request id, so a trap
// re-installed with the next one raises a fresh ACQUIRE for a pair whose
// last one's larval state is still alive (it cannot be deleted: the
// kernel looks ESP states up by SPI, and a larval state has none).
func NextReqID(r uint32) uint32 {
	g := uint16(r) + 1
	if g == 0 {
		g = 1
	}
	return r&^0xffff | uint32(g)
}

// slotCount is how many indexes per direction the tag leaves: 21 bits.
const slotCount = 1 << 21

// index builds the index for slot (0..slotCount-1) and dir.
func (o Owner) index(dir Dir, slot uint32) uint32 {
	o = o.withDefaults()
	return uint32(o.Tag)<<24 | (slot%slotCount)<<3 | uint32(dir&7)
}

func slotOf(index uint32) uint32 { return (index >> 3) % slotCount }

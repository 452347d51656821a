package labels

import (
	"slices"
	"strconv"
	"strings"
)

// SELinuxContext is user:role:type[:level]. MLS says a level was given;
// a context without one has the zero Range.
type SELinuxContext struct {
	User, Role, Type string
	MLS              bool
	Range            Range
}

// ParseSELinux parses user:role:type[:level], where level is a level
// ("s0", "s0:c1,c3.c5") or a range ("s0-s3:c0.c127"). Users, roles and
// types are letters, digits, '_' and '.'.
func ParseSELinux(s string) (SELinuxContext, error) {
	c, pe := parseSELinux(s)
	if pe != nil {
		return SELinuxContext{}, pe.at(DOISELinux, s)
	}
	return c, nil
}

const selinuxExample = "system_u:system_r:httpd_t:s0"

func parseSELinux(s string) (SELinuxContext, *perr) {
	if s == "" {
		return SELinuxContext{}, &perr{-1, "empty SELinux context; write user:role:type:level, e.g. " + selinuxExample}
	}
	if len(s) > MaxSELinuxLen {
		return SELinuxContext{}, &perr{-1, "context is " + strconv.Itoa(len(s)) + " bytes; at most " + strconv.Itoa(MaxSELinuxLen) + " are allowed"}
	}
	for i := 0; i < len(s); i++ {
		if b := s[i]; b <= ' ' || b > '~' {
			return SELinuxContext{}, &perr{i, "byte " + strconv.QuoteRune(rune(b)) + " is not allowed: SELinux contexts are printable ASCII without spaces; remove it"}
		}
	}
	parts := strings.SplitN(s, ":", 4)
	if len(parts) < 3 {
		return SELinuxContext{}, &perr{-1, "has " + strconv.Itoa(len(parts)) + " of the 3 fields user:role:type (then :level); write e.g. " + selinuxExample}
	}
	c := SELinuxContext{User: parts[0], Role: parts[1], Type: parts[2]}
	off := 0
	for i, what := range []string{"user", "role", "type"} {
		if pe := checkIdent(what, parts[i], off); pe != nil {
			return SELinuxContext{}, pe
		}
		off += len(parts[i]) + 1
	}
	if len(parts) == 4 {
		if parts[3] == "" {
			return SELinuxContext{}, &perr{off, "empty level after ':'; write a level such as s0, or drop the trailing ':'"}
		}
		r, pe := parseRange(parts[3], off)
		if pe != nil {
			return SELinuxContext{}, pe
		}
		c.MLS, c.Range = true, r
	}
	return c, nil
}

var identExample = map[string]string{"user": "system_u", "role": "system_r", "type": "httpd_t"}

func checkIdent(what, s string, off int) *perr {
	if s == "" {
		return &perr{off, "the " + what + " is empty; write one, e.g. " + identExample[what]}
	}
	for i := 0; i < len(s); i++ {
		if !identByte(s[i]) {
			return &perr{off + i, what + " " + quote(s) + " has " + strconv.QuoteRune(rune(s[i])) +
				"; users, roles and types use only letters, digits, '_' and '.'"}
		}
	}
	return nil
}

func identByte(b byte) bool {
	return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9' || b == '_' || b == '.'
}

// ValidIdent says s is a usable SELinux user, role or type name.
func ValidIdent(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !identByte(s[i]) {
			return false
		}
	}
	return true
}

// String prints the context canonically.
func (c SELinuxContext) String() string {
	s := c.User + ":" + c.Role + ":" + c.Type
	if c.MLS {
		s += ":" + c.Range.String()
	}
	return s
}

// Context wraps c as a DOI-tagged Context.
func (c SELinuxContext) Context() Context {
	return Context{doi: DOISELinux, s: c.String(), se: c}
}

// Rule is a type-enforcement allow rule: it stands for SELinux's
// "allow Source Target:association polmatch;", letting data labeled with
// type Source use SPD entries labeled with type Target. sendto and
// recvfrom (who may send and receive on an SA) are the kernel's business
// and not modelled.
type Rule struct {
	Source, Target string
}

func (r Rule) String() string {
	return "allow " + r.Source + " " + r.Target + ":association polmatch"
}

// TE is a set of allow rules. The zero TE allows nothing.
type TE struct {
	rules map[Rule]struct{}
}

// NewTE builds a TE from rules; repeats are harmless.
func NewTE(rules ...Rule) TE {
	t := TE{rules: make(map[Rule]struct{}, len(rules))}
	for _, r := range rules {
		t.rules[r] = struct{}{}
	}
	return t
}

// Allows says a rule lets source use target.
func (t TE) Allows(source, target string) bool {
	_, ok := t.rules[Rule{source, target}]
	return ok
}

// Sources lists, sorted, the types allowed to use target.
func (t TE) Sources(target string) []string {
	var s []string
	for r := range t.rules {
		if r.Target == target {
			s = append(s, r.Source)
		}
	}
	slices.Sort(s)
	return s
}

// Denial says why a data label may not use an entry.
type Denial int

const (
	Permitted        Denial = iota // not denied
	DenyNoRule                     // no TE allow rule from the data's type to the entry's
	DenyAboveHigh                  // the data's (high) level has a higher sensitivity than, or strictly dominates, the entry's high
	DenyBelowLow                   // the data's (low) level has a lower sensitivity than, or is strictly dominated by, the entry's low
	DenyIncomparable               // a data level has categories outside the entry's high, or lacks some of its low's
	DenyMLSMismatch                // one context has a level and the other has none
	DenyNotListed                  // Smack/opaque: not one of the entry's labels (or listed twice)
	DenyUnparseable                // the data label does not parse in the entry's DOI
	DenyUnlabeled                  // the entry requires labels and the flow has none
)

var denialNames = [...]string{"permitted", "no TE allow rule", "level above the entry's high", "level below the entry's low",
	"level incomparable with the entry's range", "level on one side only", "not one of the entry's labels",
	"not a label of the entry's DOI", "no label"}

func (d Denial) String() string {
	if int(d) >= 0 && int(d) < len(denialNames) {
		return denialNames[d]
	}
	return "denial(" + strconv.Itoa(int(d)) + ")"
}

// Verdict is the outcome of one check: why, in words (without the "label X
// may use entry Y" preamble), and for a denial how a policy author could
// change it (Fix; never shown to applications).
type Verdict struct {
	Denial Denial
	Why    string
	Fix    string
}

// Allowed says the check passed.
func (v Verdict) Allowed() bool { return v.Denial == Permitted }

// CheckSELinux decides whether data (a flow's label) may use an SPD entry
// labeled entry, as SELinux's association:polmatch does under the
// reference policy: te must allow data's type to use entry's type, and
// data's range must lie within entry's (data low dominates entry low,
// entry high dominates data high). So an entry's range bounds the levels
// that may use it: a flow at a high level cannot get an SA through an entry
// meant for a lower peer. Users and roles take no part.
func CheckSELinux(te TE, data, entry SELinuxContext) Verdict {
	rule := Rule{data.Type, entry.Type}
	if !te.Allows(rule.Source, rule.Target) {
		return Verdict{DenyNoRule, "no TE rule lets type " + data.Type + " use type " + entry.Type + " (" + rule.String() + ")",
			"add [[labels.allow]] source = " + strconv.Quote(data.Type) + " target = " + strconv.Quote(entry.Type)}
	}
	switch {
	case !data.MLS && !entry.MLS:
		return Verdict{Permitted, rule.String() + "; neither context has a level", ""}
	case data.MLS && !entry.MLS:
		return Verdict{DenyMLSMismatch, "it has level " + data.Range.String() + " but the entry's context has none",
			"give the entry's context a level range, or drop levels everywhere"}
	case !data.MLS && entry.MLS:
		return Verdict{DenyMLSMismatch, "it has no level but the entry's context has " + entry.Range.String(),
			"give the label a level within " + entry.Range.String()}
	}
	d, e := data.Range, entry.Range
	its := func(which string) string {
		if d.Single() {
			return "its level"
		}
		return "its " + which + " level"
	}
	if !e.High.Dominates(d.High) {
		if d.High.Sens > e.High.Sens || d.High.Dominates(e.High) {
			why := its("high") + " " + d.High.String() + " is above the entry's high " + e.High.String()
			if m := d.High.Cats.Minus(e.High.Cats); m.Len() > 0 {
				why += " (and has " + m.String() + ", which the entry's high lacks)"
			}
			return Verdict{DenyAboveHigh, why, "raise the entry's high level to dominate " + d.High.String()}
		}
		return Verdict{DenyIncomparable, its("high") + " " + d.High.String() + " is incomparable with the entry's high " +
			e.High.String() + " (the entry's high has no " + d.High.Cats.Minus(e.High.Cats).String() + ")",
			"add the categories to the entry's high level"}
	}
	if !d.Low.Dominates(e.Low) {
		if d.Low.Sens < e.Low.Sens || e.Low.Dominates(d.Low) {
			why := its("low") + " " + d.Low.String() + " is below the entry's low " + e.Low.String()
			if m := e.Low.Cats.Minus(d.Low.Cats); m.Len() > 0 {
				why += " (and lacks the entry's " + m.String() + ")"
			}
			return Verdict{DenyBelowLow, why, "lower the entry's low level to " + d.Low.String() + " or below"}
		}
		return Verdict{DenyIncomparable, its("low") + " " + d.Low.String() + " is incomparable with the entry's low " +
			e.Low.String() + " (it lacks the entry's " + e.Low.Cats.Minus(d.Low.Cats).String() + ")",
			"drop those categories from the entry's low level"}
	}
	return Verdict{Permitted, rule.String() + "; " + d.String() + " is within " + e.String(), ""}
}

// Package labels is obold's labeled-IPsec policy (specs/ikev2-security-label.txt):
// it parses security contexts (SELinux, Smack, opaque), decides with obol's
// own MLS dominance and type-enforcement checks which data labels may use
// which SPD entry, and tells obold which labeled CHILD_SAs to load.
//
// An SPD entry's own context controls who may use the entry; it is never
// copied into an SA (spec 3.3). SAs carry the data's label.
package labels

import (
	"strconv"
	"strings"
)

// DOI is a context's domain of interpretation: which security mechanism
// gives the label its meaning.
type DOI string

const (
	DOISELinux DOI = "selinux" // user:role:type[:level]
	DOISmack   DOI = "smack"   // one Smack label
	DOIOpaque  DOI = "opaque"  // any other mechanism: compared byte-wise
)

// Size limits. Smack's kernel limit is 255 bytes (SMK_LONGLABEL less the
// NUL). Opaque labels and SELinux contexts get a page: charon passes labels
// as C strings and the kernel keeps contexts in a page.
const (
	MaxSmackLen   = 255
	MaxOpaqueLen  = 4096
	MaxSELinuxLen = 4096
)

// ParseError is a context that cannot be parsed: where in Input (Offset, a
// byte index; -1 for the whole input) and what to write instead.
type ParseError struct {
	DOI    DOI
	Input  string
	Offset int
	Msg    string
}

func (e *ParseError) Error() string {
	if e.Offset < 0 {
		return quote(e.Input) + ": " + e.Msg
	}
	return quote(e.Input) + " at byte " + strconv.Itoa(e.Offset) + ": " + e.Msg
}

// perr is a parse error before it knows its whole input.
type perr struct {
	off int
	msg string
}

func (p *perr) at(doi DOI, input string) *ParseError {
	return &ParseError{DOI: doi, Input: input, Offset: p.off, Msg: p.msg}
}

// quote quotes s for a message, shortening very long inputs.
func quote(s string) string {
	if len(s) > 80 {
		return strconv.Quote(s[:72]) + "..."
	}
	return strconv.Quote(s)
}

// Context is a parsed security context with its DOI. The zero Context is
// "no label". Contexts are comparable with == (and Equal): two contexts are
// equal when they mean the same, e.g. SELinux "s0:c0,c1,c2" and "s0:c0.c2".
type Context struct {
	doi DOI
	s   string         // canonical text
	se  SELinuxContext // DOISELinux only
}

// ParseContext parses s as a context of the given DOI.
func ParseContext(doi DOI, s string) (Context, error) {
	switch doi {
	case DOISELinux:
		c, err := ParseSELinux(s)
		if err != nil {
			return Context{}, err
		}
		return c.Context(), nil
	case DOISmack:
		return ParseSmack(s)
	case DOIOpaque:
		return ParseOpaque(s)
	}
	return Context{}, &ParseError{DOI: doi, Input: s, Offset: -1,
		Msg: "unknown domain of interpretation " + quote(string(doi)) + `; write "selinux", "smack" or "opaque"`}
}

// DOI is the context's domain of interpretation ("" for the zero Context).
func (c Context) DOI() DOI { return c.doi }

// String is the canonical text: what obold gives charon as a label.
func (c Context) String() string { return c.s }

// IsZero says c is no label.
func (c Context) IsZero() bool { return c.doi == "" }

// Equal says c and o are the same label of the same DOI.
func (c Context) Equal(o Context) bool { return c == o }

// SELinux returns the SELinux parts of an SELinux context.
func (c Context) SELinux() (SELinuxContext, bool) { return c.se, c.doi == DOISELinux }

// SmackSpecial names Smack's special labels ("*" star, "^" hat, "_" floor,
// "@" web), or "" for an ordinary label or another DOI. obol compares them
// exactly like any other label; the name is for explanations.
func (c Context) SmackSpecial() string {
	if c.doi != DOISmack {
		return ""
	}
	switch c.s {
	case "*":
		return "star"
	case "^":
		return "hat"
	case "_":
		return "floor"
	case "@":
		return "web"
	}
	return ""
}

// ParseSmack checks a Smack label as the kernel does: 1 to 255 bytes of
// printable ASCII, no whitespace, none of / " ' \, not starting with '-'.
func ParseSmack(s string) (Context, error) {
	bad := func(off int, msg string) (Context, error) {
		return Context{}, &ParseError{DOI: DOISmack, Input: s, Offset: off, Msg: msg}
	}
	switch {
	case s == "":
		return bad(-1, `empty Smack label; write a label such as "WebData", or one of the special labels "*", "^", "_", "@"`)
	case len(s) > MaxSmackLen:
		return bad(-1, "Smack label is "+strconv.Itoa(len(s))+" bytes; Smack allows at most "+strconv.Itoa(MaxSmackLen)+": shorten it")
	case s[0] == '-':
		return bad(0, "Smack labels may not start with '-'; remove it or start with a letter")
	}
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case b <= ' ' || b > '~':
			return bad(i, "byte "+strconv.QuoteRune(rune(b))+" is not allowed: Smack labels hold printable ASCII without spaces; remove it")
		case b == '/' || b == '"' || b == '\'' || b == '\\':
			return bad(i, "Smack labels may not contain "+strconv.QuoteRune(rune(b))+"; remove it")
		}
	}
	return Context{doi: DOISmack, s: s}, nil
}

// ParseOpaque accepts a label of another mechanism: 1 to 4096 bytes, any
// byte but NUL (charon passes labels as C strings). Compared byte-wise.
func ParseOpaque(s string) (Context, error) {
	bad := func(off int, msg string) (Context, error) {
		return Context{}, &ParseError{DOI: DOIOpaque, Input: s, Offset: off, Msg: msg}
	}
	switch {
	case s == "":
		return bad(-1, "empty label; write the label, or leave labels out for unlabeled traffic")
	case len(s) > MaxOpaqueLen:
		return bad(-1, "label is "+strconv.Itoa(len(s))+" bytes; at most "+strconv.Itoa(MaxOpaqueLen)+" are allowed: shorten it")
	}
	if i := strings.IndexByte(s, 0); i >= 0 {
		return bad(i, `NUL byte in label: charon passes labels as C strings and would cut it here; remove it`)
	}
	return Context{doi: DOIOpaque, s: s}, nil
}

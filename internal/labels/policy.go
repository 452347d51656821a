package labels

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/obol-ipsec/obol/plugins"
)

// Label modes given to charon (a child's label_mode).
const (
	ModeAuto    = "auto"
	ModeSimple  = "simple"
	ModeSELinux = "selinux"
)

// Detector tells whether SELinux is active on the host, for mode "auto"
// and to refuse mode "selinux" where charon would refuse it.
type Detector interface {
	SELinuxActive() bool
}

// HostDetector looks for Root/sys/fs/selinux/enforce, which exists exactly
// when an SELinux policy is loaded. Root "" is "/".
type HostDetector struct {
	Root string
}

func (h HostDetector) SELinuxActive() bool {
	root := h.Root
	if root == "" {
		root = "/"
	}
	_, err := os.Stat(filepath.Join(root, "sys/fs/selinux/enforce"))
	return err == nil
}

// FixedDetector answers what it is told; for tests and `obolctl labels
// check --selinux`.
type FixedDetector bool

func (f FixedDetector) SELinuxActive() bool { return bool(f) }

// Child is a labeled CHILD_SA config obold loads for an entry. Its Name is
// entry name + "-l" + 8 hex digits of the label's canonical form, so
// reordering or adding labels renames nothing; in selinux mode an SELinux
// entry has one child, entry name + "-sel", whose Label is the entry's
// context (Generic). The bare entry name is left for an unlabeled child
// when the entry does not require labels.
type Child = plugins.LabeledChild

// Entry is a loaded SPD entry, read-only.
type Entry struct {
	Name      string
	Selector  Selector
	DOI       DOI
	Context   Context // SELinux entries only; zero otherwise
	Required  bool
	Labels    []Context
	LabelMode string // "simple" or "selinux"
	Children  []Child
}

// Policy is a loaded, consistent label policy. It is immutable and safe for
// concurrent use; reload by building a new one.
type Policy struct {
	mode    string // as configured ("auto" for "")
	selMode string // label mode of SELinux entries
	modeWhy string
	te      TE
	rules   []Rule
	entries []*entry // config order
	sorted  []*entry // most specific first
	byName  map[string]*entry
	// teBroken: an allow rule did not load, so "no TE rule" denials of
	// listed labels are likely its echo and not reported.
	teBroken bool
}

type entry struct {
	Entry
	path   string // "labels.entry[i]"
	ok     bool   // selector and context usable for matching
	se     SELinuxContext
	listed []listed // parallel to Labels
	// refused are listed labels that did not even load (parse errors,
	// repeats, wrong DOI), kept for Explain.
	refused []listed
	index   map[string]int
	rank    rank
}

type listed struct {
	pos     int    // index in the entry's labels as written
	raw     string // as written
	verdict Verdict
	child   string
	reason  string // Authorize's reason, made once at load
}

var _ plugins.LabelPolicy = (*Policy)(nil)

// New checks cfg (every problem at once, as Problems) and builds the
// policy. d decides mode "auto" and checks mode "selinux"; nil uses
// HostDetector{}.
func New(cfg Config, d Detector) (*Policy, error) {
	if d == nil {
		d = HostDetector{}
	}
	p, ps := compile(cfg, d)
	if len(ps) > 0 {
		return nil, Problems(ps)
	}
	return p, nil
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,32}$`)

// compile builds as much of a policy as cfg allows and lists its problems.
// d nil skips the host check (Validate).
func compile(cfg Config, d Detector) (*Policy, []Problem) {
	var ps []Problem
	bad := func(path, format string, args ...any) {
		ps = append(ps, Problem{path, fmt.Sprintf(format, args...)})
	}
	p := &Policy{mode: cfg.Mode, byName: map[string]*entry{}}
	if p.mode == "" {
		p.mode = ModeAuto
	}
	active := d != nil && d.SELinuxActive()
	switch p.mode {
	case ModeAuto:
		if active {
			p.selMode, p.modeWhy = ModeSELinux, "auto: SELinux is active on this host"
		} else {
			p.selMode, p.modeWhy = ModeSimple, "auto: SELinux is not active on this host, so charon matches labels exactly"
		}
		if d == nil {
			p.modeWhy = "auto: decided on the host"
		}
	case ModeSimple:
		p.selMode, p.modeWhy = ModeSimple, "simple: charon negotiates exactly the listed labels"
	case ModeSELinux:
		p.selMode, p.modeWhy = ModeSELinux, "selinux: charon puts each entry's context on its trap policies; the kernel picks data labels"
		if d != nil && !active {
			bad(TOMLKey+".mode", `mode = "selinux" needs an active SELinux on this host (there is no /sys/fs/selinux/enforce) and charon refuses label_mode selinux without it; write mode = "simple" or "auto"`)
		}
	default:
		bad(TOMLKey+".mode", `mode %q is unknown; write "auto", "simple" or "selinux"`, cfg.Mode)
		p.selMode = ModeSimple
	}

	seenRule := map[Rule]int{}
	for i, a := range cfg.Allow {
		at := fmt.Sprintf("%s.allow[%d]", TOMLKey, i)
		okRule := true
		for _, f := range []struct{ key, v, eg string }{{"source", a.Source, "httpd_t"}, {"target", a.Target, "ipsec_spd_t"}} {
			switch {
			case f.v == "":
				bad(at+"."+f.key, "this [[labels.allow]] has no %s; write %s = %q (a type name)", f.key, f.key, f.eg)
				okRule = false
			case strings.Contains(f.v, ":"):
				bad(at+"."+f.key, "%s %q is a context, not a type; write the type alone, e.g. %q", f.key, f.v, typeOf(f.v, f.eg))
				okRule = false
			case !ValidIdent(f.v):
				bad(at+"."+f.key, "%s %q is not a type name; types use only letters, digits, '_' and '.'", f.key, f.v)
				okRule = false
			}
		}
		if !okRule {
			p.teBroken = true
			continue
		}
		r := Rule{a.Source, a.Target}
		if prev, dup := seenRule[r]; dup {
			bad(at, "%q is the same rule as labels.allow[%d]; remove one", r.String(), prev)
			continue
		}
		seenRule[r] = i
		p.rules = append(p.rules, r)
	}
	p.te = NewTE(p.rules...)

	for i, ec := range cfg.Entries {
		e, eps := p.compileEntry(i, ec)
		ps = append(ps, eps...)
		p.entries = append(p.entries, e)
		if e.Name != "" && nameRE.MatchString(e.Name) {
			if prev, dup := p.byName[e.Name]; dup {
				bad(e.path+".name", "entry name %q is used twice (also by %s); give each [[labels.entry]] its own name", e.Name, prev.path)
			} else {
				p.byName[e.Name] = e
			}
		}
	}

	// One selector, one policy; and equally specific overlapping entries
	// would make "the most specific entry" ambiguous.
	for j, b := range p.entries {
		if !b.ok {
			continue
		}
		for _, a := range p.entries[:j] {
			if !a.ok {
				continue
			}
			switch {
			case a.Selector == b.Selector:
				var diff []string
				if a.Required != b.Required {
					diff = append(diff, fmt.Sprintf("required = %t here, %t there", b.Required, a.Required))
				}
				if a.DOI != b.DOI {
					diff = append(diff, fmt.Sprintf("doi %s here, %s there", b.DOI, a.DOI))
				} else if a.Context != b.Context {
					diff = append(diff, fmt.Sprintf("context %s here, %s there", b.Context, a.Context))
				}
				if len(diff) > 0 {
					bad(b.path, "entry %q has the same selector as entry %q (%s) but contradicts it (%s); a selector has one policy: keep one entry", b.Name, a.Name, a.Selector, strings.Join(diff, "; "))
				} else {
					bad(b.path, "entry %q has the same selector as entry %q (%s); merge their labels into one entry", b.Name, a.Name, a.Selector)
				}
			case a.rank == b.rank && a.Selector.Overlaps(b.Selector):
				bad(b.path, "entry %q (%s) overlaps entry %q (%s) and is exactly as specific, so which one decides for their common traffic is ambiguous; make one narrower or split them so they do not overlap", b.Name, b.Selector, a.Name, a.Selector)
			}
		}
	}

	for _, e := range p.entries {
		if e.ok {
			p.sorted = append(p.sorted, e)
		}
	}
	slices.SortStableFunc(p.sorted, func(a, b *entry) int { return b.rank.compare(a.rank) })
	return p, ps
}

// typeOf guesses the type field of a context for a hint.
func typeOf(ctx, fallback string) string {
	if parts := strings.Split(ctx, ":"); len(parts) >= 3 && ValidIdent(parts[2]) {
		return parts[2]
	}
	return fallback
}

func (p *Policy) compileEntry(i int, ec EntryConfig) (*entry, []Problem) {
	var ps []Problem
	at := fmt.Sprintf("%s.entry[%d]", TOMLKey, i)
	bad := func(path, format string, args ...any) {
		ps = append(ps, Problem{path, fmt.Sprintf(format, args...)})
	}
	e := &entry{path: at, Entry: Entry{Name: ec.Name, Required: ec.Required}, index: map[string]int{}}
	ok := true
	switch {
	case ec.Name == "":
		bad(at, `this [[labels.entry]] has no name; add name = "..." (letters, digits, '-' or '_')`)
		ok = false
	case !nameRE.MatchString(ec.Name):
		bad(at+".name", "entry name %q is unusable: it names CHILD_SAs in charon, so it must be 1 to 32 letters, digits, '-' or '_'; write e.g. %q", ec.Name, sanitizeName(ec.Name))
		ok = false
	}

	var err error
	if e.Selector.Local, err = parseCIDR(ec.Local); err != nil {
		bad(at+".local", "local %v", err)
		ok = false
	}
	if e.Selector.Remote, err = parseCIDR(ec.Remote); err != nil {
		bad(at+".remote", "remote %v", err)
		ok = false
	}
	if e.Selector.Local.IsValid() && e.Selector.Remote.IsValid() && e.Selector.Local.Addr().Is4() != e.Selector.Remote.Addr().Is4() {
		bad(at+".remote", "local %s and remote %s are of different address families; write both IPv4 or both IPv6 (one entry per family)", ec.Local, ec.Remote)
		ok = false
	}
	protoOK := true
	if e.Selector.Protocol, err = parseProtocol(ec.Protocol); err != nil {
		bad(at+".protocol", "%v", err)
		ok, protoOK = false, false
	}
	for _, pp := range []struct {
		key, v string
		dst    *PortRange
	}{{"local_ports", ec.LocalPorts, &e.Selector.LocalPorts}, {"remote_ports", ec.RemotePorts, &e.Selector.RemotePorts}} {
		if *pp.dst, err = parsePorts(pp.v); err != nil {
			bad(at+"."+pp.key, "%v", err)
			ok = false
			continue
		}
		switch {
		case pp.dst.Any() || !protoOK:
		case e.Selector.Protocol == 0:
			bad(at+"."+pp.key, `ports need a protocol; add protocol = "tcp" (or "udp", "sctp") to this entry`)
			ok = false
		case !portsAllowed(e.Selector.Protocol):
			bad(at+"."+pp.key, `ports need protocol "tcp", "udp" or "sctp", not %q; remove %s or change the protocol`, ec.Protocol, pp.key)
			ok = false
		}
	}
	e.rank = e.Selector.rank()

	switch ec.DOI {
	case "", "selinux":
		e.DOI = DOISELinux
	case "smack":
		e.DOI = DOISmack
	case "opaque":
		e.DOI = DOIOpaque
	default:
		bad(at+".doi", `doi %q is unknown; write "selinux", "smack" or "opaque"`, ec.DOI)
		e.ok = false
		return e, ps
	}
	e.LabelMode = ModeSimple
	if e.DOI == DOISELinux {
		e.LabelMode = p.selMode
	}

	ctxOK := true
	if e.DOI == DOISELinux {
		switch c, err := ParseSELinux(ec.Context); {
		case ec.Context == "":
			bad(at+".context", `this selinux entry has no context; write the entry's own label, which TE and MLS check data labels against, e.g. context = "system_u:object_r:ipsec_spd_t:s0-s15:c0.c1023"`)
			ctxOK = false
		case err != nil:
			bad(at+".context", "context %v", err)
			ctxOK = false
		default:
			e.se, e.Context = c, c.Context()
		}
	} else if ec.Context != "" {
		bad(at+".context", "%s entries do not use context: they admit exactly the labels in labels; remove context", e.DOI)
	}

	if ec.Required && len(ec.Labels) == 0 {
		bad(at+".required", "required = true but the entry lists no labels, so no SA could ever carry its traffic; add labels = [...] or write required = false")
	}

	childNames := map[string]int{}
	for j, raw := range ec.Labels {
		lp := fmt.Sprintf("%s.labels[%d]", at, j)
		c, err := ParseContext(e.DOI, raw)
		refuse := func(d Denial, format string, args ...any) {
			msg := fmt.Sprintf(format, args...)
			bad(lp, "%s", msg)
			e.refused = append(e.refused, listed{pos: j, raw: raw, verdict: Verdict{Denial: d, Why: msg}})
		}
		if err != nil {
			refuse(DenyUnparseable, "label %v%s", err, doiHint(e.DOI, raw))
			continue
		}
		if e.DOI == DOISmack {
			if se, err := ParseSELinux(raw); err == nil && se.MLS {
				refuse(DenyUnparseable, "label %s is an SELinux context but this entry has doi = \"smack\"; write doi = \"selinux\" (with a context), or list Smack labels", raw)
				continue
			}
		}
		if prev, dup := e.index[c.String()]; dup {
			refuse(DenyNotListed, "label %s is listed twice (also as labels[%d]); remove one", c, e.listed[prev].pos)
			continue
		}
		l := listed{pos: j, raw: raw, verdict: Verdict{Denial: Permitted, Why: "listed"}}
		if e.DOI == DOISELinux {
			if !ctxOK {
				l.verdict = Verdict{Denial: DenyUnparseable, Why: "the entry's context is unusable"}
			} else {
				se, _ := c.SELinux()
				l.verdict = CheckSELinux(p.te, se, e.se)
				if !l.verdict.Allowed() && !(p.teBroken && l.verdict.Denial == DenyNoRule) {
					bad(lp, "entry %q lists label %s but refuses it (%s): %s; the policy contradicts itself: %s, or remove the label", e.Name, c, l.verdict.Denial, l.verdict.Why, l.verdict.Fix)
				}
			}
		}
		l.child = childName(e.Name, c)
		if prev, clash := childNames[l.child]; clash {
			// a 32-bit hash collision: the name feeds the hash, so renaming helps
			bad(lp, "labels[%d] and labels[%d] would both be CHILD_SA %s; rename the entry", prev, j, l.child)
		}
		childNames[l.child] = j
		e.index[c.String()] = len(e.Labels)
		if raw != c.String() {
			e.index[raw] = len(e.Labels)
		}
		e.Labels = append(e.Labels, c)
		e.listed = append(e.listed, l)
	}

	for i := range e.listed {
		e.listed[i].reason = reason(e, e.Labels[i].String(), e.listed[i].verdict, true)
	}
	e.ok = ok && ctxOK
	e.Children = p.children(e)
	return e, ps
}

// doiHint suggests another DOI when a label obviously belongs to one.
func doiHint(doi DOI, raw string) string {
	if doi == DOISELinux && !strings.Contains(raw, ":") {
		if _, err := ParseSmack(raw); err == nil {
			return `; it looks like a Smack label: if it is one, write doi = "smack" on this entry`
		}
	}
	return ""
}

func sanitizeName(s string) string {
	b := []byte(s)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			b[i] = '-'
		}
	}
	if len(b) > 32 {
		b = b[:32]
	}
	if len(b) == 0 {
		return "web"
	}
	return string(b)
}

// childName is stable across reloads: it depends on the entry's name and
// the label's meaning only, not on the label's position or spelling.
func childName(entry string, c Context) string {
	h := sha256.Sum256([]byte(entry + "\x00" + string(c.DOI()) + "\x00" + c.String()))
	return entry + "-l" + hex.EncodeToString(h[:4])
}

func (p *Policy) children(e *entry) []Child {
	if e.DOI == DOISELinux && e.LabelMode == ModeSELinux {
		if e.Context.IsZero() {
			return nil
		}
		lts, rts := e.Selector.TS()
		return []Child{{Name: e.Name + "-sel", Label: e.Context.String(), LabelMode: ModeSELinux, Generic: true, LocalTS: lts, RemoteTS: rts}}
	}
	var cs []Child
	lts, rts := e.Selector.TS()
	for i, l := range e.listed {
		if l.verdict.Allowed() {
			cs = append(cs, Child{Name: l.child, Label: e.Labels[i].String(), LabelMode: ModeSimple, LocalTS: lts, RemoteTS: rts})
		}
	}
	return cs
}

// Mode is the configured mode ("auto", "simple" or "selinux") and the
// label mode SELinux entries get ("simple" or "selinux").
func (p *Policy) Mode() (configured, effective string) { return p.mode, p.selMode }

// Entries lists the entries in config order.
func (p *Policy) Entries() []Entry {
	out := make([]Entry, len(p.entries))
	for i, e := range p.entries {
		out[i] = e.Entry
		out[i].Labels = slices.Clone(e.Labels)
		out[i].Children = slices.Clone(e.Children)
	}
	return out
}

// Children lists the labeled CHILD_SA configs obold loads for entry name.
func (p *Policy) Children(ctx context.Context, name string) ([]Child, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("labels: children of %q: %w", name, err)
	}
	e, ok := p.byName[name]
	if !ok {
		return nil, fmt.Errorf("labels: no entry named %q; the entries are %s", name, p.names())
	}
	return slices.Clone(e.Children), nil
}

func (p *Policy) names() string {
	if len(p.entries) == 0 {
		return "none ([labels] has no [[labels.entry]])"
	}
	n := make([]string, len(p.entries))
	for i, e := range p.entries {
		n[i] = strconv.Quote(e.Name)
	}
	return strings.Join(n, ", ")
}

// Authorize decides whether r.Label may use an SA for r.Flow. The most
// specific entry containing the flow decides; an entry that is more
// specific still and takes in part of the flow must agree too, so a wide
// flow cannot carry traffic a narrower entry refuses. A flow no entry
// touches is allowed unlabeled. One trailing NUL (as charon reports labels)
// is ignored. Refusals are decisions, not errors; the error is for a
// cancelled ctx or a flow without prefixes.
func (p *Policy) Authorize(ctx context.Context, r plugins.LabelRequest) (plugins.LabelDecision, error) {
	if err := ctx.Err(); err != nil {
		return plugins.LabelDecision{}, fmt.Errorf("labels: authorize: %w", err)
	}
	fs, err := FlowSelector(r.Flow)
	if err != nil {
		return plugins.LabelDecision{}, fmt.Errorf("labels: authorize: %w", err)
	}
	label := strings.TrimSuffix(r.Label, "\x00")
	var win *entry
	var partial []*entry
	for _, e := range p.sorted {
		if !prefixOverlaps(e.Selector.Local, fs.Local) {
			continue // most entries fail here: skip the full checks
		}
		if e.Selector.Contains(fs) {
			win = e
			break
		}
		if e.Selector.Overlaps(fs) {
			partial = append(partial, e)
		}
	}
	var d plugins.LabelDecision
	if win == nil {
		d = plugins.LabelDecision{Allowed: true, LabelMode: p.selMode, Reason: "no label policy covers this flow"}
	} else {
		d = p.decide(win, label)
	}
	for _, e := range partial {
		pd := p.decide(e, label)
		d.Required = d.Required || pd.Required
		if !pd.Allowed && d.Allowed {
			d.Allowed = false
			d.Reason = pd.Reason + " (the flow " + fs.String() + " is wider than entry " + strconv.Quote(e.Name) +
				"'s selector " + e.Selector.String() + " and would carry its traffic; narrow the flow)"
		}
	}
	return d, nil
}

// decide is one entry's verdict on label.
func (p *Policy) decide(e *entry, label string) plugins.LabelDecision {
	d := plugins.LabelDecision{Entry: e.Name, Required: e.Required, LabelMode: e.LabelMode}
	name := strconv.Quote(e.Name)
	if label == "" {
		if e.Required {
			d.Reason = "entry " + name + " requires labeled SAs and this flow carries no label"
		} else {
			d.Allowed, d.Reason = true, "entry "+name+" does not require labels; unlabeled traffic may use it"
		}
		return d
	}
	if i, ok := e.index[label]; ok {
		l := &e.listed[i]
		d.Allowed, d.Reason = l.verdict.Allowed(), l.reason
		return d
	}
	var v Verdict
	shown := quote(label)
	switch e.DOI {
	case DOISELinux:
		se, err := ParseSELinux(label)
		if err != nil {
			v = Verdict{Denial: DenyUnparseable, Why: "it is not an SELinux context: " + err.Error()}
			break
		}
		shown = se.String()
		if i, ok := e.index[shown]; ok { // a listed label, spelled differently
			l := &e.listed[i]
			d.Allowed, d.Reason = l.verdict.Allowed(), l.reason
			return d
		}
		v = CheckSELinux(p.te, se, e.se)
	default:
		if e.DOI == DOISmack {
			if _, err := ParseSmack(label); err == nil {
				shown = label
			}
		}
		v = Verdict{Denial: DenyNotListed, Why: "it is not one of the entry's " + strconv.Itoa(len(e.Labels)) + " " + string(e.DOI) + " labels"}
	}
	d.Allowed = v.Allowed()
	d.Reason = reason(e, shown, v, false)
	return d
}

func reason(e *entry, label string, v Verdict, isListed bool) string {
	name := strconv.Quote(e.Name)
	if !v.Allowed() {
		return "label " + label + " may not use entry " + name + ": " + v.Why
	}
	if e.DOI != DOISELinux {
		return "label " + label + " is one of entry " + name + "'s labels"
	}
	s := "label " + label + " may use entry " + name + ": " + v.Why
	if !isListed && e.LabelMode == ModeSimple {
		s += "; it is not in the entry's labels, so obold loads no CHILD_SA for it (add it to labels)"
	}
	return s
}

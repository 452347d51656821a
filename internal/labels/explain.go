package labels

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Report explains a policy for `obolctl labels check FILE`: per entry,
// who may use it and why, and which listed labels are refused and why.
type Report struct {
	Mode      string // as configured: "auto", "simple" or "selinux"
	LabelMode string // what SELinux entries give charon: "simple" or "selinux"
	ModeWhy   string
	Rules     []string // "allow S T:association polmatch"
	Entries   []EntryReport
	Problems  []Problem // empty for a loadable policy
}

// EntryReport explains one entry.
type EntryReport struct {
	Name              string
	Selector          string // for people
	LocalTS, RemoteTS string // swanctl syntax
	DOI               DOI
	Context           string // SELinux entries: the entry's own label
	Required          bool
	LabelMode         string
	UsableBy          string // who may use the entry, in words
	Unlabeled         string // what happens to unlabeled traffic
	Labels            []LabelReport
	Children          []Child
	Loaded            bool // false: a problem keeps it out of matching
}

// LabelReport is one listed label's verdict.
type LabelReport struct {
	Label   string
	Allowed bool
	Denial  Denial
	Why     string
	Child   string // its CHILD_SA in simple mode
}

// Explain reports on a loaded policy.
func (p *Policy) Explain() Report { return p.report(nil) }

// Explain reports on cfg whether or not it loads, with every problem; d as
// for New (nil: HostDetector{}).
func Explain(cfg Config, d Detector) Report {
	if d == nil {
		d = HostDetector{}
	}
	p, ps := compile(cfg, d)
	return p.report(ps)
}

func (p *Policy) report(ps []Problem) Report {
	r := Report{Mode: p.mode, LabelMode: p.selMode, ModeWhy: p.modeWhy, Problems: ps}
	for _, rule := range p.rules {
		r.Rules = append(r.Rules, rule.String())
	}
	for _, e := range p.entries {
		er := EntryReport{
			Name: e.Name, Selector: e.Selector.String(), DOI: e.DOI, Required: e.Required,
			LabelMode: e.LabelMode, Loaded: e.ok, Children: e.Children,
		}
		if e.ok {
			er.LocalTS, er.RemoteTS = e.Selector.TS()
		}
		if !e.Context.IsZero() {
			er.Context = e.Context.String()
		}
		er.UsableBy = p.usableBy(e)
		if e.Required {
			er.Unlabeled = "refused: the entry requires labeled SAs"
		} else {
			er.Unlabeled = "allowed: the entry does not require labels"
		}
		var pos []int // config order of er.Labels
		for i, l := range e.listed {
			pos = append(pos, l.pos)
			lr := LabelReport{Label: e.Labels[i].String(), Allowed: l.verdict.Allowed(), Denial: l.verdict.Denial, Why: l.verdict.Why}
			if e.DOI != DOISELinux && lr.Allowed {
				lr.Why = "listed"
				if sp := e.Labels[i].SmackSpecial(); sp != "" {
					lr.Why += " (Smack's " + sp + " label)"
				}
			}
			if lr.Allowed && e.LabelMode == ModeSimple {
				lr.Child = l.child
			}
			er.Labels = append(er.Labels, lr)
		}
		for _, l := range e.refused {
			pos = append(pos, l.pos)
			er.Labels = append(er.Labels, LabelReport{Label: l.raw, Denial: l.verdict.Denial, Why: l.verdict.Why})
		}
		// show labels as the config lists them
		idx := make([]int, len(pos))
		for i := range idx {
			idx[i] = i
		}
		sort.SliceStable(idx, func(a, b int) bool { return pos[idx[a]] < pos[idx[b]] })
		sorted := make([]LabelReport, len(idx))
		for i, k := range idx {
			sorted[i] = er.Labels[k]
		}
		er.Labels = sorted
		r.Entries = append(r.Entries, er)
	}
	return r
}

func (p *Policy) usableBy(e *entry) string {
	if e.DOI != DOISELinux {
		return fmt.Sprintf("exactly the listed %s labels (%d), compared byte for byte", e.DOI, len(e.Labels))
	}
	if e.Context.IsZero() {
		return "nobody: the entry has no usable context"
	}
	srcs := p.te.Sources(e.se.Type)
	if len(srcs) == 0 {
		return "nobody: no [[labels.allow]] rule has target " + strconv.Quote(e.se.Type)
	}
	var types []string
	for _, s := range srcs {
		types = append(types, s+" ("+Rule{s, e.se.Type}.String()+")")
	}
	s := "types " + strings.Join(types, ", ")
	if e.se.MLS {
		s += "; at ranges within " + e.se.Range.String()
	} else {
		s += "; contexts without a level only"
	}
	return s
}

// String is the report as obolctl prints it.
func (r Report) String() string {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("mode %s: SELinux entries use label_mode %s (%s)", r.Mode, r.LabelMode, r.ModeWhy)
	if len(r.Rules) == 0 {
		w("no TE rules")
	} else {
		w("TE rules:")
		for _, rule := range r.Rules {
			w("  %s", rule)
		}
	}
	if len(r.Entries) == 0 {
		w("no entries: no flow is covered, every flow may go unlabeled")
	}
	for _, e := range r.Entries {
		w("")
		w("entry %q: %s", e.Name, e.Selector)
		if !e.Loaded {
			w("  NOT LOADED: see the problems below")
		}
		w("  doi %s, label_mode %s", e.DOI, e.LabelMode)
		if e.Context != "" {
			w("  context %s (the entry's own label; never carried by an SA)", e.Context)
		}
		w("  usable by: %s", e.UsableBy)
		w("  unlabeled traffic: %s", e.Unlabeled)
		for _, l := range e.Labels {
			verdict := "ok     "
			if !l.Allowed {
				verdict = "REFUSED"
			}
			line := "  " + verdict + " " + l.Label
			if l.Child != "" {
				line += "  -> child " + l.Child
			}
			w("%s", line)
			w("          %s", l.Why)
		}
		for _, c := range e.Children {
			if c.Generic {
				w("  child %s: label %s, label_mode selinux (generic context on trap policies; the kernel picks the data label)", c.Name, c.Label)
			}
		}
	}
	if len(r.Problems) > 0 {
		w("")
		w("problems (%d):", len(r.Problems))
		for _, p := range r.Problems {
			w("  %s", p)
		}
	}
	return b.String()
}

package labels

import (
	"math/bits"
	"strconv"
	"strings"
)

// The MLS/MCS model obol checks against: the sensitivities and categories of
// the reference policy's MLS build. Real SELinux names them in the loaded
// policy; obol does not read a policy, so it fixes these names.
const (
	MaxSensitivity = 15   // s0 .. s15
	MaxCategory    = 1023 // c0 .. c1023
)

// CatSet is a set of MLS categories c0..c1023 as a bitset. The zero value is
// the empty set; CatSet is comparable with ==.
type CatSet [(MaxCategory + 1) / 64]uint64

// Add puts category c in the set; c outside 0..MaxCategory is ignored.
func (s *CatSet) Add(c int) {
	if c >= 0 && c <= MaxCategory {
		s[c/64] |= 1 << (c % 64)
	}
}

// AddRange puts categories lo..hi (inclusive) in the set.
func (s *CatSet) AddRange(lo, hi int) {
	for c := max(lo, 0); c <= hi && c <= MaxCategory; c++ {
		s.Add(c)
	}
}

// Has says whether category c is in the set.
func (s CatSet) Has(c int) bool {
	return c >= 0 && c <= MaxCategory && s[c/64]&(1<<(c%64)) != 0
}

// Len is the number of categories in the set.
func (s CatSet) Len() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

// Superset says whether every category of o is in s.
func (s CatSet) Superset(o CatSet) bool {
	for i := range s {
		if o[i]&^s[i] != 0 {
			return false
		}
	}
	return true
}

// Union is s ∪ o.
func (s CatSet) Union(o CatSet) CatSet {
	for i := range s {
		s[i] |= o[i]
	}
	return s
}

// Minus is s \ o.
func (s CatSet) Minus(o CatSet) CatSet {
	for i := range s {
		s[i] &^= o[i]
	}
	return s
}

// String prints the set canonically, as the kernel does: ascending, runs of
// three or more as cA.cB, a run of two as cA,cB. The empty set is "".
func (s CatSet) String() string {
	var b strings.Builder
	for c := 0; c <= MaxCategory; {
		if !s.Has(c) {
			// skip whole empty words quickly
			if c%64 == 0 && s[c/64] == 0 {
				c += 64
				continue
			}
			c++
			continue
		}
		end := c
		for end+1 <= MaxCategory && s.Has(end+1) {
			end++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString("c" + strconv.Itoa(c))
		switch {
		case end == c+1:
			b.WriteString(",c" + strconv.Itoa(end))
		case end > c+1:
			b.WriteString(".c" + strconv.Itoa(end))
		}
		c = end + 1
	}
	return b.String()
}

// Level is an MLS security level: a sensitivity and a set of categories.
type Level struct {
	Sens uint8 // 0..MaxSensitivity
	Cats CatSet
}

// Dominates says l ≥ o: l's sensitivity is at least o's and l has every
// category o has. Every level dominates itself.
func (l Level) Dominates(o Level) bool {
	return l.Sens >= o.Sens && l.Cats.Superset(o.Cats)
}

// Equal says l and o are the same level.
func (l Level) Equal(o Level) bool { return l == o }

// Incomparable says neither level dominates the other.
func (l Level) Incomparable(o Level) bool { return !l.Dominates(o) && !o.Dominates(l) }

// String prints "sN" or "sN:cats" canonically.
func (l Level) String() string {
	s := "s" + strconv.Itoa(int(l.Sens))
	if c := l.Cats.String(); c != "" {
		s += ":" + c
	}
	return s
}

// Range is an MLS range low-high; a valid range has High dominating Low.
// A single level is the range whose Low and High are equal.
type Range struct {
	Low, High Level
}

// Within says r lies inside o: r's low dominates o's low and o's high
// dominates r's high. This is the MLS half of association:polmatch.
func (r Range) Within(o Range) bool {
	return r.Low.Dominates(o.Low) && o.High.Dominates(r.High)
}

// Contains says level l lies in r (low ≤ l ≤ high).
func (r Range) Contains(l Level) bool {
	return l.Dominates(r.Low) && r.High.Dominates(l)
}

// Single says the range is one level.
func (r Range) Single() bool { return r.Low == r.High }

// String prints "low" when the range is one level, else "low-high".
func (r Range) String() string {
	if r.Single() {
		return r.Low.String()
	}
	return r.Low.String() + "-" + r.High.String()
}

// ParseLevel parses "sN" or "sN:cats" (cats: "c1,c3.c5"). It is strict:
// sensitivities s0..s15, categories c0..c1023, no leading zeros, category
// items ascending without repeats or overlaps, ranges cA.cB with A < B.
func ParseLevel(s string) (Level, error) {
	l, pe := parseLevel(s, 0)
	if pe != nil {
		return Level{}, pe.at(DOISELinux, s)
	}
	return l, nil
}

// ParseRange parses "level" or "low-high" (e.g. "s0-s3:c0.c127"); high
// must dominate low.
func ParseRange(s string) (Range, error) {
	r, pe := parseRange(s, 0)
	if pe != nil {
		return Range{}, pe.at(DOISELinux, s)
	}
	return r, nil
}

func parseRange(s string, off int) (Range, *perr) {
	if s == "" {
		return Range{}, &perr{off, "the level is empty; write a level such as s0, s0:c1 or a range such as s0-s3:c0.c127"}
	}
	lowS, highS, isRange := strings.Cut(s, "-")
	if isRange {
		if i := strings.IndexByte(highS, '-'); i >= 0 {
			return Range{}, &perr{off + len(lowS) + 1 + i, "a range has one '-'; write low-high, e.g. s0-s3:c0.c127"}
		}
	}
	low, pe := parseLevel(lowS, off)
	if pe != nil {
		return Range{}, pe
	}
	if !isRange {
		return Range{Low: low, High: low}, nil
	}
	hiOff := off + len(lowS) + 1
	high, pe := parseLevel(highS, hiOff)
	if pe != nil {
		return Range{}, pe
	}
	if !high.Dominates(low) {
		if low.Dominates(high) {
			return Range{}, &perr{hiOff, "high level " + high.String() + " is below low level " + low.String() +
				"; write the low level first: " + Range{high, low}.String()}
		}
		fixed := Level{Sens: max(low.Sens, high.Sens), Cats: high.Cats.Union(low.Cats)}
		return Range{}, &perr{hiOff, "high level " + high.String() + " does not dominate low level " + low.String() +
			" (" + lacks(low, high) + "); a high level needs every category of the low one and at least its sensitivity; write " +
			Range{low, fixed}.String()}
	}
	return Range{Low: low, High: high}, nil
}

// lacks says why b does not dominate a, for messages.
func lacks(a, b Level) string {
	var why []string
	if a.Sens > b.Sens {
		why = append(why, "s"+strconv.Itoa(int(b.Sens))+" is below s"+strconv.Itoa(int(a.Sens)))
	}
	if m := a.Cats.Minus(b.Cats); m.Len() > 0 {
		why = append(why, "it lacks "+m.String())
	}
	return strings.Join(why, " and ")
}

func parseLevel(s string, off int) (Level, *perr) {
	if s == "" {
		return Level{}, &perr{off, "empty level; write a sensitivity such as s0, optionally with categories: s0:c1,c3"}
	}
	sensS, catS, hasCats := strings.Cut(s, ":")
	sens, pe := parseSens(sensS, off)
	if pe != nil {
		return Level{}, pe
	}
	l := Level{Sens: sens}
	if hasCats {
		cats, pe := parseCats(catS, off+len(sensS)+1)
		if pe != nil {
			return Level{}, pe
		}
		l.Cats = cats
	}
	return l, nil
}

// parseNum reads the decimal after a one-letter prefix ("s12", "c5") and
// returns -1 when the text is not exactly prefix + digits.
func parseNum(s string, prefix byte) (n int, leadingZero bool) {
	if len(s) < 2 || s[0] != prefix {
		return -1, false
	}
	d := s[1:]
	if len(d) > 5 { // far past any valid value; also avoids overflow
		for i := 0; i < len(d); i++ {
			if d[i] < '0' || d[i] > '9' {
				return -1, false
			}
		}
		return 1 << 30, false
	}
	for i := 0; i < len(d); i++ {
		if d[i] < '0' || d[i] > '9' {
			return -1, false
		}
		n = n*10 + int(d[i]-'0')
	}
	return n, len(d) > 1 && d[0] == '0'
}

func parseSens(s string, off int) (uint8, *perr) {
	n, lz := parseNum(s, 's')
	switch {
	case n < 0 && s != "" && s[0] == 'c':
		return 0, &perr{off, "the level starts with category " + quote(s) + "; write the sensitivity first, e.g. s0:" + s}
	case n < 0:
		return 0, &perr{off, "sensitivity " + quote(s) + " is not s0 to s" + strconv.Itoa(MaxSensitivity) + "; write e.g. s0"}
	case lz:
		return 0, &perr{off, "sensitivity " + s + " has a leading zero; write s" + strconv.Itoa(n)}
	case n > MaxSensitivity:
		return 0, &perr{off, "sensitivity " + s + " is out of range; write s0 to s" + strconv.Itoa(MaxSensitivity)}
	}
	return uint8(n), nil
}

func parseCat(s string, off int) (int, *perr) {
	n, lz := parseNum(s, 'c')
	switch {
	case n < 0:
		return 0, &perr{off, "category " + quote(s) + " is not c0 to c" + strconv.Itoa(MaxCategory) + "; write e.g. c0, c0,c5 or c0.c127"}
	case lz:
		return 0, &perr{off, "category " + s + " has a leading zero; write c" + strconv.Itoa(n)}
	case n > MaxCategory:
		return 0, &perr{off, "category " + s + " is out of range; write c0 to c" + strconv.Itoa(MaxCategory)}
	}
	return n, nil
}

// parseCats reads "c1,c3.c5". Syntax errors come first, item by item;
// ordering errors (repeats, overlaps, descending items) come after, with the
// whole set written canonically as the fix.
func parseCats(s string, off int) (CatSet, *perr) {
	if s == "" {
		return CatSet{}, &perr{off, "no categories after ':'; write categories such as c0,c5 or c0.c127, or drop the ':'"}
	}
	type item struct{ lo, hi, off int }
	var items []item
	var set CatSet
	pos := off
	for it := range strings.SplitSeq(s, ",") {
		if it == "" {
			return CatSet{}, &perr{pos, "empty category (two commas, or a comma at an end); write categories separated by single commas, e.g. c0,c5"}
		}
		loS, hiS, isRange := strings.Cut(it, ".")
		lo, pe := parseCat(loS, pos)
		if pe != nil {
			return CatSet{}, pe
		}
		hi := lo
		if isRange {
			hi, pe = parseCat(hiS, pos+len(loS)+1)
			if pe != nil {
				return CatSet{}, pe
			}
			switch {
			case hi < lo:
				return CatSet{}, &perr{pos, "category range " + it + " runs backwards; write " + catRange(hi, lo)}
			case hi == lo:
				return CatSet{}, &perr{pos, "category range " + it + " names one category; write " + loS}
			}
		}
		items = append(items, item{lo, hi, pos})
		set.AddRange(lo, hi)
		pos += len(it) + 1
	}
	last := -1
	var seen CatSet
	for _, it := range items {
		if it.lo <= last {
			what := "category " + catRange(it.lo, it.hi) + " comes after a higher category"
			for c := it.lo; c <= it.hi; c++ {
				if !seen.Has(c) {
					continue
				}
				if it.lo == it.hi {
					what = "category c" + strconv.Itoa(c) + " is listed twice"
				} else {
					what = "category range " + catRange(it.lo, it.hi) + " overlaps an earlier item at c" + strconv.Itoa(c)
				}
				break
			}
			return CatSet{}, &perr{it.off, what +
				"; list categories once, in ascending order: write " + set.String()}
		}
		seen.AddRange(it.lo, it.hi)
		last = it.hi
	}
	return set, nil
}

func catRange(lo, hi int) string {
	if lo == hi {
		return "c" + strconv.Itoa(lo)
	}
	return "c" + strconv.Itoa(lo) + ".c" + strconv.Itoa(hi)
}

package labels

import (
	"errors"
	"strings"
	"testing"
)

func lvl(t testing.TB, s string) Level {
	t.Helper()
	l, err := ParseLevel(s)
	if err != nil {
		t.Fatalf("ParseLevel(%q): %v", s, err)
	}
	return l
}

func rng(t testing.TB, s string) Range {
	t.Helper()
	r, err := ParseRange(s)
	if err != nil {
		t.Fatalf("ParseRange(%q): %v", s, err)
	}
	return r
}

func TestDominance(t *testing.T) {
	tests := []struct {
		a, b string
		// rel is a's relation to b: "eq", "dom" (a strictly dominates b),
		// "domby" (b strictly dominates a) or "incomp".
		rel string
	}{
		{"s0", "s0", "eq"},
		{"s3", "s3", "eq"},
		{"s1", "s0", "dom"},
		{"s0", "s1", "domby"},
		{"s15", "s0", "dom"},
		{"s15:c0.c1023", "s15", "dom"},
		{"s15:c0.c1023", "s0:c0.c1023", "dom"},
		{"s15:c0.c1023", "s15:c0.c1023", "eq"},
		{"s15:c1023", "s15:c1022", "incomp"},
		{"s0:c1023", "s0", "dom"},
		{"s0:c0", "s0:c0", "eq"},
		{"s0:c0,c1", "s0:c0", "dom"},
		{"s0:c1", "s0:c0", "incomp"},
		{"s1", "s0:c1", "incomp"}, // higher sensitivity, fewer categories
		{"s0:c1", "s1", "incomp"},
		{"s2:c1", "s1:c1", "dom"},
		{"s2:c0.c5", "s2:c1,c3.c5", "dom"},
		{"s2:c1,c3.c5", "s2:c0.c5", "domby"},
		{"s2:c0.c5", "s2:c0,c1,c2,c3,c4,c5", "eq"}, // same set, other spelling
		{"s3:c0.c127", "s3:c64.c127", "dom"},       // crosses a word boundary
		{"s3:c63,c64", "s3:c63", "dom"},            // word edge
		{"s3:c0.c1023", "s3:c512", "dom"},          // last word
		{"s5", "s3:c0.c127", "incomp"},             // the "above" case of the brief: incomparable by the book
		{"s3:c0.c200", "s3:c0.c127", "dom"},
		{"s2:c200", "s3:c0.c127", "incomp"},
	}
	for _, tc := range tests {
		a, b := lvl(t, tc.a), lvl(t, tc.b)
		got := ""
		switch {
		case a.Equal(b):
			got = "eq"
		case a.Dominates(b) && !b.Dominates(a):
			got = "dom"
		case b.Dominates(a) && !a.Dominates(b):
			got = "domby"
		case a.Incomparable(b):
			got = "incomp"
		}
		if got != tc.rel {
			t.Errorf("%s vs %s: got %s, want %s", tc.a, tc.b, got, tc.rel)
		}
		// consistency of the three predicates
		if a.Equal(b) != (a.Dominates(b) && b.Dominates(a)) {
			t.Errorf("%s vs %s: Equal disagrees with mutual dominance", tc.a, tc.b)
		}
		if a.Incomparable(b) != b.Incomparable(a) {
			t.Errorf("%s vs %s: Incomparable is not symmetric", tc.a, tc.b)
		}
	}
}

func TestRangeWithin(t *testing.T) {
	tests := []struct {
		r, o   string
		within bool
	}{
		{"s0", "s0", true},
		{"s1", "s0-s3:c0.c127", true},
		{"s2:c1", "s0-s3:c0.c127", true},
		{"s3:c0.c127", "s0-s3:c0.c127", true},
		{"s0-s3:c0.c127", "s0-s3:c0.c127", true},
		{"s1-s2", "s0-s3", true},
		{"s4", "s0-s3:c0.c127", false},      // above high (sensitivity)
		{"s3:c128", "s0-s3:c0.c127", false}, // category outside high
		{"s0", "s1-s3", false},              // below low
		{"s1", "s1:c1-s3:c1", false},        // low lacks c1: incomparable with low
		{"s1:c1", "s1:c1-s3:c1", true},      // exact low
		{"s0-s4", "s0-s3", false},           // high sticks out
		{"s0-s15:c0.c1023", "s0-s15:c0.c1023", true},
		{"s15:c1023", "s0-s15:c0.c1023", true},
		{"s15:c0.c1023", "s0-s15:c0.c1022", false},
	}
	for _, tc := range tests {
		r, o := rng(t, tc.r), rng(t, tc.o)
		if got := r.Within(o); got != tc.within {
			t.Errorf("%s within %s = %v, want %v", tc.r, tc.o, got, tc.within)
		}
		if r.Single() {
			if got := o.Contains(r.Low); got != tc.within {
				t.Errorf("%s contains %s = %v, want %v", tc.o, tc.r, got, tc.within)
			}
		}
	}
}

func TestLevelCanonical(t *testing.T) {
	tests := []struct{ in, want string }{
		{"s0", "s0"},
		{"s15", "s15"},
		{"s0:c0", "s0:c0"},
		{"s0:c0,c1", "s0:c0,c1"},
		{"s0:c0.c1", "s0:c0,c1"}, // the kernel prints a run of two with a comma
		{"s0:c0,c1,c2", "s0:c0.c2"},
		{"s0:c0.c2,c3.c5", "s0:c0.c5"},
		{"s0:c1,c3.c5", "s0:c1,c3.c5"},
		{"s0:c0.c1023", "s0:c0.c1023"},
		{"s0:c1022,c1023", "s0:c1022,c1023"},
		{"s0:c63,c64,c65", "s0:c63.c65"},
		{"s0:c0,c2,c4", "s0:c0,c2,c4"},
	}
	for _, tc := range tests {
		if got := lvl(t, tc.in).String(); got != tc.want {
			t.Errorf("%s: String() = %s, want %s", tc.in, got, tc.want)
		}
	}
	rtests := []struct{ in, want string }{
		{"s0-s3:c0.c127", "s0-s3:c0.c127"},
		{"s0:c1,c3.c5", "s0:c1,c3.c5"},
		{"s2-s15:c0.c1023", "s2-s15:c0.c1023"},
		{"s1-s1", "s1"},
		{"s0:c1-s0:c1", "s0:c1"},
	}
	for _, tc := range rtests {
		if got := rng(t, tc.in).String(); got != tc.want {
			t.Errorf("%s: String() = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestRangeErrors: every malformed level or range is refused, saying where
// and what to write.
func TestRangeErrors(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", `"" at byte 0: the level is empty; write a level such as s0`},
		{"s0-s3:c5.c2", `"s0-s3:c5.c2" at byte 6: category range c5.c2 runs backwards; write c2.c5`},
		{"s0:c5.c5", `at byte 3: category range c5.c5 names one category; write c5`},
		{"s16", `"s16" at byte 0: sensitivity s16 is out of range; write s0 to s15`},
		{"s99999999999", `sensitivity s99999999999 is out of range`},
		{"s01", `sensitivity s01 has a leading zero; write s1`},
		{"s", `sensitivity "s" is not s0 to s15`},
		{"x0", `sensitivity "x0" is not s0 to s15`},
		{"S0", `sensitivity "S0" is not s0 to s15`},
		{"c1", `the level starts with category "c1"; write the sensitivity first, e.g. s0:c1`},
		{"s0:c1024", `at byte 3: category c1024 is out of range; write c0 to c1023`},
		{"s0:c01", `category c01 has a leading zero; write c1`},
		{"s0:c", `category "c" is not c0 to c1023`},
		{"s0:d1", `category "d1" is not c0 to c1023`},
		{"s0:c1.", `at byte 6: category "" is not c0 to c1023`},
		{"s0:c0.c1024", `at byte 6: category c1024 is out of range`},
		{"s0:", `at byte 3: no categories after ':'`},
		{"s0:c1,,c2", `at byte 6: empty category`},
		{"s0:c1,", `at byte 6: empty category`},
		{"s0:,c1", `at byte 3: empty category`},
		{"s0:c1,c1", `at byte 6: category c1 is listed twice; list categories once, in ascending order: write c1`},
		{"s0:c3,c1", `at byte 6: category c1 comes after a higher category; list categories once, in ascending order: write c1,c3`},
		{"s0:c0.c5,c3", `at byte 9: category c3 is listed twice; list categories once, in ascending order: write c0.c5`},
		{"s0:c0.c5,c3.c9", `category range c3.c9 overlaps an earlier item at c3; list categories once, in ascending order: write c0.c9`},
		{"s0:c1:c2", `category "c1:c2" is not c0 to c1023`},
		{"s3-s0", `"s3-s0" at byte 3: high level s0 is below low level s3; write the low level first: s0-s3`},
		{"s0:c1-s3", `at byte 6: high level s3 does not dominate low level s0:c1 (it lacks c1); a high level needs every category of the low one and at least its sensitivity; write s0:c1-s3:c1`},
		{"s3-s2:c1", `high level s2:c1 does not dominate low level s3 (s2 is below s3); a high level needs every category of the low one and at least its sensitivity; write s3-s3:c1`},
		{"s0-s1-s2", `at byte 5: a range has one '-'; write low-high`},
		{"s0-", `at byte 3: empty level`},
		{"-s3", `at byte 0: empty level`},
		{"s0-s16", `at byte 3: sensitivity s16 is out of range`},
	}
	for _, tc := range tests {
		_, err := ParseRange(tc.in)
		if err == nil {
			t.Errorf("ParseRange(%q) accepted it", tc.in)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseRange(%q):\n got %s\nwant %s", tc.in, err, tc.want)
		}
		var pe *ParseError
		if !asParseError(err, &pe) {
			t.Errorf("ParseRange(%q): error %T is not a *ParseError", tc.in, err)
		}
	}
}

func asParseError(err error, pe **ParseError) bool { return errors.As(err, pe) }

func TestCatSet(t *testing.T) {
	var s CatSet
	s.Add(0)
	s.Add(1023)
	s.Add(1024) // ignored
	s.Add(-1)   // ignored
	if !s.Has(0) || !s.Has(1023) || s.Has(1024) || s.Has(-1) || s.Len() != 2 {
		t.Fatalf("set %v: wrong members", s)
	}
	if got := s.String(); got != "c0,c1023" {
		t.Errorf("String() = %q", got)
	}
	var all CatSet
	all.AddRange(0, MaxCategory)
	if all.Len() != MaxCategory+1 || !all.Superset(s) || s.Superset(all) {
		t.Errorf("full set wrong: len %d", all.Len())
	}
	if got := all.Minus(s).String(); got != "c1.c1022" {
		t.Errorf("Minus = %q", got)
	}
	if (CatSet{}).String() != "" {
		t.Error("empty set prints non-empty")
	}
}

package labels

import (
	"flag"
	"os"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden from the current output")

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := "testdata/" + name
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// brokenConfig lists labels its own entries refuse, for every reason.
func brokenConfig() Config {
	c := authzConfig()
	c.Entries[0].Labels = append(c.Entries[0].Labels,
		"system_u:system_r:httpd_t:s5",       // above the high
		"system_u:system_r:named_t:s1",       // no TE rule
		"system_u:system_r:httpd_t:s2:c200",  // incomparable
		"system_u:system_r:httpd_t:s1:c0.c1", // fine
		"system_u:system_r:httpd_t:s1:c0,c1", // the same again
		"WebData",                            // a Smack label
	)
	c.Entries[4].Labels = append(c.Entries[4].Labels, "system_u:system_r:httpd_t:s1") // below the low
	c.Entries[2].Labels = append(c.Entries[2].Labels, "-bad")
	c.Entries = append(c.Entries, EntryConfig{Name: "nolabels", Local: "10.5.0.0/24", Remote: "10.6.0.0/24", Required: true, Context: "u:r:nobody_t:s0"})
	return c
}

func TestExplainGolden(t *testing.T) {
	var b strings.Builder
	b.WriteString("### simple mode (SELinux inactive)\n")
	b.WriteString(mustPolicy(t, authzConfig(), false).Explain().String())
	c := authzConfig()
	c.Mode = "auto"
	b.WriteString("\n### auto mode, SELinux active\n")
	b.WriteString(mustPolicy(t, c, true).Explain().String())
	b.WriteString("\n### a contradictory policy\n")
	b.WriteString(Explain(brokenConfig(), FixedDetector(false)).String())
	b.WriteString("\n### no entries\n")
	b.WriteString(mustPolicy(t, Config{}, false).Explain().String())
	golden(t, "explain.golden", b.String())
}

func TestExplainStructured(t *testing.T) {
	r := Explain(brokenConfig(), FixedDetector(false))
	if len(r.Problems) == 0 || r.Mode != "simple" || r.LabelMode != "simple" {
		t.Fatalf("report %+v", r)
	}
	web := r.Entries[0]
	if !web.Loaded || web.LocalTS != "10.1.0.0/24[tcp]" || web.Context != spd {
		t.Errorf("web %+v", web)
	}
	denials := map[string]Denial{}
	for _, l := range web.Labels {
		if _, seen := denials[l.Label]; !seen { // the first of a repeated label
			denials[l.Label] = l.Denial
		}
		if l.Allowed != (l.Denial == Permitted) || (l.Allowed && l.Child == "") {
			t.Errorf("label %+v", l)
		}
	}
	for label, want := range map[string]Denial{
		httpS1:                               Permitted,
		"system_u:system_r:httpd_t:s5":       DenyAboveHigh,
		"system_u:system_r:named_t:s1":       DenyNoRule,
		"system_u:system_r:httpd_t:s2:c200":  DenyIncomparable,
		"system_u:system_r:httpd_t:s1:c0,c1": Permitted,
		"WebData":                            DenyUnparseable,
	} {
		if got, ok := denials[label]; !ok || got != want {
			t.Errorf("%s: %v (present %v), want %v", label, got, ok, want)
		}
	}
	if got := r.Entries[4].Labels[1].Denial; got != DenyBelowLow {
		t.Errorf("secret's s1: %v", got)
	}
	if p := mustPolicy(t, baseConfig(), false).Explain(); len(p.Problems) != 0 || len(p.Entries) != 4 {
		t.Errorf("loaded policy report %+v", p)
	}
}

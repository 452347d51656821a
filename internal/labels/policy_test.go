package labels

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/obol-ipsec/obol/plugins"
)

// authzConfig is baseConfig with an entry whose range has a floor.
func authzConfig() Config {
	c := baseConfig()
	c.Entries = append(c.Entries, EntryConfig{
		Name: "secret", Local: "10.9.0.0/24", Remote: "10.8.0.0/24",
		Context: "system_u:object_r:ipsec_spd_t:s2:c1-s5:c0.c9", Labels: []string{"system_u:system_r:httpd_t:s3:c1"},
	})
	return c
}

func mustPolicy(t testing.TB, c Config, selinux bool) *Policy {
	t.Helper()
	p, err := New(c, FixedDetector(selinux))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func flow(local, remote string, proto uint8, lport, rport uint16) plugins.Flow {
	return plugins.Flow{Local: netip.MustParsePrefix(local), Remote: netip.MustParsePrefix(remote), Protocol: proto, LocalPort: lport, RemotePort: rport}
}

func TestAuthorize(t *testing.T) {
	p := mustPolicy(t, authzConfig(), false)
	var (
		web    = flow("10.1.0.5/32", "10.2.0.7/32", 6, 0, 443)
		lan    = flow("10.1.3.5/32", "10.2.9.9/32", 0, 0, 0)
		none   = flow("192.0.2.1/32", "198.51.100.1/32", 6, 0, 0)
		smk    = flow("fd00:1::5/128", "fd00:2::7/128", 17, 0, 53)
		opq    = flow("192.168.0.5/32", "192.168.1.5/32", 17, 1500, 0)
		opqOut = flow("192.168.0.5/32", "192.168.1.5/32", 17, 999, 0)
		secret = flow("10.9.0.1/32", "10.8.0.1/32", 0, 0, 0)
		wide   = flow("10.1.0.0/16", "10.2.0.0/16", 0, 0, 0)
	)
	const (
		ok, no     = true, false
		req, opt   = true, false
		httpS5     = "system_u:system_r:httpd_t:s5"
		namedS1    = "system_u:system_r:named_t:s1"
		allowHTTPD = "allow httpd_t ipsec_spd_t:association polmatch"
	)
	tests := []struct {
		name     string
		flow     plugins.Flow
		label    string
		allowed  bool
		required bool
		reason   string
	}{
		{"unlabeled on a required entry", web, "", no, req,
			`entry "web" requires labeled SAs and this flow carries no label`},
		{"listed label", web, httpS1, ok, req,
			`label system_u:system_r:httpd_t:s1 may use entry "web": ` + allowHTTPD + `; s1 is within s0-s3:c0.c127`},
		{"listed label with charon's NUL", web, httpS1 + "\x00", ok, req,
			`label system_u:system_r:httpd_t:s1 may use entry "web": ` + allowHTTPD + `; s1 is within s0-s3:c0.c127`},
		{"range spelled as a pair", web, "system_u:system_r:httpd_t:s2:c1.c1023-s2:c1.c1023", no, req,
			`label system_u:system_r:httpd_t:s2:c1.c1023 may not use entry "web": its level s2:c1.c1023 is incomparable with the entry's high s3:c0.c127 (the entry's high has no c128.c1023)`},
		{"listed label, spelled otherwise", web, "system_u:system_r:httpd_t:s2:c1-s2:c1", ok, req,
			`label system_u:system_r:httpd_t:s2:c1 may use entry "web": ` + allowHTTPD + `; s2:c1 is within s0-s3:c0.c127`},
		{"above the entry's high", web, httpS5, no, req,
			`label system_u:system_r:httpd_t:s5 may not use entry "web": its level s5 is above the entry's high s3:c0.c127`},
		{"range above the entry's high", web, "system_u:system_r:httpd_t:s1-s4:c0.c127", no, req,
			`label system_u:system_r:httpd_t:s1-s4:c0.c127 may not use entry "web": its high level s4:c0.c127 is above the entry's high s3:c0.c127`},
		{"incomparable with the entry's high", web, "system_u:system_r:httpd_t:s1:c500", no, req,
			`label system_u:system_r:httpd_t:s1:c500 may not use entry "web": its level s1:c500 is incomparable with the entry's high s3:c0.c127 (the entry's high has no c500)`},
		{"authorized but not listed", web, "system_u:system_r:httpd_t:s3:c0,c1,c2", ok, req,
			`label system_u:system_r:httpd_t:s3:c0.c2 may use entry "web": ` + allowHTTPD + `; s3:c0.c2 is within s0-s3:c0.c127; it is not in the entry's labels, so obold loads no CHILD_SA for it (add it to labels)`},
		{"another allowed type", web, "system_u:system_r:sshd_t:s0", ok, req,
			`label system_u:system_r:sshd_t:s0 may use entry "web": allow sshd_t ipsec_spd_t:association polmatch; s0 is within s0-s3:c0.c127; it is not in the entry's labels, so obold loads no CHILD_SA for it (add it to labels)`},
		{"no TE rule", web, namedS1, no, req,
			`label system_u:system_r:named_t:s1 may not use entry "web": no TE rule lets type named_t use type ipsec_spd_t (allow named_t ipsec_spd_t:association polmatch)`},
		{"no level on an MLS entry", web, "system_u:system_r:httpd_t", no, req,
			`label system_u:system_r:httpd_t may not use entry "web": it has no level but the entry's context has s0-s3:c0.c127`},
		{"not a context", web, "httpd", no, req,
			`label "httpd" may not use entry "web": it is not an SELinux context: "httpd": has 1 of the 3 fields user:role:type (then :level); write e.g. system_u:system_r:httpd_t:s0`},
		{"below the entry's low", secret, "system_u:system_r:httpd_t:s1", no, opt,
			`label system_u:system_r:httpd_t:s1 may not use entry "secret": its level s1 is below the entry's low s2:c1 (and lacks the entry's c1)`},
		{"range below the entry's low", secret, "system_u:system_r:httpd_t:s1:c1-s3:c1", no, opt,
			`label system_u:system_r:httpd_t:s1:c1-s3:c1 may not use entry "secret": its low level s1:c1 is below the entry's low s2:c1`},
		{"incomparable with the entry's low", secret, "system_u:system_r:httpd_t:s3:c2", no, opt,
			`label system_u:system_r:httpd_t:s3:c2 may not use entry "secret": its level s3:c2 is incomparable with the entry's low s2:c1 (it lacks the entry's c1)`},
		{"inside a floored range", secret, "system_u:system_r:httpd_t:s3:c1", ok, opt,
			`label system_u:system_r:httpd_t:s3:c1 may use entry "secret": ` + allowHTTPD + `; s3:c1 is within s2:c1-s5:c0.c9`},
		{"unlabeled on an optional entry", secret, "", ok, opt,
			`entry "secret" does not require labels; unlabeled traffic may use it`},
		{"wide entry, no labels listed", lan, httpS5, ok, opt,
			`label system_u:system_r:httpd_t:s5 may use entry "lan": ` + allowHTTPD + `; s5 is within s0-s15:c0.c1023; it is not in the entry's labels, so obold loads no CHILD_SA for it (add it to labels)`},
		{"wide entry, unlabeled", lan, "", ok, opt,
			`entry "lan" does not require labels; unlabeled traffic may use it`},
		{"no entry", none, httpS1, ok, opt, "no label policy covers this flow"},
		{"no entry, unlabeled", none, "", ok, opt, "no label policy covers this flow"},
		{"port outside the entry", opqOut, "", ok, opt, "no label policy covers this flow"},
		{"IPv6 flow does not match IPv4 entries", flow("::1/128", "::2/128", 0, 0, 0), "", ok, opt, "no label policy covers this flow"},
		{"Smack label listed", smk, "WebData", ok, req, `label WebData is one of entry "smk"'s labels`},
		{"Smack star listed", smk, "*", ok, req, `label * is one of entry "smk"'s labels`},
		{"Smack label not listed", smk, "Other", no, req, `label Other may not use entry "smk": it is not one of the entry's 2 smack labels`},
		{"Smack compare is exact", smk, "webdata", no, req, `label webdata may not use entry "smk": it is not one of the entry's 2 smack labels`},
		{"Smack unlabeled", smk, "", no, req, `entry "smk" requires labeled SAs and this flow carries no label`},
		{"opaque listed", opq, "blob one", ok, opt, `label blob one is one of entry "opq"'s labels`},
		{"opaque not listed", opq, "blob two", no, opt, `label "blob two" may not use entry "opq": it is not one of the entry's 1 opaque labels`},
		{"flow wider than a required entry, unlabeled", wide, "", no, req,
			`entry "web" requires labeled SAs and this flow carries no label (the flow 10.1.0.0/16 -> 10.2.0.0/16 is wider than entry "web"'s selector 10.1.0.0/24 -> 10.2.0.0/24 tcp remote port 443 and would carry its traffic; narrow the flow)`},
		{"flow wider than a required entry, labeled", wide, httpS1, ok, req,
			`label system_u:system_r:httpd_t:s1 may use entry "lan": ` + allowHTTPD + `; s1 is within s0-s15:c0.c1023; it is not in the entry's labels, so obold loads no CHILD_SA for it (add it to labels)`},
		{"flow wider than an entry that refuses the label", wide, httpS5, no, req,
			`label system_u:system_r:httpd_t:s5 may not use entry "web": its level s5 is above the entry's high s3:c0.c127 (the flow 10.1.0.0/16 -> 10.2.0.0/16 is wider than entry "web"'s selector 10.1.0.0/24 -> 10.2.0.0/24 tcp remote port 443 and would carry its traffic; narrow the flow)`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := p.Authorize(context.Background(), plugins.LabelRequest{Flow: tc.flow, Label: tc.label})
			if err != nil {
				t.Fatal(err)
			}
			if d.Allowed != tc.allowed || d.Required != tc.required || d.LabelMode != "simple" || d.Reason != tc.reason {
				t.Errorf("got  %+v\nwant allowed %v required %v reason\n     %s", d, tc.allowed, tc.required, tc.reason)
			}
		})
	}
}

func TestAuthorizeSpecificity(t *testing.T) {
	sel := func(name, proto, rports string, labels ...string) EntryConfig {
		return EntryConfig{Name: name, Local: "10.0.0.0/24", Remote: "10.0.1.0/24", Protocol: proto, RemotePorts: rports, DOI: "opaque", Labels: labels}
	}
	c := Config{Entries: []EntryConfig{
		sel("any", "", "", "A", "all"),
		sel("tcp", "tcp", "", "T", "all"),
		sel("range", "tcp", "1-1024", "R", "all"),
		sel("https", "tcp", "443", "H", "all"),
		{Name: "host", Local: "10.0.0.5/32", Remote: "10.0.1.0/24", DOI: "opaque", Labels: []string{"X", "all"}},
	}}
	p := mustPolicy(t, c, false)
	tests := []struct {
		f      plugins.Flow
		label  string
		winner string // the entry whose label alone is allowed
	}{
		{flow("10.0.0.9/32", "10.0.1.9/32", 6, 0, 443), "H", "https"},
		{flow("10.0.0.9/32", "10.0.1.9/32", 6, 0, 80), "R", "range"},
		{flow("10.0.0.9/32", "10.0.1.9/32", 6, 0, 5000), "T", "tcp"},
		{flow("10.0.0.9/32", "10.0.1.9/32", 17, 0, 53), "A", "any"},
		{flow("10.0.0.5/32", "10.0.1.9/32", 6, 0, 443), "X", "host"}, // longer prefix beats protocol and ports
	}
	for _, tc := range tests {
		for _, label := range []string{"A", "T", "R", "H", "X"} {
			d, err := p.Authorize(context.Background(), plugins.LabelRequest{Flow: tc.f, Label: label})
			if err != nil {
				t.Fatal(err)
			}
			if want := label == tc.label; d.Allowed != want {
				t.Errorf("flow %v label %s: allowed %v, want %v (%s)", tc.f, label, d.Allowed, want, d.Reason)
			}
			if d.Allowed && !strings.Contains(d.Reason, fmt.Sprintf("entry %q", tc.winner)) {
				t.Errorf("flow %v: decided by %s, want %s", tc.f, d.Reason, tc.winner)
			}
		}
	}
	// A flow of any port is wider than https and range: their labels must
	// agree. "all" is in every entry; "T" only in tcp.
	f := flow("10.0.0.9/32", "10.0.1.9/32", 6, 0, 0)
	if d, _ := p.Authorize(context.Background(), plugins.LabelRequest{Flow: f, Label: "all"}); !d.Allowed {
		t.Errorf("label in every entry refused: %s", d.Reason)
	}
	d, _ := p.Authorize(context.Background(), plugins.LabelRequest{Flow: f, Label: "T"})
	if d.Allowed || !strings.Contains(d.Reason, `wider than entry "https"'s selector`) {
		t.Errorf("wide flow with a label the narrower entry refuses: %+v", d)
	}
}

func TestAuthorizeErrors(t *testing.T) {
	p := mustPolicy(t, baseConfig(), false)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := p.Authorize(ctx, plugins.LabelRequest{Flow: flow("10.1.0.5/32", "10.2.0.7/32", 6, 0, 443), Label: httpS1})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled ctx: %v", err)
	}
	_, err = p.Authorize(context.Background(), plugins.LabelRequest{Label: httpS1})
	if err == nil || !strings.Contains(err.Error(), "pass the flow's traffic selectors") {
		t.Errorf("flow without prefixes: %v", err)
	}
}

func autoConfig() Config {
	c := baseConfig()
	c.Mode = "auto"
	return c
}

func TestAuthorizeSELinuxMode(t *testing.T) {
	p := mustPolicy(t, autoConfig(), true)
	d, err := p.Authorize(context.Background(), plugins.LabelRequest{Flow: flow("10.1.0.5/32", "10.2.0.7/32", 6, 0, 443), Label: "system_u:system_r:httpd_t:s3"})
	if err != nil {
		t.Fatal(err)
	}
	// selinux mode: charon learns data labels from acquires, so no "not in labels" note
	want := `label system_u:system_r:httpd_t:s3 may use entry "web": allow httpd_t ipsec_spd_t:association polmatch; s3 is within s0-s3:c0.c127`
	if !d.Allowed || d.LabelMode != "selinux" || d.Reason != want {
		t.Errorf("got %+v", d)
	}
	d, _ = p.Authorize(context.Background(), plugins.LabelRequest{Flow: flow("fd00:1::5/128", "fd00:2::7/128", 0, 0, 0), Label: "WebData"})
	if d.LabelMode != "simple" {
		t.Errorf("Smack entry in selinux mode: label mode %s, want simple", d.LabelMode)
	}
}

var charonSafe = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

func TestChildren(t *testing.T) {
	p := mustPolicy(t, baseConfig(), false)
	cs, err := p.Children(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs) != 2 {
		t.Fatalf("children %+v", cs)
	}
	for i, want := range []string{httpS1, httpC1} {
		c := cs[i]
		if c.Label != want || c.LabelMode != "simple" || c.Generic || !charonSafe.MatchString(c.Name) || !strings.HasPrefix(c.Name, "web-l") ||
			c.LocalTS != "10.1.0.0/24[tcp]" || c.RemoteTS != "10.2.0.0/24[tcp/443]" {
			t.Errorf("child %d: %+v", i, c)
		}
	}
	if cs[0].Name == cs[1].Name {
		t.Error("two children share a name")
	}
	// The entry's own context is never an SA's label in simple mode.
	for _, c := range cs {
		if c.Label == spd {
			t.Error("entry context given to charon as a data label")
		}
	}

	// Stable across reloads: reorder, respell and add labels; names follow the labels.
	c2 := baseConfig()
	c2.Entries[0].Labels = []string{"system_u:system_r:httpd_t:s2", "system_u:system_r:httpd_t:s2:c1-s2:c1", httpS1}
	cs2, err := mustPolicy(t, c2, false).Children(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	byLabel := map[string]string{}
	for _, c := range cs2 {
		byLabel[c.Label] = c.Name
	}
	for _, c := range cs {
		if byLabel[c.Label] != c.Name {
			t.Errorf("label %s: child %s became %s after a reload", c.Label, c.Name, byLabel[c.Label])
		}
	}

	// selinux mode: one child with the entry's generic context.
	cs3, err := mustPolicy(t, autoConfig(), true).Children(context.Background(), "web")
	if err != nil {
		t.Fatal(err)
	}
	if len(cs3) != 1 || cs3[0] != (Child{Name: "web-sel", Label: spd, LabelMode: "selinux", Generic: true, LocalTS: "10.1.0.0/24[tcp]", RemoteTS: "10.2.0.0/24[tcp/443]"}) {
		t.Errorf("selinux mode children %+v", cs3)
	}
	// Smack entries stay simple in selinux mode.
	cs4, _ := mustPolicy(t, autoConfig(), true).Children(context.Background(), "smk")
	if len(cs4) != 2 || cs4[0].Label != "WebData" || cs4[0].LabelMode != "simple" {
		t.Errorf("Smack children in selinux mode %+v", cs4)
	}

	if _, err := p.Children(context.Background(), "nope"); err == nil || !strings.Contains(err.Error(), `the entries are "web", "lan", "smk", "opq"`) {
		t.Errorf("unknown entry: %v", err)
	}
	if cs, _ := p.Children(context.Background(), "lan"); len(cs) != 0 {
		t.Errorf("entry without labels has children %+v", cs)
	}
}

func TestEntries(t *testing.T) {
	p := mustPolicy(t, baseConfig(), false)
	es := p.Entries()
	if len(es) != 4 || es[0].Name != "web" || es[3].Name != "opq" {
		t.Fatalf("entries %+v", es)
	}
	w := es[0]
	if l, r := w.Selector.TS(); l != "10.1.0.0/24[tcp]" || r != "10.2.0.0/24[tcp/443]" {
		t.Errorf("TS %s %s", l, r)
	}
	if l, r := es[3].Selector.TS(); l != "192.168.0.0/24[udp/1000-2000]" || r != "192.168.1.0/24[udp]" {
		t.Errorf("TS %s %s", l, r)
	}
	if l, r := es[1].Selector.TS(); l != "10.1.0.0/16" || r != "10.2.0.0/16" {
		t.Errorf("TS %s %s", l, r)
	}
	if w.Context.String() != spd || !w.Required || w.DOI != DOISELinux || len(w.Labels) != 2 || w.LabelMode != "simple" {
		t.Errorf("web %+v", w)
	}
	// Entries hands out copies.
	es[0].Labels[0] = Context{}
	es[0].Children[0].Name = "x"
	if again := p.Entries(); again[0].Labels[0].IsZero() || again[0].Children[0].Name == "x" {
		t.Error("Entries shares the policy's slices")
	}
}

func TestCheckSELinux(t *testing.T) {
	te := NewTE(Rule{"a_t", "spd_t"}, Rule{"a_t", "spd_t"}, Rule{"b_t", "spd_t"}, Rule{"a_t", "other_t"})
	if got := te.Sources("spd_t"); !slices.Equal(got, []string{"a_t", "b_t"}) {
		t.Errorf("Sources = %v", got)
	}
	if (TE{}).Allows("a_t", "spd_t") {
		t.Error("zero TE allows")
	}
	ctx := func(s string) SELinuxContext {
		c, err := ParseSELinux(s)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	entry := ctx("u:r:spd_t:s1:c1-s3:c0.c9")
	tests := []struct {
		data string
		want Denial
	}{
		{"u:r:a_t:s1:c1", Permitted},
		{"u:r:b_t:s3:c0.c9", Permitted},
		{"u:r:a_t:s1:c1-s3:c0.c9", Permitted},
		{"u:r:c_t:s1:c1", DenyNoRule},
		{"u:r:a_t:s4", DenyAboveHigh},
		{"u:r:a_t:s3:c0.c10", DenyAboveHigh},
		{"u:r:a_t:s2:c10", DenyIncomparable},
		{"u:r:a_t:s0:c1", DenyBelowLow},
		{"u:r:a_t:s1", DenyBelowLow}, // same sensitivity, strictly dominated
		{"u:r:a_t:s2:c2", DenyIncomparable},
		{"u:r:a_t", DenyMLSMismatch},
		{"other_u:other_r:a_t:s2:c1", Permitted}, // users and roles take no part
	}
	for _, tc := range tests {
		v := CheckSELinux(te, ctx(tc.data), entry)
		if v.Denial != tc.want || v.Allowed() != (tc.want == Permitted) || v.Why == "" || (!v.Allowed() && v.Fix == "") {
			t.Errorf("%s: %v (%s), want %v", tc.data, v.Denial, v.Why, tc.want)
		}
	}
	if v := CheckSELinux(te, ctx("u:r:a_t"), ctx("u:r:spd_t")); !v.Allowed() {
		t.Errorf("non-MLS pair refused: %s", v.Why)
	}
	if v := CheckSELinux(te, ctx("u:r:a_t:s0"), ctx("u:r:spd_t")); v.Denial != DenyMLSMismatch {
		t.Errorf("MLS label on a non-MLS entry: %v", v.Denial)
	}
	if Denial(99).String() != "denial(99)" || DenyNoRule.String() != "no TE allow rule" {
		t.Error("Denial.String")
	}
}

// TestAuthorizeConcurrent: a Policy is shared by obold's goroutines.
func TestAuthorizeConcurrent(t *testing.T) {
	p := mustPolicy(t, authzConfig(), false)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 200 {
				label := []string{httpS1, "system_u:system_r:httpd_t:s5", ""}[(i+j)%3]
				if _, err := p.Authorize(context.Background(), plugins.LabelRequest{Flow: flow("10.1.0.5/32", "10.2.0.7/32", 6, 0, 443), Label: label}); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func BenchmarkAuthorize(b *testing.B) {
	c := authzConfig()
	// 200 more entries, so matching is not trivially short
	for i := range 200 {
		c.Entries = append(c.Entries, EntryConfig{
			Name: fmt.Sprintf("e%d", i), Local: fmt.Sprintf("172.16.%d.0/24", i), Remote: "172.31.0.0/16",
			Context: spd, Labels: []string{httpS1},
		})
	}
	p := mustPolicy(b, c, false)
	web := flow("10.1.0.5/32", "10.2.0.7/32", 6, 0, 443)
	cases := []struct {
		name string
		r    plugins.LabelRequest
	}{
		{"listed", plugins.LabelRequest{Flow: web, Label: httpS1}},
		{"unlisted-parsed", plugins.LabelRequest{Flow: web, Label: "system_u:system_r:httpd_t:s3:c0.c5,c7"}},
		{"refused", plugins.LabelRequest{Flow: web, Label: "system_u:system_r:httpd_t:s5"}},
		{"unlabeled", plugins.LabelRequest{Flow: web}},
		{"no-entry", plugins.LabelRequest{Flow: flow("192.0.2.1/32", "198.51.100.1/32", 6, 0, 0), Label: httpS1}},
		{"last-entry", plugins.LabelRequest{Flow: flow("172.16.199.1/32", "172.31.0.1/32", 6, 0, 0), Label: httpS1}},
	}
	ctx := context.Background()
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := p.Authorize(ctx, tc.r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
